"""Smoke test: import, constants, and a full handshake + echo between two
tlspump connections over a socketpair, driven by selectors on conn.want."""

import hashlib
import os
import selectors
import socket
import ssl
import time

import pytest

import tlspump

pytestmark = pytest.mark.timeout(60)

DEADLINE = 20.0  # seconds for any one exchange; far above what it needs


def test_import_and_constants():
    assert tlspump.DONE == 0
    assert tlspump.WANT_READ == selectors.EVENT_READ == 1
    assert tlspump.WANT_WRITE == selectors.EVENT_WRITE == 2
    assert isinstance(tlspump.__version__, str) and tlspump.__version__
    for name in tlspump.__all__:
        assert hasattr(tlspump, name), name
    assert issubclass(tlspump.Error, OSError)
    assert issubclass(tlspump.TruncatedError, tlspump.Error)
    assert issubclass(tlspump.ResetError, tlspump.Error)
    assert issubclass(tlspump.ResetError, ConnectionResetError)
    assert issubclass(tlspump.Timeout, tlspump.Error)
    assert issubclass(tlspump.Timeout, TimeoutError)
    assert issubclass(tlspump.ClosedError, tlspump.Error)
    assert tlspump.Context.__module__ == "tlspump"
    assert tlspump.Conn.__module__ == "tlspump"


class Loop:
    """Registers each conn on a selector for exactly conn.want."""

    def __init__(self, *conns):
        self.sel = selectors.DefaultSelector()
        self.conns = conns
        self.end = time.monotonic() + DEADLINE

    def wait(self):
        registered = 0
        for c in self.conns:
            want = c.want
            key = self.sel.get_map().get(c.fileno())
            if want and key is None:
                self.sel.register(c, want)
            elif want:
                self.sel.modify(c, want)
            elif key is not None:
                self.sel.unregister(c)
            registered += bool(want)
        # Nothing to wait for while work remains would be a stall.
        assert registered, "no connection wants anything: stalled"
        left = self.end - time.monotonic()
        assert left > 0, "exchange did not finish in time"
        self.sel.select(left)

    def close(self):
        self.sel.close()


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    sctx = tlspump.Context.server(alpn=["h2", "http/1.1"])
    cctx = tlspump.Context.client(ca=sctx.cert_pem.encode(), alpn=["http/1.1"])
    server = sctx.wrap(a)
    client = cctx.wrap(b, server_hostname="localhost")
    yield sctx, cctx, server, client
    server.close()
    client.close()
    a.close()
    b.close()


def handshake(server, client):
    loop = Loop(server, client)
    results = {server: None, client: None}
    seen = set()
    try:
        while True:
            for c in (server, client):
                if results[c] != tlspump.DONE:
                    results[c] = c.handshake()
                    seen.add(results[c])
                    if results[c] != tlspump.DONE:
                        assert c.want == results[c]
            if all(r == tlspump.DONE for r in results.values()):
                return seen
            loop.wait()
    finally:
        loop.close()


def test_handshake_and_echo(pair):
    sctx, cctx, server, client = pair
    assert not client.handshake_done
    assert client.version is None
    seen = handshake(server, client)
    # The client starts and must wait for the server's reply at least once.
    assert tlspump.WANT_READ in seen
    assert server.handshake_done and client.handshake_done
    assert server.want == 0 and client.want == 0

    assert client.version == server.version == "TLSv1.3"
    assert client.cipher == server.cipher and client.cipher.startswith("TLS_")
    assert client.alpn == server.alpn == "http/1.1"
    assert server.server_name == "localhost"
    assert client.verify_result == "ok"
    cert = client.peer_cert
    assert set(cert) == {"pem", "subject", "issuer", "fingerprint"}
    assert cert["fingerprint"] == sctx.fingerprint
    assert cert["pem"].strip() == sctx.cert_pem.strip()
    assert "CN=localhost" in cert["subject"]
    assert server.peer_cert is None  # no client certificate asked
    assert cctx.fingerprint is None and cctx.role == "client"

    # Echo 200 KiB through the server and back, then close_notify both ways.
    payload = bytes(range(256)) * 800
    to_send, echo, got = payload, b"", bytearray()
    server_eof = client_eof = server_closed = client_shut = False
    loop = Loop(server, client)
    try:
        while not (client_eof and server_closed):
            # client: send, read the echo, close when all came back
            if to_send:
                to_send = to_send[client.write(to_send):]
            if client.buffered:
                client.flush()
            while not client_eof:
                d = client.read()
                if d is None:
                    break
                client_eof = d == b""
                got += d
            if len(got) == len(payload) and not client_shut:
                client_shut = client.shutdown() == tlspump.DONE
            # server: echo everything, close after the client's close_notify
            while not server_eof:
                d = server.read()
                if d is None:
                    break
                server_eof = d == b""
                echo += d
            if echo:
                echo = echo[server.write(echo):]
            if server.buffered:
                server.flush()
            if server_eof and not echo and not server_closed:
                server_closed = server.shutdown() == tlspump.DONE
            if client_eof and server_closed:
                break
            loop.wait()
    finally:
        loop.close()
    assert bytes(got) == payload
    assert server.peer_closed and client.peer_closed
    # After clean EOF the read keeps saying EOF.
    assert client.read() == b""


