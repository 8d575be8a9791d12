#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/seeds/ (committed; rerun to refresh).

handshake: real ClientHellos (Python's ssl with TLS 1.3, 1.2 only, ALPN,
SNI, a 1.0/1.1-only client), an HTTP request, random bytes, each prefixed
by the mode byte fuzz_handshake.c reads.
records, pump: op programs (see those targets) covering every op.
args: a few byte strings (atheris derives the arguments from them).
"""
import os
import random
import ssl

HERE = os.path.dirname(os.path.abspath(__file__))


def client_hello(**kw):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if kw.get("maxv"):
        ctx.maximum_version = kw["maxv"]
    if kw.get("minv"):
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = kw["minv"]
    if kw.get("alpn"):
        ctx.set_alpn_protocols(kw["alpn"])
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=kw.get("sni"))
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    rnd = random.Random(7)
    hellos = {
        "tls13": client_hello(sni="localhost"),
        "tls12": client_hello(maxv=ssl.TLSVersion.TLSv1_2, sni="localhost"),
        "alpn": client_hello(alpn=["h2", "http/1.1"], sni="example.org"),
        "nosni": client_hello(),
        "tls10": client_hello(minv=ssl.TLSVersion.TLSv1,
                              maxv=ssl.TLSVersion.TLSv1_1),
    }
    for name, h in hellos.items():
        for mode in (0x01, 0x05, 0x09, 0x23):
            write("handshake", "%s-%02x" % (name, mode), bytes([mode]) + h)
    write("handshake", "http", b"\x01GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    write("handshake", "random", b"\x01" + rnd.randbytes(512))
    write("handshake", "hello-then-junk",
          b"\x01" + hellos["tls13"] + rnd.randbytes(64))
    # records: op, arg pairs (fuzz_records.c): write, forward, read, inject,
    # cut, flip, close_notify, FIN, server write + client read
    write("records", "clean", bytes([0, 40, 1, 0, 2, 0, 0, 200, 1, 0, 2, 0,
                                     6, 0, 1, 0, 2, 0]))
    write("records", "inject", bytes([0, 10, 3, 5]) + b"hello" + bytes([1, 0, 2, 0]))
    write("records", "cut", bytes([0, 255, 4, 30, 7, 0, 2, 0]))
    write("records", "flip", bytes([0, 50, 5, 17, 1, 0, 2, 0]))
    write("records", "server", bytes([8, 100, 8, 200, 0, 3, 1, 0, 2, 0]))
    # pump: ops (fuzz_pump.c) then a fault tape
    write("pump", "clean", bytes([0, 64, 1, 64, 2, 0, 3, 0, 4, 0, 2, 0]))
    write("pump", "faults", bytes([7, 16] + [0, 1, 2, 3, 4] * 3 + [6] +
                                  [0, 200, 2, 0, 1, 200, 2, 0, 3, 0, 4, 0]))
    write("pump", "closes", bytes([0, 10, 5, 0, 2, 0, 1, 10, 6, 0, 2, 0]))
    write("pump", "target-first", bytes([1, 50, 6, 0, 2, 0, 0, 50, 2, 0]))
    write("pump", "eof", bytes([7, 4, 9, 9, 9, 9, 0, 100, 2, 0]))
    write("args", "a", b"\x00" * 16)
    write("args", "b", rnd.randbytes(64))
    write("args", "c", bytes(range(64)))


if __name__ == "__main__":
    main()
