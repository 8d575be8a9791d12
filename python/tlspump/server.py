"""tlspump.serve and tlspump.Server: the C core's multi-connection server.

The event loop runs in C with the GIL released; this module only turns
Python-shaped arguments (address tuples, sockets, log files) into the
core's and adds a background thread for embedding::

    import tlspump
    ctx = tlspump.Context.server()                 # ephemeral certificate
    with tlspump.Server(("127.0.0.1", 0), ctx, command=["wc", "-c"]) as srv:
        host, port = srv.address                   # the real port
        ...                                        # clients connect here
    # leaving the block stops the server gracefully and reaps every child
"""

import os
import socket
import threading
from typing import Any, List, Optional, Sequence, Tuple, Union

from ._tlspump import Context, _Server

__all__ = ["Server", "serve"]

_Address = Union[str, Tuple[str, int], socket.socket]


def _one_address(addr: Any, keep: List[Any]) -> str:
    if isinstance(addr, str):
        if not addr:
            raise ValueError("empty listen address")
        return addr
    if isinstance(addr, tuple):
        if len(addr) < 2 or not isinstance(addr[0], str):
            raise TypeError("a listen address tuple is (host, port)")
        host, port = addr[0], addr[1]
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError("port must be an int, not %s" % type(port).__name__)
        if not 0 <= port <= 65535:
            raise ValueError("port must be 0..65535, not %d" % port)
        if ":" in host:
            return "[%s]:%d" % (host, port)
        return "%s:%d" % (host, port)  # "" -> all interfaces
    if hasattr(addr, "fileno") and not isinstance(addr, (int, bytes)):
        keep.append(addr)  # its finaliser must not close the fd under us
        return "fd:%d" % addr.fileno()
    raise TypeError(
        "listen must be a (host, port) tuple, a 'HOST:PORT' or 'unix:PATH' "
        "string, a listening socket, or a list of those; not %s" % type(addr).__name__
    )


def _addresses(listen: Any, keep: List[Any]) -> List[str]:
    if isinstance(listen, list):
        if not listen:
            raise ValueError("listen must not be empty")
        return [_one_address(a, keep) for a in listen]
    return [_one_address(listen, keep)]


def _backend(backend: Any) -> Optional[str]:
    if backend is None:
        return None
    if isinstance(backend, tuple):
        return _one_address(backend, [])
    if isinstance(backend, str):
        return backend
    raise TypeError("backend must be a (host, port) tuple or a 'HOST:PORT' string")


def _command(command: Any) -> Optional[List[Any]]:
    if command is None:
        return None
    if isinstance(command, (str, bytes, os.PathLike)):
        command = [command]  # a program without arguments, like subprocess
    command = [os.fspath(a) if isinstance(a, os.PathLike) else a for a in command]
    if not command:
        raise ValueError("command must not be empty")
    return command


def _log(log: Any, log_json: bool, keep: List[Any]) -> Tuple[int, bool]:
    if log is None:
        return -1, False
    if log == "text":
        return 2, bool(log_json)
    if log == "json":
        return 2, True
    if isinstance(log, str):
        raise ValueError("log must be 'text', 'json', None or a file, not %r" % log)
    if isinstance(log, bool):
        raise TypeError("log must be 'text', 'json', None or a file")
    if isinstance(log, int):
        return log, bool(log_json)
    if hasattr(log, "fileno"):
        if hasattr(log, "flush"):
            log.flush()  # our lines go to the fd directly
        keep.append(log)
        return log.fileno(), bool(log_json)
    raise TypeError("log must be 'text', 'json', None or a file with fileno()")


def _split(addr: str) -> Union[str, Tuple[str, int]]:
    """'127.0.0.1:8443' -> ('127.0.0.1', 8443); '[::1]:5' -> ('::1', 5);
    'unix:/p' -> '/p' (like socket.getsockname())."""
    if addr.startswith("unix:"):
        return addr[5:]
    host, _, port = addr.rpartition(":")
    if host.startswith("["):
        host = host[1:-1]
    return host, int(port)


