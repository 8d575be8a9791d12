"""Handshake in both roles against real peers: Python's ssl module and the
openssl command line tools, each driven by a selectors loop on conn.want;
then data both ways and a clean close. Also the hello_server example."""
import hashlib
import os
import re
import selectors
import socket
import ssl
import sys

import pytest

import tlspump
from conftest import ROOT, drive, read_exactly, read_until_eof, sha256, write_all

pytestmark = pytest.mark.timeout(60)

# A TLS 1.3 handshake over loopback needs a handful of waits; a loop that
# spins on a WANT_* its readiness does not satisfy needs thousands.
MAX_STEPS = 30


def py_client(port, ctx, hostname, send, expect, **kw):
    """Python ssl client: sends `send`, expects `expect` back, closes cleanly.
    Returns (version, cipher name)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=hostname) as s:
            s.sendall(send)
            got = b""
            while len(got) < len(expect):
                d = s.recv(65536)
                assert d, "EOF after %r" % got
                got += d
            assert got == expect
            info = s.version(), s.cipher()[0]
            s.unwrap()  # sends close_notify, waits for the peer's
            return info


def test_server_vs_python_ssl_client(server_ctx, py_client_ssl, listener, peer, conns):
    t = peer(py_client, listener.getsockname()[1], py_client_ssl, "localhost",
             b"ping", b"pong")
    sock, _ = listener.accept()
    with sock:
        conn = server_ctx.wrap(sock)
        conns(conn)
        assert drive(conn, "handshake", max_steps=MAX_STEPS) == tlspump.DONE
        assert conn.version == "TLSv1.3"
        assert conn.cipher.startswith("TLS_")
        assert conn.peer_cert is None  # no client certificate asked for
        assert read_exactly(conn, 4) == b"ping"
        assert write_all(conn, b"pong") == tlspump.DONE
        assert drive(conn, "shutdown") == tlspump.DONE
        assert read_until_eof(conn) == b""
        version, cipher = t.result()
        assert (version, cipher) == (conn.version, conn.cipher)


def test_server_tls12_client_and_min_version(server_ctx, eph_ca, listener, peer, conns):
    """A TLS 1.2-only client gets TLS 1.2 by default, and is refused by a
    server with min_version="TLSv1.3"."""
    ctx12 = ssl.create_default_context(cafile=eph_ca)
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    t = peer(py_client, listener.getsockname()[1], ctx12, "localhost", b"12", b"ok")
    sock, _ = listener.accept()
    with sock:
        conn = server_ctx.wrap(sock)
        conns(conn)
        drive(conn, "handshake", max_steps=MAX_STEPS)
        assert conn.version == "TLSv1.2"
        assert read_exactly(conn, 2) == b"12"
        write_all(conn, b"ok")
        drive(conn, "shutdown")
        assert read_until_eof(conn) == b""
        assert t.result()[0] == "TLSv1.2"

    ctx13 = tlspump.Context.server(min_version="TLSv1.3")
    t = peer(py_client, listener.getsockname()[1], ctx12, "localhost", b"12", b"ok")
    sock, _ = listener.accept()
    with sock:
        conn = ctx13.wrap(sock)
        conns(conn)
        with pytest.raises(tlspump.Error) as ei:
            drive(conn, "handshake")
        assert ei.value.operation == "handshake"
        assert "unsupported protocol" in str(ei.value)
        with pytest.raises(ssl.SSLError):
            t.result()


def test_client_vs_python_ssl_server(pki, py_server_ssl, listener, peer, conns):
    def serve():
        s, _ = listener.accept()
        s.settimeout(10)
        with py_server_ssl.wrap_socket(s, server_side=True) as tls:
            assert tls.recv(4) == b"ping"
            tls.sendall(b"pong")
            info = tls.version(), tls.cipher()[0]
            tls.unwrap()
            return info

    t = peer(serve)
    ctx = tlspump.Context.client(ca=pki.ca)
    with socket.create_connection(listener.getsockname(), timeout=10) as sock:
        conn = ctx.wrap(sock, server_hostname="localhost")
        conns(conn)
        assert drive(conn, "handshake", max_steps=MAX_STEPS) == tlspump.DONE
        assert conn.version == "TLSv1.3"
        assert conn.verify_result == "ok"
        assert "CN=localhost" in conn.peer_cert["subject"]
        assert "CN=tlspump test CA" in conn.peer_cert["issuer"]
        assert len(conn.peer_cert["fingerprint"]) == 64
        assert conn.peer_cert["pem"].startswith("-----BEGIN CERTIFICATE-----")
        write_all(conn, b"ping")
        assert read_exactly(conn, 4) == b"pong"
        drive(conn, "shutdown")
        assert read_until_eof(conn) == b""
        assert t.result() == (conn.version, conn.cipher)


@pytest.mark.parametrize("proto", ["-tls1_2", "-tls1_3"])
def test_server_vs_openssl_s_client(proto, server_ctx, eph_ca, listener, children, conns):
    port = listener.getsockname()[1]
    # -quiet: only the peer's data on stdout; stdin EOF does not close.
    cli = children.s_client(port, "-quiet", proto, "-CAfile", eph_ca,
                            "-verify_return_error", "-servername", "localhost",
                            "-verify_hostname", "localhost")
    cli.send(b"ping from s_client\n")
    cli.close_stdin()
    sock, _ = listener.accept()
    with sock:
        conn = server_ctx.wrap(sock)
        conns(conn)
        drive(conn, "handshake", max_steps=MAX_STEPS)
        assert conn.version == {"-tls1_2": "TLSv1.2", "-tls1_3": "TLSv1.3"}[proto]
        assert read_exactly(conn, 19) == b"ping from s_client\n"
        write_all(conn, b"pong from tlspump\n")
        drive(conn, "shutdown")
        assert read_until_eof(conn) == b""
    assert cli.finish() == 0, cli.err
    assert bytes(cli.out) == b"pong from tlspump\n"


def test_client_vs_openssl_s_server(pki, children, conns):
    srv, port = children.s_server("-cert", pki.server_cert, "-key", pki.server_key,
                                  "-naccept", "1")
    ctx = tlspump.Context.client(ca=pki.ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        conn = ctx.wrap(sock, server_hostname="localhost")
        conns(conn)
        drive(conn, "handshake", max_steps=MAX_STEPS)
        assert conn.version == "TLSv1.3"
        assert conn.verify_result == "ok"
        # s_server sends what it reads on stdin (kept open: EOF would make
        # this non -quiet s_server drop the connection).
        srv.send(b"pong from s_server\n")
        write_all(conn, b"ping from tlspump\n")
        assert read_exactly(conn, 19) == b"pong from s_server\n"
        srv.wait_for(rb"ping from tlspump\n")
        drive(conn, "shutdown")  # s_server answers close_notify and exits
        assert read_until_eof(conn) == b""
        cipher = conn.cipher
    assert srv.finish() == 0
    m = re.search(rb"CIPHER is (\S+)", srv.out)
    assert m and m.group(1).decode() == cipher


def test_client_vs_openssl_s_server_tls12(pki, children, conns):
    srv, port = children.s_server("-cert", pki.server_cert, "-key", pki.server_key,
                                  "-naccept", "1", "-tls1_2")
    srv.send(b"12\n")
    ctx = tlspump.Context.client(ca=pki.ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        conn = ctx.wrap(sock, server_hostname="127.0.0.1")
        conns(conn)
        drive(conn, "handshake", max_steps=MAX_STEPS)
        assert conn.version == "TLSv1.2"
        assert read_exactly(conn, 3) == b"12\n"
        drive(conn, "shutdown")
        assert read_until_eof(conn) == b""
    assert srv.finish() == 0


def test_bulk_both_ways_python_ssl(server_ctx, py_client_ssl, listener, peer, conns):
    """1 MiB each way with the peer echoing: exercises WANT_WRITE on the
    tlspump side while the peer is busy."""
    data = os.urandom(1 << 20)

    def echo():
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            with py_client_ssl.wrap_socket(raw, server_hostname="localhost") as s:
                n = 0
                while True:
                    d = s.recv(65536)
                    if not d:
                        return n
                    s.sendall(d)
                    n += len(d)

    t = peer(echo)
    sock, _ = listener.accept()
    with sock:
        conn = server_ctx.wrap(sock)
        conns(conn)
        drive(conn, "handshake", max_steps=MAX_STEPS)
        got = bytearray()
        with selectors.DefaultSelector() as sel:
            off = 0
            sel.register(conn.fileno(), tlspump.WANT_READ)
            while len(got) < len(data):
                if off < len(data):
                    off += conn.write(data[off:off + 65536])
                else:
                    conn.flush()
                d = conn.read()
                if d:
                    got += d
                    continue
                assert d is None
                sel.modify(conn.fileno(), conn.want)
                assert sel.select(10), "stalled at %d/%d" % (len(got), len(data))
        assert sha256(got) == sha256(data)
        drive(conn, "shutdown")
        # The echo peer sees EOF (close_notify) and closes without replying.
        assert t.result() == len(data)


# ---- examples/hello_server.py ------------------------------------------------

HELLO = os.path.join(ROOT, "examples", "hello_server.py")


def start_hello(children):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "python") + os.pathsep + env.get("PYTHONPATH", "")
    srv = children.spawn([sys.executable, HELLO, "0"], env=env)
    fp = srv.wait_for(rb"sha256 ([0-9a-f]{64})").group(1).decode()
    port = int(srv.wait_for(rb"listening on 127\.0\.0\.1:(\d+)").group(1))
    return srv, fp, port


def test_hello_server_with_openssl_s_client(children, tmp_path):
    srv, fp, port = start_hello(children)
    cli = children.s_client(port, "-quiet", "-servername", "localhost")
    cli.send(b"hello\n")
    cli.close_stdin()  # -quiet ignores stdin EOF: it waits for the server
    assert cli.finish() == 0, cli.err
    assert bytes(cli.out) == b"hi!\n"
    assert srv.finish() == 0, srv.err
    assert b"hello" in srv.out


def test_hello_server_with_python_ssl(children):
    """The certificate the client sees is the one whose fingerprint the
    example printed."""
    srv, fp, port = start_hello(children)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # pinned by fingerprint below instead
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            der = s.getpeercert(binary_form=True)
            assert hashlib.sha256(der).hexdigest() == fp
            s.sendall(b"hello from python\n")
            got = b""
            while True:
                d = s.recv(100)
                if not d:
                    break
                got += d
            assert got == b"hi!\n"
    assert srv.finish() == 0, srv.err
