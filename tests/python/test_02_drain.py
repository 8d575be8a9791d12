"""read() drains: after ONE readiness event, one read() returns everything
that has arrived, including what OpenSSL already holds decrypted or read
from the socket -- so a select()/poll() caller never stalls on data the kernel
no longer reports.

The peer is Python's ssl module. Each case first makes sure everything the
peer sent is in tlspump's socket receive queue (an AF_UNIX socketpair: send()
returns once the bytes are queued at the receiver; on TCP: the sender's
queue of unacknowledged bytes is empty), then waits for readiness once."""
import fcntl
import os
import selectors
import socket
import struct
import termios
import threading
import time

import pytest

import tlspump
from conftest import drive

pytestmark = pytest.mark.timeout(60)

RECORD = 16 * 1024


def _outq(sock):
    """Bytes in sock's send queue not yet acknowledged by the receiver."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def _delivered(sock, transport):
    """Returns once all bytes the peer sent are in the receiver's queue.
    AF_UNIX: already true when send() returned. TCP: the kernel acknowledges
    loopback segments at once, but asynchronously to send(); wait (bounded)
    until the sender holds nothing unacknowledged."""
    if transport == "unix":
        return
    deadline = time.monotonic() + 5
    while _outq(sock):
        assert time.monotonic() < deadline, "peer's bytes not delivered in 5 s"
        time.sleep(0.001)


@pytest.fixture(params=["unix", "tcp"])
def tls_pair(request, server_ctx, py_client_ssl, sockets, conns):
    """(tlspump server conn, Python ssl client socket), handshake done."""
    if request.param == "unix":
        a, b = socket.socketpair()
        sockets.add(a)
        sockets.add(b)
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    else:
        a, b = sockets.pair(rcvbuf=1 << 20, sndbuf=1 << 20)
    a.settimeout(10)
    holder = {}

    def client_handshake():
        holder["tls"] = py_client_ssl.wrap_socket(a, server_hostname="localhost")

    t = threading.Thread(target=client_handshake, daemon=True)
    t.start()
    conn = server_ctx.wrap(b)
    conns(conn)
    drive(conn, "handshake")
    t.join(10)
    assert "tls" in holder, "Python ssl client handshake failed"
    tls = holder["tls"]
    yield conn, tls, a, request.param
    tls.close()


def _one_event(conn):
    """Waits for exactly one readiness event on conn; asserts it came."""
    with selectors.DefaultSelector() as sel:
        sel.register(conn.fileno(), selectors.EVENT_READ)
        assert sel.select(10), "no readiness within 10 s"


def _readable_now(fd):
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(0))


def test_one_event_one_read_gets_everything(tls_pair):
    conn, tls, raw, transport = tls_pair
    big = os.urandom(4 * RECORD)
    tiny = bytes(range(60))  # sent as 60 one-byte records
    last = os.urandom(5000)
    tls.sendall(big)  # Python ssl: one 16 KiB record per 16 KiB
    for i in range(len(tiny)):
        tls.sendall(tiny[i:i + 1])
    tls.sendall(last)
    _delivered(tls, transport)

    _one_event(conn)
    got = conn.read()
    assert got is not None
    assert len(got) == len(big) + len(tiny) + len(last)
    assert got == big + tiny + last
    # Nothing is left anywhere: not in the kernel, not in OpenSSL.
    assert not _readable_now(conn.fileno())
    assert not conn.pending
    assert conn.read() is None
    assert conn.want == tlspump.WANT_READ


def test_partial_read_rest_without_readiness(tls_pair):
    conn, tls, raw, transport = tls_pair
    record = os.urandom(RECORD)
    tls.sendall(record)
    _delivered(tls, transport)

    _one_event(conn)
    first = conn.read(1000)
    assert first == record[:1000]
    # The whole record has left the kernel: the rest is inside OpenSSL, and
    # a caller waiting for readability now would wait forever.
    assert not _readable_now(conn.fileno())
    assert conn.pending
    rest = conn.read()
    assert len(rest) == RECORD - 1000 == 15384
    assert rest == record[1000:]
    assert not conn.pending
    assert conn.read() is None


def test_read_n_limits_and_drains_in_order(tls_pair):
    """read(n) returns at most n bytes even when more has arrived, and
    successive reads see the stream in order, with no readiness in between."""
    conn, tls, raw, transport = tls_pair
    data = os.urandom(3 * RECORD + 123)
    tls.sendall(data)
    _delivered(tls, transport)
    _one_event(conn)
    got = bytearray()
    for n in (1, 17, RECORD, 5000):
        d = conn.read(n)
        assert d is not None and 0 < len(d) <= n
        got += d
    got += conn.read()
    assert got == data
    assert conn.read() is None


def test_clean_close_after_data_in_same_event(tls_pair):
    """Data followed at once by close_notify: the data is returned first,
    then b"" (never the other way round, never an error)."""
    conn, tls, raw, transport = tls_pair
    tls.sendall(b"last words")
    # unwrap() sends close_notify and waits for ours: do it from a thread.
    t = threading.Thread(target=lambda: tls.unwrap(), daemon=True)
    t.start()
    _one_event(conn)
    got = bytearray()
    while True:
        d = conn.read()
        if d == b"":
            break
        if d is None:  # close_notify not there yet: wait for it
            _one_event(conn)
            continue
        got += d
    assert got == b"last words"
    drive(conn, "shutdown")
    t.join(10)
    assert not t.is_alive()
