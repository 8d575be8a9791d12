"""tlspump serve / tlspump.Server: commands and backends behind TLS, with
real clients (tlspump connect, socat, openssl s_client, curl, Python ssl)."""

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading

import pytest

import tlspump
from conftest import drive, read_until_eof, sha256, write_all
from serve_util import (PY, CliServer, EchoBackend, cli, echo_client, insecure_ctx,  # noqa: F401
                        servers, zombies)

pytestmark = pytest.mark.timeout(120)


def test_wc_c_with_tlspump_connect(servers):
    srv = servers("--", "wc", "-c")
    assert srv.fingerprint  # ephemeral certificate: fingerprint printed
    data = os.urandom(300000)
    r = cli("connect", "127.0.0.1:%d" % srv.port, "--fingerprint",
            "sha256:" + srv.fingerprint, input=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == b"300000"
    assert r.stderr == b""
    line = srv.wait_line(r"in=300000 out=7 .*tls_end=clean target_end=clean exit=0")
    assert line
    # verifying by default: the self-signed certificate is refused
    r = cli("connect", "127.0.0.1:%d" % srv.port, input=b"x")
    assert r.returncode == 1
    assert b"certificate verify failed" in r.stderr
    assert b"Traceback" not in r.stderr
    assert srv.stop() == 0


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed")
def test_wc_c_with_socat(servers, tmp_path):
    srv = servers("--", "wc", "-c")
    # socat passes the EOF of stdin on as close_notify and keeps reading
    # (-t: for the answer) until the server's close_notify.
    p = tmp_path / "in"
    p.write_bytes(b"y" * 123456)
    with open(p, "rb") as f:
        r = subprocess.run(
            ["socat", "-t", "10", "-", "OPENSSL:127.0.0.1:%d,verify=0" % srv.port],
            stdin=f, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == b"123456"
    srv.wait_line(r"in=123456 out=7 .*tls_end=clean target_end=clean exit=0")
    assert srv.stop() == 0


def test_cat_with_openssl_s_client(servers, children):
    """openssl s_client (3.0) sends close_notify at its stdin's EOF and exits
    at once without reading an answer, so the half-close count cannot be
    shown with it; the echo before the EOF and the clean close can."""
    srv = servers("--", "cat")
    c = children.s_client(srv.port)
    c.send(b"4242\n")
    c.wait_for(rb"4242\n")
    c.close_stdin()  # EOF: s_client sends close_notify
    assert c.finish() == 0
    srv.wait_line(r"in=5 out=5 .*tls_end=clean target_end=clean exit=0")
    assert srv.stop() == 0


def test_50_concurrent_cat_clients(tmp_path, insecure_ctx):
    log = open(tmp_path / "log", "w+")
    srv = tlspump.Server(("127.0.0.1", 0), None, command=["cat"], log=log)
    datas = [hashlib.shake_256(b"%d" % i).digest(1 << 20) for i in range(50)]
    results = [None] * 50

    def client(i):
        try:
            results[i] = echo_client(srv.address, datas[i], insecure_ctx)
        except BaseException as e:  # reported below
            results[i] = e

    with srv:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads)
        assert srv.stop(30)
    for i in range(50):
        assert not isinstance(results[i], BaseException), results[i]
        assert sha256(results[i]) == sha256(datas[i]), i
    log.seek(0)
    ends = [ln for ln in log.read().splitlines() if "tls_end=" in ln]
    assert len(ends) == 50
    assert all("in=1048576 out=1048576" in ln and "exit=0" in ln for ln in ends), ends[:3]
    assert not zombies(os.getpid())
    log.close()


HTTP_SCRIPT = r"""
import sys
req = b""
while b"\r\n\r\n" not in req:
    d = sys.stdin.buffer.read1(4096)
    if not d:
        break
    req += d
line = req.split(b"\r\n", 1)[0].decode()
body = ("hello from tlspump: " + line + "\n").encode()
sys.stdout.buffer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
"""


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_against_a_script(servers, tmp_path):
    script = tmp_path / "http.py"
    script.write_text(HTTP_SCRIPT)
    srv = servers("--", PY, str(script))
    r = subprocess.run(["curl", "-sS", "-k", "--max-time", "20",
                        "https://127.0.0.1:%d/some/path" % srv.port],
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello from tlspump: GET /some/path HTTP/1.1\n"
    srv.wait_line(r"exit=0")
    assert srv.stop() == 0


def test_backend_echo_64mib(tmp_path, insecure_ctx):
    backend = EchoBackend()
    try:
        log = open(tmp_path / "log", "w+")
        with tlspump.Server(("127.0.0.1", 0), None, backend=backend.address, log=log) as srv:
            data = hashlib.shake_256(b"64").digest(64 << 20)
            got = echo_client(srv.address, data, insecure_ctx, chunk=1 << 20, timeout=100)
            assert len(got) == len(data)
            assert sha256(got) == sha256(data)
        log.seek(0)
        text = log.read()
        assert "in=67108864 out=67108864" in text and "tls_end=clean target_end=clean" in text
        assert "exit=" not in text  # no child
        log.close()
    finally:
        backend.stop()


def test_backend_refused_is_logged(tmp_path, insecure_ctx, free_port):
    log = open(tmp_path / "log", "w+")
    with tlspump.Server(("127.0.0.1", 0), None, backend=("127.0.0.1", free_port), log=log) as srv:
        got = echo_client(srv.address, b"hello", insecure_ctx)
        assert got == b""  # close_notify at once, nothing forwarded
    log.seek(0)
    assert "error=\"backend 127.0.0.1:%d: Connection refused\"" % free_port in log.read()
    log.close()


@pytest.mark.parametrize("junk", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                                  hashlib.shake_256(b"junk").digest(3000)],
                         ids=["http", "random"])
def test_not_tls_closed_with_reason(servers, junk, insecure_ctx):
    srv = servers("--", "cat")
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s.sendall(junk)
    s.settimeout(10)
    got = b""
    try:
        while True:  # an alert perhaps, then EOF (or a reset)
            d = s.recv(65536)
            if not d:
                break
            got += d
    except ConnectionResetError:
        pass
    s.close()
    assert len(got) < 100  # no payload, at most an alert
    line = srv.wait_line(r"tls_end=error target_end=none error=\"handshake: ([^\"]+)\"")
    if junk.startswith(b"GET"):
        assert "http request" in line.group(1)
    # and the server keeps serving
    got = echo_client(("127.0.0.1", srv.port), b"still here", insecure_ctx)
    assert got == b"still here"
    assert srv.stop() == 0


def test_mutual_tls(servers, pki):
    srv = servers("--cert", pki.server_cert, "--key", pki.server_key,
                  "--client-ca", pki.ca, "--", "cat")
    addr = ("127.0.0.1", srv.port)
    # without a certificate: refused (in TLS 1.3 the alert may come after the
    # client's side of the handshake is complete, at the first read)
    ctx = tlspump.Context.client(ca=pki.ca)
    with pytest.raises(tlspump.Error) as e:
        echo_client(addr, b"no cert", ctx, server_hostname="localhost")
    assert "certificate" in str(e.value)
    srv.wait_line(r"tls_end=error .*error=\"handshake: .*certificate")
    # with one signed by the CA: served, the subject logged
    ctx = tlspump.Context.client(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    assert echo_client(addr, b"with cert", ctx, server_hostname="localhost") == b"with cert"
    srv.wait_line(r"in=9 out=9 .*subject=\"CN=tlspump test client\"")
    # tlspump connect with the client certificate, verifying the server
    r = cli("connect", "localhost:%d" % srv.port, "--ca", pki.ca, "--cert",
            pki.client_cert, "--key", pki.client_key, input=b"via cli")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"via cli"
    assert srv.stop() == 0


def test_child_environment(tmp_path, insecure_ctx):
    log = open(tmp_path / "log", "w")
    cmd = ["sh", "-c", 'cat >/dev/null; echo "$TLSPUMP_PEER $TLSPUMP_VERSION $TLSPUMP_CIPHER"']
    with tlspump.Server(("127.0.0.1", 0), None, command=cmd, log=log) as srv:
        s = socket.create_connection(srv.address)
        conn = insecure_ctx.wrap(s, server_hostname="127.0.0.1")
        drive(conn, "handshake")
        drive(conn, "shutdown")
        out = read_until_eof(conn).decode().split()
        assert out[0] == "%s:%d" % s.getsockname()
        assert out[1] == conn.version and out[2] == conn.cipher
        conn.close()
        s.close()
    log.close()


def test_server_object(tmp_path, insecure_ctx):
    """Server: addresses (port 0 -> real port), several listeners including
    a listening socket object, start/stop, context manager, errors."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    upath = str(tmp_path / "s.sock")
    srv = tlspump.Server([("127.0.0.1", 0), "unix:" + upath, ls], None,
                         command=["cat"], log=None)
    try:
        a = srv.addresses
        assert a[0][0] == "127.0.0.1" and a[0][1] > 0
        assert a[1] == upath
        assert a[2] == ls.getsockname()
        srv.start()
        assert srv.running
        assert echo_client(a[0], b"tcp", insecure_ctx) == b"tcp"
        assert echo_client(a[2], b"fd", insecure_ctx) == b"fd"
        us = socket.socket(socket.AF_UNIX)
        us.connect(upath)
        conn = insecure_ctx.wrap(us, server_hostname="localhost")
        drive(conn, "handshake")
        write_all(conn, b"unix")
        drive(conn, "shutdown")
        assert read_until_eof(conn) == b"unix"
        conn.close()
        us.close()
        assert srv.stop(20)
    finally:
        srv.close()
    assert not os.path.exists(upath)
    assert ls.fileno() >= 0  # the caller's socket stays open and usable
    ls.close()

    with pytest.raises(ValueError):
        tlspump.Server(("127.0.0.1", 0), None)  # neither command nor backend
    with pytest.raises(ValueError):
        tlspump.Server(("127.0.0.1", 0), None, command=["cat"], backend="127.0.0.1:1")
    with pytest.raises(TypeError):
        tlspump.Server(8443, None, command=["cat"])
    with pytest.raises(ValueError):
        tlspump.Server(("127.0.0.1", 0), tlspump.Context.client(), command=["cat"])
    with pytest.raises(tlspump.Error) as e:
        tlspump.Server("127.0.0.1:x:y", None, command=["cat"])
    assert "cannot listen on 127.0.0.1:x:y" in str(e.value)


class _Stop(Exception):
    pass


def test_serve_blocks_and_a_signal_stops_it_gracefully(insecure_ctx):
    """tlspump.serve() blocks in C with the GIL released (a client thread
    runs meanwhile); a signal handler that raises (like Ctrl-C's
    KeyboardInterrupt) stops it gracefully and the exception propagates."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    addr = ls.getsockname()
    got = []

    def client():
        try:
            got.append(echo_client(addr, b"serve()", insecure_ctx))
        finally:
            os.kill(os.getpid(), signal.SIGUSR1)

    def handler(signum, frame):
        raise _Stop()

    old = signal.signal(signal.SIGUSR1, handler)
    t = threading.Thread(target=client)
    try:
        t.start()
        with pytest.raises(_Stop):
            tlspump.serve(ls, None, command=["cat"], log=None)
    finally:
        signal.signal(signal.SIGUSR1, old)
        t.join(20)
    assert got == [b"serve()"]
    assert not zombies(os.getpid())
    ls.close()
