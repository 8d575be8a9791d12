"""Shared fixtures for the tlspump tests.

Everything here talks to real peers over real sockets on 127.0.0.1: Python's
ssl module, `openssl s_server` / `openssl s_client` subprocesses and tlspump
itself. Every wait has a deadline and every process, thread and socket a
fixture starts is ended in its teardown.

Helpers (plain functions, import them with `from conftest import ...`):
  drive(conn, op, *args)      runs conn.<op> in a selectors loop on conn.want
  handshake_pair(a, b)        handshakes two tlspump conns in one thread
  write_all / read_exactly / read_until_eof
  sha256(data)
"""
import hashlib
import os
import re
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import types

import pytest

import tlspump

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OPENSSL = shutil.which("openssl")

WANTS = (tlspump.WANT_READ, tlspump.WANT_WRITE)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def digits(n, seed=0):
    """n pseudo-random ASCII digits: safe to feed to s_client/s_server stdin,
    whose command letters (Q R K k c P S ...) can never appear in them."""
    table = bytes(b"0123456789"[i % 10] for i in range(256))
    out = bytearray()
    h = hashlib.sha256(b"tlspump-%d" % seed).digest()
    while len(out) < n:
        h = hashlib.sha256(h).digest()
        out += hashlib.shake_256(h).digest(1 << 16)
    return bytes(out[:n]).translate(table)


class StepLimit(AssertionError):
    pass


def _wait(sel, conn, events, deadline, what):
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("%s: deadline passed (want=%d)" % (what, events))
    sel.register(conn.fileno(), events)
    try:
        ready = sel.select(remaining)
    finally:
        sel.unregister(conn.fileno())
    if not ready:
        raise TimeoutError("%s: no readiness within the deadline (want=%d)"
                           % (what, events))


def drive(conn, op, *args, timeout=10.0, max_steps=None):
    """Calls conn.<op>(*args) (handshake, flush, shutdown or read) until it
    completes, waiting between calls with selectors for exactly what
    conn.want says -- no sleeps, no polling. Returns the final result (DONE,
    or the bytes / b"" of a read). max_steps bounds the number of waits, to
    catch a quasi-busy loop (a WANT_* that the readiness does not satisfy)."""
    fn = getattr(conn, op)
    deadline = time.monotonic() + timeout
    steps = 0
    with selectors.DefaultSelector() as sel:
        while True:
            r = fn(*args)
            if op == "read":
                if r is not None:
                    return r
            elif r == tlspump.DONE:
                return r
            else:
                assert r in WANTS, "%s returned %r" % (op, r)
            events = conn.want
            assert events in (1, 2, 3), (
                "%s would block but conn.want is %r" % (op, events))
            if op != "read":
                # What the call asked for must be part of what want reports.
                assert events & r, "%s returned %d but want is %d" % (op, r, events)
            steps += 1
            if max_steps is not None and steps > max_steps:
                raise StepLimit("%s needed more than %d waits: busy loop?"
                                % (op, max_steps))
            _wait(sel, conn, events, deadline, op)


def handshake_pair(a, b, timeout=10.0):
    """Handshakes two tlspump conns (e.g. a client and a server over one TCP
    connection) in this thread. Returns [result_a, result_b], each DONE or the
    exception that side raised; the loop ends when both sides are done or
    failed."""
    results = [None, None]
    conns = [a, b]
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        while True:
            for i, c in enumerate(conns):
                if results[i] is not None:
                    continue
                try:
                    r = c.handshake()
                except tlspump.Error as e:
                    results[i] = e
                    continue
                if r == tlspump.DONE:
                    results[i] = r
                else:
                    assert r in WANTS
            pending = [c for i, c in enumerate(conns) if results[i] is None]
            if not pending:
                return results
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("handshake_pair: deadline passed, results %r"
                                   % (results,))
            for c in pending:
                assert c.want, "handshake would block but want is 0"
                sel.register(c.fileno(), c.want)
            try:
                ready = sel.select(remaining)
            finally:
                for c in pending:
                    sel.unregister(c.fileno())
            if not ready:
                raise TimeoutError("handshake_pair: no readiness, results %r"
                                   % (results,))


def write_all(conn, data, timeout=10.0, chunk=256 * 1024):
    """Writes all of data (waiting on conn.want while the C buffer is full),
    then flushes."""
    deadline = time.monotonic() + timeout
    off = 0
    with selectors.DefaultSelector() as sel:
        while off < len(data):
            asked = min(chunk, len(data) - off)
            n = conn.write(data[off:off + asked])
            assert 0 <= n <= asked
            off += n
            if n < asked:  # the C buffer is full: wait as want says
                _wait(sel, conn, conn.want, deadline, "write")
    return drive(conn, "flush", timeout=max(0.1, deadline - time.monotonic()))


def read_exactly(conn, n, timeout=10.0):
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) < n:
        d = drive(conn, "read", timeout=max(0.01, deadline - time.monotonic()))
        assert d != b"", "EOF after %d of %d bytes" % (len(buf), n)
        buf += d
    assert len(buf) == n, "read %d bytes, wanted %d" % (len(buf), n)
    return bytes(buf)


