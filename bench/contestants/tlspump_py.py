#!/usr/bin/env python3
"""tlspump driven from Python: the multi-connection server a script writes.

An accept loop in the main thread; each connection is served by a thread
that wraps the socket, completes the handshake (blocking, with a deadline,
inside C), spawns the command on a socketpair and calls conn.forward(), the
C forwarding loop that runs with the GIL released. Threads, not forks:
CPython releases the GIL for the whole forward, so one process serves many
connections at once, like `tlspump serve` does with its event loop.

usage: tlspump_py.py HOST PORT CERT KEY -- CMD [ARGS...]
"""
import socket
import sys
import threading

import tlspump


def serve_one(ctx, sock, cmd):
    try:
        conn = ctx.wrap(sock)
        conn.handshake(timeout=10)
        with tlspump.spawn(cmd) as child:
            conn.forward(child)
            child.wait()
    except (tlspump.Error, OSError) as e:
        print("connection: %s" % e, file=sys.stderr)
    finally:
        sock.close()


def main():
    argv = sys.argv[1:]
    if len(argv) < 6 or argv[4] != "--":
        sys.exit(__doc__.strip().splitlines()[-1])
    host, port, cert, key = argv[0], int(argv[1]), argv[2], argv[3]
    cmd = argv[5:]
    ctx = tlspump.Context.server(cert=cert, key=key)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(1024)
    while True:
        sock, _ = srv.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve_one, args=(ctx, sock, cmd),
                         daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
