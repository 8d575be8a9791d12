"""Issue 7, case 3: use after close, double close, use in a forked child ->
a clear "closed" error, no double free (the sanitizer run of tests/run
checks the "no double free" part with ASan)."""
import gc
import os
import socket

import pytest

import tlspump
from conftest import handshake_pair

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    sctx = tlspump.Context.server()
    server = sctx.wrap(a)
    client = tlspump.Context.client(ca=sctx.cert_pem.encode()).wrap(
        b, server_hostname="localhost")
    assert handshake_pair(client, server) == [tlspump.DONE, tlspump.DONE]
    yield client, server
    client.close()
    server.close()
    a.close()
    b.close()


CONN_CALLS = [
    ("handshake", ()), ("read", ()), ("write", (b"x",)), ("flush", ()),
    ("shutdown", ()), ("wait", (0,)), ("fileno", ()), ("forward", (0,)),
]
CONN_PROPS = ["want", "version", "cipher", "alpn", "peer_cert", "buffered",
              "pending", "handshake_done", "peer_closed", "verify_result",
              "server_name"]


def test_conn_use_after_close_and_double_close(pair):
    client, server = pair
    client.close()
    client.close()  # double close: a no-op
    for name, args in CONN_CALLS:
        with pytest.raises(tlspump.ClosedError) as ei:
            getattr(client, name)(*args)
        assert "closed" in str(ei.value)
    for prop in CONN_PROPS:
        with pytest.raises(tlspump.ClosedError):
            getattr(client, prop)
    assert "closed" in repr(client)
    with pytest.raises(tlspump.ClosedError):
        with client:
            pass
    # the peer is unaffected by the other side's Python object going away
    assert server.read() is None


def test_close_after_fatal_error_and_gc(pair):
    client, server = pair
    # a fatal error first (the peer's socket shut down: truncation) ...
    socket.socket(fileno=os.dup(client.fileno())).shutdown(socket.SHUT_RDWR)
    with pytest.raises(tlspump.TruncatedError):
        server.read(timeout=5)
    with pytest.raises(tlspump.TruncatedError):  # the error stays
        server.read()
    # ... then close, twice, and let the objects go
    server.close()
    server.close()
    client.close()
    del server, client
    gc.collect()


def test_forked_child_gets_closed_error_and_parent_is_intact(pair):
    client, server = pair
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report by exit code only, never raise
        os.close(r)
        code = 0
        try:
            for name, args in (("write", (b"from the child",)), ("read", ()),
                               ("flush", ()), ("shutdown", ())):
                try:
                    getattr(client, name)(*args)
                    code |= 1
                except tlspump.ClosedError as e:
                    if "fork" not in str(e):
                        code |= 2
                        os.write(w, str(e).encode())
                except BaseException as e:  # noqa: BLE001
                    code |= 4
                    os.write(w, repr(e).encode())
            client.close()  # frees the child's copy only
            server.close()
        finally:
            os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    msg = os.read(r, 4096)
    os.close(r)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, msg)
    # nothing the child tried reached the stream: the parent's session works
    assert client.write(b"from the parent") == 15
    assert server.read(timeout=5) == b"from the parent"
    assert server.write(b"ok") == 2
    assert client.read(timeout=5) == b"ok"


def test_child_process_and_pump_double_close(pair):
    client, server = pair
    ch = tlspump.spawn(["cat"])
    ch.close()
    ch.close()
    assert ch.fd == -1
    with pytest.raises(ChildProcessError):  # reaped by close: no zombie
        os.waitpid(ch.pid, os.WNOHANG)
    with pytest.raises((ValueError, OSError)):
        ch.fileno()
    t1, t2 = socket.socketpair()
    try:
        p = tlspump.Pump(server, t1)
        p.close()
        p.close()
        with pytest.raises((ValueError, tlspump.Error)):
            p.step()
        # the Conn was given back and works
        assert client.write(b"z") == 1
        assert server.read(timeout=5) == b"z"
    finally:
        t1.close()
        t2.close()


def test_server_double_close():
    srv = tlspump.Server(("127.0.0.1", 0), None, command=["true"])
    srv.close()
    srv.close()
    with pytest.raises(tlspump.ClosedError):
        srv.run()
    srv.start()  # the background thread ends at once, with the same error
    with pytest.raises(tlspump.ClosedError):
        srv.stop(timeout=10)
    assert not srv.running
