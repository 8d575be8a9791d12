#!/usr/bin/env python3
"""hello_server.py -- say hi over TLS, with no certificate to set up.

Listens on 127.0.0.1:PORT (argument, default 8443; 0 picks a free port),
accepts one client, does the TLS handshake with an ephemeral self-signed
certificate made at start-up, reads what the client says, answers "hi!" and
closes cleanly (close_notify). Try it with:

    python3 examples/hello_server.py 8443 &
    echo hello | openssl s_client -connect 127.0.0.1:8443 -quiet

The printed fingerprint is what a client can pin instead of trusting a CA.
"""
import socket
import sys

import tlspump

TIMEOUT = 10  # seconds for each step; a silent client cannot hang us


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8443
    ctx = tlspump.Context.server()  # no cert given: ephemeral self-signed
    print("certificate sha256", ctx.fingerprint, flush=True)
    with socket.create_server(("127.0.0.1", port)) as listener:
        print("listening on 127.0.0.1:%d" % listener.getsockname()[1], flush=True)
        sock, addr = listener.accept()
        with sock, ctx.wrap(sock) as conn:
            try:
                conn.handshake(timeout=TIMEOUT)
                print("%s:%d %s %s" % (addr[0], addr[1], conn.version, conn.cipher))
                said = conn.read(timeout=TIMEOUT)  # b"" if it closed at once
                print("client says:", said)
                conn.write(b"hi!\n")
                conn.shutdown(timeout=TIMEOUT)  # flushes, then close_notify
            except tlspump.Error as e:  # Timeout, TruncatedError, alerts...
                print("%s:%d %s" % (addr[0], addr[1], e), file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
