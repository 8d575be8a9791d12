"""Helpers for the server and command line tests (test_2x_*.py).

  cli(*args)                 runs `python -m tlspump ARGS` to completion
  CliServer                  `tlspump serve` in a subprocess; port and
                             fingerprint from its start line, log lines
  echo_client(addr, data)    a tlspump client that sends data, half-closes
                             and returns everything received until EOF
  EchoBackend                a plain TCP echo server (one thread, epoll)
  zombies(pid) / children_of(pid) / fd_count()
"""
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import tlspump
from conftest import ROOT, drive

PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"), PYTHONDONTWRITEBYTECODE="1")


def cli(*args, input=b"", timeout=30):
    """Runs the command line to completion: CompletedProcess."""
    return subprocess.run([PY, "-m", "tlspump", *args], input=input, capture_output=True,
                          timeout=timeout, env=ENV)


def proc_stat(pid):
    """(state, ppid) of a process, or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rindex(")") + 2:].split()
    return rest[0], int(rest[1])


def children_of(pid):
    """pids whose parent is pid."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st and st[1] == pid:
                out.append(int(d))
    return out


def zombies(pid):
    return [c for c in children_of(pid) if (proc_stat(c) or ("",))[0] == "Z"]


def fd_count(pid="self"):
    return len(os.listdir("/proc/%s/fd" % pid))


