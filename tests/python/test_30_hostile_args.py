"""Issue 7, cases 1 and 2: careless callers.

1. Every entry point of the binding, each argument in turn replaced by a
   hostile value (None, wrong types, fd -1, a closed fd, huge and negative
   sizes, NaN, NUL bytes, objects whose fileno() lies or raises): a
   TypeError/ValueError/OverflowError or a tlspump.Error, never a crash or a
   SystemError, and the process's open-fd count is unchanged.
2. read(0), read(-1), write(b""), a 3 GiB write: a clean error or 0, and
   counts that are never truncated to 32 bits.
"""
import gc
import mmap
import os
import socket

import pytest

import tlspump

pytestmark = pytest.mark.timeout(120)


class HostileError(Exception):
    """Raised by the hostile objects' own methods: may propagate."""


class LyingFileno:
    def fileno(self):
        return "3"


class RaisingFileno:
    def fileno(self):
        raise HostileError("fileno() failed")


class HugeFileno:
    def fileno(self):
        return 2**40


class RaisingIndex:
    def __index__(self):
        raise HostileError("__index__ failed")


class RaisingPath:
    def __fspath__(self):
        raise HostileError("__fspath__ failed")


def closed_fd():
    """An fd number that is certainly not open (and not reused by a later
    open() during the test: far above what the process uses)."""
    fd = 3999
    with pytest.raises(OSError):
        os.fstat(fd)
    return fd


HOSTILE = [
    None, True, False, -1, 0, 1, 2**31 - 1, 2**31, -2**31 - 1, 2**63, 2**64,
    -2**64, 1.5, -0.5, float("nan"), float("inf"), float("-inf"), "", "\0",
    "x" * 70000, "é\udcff", b"", b"\0" * 3, b"-----BEGIN", bytearray(b"ab"),
    memoryview(b"xyz"), [], [None], ["\0"], ["x"] * 3, {}, {"A": 1}, {1: "x"},
    (), (1,), (1, 2, 3), ("127.0.0.1", -1), ("127.0.0.1", 2**70),
    object(), LyingFileno(), RaisingFileno(), HugeFileno(), RaisingIndex(),
    RaisingPath(), "closed-fd",
]

ALLOWED = (TypeError, ValueError, OverflowError, OSError, HostileError)


def values():
    fd = closed_fd()
    return [fd if v == "closed-fd" else v for v in HOSTILE]


def fd_count():
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def fds_unchanged():
    gc.collect()
    before = fd_count()
    yield
    gc.collect()
    assert fd_count() == before, "open fds changed"


@pytest.fixture(scope="module")
def sctx():
    return tlspump.Context.server()


@pytest.fixture(scope="module")
def cctx():
    return tlspump.Context.client(verify=False)


def cleanup(result):
    """Closes whatever a call that succeeded returned."""
    for obj in result if isinstance(result, tuple) else (result,):
        close = getattr(obj, "close", None)
        if close is not None and not isinstance(obj, (bytes, str, int)):
            try:
                close()
            except Exception:  # noqa: BLE001 -- best effort
                pass


def call_all(make_call, name):
    """make_call(value) performs one call; every hostile value in turn."""
    bad = []
    for v in values():
        try:
            cleanup(make_call(v))
        except ALLOWED:
            pass
        except SystemError as e:  # a C function returned NULL without error
            bad.append("%s(%r): SystemError %s" % (name, v, e))
        except Exception as e:  # noqa: BLE001
            bad.append("%s(%r): %s: %s" % (name, type(v).__name__, type(e).__name__, e))
    assert not bad, "\n".join(bad)


class DeadConn:
    """A Conn whose peer is gone: every call fails at once, nothing can
    block even with timeout=None."""

    def __init__(self, cctx):
        self.a, self.b = socket.socketpair()
        self.b.close()
        self.conn = cctx.wrap(self.a)

    def close(self):
        self.conn.close()
        self.a.close()


CONTEXT_OPTIONS = {
    "server": ["cert", "key", "client_ca", "alpn", "min_version", "write_buffer"],
    "client": ["ca", "verify", "cert", "key", "ca_dir", "alpn", "min_version",
               "write_buffer"],
}


@pytest.mark.parametrize("role", ["server", "client"])
def test_context_constructors(role, fds_unchanged):
    factory = getattr(tlspump.Context, role)
    for opt in CONTEXT_OPTIONS[role]:
        call_all(lambda v: factory(**{opt: v}), "Context.%s(%s=)" % (role, opt))
    call_all(lambda v: factory(v), "Context.%s(positional)" % role)


def test_wrap(sctx, cctx, fds_unchanged):
    call_all(lambda v: sctx.wrap(v), "wrap")
    a, b = socket.socketpair()
    try:
        call_all(lambda v: cctx.wrap(a, server_hostname=v), "wrap(server_hostname=)")
        vctx = tlspump.Context.client(ca=sctx.cert_pem.encode())
        call_all(lambda v: vctx.wrap(a, server_hostname=v), "verifying wrap(server_hostname=)")
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("method,slots", [
    ("handshake", ["timeout"]),
    ("flush", ["timeout"]),
    ("shutdown", ["timeout"]),
    ("wait", ["timeout"]),
    ("read", ["n", "timeout"]),
    ("write", ["data", "timeout"]),
])
def test_conn_methods(method, slots, cctx, fds_unchanged):
    for slot in slots:
        def one(v):
            d = DeadConn(cctx)
            try:
                kw = {slot: v}
                if method == "write" and slot != "data":
                    kw["data"] = b"x"
                return getattr(d.conn, method)(**kw)
            finally:
                d.close()
        call_all(one, "Conn.%s(%s=)" % (method, slot))
    # positional too, and extra arguments
    d = DeadConn(cctx)
    try:
        with pytest.raises(TypeError):
            getattr(d.conn, method)(1, 2, 3)
        with pytest.raises(TypeError):
            getattr(d.conn, method)(nope=1)
    finally:
        d.close()


