"""TLS 1.3 KeyUpdate in the middle of an 8 MiB transfer both ways.

The peer is `openssl s_client` (tlspump as server) or `openssl s_server`
(tlspump as client); a line "K" alone on its stdin makes it send a KeyUpdate
with update_requested, so tlspump must answer with its own KeyUpdate while
its write buffer holds data: a read then needs a write. Both sides finish
with equal sha256. The peer's -msg log proves both KeyUpdates went out.

The openssl tools read stdin in chunks and treat a chunk that starts with a
command letter as a command (discarding the rest of the chunk), so the data
fed to them is digits only, and "K\\n" is written only when their stdin pipe
is empty, and more data only after the command was carried out."""
import os
import re
import selectors
import socket
import struct
import time

import pytest

import tlspump
from conftest import digits, drive, sha256

pytestmark = pytest.mark.timeout(180)

SIZE = 8 << 20
CHUNK = 256 * 1024
DEADLINE = 120


class Transfer:
    """One selectors loop that moves data between a tlspump conn and the
    openssl child's pipes:  to_child -> child's stdin -> (TLS) -> conn,
    and conn -> (TLS) -> child's stdout. Gates (`feed_limit`,
    `send_limit`) hold parts back until the KeyUpdate is done."""

    def __init__(self, conn, child, to_child, to_tls):
        self.conn, self.child = conn, child
        self.to_child, self.to_tls = to_child, to_tls
        self.fed = 0          # bytes of to_child written to the child's stdin
        self.sent = 0         # bytes of to_tls accepted by conn.write
        self.got = bytearray()  # what conn read (the child's stdin data)
        self.feed_limit = len(to_child)
        self.send_limit = len(to_tls)
        self.stdin = child.p.stdin
        self.sel = selectors.DefaultSelector()
        self.sel.register(conn.fileno(), tlspump.WANT_READ)
        for f in child.pipes():
            self.sel.register(f, selectors.EVENT_READ)
        self.stdin_registered = False
        self.deadline = time.monotonic() + DEADLINE

    def step(self, stop=None):
        """Does what can be done now, then waits once for readiness (unless
        stop() is already true then)."""
        c = self.conn
        if self.sent < self.send_limit:
            self.sent += c.write(self.to_tls[self.sent:min(self.sent + CHUNK, self.send_limit)])
        elif c.buffered:
            c.flush()
        d = c.read()
        if d == b"":
            raise AssertionError("close_notify before the transfer was done")
        if d:
            self.got += d
            return  # try again at once: maybe more can be written now
        feed = self.fed < self.feed_limit
        if feed != self.stdin_registered:
            if feed:
                self.sel.register(self.stdin, selectors.EVENT_WRITE)
            else:
                self.sel.unregister(self.stdin)
            self.stdin_registered = feed
        if stop is not None and stop():
            return
        self.sel.modify(c.fileno(), c.want)
        remaining = self.deadline - time.monotonic()
        assert remaining > 0, self.status()
        ready = self.sel.select(remaining)
        assert ready, self.status()
        for key, ev in ready:
            if key.fileobj is self.stdin:
                n = _write_some(self.stdin, self.to_child[self.fed:min(self.fed + CHUNK, self.feed_limit)])
                self.fed += n
            elif key.fd == c.fileno():
                pass  # the next step reads/writes
            else:
                if self.child.on_readable(key.fileobj) == b"":
                    self.sel.unregister(key.fileobj)

    def status(self):
        return ("stalled: fed %d sent %d got %d child-out %d; stderr %r"
                % (self.fed, self.sent, len(self.got), len(self.child.out),
                   bytes(self.child.err[-500:])))

    def close(self):
        self.sel.close()


