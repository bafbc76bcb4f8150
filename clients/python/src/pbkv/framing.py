"""Frames on a pbkv connection (README.md, "Wire protocol").

    u32 big-endian payload length L | flags (1 byte) | payload (L bytes)

Flag 0x01: the payload is a u32 big-endian uncompressed length U, then a zlib (RFC 1950) stream
that inflates to exactly U bytes. Bits 1-7 are reserved: a frame with any of them set is a
protocol violation. Uncompressed (or inflated) payloads are one protobuf-encoded `Envelope`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .errors import ProtocolError

HEADER = struct.Struct(">IB")
HEADER_SIZE = HEADER.size  # 5
FLAG_ZLIB = 0x01
KNOWN_FLAGS = FLAG_ZLIB
#: The default maximum payload, before and after decompression: 16 MiB.
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
#: What pbkv compresses above on the latency path (client calls and replies).
LATENCY_COMPRESSION_THRESHOLD = 64 * 1024

# pbkv.Code numbers the framing layer reports (kept here so this module needs no generated code).
_PROTOCOL_VIOLATION = 6
_FRAME_TOO_LARGE = 7


@dataclass(frozen=True)
class Frame:
    flags: int
    payload: bytes

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_ZLIB)


def encode_frame(payload: bytes, *, compress: bool = False, level: int = 1) -> bytes:
    """The frame carrying `payload`; zlib-compressed (flag 0x01) when `compress`."""
    if compress:
        body = struct.pack(">I", len(payload)) + zlib.compress(payload, level)
        return HEADER.pack(len(body), FLAG_ZLIB) + body
    return HEADER.pack(len(payload), 0) + payload


def read_frame(buffer: bytearray, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Frame | None:
    """Removes one whole frame from the front of `buffer` and returns it, or None (nothing
    removed) when the frame is not all there yet. The length and the flags are checked as soon
    as the header is there, before the payload is waited for."""
    if len(buffer) < HEADER_SIZE:
        return None
    length, flags = HEADER.unpack_from(buffer)
    if length > max_payload:
        raise ProtocolError(
            f"frame of {length} bytes exceeds the maximum of {max_payload} bytes", code=_FRAME_TOO_LARGE)
    if flags & ~KNOWN_FLAGS:
        raise ProtocolError(f"frame has unknown flag bits 0x{flags:02x}", code=_PROTOCOL_VIOLATION)
    end = HEADER_SIZE + length
    if len(buffer) < end:
        return None
    payload = bytes(buffer[HEADER_SIZE:end])
    del buffer[:end]
    return Frame(flags, payload)


def inflate(payload: bytes, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    """The plain payload of a compressed frame: exactly the declared number of bytes, which must
    not exceed `max_payload` (this bounds a zlib bomb)."""
    if len(payload) < 4:
        raise ProtocolError("compressed frame without its uncompressed length", code=_PROTOCOL_VIOLATION)
    (declared,) = struct.unpack_from(">I", payload)
    if declared > max_payload:
        raise ProtocolError(
            f"compressed frame declares {declared} bytes, above the maximum of {max_payload}", code=_FRAME_TOO_LARGE)
    inflater = zlib.decompressobj()
    try:
        # At most one byte more than declared: enough to notice a stream that inflates to more.
        plain = inflater.decompress(memoryview(payload)[4:], declared + 1)
    except zlib.error as error:
        raise ProtocolError(f"corrupt zlib stream: {error}", code=_PROTOCOL_VIOLATION) from error
    if len(plain) != declared or not inflater.eof or inflater.unused_data:
        raise ProtocolError(
            f"compressed frame inflates to {'more' if len(plain) > declared else 'other'} than the declared {declared} bytes",
            code=_PROTOCOL_VIOLATION)
    return plain


def frame_payload(frame: Frame, *, compression_agreed: bool, max_payload: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    """The protobuf bytes a frame carries, inflated if it is compressed."""
    if not frame.compressed:
        return frame.payload
    if not compression_agreed:
        raise ProtocolError("compressed frame received but zlib was not agreed in the handshake", code=_PROTOCOL_VIOLATION)
    return inflate(frame.payload, max_payload=max_payload)
