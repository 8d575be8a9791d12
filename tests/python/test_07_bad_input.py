"""Bad input: every wrong argument raises TypeError/ValueError (or a
tlspump.Error that says what is wrong) before any I/O, and leaks no fd."""

import gc
import os
import pathlib
import socket
import subprocess

import pytest

import tlspump

pytestmark = pytest.mark.timeout(60)


def open_fds():
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_fd_leak():
    gc.collect()
    before = open_fds()
    yield
    gc.collect()
    assert open_fds() == before, "a test leaked file descriptors"


@pytest.fixture(scope="module")
def sctx():
    return tlspump.Context.server()


@pytest.fixture
def socks():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def assert_nothing_sent(peer):
    """The peer received no byte: bad arguments did no I/O."""
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(1)


# ---- Context constructors ---------------------------------------------------


def test_context_not_constructible():
    with pytest.raises(TypeError):
        tlspump.Context()
    with pytest.raises(TypeError):
        tlspump.Conn()
    with pytest.raises(TypeError):

        class Sub(tlspump.Conn):  # noqa: F841
            pass


@pytest.mark.parametrize("path", ["/nonexistent.pem", pathlib.Path("/nonexistent.pem")])
def test_missing_cert_names_the_path(path):
    with pytest.raises(tlspump.Error) as ei:
        tlspump.Context.server(cert=path)
    assert "/nonexistent.pem" in str(ei.value)
    assert isinstance(ei.value, OSError)


def test_missing_key_and_ca_name_the_path(sctx, tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text(sctx.cert_pem)
    with pytest.raises(tlspump.Error, match="/nonexistent-key.pem"):
        tlspump.Context.server(cert=cert, key="/nonexistent-key.pem")
    with pytest.raises(tlspump.Error, match="/nonexistent-ca.pem"):
        tlspump.Context.client(ca="/nonexistent-ca.pem")


def make_cert(d, name):
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30)
    return cert, key


def test_key_cert_mismatch(tmp_path):
    cert1, key1 = make_cert(tmp_path, "one")
    cert2, key2 = make_cert(tmp_path, "two")
    assert tlspump.Context.server(cert=cert1, key=key1).ephemeral is False
    with pytest.raises(tlspump.Error) as ei:
        tlspump.Context.server(cert=cert1, key=key2)
    assert "does not match" in str(ei.value)
    # The same with PEM text (bytes).
    with pytest.raises(tlspump.Error, match="does not match"):
        tlspump.Context.server(cert=cert2.read_bytes(), key=key1.read_bytes())


