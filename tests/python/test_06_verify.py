"""Certificates: clients verify chain and hostname by default; mutual TLS;
ALPN; cert+key in one file; key/cert mismatch; verify=False.

Peers: tlspump against tlspump in one thread (handshake_pair), Python's ssl
module in a thread, and a real CA/server/client set made with openssl."""
import socket
import ssl

import pytest

import tlspump
from conftest import drive, handshake_pair, read_exactly, write_all

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pair(sockets, conns):
    """pair(server_ctx, client_ctx, hostname) -> (server conn, client conn)
    over one loopback TCP connection, not yet handshaken."""

    def make(sctx, cctx, hostname=None):
        c, s = sockets.pair()
        sconn = sctx.wrap(s)
        conns(sconn)
        cconn = cctx.wrap(c, server_hostname=hostname)
        conns(cconn)
        return sconn, cconn

    return make


def _ok(sconn, cconn):
    assert handshake_pair(sconn, cconn) == [tlspump.DONE, tlspump.DONE]
    write_all(cconn, b"ping")
    assert read_exactly(sconn, 4) == b"ping"
    write_all(sconn, b"pong")
    assert read_exactly(cconn, 4) == b"pong"


# ---- server verification by the client ---------------------------------------


def test_self_signed_without_ca_fails(server_ctx, pair):
    """Default client: system trust store; the ephemeral cert is not in it."""
    sconn, cconn = pair(server_ctx, tlspump.Context.client(), "localhost")
    rs, rc = handshake_pair(sconn, cconn)
    assert isinstance(rc, tlspump.Error), rc
    assert "verify" in str(rc)
    assert "self-signed certificate" in str(rc) or "self signed" in str(rc)
    assert rc.operation == "handshake"
    assert rc.reason in str(rc)
    # The server is told (alert) and fails too.
    assert isinstance(rs, tlspump.Error), rs


def test_wrong_hostname_fails_naming_it(server_ctx, client_ctx, pair):
    sconn, cconn = pair(server_ctx, client_ctx, "example.com")
    rs, rc = handshake_pair(sconn, cconn)
    assert isinstance(rc, tlspump.Error), rc
    assert "verify" in str(rc)
    assert "hostname mismatch" in str(rc)
    assert "example.com" in str(rc)
    assert isinstance(rs, tlspump.Error)


def test_wrong_ip_fails(server_ctx, client_ctx, pair):
    sconn, cconn = pair(server_ctx, client_ctx, "127.0.0.2")
    rs, rc = handshake_pair(sconn, cconn)
    assert isinstance(rc, tlspump.Error), rc
    assert "mismatch" in str(rc)
    assert "127.0.0.2" in str(rc)


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1"])
def test_right_hostname_or_ip_succeeds(hostname, server_ctx, client_ctx, pair):
    """The ephemeral cert's SANs: localhost, 127.0.0.1, ::1 (IP literals are
    checked against IP SANs)."""
    sconn, cconn = pair(server_ctx, client_ctx, hostname)
    _ok(sconn, cconn)
    assert cconn.verify_result == "ok"
    assert cconn.peer_cert["fingerprint"] == server_ctx.fingerprint
    assert cconn.peer_cert["pem"].strip() == server_ctx.cert_pem.strip()


def test_ca_as_pem_bytes_and_as_dir(server_ctx, pki, pair):
    sconn, cconn = pair(server_ctx, tlspump.Context.client(
        ca=server_ctx.cert_pem.encode()), "localhost")
    _ok(sconn, cconn)
    srv = tlspump.Context.server(cert=pki.server_cert, key=pki.server_key)
    sconn, cconn = pair(srv, tlspump.Context.client(ca_dir=pki.ca_dir), "localhost")
    _ok(sconn, cconn)
    assert "CN=localhost" in cconn.peer_cert["subject"]


def test_verify_false_connects_to_self_signed(server_ctx, pair):
    sconn, cconn = pair(server_ctx, tlspump.Context.client(verify=False))
    _ok(sconn, cconn)
    # The result is still reported, and it is not "ok".
    assert cconn.verify_result != "ok"
    assert "self-signed" in cconn.verify_result
    assert cconn.peer_cert["fingerprint"] == server_ctx.fingerprint


def test_pki_server_with_python_ssl_client(pki, listener, peer, conns):
    """A CA-signed server certificate; Python ssl verifies it."""
    ctx = tlspump.Context.server(cert=pki.server_cert, key=pki.server_key)
    assert not ctx.ephemeral

    def client():
        c = ssl.create_default_context(cafile=pki.ca)
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            with c.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"hi")
                return s.recv(2)

    t = peer(client)
    sock, _ = listener.accept()
    with sock:
        conn = ctx.wrap(sock)
        conns(conn)
        drive(conn, "handshake")
        assert read_exactly(conn, 2) == b"hi"
        write_all(conn, b"ho")
        assert t.result() == b"ho"


# ---- server configuration errors ------------------------------------------------


def test_cert_and_key_in_one_file(pki, pair):
    ctx = tlspump.Context.server(cert=pki.server_combined)
    sconn, cconn = pair(ctx, tlspump.Context.client(ca=pki.ca), "localhost")
    _ok(sconn, cconn)


