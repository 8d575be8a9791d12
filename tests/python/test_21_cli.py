"""The command line: help with examples, one-line errors with exit status
1 (2 for bad usage) and never a traceback, JSON logs, connect's options."""

import json
import os
import shutil
import socket
import subprocess

import pytest

import tlspump
from serve_util import ENV, PY, CliServer, EchoBackend, cli, insecure_ctx, servers  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def one_line_error(r, status):
    err = r.stderr.decode()
    assert r.returncode == status, (r.returncode, err)
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("tlspump"), err
    return err.strip()


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["connect", "--help"]])
def test_help_has_examples(args):
    r = cli(*args)
    assert r.returncode == 0
    out = r.stdout.decode()
    assert "examples:" in out
    assert "tlspump" in out
    if "serve" in args:
        for opt in ("--listen", "--cert", "--key", "--client-ca", "--alpn", "--backend",
                    "--max-conns", "--handshake-timeout", "--idle-timeout", "--workers",
                    "--log", "-- wc -c"):
            assert opt in out, opt
    if "connect" in args:
        for opt in ("--ca", "--servername", "--insecure", "--cert", "--key", "--alpn"):
            assert opt in out, opt


def test_no_subcommand_prints_help():
    r = cli()
    assert r.returncode == 2
    assert b"serve" in r.stderr and b"connect" in r.stderr


def test_console_script_entry_point():
    """pyproject's `tlspump = tlspump.__main__:main`; the installed script
    too when it is on PATH."""
    from tlspump.__main__ import main
    assert main(["serve", "-l", "127.0.0.1:0"]) == 2  # no command: usage
    exe = shutil.which("tlspump")
    if exe:
        r = subprocess.run([exe, "--help"], capture_output=True, timeout=30, env=ENV)
        assert r.returncode == 0 and b"examples:" in r.stdout


def test_port_in_use():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        r = cli("serve", "-l", "127.0.0.1:%d" % port, "--", "cat")
        err = one_line_error(r, 1)
        assert err == "tlspump: cannot listen on 127.0.0.1:%d: Address already in use" % port
    finally:
        s.close()


@pytest.mark.parametrize("addr,text", [
    ("nonsense", "bad address"),
    ("127.0.0.1:notaport", "cannot listen on 127.0.0.1:notaport"),
    ("::1:80", "needs brackets"),
    ("unix:" + "x" * 200, "path longer"),
])
def test_bad_listen_address(addr, text):
    err = one_line_error(cli("serve", "-l", addr, "--", "cat"), 1)
    assert text in err


def test_unreadable_key_names_the_path(pki, tmp_path):
    missing = str(tmp_path / "nope.key")
    err = one_line_error(cli("serve", "-l", "127.0.0.1:0", "--cert", pki.server_cert,
                             "--key", missing, "--", "cat"), 1)
    assert missing in err
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    os.chmod(bad, 0o644)
    err = one_line_error(cli("serve", "-l", "127.0.0.1:0", "--cert", pki.server_cert,
                             "--key", str(bad), "--", "cat"), 1)
    assert "key" in err
    err = one_line_error(cli("serve", "-l", "127.0.0.1:0", "--cert", pki.server_cert,
                             "--key", pki.other_key, "--", "cat"), 1)
    assert "match" in err or "key" in err


def test_usage_errors():
    err = one_line_error(cli("serve", "-l", "127.0.0.1:0"), 2)
    assert "--backend" in err and "CMD" in err
    err = one_line_error(cli("serve", "-l", "127.0.0.1:0", "--", "no-such-command-xyz"), 2)
    assert "command not found: no-such-command-xyz" in err
    err = one_line_error(cli("serve", "-l", "127.0.0.1:0", "--backend", "127.0.0.1:1",
                             "--", "cat"), 2)
    assert "not both" in err
    r = cli("serve", "--max-conns", "0", "--", "cat")
    assert r.returncode == 2 and b"Traceback" not in r.stderr
    err = one_line_error(cli("connect", "nohostport"), 2)
    assert "HOST:PORT" in err


def test_connect_errors(free_port):
    err = one_line_error(cli("connect", "127.0.0.1:%d" % free_port), 1)
    assert "cannot connect to 127.0.0.1:%d" % free_port in err
    assert "refused" in err


def test_connect_checks_fingerprint_and_name(servers):
    srv = servers("--", "cat")
    wrong = "sha256:" + "0" * 64
    err = one_line_error(cli("connect", "127.0.0.1:%d" % srv.port, "--fingerprint", wrong,
                             input=b"x"), 1)
    assert "does not match" in err
    r = cli("connect", "127.0.0.1:%d" % srv.port, "--insecure", input=b"insecure ok")
    assert r.returncode == 0 and r.stdout == b"insecure ok"
    assert srv.stop() == 0


def test_connect_with_ca_and_servername(servers, pki):
    srv = servers("--cert", pki.server_cert, "--key", pki.server_key, "--alpn",
                  "x-test,http/1.1", "--", "sh", "-c", 'cat; echo "alpn=$TLSPUMP_ALPN"')
    r = cli("connect", "127.0.0.1:%d" % srv.port, "--ca", pki.ca, "--servername", "localhost",
            "--alpn", "x-test", input=b"ca ")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"ca alpn=x-test\n"
    # a name the certificate does not have
    err = one_line_error(cli("connect", "127.0.0.1:%d" % srv.port, "--ca", pki.ca,
                             "--servername", "wrong.example", input=b"x"), 1)
    assert "wrong.example" in err or "mismatch" in err
    assert srv.stop() == 0


def test_backend_and_unix_listener_and_json_log(servers, tmp_path):
    backend = EchoBackend()
    try:
        upath = str(tmp_path / "front.sock")
        srv = servers("--backend", "%s:%d" % backend.address, "--log", "json",
                      listen=("127.0.0.1:0", "unix:" + upath))
        r = cli("connect", "127.0.0.1:%d" % srv.port, "--insecure", input=b"json please")
        assert r.returncode == 0 and r.stdout == b"json please"
        srv.wait_line(r'"event":"end"')
        assert srv.stop() == 0
        recs = srv.json_lines()
        start = recs[0]
        assert start["event"] == "listening"
        assert start["addresses"][0].startswith("127.0.0.1:")
        assert start["addresses"][1] == "unix:" + upath
        assert start["fingerprint"].startswith("sha256:") and len(start["fingerprint"]) == 71
        end = [x for x in recs if x["event"] == "end"][0]
        assert end["bytes_in"] == 11 and end["bytes_out"] == 11
        assert end["tls_end"] == "clean" and end["target_end"] == "clean"
        assert end["version"].startswith("TLSv1.") and end["cipher"]
        assert end["peer"].startswith("127.0.0.1:") and end["pid"] == srv.p.pid
        assert isinstance(end["seconds"], float)
        assert recs[-1]["event"] == "stopped"
        assert not os.path.exists(upath)
    finally:
        backend.stop()


def test_python_dash_m_and_module_main_same_parser():
    r = subprocess.run([PY, "-m", "tlspump", "--version"], capture_output=True, timeout=30,
                       env=ENV)
    assert r.returncode == 0 and tlspump.__version__.encode() in r.stdout
