"""Issue 7, case 16: 10,000 connect/close cycles mixing successes, bad
handshakes and RSTs, plus the error paths of the binding (exceptions,
wrong arguments, use after close): RSS within +-2 MiB, a constant fd count,
CPython refcounts and tracemalloc flat. (The same cycles in C run under
ASan/LSan in tests/c/test_hostile.c: 0 leaks.)
"""
import gc
import os
import socket
import struct
import sys
import tracemalloc

import pytest

import tlspump
from conftest import handshake_pair

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CYCLES = 10000
# Under ASan the freed memory sits in the quarantine: RSS says nothing.
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Cycler:
    def __init__(self):
        self.sctx = tlspump.Context.server()
        self.cctx = tlspump.Context.client(ca=self.sctx.cert_pem.encode())
        self.ls = socket.create_server(("127.0.0.1", 0))
        self.addr = self.ls.getsockname()
        self.outcomes = {}

    def close(self):
        self.ls.close()

    def tcp(self):
        c = socket.create_connection(self.addr)
        s, _ = self.ls.accept()
        return c, s

    def one(self, i):
        kind = i % 5
        if kind == 0:  # success: handshake, data, close_notify both ways
            a, b = socket.socketpair()
            with a, b:
                server, client = self.sctx.wrap(a), self.cctx.wrap(b, server_hostname="localhost")
                with server, client:
                    assert handshake_pair(client, server) == [tlspump.DONE, tlspump.DONE]
                    client.write(b"ping")
                    assert server.read(timeout=5) == b"ping"
                    client.shutdown(timeout=5)
                    assert server.read(timeout=5) == b""
                    server.shutdown(timeout=5)
            return "ok"
        if kind == 1:  # a bad handshake: garbage to the server
            a, b = socket.socketpair()
            with a, b:
                b.sendall(b"\x16\x03\x01\x00\x05garbage")
                with self.sctx.wrap(a) as server:
                    try:
                        server.handshake(timeout=5)
                    except tlspump.Error as e:
                        return type(e).__name__
            return "no error"
        if kind == 2:  # RST mid-handshake
            c, s = self.tcp()
            with s:
                client = self.cctx.wrap(c, server_hostname="localhost")
                client.handshake()
                client.close()
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
                with self.sctx.wrap(s) as server:
                    try:
                        server.handshake(timeout=5)
                    except tlspump.Error as e:
                        return type(e).__name__
            return "no error"
        if kind == 3:  # truncation after data
            a, b = socket.socketpair()
            with a, b:
                server, client = self.sctx.wrap(a), self.cctx.wrap(b, server_hostname="localhost")
                with server, client:
                    handshake_pair(client, server)
                    client.write(b"x" * 100)
                    b.shutdown(socket.SHUT_WR)
                    try:
                        while server.read(timeout=5):
                            pass
                    except tlspump.TruncatedError as e:
                        return type(e).__name__
            return "no error"
        # the binding's own error paths: wrong arguments, closed objects
        a, b = socket.socketpair()
        with a, b:
            conn = self.cctx.wrap(a, server_hostname="localhost")
            for bad in (lambda: conn.read(0), lambda: conn.write("str"),
                        lambda: conn.handshake(timeout="x"),
                        lambda: self.sctx.wrap(-1), lambda: self.cctx.wrap(a),
                        lambda: tlspump.Context.server(cert="/nonexistent"),
                        lambda: tlspump.spawn([]),
                        lambda: tlspump.Context.client(alpn=[""])):
                try:
                    bad()
                except (TypeError, ValueError, tlspump.Error):
                    pass
            conn.close()
            try:
                conn.read()
            except tlspump.ClosedError as e:
                return type(e).__name__
        return "no error"


def test_10000_cycles_flat():
    cy = Cycler()
    try:
        for i in range(500):  # warm-up: caches, OpenSSL's lazy globals
            cy.one(i)
        gc.collect()
        fds0, rss0 = fd_count(), rss_kib()
        objs0 = len(gc.get_objects())
        outcomes = {}
        rss_max = rss0
        refs0 = {name: sys.getrefcount(obj) for name, obj in (
            ("sctx", cy.sctx), ("cctx", cy.cctx), ("Error", tlspump.Error),
            ("TruncatedError", tlspump.TruncatedError),
            ("ResetError", tlspump.ResetError), ("ClosedError", tlspump.ClosedError),
            ("Conn", tlspump.Conn), ("Context", tlspump.Context))}
        tracemalloc.start()
        snap0 = tracemalloc.take_snapshot()
        for i in range(CYCLES):
            r = cy.one(i)
            outcomes[(i % 5, r)] = outcomes.get((i % 5, r), 0) + 1
            if i % 1000 == 999:
                rss_max = max(rss_max, rss_kib())
        gc.collect()
        snap1 = tracemalloc.take_snapshot()
        tracemalloc.stop()
        growth = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
        del snap0, snap1
        gc.collect()
        fds1, rss1 = fd_count(), rss_kib()
        objs1 = len(gc.get_objects())
        refs1 = {name: sys.getrefcount(obj) for name, obj in (
            ("sctx", cy.sctx), ("cctx", cy.cctx), ("Error", tlspump.Error),
            ("TruncatedError", tlspump.TruncatedError),
            ("ResetError", tlspump.ResetError), ("ClosedError", tlspump.ClosedError),
            ("Conn", tlspump.Conn), ("Context", tlspump.Context))}
    finally:
        cy.close()
    print("\n%d cycles: fds %d -> %d, RSS %d -> %d KiB (max %d), objects %d -> %d, "
          "tracemalloc %+d bytes, outcomes %s" % (CYCLES, fds0, fds1, rss0, rss1, rss_max,
                                                  objs0, objs1, growth, sorted(outcomes.items())))
    # every cycle ended the way its kind must
    assert all(r != "no error" for (_, r) in outcomes), outcomes
    assert outcomes[(1, "Error")] == CYCLES // 5
    assert outcomes[(2, "ResetError")] == CYCLES // 5
    assert outcomes[(3, "TruncatedError")] == CYCLES // 5
    assert outcomes[(4, "ClosedError")] == CYCLES // 5
    assert fds1 == fds0
    assert refs1 == refs0
    assert abs(objs1 - objs0) < 100, (objs0, objs1)
    assert growth < 64 * 1024, "Python memory grew by %d bytes" % growth
    if not SANITIZED:
        assert abs(rss1 - rss0) <= 2048, "RSS %d -> %d KiB" % (rss0, rss1)