def test_cert_and_key_as_pem_bytes(pki, pair):
    with open(pki.server_cert, "rb") as f:
        cert = f.read()
    with open(pki.server_key, "rb") as f:
        key = f.read()
    ctx = tlspump.Context.server(cert=cert, key=key)
    sconn, cconn = pair(ctx, tlspump.Context.client(ca=pki.ca), "127.0.0.1")
    _ok(sconn, cconn)


def test_key_does_not_match_cert(pki):
    with pytest.raises(tlspump.Error) as ei:
        tlspump.Context.server(cert=pki.server_cert, key=pki.other_key)
    text = str(ei.value).lower()
    assert "match" in text, text


def test_cert_without_key_is_an_error(pki):
    """A cert file without a key and no key= is an error, not a server
    that fails at the first handshake."""
    with pytest.raises(tlspump.Error):
        tlspump.Context.server(cert=pki.server_cert)


# ---- mutual TLS -------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_server(pki):
    return tlspump.Context.server(cert=pki.server_cert, key=pki.server_key,
                                  client_ca=pki.ca)


def test_mtls_client_without_cert_rejected(mtls_server, pki, pair):
    sconn, cconn = pair(mtls_server, tlspump.Context.client(ca=pki.ca), "localhost")
    rs, rc = handshake_pair(sconn, cconn)
    assert isinstance(rs, tlspump.Error), rs
    assert "certificate" in str(rs)
    if rc == tlspump.DONE:
        # TLS 1.3: the client is done before the server has checked; the
        # server's alert comes with the first read.
        with pytest.raises(tlspump.Error) as ei:
            drive(cconn, "read")
        rc = ei.value
    assert isinstance(rc, tlspump.Error)
    assert "certificate required" in str(rc)


def test_mtls_client_with_cert_accepted(mtls_server, pki, pair):
    cctx = tlspump.Context.client(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    sconn, cconn = pair(mtls_server, cctx, "localhost")
    _ok(sconn, cconn)
    assert "CN=tlspump test client" in sconn.peer_cert["subject"]
    assert "CN=tlspump test CA" in sconn.peer_cert["issuer"]
    assert sconn.verify_result == "ok"


def test_mtls_python_ssl_client(mtls_server, pki, listener, peer, conns):
    def client(with_cert):
        c = ssl.create_default_context(cafile=pki.ca)
        if with_cert:
            c.load_cert_chain(pki.client_cert, pki.client_key)
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            with c.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"hi")
                return s.recv(2)

    t = peer(client, True)
    sock, _ = listener.accept()
    with sock:
        conn = mtls_server.wrap(sock)
        conns(conn)
        drive(conn, "handshake")
        assert "CN=tlspump test client" in conn.peer_cert["subject"]
        assert read_exactly(conn, 2) == b"hi"
        write_all(conn, b"ok")
        assert t.result() == b"ok"

    t = peer(client, False)
    sock, _ = listener.accept()
    with sock:
        conn = mtls_server.wrap(sock)
        conns(conn)
        with pytest.raises(tlspump.Error) as ei:
            drive(conn, "handshake")
        assert "certificate" in str(ei.value)
        with pytest.raises(ssl.SSLError):
            t.result()


# ---- ALPN -------------------------------------------------------------------------


def test_alpn_between_tlspump_peers(pair):
    sctx = tlspump.Context.server(alpn=["h2", "http/1.1"])
    cctx = tlspump.Context.client(verify=False, alpn=["http/1.1"])
    sconn, cconn = pair(sctx, cctx)
    _ok(sconn, cconn)
    assert sconn.alpn == cconn.alpn == "http/1.1"


def test_no_alpn_offered_is_none(pair):
    sctx = tlspump.Context.server(alpn=["h2"])
    sconn, cconn = pair(sctx, tlspump.Context.client(verify=False))
    _ok(sconn, cconn)
    assert sconn.alpn is None and cconn.alpn is None


def test_alpn_server_with_python_client(server_ctx, eph_ca, listener, peer, conns):
    sctx = tlspump.Context.server(alpn=["h2", "http/1.1"])

    def client():
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        c.check_hostname = False
        c.verify_mode = ssl.CERT_NONE
        c.set_alpn_protocols(["spdy/3", "http/1.1"])
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            with c.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"x")
                return s.selected_alpn_protocol()

    t = peer(client)
    sock, _ = listener.accept()
    with sock:
        conn = sctx.wrap(sock)
        conns(conn)
        drive(conn, "handshake")
        assert conn.alpn == "http/1.1"
        assert read_exactly(conn, 1) == b"x"
        assert t.result() == "http/1.1"


def test_alpn_client_with_python_server(py_server_ssl, pki, listener, peer, conns):
    def server():
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        c.load_cert_chain(pki.server_cert, pki.server_key)
        c.set_alpn_protocols(["h2", "http/1.1"])
        s, _ = listener.accept()
        s.settimeout(10)
        with c.wrap_socket(s, server_side=True) as tls:
            tls.sendall(b"y")
            return tls.selected_alpn_protocol()

    t = peer(server)
    cctx = tlspump.Context.client(ca=pki.ca, alpn=["h2"])
    with socket.create_connection(listener.getsockname(), timeout=10) as sock:
        conn = cctx.wrap(sock, server_hostname="localhost")
        conns(conn)
        drive(conn, "handshake")
        assert conn.alpn == "h2"
        assert read_exactly(conn, 1) == b"y"
    assert t.result() == "h2"
