"""Bad input to spawn / forward / Pump: clear errors before any I/O, no
zombie, no crash."""
import os
import signal
import socket
import threading
import time

import pytest

import tlspump
from conftest import PeerThread
from fwdutil import connect_pair, run_client, zombies

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pair(server_ctx, client_ctx, listener, sockets, conns):
    return connect_pair(listener, server_ctx, client_ctx, sockets, conns)


def test_spawn_missing_program():
    with pytest.raises(FileNotFoundError) as ei:
        tlspump.spawn(["tlspump-no-such-program", "x"])
    assert "spawn tlspump-no-such-program: No such file or directory" in str(ei.value)
    with pytest.raises(FileNotFoundError, match=r"spawn \./nope"):
        tlspump.spawn(["./nope"])
    with pytest.raises(PermissionError, match="/etc/passwd"):
        tlspump.spawn(["/etc/passwd"])
    with pytest.raises(FileNotFoundError, match="cwd /no/such/dir"):
        tlspump.spawn(["cat"], cwd="/no/such/dir")
    assert zombies() == []


def test_spawn_bad_arguments():
    with pytest.raises(TypeError):
        tlspump.spawn("cat")  # a str is not an argv list
    with pytest.raises(TypeError):
        tlspump.spawn(42)
    with pytest.raises(ValueError):
        tlspump.spawn([])
    with pytest.raises(ValueError):
        tlspump.spawn([""])
    with pytest.raises(TypeError):
        tlspump.spawn(["cat", 3])
    with pytest.raises(ValueError):
        tlspump.spawn(["ca\0t"])
    with pytest.raises(TypeError):
        tlspump.spawn(["cat"], env=["A=B"])
    with pytest.raises(ValueError):
        tlspump.spawn(["cat"], env={"A=B": "c"})
    with pytest.raises(TypeError):
        tlspump.spawn(["cat"], stderr="log")
    with pytest.raises(ValueError):
        tlspump.spawn(["cat"], stderr=-1)
    with pytest.raises(TypeError):
        tlspump.spawn(["cat"], "positional env")
    assert zombies() == []


def test_spawn_env_cwd_stderr(tmp_path):
    r, w = os.pipe()
    try:
        with tlspump.spawn(["sh", "-c", "echo $FOO; pwd; echo oops >&2"],
                           env={"FOO": "bar", "PATH": os.environ["PATH"]},
                           cwd=tmp_path, stderr=w) as child:
            os.close(w)
            w = -1
            with socket.socket(fileno=os.dup(child.fd)) as s:
                out = b""
                while True:
                    d = s.recv(1000)
                    if not d:
                        break
                    out += d
            assert out == b"bar\n" + str(tmp_path).encode() + b"\n"
            assert os.read(r, 100) == b"oops\n"
            assert child.wait(timeout=10) == 0
            assert child.returncode == 0
            assert "returncode=0" in repr(child)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_child_wait_kill_close():
    child = tlspump.spawn(["sleep", "30"])
    assert child.returncode is None
    assert child.fileno() == child.fd >= 0
    with pytest.raises(tlspump.Timeout):
        child.wait(timeout=0)
    with pytest.raises(TimeoutError):
        child.wait(timeout=0.05)
    child.kill()
    assert child.wait(timeout=10) == -signal.SIGTERM
    child.kill()  # reaped: a no-op
    child.close()
    child.close()  # twice is fine
    assert child.fd == -1
    with pytest.raises(ValueError):
        child.fileno()
    # A child left running is ended by close(): EOF, then SIGTERM.
    child = tlspump.spawn(["sleep", "30"])
    pid = child.pid
    t0 = time.monotonic()
    del child
    assert time.monotonic() - t0 < 5
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert zombies() == []


def test_child_wait_with_sigchld_ignored():
    """The host ignores SIGCHLD: the kernel reaps; wait() still returns
    (0, the status being unknown, as subprocess does) and no zombie stays."""
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        with tlspump.spawn(["sh", "-c", "exit 3"]) as child:
            assert child.wait(timeout=10) == 0
    finally:
        signal.signal(signal.SIGCHLD, old)
    assert zombies() == []


