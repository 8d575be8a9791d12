#!/usr/bin/env python3
"""seed_server.py -- serve a command over TLS: the seed program on tlspump.

Listens, accepts one client at a time, does the TLS handshake with an
ephemeral self-signed certificate, greets the client, runs the command with
its stdin/stdout on a socketpair and forwards both ways until both have
ended, then prints what moved. Unlike the seed's select() loop it keeps the
answer of a command that replies after its input ends (wc -c, sort), never
stalls on data OpenSSL holds, and ends with a clean close_notify.

    python3 examples/seed_server.py --port 8443 -- wc -c &
    head -c 3000000 /dev/zero | openssl s_client -connect 127.0.0.1:8443 -quiet

usage: seed_server.py [--port N] [--once] [--cert-out FILE] -- CMD [ARG...]
"""
import argparse
import shutil
import socket
import sys

import tlspump


def main():
    ap = argparse.ArgumentParser(usage=__doc__.strip().splitlines()[-1])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8443, help="0: any free port")
    ap.add_argument("--once", action="store_true", help="serve one client")
    ap.add_argument("--cert-out", help="write the certificate (PEM) here")
    ap.add_argument("--idle-timeout", type=float, help="seconds")
    ap.add_argument("cmd", nargs="+")
    args = ap.parse_args()
    if not shutil.which(args.cmd[0]):
        ap.error("command not found: %s" % args.cmd[0])

    ctx = tlspump.Context.server()  # ephemeral self-signed certificate
    if args.cert_out:
        with open(args.cert_out, "w") as f:
            f.write(ctx.cert_pem)
    with socket.create_server((args.host, args.port)) as listener:
        host, port = listener.getsockname()[:2]
        print("listening on %s:%d, certificate sha256 %s"
              % (host, port, ctx.fingerprint), flush=True)
        while True:
            sock, addr = listener.accept()
            with sock, ctx.wrap(sock) as conn:
                serve(conn, "%s:%d" % addr[:2], args)
            if args.once:
                return 0


def serve(conn, peer, args):
    try:
        conn.handshake(timeout=10)
        conn.write(b"hello %s, this is %s\n" % (peer.encode(), args.cmd[0].encode()))
        with tlspump.spawn(args.cmd) as child:
            s = conn.forward(child, idle_timeout=args.idle_timeout)
    except (tlspump.Error, OSError) as e:  # handshake failure, timeout...
        print("%s: %s" % (peer, e), file=sys.stderr, flush=True)
        return
    print("%s: %d bytes in, %d out in %.3f s; client %s, command %s, exit %s%s"
          % (peer, s.to_target, s.to_tls, s.seconds, s.tls_end, s.target_end,
             s.returncode, "; " + (s.tls_error or s.target_error)
             if s.tls_error or s.target_error else ""), flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
