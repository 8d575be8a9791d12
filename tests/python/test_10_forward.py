"""Conn.forward / Pump / aio.forward with a real `cat` child: 64 MiB from a
tlspump client, echoed back, sha256 equal both ways; the three ways of
running the same pump (blocking in C, a selectors loop, asyncio)."""
import asyncio
import hashlib
import os
import selectors
import time

import pytest

import tlspump
import tlspump.aio
from conftest import PeerThread
from fwdutil import connect_pair, run_client, zombies

pytestmark = pytest.mark.timeout(240)

SIZE = 64 << 20


@pytest.fixture(scope="module")
def payload():
    data = os.urandom(SIZE)
    return data, hashlib.sha256(data).hexdigest()


def check_echo(stats, res, payload, child):
    data, digest = payload
    assert res.eof == b"", res.eof
    assert res.n == SIZE
    assert res.sha.hexdigest() == digest
    assert stats.to_target == SIZE and stats.to_tls == SIZE
    assert stats.tls_end == "clean" and stats.target_end == "clean"
    assert stats.tls_error is None and stats.target_error is None
    assert stats.discarded == 0
    assert stats.seconds > 0
    assert child.wait(timeout=10) == 0
    child.close()
    assert zombies() == []


@pytest.mark.slow
def test_forward_cat_64mib(server_ctx, client_ctx, listener, sockets, conns,
                           payload):
    sconn, cconn, _ = connect_pair(listener, server_ctx, client_ctx, sockets,
                                   conns)
    child = tlspump.spawn(["cat"])
    client = PeerThread(run_client, cconn, payload[0])
    client.start()
    stats = sconn.forward(child)
    res = client.result(timeout=120)
    assert isinstance(stats, tlspump.ForwardStats)
    assert stats.returncode == 0  # forward waited for the child
    check_echo(stats, res, payload, child)


@pytest.mark.slow
def test_pump_selectors_cat_64mib(server_ctx, client_ctx, listener, sockets,
                                  conns, payload):
    sconn, cconn, _ = connect_pair(listener, server_ctx, client_ctx, sockets,
                                   conns)
    child = tlspump.spawn(["cat"])
    client = PeerThread(run_client, cconn, payload[0])
    client.start()
    deadline = time.monotonic() + 120
    with tlspump.Pump(sconn, child) as pump, \
            selectors.DefaultSelector() as sel:
        with pytest.raises(tlspump.Error, match="in use"):
            sconn.read()  # the pump owns the connection
        while not pump.step():
            wants = pump.wants()
            timeout = pump.timeout
            assert wants or timeout is not None, "nothing to wait for"
            for fd, events in wants:
                assert events in (tlspump.WANT_READ, tlspump.WANT_WRITE,
                                  tlspump.WANT_READ | tlspump.WANT_WRITE)
                sel.register(fd, events)
            sel.select(timeout)
            for fd, _ in wants:
                sel.unregister(fd)
            assert time.monotonic() < deadline
        assert pump.done
        stats = pump.stats
    res = client.result(timeout=120)
    assert stats.returncode is None  # Pump does not wait for the child
    check_echo(stats, res, payload, child)
    assert sconn.read() == b""  # the connection is ours again


@pytest.mark.slow
def test_aio_forward_cat_64mib(server_ctx, client_ctx, listener, sockets,
                               conns, payload):
    sconn, cconn, _ = connect_pair(listener, server_ctx, client_ctx, sockets,
                                   conns)
    child = tlspump.spawn(["cat"])
    client = PeerThread(run_client, cconn, payload[0])
    client.start()

    async def main():
        ticks = 0

        async def ticker():  # the loop keeps running other tasks
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        try:
            stats = await asyncio.wait_for(
                tlspump.aio.forward(sconn, child), 120)
        finally:
            t.cancel()
        return stats, ticks

    stats, ticks = asyncio.run(main())
    res = client.result(timeout=120)
    assert ticks > 1
    assert stats.returncode == 0
    check_echo(stats, res, payload, child)


def test_small_echo_all_target_kinds(server_ctx, client_ctx, listener,
                                     sockets, conns):
    """The target as a Child, an int fd, a socket object and a (rfd, wfd)
    tuple of pipes (handed over with close_target_write)."""
    import socket
    import subprocess

    for kind in ("child", "int", "socket", "pipes"):
        sconn, cconn, _ = connect_pair(listener, server_ctx, client_ctx,
                                       sockets, conns)
        data = os.urandom(100000)
        proc = child = None
        if kind == "child":
            target = child = tlspump.spawn(["cat"])
        elif kind in ("int", "socket"):
            a, b = socket.socketpair()
            sockets.add(a)
            sockets.add(b)
            proc = subprocess.Popen(["cat"], stdin=b, stdout=b)
            b.close()
            target = a.fileno() if kind == "int" else a
        else:
            proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE)
            # The pump owns (and closes) a duplicate of the write end.
            wfd = os.dup(proc.stdin.fileno())
            proc.stdin.close()
            target = (proc.stdout.fileno(), wfd)
        client = PeerThread(lambda: run_client(cconn, data, keep=True))
        client.start()
        stats = sconn.forward(target, close_target_write=(kind == "pipes"))
        res = client.result(timeout=30)
        assert res.data == data, kind
        assert (stats.tls_end, stats.target_end) == ("clean", "clean"), kind
        if child:
            assert stats.returncode == 0
            child.close()
        else:
            assert stats.returncode is None
            assert proc.wait(10) == 0
            if proc.stdout:
                proc.stdout.close()
            if kind == "pipes":
                with pytest.raises(OSError):
                    os.fstat(wfd)  # closed by the pump
    assert zombies() == []


def test_aio_forward_cancelled_gives_conn_back(server_ctx, client_ctx,
                                               listener, sockets, conns):
    """Cancelling the task stops the pump and frees the Conn and Child for
    other calls; the fds are unregistered from the loop."""
    sconn, cconn, _ = connect_pair(listener, server_ctx, client_ctx, sockets,
                                   conns)
    child = tlspump.spawn(["cat"])

    async def main():
        task = asyncio.create_task(tlspump.aio.forward(sconn, child))
        await asyncio.sleep(0.1)  # it is waiting for the client's hello
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Nothing of the pump is left on the loop.
        loop = asyncio.get_running_loop()
        assert not loop.remove_reader(sconn.fileno())
        assert not loop.remove_writer(sconn.fileno())

    asyncio.run(main())
    assert sconn.read() is None  # ours again (would block: no hello yet)
    child.close()
    assert zombies() == []