class Server:
    """A TLS server for a command (one child per connection) or a backend.

    Server(listen, ctx, *, command=None, backend=None, max_conns=1024,
    handshake_timeout=10, idle_timeout=None, grace=10, workers=1,
    log="text", log_json=False)

    listen: a (host, port) tuple ("" = all interfaces, port 0 = a free
    port), a "HOST:PORT", "[IPv6]:PORT", "unix:PATH" or "fd:N" string, a
    listening socket object, or a list of those. ctx: a server Context
    (None: an ephemeral self-signed certificate). Exactly one of command (an
    argv list) and backend ((host, port) or "HOST:PORT") is required.
    Timeouts are in seconds. log: "text" or "json" lines on stderr, None, or
    a file object (log_json=True for JSON lines).

    The sockets are bound at once (errors raise tlspump.Error, e.g.
    "cannot listen on 127.0.0.1:8443: Address already in use");
    .addresses tells the real ones. run() serves in the calling thread,
    start() in a background thread; stop() stops gracefully. As a context
    manager it starts on entry (unless started) and stops on exit.
    """

    def __init__(
        self,
        listen: Union[_Address, List[_Address]],
        ctx: Optional[Context] = None,
        *,
        command: Optional[Sequence[Union[str, bytes, "os.PathLike[str]"]]] = None,
        backend: Optional[Union[str, Tuple[str, int]]] = None,
        max_conns: int = 1024,
        handshake_timeout: Optional[float] = 10,
        idle_timeout: Optional[float] = None,
        grace: float = 10,
        workers: int = 1,
        log: Any = "text",
        log_json: bool = False,
    ) -> None:
        self._keep: List[Any] = []
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        if ctx is None:
            ctx = Context.server()
        elif not isinstance(ctx, Context):
            raise TypeError("ctx must be a tlspump.Context, not %s" % type(ctx).__name__)
        elif ctx.role != "server":
            raise ValueError("a server context is required (tlspump.Context.server())")
        command = _command(command)
        backend = _backend(backend)
        if (command is None) == (backend is None):
            raise ValueError(
                "give either command or backend, not both"
                if command is not None
                else "command or backend is required"
            )
        for name, v in (("max_conns", max_conns), ("workers", workers)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError("%s must be an int" % name)
            if v < 1:
                raise ValueError("%s must be >= 1" % name)
        log_fd, json_lines = _log(log, log_json, self._keep)
        self.context = ctx
        self._srv = _Server(
            _addresses(listen, self._keep),
            ctx,
            command=command,
            backend=backend,
            max_conns=max_conns,
            handshake_timeout=handshake_timeout,
            idle_timeout=idle_timeout,
            grace=grace,
            workers=workers,
            log_fd=log_fd,
            log_json=json_lines,
        )

    @property
    def addresses(self) -> List[Union[str, Tuple[str, int]]]:
        """The bound addresses: (host, port) tuples, unix socket paths."""
        return [_split(a) for a in self._srv.addresses]

    @property
    def address(self) -> Union[str, Tuple[str, int]]:
        """The first bound address."""
        return self.addresses[0]

    @property
    def running(self) -> bool:
        return bool(self._srv.running) or (
            self._thread is not None and self._thread.is_alive()
        )

    def run(self) -> None:
        """Serves in this thread until stop() (or Ctrl-C: a graceful stop,
        then KeyboardInterrupt)."""
        self._srv.run()

    def _run_thread(self) -> None:
        try:
            self._srv.run()
        except BaseException as e:  # reported by stop()
            self._error = e

    def start(self) -> "Server":
        """Serves in a background thread; returns at once."""
        if self._thread is not None:
            raise RuntimeError("the server was already started")
        self._thread = threading.Thread(
            target=self._run_thread, name="tlspump-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Stops gracefully (sessions get the grace period) and waits up to
        timeout seconds for the background thread. True once stopped; an
        error of the loop is raised here."""
        self._srv.stop()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        if self._error is not None:
            e, self._error = self._error, None
            raise e
        return True

    def close(self) -> None:
        """Stops (if started) and closes the listening sockets."""
        if self._thread is not None and self._thread.is_alive():
            self.stop()
        if not self._srv.closed:
            self._srv.close()
        self._keep.clear()

    def __enter__(self) -> "Server":
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._srv.closed else "running" if self.running else "ready"
        return "<tlspump.Server %s %s>" % (", ".join(self._srv.addresses) if not self._srv.closed else "", state)


def serve(
    listen: Union[_Address, List[_Address]],
    ctx: Optional[Context] = None,
    **kwargs: Any,
) -> None:
    """Serves until stopped: tlspump.serve(("", 8443), ctx, command=[...])
    or backend=("127.0.0.1", 9000); the arguments are Server's. Blocks in
    C with the GIL released; Ctrl-C stops gracefully (then
    KeyboardInterrupt is raised)."""
    srv = Server(listen, ctx, **kwargs)
    try:
        srv.run()
    finally:
        srv.close()