def rss_kib(pid="self"):
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class CliServer:
    """`python -m tlspump serve -l 127.0.0.1:0 ARGS` in a subprocess (its own
    process group). .port, .fingerprint from the start line; .lines() the
    log lines read so far (a thread drains stderr, so the server never
    blocks on its log); stop() sends SIGTERM and returns the exit status."""

    def __init__(self, *args, listen=("127.0.0.1:0",), preexec_fn=None, timeout=20):
        argv = [PY, "-m", "tlspump", "serve"]
        for a in listen:
            argv += ["-l", a]
        argv += list(args)
        self.argv = argv
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=ENV, start_new_session=True,
                                  preexec_fn=preexec_fn)
        self._lines = []
        self._cond = threading.Condition()
        self._eof = False
        self._t = threading.Thread(target=self._drain, daemon=True)
        self._t.start()
        m = self.wait_line(r'listening on ([^\s,]+)|"addresses":\["([^"]+)"', timeout=timeout)
        addr = m.group(1) or m.group(2)
        self.address = addr
        self.port = int(addr.rpartition(":")[2]) if not addr.startswith("unix:") else None
        start = self._lines[0] if self._lines else ""
        fp = re.search(r"sha256:([0-9a-f]{64})", start)
        self.fingerprint = fp.group(1) if fp else None

    def _drain(self):
        for raw in iter(self.p.stderr.readline, b""):
            with self._cond:
                self._lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def lines(self):
        with self._cond:
            return list(self._lines)

    def wait_line(self, pattern, timeout=10, count=1):
        """Waits until count log lines match pattern; returns the last match."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        with self._cond:
            while True:
                found = [m for m in map(rx.search, self._lines) if m]
                if len(found) >= count:
                    return found[count - 1]
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    raise AssertionError(
                        "%r (x%d) not in the server log (rc=%r, %d found):\n%s"
                        % (pattern, count, self.p.poll(), len(found), "\n".join(self._lines[-30:])))
                self._cond.wait(min(remaining, 0.5))

    def end_lines(self):
        return [ln for ln in self.lines() if " tls_end=" in ln or '"event":"end"' in ln]

    def json_lines(self):
        return [json.loads(ln) for ln in self.lines() if ln.startswith("{")]

    def stop(self, timeout=20):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        rc = self.p.wait(timeout)
        self._t.join(5)
        return rc

    def kill(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.p.wait(10)
        self._t.join(5)
        for f in (self.p.stdout, self.p.stderr):
            f.close()


def client_ctx_for(fingerprint=None, ca=None):
    """A client context for the server's ephemeral certificate (verify off,
    the fingerprint checked by the caller) or a CA file."""
    if ca:
        return tlspump.Context.client(ca=ca)
    return tlspump.Context.client(verify=False)


def echo_client(addr, data, ctx, chunk=65536, timeout=60, server_hostname="127.0.0.1",
                expect_fp=None):
    """Connects, sends data while reading, sends close_notify after the
    last byte and reads until the server's close_notify. Returns the bytes
    received. Raises tlspump.Error on a TLS failure."""
    deadline = time.monotonic() + timeout
    sock = socket.create_connection(addr, timeout=10)
    conn = ctx.wrap(sock, server_hostname=server_hostname)
    try:
        drive(conn, "handshake", timeout=timeout)
        if expect_fp:
            assert conn.peer_cert["fingerprint"] == expect_fp
        off, got, shut = 0, bytearray(), False
        view = memoryview(data)
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ)
            while True:
                while off < len(data):
                    n = conn.write(view[off:off + chunk])
                    off += n
                    if n == 0:
                        break
                if off == len(data) and not shut:
                    shut = conn.shutdown() == tlspump.DONE
                elif off < len(data):
                    conn.flush()
                while True:
                    d = conn.read()
                    if d is None:
                        break
                    if d == b"":
                        return bytes(got)
                    got += d
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("echo_client: %d of %d sent, %d received"
                                       % (off, len(data), len(got)))
                sel.modify(sock, (conn.want or 0) | selectors.EVENT_READ)
                sel.select(min(remaining, 5))
    finally:
        conn.close()
        sock.close()


class EchoBackend:
    """A plain TCP echo server on 127.0.0.1 in one thread (epoll, so fds
    above 1024 work): echoes everything, half-closes after the client's
    EOF once all is sent. stop() ends it and closes every socket."""

    def __init__(self):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(4096)
        self.ls.setblocking(False)
        self.address = self.ls.getsockname()
        self.accepted = 0
        self._stop_r, self._stop_w = os.pipe()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        sel = selectors.DefaultSelector()
        sel.register(self.ls, selectors.EVENT_READ, None)
        sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        pend = {}  # sock -> [bytearray to send, eof seen]
        try:
            while True:
                for key, ev in sel.select(5):
                    if key.data == "stop":
                        return
                    if key.data is None:
                        while True:
                            try:
                                s, _ = self.ls.accept()
                            except BlockingIOError:
                                break
                            s.setblocking(False)
                            self.accepted += 1
                            pend[s] = [bytearray(), False]
                            sel.register(s, selectors.EVENT_READ, "c")
                        continue
                    s = key.fileobj
                    buf, eof = pend[s]
                    if ev & selectors.EVENT_READ and not eof and len(buf) < (1 << 20):
                        try:
                            d = s.recv(1 << 18)
                        except (BlockingIOError, InterruptedError):
                            d = None
                        except OSError:
                            d = b""
                        if d == b"":
                            pend[s][1] = eof = True
                        elif d:
                            buf += d
                    if buf:
                        try:
                            n = s.send(buf)
                            del buf[:n]
                        except BlockingIOError:
                            pass
                        except OSError:
                            buf.clear()
                            pend[s][1] = eof = True
                    if eof and not buf:
                        sel.unregister(s)
                        del pend[s]
                        try:
                            s.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                        s.close()
                        continue
                    want = (0 if eof or len(buf) >= (1 << 20) else selectors.EVENT_READ) | (
                        selectors.EVENT_WRITE if buf else 0)
                    sel.modify(s, want or selectors.EVENT_READ, "c")
        finally:
            for s in pend:
                s.close()
            sel.close()

    def stop(self):
        os.write(self._stop_w, b"x")
        self._t.join(10)
        self.ls.close()
        os.close(self._stop_r)
        os.close(self._stop_w)


class LogPipe:
    """A pipe for an in-process Server's log (Server(..., log=lp.w)): a
    thread reads the lines as they come (the server never blocks on a full
    pipe); wait_ends(n) waits until n connection-end lines arrived, i.e.
    until n sessions are completely over (fds closed, child reaped)."""

    def __init__(self):
        r, w = os.pipe()
        self.r = os.fdopen(r, "rb")
        self.w = os.fdopen(w, "wb")
        self.lines = []
        self._cond = threading.Condition()
        self._t = threading.Thread(target=self._drain, daemon=True)
        self._t.start()

    def _drain(self):
        for raw in iter(self.r.readline, b""):
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()

    def ends(self):
        with self._cond:
            return [ln for ln in self.lines if " tls_end=" in ln or '"event":"end"' in ln]

    def wait_ends(self, n, timeout=20):
        deadline = time.monotonic() + timeout
        with self._cond:
            while len([ln for ln in self.lines if " tls_end=" in ln or '"event":"end"' in ln]) < n:
                remaining = deadline - time.monotonic()
                assert remaining > 0, "only %d of %d end lines:\n%s" % (
                    len(self.ends()), n, "\n".join(self.lines[-10:]))
                self._cond.wait(remaining)

    def close(self):
        self.w.close()
        self._t.join(10)
        self.r.close()


# ---- fixtures shared by the test_2x files (imported by name there) ------


@pytest.fixture
def servers():
    """Starts CliServers; every one is killed at teardown."""
    made = []

    def start(*args, **kw):
        s = CliServer(*args, **kw)
        made.append(s)
        return s

    yield start
    for s in made:
        s.kill()


@pytest.fixture
def insecure_ctx():
    return tlspump.Context.client(verify=False)
