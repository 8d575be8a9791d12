#!/usr/bin/env python3
"""(c) The Python binding's argument parsers under atheris (fuzz/run args).

The input picks an entry point and builds its arguments from a palette of
hostile values (wrong types, NaN, huge and negative ints, NUL bytes, lone
surrogates, objects whose fileno()/__index__/__fspath__ lie or raise) mixed
with fuzzed primitives. Allowed outcomes: a result, or TypeError /
ValueError / OverflowError / OSError (tlspump.Error is one) / the hostile
objects' own exception. Anything else -- SystemError (a C function returned
NULL without an exception), another exception type, a crash, an ASan
report -- is a finding. The extension is built with ASan by fuzz/run.

Nothing here can block or touch the process's own fds: every Conn sits on
a socketpair whose peer is closed, small ints are mapped away from open
fds, spawned programs are only `true` and `cat` (closed at once), a Child
is waited for only after it exited, servers are created and closed, never
run.
"""
import os
import socket
import subprocess
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    import tlspump
    import tlspump.server  # noqa: F401 -- the pure-Python argument parsing


class Hostile(Exception):
    pass


class LyingFileno:
    def fileno(self):
        return "3"


class RaisingFileno:
    def fileno(self):
        raise Hostile("fileno")


class RaisingIndex:
    def __index__(self):
        raise Hostile("index")


class RaisingPath:
    def __fspath__(self):
        raise Hostile("fspath")


class BytesPath:
    def __fspath__(self):
        return b"/nonexistent\0x"


CLOSED_FD = 3999
ALLOWED = (TypeError, ValueError, OverflowError, OSError, Hostile)
SCTX = tlspump.Context.server()
CCTX = tlspump.Context.client(verify=False)
PEM = SCTX.cert_pem.encode()


def cert_and_key():
    """A certificate and key made once (an ephemeral one per call would
    spend the fuzzing time on key generation)."""
    d = tempfile.mkdtemp(prefix="tlspump-fuzz-")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", d + "/k.pem",
                    "-out", d + "/c.pem", "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    with open(d + "/c.pem", "rb") as c, open(d + "/k.pem", "rb") as k:
        out = c.read(), k.read()
    for n in ("c.pem", "k.pem"):
        os.unlink(os.path.join(d, n))
    os.rmdir(d)
    return out


CERT, KEY = cert_and_key()


def safe_int(v):
    """Ints that could name one of our fds become a closed fd."""
    if 3 <= v < 4000:
        return CLOSED_FD
    return v


def value(fdp, depth=0):
    kind = fdp.ConsumeIntInRange(0, 24)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return safe_int(fdp.ConsumeIntInRange(-2**70, 2**70))
    if kind == 3:
        return safe_int(fdp.ConsumeIntInRange(-3, 3)) if fdp.ConsumeBool() else 2**fdp.ConsumeIntInRange(0, 130)
    if kind == 4:
        return fdp.ConsumeFloat()
    if kind == 5:
        return fdp.PickValueInList([float("nan"), float("inf"), -float("inf"), -0.0, 1e-300, 1e300])
    if kind == 6:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 64))
    if kind == 7:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    if kind == 8:
        return bytearray(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16)))
    if kind == 9:
        return memoryview(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16)))
    if kind == 10 and depth < 2:
        return [value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    if kind == 11 and depth < 2:
        return tuple(value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3)))
    if kind == 12 and depth < 2:
        return {value(fdp, depth + 1) if fdp.ConsumeBool() else fdp.ConsumeUnicode(4):
                value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))}
    if kind == 13:
        return fdp.PickValueInList([LyingFileno(), RaisingFileno(), RaisingIndex(),
                                    RaisingPath(), BytesPath(), object()])
    if kind == 14:
        return fdp.PickValueInList(["", "\0", "\udcff", "é", "x" * 5000, "h2,http/1.1",
                                    "TLSv1.2", "TLSv1.3", "TLSv1.1", "localhost",
                                    "127.0.0.1", "::1", "unix:/nonexistent/x",
                                    "fd:3999", "127.0.0.1:0", "[::1]:0", "text", "json"])
    if kind == 15:
        return fdp.PickValueInList([b"", b"\0", PEM, PEM[:100], b"-----BEGIN X", PEM + b"\0"])
    if kind == 16:
        return ("127.0.0.1", safe_int(fdp.ConsumeIntInRange(-5, 70000)))
    if kind == 17:
        return fdp.PickValueInList([SCTX, CCTX, tlspump, socket.socket])
    if kind == 18:
        return fdp.PickValueInList([["h2"], ["h2", "http/1.1"], [""], ["a,b"], ["x" * 300]])
    return fdp.ConsumeIntInRange(-1, 5)


class Dead:
    """A Conn over a socketpair whose peer is closed."""

    def __init__(self, ctx):
        self.a, b = socket.socketpair()
        b.close()
        self.conn = ctx.wrap(self.a)

    def close(self):
        self.conn.close()
        self.a.close()


