"""Issue 7, cases 17 and 18.

17. A 1 ms SIGALRM timer (Python's handlers: no SA_RESTART) during a
    handshake and a 100 MB transfer made of blocking calls -> no spurious
    error (EINTR is the core's business), and the Python handler runs.
18. A stale error left on OpenSSL's per-thread error queue by unrelated code
    before every call -> the WANT results are still handled correctly.
"""
import ctypes
import hashlib
import random
import signal
import socket

import pytest

import tlspump
from conftest import PeerThread, handshake_pair

MB = 1000 * 1000


@pytest.fixture
def alarm_storm():
    count = [0]

    def handler(signum, frame):
        count[0] += 1
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    yield count
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    signal.signal(signal.SIGALRM, old)


# pytest-timeout's default method uses SIGALRM itself: a thread here.
# no_fault: about EINTR in the core's waits, not the transport (and 100 MB
# through 1-byte reads takes long).
@pytest.mark.no_fault
@pytest.mark.timeout(300, method="thread")
def test_1ms_sigalrm_during_handshake_and_100mb(alarm_storm):
    total = 100 * MB
    a, b = socket.socketpair()
    sctx = tlspump.Context.server()
    server = sctx.wrap(a)
    client = tlspump.Context.client(ca=sctx.cert_pem.encode()).wrap(
        b, server_hostname="localhost")
    block = random.Random(17).randbytes(MB)
    want = hashlib.sha256(block * 100).hexdigest()

    def serve():  # blocking calls in a thread (signals may land here too)
        assert server.handshake(timeout=60) == tlspump.DONE
        h = hashlib.sha256()
        n = 0
        while n < total:
            d = server.read(timeout=60)
            assert d, "EOF after %d bytes" % n
            h.update(d)
            n += len(d)
        assert server.write(b"ok", timeout=60) == 2
        assert server.shutdown(timeout=60) == tlspump.DONE
        return h.hexdigest()
    try:
        th = PeerThread(serve)
        th.start()
        # the main thread: the Python handler runs from the core's waits
        assert client.handshake(timeout=60) == tlspump.DONE
        after_handshake = alarm_storm[0]
        for _ in range(100):
            assert client.write(block, timeout=60) == MB
        assert client.flush(timeout=60) == tlspump.DONE
        assert client.read(timeout=60) == b"ok"
        assert client.read(timeout=60) == b""
        assert th.result(timeout=60) == want
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        server.close()
        client.close()
        a.close()
        b.close()
    assert alarm_storm[0] > 10, "the Python handler ran %d times" % alarm_storm[0]
    print("\n%d SIGALRMs handled (%d during the handshake)" % (alarm_storm[0], after_handshake))


# ---- 18 -----------------------------------------------------------------------


def libcrypto():
    """The libcrypto the extension uses (already loaded)."""
    import tlspump._tlspump  # noqa: F401
    with open("/proc/self/maps") as f:
        for line in f:
            if "libcrypto.so" in line:
                return ctypes.CDLL(line.split()[-1])
    pytest.skip("libcrypto not found in the process")


@pytest.fixture(scope="module")
def stale():
    lib = libcrypto()
    lib.ERR_new.restype = None
    lib.ERR_set_error.restype = None
    lib.ERR_peek_error.restype = ctypes.c_ulong
    ERR_LIB_SSL, SSL_R_WRONG_VERSION_NUMBER = 20, 267
    ERR_LIB_SYS = 2

    def push():
        lib.ERR_new()
        lib.ERR_set_error(ERR_LIB_SSL, SSL_R_WRONG_VERSION_NUMBER, None)
        lib.ERR_new()
        lib.ERR_set_error(ERR_LIB_SYS, 104, None)  # ECONNRESET
        assert lib.ERR_peek_error() != 0
    return push


@pytest.mark.timeout(60)
def test_stale_openssl_errors_before_every_call(stale):
    a, b = socket.socketpair()
    sctx = tlspump.Context.server()
    server = sctx.wrap(a)
    client = tlspump.Context.client(ca=sctx.cert_pem.encode()).wrap(
        b, server_hostname="localhost")
    try:
        class Stale:
            """Wraps a Conn: a stale error before each call."""
            def __init__(self, c):
                self.c = c

            def __getattr__(self, name):
                attr = getattr(self.c, name)
                if not callable(attr):
                    return attr

                def call(*a, **kw):
                    stale()
                    return attr(*a, **kw)
                return call
        sc, cc = Stale(server), Stale(client)
        assert handshake_pair(cc, sc) == [tlspump.DONE, tlspump.DONE]
        stale()
        assert cc.read() is None  # a WANT_READ, not an error
        assert cc.want == tlspump.WANT_READ
        assert sc.write(b"data") == 4
        assert cc.read(timeout=5) == b"data"
        assert cc.read() is None
        payload = random.Random(18).randbytes(300000)
        assert sc.write(payload) == len(payload)
        got = b""
        while len(got) < len(payload):
            if server.buffered:
                sc.flush()
            d = cc.read(timeout=5)
            assert d
            got += d
        assert got == payload
        assert cc.shutdown(timeout=5) == tlspump.DONE
        assert sc.read(timeout=5) == b""
        # a real error still names the real reason, not the stale one
        # (the peer's close_notify is in; its socket goes away: EPIPE)
        stale()
        b.shutdown(socket.SHUT_RDWR)
        with pytest.raises(tlspump.ResetError) as ei:
            sc.shutdown(timeout=5)
        assert "wrong version number" not in str(ei.value)
        assert ei.value.operation == "shutdown"
    finally:
        server.close()
        client.close()
        a.close()
        b.close()
