"""Write backpressure: when the peer stops reading, write() accepts into the
bounded C buffer until it is full, then returns less than asked; flush()
says WANT_WRITE and so does conn.want. When the peer reads again,
everything arrives, in order (sha256 and count equal)."""
import hashlib
import ssl
import threading

import pytest

import tlspump
from conftest import digits, drive, sha256

pytestmark = pytest.mark.timeout(120)

CHUNK = 64 * 1024
KERNEL_BUF = 64 * 1024  # asked for on both sockets, to fill up quickly


def _stalled_reader(tls, go):
    """Python ssl peer: reads nothing until `go` is set, then everything
    until close_notify. Returns (count, sha256)."""
    assert go.wait(60), "test never let the reader go"
    h = hashlib.sha256()
    n = 0
    while True:
        d = tls.recv(1 << 16)
        if not d:
            break
        h.update(d)
        n += len(d)
    tls.unwrap()
    return n, h.hexdigest()


def _fill(conn, stream):
    """write()s CHUNK-sized pieces of stream until one is not taken whole.
    Returns the count accepted."""
    off = 0
    while True:
        piece = stream[off:off + CHUNK]
        assert len(piece) == CHUNK, "wrote %d bytes and write never pushed back" % off
        n = conn.write(piece)
        assert 0 <= n <= CHUNK
        off += n
        if n < CHUNK:
            return off


@pytest.mark.parametrize("write_buffer", [256 * 1024, None])
def test_backpressure_then_everything_arrives(write_buffer, sockets, peer, conns):
    ctx = (tlspump.Context.server(write_buffer=write_buffer) if write_buffer
           else tlspump.Context.server())
    limit = write_buffer or (1 << 20)  # the documented default: 1 MiB
    cli, srv = sockets.pair(rcvbuf=KERNEL_BUF, sndbuf=KERNEL_BUF)
    cli.settimeout(30)
    pyctx = ssl.create_default_context()
    pyctx.check_hostname = False
    pyctx.verify_mode = ssl.CERT_NONE  # a fresh ephemeral certificate
    holder = {}
    hs = threading.Thread(target=lambda: holder.setdefault(
        "tls", pyctx.wrap_socket(cli, server_hostname="localhost")), daemon=True)
    hs.start()
    conn = ctx.wrap(srv)
    conns(conn)
    drive(conn, "handshake")
    hs.join(10)
    assert "tls" in holder
    go = threading.Event()
    reader = peer(_stalled_reader, holder["tls"], go)

    try:
        stream = digits(limit + (16 << 20), seed=3)
        off = _fill(conn, stream)
        # The buffer is full: what is buffered is near the limit (a record's
        # worth may sit in OpenSSL's own write buffer) and never above it.
        assert limit - 2 * CHUNK <= conn.buffered <= limit, conn.buffered
        assert off >= limit
        assert conn.flush() == tlspump.WANT_WRITE
        assert conn.want & tlspump.WANT_WRITE
        # Still full while the peer does not read.
        n = conn.write(stream[off:off + CHUNK])
        assert n < CHUNK
        off += n
    finally:
        go.set()  # the peer reads now (also when an assertion failed)
    assert drive(conn, "flush", timeout=60) == tlspump.DONE
    assert conn.buffered == 0
    assert drive(conn, "shutdown", timeout=30) == tlspump.DONE
    assert reader.result(timeout=60) == (off, sha256(stream[:off]))