def test_fingerprint_is_sha256_of_der():
    ctx = tlspump.Context.server()
    assert ctx.ephemeral is True
    assert ctx.role == "server"
    der = ssl.PEM_cert_to_DER_cert(ctx.cert_pem)
    assert ctx.fingerprint == hashlib.sha256(der).hexdigest()
    assert len(ctx.fingerprint) == 64
    # Each ephemeral context gets its own key and certificate.
    assert tlspump.Context.server().fingerprint != ctx.fingerprint


def test_blocking_calls_with_timeout(pair):
    """The same exchange with the core's own waits (timeout=) in one thread
    is impossible (both ends need to progress), so the server side runs the
    non-blocking steps and the client uses timeouts where it is safe."""
    sctx, cctx, server, client = pair
    handshake(server, client)
    assert client.write(b"ping\n", timeout=5) == 5
    assert client.flush(timeout=5) == tlspump.DONE
    assert server.read(timeout=5) == b"ping\n"
    assert server.write(b"pong\n") == 5
    assert client.read(4, timeout=5) == b"pong"
    assert client.read(timeout=5) == b"\n"
    assert client.read() is None
    with pytest.raises(tlspump.Timeout) as ei:
        client.read(timeout=0.05)
    assert "read timed out after 0.05 s" in str(ei.value)
    assert ei.value.operation == "read"


def test_context_manager_closes():
    a, b = socket.socketpair()
    try:
        ctx = tlspump.Context.server()
        with ctx.wrap(a) as conn:
            assert conn.fileno() == a.fileno()
            assert conn.want == 0
        with pytest.raises(tlspump.ClosedError):
            conn.fileno()
        # The fd is the caller's: still open.
        a.send(b"x")
        assert b.recv(1) == b"x"
    finally:
        a.close()
        b.close()


class Interrupted(Exception):
    pass


def test_blocking_read_runs_signal_handlers(pair):
    """A read waiting without limit still runs Python signal handlers (the
    tp_wait.interrupted callback), and the handler's exception comes out."""
    import signal
    import threading

    sctx, cctx, server, client = pair
    handshake(server, client)

    def handler(signum, frame):
        raise Interrupted()

    old = signal.signal(signal.SIGUSR1, handler)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        with pytest.raises(Interrupted):
            client.read(timeout=None)
    finally:
        timer.cancel()
        timer.join(5)
        signal.signal(signal.SIGUSR1, old)
    # The connection is intact after the interruption.
    assert server.write(b"after") == 5
    assert client.read(timeout=5) == b"after"


def test_conn_busy_in_another_thread(pair):
    """While one thread waits in a call (GIL released), another thread may
    not use or free the same connection."""
    import threading

    sctx, cctx, server, client = pair
    handshake(server, client)
    result = []
    started = threading.Event()

    def reader():
        started.set()
        result.append(client.read(timeout=10))

    t = threading.Thread(target=reader)
    t.start()
    try:
        started.wait(5)
        end = time.monotonic() + 5
        while "busy" not in repr(client) and time.monotonic() < end:
            time.sleep(0.01)  # polling a state flag, not synchronising I/O
        with pytest.raises(tlspump.Error, match="in use"):
            client.close()
        with pytest.raises(tlspump.Error, match="in use"):
            client.want
    finally:
        server.write(b"wake")
        t.join(10)
    assert result == [b"wake"]