def read_until_eof(conn, timeout=10.0):
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while True:
        d = drive(conn, "read", timeout=max(0.01, deadline - time.monotonic()))
        if d == b"":
            return bytes(buf)
        buf += d


# ---- threads ------------------------------------------------------------


class PeerThread(threading.Thread):
    """Runs fn(*args) in a thread; result() joins it and re-raises."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.value = self.exc = None

    def run(self):
        try:
            self.value = self.fn(*self.args)
        except BaseException as e:  # noqa: B902 -- handed to the test
            self.exc = e

    def result(self, timeout=15.0):
        self.join(timeout)
        if self.is_alive():
            raise AssertionError("peer thread %s still running after %ss"
                                 % (self.fn.__name__, timeout))
        if self.exc is not None:
            raise self.exc
        return self.value


@pytest.fixture
def peer():
    """peer(fn, *args) starts fn in a thread; all are joined at teardown."""
    threads = []

    def start(fn, *args):
        t = PeerThread(fn, *args)
        threads.append(t)
        t.start()
        return t

    yield start
    for t in threads:
        t.join(15)
        assert not t.is_alive(), "peer thread %s did not finish" % t.fn.__name__


# ---- sockets ------------------------------------------------------------


@pytest.fixture
def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Sockets:
    """Creates sockets and closes all of them at teardown (shutdown first,
    so a peer thread blocked in recv wakes up)."""

    def __init__(self):
        self.all = []

    def add(self, s):
        self.all.append(s)
        return s

    def listener(self):
        s = self.add(socket.socket())
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        s.settimeout(10)
        return s

    def accept(self, listener):
        c, _ = listener.accept()
        c.settimeout(None)
        return self.add(c)

    def pair(self, rcvbuf=None, sndbuf=None):
        """A connected TCP pair (client, server) on 127.0.0.1. rcvbuf/sndbuf
        are set on both ends before connecting, so TCP windows honour them."""
        ls = self.listener()
        c = self.add(socket.socket())
        for s in (c, ls):
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if sndbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        c.settimeout(10)
        c.connect(ls.getsockname())
        srv = self.accept(ls)
        c.settimeout(None)
        ls.close()
        return c, srv

    def close_all(self):
        for s in self.all:
            try:
                if s.fileno() >= 0:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                s.close()
            except OSError:
                pass


@pytest.fixture
def sockets():
    s = Sockets()
    yield s
    s.close_all()


@pytest.fixture
def listener(sockets):
    return sockets.listener()


@pytest.fixture
def conns():
    """Registers tlspump conns to close at teardown (frees TLS state even
    when an assertion failed mid-test)."""
    made = []
    yield made.append
    for c in made:
        c.close()


# ---- contexts and certificates -------------------------------------------


@pytest.fixture(scope="session")
def server_ctx():
    """A server context with the ephemeral self-signed certificate."""
    return tlspump.Context.server()


@pytest.fixture(scope="session")
def eph_ca(server_ctx, tmp_path_factory):
    """server_ctx's certificate as a PEM file, to trust it as a CA."""
    p = tmp_path_factory.mktemp("eph") / "ephemeral.pem"
    p.write_text(server_ctx.cert_pem)
    return str(p)


@pytest.fixture(scope="session")
def client_ctx(eph_ca):
    """A verifying client context that trusts server_ctx's certificate."""
    return tlspump.Context.client(ca=eph_ca)


@pytest.fixture(scope="session")
def py_client_ssl(eph_ca):
    """A Python ssl client context that trusts server_ctx's certificate."""
    return ssl.create_default_context(cafile=eph_ca)


def _openssl(*args, cwd):
    r = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True,
                       timeout=60)
    assert r.returncode == 0, "openssl %s: %s" % (" ".join(args), r.stderr.decode())


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A real certificate set made once with the openssl CLI: a CA, a server
    cert for localhost + 127.0.0.1 and a client cert signed by it, a combined
    cert+key file, and an unrelated key (to test the mismatch error)."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "3", "-subj", "/CN=tlspump test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    (d / "server.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    (d / "client.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth\n")
    for name, cn in (("server", "localhost"), ("client", "tlspump test client")):
        _openssl("req", "-new", *ec, "-keyout", name + ".key", "-out",
                 name + ".csr", "-subj", "/CN=" + cn, cwd=d)
        _openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem",
                 "-CAkey", "ca.key", "-CAcreateserial", "-days", "3",
                 "-extfile", name + ".ext", "-out", name + ".pem", cwd=d)
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt",
             "ec_paramgen_curve:P-256", "-out", "other.key", cwd=d)
    (d / "server_cert_and_key.pem").write_text(
        (d / "server.pem").read_text() + (d / "server.key").read_text())
    cadir = d / "cadir"
    cadir.mkdir()
    shutil.copy(d / "ca.pem", cadir / "ca.pem")
    _openssl("rehash", str(cadir), cwd=d)
    return types.SimpleNamespace(
        dir=str(d),
        ca=str(d / "ca.pem"),
        ca_dir=str(cadir),
        server_cert=str(d / "server.pem"),
        server_key=str(d / "server.key"),
        server_combined=str(d / "server_cert_and_key.pem"),
        client_cert=str(d / "client.pem"),
        client_key=str(d / "client.key"),
        other_key=str(d / "other.key"),
    )


