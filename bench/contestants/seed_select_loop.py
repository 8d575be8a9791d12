#!/usr/bin/env python3
"""The seed's Python select() loop, translated to Python 3 for the benchmark.

This is NOT an example to follow: it is kept as a contestant because it is
what people write by hand, and its flaws are the point of the comparison.
The translation keeps the seed's structure and behaviour:

  * one connection at a time: accept, blocking handshake, then the select()
    loop; the next client waits in the listen backlog until this one ends;
  * the child is started with subprocess and a socketpair (stdin = stdout);
  * the loop reads 16 KiB from whichever side select() reports readable and
    writes it to the other with sendall();
  * it stops at the FIRST EOF of either side: the answer of a child that
    replies after its input ends (wc -c, sort) is lost, and so is whatever
    cat still had in flight when the client half-closes;
  * select() only sees the kernel's socket buffer, not what OpenSSL has
    already decrypted (SSL_pending);
  * the TLS socket is closed without close_notify (Python's ssl module only
    sends it from unwrap(), which the seed never calls).

Changes for the benchmark, none of which alters the data path: Python 3
syntax; the address, certificate, key and command come from the command line
(the seed used an ephemeral certificate and a fixed port); the greeting the
seed wrote to each client is left out so that every contestant's byte
stream is the child's alone; the child is reaped (proc.wait()) so that its
CPU time is counted in the server's.

usage: seed_select_loop.py HOST PORT CERT KEY -- CMD [ARGS...]
"""
import select
import socket
import ssl
import subprocess
import sys


def main():
    argv = sys.argv[1:]
    if len(argv) < 6 or argv[4] != "--":
        sys.exit(__doc__.strip().splitlines()[-1])
    host, port, cert, key = argv[0], int(argv[1]), argv[2], argv[3]
    cmd = argv[5:]

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(128)

    while True:
        sock, addr = srv.accept()
        try:
            conn = ctx.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            print("handshake failed: %s" % e, file=sys.stderr)
            sock.close()
            continue

        parent, child = socket.socketpair()
        proc = subprocess.Popen(cmd, stdin=child, stdout=child)
        child.close()

        try:
            while True:
                r, w, x = select.select([conn, parent], [], [])
                if conn in r:
                    data = conn.recv(16384)
                    if not data:
                        break
                    parent.sendall(data)
                if parent in r:
                    data = parent.recv(16384)
                    if not data:
                        break
                    conn.sendall(data)
        except (ssl.SSLError, OSError) as e:
            print("connection error: %s" % e, file=sys.stderr)
        conn.close()
        parent.close()
        proc.wait()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
