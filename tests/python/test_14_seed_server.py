"""examples/seed_server.py, the seed program on tlspump, run as a user
would: `seed_server.py -- wc -c` answers a client that sends 3 MB and
half-closes with 3000000 and a clean close_notify."""
import os
import re
import socket
import subprocess
import sys

import pytest

import tlspump
from conftest import ROOT
from fwdutil import run_client

pytestmark = pytest.mark.timeout(60)

SEED = os.path.join(ROOT, "examples", "seed_server.py")


def start(tmp_path, *cmd):
    cert = tmp_path / "seed.pem"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.Popen([sys.executable, SEED, "--port", "0", "--once",
                          "--cert-out", str(cert), "--", *cmd],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    line = p.stdout.readline()
    m = re.match(r"listening on 127\.0\.0\.1:(\d+), certificate sha256 ([0-9a-f]{64})", line)
    if not m:
        p.kill()
        out, err = p.communicate(timeout=10)
        raise AssertionError("seed_server: %r %r %r" % (line, out, err))
    return p, int(m.group(1)), str(cert), m.group(2)


def test_seed_server_wc_half_close(tmp_path, sockets):
    p, port, cert, fingerprint = start(tmp_path, "wc", "-c")
    try:
        ctx = tlspump.Context.client(ca=cert)
        sock = sockets.add(socket.create_connection(("127.0.0.1", port), timeout=10))
        sock.settimeout(None)
        with ctx.wrap(sock, server_hostname="localhost") as conn:
            res = run_client(conn, os.urandom(3000000), keep=True)
            assert conn.peer_cert["fingerprint"] == fingerprint
        assert res.eof == b""  # clean close_notify
        greeting, answer = bytes(res.data).split(b"\n", 1)
        assert greeting.startswith(b"hello 127.0.0.1:")
        assert answer.strip() == b"3000000"
        out, err = p.communicate(timeout=20)
        assert p.returncode == 0, err
        assert re.search(r"3000000 bytes in, \d+ out .* client clean, command clean, exit 0",
                         out), out
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


def test_seed_server_missing_command(tmp_path):
    p = subprocess.run([sys.executable, SEED, "--port", "0", "--",
                        "tlspump-no-such-command"],
                       capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert p.returncode == 2
    assert "command not found: tlspump-no-such-command" in p.stderr
