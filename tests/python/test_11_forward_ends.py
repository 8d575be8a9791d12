"""How a forward ends: half-close both ways (wc -c, head -c 10, a child
that writes 64 KiB and exits), truncation and RST from the client."""
import os
import socket
import struct

import pytest

import tlspump
from conftest import PeerThread
from fwdutil import connect_pair, run_client, zombies

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pair(server_ctx, client_ctx, listener, sockets, conns):
    return connect_pair(listener, server_ctx, client_ctx, sockets, conns)


def test_wc_half_close_3mb(pair):
    """The client's close_notify reaches wc as EOF; wc's answer comes after
    it and still reaches the client, then a clean close_notify."""
    sconn, cconn, _ = pair
    data = os.urandom(3000000)
    with tlspump.spawn(["wc", "-c"]) as child:
        client = PeerThread(lambda: run_client(cconn, data, keep=True))
        client.start()
        stats = sconn.forward(child)
        res = client.result(timeout=60)
    assert res.eof == b""
    assert bytes(res.data).strip() == b"3000000"
    assert stats.to_target == 3000000
    assert stats.to_tls == len(res.data)
    assert (stats.tls_end, stats.target_end) == ("clean", "clean")
    assert stats.returncode == 0
    assert zombies() == []


def test_head_exits_early_while_client_sends_10mb(pair):
    """head -c 10 exits after 10 bytes while the client is still sending:
    the client gets them and a clean close_notify (no RST destroys them),
    the pump ends without error or hang."""
    sconn, cconn, _ = pair
    data = os.urandom(10 * 1000 * 1000)
    with tlspump.spawn(["head", "-c", "10"]) as child:
        client = PeerThread(lambda: run_client(
            cconn, data, close_after=False, stop_on_eof=True, keep=True))
        client.start()
        stats = sconn.forward(child)
        res = client.result(timeout=60)
    assert res.eof == b"", res.eof
    assert bytes(res.data) == data[:10]
    # Everything the client sent before its close_notify was read: what
    # head did not take was discarded, not left to provoke a RST.
    assert stats.to_target + stats.discarded == res.sent
    assert stats.discarded > 0
    assert stats.to_tls == 10
    assert stats.target_end == "clean", stats
    assert stats.tls_end == "clean", stats  # the client's close_notify
    assert stats.tls_error is None and stats.target_error is None
    assert stats.returncode == 0
    assert zombies() == []


def test_child_writes_64k_and_exits(pair):
    sconn, cconn, _ = pair
    with tlspump.spawn(["sh", "-c", "head -c 65536 /dev/zero; exit 0"]) as child:
        assert child.wait(timeout=10) == 0  # gone before we read a byte
        client = PeerThread(lambda: run_client(
            cconn, close_after=False, stop_on_eof=True, keep=True))
        client.start()
        stats = sconn.forward(child)
        res = client.result(timeout=30)
    assert res.eof == b""
    assert bytes(res.data) == b"\0" * 65536
    assert stats.to_tls == 65536
    assert (stats.tls_end, stats.target_end) == ("clean", "clean")
    assert stats.returncode == 0


def test_client_truncates_child_sees_eof(pair):
    """The client closes its socket without close_notify: truncated; cat
    gets EOF and exits 0."""
    sconn, cconn, csock = pair
    data = os.urandom(200000)

    def client():
        res = run_client(cconn, data, close_after=False, stop_after=len(data))
        csock.shutdown(socket.SHUT_RDWR)  # FIN, no close_notify
        return res

    with tlspump.spawn(["cat"]) as child:
        t = PeerThread(client)
        t.start()
        stats = sconn.forward(child)
        res = t.result(timeout=30)
        assert res.n == len(data)
        assert stats.tls_end == "truncated", stats
        assert "close_notify" in stats.tls_error
        assert stats.target_end == "aborted"
        assert stats.returncode == 0  # cat saw EOF
    assert zombies() == []


def test_client_reset_while_child_runs_yes(pair):
    """RST from the client while `yes` floods: the pump ends with 'reset',
    yes gets EPIPE (or SIGPIPE) and is reaped, the process is unaffected."""
    sconn, cconn, csock = pair

    def client():
        res = run_client(cconn, close_after=False, stop_after=1 << 20)
        csock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                         struct.pack("ii", 1, 0))
        csock.close()  # unread data + linger 0: RST
        return res

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        child = tlspump.spawn(["yes"], stderr=devnull)
    finally:
        os.close(devnull)
    with child:
        t = PeerThread(client)
        t.start()
        stats = sconn.forward(child)
        res = t.result(timeout=30)
        assert res.n >= 1 << 20
        assert stats.tls_end == "reset", stats
        assert stats.returncode is not None  # exited and reaped
        assert stats.returncode in (1, -13), stats  # EPIPE or SIGPIPE
    assert zombies() == []
