"""tlspump: TLS glue done right, on a C core over OpenSSL 3.

A non-blocking handshake that says what to wait for, a read that drains
everything OpenSSL has decrypted, and a forwarding loop in C::

    import tlspump
    ctx = tlspump.Context.server()              # ephemeral self-signed cert
    conn = ctx.wrap(sock)
    while (w := conn.handshake()) != tlspump.DONE:
        sel.register(sock, w) ...               # WANT_READ/WANT_WRITE are
                                                # selectors.EVENT_READ/WRITE
"""

from ._tlspump import (
    DONE,
    WANT_READ,
    WANT_WRITE,
    ClosedError,
    Conn,
    Context,
    Error,
    ResetError,
    Timeout,
    TruncatedError,
    __version__,
)

__all__ = [
    "DONE",
    "WANT_READ",
    "WANT_WRITE",
    "ClosedError",
    "Conn",
    "Context",
    "Error",
    "ResetError",
    "Timeout",
    "TruncatedError",
    "__version__",
]

# ---- names added by the other parts of the binding -------------------------
# Each part adds its import here and extends __all__ (keep one line per part):
#   _pump.c   -> spawn, Child, Pump (Conn.forward is a method)
#   _server.c -> serve, Server
#   aio.py    -> the asyncio layer (import tlspump.aio; not imported eagerly)
from .server import Server, serve; __all__ += ["Server", "serve"]  # noqa: E402,E702
from ._tlspump import Child, ForwardStats, Pump, spawn; __all__ += ["Child", "ForwardStats", "Pump", "spawn"]  # noqa: E402,E702
