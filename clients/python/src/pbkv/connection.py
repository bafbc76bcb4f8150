"""One connection to a pbkv process (view service or KV server): handshake, calls, frames.

`Client` is what applications use; `Connection` is the layer under it, public for tools and
tests that need single calls (e.g. a method the server may not know).
"""

from __future__ import annotations

import itertools
import socket
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Optional

from . import pbkv_pb2
from .errors import CallError, DeadlineExceeded, ProtocolError, Unavailable
from .framing import (
    DEFAULT_MAX_PAYLOAD,
    LATENCY_COMPRESSION_THRESHOLD,
    encode_frame,
    frame_payload,
    read_frame,
)

#: The protocol version this client speaks (`Hello.protocol_version`).
PROTOCOL_VERSION = 1

#: Opens a stream to (host, port) within `timeout` seconds. The seam for TLS: a factory that
#: wraps the TCP socket (e.g. `ssl.SSLContext.wrap_socket`) gives encrypted connections; the
#: returned object needs `sendall`, `recv`, `settimeout` and `close`.
SocketFactory = Callable[[str, int, float], Any]


def tcp_socket_factory(host: str, port: int, timeout: float) -> socket.socket:
    """Plain TCP, Nagle off (one frame per write; waiting for more only adds latency)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def parse_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` (`[v6]:PORT` for IPv6) as (host, port); ValueError otherwise."""
    host, sep, port_text = address.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f'invalid address "{address}": expected HOST:PORT, e.g. 127.0.0.1:7000')
    return host, int(port_text)


def code_name(schema: ModuleType, code: int) -> str:
    """The name of a `pbkv.Code` number, or the number itself for a code from a newer schema."""
    try:
        return schema.Code.Name(code)
    except ValueError:
        return f"code {code}"


@dataclass
class ConnectionStats:
    """What went over one connection, by frame (the flag byte each frame actually carried)."""

    frames_sent: int = 0
    frames_sent_compressed: int = 0
    frames_received: int = 0
    frames_received_compressed: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


