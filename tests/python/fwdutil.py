"""Helpers of the forwarding tests (test_1x_*): a tlspump client driven by a
selectors loop, connected pairs, zombie and RSS checks."""
import hashlib
import os
import selectors
import socket
import time

import tlspump

CHUNK = 256 * 1024


def connect_pair(listener, server_ctx, client_ctx, sockets, conns):
    """A TCP connection through listener: (server_conn, client_conn, client
    socket). Neither side has done the handshake (forward does the server's,
    run_client the client's)."""
    csock = sockets.add(socket.create_connection(listener.getsockname(),
                                                 timeout=10))
    ssock = sockets.accept(listener)
    csock.settimeout(None)
    sconn = server_ctx.wrap(ssock)
    cconn = client_ctx.wrap(csock, server_hostname="localhost")
    conns(sconn)
    conns(cconn)
    return sconn, cconn, csock


class Result:
    def __init__(self):
        self.sha = hashlib.sha256()
        self.n = 0
        self.data = bytearray()
        self.sent = 0
        self.eof = None  # b"" (clean close_notify) or the exception


def run_client(conn, data=b"", *, close_after=True, stop_on_eof=False,
               keep=False, stop_after=None, timeout=60.0):
    """Sends data (then close_notify if close_after) while reading
    everything until the server's close_notify; at that EOF, stop_on_eof
    abandons the rest of data and answers with close_notify. stop_after:
    return as soon as that many bytes arrived. Returns a Result (sha256 and
    count of what arrived, the bytes if keep)."""
    res = Result()
    view = memoryview(data)
    shut = False
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        while True:
            if not conn.handshake_done:
                if conn.handshake() != tlspump.DONE:
                    _wait(sel, conn, deadline, res)
                    continue
            if res.eof is None and not shut:
                while res.sent < len(view):
                    piece = view[res.sent:res.sent + CHUNK]
                    n = conn.write(piece)
                    res.sent += n
                    if n < len(piece):
                        break
                else:
                    if conn.buffered:
                        conn.flush()
                if res.sent == len(view) and close_after:
                    shut = conn.shutdown() == tlspump.DONE
            if res.eof is None:
                try:
                    while True:
                        d = conn.read()
                        if not d:
                            break
                        res.sha.update(d)
                        res.n += len(d)
                        if keep:
                            res.data += d
                    if d == b"":
                        res.eof = b""
                except tlspump.Error as e:
                    res.eof = e
                    return res
            if stop_after is not None and res.n >= stop_after:
                return res
            if res.eof == b"":
                if stop_on_eof and not shut:
                    shut = conn.shutdown() == tlspump.DONE
                if shut or not (stop_on_eof or close_after):
                    return res
            _wait(sel, conn, deadline, res)


def _wait(sel, conn, deadline, res):
    want = conn.want or tlspump.WANT_READ
    remaining = deadline - time.monotonic()
    assert remaining > 0, "client: deadline passed (sent %d, got %d, eof %r)" % (
        res.sent, res.n, res.eof)
    sel.register(conn.fileno(), want)
    try:
        sel.select(min(remaining, 5.0))
    finally:
        sel.unregister(conn.fileno())


def zombies():
    """Our child processes that are zombies (never reaped)."""
    me = os.getpid()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z" and int(fields[1]) == me:
            found.append(int(pid))
    return found


def proc_status_kb(pid, field):
    """A field of /proc/PID/status in KiB (VmRSS, VmHWM)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)
