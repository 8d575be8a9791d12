"""How connections end, and what a peer that does not speak TLS gets.

- the peer's close_notify is a clean EOF: read() -> b"";
- a TCP close without close_notify is TruncatedError, never a silent EOF,
  and the data that came before it is returned first;
- an HTTP request or random bytes instead of a ClientHello is an Error that
  names it;
- half-close: after our shutdown() we still read until the peer's
  close_notify."""
import socket
import threading

import pytest

import tlspump
from conftest import drive, read_until_eof, write_all

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server_with_py_client(server_ctx, py_client_ssl, sockets, conns):
    """(tlspump server conn, Python ssl client socket), handshake done.
    Small kernel buffers, so that the C write buffer fills quickly."""
    cli, srv = sockets.pair(rcvbuf=64 * 1024, sndbuf=64 * 1024)
    cli.settimeout(10)
    holder = {}

    def hs():
        holder["tls"] = py_client_ssl.wrap_socket(cli, server_hostname="localhost")

    t = threading.Thread(target=hs, daemon=True)
    t.start()
    conn = server_ctx.wrap(srv)
    conns(conn)
    drive(conn, "handshake")
    t.join(10)
    assert "tls" in holder
    yield conn, holder["tls"]
    holder["tls"].close()


def test_peer_close_notify_is_clean_eof(server_with_py_client, peer):
    conn, tls = server_with_py_client
    tls.sendall(b"bye")
    t = peer(tls.unwrap)  # sends close_notify, waits for ours
    assert read_until_eof(conn) == b"bye"
    assert read_until_eof(conn) == b""  # EOF stays EOF
    assert drive(conn, "shutdown") == tlspump.DONE
    t.result()


def test_our_close_notify_is_clean_eof_for_the_peer(server_with_py_client):
    conn, tls = server_with_py_client
    write_all(conn, b"bye")
    assert drive(conn, "shutdown") == tlspump.DONE
    got = b""
    while True:
        d = tls.recv(100)
        if not d:
            break  # Python ssl: b"" only at close_notify
        got += d
    assert got == b"bye"
    # Writing after shutdown is refused, not silently dropped.
    with pytest.raises(tlspump.Error):
        conn.write(b"more")


def test_tcp_close_without_close_notify_is_truncation(server_with_py_client):
    conn, tls = server_with_py_client
    tls.sendall(b"data before the FIN")
    # A TCP FIN under the TLS layer: no close_notify (SSLSocket.shutdown is
    # the plain socket call).
    tls.shutdown(socket.SHUT_WR)
    got = bytearray()
    with pytest.raises(tlspump.TruncatedError) as ei:
        while True:
            d = drive(conn, "read")
            assert d != b"", "EOF without close_notify reported as a clean EOF"
            got += d
    assert got == b"data before the FIN"
    assert isinstance(ei.value, tlspump.Error)
    assert ei.value.operation == "read"
    assert ei.value.kind == "truncated"


def test_tcp_close_during_handshake(server_ctx, sockets, conns):
    cli, srv = sockets.pair()
    conn = server_ctx.wrap(srv)
    conns(conn)
    cli.close()
    with pytest.raises(tlspump.Error) as ei:
        drive(conn, "handshake")
    assert ei.value.operation == "handshake"


def _server_gets(server_ctx, sockets, conns, payload):
    cli, srv = sockets.pair()
    cli.sendall(payload)
    conn = server_ctx.wrap(srv)
    conns(conn)
    with pytest.raises(tlspump.Error) as ei:
        drive(conn, "handshake")
    e = ei.value
    assert e.operation == "handshake"
    assert e.reason and e.reason in str(e)
    return e


def test_http_request_instead_of_client_hello(server_ctx, sockets, conns):
    e = _server_gets(server_ctx, sockets, conns,
                     b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert "http request" in e.reason
    assert not isinstance(e, tlspump.TruncatedError)


def test_random_bytes_instead_of_client_hello(server_ctx, sockets, conns):
    e = _server_gets(server_ctx, sockets, conns, bytes(range(256)) * 2)
    assert "wrong version number" in e.reason


def test_bad_record_length(server_ctx, sockets, conns):
    # A handshake record header announcing 65535 bytes.
    e = _server_gets(server_ctx, sockets, conns, b"\x16\x03\x01\xff\xff" + b"A" * 100)
    assert "packet length" in e.reason


def test_client_gets_http_response(sockets, conns):
    """A tlspump client talking to a plain HTTP server."""
    cli, srv = sockets.pair()
    ctx = tlspump.Context.client(verify=False)
    conn = ctx.wrap(cli)
    conns(conn)
    assert conn.handshake() in (tlspump.WANT_READ, tlspump.WANT_WRITE)
    srv.recv(4096)  # the ClientHello
    srv.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(tlspump.Error) as ei:
        drive(conn, "handshake")
    assert "wrong version number" in ei.value.reason


def test_half_close(server_with_py_client, peer):
    """After our close_notify, the peer may still send; we read it all, then
    b"" at its close_notify."""
    conn, tls = server_with_py_client

    def peer_side():
        got = b""
        while True:
            d = tls.recv(100)
            if not d:
                break
            got += d
        # Our close_notify arrived; this direction is still open.
        tls.sendall(b"still talking after your close_notify")
        tls.unwrap()
        return got

    write_all(conn, b"last from tlspump")
    assert drive(conn, "shutdown") == tlspump.DONE
    t = peer(peer_side)
    assert read_until_eof(conn) == b"still talking after your close_notify"
    assert t.result() == b"last from tlspump"


def test_shutdown_flushes_buffered_data_first(server_with_py_client, peer):
    """shutdown() sends what write() buffered, then close_notify."""
    conn, tls = server_with_py_client
    data = b"0123456789" * 300000  # 3 MB: more than all the buffers take

    def reader():
        out = bytearray()
        while True:
            d = tls.recv(1 << 16)
            if not d:
                return bytes(out)
            out += d

    off = 0
    while off < len(data):  # fill the C buffer, no waiting
        n = conn.write(data[off:off + (1 << 20)])
        off += n
        if n == 0:
            break
    assert off < len(data)
    assert conn.buffered > 0
    t = peer(reader)
    assert drive(conn, "shutdown", timeout=30) == tlspump.DONE
    assert conn.buffered == 0
    assert t.result(timeout=30) == data[:off]