class Connection:
    """A handshaken connection: `call(request, deadline)` sends one `Request` and returns the
    `Response` with its call id. Responses to earlier calls that timed out are skipped.
    Not thread-safe (`Client` serialises its calls).

    Raises `Unavailable` when the peer cannot be reached or the connection is lost,
    `DeadlineExceeded` when `deadline` (a `time.monotonic()` value) passes, `ProtocolError` when
    the peer breaks the protocol or says Goodbye because we did.
    """

    def __init__(
        self,
        address: str,
        *,
        deadline: float,
        schema: Optional[ModuleType] = None,
        socket_factory: Optional[SocketFactory] = None,
        offer_zlib: bool = True,
        compression_threshold: int = LATENCY_COMPRESSION_THRESHOLD,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        client_name: str = "pbkv-python",
    ) -> None:
        self.address = address
        self.schema = schema or pbkv_pb2
        self.stats = ConnectionStats()
        self.compression_threshold = compression_threshold
        self.max_payload = max_payload
        self.compression_agreed = False
        self.peer_max_payload = DEFAULT_MAX_PAYLOAD
        self.server_name = ""
        self.closed = False
        self._call_ids = itertools.count(1)
        self._received = bytearray()
        host, port = parse_address(address)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"no time left to connect to {address}")
        try:
            self._sock = (socket_factory or tcp_socket_factory)(host, port, remaining)
        except socket.timeout as error:
            raise DeadlineExceeded(f"connecting to {address} timed out") from error
        except OSError as error:
            raise Unavailable(f"cannot connect to {address}: {error}") from error
        try:
            self._handshake(offer_zlib, client_name, deadline)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ public

    def call(self, request: Any, deadline: float) -> Any:
        """Sends `request` (its `call_id` and `timeout_ms` are set here) and returns the matching
        `Response`, whatever its code."""
        call_id = next(self._call_ids)
        request.call_id = call_id
        request.timeout_ms = max(0, min(int((deadline - time.monotonic()) * 1000), 0xFFFFFFFF))
        self._send(self.schema.Envelope(request=request), compressible=True, deadline=deadline)
        while True:
            envelope = self._receive(deadline)
            body = envelope.WhichOneof("body")
            if body == "response":
                if envelope.response.call_id == call_id:
                    return envelope.response
                continue  # the late answer to an earlier call that timed out
            self._fail_on(envelope, body)

    def close(self) -> None:
        """Closes the socket (idempotent)."""
        if not self.closed:
            self.closed = True
            try:
                self._sock.close()
            except OSError:
                pass

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _handshake(self, offer_zlib: bool, client_name: str, deadline: float) -> None:
        pb = self.schema
        hello = pb.Hello(
            protocol_version=PROTOCOL_VERSION,
            features=[pb.FEATURE_ZLIB] if offer_zlib else [],
            max_frame_size=self.max_payload,
            client_name=client_name,
        )
        self._send(pb.Envelope(hello=hello), compressible=False, deadline=deadline)
        envelope = self._receive(deadline)
        body = envelope.WhichOneof("body")
        if body != "hello_reply":
            self._fail_on(envelope, body)
        reply = envelope.hello_reply
        if reply.protocol_version != PROTOCOL_VERSION:
            raise ProtocolError(f"{self.address} answered protocol version {reply.protocol_version}, not {PROTOCOL_VERSION}")
        self.compression_agreed = offer_zlib and pb.FEATURE_ZLIB in reply.features
        if reply.max_frame_size:
            self.peer_max_payload = reply.max_frame_size
        self.server_name = reply.server_name

    def _fail_on(self, envelope: Any, body: Optional[str]) -> None:
        """Ends the connection after an envelope that has no place here; always raises."""
        self.close()
        if body == "goodbye":
            goodbye = envelope.goodbye
            name = code_name(self.schema, goodbye.code)
            if goodbye.code in (self.schema.PROTOCOL_VIOLATION, self.schema.UNSUPPORTED_VERSION):
                raise ProtocolError(f"{self.address} ended the connection: {name}: {goodbye.message}", code=goodbye.code)
            if goodbye.code == self.schema.FRAME_TOO_LARGE:
                raise CallError(goodbye.code, goodbye.message, name)
            raise Unavailable(f"{self.address} ended the connection: {name}: {goodbye.message}")
        raise ProtocolError(f"{self.address} sent an unexpected {body or 'empty envelope'}")

    def _send(self, envelope: Any, *, compressible: bool, deadline: float) -> None:
        if self.closed:
            raise Unavailable(f"connection to {self.address} is closed")
        payload = envelope.SerializeToString()
        if len(payload) > min(self.max_payload, self.peer_max_payload):
            limit = min(self.max_payload, self.peer_max_payload)
            raise CallError(
                self.schema.FRAME_TOO_LARGE,
                f"a request of {len(payload)} bytes exceeds the frame maximum of {limit} bytes",
                "FRAME_TOO_LARGE")
        compress = compressible and self.compression_agreed and len(payload) >= self.compression_threshold
        frame = encode_frame(payload, compress=compress)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"no time left to send to {self.address}")
        try:
            self._sock.settimeout(remaining)
            self._sock.sendall(frame)
        except socket.timeout as error:
            self.close()  # part of the frame may be out: the stream cannot continue
            raise DeadlineExceeded(f"sending to {self.address} timed out") from error
        except OSError as error:
            self.close()
            raise Unavailable(f"connection to {self.address} lost while sending: {error}") from error
        self.stats.frames_sent += 1
        self.stats.frames_sent_compressed += int(compress)
        self.stats.bytes_sent += len(frame)

    def _receive(self, deadline: float) -> Any:
        """The next envelope; bytes of a frame not yet complete stay buffered across deadlines."""
        while True:
            try:
                frame = read_frame(self._received, max_payload=self.max_payload)
                if frame is not None:
                    payload = frame_payload(frame, compression_agreed=self.compression_agreed, max_payload=self.max_payload)
            except ProtocolError:
                self.close()
                raise
            if frame is not None:
                self.stats.frames_received += 1
                self.stats.frames_received_compressed += int(frame.compressed)
                self.stats.bytes_received += 5 + len(frame.payload)
                envelope = self.schema.Envelope()
                try:
                    envelope.ParseFromString(payload)
                except Exception as error:  # google.protobuf.message.DecodeError
                    self.close()
                    raise ProtocolError(f"{self.address} sent an undecodable Envelope: {error}") from error
                return envelope
            self._fill(deadline)

    def _fill(self, deadline: float) -> None:
        if self.closed:
            raise Unavailable(f"connection to {self.address} is closed")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"no answer from {self.address} in time")
        try:
            self._sock.settimeout(remaining)
            chunk = self._sock.recv(256 * 1024)
        except socket.timeout as error:
            raise DeadlineExceeded(f"no answer from {self.address} in time") from error
        except OSError as error:
            self.close()
            raise Unavailable(f"connection to {self.address} lost: {error}") from error
        if not chunk:
            self.close()
            raise Unavailable(f"{self.address} closed the connection")
        self._received += chunk
