"""The tlspump command line: `tlspump serve` and `tlspump connect`.

Also `python -m tlspump`. User errors are one line on stderr
("tlspump: ...") and exit status 1 (2 for bad usage), never a traceback.
"""

import argparse
import errno
import fcntl
import os
import shutil
import signal
import socket
import sys
from typing import List, Optional, Tuple

import tlspump
from tlspump._tlspump import _forward_client

PROG = "tlspump"

MAIN_EPILOG = """\
commands:
  serve     serve a command (one child per connection) or a TCP backend over TLS
  connect   a TLS client joining stdin/stdout to a server

examples:
  tlspump serve -- wc -c
  printf 'hello' | tlspump connect 127.0.0.1:8443 --insecure      # prints 5

Run `tlspump serve --help` or `tlspump connect --help` for the options.
"""

SERVE_EPILOG = """\
examples:
  tlspump serve -- wc -c
      serve `wc -c` on 127.0.0.1:8443 with an ephemeral self-signed
      certificate; its SHA-256 fingerprint is printed at start
  tlspump serve -l 0.0.0.0:8443 --cert cert.pem --key key.pem -- ./cmd.pl
      a command behind TLS on all IPv4 interfaces, like
      `socat OPENSSL-LISTEN:8443,fork EXEC:./cmd.pl` in one process
  tlspump serve -l :8443 -l unix:/run/app.sock --backend 127.0.0.1:8080
      a TLS front for a plain TCP service
  tlspump serve --client-ca ca.pem --log json --workers 4 -- ./handler
      mutual TLS (clients need a certificate signed by ca.pem), JSON log
      lines, four processes sharing the port

Each child gets the connection on stdin/stdout and TLSPUMP_PEER,
TLSPUMP_VERSION, TLSPUMP_CIPHER (TLSPUMP_CLIENT_SUBJECT with --client-ca)
in its environment. One log line per connection on stderr. SIGTERM or
Ctrl-C stops gracefully (a second one ends the grace period).
"""

CONNECT_EPILOG = """\
examples:
  printf 'hello' | tlspump connect 127.0.0.1:8443 --insecure
      send stdin, then close_notify, and print the server's answer
  tlspump connect 127.0.0.1:8443 --fingerprint sha256:3f2a...
      trust exactly the certificate `tlspump serve` printed at start
  tlspump connect example.org:443 --alpn http/1.1 < request.txt
  tlspump connect 10.0.0.5:8443 --ca ca.pem --servername app.internal \\
          --cert client.pem --key client.key

The server's certificate is verified (system trust store, or --ca) and
its name checked unless --insecure. When stdin ends, close_notify is sent
and the server's answer is still printed until its close_notify.
"""


class UsageError(Exception):
    """Bad arguments: exit status 2."""


class Failure(Exception):
    """A runtime failure with its one-line text: exit status 1."""


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number of seconds: %r" % text)
    if v < 0 or v != v:
        raise argparse.ArgumentTypeError("must be >= 0: %r" % text)
    return v


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not an integer: %r" % text)
    if v < 1:
        raise argparse.ArgumentTypeError("must be >= 1: %r" % text)
    return v


def _alpn(text: Optional[str]) -> Optional[List[str]]:
    if not text:
        return None
    return [p.strip() for p in text.split(",") if p.strip()]


