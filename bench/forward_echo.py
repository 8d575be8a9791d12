#!/usr/bin/env python3
"""256 MiB `cat` echo through Conn.forward (examples/seed_server.py -- cat):
wall-clock MB/s at the client, the server's CPU seconds (its own + cat's,
from wait4). Median of 3. Run from the repository root after a build:

    PYTHONPATH=python python3 bench/forward_echo.py
"""
import hashlib, os, re, socket, statistics, subprocess, sys, tempfile, time
sys.path.insert(0, "tests/python")
import tlspump
from fwdutil import run_client

SIZE = 256 << 20
block = os.urandom(1 << 20)
data = block * 256
digest = hashlib.sha256(data).hexdigest()
rows = []
for i in range(3):
    cert = os.path.join(tempfile.mkdtemp(), "bench.pem")
    p = subprocess.Popen([sys.executable, "examples/seed_server.py", "--port", "0", "--once",
                          "--cert-out", cert, "--", "cat"], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH="python"))
    port = int(re.search(r":(\d+),", p.stdout.readline()).group(1))
    ctx = tlspump.Context.client(ca=cert)
    s = socket.create_connection(("127.0.0.1", port))
    conn = ctx.wrap(s, server_hostname="localhost")
    t0 = time.monotonic()
    res = run_client(conn, data, timeout=300)
    wall = time.monotonic() - t0
    conn.close(); s.close()
    _, status, ru = os.wait4(p.pid, 0)
    print(p.stdout.read().strip())
    greeting = len(res.data)
    assert res.eof == b"" and res.n > SIZE, (res.n, res.eof)
    cpu = ru.ru_utime + ru.ru_stime
    rows.append((SIZE / wall / 1e6, cpu, ru.ru_utime, ru.ru_stime, wall))
    print("run %d: %.1f MB/s (each way), %.2f s wall, server CPU %.2f s (user %.2f, sys %.2f)"
          % (i + 1, rows[-1][0], wall, cpu, ru.ru_utime, ru.ru_stime), flush=True)
print("median: %.1f MB/s, server CPU %.2f s"
      % (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)))
