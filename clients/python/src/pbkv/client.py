"""`Client`: Get, Put and PutHash with at-most-once semantics across failover."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Optional, Sequence, Union

from . import pbkv_pb2
from .connection import Connection, SocketFactory, code_name
from .errors import (
    BadRequest,
    CallError,
    ClientClosed,
    DeadlineExceeded,
    ProtocolError,
    SessionExpired,
    Unavailable,
)
from .framing import DEFAULT_MAX_PAYLOAD, LATENCY_COMPRESSION_THRESHOLD
from .viewservice import View, ViewServiceClient, parse_addresses
from .tls import TLS

Text = Union[str, bytes, bytearray, memoryview]

#: `pbkv.Code.SESSION_EXPIRED`, as a number so that a client given an older schema knows it too.
_SESSION_EXPIRED = 14


@dataclass
class ClientStats:
    """Counters of what a client did (for tests and monitoring)."""

    operations: int = 0
    #: Calls sent to a primary (a retry is another attempt).
    attempts: int = 0
    retries: int = 0
    #: Connections opened to KV servers.
    connects: int = 0
    #: Sessions started again after SESSION_EXPIRED (a new client id each).
    new_sessions: int = 0


class Client:
    """A client of a pbkv cluster.

    `viewservice` is `HOST:PORT`, or every address of a replicated view service as a list or as
    one comma-separated string. Each operation runs until it succeeds or `timeout` seconds
    pass (then `DeadlineExceeded`); on a failure the client asks the view service again, waits
    about a ping interval and retries **with the same request id**, so a retried operation is
    applied at most once, also across a failover.

    Keys and values are `str` (sent as UTF-8); `bytes` are sent as they are (the server refuses
    bytes that are not UTF-8 with `BadRequest`). Values come back as `str`.

    One operation runs at a time: calls from several threads wait their turn (use several
    clients for concurrency). `close()` it, or use it as a context manager.
    """

    def __init__(
        self,
        viewservice: Union[str, Sequence[str]],
        timeout: float = 30.0,
        *,
        attempt_timeout: float = 1.0,
        viewservice_timeout: float = 0.5,
        retry_interval: float = 0.1,
        compression: bool = True,
        compression_threshold: int = LATENCY_COMPRESSION_THRESHOLD,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        socket_factory: Optional[SocketFactory] = None,
        tls: Optional[TLS] = None,
        schema: Optional[ModuleType] = None,
        client_name: str = "pbkv-python",
    ) -> None:
        """`attempt_timeout`: one call to a primary; `viewservice_timeout`: one view service
        call; `compression`: offer zlib (frames of at least `compression_threshold` bytes are
        then sent compressed; compressed replies are accepted); `socket_factory(host, port,
        timeout)`: how connections are opened; `tls`: mutual TLS with a client certificate
        (`TLS.from_dir(DIR, NAME)`; None, the default, is plaintext); `schema`: the generated
        protobuf module to speak (default `pbkv.pbkv_pb2`; tests use variants of the schema)."""
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if tls is not None:
            if socket_factory is not None:
                raise ValueError("pass tls or socket_factory, not both")
            socket_factory = tls.socket_factory()
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.retry_interval = retry_interval
        self.client_id = secrets.randbits(64) or 1
        self.stats = ClientStats()
        self._schema = schema or pbkv_pb2
        self._connection_options: dict[str, Any] = dict(
            schema=self._schema,
            socket_factory=socket_factory,
            offer_zlib=compression,
            compression_threshold=compression_threshold,
            max_payload=max_payload,
            client_name=client_name,
        )
        self._viewservice = ViewServiceClient(
            parse_addresses(viewservice), call_timeout=viewservice_timeout, connect=self._connect)
        self._seq = 0
        self._primary: Optional[str] = None
        self._connection: Optional[Connection] = None
        self._lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------ operations

    def get(self, key: Text) -> Optional[str]:
        """The value of `key`, or None if the key is absent (distinct from "")."""
        pb = self._schema
        key_bytes = _utf8(key, "key")
        reply = self._perform("get", key, lambda rid: pb.Request(get=pb.GetArgs(key=key_bytes, id=rid)))
        return None if reply.code == pb.NO_KEY else self._text(reply.value)

    def put(self, key: Text, value: Text) -> None:
        """Sets `key` to `value`."""
        pb = self._schema
        key_bytes, value_bytes = _utf8(key, "key"), _utf8(value, "value")
        self._perform("put", key, lambda rid: pb.Request(put=pb.PutArgs(key=key_bytes, value=value_bytes, id=rid)))

    def put_hash(self, key: Text, value: Text) -> str:
        """Sets `key` to the decimal FNV-1a-32 of (previous value + `value`); returns the
        previous value ("" if the key was absent)."""
        pb = self._schema
        key_bytes, value_bytes = _utf8(key, "key"), _utf8(value, "value")
        reply = self._perform(
            "put_hash", key, lambda rid: pb.Request(put_hash=pb.PutHashArgs(key=key_bytes, value=value_bytes, id=rid)))
        return self._text(reply.value)

    def view(self) -> View:
        """The current view, asked of the view service now (never older than one seen before)."""
        with self._lock:
            self._check_open()
            return self._viewservice.get_view(time.monotonic() + self.timeout)

    @property
    def connection(self) -> Optional[Connection]:
        """The connection to the primary in use (None before the first operation)."""
        return self._connection

    @property
    def viewservice(self) -> ViewServiceClient:
        return self._viewservice

    def close(self) -> None:
        """Closes every connection; later operations raise `ClientClosed`."""
        with self._lock:
            self._closed = True
            self._viewservice.close()
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _perform(self, operation: str, key: Text, build: Callable[[Any], Any]) -> Any:
        pb = self._schema
        with self._lock:
            self._check_open()
            self._seq += 1
            request = build(pb.RequestId(client_id=self.client_id, seq=self._seq))
            # Whether an attempt of this operation was sent: it may have run on a server.
            sent = False
            self.stats.operations += 1
            deadline = time.monotonic() + self.timeout
            last_problem = "no primary known yet"
            first = True
            while True:
                if not first:
                    self.stats.retries += 1
                first = False
                if self._primary is None:
                    last_problem = self._refresh_view(deadline) or last_problem
                primary = self._primary
                if primary is not None:
                    self.stats.attempts += 1
                    attempt_deadline = min(deadline, time.monotonic() + self.attempt_timeout)
                    may_have_run, sent = sent, True
                    try:
                        reply = self._attempt(primary, request, attempt_deadline)
                        if reply is not None and reply.code == _SESSION_EXPIRED:
                            # Not run. A new session (new id, seq 1) is safe if no earlier attempt
                            # may have run, and always for a Get; otherwise the outcome is unknown.
                            self.client_id = secrets.randbits(64) or 1
                            self._seq = 1
                            if may_have_run and operation != "get":
                                self._seq = 0
                                raise SessionExpired(
                                    f"{operation} {_show(key)} was retried after its session expired on the server "
                                    "(SESSION_EXPIRED: evicted from the duplicate table, see --max-sessions): an earlier "
                                    "attempt may or may not have taken effect; read the key before repeating it")
                            request = build(pb.RequestId(client_id=self.client_id, seq=self._seq))
                            sent = False
                            self.stats.new_sessions += 1
                            continue
                        if reply is not None:
                            return reply
                        last_problem = f"{primary} is not the primary"
                    except (Unavailable, DeadlineExceeded) as error:
                        last_problem = f"{primary}: {error}"
                    except CallError as error:
                        if error.code in (pb.UNKNOWN_METHOD, pb.FRAME_TOO_LARGE, pb.PROTOCOL_VIOLATION, pb.UNSUPPORTED_VERSION):
                            raise  # retrying cannot help
                        last_problem = f"{primary}: {error}"  # INTERNAL, NOT_READY, a code from a newer server…
                    # The primary we believed in failed us: ask again, and retry at once if it moved.
                    self._primary = None
                    problem = self._refresh_view(deadline)
                    if self._primary is not None and self._primary != primary and time.monotonic() < deadline:
                        continue
                    last_problem = problem or last_problem
                now = time.monotonic()
                if now >= deadline:
                    raise DeadlineExceeded(
                        f"{operation} {_show(key)} did not complete within {self.timeout:g} s; check that the view "
                        "service and at least one server of the current view are running", last_problem)
                time.sleep(min(self.retry_interval, deadline - now))

    def _attempt(self, primary: str, request: Any, deadline: float) -> Any:
        """The KVReply (OK, NO_KEY or SESSION_EXPIRED), or None when `primary` is not the primary."""
        pb = self._schema
        connection = self._connection
        if connection is None or connection.closed or connection.address != primary:
            if connection is not None:
                connection.close()
            self._connection = None
            connection = self._connect(primary, deadline)
            self.stats.connects += 1
            self._connection = connection
        response = connection.call(request, deadline)
        if response.code == pb.OK:
            if response.WhichOneof("result") != "kv":
                raise ProtocolError(f"{primary} answered a KV call without a KV reply")
            reply = response.kv
            if reply.code in (pb.OK, pb.NO_KEY, _SESSION_EXPIRED):
                return reply
            if reply.code == pb.BAD_REQUEST:
                raise BadRequest(f"{primary} refused the request: {self._text(reply.value) or 'bad request'}")
            return None
        if response.code == pb.BAD_REQUEST:
            raise BadRequest(f"{primary} refused the request: {response.message}")
        raise CallError(response.code, response.message, code_name(pb, response.code))

    def _refresh_view(self, deadline: float) -> Optional[str]:
        """Asks the view service for the primary; returns a problem, or None."""
        if time.monotonic() >= deadline:
            return None  # no time to ask: keep the problem already known
        try:
            view = self._viewservice.get_view(deadline)
        except Unavailable as error:
            self._primary = None
            return f"view service: {error}"
        self._primary = view.primary or None
        return None if view.primary else f"the view service knows no primary yet (view {view.viewnum})"

    def _connect(self, address: str, deadline: float) -> Connection:
        return Connection(address, deadline=deadline, **self._connection_options)

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("the client was closed")

    @staticmethod
    def _text(value: bytes) -> str:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ProtocolError(f"the server sent a value that is not UTF-8: {error}") from error


def _utf8(text: Text, what: str) -> bytes:
    if isinstance(text, str):
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise BadRequest(f"the {what} cannot be encoded as UTF-8: {error}") from error
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise TypeError(f"the {what} must be str or bytes, not {type(text).__name__}")


def _show(key: Text) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:57] + "..."
