"""Type stubs for the C extension tlspump._tlspump."""

import os
from typing import (Any, Dict, List, Literal, Mapping, Optional, Protocol, Sequence,
                    Tuple, Union, final)

__version__: str

DONE: Literal[0]
WANT_READ: Literal[1]
WANT_WRITE: Literal[2]

class _HasFileno(Protocol):
    def fileno(self) -> int: ...

_Status = Literal[0, 1, 2]
# A path (str, os.PathLike) or PEM text (bytes).
_PemOrPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
_Path = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
_Timeout = Optional[float]
_Buffer = Union[bytes, bytearray, memoryview]

class Error(OSError):
    """A TLS or I/O error; str(e) is the full text."""

    reason: Optional[str]
    operation: Optional[str]
    kind: Optional[str]

class TruncatedError(Error):
    """The peer closed without close_notify."""

class ResetError(Error, ConnectionResetError):
    """The connection was reset by the peer."""

class Timeout(Error, TimeoutError):
    """A timeout passed."""

class ClosedError(Error):
    """Use of a connection after close() or a fatal error."""

@final
class Context:
    """TLS configuration; create with Context.server() or Context.client()."""

    @classmethod
    def server(
        cls,
        cert: Optional[_PemOrPath] = None,
        key: Optional[_PemOrPath] = None,
        *,
        client_ca: Optional[_PemOrPath] = None,
        alpn: Optional[Union[List[str], Tuple[str, ...]]] = None,
        min_version: Optional[Literal["TLSv1.2", "TLSv1.3"]] = None,
        write_buffer: Optional[int] = None,
    ) -> "Context": ...
    @classmethod
    def client(
        cls,
        ca: Optional[_PemOrPath] = None,
        verify: bool = True,
        *,
        cert: Optional[_PemOrPath] = None,
        key: Optional[_PemOrPath] = None,
        ca_dir: Optional[_Path] = None,
        alpn: Optional[Union[List[str], Tuple[str, ...]]] = None,
        min_version: Optional[Literal["TLSv1.2", "TLSv1.3"]] = None,
        write_buffer: Optional[int] = None,
    ) -> "Context": ...
    def wrap(
        self, sock_or_fd: Union[int, _HasFileno], /, server_hostname: Optional[str] = None
    ) -> "Conn": ...
    @property
    def fingerprint(self) -> Optional[str]: ...
    @property
    def cert_pem(self) -> Optional[str]: ...
    @property
    def ephemeral(self) -> bool: ...
    @property
    def role(self) -> Literal["server", "client"]: ...

@final
class Conn:
    """A TLS connection over a caller-owned socket; create with Context.wrap()."""

    def handshake(self, timeout: _Timeout = 0) -> _Status: ...
    def read(self, n: Optional[int] = None, timeout: _Timeout = 0) -> Optional[bytes]: ...
    def write(self, data: _Buffer, timeout: _Timeout = 0) -> int: ...
    def flush(self, timeout: _Timeout = 0) -> _Status: ...
    def shutdown(self, timeout: _Timeout = 0) -> _Status: ...
    def wait(self, timeout: _Timeout = None) -> None: ...
    def close(self) -> None: ...
    def fileno(self) -> int: ...
    def __enter__(self) -> "Conn": ...
    def __exit__(self, *exc_info: Any) -> Literal[False]: ...
    @property
    def want(self) -> int: ...
    @property
    def version(self) -> Optional[str]: ...
    @property
    def cipher(self) -> Optional[str]: ...
    @property
    def alpn(self) -> Optional[str]: ...
    @property
    def peer_cert(self) -> Optional[Dict[str, str]]:
        """None, or a dict with keys pem, subject, issuer, fingerprint."""
    @property
    def verify_result(self) -> Optional[str]: ...
    @property
    def server_name(self) -> Optional[str]: ...
    @property
    def buffered(self) -> int: ...
    @property
    def pending(self) -> bool: ...
    @property
    def handshake_done(self) -> bool: ...
    @property
    def peer_closed(self) -> bool: ...
    def forward(
        self,
        target: Union["Child", int, _HasFileno, Tuple[int, int]],
        *,
        idle_timeout: Optional[float] = None,
        close_target_write: bool = False,
    ) -> "ForwardStats":
        """Pumps both ways until both directions end; the GIL is released."""

_End = Literal["none", "clean", "truncated", "reset", "timeout", "error", "aborted"]

@final
class ForwardStats(Tuple[Any, ...]):
    """The result of Conn.forward / Pump.stats (a named tuple)."""

    @property
    def to_target(self) -> int: ...
    @property
    def to_tls(self) -> int: ...
    @property
    def discarded(self) -> int: ...
    @property
    def tls_end(self) -> _End: ...
    @property
    def target_end(self) -> _End: ...
    @property
    def tls_error(self) -> Optional[str]: ...
    @property
    def target_error(self) -> Optional[str]: ...
    @property
    def seconds(self) -> float: ...
    @property
    def returncode(self) -> Optional[int]: ...

@final
class Child:
    """A command with stdin and stdout on a socketpair; see spawn()."""

    @property
    def pid(self) -> int: ...
    @property
    def fd(self) -> int: ...
    @property
    def returncode(self) -> Optional[int]: ...
    def fileno(self) -> int: ...
    def wait(self, timeout: Optional[float] = None) -> Optional[int]: ...
    def kill(self, sig: int = ...) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Child": ...
    def __exit__(self, *exc_info: Any) -> Literal[False]: ...

def spawn(
    argv: Sequence[Union[str, bytes, "os.PathLike[str]"]],
    *,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[_Path] = None,
    stderr: Optional[Union[int, _HasFileno]] = None,
) -> Child: ...

@final
class Pump:
    """The forwarding loop as steps, for selectors/asyncio callers."""

    def __init__(
        self,
        conn: Conn,
        target: Union[Child, int, _HasFileno, Tuple[int, int]],
        *,
        idle_timeout: Optional[float] = None,
        close_target_write: bool = False,
    ) -> None: ...
    def step(self) -> bool: ...
    def wants(self) -> List[Tuple[int, int]]: ...
    @property
    def timeout(self) -> Optional[float]: ...
    @property
    def done(self) -> bool: ...
    @property
    def stats(self) -> ForwardStats: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Pump": ...
    def __exit__(self, *exc_info: Any) -> Literal[False]: ...

# Private: the core server and the CLI client's forwarder (see server.py,
# __main__.py).
class _Server:
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...
    def __getattr__(self, name: str) -> Any: ...

def _forward_client(*args: Any, **kwargs: Any) -> Any: ...