def _hostport(text: str) -> Tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port:
        raise UsageError("bad address %r: expected HOST:PORT" % text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UsageError("bad address %r: an IPv6 address needs brackets: [ADDR]:PORT" % text)
    try:
        n = int(port)
    except ValueError:
        try:
            n = socket.getservbyname(port, "tcp")
        except OSError:
            raise UsageError("bad address %r: unknown port %r" % (text, port))
    if not 0 < n < 65536:
        raise UsageError("bad address %r: port out of range" % text)
    return host, n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="TLS glue done right: serve any stdin/stdout program over TLS, "
        "or talk to a TLS server from the shell.",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version="%(prog)s " + tlspump.__version__)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    s = sub.add_parser(
        "serve",
        help="serve a command or a TCP backend over TLS",
        usage="%(prog)s [-l ADDR ...] [options] (-- CMD [ARGS...] | --backend HOST:PORT)",
        description="Accept TLS connections and connect each one to a new child "
        "process (its stdin/stdout) or to a plain TCP backend, in one event loop.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument(
        "-l", "--listen", action="append", metavar="ADDR",
        help="HOST:PORT, [IPv6]:PORT, :PORT (all interfaces), unix:PATH or fd:N; "
        "repeatable (default 127.0.0.1:8443)",
    )
    s.add_argument("--cert", metavar="PEM", help="certificate file (PEM; may hold the key too). "
                   "Default: an ephemeral self-signed certificate")
    s.add_argument("--key", metavar="PEM", help="private key file (PEM)")
    s.add_argument("--client-ca", metavar="PEM",
                   help="require client certificates signed by these CAs (mutual TLS)")
    s.add_argument("--alpn", metavar="P,...", help="ALPN protocols to offer, e.g. h2,http/1.1")
    s.add_argument("--backend", metavar="HOST:PORT",
                   help="forward to this plain TCP (or unix:PATH) service instead of a command")
    s.add_argument("--max-conns", type=_positive, default=1024, metavar="N",
                   help="concurrent connections per process (default 1024)")
    s.add_argument("--handshake-timeout", type=_seconds, default=10.0, metavar="S",
                   help="seconds for the TLS handshake (default 10; 0: none)")
    s.add_argument("--idle-timeout", type=_seconds, default=None, metavar="S",
                   help="end a session after S seconds without data (default: none)")
    s.add_argument("--grace", type=_seconds, default=10.0, metavar="S",
                   help="on SIGTERM/Ctrl-C, seconds for sessions to finish (default 10)")
    s.add_argument("--workers", type=_positive, default=1, metavar="N",
                   help="processes sharing the listening sockets (default 1)")
    s.add_argument("--log", choices=["text", "json", "none"], default="text",
                   help="log lines on stderr: text (default), json, or none")
    s.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]",
                   help="the command to run per connection")

    c = sub.add_parser(
        "connect",
        help="connect stdin/stdout to a TLS server",
        description="A TLS client: stdin is sent to the server, its answer "
        "written to stdout.",
        epilog=CONNECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("address", metavar="HOST:PORT")
    c.add_argument("--ca", metavar="PEM", help="trust these CAs instead of the system store")
    c.add_argument("--servername", metavar="NAME",
                   help="name to send (SNI) and check in the certificate (default: HOST)")
    c.add_argument("--insecure", action="store_true",
                   help="INSECURE: accept any certificate, do not check the name")
    c.add_argument("--fingerprint", metavar="sha256:HEX",
                   help="accept exactly the certificate with this SHA-256 fingerprint "
                   "(as printed by tlspump serve), instead of CA verification")
    c.add_argument("--cert", metavar="PEM", help="client certificate (PEM) for mutual TLS")
    c.add_argument("--key", metavar="PEM", help="client private key (PEM)")
    c.add_argument("--alpn", metavar="P,...", help="ALPN protocols to offer")
    c.add_argument("--timeout", type=_seconds, default=30.0, metavar="S",
                   help="seconds for the TCP connect and the handshake (default 30)")
    return p


# ---- serve ----------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if command and args.backend:
        raise UsageError("give either a command (after --) or --backend, not both")
    if not command and not args.backend:
        raise UsageError("a command (tlspump serve -- CMD [ARGS...]) or --backend HOST:PORT is required")
    if command and shutil.which(command[0]) is None:
        raise UsageError("command not found: %s" % command[0])
    if args.key and not args.cert:
        raise UsageError("--key needs --cert")

    ctx = tlspump.Context.server(args.cert, args.key, client_ca=args.client_ca,
                                 alpn=_alpn(args.alpn))
    log = None if args.log == "none" else args.log
    srv = tlspump.Server(
        args.listen or ["127.0.0.1:8443"],
        ctx,
        command=command or None,
        backend=args.backend,
        max_conns=args.max_conns,
        handshake_timeout=args.handshake_timeout,
        idle_timeout=args.idle_timeout or None,
        grace=args.grace,
        workers=args.workers,
        log=log,
    )
    if log is None:
        line = "tlspump: listening on " + ", ".join(srv._srv.addresses)
        if ctx.ephemeral:
            line += ", fingerprint sha256:" + (ctx.fingerprint or "")
        print(line, file=sys.stderr, flush=True)

    # The core installs no handler; these make SIGTERM/Ctrl-C a graceful
    # stop (a second one ends the grace period).
    def on_signal(signum: int, frame: object) -> None:
        srv.stop()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        srv.run()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        srv.close()
    return 0


# ---- connect --------------------------------------------------------------


def cmd_connect(args: argparse.Namespace) -> int:
    host, port = _hostport(args.address)
    if args.key and not args.cert:
        raise UsageError("--key needs --cert")
    pin = None
    if args.fingerprint:
        pin = args.fingerprint.lower()
        if pin.startswith("sha256:"):
            pin = pin[7:]
        pin = pin.replace(":", "")
        if len(pin) != 64 or any(ch not in "0123456789abcdef" for ch in pin):
            raise UsageError("--fingerprint must be sha256: and 64 hex digits")
    verify = not (args.insecure or pin)
    ctx = tlspump.Context.client(args.ca, verify=verify, cert=args.cert, key=args.key,
                                 alpn=_alpn(args.alpn))
    try:
        sock = socket.create_connection((host, port), timeout=args.timeout or None)
    except OSError as e:
        raise Failure("cannot connect to %s: %s" % (args.address, e.strerror or e))
    with sock:
        conn = ctx.wrap(sock, server_hostname=args.servername or host)
        with conn:
            try:
                conn.handshake(timeout=args.timeout or None)
            except tlspump.Error as e:
                raise Failure("%s: %s" % (args.address, e))
            if pin:
                cert = conn.peer_cert
                if not cert or cert.get("fingerprint") != pin:
                    raise Failure(
                        "%s: certificate fingerprint sha256:%s does not match --fingerprint"
                        % (args.address, cert.get("fingerprint") if cert else "(none)"))
            # The pump makes stdin/stdout non-blocking (O_NONBLOCK belongs to
            # the open file, shared with the shell): restore afterwards.
            saved = []
            for fd in (0, 1):
                try:
                    saved.append((fd, fcntl.fcntl(fd, fcntl.F_GETFL)))
                except OSError:
                    pass
            try:
                st = _forward_client(conn, 0, 1)
            finally:
                for fd, fl in saved:
                    try:
                        fcntl.fcntl(fd, fcntl.F_SETFL, fl)
                    except OSError:
                        pass
    if st["tls_end"] != "clean":
        why = st["tls_error"] or st["target_error"] or st["tls_end"]
        print("tlspump: %s: connection ended: %s" % (args.address, why), file=sys.stderr)
        return 1
    if st["target_end"] not in ("clean", "none") and st["target_error"]:
        print("tlspump: %s" % st["target_error"], file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.cmd:
        parser.print_help(sys.stderr)
        return 2
    try:
        if args.cmd == "serve":
            return cmd_serve(args)
        return cmd_connect(args)
    except UsageError as e:
        print("%s %s: %s" % (PROG, args.cmd, e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Failure as e:
        print("%s: %s" % (PROG, e), file=sys.stderr)
        return 1
    except (tlspump.Error, OSError, ValueError) as e:
        text = str(e)
        if isinstance(e, OSError) and not isinstance(e, tlspump.Error) and e.strerror:
            text = e.strerror if not e.filename else "%s: %s" % (e.filename, e.strerror)
        print("%s: %s" % (PROG, text), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