@pytest.fixture(scope="session")
def py_server_ssl(pki):
    """A Python ssl server context with the pki server certificate."""
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    c.load_cert_chain(pki.server_cert, pki.server_key)
    return c


# ---- child processes ------------------------------------------------------


class Child:
    """A subprocess with non-blocking stdout/stderr pipes collected into
    .out/.err. Killed (its whole process group) at teardown."""

    def __init__(self, argv, **kw):
        self.argv = argv
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, bufsize=0,
                                  start_new_session=True, **kw)
        self.out = bytearray()
        self.err = bytearray()
        self.out_eof = self.err_eof = False
        for f in (self.p.stdout, self.p.stderr):
            os.set_blocking(f.fileno(), False)

    @property
    def pid(self):
        return self.p.pid

    def _read(self, which):
        f = self.p.stdout if which == "out" else self.p.stderr
        try:
            d = os.read(f.fileno(), 1 << 16)
        except BlockingIOError:
            return None
        if not d:
            setattr(self, which + "_eof", True)
        else:
            (self.out if which == "out" else self.err).extend(d)
        return d

    def on_readable(self, fileobj):
        """For callers with their own selectors loop: reads from the pipe
        that fileobj (self.p.stdout or self.p.stderr) is."""
        return self._read("out" if fileobj is self.p.stdout else "err")

    def pipes(self):
        return [f for f, eof in ((self.p.stdout, self.out_eof),
                                 (self.p.stderr, self.err_eof)) if not eof]

    def wait_for(self, pattern, stream="out", timeout=10.0):
        """Reads the child's output until regex pattern (bytes) matches in
        the stream; returns the match. Fails at EOF or the deadline."""
        deadline = time.monotonic() + timeout
        buf = self.out if stream == "out" else self.err
        with selectors.DefaultSelector() as sel:
            while True:
                m = re.search(pattern, buf)
                if m:
                    return m
                pipes = self.pipes()
                if not pipes:
                    raise AssertionError(
                        "%s exited (rc=%r) before %r appeared\nstdout: %r\nstderr: %r"
                        % (self.argv[:2], self.p.poll(), pattern,
                           bytes(self.out[-2000:]), bytes(self.err[-2000:])))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        "%r not seen in %ss\nstdout: %r\nstderr: %r"
                        % (pattern, timeout, bytes(self.out[-2000:]),
                           bytes(self.err[-2000:])))
                for f in pipes:
                    sel.register(f, selectors.EVENT_READ)
                for key, _ in sel.select(remaining):
                    self.on_readable(key.fileobj)
                for f in pipes:
                    sel.unregister(f)

    def send(self, data):
        """Writes data to the child's stdin (blocking)."""
        self.p.stdin.write(data)

    def close_stdin(self):
        if not self.p.stdin.closed:
            self.p.stdin.close()

    def finish(self, timeout=10.0):
        """Collects all output until both pipes close, waits for the exit;
        returns the exit code."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            while self.pipes():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        "%s did not exit in %ss\nstdout: %r\nstderr: %r"
                        % (self.argv[:2], timeout, bytes(self.out[-2000:]),
                           bytes(self.err[-2000:])))
                pipes = self.pipes()
                for f in pipes:
                    sel.register(f, selectors.EVENT_READ)
                for key, _ in sel.select(remaining):
                    self.on_readable(key.fileobj)
                for f in pipes:
                    sel.unregister(f)
        return self.p.wait(max(0.1, deadline - time.monotonic()))

    def kill(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.p.wait(10)
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            try:
                f.close()
            except OSError:
                pass


class Children:
    def __init__(self):
        self.all = []

    def spawn(self, argv, **kw):
        c = Child(argv, **kw)
        self.all.append(c)
        return c

    def s_server(self, *args):
        """Starts `openssl s_server` on 127.0.0.1, a port of its choosing;
        returns (child, port). Not -quiet: it prints the ACCEPT line we take
        the port from (and -quiet would disable its stdin commands)."""
        c = self.spawn([OPENSSL, "s_server", "-accept", "127.0.0.1:0", *args])
        m = c.wait_for(rb"ACCEPT [^\n]*:(\d+)\r?\n")
        return c, int(m.group(1))

    def s_client(self, port, *args):
        return self.spawn([OPENSSL, "s_client", "-connect",
                           "127.0.0.1:%d" % port, *args])

    def kill_all(self):
        for c in self.all:
            c.kill()


@pytest.fixture
def children():
    if OPENSSL is None:
        pytest.skip("openssl command line tool not installed")
    ch = Children()
    yield ch
    ch.kill_all()
