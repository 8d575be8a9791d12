"""forward under pressure: backpressure keeps a server's memory bounded with
a slow child, a KeyUpdate from openssl s_client mid-transfer, the idle
timeout, the GIL released, SIGINT interrupting it."""
import os
import re
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest

import tlspump
from conftest import OPENSSL, PeerThread, digits, handshake_pair
from fwdutil import CHUNK, connect_pair, run_client, zombies

pytestmark = pytest.mark.timeout(120)

# A server process: one connection, forwarded to the command in argv[2:];
# prints its port, then its RSS before forwarding and its peak after (KiB).
SERVER = r"""
import socket, sys, tlspump
def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
ctx = tlspump.Context.server()
open(sys.argv[1], "w").write(ctx.cert_pem)
ls = socket.create_server(("127.0.0.1", 0))
print(ls.getsockname()[1], flush=True)
sock, _ = ls.accept()
conn = ctx.wrap(sock)
child = tlspump.spawn(sys.argv[2:])
print("base", kb("VmRSS"), flush=True)
stats = conn.forward(child)
print("peak", kb("VmHWM"), stats.tls_end, stats.to_target, flush=True)
child.close()
"""

SLOW_CHILD = "import os, time\nwhile os.read(0, 1024): time.sleep(0.01)"


@pytest.fixture
def pair(server_ctx, client_ctx, listener, sockets, conns):
    return connect_pair(listener, server_ctx, client_ctx, sockets, conns)


@pytest.mark.slow
def test_slow_child_memory_bounded(tmp_path, sockets):
    """The client pushes as fast as it can (up to 100 MB) into a child that
    reads 1 KiB every 10 ms: the server stops reading the client, its RSS
    grows by far less than 64 MiB."""
    import socket

    cert = tmp_path / "cert.pem"
    srv = subprocess.Popen([sys.executable, "-c", SERVER, str(cert),
                            sys.executable, "-c", SLOW_CHILD],
                           stdout=subprocess.PIPE, text=True,
                           env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        port = int(srv.stdout.readline())
        ctx = tlspump.Context.client(ca=str(cert))
        sock = sockets.add(socket.create_connection(("127.0.0.1", port), timeout=10))
        sock.settimeout(None)
        conn = ctx.wrap(sock, server_hostname="localhost")
        base = srv.stdout.readline().split()
        assert base[0] == "base"
        chunk = os.urandom(CHUNK)
        sent, limit = 0, 100 * 1000 * 1000
        deadline = time.monotonic() + 3
        with selectors.DefaultSelector() as sel:
            while sent < limit and time.monotonic() < deadline:
                if not conn.handshake_done and conn.handshake() != tlspump.DONE:
                    n = 0
                else:
                    n = conn.write(chunk)
                    sent += n
                    conn.read()
                if n < len(chunk):
                    sel.register(sock, conn.want or tlspump.WANT_READ)
                    sel.select(max(0.0, deadline - time.monotonic()))
                    sel.unregister(sock)
        assert sent < 64 << 20, "nothing held the client back: %d" % sent
        conn.close()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack("ii", 1, 0))
        sock.close()  # RST: the server's pump ends although held back
        peak = srv.stdout.readline().split()
        assert srv.wait(30) == 0
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
        srv.stdout.close()
    assert peak[0] == "peak", peak
    growth_kb = int(peak[1]) - int(base[1])
    assert growth_kb < 64 * 1024, "server RSS grew by %d KiB" % growth_kb
    assert peak[2] == "reset"
    assert int(peak[3]) < 8 << 20  # the child got only what it read


@pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
def test_keyupdate_from_s_client_mid_forward(server_ctx, eph_ca, listener,
                                             children, conns, tmp_path):
    """s_client sends a KeyUpdate (update_requested) in the middle of a cat
    echo through forward(): the echo stays exact, the pump answers with its
    own KeyUpdate."""
    msglog = tmp_path / "s_client.msg"
    half = 2 << 20
    data = digits(2 * half, seed=10)
    cli = children.s_client(listener.getsockname()[1],
                            "-quiet", "-no_ign_eof",  # quiet, commands on
                            "-CAfile", eph_ca, "-verify_return_error",
                            "-servername", "localhost", "-tls1_3",
                            "-msg", "-msgfile", str(msglog))
    sock, _ = listener.accept()
    with sock:
        conn = server_ctx.wrap(sock)
        conns(conn)
        child = tlspump.spawn(["cat"])
        server = PeerThread(conn.forward, child)
        server.start()
        stdin = cli.p.stdin
        os.set_blocking(stdin.fileno(), False)

        def feed_and_echo(part):
            """Writes part to s_client's stdin and reads the echo."""
            start = len(cli.out)
            off = 0
            deadline = time.monotonic() + 60
            with selectors.DefaultSelector() as sel:
                while len(cli.out) < start + len(part):
                    assert time.monotonic() < deadline, cli.err[-500:]
                    for f in cli.pipes():
                        sel.register(f, selectors.EVENT_READ)
                    if off < len(part):
                        sel.register(stdin, selectors.EVENT_WRITE)
                    for key, _ in sel.select(5):
                        if key.fileobj is stdin:
                            try:
                                off += os.write(stdin.fileno(), part[off:off + CHUNK])
                            except BlockingIOError:
                                pass
                        else:
                            cli.on_readable(key.fileobj)
                    for key in list(sel.get_map().values()):
                        sel.unregister(key.fileobj)

        feed_and_echo(data[:half])
        # s_client has read all its stdin: "K\n" arrives as a chunk alone.
        os.set_blocking(stdin.fileno(), True)
        cli.send(b"K\n")
        cli.wait_for(rb"KEYUPDATE", stream="err")
        os.set_blocking(stdin.fileno(), False)
        feed_and_echo(data[half:])
        cli.close_stdin()  # s_client sends close_notify and exits
        assert cli.finish(timeout=30) == 0, bytes(cli.err[-500:])
        stats = server.result(timeout=30)
    assert bytes(cli.out) == data
    assert stats.to_target == len(data) and stats.to_tls == len(data)
    assert (stats.tls_end, stats.target_end) == ("clean", "clean"), stats
    child.close()
    msgs = msglog.read_text()
    assert re.search(r">>> TLS 1.3, Handshake \[length 0005\], KeyUpdate", msgs)
    assert re.search(r"<<< TLS 1.3, Handshake \[length 0005\], KeyUpdate", msgs)


def test_idle_timeout(pair):
    sconn, cconn, _ = pair
    handshake_pair(sconn, cconn)  # the timer counts data only
    with tlspump.spawn(["cat"]) as child:
        client = PeerThread(lambda: run_client(
            cconn, b"hi", close_after=False, stop_on_eof=True, keep=True))
        client.start()
        t0 = time.monotonic()
        stats = sconn.forward(child, idle_timeout=0.5)
        elapsed = time.monotonic() - t0
        res = client.result(timeout=10)
    assert 0.45 <= elapsed < 5, elapsed
    assert (stats.tls_end, stats.target_end) == ("timeout", "timeout")
    assert bytes(res.data) == b"hi"
    assert res.eof == b""  # the client got a close_notify
    assert stats.returncode == 0  # cat got EOF


def test_gil_released_during_forward(pair):
    sconn, cconn, _ = pair
    handshake_pair(sconn, cconn)
    count = 0
    stop = threading.Event()

    def counter():
        nonlocal count
        while not stop.is_set():
            count += 1

    t = threading.Thread(target=counter)
    t.start()
    try:
        with tlspump.spawn(["cat"]) as child:
            client = PeerThread(lambda: run_client(
                cconn, close_after=False, stop_on_eof=True))
            client.start()
            before = count
            sconn.forward(child, idle_timeout=0.5)  # 0.5 s without a byte
            during = count - before
            client.result(timeout=10)
    finally:
        stop.set()
        t.join(10)
    assert during > 10000, during


def _sigint_after(seconds):
    sent = []

    def fire():
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Timer(seconds, fire)
    t.start()
    return t, sent


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "data-flowing"])
def test_sigint_interrupts_forward(pair, busy):
    """Ctrl-C stops forward() within about 100 ms and raises
    KeyboardInterrupt, whether the pump waits or data keeps flowing."""
    sconn, cconn, csock = pair
    stop = threading.Event()

    def client():
        # Reads (and so keeps `yes` flowing) until told to stop.
        with selectors.DefaultSelector() as sel:
            sel.register(csock, selectors.EVENT_READ)
            while not stop.is_set():
                try:
                    if not cconn.handshake_done:
                        cconn.handshake()
                    else:
                        while True:
                            d = cconn.read()
                            if not d:
                                break
                        if d == b"":
                            return
                except tlspump.Error:
                    return
                sel.select(0.05)

    argv = ["yes"] if busy else ["cat"]
    devnull = os.open(os.devnull, os.O_WRONLY)
    child = tlspump.spawn(argv, stderr=devnull)
    os.close(devnull)
    c = PeerThread(client)
    c.start()
    timer, sent = _sigint_after(0.3)
    try:
        with pytest.raises(KeyboardInterrupt):
            sconn.forward(child)
        got = time.monotonic()
    finally:
        timer.cancel()
        stop.set()
    assert sent and got - sent[0] < 1.0, got - sent[0]
    csock.shutdown(2)
    c.result(timeout=15)
    child.close()
    assert zombies() == []
