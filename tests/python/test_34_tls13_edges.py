"""Issue 7, cases 10 and 11 (case 9, KeyUpdate while a write is pending,
needs a peer that sends KeyUpdate on demand at a precise moment: it is
tests/c/test_hostile.c keyupdate_while_write_pending, with a raw OpenSSL
peer; test_04_keyupdate.py covers KeyUpdate from s_client/s_server).

10. A TLS 1.3 peer sends its tickets and no data while the other side
    writes first (small socket buffers) -> no deadlock, either way round.
11. A 16 KiB record read 1 byte at a time -> every byte is delivered with
    no new readiness (the rest sits in OpenSSL, not in the kernel).
"""
import hashlib
import random
import selectors
import socket
import ssl
import threading

import pytest

import tlspump
from conftest import handshake_pair

pytestmark = pytest.mark.timeout(60)

MB = 1 << 20


def small_pair(size=4096):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    c.connect(ls.getsockname())
    s, _ = ls.accept()
    ls.close()
    return c, s


def test_tlspump_client_writes_first_python_server_sends_tickets(pki):
    data = random.Random(10).randbytes(MB)
    c, s = small_pair()
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(pki.server_cert, pki.server_key)
    sctx.num_tickets = 4
    result = {}

    def server():
        s.settimeout(30)
        with sctx.wrap_socket(s, server_side=True) as t:
            got = bytearray()
            while len(got) < len(data):
                got += t.recv(65536)
            result["sha"] = hashlib.sha256(got).hexdigest()
            t.sendall(b"done")
            result["sent"] = True
    th = threading.Thread(target=server, daemon=True)
    th.start()
    conn = tlspump.Context.client(ca=pki.ca).wrap(c, server_hostname="localhost")
    try:
        assert conn.handshake(timeout=10) == tlspump.DONE
        assert conn.version == "TLSv1.3"
        # 1 MiB before reading a byte: the tickets wait in our socket
        assert conn.write(data, timeout=20) == len(data)
        assert conn.flush(timeout=20) == tlspump.DONE
        assert conn.read(timeout=20) == b"done"
        th.join(20)
        assert not th.is_alive()
        assert result["sha"] == hashlib.sha256(data).hexdigest()
    finally:
        conn.close()
        c.close()


def test_python_client_writes_first_tlspump_server_sends_tickets():
    data = random.Random(11).randbytes(MB)
    c, s = small_pair()
    sctx = tlspump.Context.server()
    cctx = ssl.create_default_context(cadata=sctx.cert_pem)
    result = {}

    def client():
        c.settimeout(30)
        with cctx.wrap_socket(c, server_hostname="localhost") as t:
            t.sendall(data)  # writes first, reads nothing (tickets pend)
            got = bytearray()
            while True:
                d = t.recv(65536)
                if not d:
                    break
                got += d
            result["got"] = bytes(got)
    th = threading.Thread(target=client, daemon=True)
    th.start()
    conn = sctx.wrap(s)
    try:
        assert conn.handshake(timeout=10) == tlspump.DONE
        got = bytearray()
        while len(got) < len(data):
            got += conn.read(timeout=20)
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        assert conn.write(b"thanks", timeout=10) == 6
        assert conn.shutdown(timeout=10) == tlspump.DONE
        th.join(20)
        assert not th.is_alive()
        assert result["got"] == b"thanks"
    finally:
        conn.close()
        s.close()


@pytest.mark.no_fault  # asserts where bytes sit: the fault BIO moves 1 byte per read
def test_16k_record_one_byte_at_a_time():
    a, b = socket.socketpair()
    sctx = tlspump.Context.server()
    server = sctx.wrap(a)
    client = tlspump.Context.client(verify=False).wrap(b)
    try:
        assert handshake_pair(client, server) == [tlspump.DONE, tlspump.DONE]
        client.read()  # the tickets
        record = random.Random(12).randbytes(16384)
        assert server.write(record) == 16384 and server.buffered == 0
        with selectors.DefaultSelector() as sel:
            sel.register(b, selectors.EVENT_READ)
            assert sel.select(5), "the record did not arrive"  # one event
            out = bytearray()
            for i in range(16384):
                d = client.read(1)
                assert d is not None and len(d) == 1, "byte %d: %r" % (i, d)
                out += d
                if i == 0:
                    # all of the record left the kernel with the first byte
                    assert sel.select(0) == []
                    assert client.pending
            assert bytes(out) == record
            assert sel.select(0) == []
        assert client.read(1) is None
        assert not client.pending
        assert client.want == tlspump.WANT_READ
    finally:
        server.close()
        client.close()
        a.close()
        b.close()
