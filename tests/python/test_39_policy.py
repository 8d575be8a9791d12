"""Issue 7, cases 19 and 20.

19. A TLS 1.0/1.1-only peer, renegotiation requests both ways, a key file
    readable by group/other -> refused by default with a clear reason (the
    key permissions: a warning). (Self-signed certificate for a verifying
    client and the wrong hostname: test_06_verify.py.)
20. Logs and error messages never contain key material or payload bytes.
"""
import json
import os
import random
import re
import socket
import ssl
import threading
import time

import pytest

import tlspump

pytestmark = pytest.mark.timeout(60)

SECRET = b"SECRET-PAYLOAD-7f3a9c"


def old_client_ctx(maxv):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    c.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.warns(DeprecationWarning):
        c.minimum_version = ssl.TLSVersion.TLSv1
        c.maximum_version = maxv
    return c


@pytest.mark.parametrize("maxv", ["TLSv1", "TLSv1_1"])
def test_old_protocol_client_refused(maxv):
    sctx = tlspump.Context.server()
    cctx = old_client_ctx(getattr(ssl.TLSVersion, maxv))
    a, b = socket.socketpair()
    result = {}

    def client():
        b.settimeout(10)
        try:
            cctx.wrap_socket(b, server_hostname="localhost").close()
            result["ok"] = True
        except (ssl.SSLError, OSError) as e:
            result["error"] = str(e)
    th = threading.Thread(target=client, daemon=True)
    th.start()
    conn = sctx.wrap(a)
    try:
        with pytest.raises(tlspump.Error) as ei:
            conn.handshake(timeout=10)
        assert "unsupported protocol" in str(ei.value), str(ei.value)
        assert ei.value.operation == "handshake"
        th.join(10)
        assert "ok" not in result
    finally:
        conn.close()
        a.close()
        b.close()


