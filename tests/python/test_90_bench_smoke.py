"""Smoke test of the benchmark: `bench/run --quick` completes and writes its
table. No timing is asserted: the benchmark reports numbers, it does not
judge them here. Bounded to 150 s (the quick run takes well under 60 s on
2 cores); its output goes to a temporary directory, never bench/results/."""
import os
import re
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RUN = os.path.join(ROOT, "bench", "run")


@pytest.mark.timeout(150)
@pytest.mark.skipif(not shutil.which("cc") or not shutil.which("openssl"),
                    reason="bench needs cc and openssl")
def test_bench_quick_produces_table(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, RUN, "--quick", "--no-chart", "--out", str(out)],
        cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=140)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = (out / "latest.md").read_text()

    # The machine, the method and the commands are written down.
    for heading in ("## Machine", "## Method", "## Contestants", "## Results",
                    "## Targets (issue 6)"):
        assert heading in report
    assert "OpenSSL" in report
    assert "loadgen echo --bytes" in report

    # One table per workload, with a row per contestant that ran.
    for title in ("Upload bulk", "Download bulk", "Echo bulk", "Handshakes, sequential",
                  "Latency", "Idle memory", "half-close"):
        assert title in report, title
    rows = re.findall(r"^\| (socat|tlspump serve|tlspump-py|seed-select-loop) \|", report,
                      re.M)
    assert rows, report[:3000]

    # socat is a Debian package bench/run installs or finds: its rows are
    # results ("ok" or FAILED with a reason), never silently absent.
    if shutil.which("socat"):
        echo = report.split("### Echo bulk", 1)[1].split("###", 1)[0]
        assert re.search(r"^\| socat \| .*\| (ok|FAILED)", echo, re.M), echo

    # The seed's loop stops at the first EOF: the half-close check must
    # catch it losing wc -c's answer (a correctness check, not a timing).
    half = report.split("half-close through", 1)[1]
    assert re.search(r"^\| seed-select-loop \| FAILED", half, re.M), half