def test_forward_and_pump(cctx, fds_unchanged):
    def forward(v, **kw):
        d = DeadConn(cctx)
        try:
            return d.conn.forward(v, **kw)
        finally:
            d.close()
    call_all(forward, "Conn.forward(target)")
    t1, t2 = socket.socketpair()
    try:
        call_all(lambda v: forward(t1, idle_timeout=v), "Conn.forward(idle_timeout=)")
        call_all(lambda v: forward(t1, close_target_write=v),
                 "Conn.forward(close_target_write=)")

        def pump(v, slot):
            d = DeadConn(cctx)
            try:
                if slot == "conn":
                    return tlspump.Pump(v, t1)
                if slot == "target":
                    return tlspump.Pump(d.conn, v)
                p = tlspump.Pump(d.conn, t1, idle_timeout=v)
                p.close()
                return None
            finally:
                d.close()
        for slot in ("conn", "target", "idle_timeout"):
            call_all(lambda v: pump(v, slot), "Pump(%s=)" % slot)
    finally:
        t1.close()
        t2.close()


def test_spawn_and_child(fds_unchanged):
    call_all(lambda v: tlspump.spawn(v), "spawn(argv)")
    call_all(lambda v: tlspump.spawn([v]), "spawn([argv0])")
    call_all(lambda v: tlspump.spawn(["true", v]), "spawn([true, arg])")
    for slot in ("env", "cwd", "stderr"):
        call_all(lambda v: tlspump.spawn(["true"], **{slot: v}), "spawn(%s=)" % slot)
    child = tlspump.spawn(["true"])
    try:
        assert child.wait(timeout=10) == 0  # reaped: no wait below blocks
        call_all(lambda v: child.wait(timeout=v), "Child.wait(timeout=)")
        # signal 0 probes; real signals are not sent at random
        call_all(lambda v: child.kill(v) if not isinstance(v, int) or v < 0 or v > 64
                 else None, "Child.kill(sig)")
    finally:
        child.close()


def test_server_arguments(sctx, fds_unchanged):
    base = {"command": ["true"]}

    def server(v, slot):
        kw = dict(base)
        if slot == "listen":
            return tlspump.Server(v, sctx, **kw)
        if slot == "ctx":
            return tlspump.Server(("127.0.0.1", 0), v, **kw)
        if slot == "backend":
            kw.pop("command")
        kw[slot] = v
        return tlspump.Server(("127.0.0.1", 0), sctx, **kw)
    for slot in ("listen", "ctx", "command", "backend", "max_conns",
                 "handshake_timeout", "idle_timeout", "grace", "workers", "log",
                 "log_json"):
        call_all(lambda v: server(v, slot), "Server(%s=)" % slot)


# ---- case 2: sizes ----------------------------------------------------------


@pytest.fixture
def pair(sctx):
    a, b = socket.socketpair()
    server = sctx.wrap(a)
    client = tlspump.Context.client(verify=False).wrap(b)
    from conftest import handshake_pair
    assert handshake_pair(client, server) == [tlspump.DONE, tlspump.DONE]
    yield client, server
    client.close()
    server.close()
    a.close()
    b.close()


def test_read_zero_and_negative_are_errors_not_eof(pair):
    client, server = pair
    for n in (0, -1, -2**63, -2**70):
        with pytest.raises(ValueError):
            client.read(n)
    # the connection is unharmed
    assert client.read() is None
    assert server.write(b"abc") == 3
    assert client.read(2**63, timeout=5) == b"abc"
    assert server.write(b"def") == 3
    assert client.read(2**80, timeout=5) == b"def"  # clamped, not wrapped


def test_empty_writes(pair):
    client, server = pair
    for empty in (b"", bytearray(), memoryview(b"")):
        assert client.write(empty) == 0
    assert client.buffered == 0
    assert client.write(b"", timeout=1) == 0


def test_3gib_write_is_not_truncated(pair):
    """A 3 GiB buffer (mapped, untouched beyond what is taken): the count
    is what the C buffer accepted (its 1 MiB limit plus what the socket
    took), never 3 GiB truncated to 32 bits (negative, or 0)."""
    client, server = pair
    size = 3 * 2**30 + 7
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                  prot=mmap.PROT_READ)
    try:
        view = memoryview(m)
        n = client.write(view)
        assert 0 < n <= 2**20 + 4 * 2**20, n
        assert client.buffered <= n
        # exactly n zero bytes arrive
        got = 0
        import selectors
        import time
        deadline = time.monotonic() + 20
        with selectors.DefaultSelector() as sel:
            sel.register(server.fileno(), selectors.EVENT_READ)
            while got < n and time.monotonic() < deadline:
                if client.buffered:
                    client.flush()
                d = server.read()
                if d:
                    assert d.count(0) == len(d)
                    got += len(d)
                else:
                    sel.select(0.1)
        assert got == n
        view.release()
    finally:
        m.close()