def test_old_protocol_server_refused(children, pki):
    child, port = children.s_server("-cert", pki.server_cert, "-key", pki.server_key,
                                    "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        conn = tlspump.Context.client(ca=pki.ca).wrap(s, server_hostname="localhost")
        try:
            with pytest.raises(tlspump.Error) as ei:
                conn.handshake(timeout=10)
            assert re.search(r"protocol|version", str(ei.value)), str(ei.value)
        finally:
            conn.close()


def test_renegotiation_request_from_the_server_is_refused(children, pki):
    """s_server's "R" command (a HelloRequest, TLS 1.2): the tlspump client
    answers no_renegotiation; s_server then gives up on the session with an
    alert, which the client reports by name."""
    child, port = children.s_server("-cert", pki.server_cert, "-key", pki.server_key,
                                    "-tls1_2", "-msg")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        conn = tlspump.Context.client(ca=pki.ca).wrap(s, server_hostname="localhost")
        try:
            assert conn.handshake(timeout=10) == tlspump.DONE
            assert conn.version == "TLSv1.2"
            child.send(b"R\n")
            with pytest.raises(tlspump.Error) as ei:
                while True:
                    assert conn.read(timeout=5) is not None
            assert "alert" in str(ei.value), str(ei.value)
            # what the client sent: a no_renegotiation alert (100 = 0x64)
            child.wait_for(rb"<<< [^\n]*Alert[^\n]*\n\s*01 64", timeout=10)
        finally:
            conn.close()


def test_renegotiation_request_from_the_client_is_refused(children, listener):
    """s_client's "R" command over TLS 1.2: the tlspump server refuses."""
    sctx = tlspump.Context.server()
    child = children.s_client(listener.getsockname()[1], "-tls1_2", "-msg")
    s, _ = listener.accept()
    conn = sctx.wrap(s)
    try:
        assert conn.handshake(timeout=10) == tlspump.DONE
        child.wait_for(rb"Verify return code")  # s_client's handshake is done
        child.send(b"R\n")
        with pytest.raises(tlspump.Error) as ei:
            while True:
                assert conn.read(timeout=5) is not None
        assert "alert" in str(ei.value) or "renegotiation" in str(ei.value), str(ei.value)
        # the server's answer to the new ClientHello: no_renegotiation
        child.wait_for(rb"<<< [^\n]*Alert[^\n]*\n\s*01 64", timeout=10)
    finally:
        conn.close()
        s.close()


def test_key_readable_by_others_warns(pki, tmp_path, capfd):
    key = tmp_path / "key.pem"
    key.write_bytes(open(pki.server_key, "rb").read())
    os.chmod(key, 0o644)
    capfd.readouterr()
    tlspump.Context.server(cert=pki.server_cert, key=str(key))
    err = capfd.readouterr().err
    assert "accessible by group or others" in err and str(key) in err, err
    assert "BEGIN" not in err
    os.chmod(key, 0o600)
    tlspump.Context.server(cert=pki.server_cert, key=str(key))
    assert "accessible" not in capfd.readouterr().err


# ---- 20 -----------------------------------------------------------------------


def key_fragments(pem_path):
    """Pieces of a key's base64 body: none may appear in any text."""
    body = "".join(line for line in open(pem_path).read().splitlines()
                   if not line.startswith("-----"))
    return [body[i:i + 12] for i in range(0, len(body) - 12, 12)]


def assert_clean(text, fragments):
    assert SECRET.decode() not in text, text
    assert "SECRET" not in text, text
    for f in fragments:
        assert f not in text, "key material in: %s" % text


def test_errors_and_logs_hold_no_payload_or_key(pki, tmp_path):
    frags = key_fragments(pki.server_key)
    texts = []
    # context errors around a key: a mismatching one, a broken one
    key_pem = open(pki.server_key, "rb").read()
    broken = key_pem.replace(b"\n", b"\nSECRET", 1)
    for kw in ({"cert": pki.server_cert, "key": pki.other_key},
               {"cert": pki.server_cert, "key": broken},
               {"cert": key_pem, "key": key_pem},
               {"cert": open(pki.server_cert, "rb").read() + key_pem[:200]}):
        try:
            tlspump.Context.server(**kw)
        except tlspump.Error as e:
            texts.append(str(e))
    # connection errors after secret payload went through
    sctx = tlspump.Context.server(cert=pki.server_cert, key=pki.server_key)
    cctx = tlspump.Context.client(ca=pki.ca)
    a, b = socket.socketpair()
    from conftest import handshake_pair
    server, client = sctx.wrap(a), cctx.wrap(b, server_hostname="localhost")
    assert handshake_pair(client, server) == [tlspump.DONE, tlspump.DONE]
    client.write(SECRET * 100)
    b.shutdown(socket.SHUT_WR)
    try:
        while server.read(timeout=5):
            pass
    except tlspump.Error as e:
        texts.append(str(e))
        texts.append(repr(e.args))
    server.close()
    client.close()
    a.close()
    b.close()
    a, b = socket.socketpair()
    conn = sctx.wrap(a)
    b.sendall(b"GET /" + SECRET + b" HTTP/1.1\r\n\r\n")
    try:
        conn.handshake(timeout=5)
    except tlspump.Error as e:
        texts.append(str(e))
    conn.close()
    a.close()
    b.close()
    # the server's logs (text and JSON) over sessions with secret payloads,
    # truncations and garbage
    for fmt in ("text", "json"):
        logpath = tmp_path / ("log." + fmt)
        log = open(logpath, "w")
        with tlspump.Server(("127.0.0.1", 0), sctx, command=["cat"], log=log,
                            log_json=(fmt == "json")) as srv:
            for mode in ("clean", "truncate", "garbage"):
                with socket.create_connection(srv.address, timeout=10) as s:
                    if mode == "garbage":
                        s.sendall(SECRET + b"\r\n\r\n")
                        s.shutdown(socket.SHUT_WR)
                        try:
                            while s.recv(4096):
                                pass
                        except ConnectionResetError:
                            pass
                        continue
                    c = cctx.wrap(s, server_hostname="localhost")
                    c.handshake(timeout=10)
                    c.write(SECRET * 10, timeout=10)
                    if mode == "clean":
                        c.shutdown(timeout=10)
                        try:
                            while c.read(timeout=10):
                                pass
                        except tlspump.Error:
                            pass
                    c.close()
                    if mode == "truncate":
                        s.shutdown(socket.SHUT_RDWR)
            time.sleep(0)  # sessions end as the server stops (grace)
        log.close()
        text = logpath.read_text()
        assert text.strip(), "no log written"
        if fmt == "json":
            for line in text.splitlines():
                json.loads(line)
        texts.append(text)
    assert texts
    for t in texts:
        assert_clean(t, frags)


def test_cli_errors_hold_no_key(pki, tmp_path):
    import subprocess
    import sys
    from conftest import ROOT
    bad = tmp_path / "bad.pem"
    key_pem = open(pki.server_key).read()
    bad.write_text(key_pem.replace("\n", "\nSECRETKEY", 2))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (os.environ.get("PYTHONPATH"), os.path.join(ROOT, "python")) if p))
    r = subprocess.run([sys.executable, "-m", "tlspump", "serve", "-l", "127.0.0.1:0",
                        "--cert", pki.server_cert, "--key", str(bad), "--", "cat"],
                       capture_output=True, timeout=30, env=env)
    assert r.returncode != 0
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert "SECRETKEY" not in out, out
    assert_clean(out, key_fragments(pki.server_key))
    _ = random  # (imported for symmetry with the other files)