def _bytes_received(sock):
    """tcpi_bytes_received of struct tcp_info (Linux >= 4.1): every byte the
    kernel took in on this TCP connection, whether read yet or not."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("Q", info, 128)[0]


def _write_some(f, data):
    try:
        return os.write(f.fileno(), data)
    except BlockingIOError:
        return 0


def test_keyupdate_from_s_client(server_ctx, eph_ca, listener, children, conns, tmp_path):
    """tlspump server; s_client sends the KeyUpdate."""
    msglog = tmp_path / "s_client.msg"
    to_client = digits(SIZE, seed=1)  # server -> s_client's stdout
    to_server = digits(SIZE, seed=2)  # s_client's stdin -> server
    cli = children.s_client(listener.getsockname()[1],
                            "-quiet", "-no_ign_eof",  # quiet, but commands on
                            "-CAfile", eph_ca, "-verify_return_error",
                            "-servername", "localhost", "-tls1_3",
                            "-msg", "-msgfile", str(msglog))
    sock, _ = listener.accept()
    with sock:
        conn = server_ctx.wrap(sock)
        conns(conn)
        drive(conn, "handshake")
        os.set_blocking(cli.p.stdin.fileno(), False)
        t = Transfer(conn, cli, to_server, to_client)
        half = SIZE // 2
        # Phase 1: half of s_client's data; ours up to 3/4, so that ours is
        # still flowing when the KeyUpdate comes.
        t.feed_limit = half
        t.send_limit = SIZE * 3 // 4
        while len(t.got) < half:
            t.step()
        # s_client has read all of its stdin so far: "K\n" is a chunk alone.
        os.set_blocking(cli.p.stdin.fileno(), True)
        cli.send(b"K\n")
        os.set_blocking(cli.p.stdin.fileno(), False)
        while b"KEYUPDATE" not in cli.err:
            t.step()
        # Phase 2: the rest, both ways, under the new keys.
        t.feed_limit = SIZE
        t.send_limit = SIZE
        while len(t.got) < SIZE or len(cli.out) < SIZE or conn.buffered:
            t.step()
        t.close()
        assert len(t.got) == SIZE and sha256(t.got) == sha256(to_server)
        assert drive(conn, "shutdown") == tlspump.DONE
        # s_client answers our close_notify with its own, then exits.
        rest = drive(conn, "read")
        assert rest == b""
    assert cli.finish(timeout=30) == 0, bytes(cli.err)
    assert len(cli.out) == SIZE
    assert sha256(bytes(cli.out)) == sha256(to_client)
    msgs = msglog.read_text()
    assert ">>> TLS 1.3, Handshake [length 0005], KeyUpdate" in msgs
    # tlspump answered update_requested with a KeyUpdate of its own.
    assert "<<< TLS 1.3, Handshake [length 0005], KeyUpdate" in msgs


def test_keyupdate_from_s_server(pki, children, conns, tmp_path):
    """tlspump client; s_server sends the KeyUpdate."""
    msglog = tmp_path / "s_server.msg"
    to_client = digits(SIZE, seed=4)  # s_server's stdin -> tlspump client
    to_server = digits(SIZE, seed=5)  # tlspump client -> s_server's stdout
    begin, end = b"<<<tlspump-begin>>>", b"<<<tlspump-end>>>"
    srv, port = children.s_server("-cert", pki.server_cert, "-key", pki.server_key,
                                  "-naccept", "1", "-tls1_3",
                                  "-msg", "-msgfile", str(msglog))
    ctx = tlspump.Context.client(ca=pki.ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        conn = ctx.wrap(sock, server_hostname="localhost")
        conns(conn)
        drive(conn, "handshake")
        payload = begin + to_server + end
        os.set_blocking(srv.p.stdin.fileno(), False)
        t = Transfer(conn, srv, to_client, payload)
        half = SIZE // 2
        t.feed_limit = half
        t.send_limit = len(payload) * 3 // 4
        while len(t.got) < half:
            t.step()
        # s_server has sent everything it read from stdin. It prints nothing
        # when it does a KeyUpdate, but the KeyUpdate record is then the only
        # thing it can send: any byte arriving now is it.
        before = _bytes_received(sock)
        os.set_blocking(srv.p.stdin.fileno(), True)
        srv.send(b"K\n")
        os.set_blocking(srv.p.stdin.fileno(), False)

        def keyupdate_arrived():
            return _bytes_received(sock) > before

        while not keyupdate_arrived():
            t.step(stop=keyupdate_arrived)
        t.feed_limit = SIZE
        t.send_limit = len(payload)
        while len(t.got) < SIZE or end not in srv.out[-4096:] or conn.buffered:
            t.step()
        t.close()
        assert len(t.got) == SIZE and sha256(t.got) == sha256(to_client)
        assert drive(conn, "shutdown") == tlspump.DONE
        assert drive(conn, "read") == b""  # s_server's close_notify
    assert srv.finish(timeout=30) == 0
    out = bytes(srv.out)
    m = re.search(re.escape(begin) + rb"(.*)" + re.escape(end), out, re.S)
    assert m, out[:2000]
    # s_server writes its own messages ("Read BLOCK" when a read yields a
    # KeyUpdate and no data, ...) into the same stdout as the data; the data
    # has only digits and no newline, so they can be cut out exactly.
    received = re.sub(rb"(?:Read BLOCK|Write BLOCK|SSL_do_handshake -> -?\d+)\n",
                      b"", m.group(1))
    assert len(received) == SIZE, re.findall(rb"[^0-9]+", received)[:5]
    assert sha256(received) == sha256(to_server)
    msgs = msglog.read_text()
    assert ">>> TLS 1.3, Handshake [length 0005], KeyUpdate" in msgs
    assert "<<< TLS 1.3, Handshake [length 0005], KeyUpdate" in msgs
