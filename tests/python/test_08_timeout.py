"""Blocking calls with timeout=: the wait happens in C (poll) and ends with
tlspump.Timeout (a TimeoutError) after about the time asked; timeout=None
waits for as long as it takes. Bounds are generous: these check that the
deadline is honoured, not how fast anything is."""
import os
import socket
import threading
import time

import pytest

import tlspump

pytestmark = pytest.mark.timeout(60)


def test_client_handshake_timeout_silent_server(listener, conns):
    """The peer accepts TCP (the kernel does it for the listener) and never
    says anything."""
    with socket.create_connection(listener.getsockname(), timeout=5) as sock:
        conn = tlspump.Context.client(verify=False).wrap(sock)
        conns(conn)
        t0 = time.monotonic()
        with pytest.raises(tlspump.Timeout) as ei:
            conn.handshake(timeout=0.5)
        elapsed = time.monotonic() - t0
        assert 0.4 <= elapsed < 3, elapsed
        assert isinstance(ei.value, TimeoutError)
        assert isinstance(ei.value, tlspump.Error)
        # The state is intact: it is still waiting for the ServerHello.
        assert conn.want == tlspump.WANT_READ
        assert conn.handshake() == tlspump.WANT_READ


def test_server_handshake_timeout_silent_client(server_ctx, sockets, conns):
    cli, srv = sockets.pair()
    conn = server_ctx.wrap(srv)
    conns(conn)
    t0 = time.monotonic()
    with pytest.raises(tlspump.Timeout):
        conn.handshake(timeout=0.5)
    assert 0.4 <= time.monotonic() - t0 < 3


@pytest.fixture
def established(server_ctx, py_client_ssl, sockets, conns):
    """(tlspump server conn, Python ssl client socket), handshake done."""
    cli, srv = sockets.pair(rcvbuf=64 * 1024, sndbuf=64 * 1024)
    cli.settimeout(10)
    holder = {}
    t = threading.Thread(target=lambda: holder.setdefault(
        "tls", py_client_ssl.wrap_socket(cli, server_hostname="localhost")), daemon=True)
    t.start()
    conn = server_ctx.wrap(srv)
    conns(conn)
    assert conn.handshake(timeout=10) == tlspump.DONE
    t.join(10)
    yield conn, holder["tls"]
    holder["tls"].close()


def test_read_timeout_on_idle_connection(established):
    conn, tls = established
    t0 = time.monotonic()
    with pytest.raises(tlspump.Timeout) as ei:
        conn.read(timeout=0.3)
    assert 0.25 <= time.monotonic() - t0 < 3
    assert ei.value.operation == "read"
    # Nothing lost: data sent now is read normally.
    tls.sendall(b"now")
    assert conn.read(timeout=5) == b"now"


def test_read_timeout_none_returns_when_data_arrives(established, peer):
    conn, tls = established

    def late():
        time.sleep(0.2)  # the point of the test: data comes later
        tls.sendall(b"late data")

    t = peer(late)
    t0 = time.monotonic()
    assert conn.read(timeout=None) == b"late data"
    assert time.monotonic() - t0 >= 0.15
    t.result()


def test_read_n_with_timeout(established):
    conn, tls = established
    tls.sendall(b"abcdef")
    assert conn.read(3, timeout=5) == b"abc"
    assert conn.read(timeout=5) == b"def"


def test_write_timeout_keeps_accepted_bytes(server_ctx, established, peer):
    """write(timeout=) against a peer that does not read: Timeout, and
    what was accepted stays buffered (conn.buffered) and arrives later."""
    conn, tls = established
    data = os.urandom(8 << 20)  # far more than kernel + 1 MiB C buffer
    t0 = time.monotonic()
    with pytest.raises(tlspump.Timeout):
        conn.write(data, timeout=0.5)
    assert 0.4 <= time.monotonic() - t0 < 5
    buffered = conn.buffered
    assert buffered > 0

    def reader():
        got = bytearray()
        while True:
            d = tls.recv(1 << 16)
            if not d:
                return bytes(got)
            got += d

    t = peer(reader)
    assert conn.flush(timeout=30) == tlspump.DONE
    assert conn.buffered == 0
    assert conn.shutdown(timeout=10) == tlspump.DONE
    got = t.result(timeout=30)
    # Every byte received is a prefix of data: none lost, none doubled.
    assert len(got) >= buffered
    assert got == data[:len(got)]


def test_shutdown_and_flush_with_timeout(established):
    conn, tls = established
    assert conn.write(b"x" * 1000, timeout=5) == 1000
    assert conn.flush(timeout=5) == tlspump.DONE
    assert conn.shutdown(timeout=5) == tlspump.DONE
    assert tls.recv(2000) == b"x" * 1000