def test_garbage_pem():
    with pytest.raises(tlspump.Error):
        tlspump.Context.server(cert=b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")


@pytest.mark.parametrize("kw, exc", [
    ({"cert": 123}, TypeError),
    ({"cert": b""}, ValueError),
    ({"cert": ""}, ValueError),
    ({"cert": "a\0b"}, ValueError),
    ({"key": ["k"]}, TypeError),
    ({"client_ca": 1.5}, TypeError),
    ({"alpn": "h2"}, TypeError),
    ({"alpn": [b"h2"]}, TypeError),
    ({"alpn": [""]}, ValueError),
    ({"alpn": ["a,b"]}, ValueError),
    ({"alpn": []}, ValueError),
    ({"min_version": "SSLv3"}, ValueError),
    ({"min_version": "TLSv1.1"}, ValueError),
    ({"min_version": 0x0303}, TypeError),
    ({"write_buffer": 0}, ValueError),
    ({"write_buffer": -1}, ValueError),
    ({"write_buffer": "1M"}, TypeError),
    ({"write_buffer": True}, TypeError),
    ({"bogus": 1}, TypeError),
])
def test_server_bad_options(kw, exc):
    with pytest.raises(exc):
        tlspump.Context.server(**kw)


@pytest.mark.parametrize("kw, exc", [
    ({"verify": "yes"}, TypeError),
    ({"verify": 1}, TypeError),
    ({"verify": None}, TypeError),
    ({"ca": 7}, TypeError),
    ({"ca_dir": b"\0"}, ValueError),
    ({"ca_dir": 5}, TypeError),
    ({"alpn": "h2"}, TypeError),
    ({"min_version": "SSLv3"}, ValueError),
])
def test_client_bad_options(kw, exc):
    with pytest.raises(exc):
        tlspump.Context.client(**kw)


def test_keyword_only_options():
    with pytest.raises(TypeError):
        tlspump.Context.server(None, None, None)  # client_ca is keyword-only
    with pytest.raises(TypeError):
        tlspump.Context.client(None, True, None)  # cert is keyword-only


def test_good_options_accepted(sctx):
    ctx = tlspump.Context.server(alpn=("h2", "http/1.1"), min_version="TLSv1.3",
                                 write_buffer=4096)
    assert ctx.role == "server" and ctx.ephemeral
    ctx = tlspump.Context.client(ca=sctx.cert_pem.encode(), verify=False,
                                 min_version="TLSv1.2")
    assert ctx.role == "client" and ctx.fingerprint is None


# ---- wrap ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, "x", 3.5, True, b"3", object()])
def test_wrap_type_errors(sctx, bad):
    with pytest.raises(TypeError):
        sctx.wrap(bad)


def test_wrap_negative_fd(sctx):
    with pytest.raises(ValueError):
        sctx.wrap(-1)
    s = socket.socket()
    s.close()  # fileno() is -1 now
    with pytest.raises(ValueError):
        sctx.wrap(s)


def test_wrap_closed_fd_names_it(sctx):
    s = socket.socket()
    fd = os.dup(s.fileno())
    s.close()
    os.close(fd)
    with pytest.raises(tlspump.Error) as ei:
        sctx.wrap(fd)
    assert str(fd) in str(ei.value)
    assert "not open" in str(ei.value)
    assert isinstance(ei.value, OSError)


def test_wrap_pipe_is_not_a_socket(sctx):
    r, w = os.pipe()
    try:
        with pytest.raises(tlspump.Error, match="not a socket"):
            sctx.wrap(r)
    finally:
        os.close(r)
        os.close(w)


def test_wrap_bad_server_hostname(sctx, socks):
    a, b = socks
    with pytest.raises(TypeError):
        sctx.wrap(a, server_hostname=b"localhost")
    with pytest.raises(TypeError):
        sctx.wrap(a, server_hostname=1)
    with pytest.raises(ValueError):
        sctx.wrap(a, server_hostname="local\0host")
    with pytest.raises(TypeError):
        sctx.wrap(a, "localhost", "extra")


def test_verifying_client_needs_server_hostname(sctx, socks):
    a, b = socks
    cctx = tlspump.Context.client(ca=sctx.cert_pem.encode())
    with pytest.raises(tlspump.Error, match="server_hostname"):
        cctx.wrap(a)
    assert_nothing_sent(b)


# ---- Conn methods -------------------------------------------------------------


@pytest.fixture
def client(sctx, socks):
    a, b = socks
    cctx = tlspump.Context.client(ca=sctx.cert_pem.encode())
    conn = cctx.wrap(a, server_hostname="localhost")
    yield conn, b
    conn.close()


def test_write_bad_data(client):
    conn, peer = client
    for bad in ("str", None, 5, ["x"]):
        with pytest.raises(TypeError):
            conn.write(bad)
    assert_nothing_sent(peer)


def test_read_bad_n(client):
    conn, peer = client
    for bad in (0, -1, -(2**70)):
        with pytest.raises(ValueError):
            conn.read(bad)
    for bad in ("x", 1.5, True, b"1"):
        with pytest.raises(TypeError):
            conn.read(bad)
    assert_nothing_sent(peer)


@pytest.mark.parametrize("method, args", [
    ("handshake", ()), ("read", (None,)), ("write", (b"x",)), ("flush", ()),
    ("shutdown", ()), ("wait", ()),
])
def test_bad_timeouts(client, method, args):
    conn, peer = client
    fn = getattr(conn, method)
    for bad in (-1, -0.5, float("nan")):
        with pytest.raises(ValueError):
            fn(*args, timeout=bad)
    for bad in ("x", True, [1], b"1"):
        with pytest.raises(TypeError):
            fn(*args, timeout=bad)
    assert_nothing_sent(peer)


def test_unknown_keyword(client):
    conn, _ = client
    with pytest.raises(TypeError):
        conn.read(size=3)
    with pytest.raises(TypeError):
        conn.handshake(1, 2)


def test_use_after_close(client):
    conn, _ = client
    conn.close()
    conn.close()  # idempotent
    calls = [
        lambda: conn.handshake(), lambda: conn.read(), lambda: conn.write(b"x"),
        lambda: conn.flush(), lambda: conn.shutdown(), lambda: conn.wait(),
        lambda: conn.fileno(),
    ]
    for call in calls:
        with pytest.raises(tlspump.ClosedError, match="connection is closed") as ei:
            call()
        assert ei.value.kind == "closed"
    for prop in ("want", "version", "cipher", "alpn", "peer_cert", "verify_result",
                 "server_name", "buffered", "pending", "handshake_done", "peer_closed"):
        with pytest.raises(tlspump.ClosedError):
            getattr(conn, prop)
    with pytest.raises(tlspump.ClosedError):
        with conn:
            pass
    assert "closed" in repr(conn)


def test_empty_write_is_zero(client):
    conn, peer = client
    assert conn.write(b"") == 0
    assert conn.write(bytearray()) == 0


def test_no_fd_leak_on_repeated_failures(sctx, tmp_path):
    """Failed constructors close what they opened (the autouse fixture
    counts fds around this loop)."""
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key\n")
    cert = tmp_path / "cert.pem"
    cert.write_text(sctx.cert_pem)
    r, w = os.pipe()
    try:
        for _ in range(20):
            with pytest.raises(tlspump.Error):
                tlspump.Context.server(cert="/nonexistent.pem")
            with pytest.raises(tlspump.Error):
                tlspump.Context.server(cert=cert, key=bad_key)
            with pytest.raises(tlspump.Error):
                sctx.wrap(r)
    finally:
        os.close(r)
        os.close(w)
