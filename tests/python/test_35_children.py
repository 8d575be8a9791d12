"""Issue 7, case 13: broken children. (test_11_forward_ends.py has the
early exit of `head` under 10 MB and the 64 KiB answer of an exiting
child; these are the other ones.)

- a child that never reads while the client pushes 1 GiB at it: memory
  stays bounded, the session ends within a grace time of the child's exit;
- an early exit while the host ignores SIGCHLD: output delivered, no zombie;
- a child that leaves a background grandchild holding the socketpair: its
  output is delivered and the session ends within a grace time after the
  child's exit, not when the grandchild lets go.
"""
import os
import signal
import socket
import time

import pytest

import tlspump
from conftest import PeerThread
from fwdutil import connect_pair, zombies

pytestmark = pytest.mark.timeout(120)

GIB = 1 << 30


@pytest.fixture
def pair(server_ctx, client_ctx, listener, sockets, conns):
    return connect_pair(listener, server_ctx, client_ctx, sockets, conns)


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def push_until_eof(conn, total, chunk=256 * 1024, timeout=60):
    """Sends up to total bytes (one reused chunk: no big buffer here) while
    reading; stops at the server's close_notify (answers it) or an error.
    Returns (sent, received bytes, end, peak RSS in KiB)."""
    import selectors
    block = b"\xa5" * chunk
    sent, got, end, peak = 0, bytearray(), None, rss_kib()
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        while end is None:
            assert time.monotonic() < deadline, "client deadline (sent %d)" % sent
            try:
                if not conn.handshake_done and conn.handshake() != tlspump.DONE:
                    pass
                elif sent < total:
                    sent += conn.write(block[:min(chunk, total - sent)])
                while True:
                    d = conn.read()
                    if not d:
                        break
                    got += d
                if d == b"":
                    end = b""
                    conn.shutdown()
                    break
            except tlspump.Error as e:
                end = e
                break
            peak = max(peak, rss_kib())
            sel.register(conn.fileno(), conn.want or tlspump.WANT_READ)
            sel.select(1.0)
            sel.unregister(conn.fileno())
    return sent, bytes(got), end, peak


def test_child_never_reads_1gib_inbound(pair):
    sconn, cconn, _ = pair
    rss0 = rss_kib()
    with tlspump.spawn(["sh", "-c", "sleep 1; echo bye"]) as child:
        client = PeerThread(lambda: push_until_eof(cconn, GIB))
        t0 = time.monotonic()
        client.start()
        stats = sconn.forward(child)
        took = time.monotonic() - t0
        sent, got, end, peak = client.result(timeout=60)
    assert got == b"bye\n"
    assert end == b"", end
    assert sent < GIB  # backpressure: the client could not push it all
    # bounded: the connection's 1 MiB buffer, 64 KiB, socket buffers
    assert peak - rss0 < 64 * 1024, "RSS grew by %d KiB" % (peak - rss0)
    # the child's exit (after 1 s) ends the session within the linger
    assert took < 1 + 2 + 3, took
    assert stats.target_end == "clean"
    assert stats.returncode == 0
    assert zombies() == []


@pytest.fixture
def sigchld_ignored():
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGCHLD, old)


def test_early_exit_with_sigchld_ignored(pair, sigchld_ignored):
    sconn, cconn, _ = pair
    with tlspump.spawn(["head", "-c", "10"]) as child:
        client = PeerThread(lambda: push_until_eof(cconn, 4 << 20))
        client.start()
        stats = sconn.forward(child)
        sent, got, end, _ = client.result(timeout=60)
    assert got == b"\xa5" * 10
    assert end == b""
    assert stats.target_end == "clean"
    assert zombies() == []


def grandchildren(tag):
    """pids of `sleep TAG` processes (started by the test only)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                if f.read().split(b"\0")[:2] == [b"sleep", tag.encode()]:
                    out.append(int(pid))
        except OSError:
            pass
    return out


@pytest.fixture
def grandchild_tag():
    tag = "12.%d" % os.getpid()  # 12 s: the longest a failure can take
    yield tag
    for pid in grandchildren(tag):
        os.kill(pid, signal.SIGKILL)


GRACE_AFTER_EXIT = 5.0  # seconds a session may outlive its child


@pytest.mark.no_fault
def test_grandchild_holding_the_socketpair_forward(pair, grandchild_tag):
    sconn, cconn, csock = pair
    cmd = ["sh", "-c", "sleep %s & echo hi; exit 0" % grandchild_tag]
    with tlspump.spawn(cmd) as child:
        def client_gives_up():
            try:
                return push_until_eof(cconn, 0, timeout=GRACE_AFTER_EXIT + 1)
            except AssertionError:  # its deadline: drop the connection
                cconn.close()
                csock.shutdown(socket.SHUT_RDWR)
                return None, b"hi\n", None, None
        client = PeerThread(client_gives_up)
        client.start()
        t0 = time.monotonic()
        sconn.forward(child)
        took = time.monotonic() - t0
        got = client.result(timeout=30)[1]
    assert got == b"hi\n"
    assert took < GRACE_AFTER_EXIT, "the session outlived its child by %.1f s" % took


@pytest.mark.no_fault
def test_grandchild_holding_the_socketpair_server(grandchild_tag):
    sctx = tlspump.Context.server()
    cctx = tlspump.Context.client(verify=False)
    cmd = ["sh", "-c", "sleep %s & echo hi; exit 0" % grandchild_tag]
    with tlspump.Server(("127.0.0.1", 0), sctx, command=cmd, log=None, grace=2) as srv:
        with socket.create_connection(srv.address, timeout=10) as s:
            conn = cctx.wrap(s)
            t0 = time.monotonic()
            try:
                conn.handshake(timeout=10)
                got = b""
                try:
                    while True:
                        d = conn.read(timeout=GRACE_AFTER_EXIT + 1)
                        if not d:
                            break
                        got += d
                except tlspump.Error:
                    pass
                took = time.monotonic() - t0
            finally:
                conn.close()
    assert got == b"hi\n"
    assert zombies() == []
    assert took < GRACE_AFTER_EXIT, "the session outlived its child by %.1f s" % took
