"""asyncio support: run a tlspump.Pump on the running event loop.

    stats = await tlspump.aio.forward(conn, child)

The pump's work is done in C by Pump.step(); this module only registers the
fds the pump waits for with loop.add_reader/add_writer (and a timer for the
idle/linger deadline) and steps it when they are ready. The fds must not be
registered with the loop by anyone else meanwhile.
"""
import asyncio

from ._tlspump import WANT_READ, WANT_WRITE, Child, ForwardStats, Pump

__all__ = ["forward"]

# After the pump ends, how long to wait for a Child target to exit (as
# Conn.forward does) so the stats carry its returncode.
CHILD_GRACE = 1.0


async def forward(conn, target, *, idle_timeout=None, close_target_write=False):
    """Forwards between conn and target (a Child, a socket, an fd or a
    (read_fd, write_fd) tuple) like Conn.forward(), without blocking the
    event loop. Returns ForwardStats. Cancelling the task stops the pump."""
    loop = asyncio.get_running_loop()
    with Pump(conn, target, idle_timeout=idle_timeout,
              close_target_write=close_target_write) as pump:
        while not pump.step():
            await _ready(loop, pump.wants(), pump.timeout)
        stats = pump.stats
    if isinstance(target, Child):
        try:
            code = await loop.run_in_executor(None, target.wait, CHILD_GRACE)
        except TimeoutError:
            code = None
        stats = ForwardStats(tuple(stats)[:-1] + (code,))
    return stats


async def _ready(loop, wants, timeout):
    """Waits until one of wants [(fd, events)] is ready or timeout passes."""
    fut = loop.create_future()

    def wake():
        if not fut.done():
            fut.set_result(None)

    readers, writers = [], []
    timer = None
    try:
        for fd, events in wants:
            if events & WANT_READ:
                loop.add_reader(fd, wake)
                readers.append(fd)
            if events & WANT_WRITE:
                loop.add_writer(fd, wake)
                writers.append(fd)
        if timeout is not None:
            timer = loop.call_later(timeout, wake)
        await fut
    finally:
        for fd in readers:
            loop.remove_reader(fd)
        for fd in writers:
            loop.remove_writer(fd)
        if timer is not None:
            timer.cancel()
