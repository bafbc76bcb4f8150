"""Frames and zlib, without a server."""

from __future__ import annotations

import struct
import zlib

import pytest

from pbkv import ProtocolError
from pbkv.framing import FLAG_ZLIB, encode_frame, frame_payload, inflate, read_frame


def test_plain_and_compressed_frames_round_trip() -> None:
    payload = b"pbkv " * 1000
    for compress in (False, True):
        buffer = bytearray(encode_frame(payload, compress=compress) + b"\x00\x00")
        frame = read_frame(buffer)
        assert frame is not None and frame.compressed == compress
        assert frame_payload(frame, compression_agreed=True) == payload
        assert buffer == b"\x00\x00", "only the frame was taken"
    assert encode_frame(b"ab")[:5] == b"\x00\x00\x00\x02\x00"


def test_a_partial_frame_waits_for_the_rest() -> None:
    frame = encode_frame(b"0123456789")
    buffer = bytearray()
    for byte in frame[:-1]:
        buffer.append(byte)
        assert read_frame(buffer) is None
    buffer.append(frame[-1])
    assert read_frame(buffer).payload == b"0123456789"


def test_header_errors_are_found_before_the_payload_arrives() -> None:
    with pytest.raises(ProtocolError, match="exceeds the maximum") as raised:
        read_frame(bytearray(struct.pack(">IB", 1025, 0)), max_payload=1024)
    assert raised.value.code == 7  # FRAME_TOO_LARGE
    with pytest.raises(ProtocolError, match="unknown flag bits 0x02"):
        read_frame(bytearray(struct.pack(">IB", 3, 0x02)))


def test_inflate_is_bounded_by_the_declared_size() -> None:
    data = b"x" * 10_000
    stream = zlib.compress(data)
    assert inflate(struct.pack(">I", 10_000) + stream) == data
    with pytest.raises(ProtocolError, match="more"):
        inflate(struct.pack(">I", 9_999) + stream)  # a bomb declares less than it inflates to
    with pytest.raises(ProtocolError, match="other"):
        inflate(struct.pack(">I", 10_001) + stream)
    with pytest.raises(ProtocolError, match="maximum"):
        inflate(struct.pack(">I", 2_000) + stream, max_payload=1_000)
    with pytest.raises(ProtocolError, match="corrupt"):
        inflate(struct.pack(">I", 10_000) + b"\x78\x9c garbage")
    with pytest.raises(ProtocolError):
        inflate(struct.pack(">I", 10_000) + stream[:-3])  # truncated
    with pytest.raises(ProtocolError, match="uncompressed length"):
        inflate(b"\x00\x01")
    assert inflate(struct.pack(">I", 0) + zlib.compress(b"")) == b""


def test_a_compressed_frame_needs_the_handshake_to_agree() -> None:
    frame = read_frame(bytearray(encode_frame(b"abc", compress=True)))
    assert frame.flags == FLAG_ZLIB
    with pytest.raises(ProtocolError, match="not agreed"):
        frame_payload(frame, compression_agreed=False)
