#!/usr/bin/env python3
"""Writes the seed corpus of `pbkv-fuzz` (Fuzz/corpus) from the golden frames (proto/golden)
and a few hand-built conversations. Run from the repository root: python3 Fuzz/make-seeds.py

An input's first byte picks the path (Sources/PBKVFuzz/FuzzTarget.swift): 0 frame stream,
1 inflation, 2 Envelope, 3 server conversation (then an options byte), 4 ViewRecord,
5 a server's TLS layer (then an options byte: bit 0 after a genuine handshake).
"""
import pathlib
import struct
import zlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "proto" / "golden"
CORPUS = ROOT / "Fuzz" / "corpus"
FRAMES, INFLATE, ENVELOPE, SERVER, VIEW_RECORD, TLS = range(6)


def golden(name):
    text = (GOLDEN / f"{name}.hex").read_text()
    return bytes.fromhex(" ".join(l for l in text.splitlines() if not l.startswith("#")))


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(number, value):
    """A varint (int) or length-delimited (bytes) field."""
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def frame(payload, flags=0):
    return struct.pack(">IB", len(payload), flags) + payload


def hello(max_frame_size=0, zlib_feature=True, stream_feature=False):
    features = (b"\x01" if zlib_feature else b"") + (b"\x02" if stream_feature else b"")
    body = field(1, 1) + (field(2, features) if features else b"") + field(3, max_frame_size) + field(4, b"fuzz")
    return frame(field(1, body))


def stream_frames(frames):
    """The frames again, as pieces of one deflate stream (flag 0x02): raw deflate, 8 KiB window,
    a sync flush per frame without its 00 00 FF FF trailer, after the uncompressed length."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -13, 4)
    out = b""
    for whole in frames:
        payload = whole[5:]
        piece = deflater.compress(payload) + deflater.flush(zlib.Z_SYNC_FLUSH)
        assert piece.endswith(b"\x00\x00\xff\xff")
        out += frame(struct.pack(">I", len(payload)) + piece[:-4], flags=2)
    return out


def request_id(seq):
    return varint(1 << 3 | 1) + struct.pack("<Q", 0x1234) + field(2, seq)  # fixed64 client_id, seq


def request(call_id, method_field, args):
    return frame(field(3, field(1, call_id) + field(method_field, args)))


def put(call_id, key, value, seq):
    return request(call_id, 21, field(1, key) + field(2, value) + field(3, request_id(seq)))


def get(call_id, key, seq):
    return request(call_id, 20, field(1, key) + field(2, request_id(seq)))


def write(name, data):
    (CORPUS / name).write_bytes(bytes(data))


def main():
    CORPUS.mkdir(parents=True, exist_ok=True)
    names = sorted(p.stem for p in GOLDEN.glob("*.hex"))
    requests = [n for n in names if n.startswith("request_")]
    for name in names:
        whole = golden(name)
        write(f"frames-{name}", bytes([FRAMES]) + whole)
        if whole[4] == 1:
            write(f"inflate-{name}", bytes([INFLATE]) + whole[5:])
        else:
            write(f"envelope-{name}", bytes([ENVELOPE]) + whole[5:])
    write("frames-all", bytes([FRAMES]) + b"".join(golden(n) for n in names))
    write("inflate-empty", bytes([INFLATE]) + struct.pack(">I", 0) + zlib.compress(b""))
    write("inflate-bomb", bytes([INFLATE]) + struct.pack(">I", 100) + zlib.compress(b"\0" * 60000, 9))

    every_call = golden("hello") + b"".join(golden(n) for n in requests) + golden("goodbye")
    write("server-every-call", bytes([SERVER, 0]) + every_call)
    write("server-every-call-in-7-byte-writes", bytes([SERVER, 7]) + every_call)
    write("server-every-call-no-zlib-offered", bytes([SERVER, 0x80]) + every_call)
    write("server-request-before-hello", bytes([SERVER, 0]) + golden("request_get") + golden("hello"))
    write("server-second-hello", bytes([SERVER, 0]) + golden("hello") + golden("hello"))
    write("server-no-hello-until-deadline", bytes([SERVER, 0x40]))
    write("server-half-a-hello-until-deadline", bytes([SERVER, 0x40]) + golden("hello")[:9])
    put_get = hello(max_frame_size=4096) + put(1, b"big", b"v" * 5000, 1) + get(2, b"big", 2) + get(3, b"absent", 3)
    write("server-put-get-over-small-frames", bytes([SERVER, 0]) + put_get)
    # Once a timeout under a loaded machine: 5000 one-byte writes (now only the first 1 KiB is cut).
    write("server-put-get-over-small-frames-in-1-byte-writes", bytes([SERVER, 1]) + put_get)
    write("server-max-frame-size-too-small", bytes([SERVER, 0]) + hello(max_frame_size=16))
    write("server-bad-version", bytes([SERVER, 0]) + frame(field(1, field(1, 2))))
    write("server-compressed-request-no-zlib-agreed", bytes([SERVER, 0]) + hello(zlib_feature=False)
          + golden("request_put_compressed"))
    value = b'{"id":1,"name":"Ada","city":"Lisbon","tags":["a","b"]}' * 4
    streamed = stream_frames([put(1, b"k1", value, 1), put(2, b"k2", value, 2), get(3, b"k1", 3), get(4, b"k2", 4)])
    write("frames-stream-puts-gets", bytes([FRAMES]) + streamed)
    write("server-stream-puts-gets", bytes([SERVER, 0]) + hello(stream_feature=True) + streamed)
    write("server-stream-puts-gets-in-5-byte-writes", bytes([SERVER, 5]) + hello(stream_feature=True) + streamed)
    write("server-stream-not-agreed", bytes([SERVER, 0x80]) + hello(stream_feature=True) + streamed)
    write("view-record", bytes([VIEW_RECORD]) + field(1, 1) + field(2, field(1, 7) + field(2, b"127.0.0.1:7001")
          + field(3, b"127.0.0.1:7002") + field(4, 1)) + field(3, b"127.0.0.1:7003"))
    # TLS: the start of a ClientHello, then records of an established session (forged: they
    # must never decrypt), an alert cut into 3-byte writes, and bytes that are not TLS at all.
    client_hello = b"\x01\x00\x00\x2b\x03\x03" + bytes(32) + b"\x00\x00\x02\x13\x01\x01\x00"
    write("tls-client-hello-start", bytes([TLS, 0]) + b"\x16\x03\x01" + struct.pack(">H", len(client_hello)) + client_hello)
    write("tls-forged-application-record", bytes([TLS, 1]) + b"\x17\x03\x03\x00\x20" + bytes(range(32)))
    write("tls-alert-in-3-byte-writes", bytes([TLS, 1 | 3 << 1]) + b"\x15\x03\x03\x00\x02\x02\x28")
    write("tls-not-tls", bytes([TLS, 0]) + b"SSH-2.0-OpenSSH_9.2\r\n")


if __name__ == "__main__":
    main()