def close_result(r):
    for obj in r if isinstance(r, tuple) else (r,):
        if isinstance(obj, (tlspump.Conn, tlspump.Child, tlspump.Pump, tlspump.Server)):
            obj.close()


CONN_METHODS = {
    "handshake": ["timeout"], "read": ["n", "timeout"], "write": ["data", "timeout"],
    "flush": ["timeout"], "shutdown": ["timeout"], "wait": ["timeout"],
    "forward": ["target", "idle_timeout", "close_target_write"],
}
SERVER_KW = ["command", "backend", "max_conns", "handshake_timeout", "idle_timeout",
             "grace", "workers", "log", "log_json"]


def kwargs(fdp, names):
    kw = {}
    for name in names:
        if fdp.ConsumeBool():
            kw[name] = value(fdp)
    return kw


def one(fdp):
    which = fdp.ConsumeIntInRange(0, 8)
    if which == 0:
        kw = kwargs(fdp, ["cert", "key", "client_ca", "alpn", "min_version", "write_buffer"])
        if "cert" not in kw and fdp.ConsumeIntInRange(0, 15):  # rarely ephemeral
            kw["cert"] = CERT
            kw.setdefault("key", KEY)
        return tlspump.Context.server(**kw)
    if which == 1:
        return tlspump.Context.client(**kwargs(fdp, ["ca", "verify", "cert", "key", "ca_dir",
                                                     "alpn", "min_version", "write_buffer"]))
    if which == 2:
        ctx = fdp.PickValueInList([SCTX, CCTX])
        v = value(fdp)
        a, b = socket.socketpair()
        try:
            target = a if fdp.ConsumeBool() else v
            return ctx.wrap(target, **kwargs(fdp, ["server_hostname"]))
        finally:
            a.close()
            b.close()
    if which in (3, 4):
        d = Dead(fdp.PickValueInList([SCTX, CCTX]))
        t1, t2 = socket.socketpair()
        try:
            name = fdp.PickValueInList(sorted(CONN_METHODS))
            kw = kwargs(fdp, CONN_METHODS[name])
            if name == "write" and "data" not in kw:
                kw["data"] = b"x"
            if name == "forward" and ("target" not in kw or fdp.ConsumeBool()):
                kw["target"] = t1
            return getattr(d.conn, name)(**kw)
        finally:
            d.close()
            t1.close()
            t2.close()
    if which == 5:
        d = Dead(CCTX)
        t1, t2 = socket.socketpair()
        try:
            conn = d.conn if fdp.ConsumeBool() else value(fdp)
            target = t1 if fdp.ConsumeBool() else value(fdp)
            p = tlspump.Pump(conn, target, **kwargs(fdp, ["idle_timeout"]))
            p.wants()
            p.step()
            return p
        finally:
            d.close()
            t1.close()
            t2.close()
    if which == 6:
        argv = [fdp.PickValueInList(["true", "cat", "/nonexistent/prog"])]
        if fdp.ConsumeBool():
            argv += [value(fdp) for _ in range(fdp.ConsumeIntInRange(0, 3))]
        argv = argv if fdp.ConsumeIntInRange(0, 9) else value(fdp)
        if isinstance(argv, (list, tuple)) and argv and isinstance(argv[0], str) \
                and argv[0] not in ("true", "cat", "/nonexistent/prog"):
            argv = ["true"]
        return tlspump.spawn(argv, **kwargs(fdp, ["env", "cwd", "stderr"]))
    if which == 7:
        ch = tlspump.spawn(["true"])
        try:
            ch.wait(timeout=10)  # exited: no wait below blocks
            ch.wait(timeout=value(fdp))
            sig = value(fdp)
            if not (isinstance(sig, int) and 1 <= sig <= 64):
                ch.kill(sig)
        finally:
            ch.close()
        return None
    listen = ("127.0.0.1", 0) if fdp.ConsumeBool() else value(fdp)
    ctx = SCTX if fdp.ConsumeBool() else value(fdp)
    kw = kwargs(fdp, SERVER_KW)
    if "command" not in kw and "backend" not in kw and fdp.ConsumeBool():
        kw["command"] = ["true"]
    if isinstance(kw.get("command"), list) and kw["command"] and \
            kw["command"][0] not in ("true", "cat"):
        kw["command"] = ["true"]
    if isinstance(kw.get("log"), int):
        kw["log"] = None  # never a random fd to write to
    return tlspump.Server(listen, ctx, **kw)


def TestOneInput(data):
    fdp = atheris.FuzzedDataProvider(data)
    try:
        close_result(one(fdp))
    except ALLOWED:
        pass


def main():
    atheris.instrument_all()  # the harness's own branches guide the choices
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    os.environ.setdefault("TLSPUMP_FUZZ", "1")
    main()
