"""Issue 7, cases 7 and 12: slow and silent peers.

7. A ClientHello at 1 byte/s and 1,000 silent connections -> the server's
   handshake deadline fires for all of them; other clients are served
   promptly meanwhile.
12. Non-blocking bidirectional shutdown against a slow peer and against a
   peer that keeps sending after close_notify -> bounded time, no crash.
"""
import resource
import selectors
import socket
import ssl
import threading
import time

import pytest

import tlspump
from conftest import handshake_pair

pytestmark = pytest.mark.timeout(120)


def client_hello():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


@pytest.fixture
def nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2600
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip("RLIMIT_NOFILE hard limit %d < %d" % (hard, need))
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def echo_once(addr, ctx, timeout=5):
    with socket.create_connection(addr, timeout=timeout) as s:
        conn = ctx.wrap(s)
        try:
            conn.handshake(timeout=timeout)
            conn.write(b"ping\n", timeout=timeout)
            conn.shutdown(timeout=timeout)
            got = b""
            while True:
                d = conn.read(timeout=timeout)
                if not d:
                    return got
                got += d
        finally:
            conn.close()


def closed_by_peer(sock):
    """True once the server closed sock (EOF or RST)."""
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@pytest.mark.no_fault
def test_slowloris_and_1000_silent_connections(nofile):
    sctx = tlspump.Context.server()
    cctx = tlspump.Context.client(verify=False)
    hs_timeout = 2.0
    hello = client_hello()
    silent = []
    stop = threading.Event()
    slow_result = {}
    with tlspump.Server(("127.0.0.1", 0), sctx, command=["cat"], log=None,
                        handshake_timeout=hs_timeout, max_conns=1100) as srv:
        try:
            for _ in range(1000):
                s = socket.create_connection(srv.address, timeout=5)
                s.setblocking(False)
                silent.append(s)
            t_silent = time.monotonic()

            def slowloris():
                with socket.create_connection(srv.address, timeout=5) as s:
                    t0 = time.monotonic()
                    try:
                        for b in hello:  # 1 byte per second
                            s.sendall(bytes([b]))
                            if stop.wait(1.0):
                                break
                            s.setblocking(False)
                            if closed_by_peer(s):
                                break
                            s.setblocking(True)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    slow_result["closed_after"] = time.monotonic() - t0
            th = threading.Thread(target=slowloris, daemon=True)
            th.start()
            # Others are served promptly while all of that is pending.
            for _ in range(5):
                t0 = time.monotonic()
                assert echo_once(srv.address, cctx) == b"ping\n"
                assert time.monotonic() - t0 < 1.0, "a client waited behind the silent ones"
            # The deadline fires for every silent connection.
            open_ = set(silent)
            deadline = t_silent + hs_timeout + 8
            with selectors.DefaultSelector() as sel:
                for s in silent:
                    sel.register(s, selectors.EVENT_READ)
                while open_ and time.monotonic() < deadline:
                    for key, _ in sel.select(0.5):
                        if closed_by_peer(key.fileobj):
                            sel.unregister(key.fileobj)
                            open_.discard(key.fileobj)
            assert not open_, "%d silent connections still open" % len(open_)
            closed_at = time.monotonic() - t_silent
            assert closed_at >= hs_timeout - 0.5, closed_at
            th.join(hs_timeout + 10)
            assert not th.is_alive()
            # at 1 byte/s the ClientHello (%d bytes) was far from complete
            assert slow_result["closed_after"] < hs_timeout + 3, slow_result
            # and the server is still fine
            assert echo_once(srv.address, cctx) == b"ping\n"
        finally:
            stop.set()
            for s in silent:
                s.close()


# ---- 12 ----------------------------------------------------------------------


@pytest.fixture
def small_tcp_pair():
    ls = socket.socket()
    for s in (ls,):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    c.connect(ls.getsockname())
    s, _ = ls.accept()
    ls.close()
    yield c, s
    c.close()
    s.close()


def test_shutdown_against_a_slow_peer(small_tcp_pair):
    c, s = small_tcp_pair
    sctx = tlspump.Context.server()
    server = sctx.wrap(s)
    client = tlspump.Context.client(verify=False).wrap(c)
    try:
        assert handshake_pair(client, server) == [tlspump.DONE, tlspump.DONE]
        payload = bytes(range(256)) * 1024  # 256 KiB
        assert server.write(payload) == len(payload)
        assert server.buffered > 0
        # the peer does not read: a bounded shutdown gives up, state intact
        t0 = time.monotonic()
        with pytest.raises(tlspump.Timeout):
            server.shutdown(timeout=0.3)
        assert 0.25 <= time.monotonic() - t0 < 1.5
        assert server.shutdown() == tlspump.WANT_WRITE
        assert server.want & tlspump.WANT_WRITE
        # non-blocking: the peer reads 4 KiB per readiness; the shutdown
        # is driven by want until it is out, then the peer reads EOF
        got = bytearray()
        shut = tlspump.WANT_WRITE
        deadline = time.monotonic() + 30
        with selectors.DefaultSelector() as sel:
            while time.monotonic() < deadline:
                if shut != tlspump.DONE:
                    shut = server.shutdown()
                d = client.read(4096)
                if d == b"":
                    break
                if d:
                    got += d
                    continue
                sel.register(c, selectors.EVENT_READ)
                if shut != tlspump.DONE:
                    sel.register(s, server.want)
                sel.select(0.5)
                for k in list(sel.get_map().values()):
                    sel.unregister(k.fileobj)
        assert bytes(got) == payload
        assert shut == tlspump.DONE and client.peer_closed
    finally:
        server.close()
        client.close()


def test_peer_keeps_sending_after_close_notify():
    a, b = socket.socketpair()
    sctx = tlspump.Context.server()
    server = sctx.wrap(a)
    client = tlspump.Context.client(verify=False).wrap(b)
    try:
        assert handshake_pair(client, server) == [tlspump.DONE, tlspump.DONE]
        assert server.shutdown(timeout=5) == tlspump.DONE
        # the client ignores it and keeps writing for 0.3 s
        sent = received = 0
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            sent += client.write(b"y" * 8192)
            if client.buffered:
                client.flush()
            d = server.read()
            received += len(d or b"")
        with pytest.raises(tlspump.ClosedError):
            server.write(b"no more")
        # a bounded read still returns what came, then times out: no hang
        t0 = time.monotonic()
        try:
            while server.read(timeout=0.2):
                assert time.monotonic() - t0 < 10
        except tlspump.Timeout:
            pass
        assert received > 0
        # and the reverse shutdown completes normally
        assert client.shutdown(timeout=5) == tlspump.DONE
        while True:
            d = server.read(timeout=5)
            if d == b"":
                break
        assert server.peer_closed
    finally:
        server.close()
        client.close()
        a.close()
        b.close()
