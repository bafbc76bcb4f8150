"""The exceptions of the pbkv client: every one is a `PbkvError`.

    PbkvError
    ├── DeadlineExceeded  the operation did not complete in time (`last_problem` says why)
    ├── Unavailable       no answer from a server: refused, lost, timed out, not the leader
    │   │                 (`Client` retries these itself until its deadline)
    │   └── ServerIdentityError  (pbkv.tls) the server's certificate does not cover the address
    ├── BadRequest        refused as malformed (e.g. a key that is not UTF-8): retrying cannot help
    ├── CallError         a call answered with an error code the client does not handle itself
    │                     (UNKNOWN_METHOD, FRAME_TOO_LARGE, …): `code`, `message`
    ├── ProtocolError     the peer broke the wire protocol, or ended the connection saying we did
    ├── TLSConfigError    (pbkv.tls) the CA, certificate or key files cannot be used
    └── ClientClosed      the client was closed
"""

from __future__ import annotations


class PbkvError(Exception):
    """Base of every pbkv client error."""


class DeadlineExceeded(PbkvError):
    """No server completed the operation before the deadline."""

    def __init__(self, message: str, last_problem: str | None = None) -> None:
        if last_problem:
            message = f"{message} (last problem: {last_problem})"
        super().__init__(message)
        self.last_problem = last_problem


class Unavailable(PbkvError):
    """No usable answer from a server: connection refused or lost, NOT_LEADER, no primary yet."""


class BadRequest(PbkvError):
    """The server refused the request as malformed; retrying cannot help."""


class CallError(PbkvError):
    """A call was answered with an error `code` (a `pbkv.Code` number) and a `message`."""

    def __init__(self, code: int, message: str, code_name: str | None = None) -> None:
        name = code_name or str(code)
        super().__init__(f"{name}: {message}" if message else name)
        self.code = code
        self.code_name = name
        self.message = message


class ProtocolError(PbkvError):
    """The peer sent bytes that break the wire protocol, or said Goodbye because we did.

    `code` is the `pbkv.Code` of a Goodbye (PROTOCOL_VIOLATION, UNSUPPORTED_VERSION, …) when the
    peer sent one, else None.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class SessionExpired(PbkvError):
    """A retried Put or PutHash found its session evicted from the server's duplicate table
    (SESSION_EXPIRED): an earlier attempt may or may not have taken effect, and the server can
    no longer tell. Read the key to find out before repeating the operation. The client has
    started a new session for later calls."""


class ClientClosed(PbkvError):
    """The client was closed."""
