"""The golden frames of protocol version 1 (proto/golden, written once by the Swift side's
GoldenFrameTests) decode in Python to the same values, and Python encodes the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import GOLDEN
from pbkv import pbkv_pb2 as pb
from pbkv.framing import FLAG_ZLIB, frame_payload, read_frame

CLIENT_ID = 0x0123456789ABCDEF
PRIMARY, BACKUP = "127.0.0.1:7001", "127.0.0.1:7002"
COMPRESSIBLE = "pbkv golden frame, compressed with zlib. " * 100


def rid(seq: int) -> pb.RequestId:
    return pb.RequestId(client_id=CLIENT_ID, seq=seq)


def request(call_id: int, **call: object) -> pb.Envelope:
    return pb.Envelope(request=pb.Request(call_id=call_id, timeout_ms=500, **call))


def response(call_id: int, **fields: object) -> pb.Envelope:
    return pb.Envelope(response=pb.Response(call_id=call_id, **fields))


def packed_entries(*pairs: tuple[str, str]) -> bytes:
    """TransferChunk.packed_entries: (varint length, key, varint length, value) per entry."""
    out = bytearray()
    for key, value in pairs:
        for text in (key.encode(), value.encode()):
            assert len(text) < 0x80
            out += bytes([len(text)]) + text
    return bytes(out)


#: name -> (expected envelope, compressed)
EXPECTED: dict[str, tuple[pb.Envelope, bool]] = {
    "hello": (pb.Envelope(hello=pb.Hello(
        protocol_version=1, features=[pb.FEATURE_ZLIB], max_frame_size=16 << 20, client_name="golden-client")), False),
    "hello_reply": (pb.Envelope(hello_reply=pb.HelloReply(
        protocol_version=1, features=[pb.FEATURE_ZLIB], max_frame_size=16 << 20, server_name="pbkv@127.0.0.1:7001")), False),
    "goodbye": (pb.Envelope(goodbye=pb.Goodbye(
        code=pb.PROTOCOL_VIOLATION, message="the first frame on a connection must be Hello")), False),
    "request_ping": (request(1, ping=pb.PingArgs(server=PRIMARY, viewnum=3)), False),
    "request_get_view": (request(2, get_view=pb.GetViewArgs()), False),
    "request_get": (request(3, get=pb.GetArgs(key=b"greeting", id=rid(1))), False),
    "request_put": (request(4, put=pb.PutArgs(key="ключ".encode(), value="a\x00b 🙂".encode(), id=rid(2))), False),
    "request_put_hash": (request(5, put_hash=pb.PutHashArgs(key=b"counter", value=b"x", id=rid(3))), False),
    "request_forward": (request(6, forward=pb.ForwardArgs(viewnum=4, primary=PRIMARY, first_index=10, ops=[
        pb.Operation(kind=pb.OP_PUT, key=b"a", value=b"1", id=rid(2)),
        pb.Operation(kind=pb.OP_GET, key=b"a", id=rid(3)),
        pb.Operation(kind=pb.OP_PUT_HASH, key=b"c", value=b"x", id=rid(4)),
    ])), False),
    "request_transfer": (request(7, transfer=pb.TransferChunk(
        viewnum=4, primary=PRIMARY, transfer_id=0xFEEDFACECAFEBEEF, chunk_index=0, last=True, next_index=10,
        duplicates=[pb.DuplicateEntry(client_id=CLIENT_ID, seq=4, reply=pb.KVReply(code=pb.OK, value=b"prev"))],
        packed_entries=packed_entries(("a", "1"), ("鍵", "値")))), False),
    "response_view": (response(2, view=pb.View(viewnum=4, primary=PRIMARY, backup=BACKUP, acknowledged=True)), False),
    "response_get": (response(3, kv=pb.KVReply(code=pb.OK, value=b"hello")), False),
    "response_get_no_key": (response(3, kv=pb.KVReply(code=pb.NO_KEY)), False),
    "response_put": (response(4, kv=pb.KVReply()), False),
    "response_wrong_server": (response(5, kv=pb.KVReply(code=pb.WRONG_SERVER)), False),
    "response_forward": (response(6, forward=pb.ForwardReply(code=pb.OUT_OF_ORDER, next_index=13)), False),
    "response_transfer": (response(7, transfer=pb.TransferReply()), False),
    "response_not_leader": (response(2, code=pb.NOT_LEADER, message="not the leader", leader="127.0.0.1:7010"), False),
    "response_unknown_method": (response(8, code=pb.UNKNOWN_METHOD, message="unknown method"), False),
    "response_bad_request": (response(9, code=pb.BAD_REQUEST, message="field GetArgs.key is not valid UTF-8"), False),
    "request_put_compressed": (request(10, put=pb.PutArgs(key=b"big", value=COMPRESSIBLE.encode(), id=rid(5))), True),
    "response_get_compressed": (response(11, kv=pb.KVReply(code=pb.OK, value=COMPRESSIBLE.encode())), True),
}


def golden_bytes(path: Path) -> bytes:
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return bytes.fromhex(" ".join(lines))


def test_every_golden_frame_is_checked() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.hex")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_frame_decodes_and_encodes_the_same(name: str) -> None:
    expected, compressed = EXPECTED[name]
    data = bytearray(golden_bytes(GOLDEN / f"{name}.hex"))
    frame = read_frame(data)
    assert frame is not None and not data, "one whole frame, nothing after it"
    assert frame.flags == (FLAG_ZLIB if compressed else 0)
    payload = frame_payload(frame, compression_agreed=True)
    decoded = pb.Envelope.FromString(payload)
    assert decoded == expected
    # Python writes fields in number order as protobuf-c does: the same bytes.
    assert expected.SerializeToString() == payload


def test_the_golden_transfer_entries_unpack() -> None:
    frame = read_frame(bytearray(golden_bytes(GOLDEN / "request_transfer.hex")))
    chunk = pb.Envelope.FromString(frame.payload).request.transfer
    data, at, entries = chunk.packed_entries, 0, []
    while at < len(data):
        fields = []
        for _ in range(2):
            length = data[at]
            fields.append(data[at + 1: at + 1 + length].decode())
            at += 1 + length
        entries.append(tuple(fields))
    assert entries == [("a", "1"), ("鍵", "値")]
