"""Issue 7, case 14: 1 GiB each way at once, through `cat` and through a TCP
backend -> sha256 equal. (Case 15, 1,000 concurrent connections on fds
above 1024: test_22_serve_limits.py test_1100_concurrent_connections for
the server, and tests/c/test_hostile.c thousand_concurrent_conns_above_fd_1024
for the core built with _FORTIFY_SOURCE=2.)

The client streams distinct pseudo-random 1 MiB blocks (no big buffer) and
hashes what it sends and what comes back; the server runs in this process
(tlspump.Server in its thread, the GIL released). TLSPUMP_BULK_MIB sets the
size (default 1024).
"""
import hashlib
import os
import random
import selectors
import socket
import time

import pytest

import tlspump
from serve_util import EchoBackend

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MIB = 1 << 20
TOTAL = int(os.environ.get("TLSPUMP_BULK_MIB", "1024")) * MIB


def blocks(seed):
    rnd = random.Random(seed)
    while True:
        yield rnd.randbytes(MIB)


def stream_both_ways(addr, total, timeout=600):
    """Sends total bytes while reading the echo; returns (sha sent, sha
    received, bytes received, seconds)."""
    cctx = tlspump.Context.client(verify=False)
    sent_sha, got_sha = hashlib.sha256(), hashlib.sha256()
    gen = blocks(14)
    with socket.create_connection(addr, timeout=10) as s:
        conn = cctx.wrap(s)
        try:
            t0 = time.monotonic()
            conn.handshake(timeout=10)
            sent = got = 0
            pending = memoryview(b"")
            shut = False
            eof = False
            deadline = t0 + timeout
            with selectors.DefaultSelector() as sel:
                sel.register(s, selectors.EVENT_READ)
                while not eof:
                    assert time.monotonic() < deadline, "sent %d got %d" % (sent, got)
                    while sent < total:
                        if not pending:
                            block = next(gen)[:total - sent]
                            sent_sha.update(block)
                            pending = memoryview(block)
                        n = conn.write(pending)
                        sent += n
                        pending = pending[n:]
                        if pending:
                            break
                    if sent == total and not shut:
                        shut = conn.shutdown() == tlspump.DONE
                    while True:
                        d = conn.read()
                        if d is None:
                            break
                        if d == b"":
                            eof = True
                            break
                        got_sha.update(d)
                        got += len(d)
                    if eof:
                        break
                    sel.modify(s, conn.want | selectors.EVENT_READ)
                    sel.select(5)
            return sent_sha.hexdigest(), got_sha.hexdigest(), got, time.monotonic() - t0
        finally:
            conn.close()


def test_1gib_each_way_through_cat():
    sctx = tlspump.Context.server()
    with tlspump.Server(("127.0.0.1", 0), sctx, command=["cat"], log=None) as srv:
        sha_out, sha_in, n, secs = stream_both_ways(srv.address, TOTAL)
    assert n == TOTAL
    assert sha_in == sha_out
    print("\n%d MiB each way through cat: %.1f s" % (TOTAL >> 20, secs))


def test_1gib_each_way_through_a_tcp_backend():
    sctx = tlspump.Context.server()
    backend = EchoBackend()
    try:
        with tlspump.Server(("127.0.0.1", 0), sctx, backend=backend.address,
                            log=None) as srv:
            sha_out, sha_in, n, secs = stream_both_ways(srv.address, TOTAL)
    finally:
        backend.stop()
    assert n == TOTAL
    assert sha_in == sha_out
    print("\n%d MiB each way through a TCP backend: %.1f s" % (TOTAL >> 20, secs))