def test_forward_closed_fd(pair):
    sconn, _, _ = pair
    s = socket.socket()
    fd = s.fileno()
    s.close()
    with pytest.raises(ValueError):
        sconn.forward(s)  # fileno() is -1 now
    with pytest.raises(tlspump.Error, match="not open") as ei:
        sconn.forward(fd)
    assert ei.value.errno == 9  # EBADF
    with pytest.raises(tlspump.Error, match="not open"):
        tlspump.Pump(sconn, fd)
    child = tlspump.spawn(["cat"])
    child.close()
    with pytest.raises(ValueError, match="closed"):
        sconn.forward(child)


def test_forward_not_an_fd(pair):
    sconn, _, _ = pair
    for bad in ("cat", 3.5, None, True, object(), (1,), (1, 2, 3), ("a", "b")):
        with pytest.raises((TypeError, ValueError)):
            sconn.forward(bad)
    with pytest.raises(ValueError):
        sconn.forward(-1)
    with pytest.raises(TypeError):
        sconn.forward(0, idle_timeout="1")
    with pytest.raises(ValueError):
        sconn.forward(0, idle_timeout=-1)
    with pytest.raises(TypeError):
        tlspump.Pump("not a conn", 0)
    # After all that, the connection still works.
    a, b = socket.socketpair()
    with a, b:
        sconn.close()
        with pytest.raises(tlspump.ClosedError):
            sconn.forward(a)


def test_forward_twice_at_once(pair):
    sconn, cconn, csock = pair
    with tlspump.spawn(["cat"]) as child, tlspump.spawn(["cat"]) as other:
        first = PeerThread(sconn.forward, child)
        first.start()
        # Until the first forward runs (it does the server's handshake).
        run_client(cconn, b"x", close_after=False, stop_after=1)
        with pytest.raises(tlspump.Error, match="in use"):
            sconn.forward(other)
        with pytest.raises(tlspump.Error, match="in use"):
            sconn.read()
        with pytest.raises(tlspump.Error, match="in use"):
            sconn.close()
        with pytest.raises(tlspump.Error, match="in use"):
            child.wait(timeout=0)  # the Child is in use too
        res = run_client(cconn, b"yz", keep=True)  # close_notify ends it
        stats = first.result(timeout=15)
    assert bytes(res.data) == b"yz"
    assert stats.to_target == 3 and stats.tls_end == "clean"
    assert zombies() == []


def test_pump_misuse(pair):
    sconn, cconn, _ = pair
    with tlspump.spawn(["cat"]) as child:
        pump = tlspump.Pump(sconn, child)
        with pytest.raises(tlspump.Error, match="in use"):
            tlspump.Pump(sconn, child)  # the conn belongs to the pump
        assert not pump.done
        assert pump.step() is False
        assert pump.wants() and all(isinstance(fd, int) and ev in (1, 2, 3)
                                    for fd, ev in pump.wants())
        assert pump.timeout is None
        stats = pump.stats
        assert stats.tls_end == "none" and stats.to_target == 0
        pump.close()
        pump.close()
        with pytest.raises(ValueError):
            pump.step()
        assert pump.done
        # conn and child are usable again
        assert sconn.read() is None
        del pump
        with tlspump.Pump(sconn, child, idle_timeout=5) as pump:
            pump.step()
            assert 0 < pump.timeout <= 5


def test_forward_interrupted_by_exception_in_handler(pair):
    """Any Python signal handler that raises stops forward() with that
    exception (not only KeyboardInterrupt)."""
    sconn, cconn, _ = pair

    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop()

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        with tlspump.spawn(["cat"]) as child:
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
            with pytest.raises(Stop):
                sconn.forward(child)
    finally:
        signal.signal(signal.SIGUSR1, old)
