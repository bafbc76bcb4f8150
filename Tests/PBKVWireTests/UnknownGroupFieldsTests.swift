import CPBKVProto
import NIOCore
import PBKVCore
import PBKVWire
import Testing

extension ProtoWriter {
    /// A field of the group wire types: start tag (3), the fields, end tag (4) — what a proto2
    /// `group` or a protobuf editions field with `message_encoding = DELIMITED` puts on the wire.
    mutating func groupField(_ field: UInt64, _ build: (inout ProtoWriter) -> Void) {
        key(field, wireType: 3)
        var inner = ProtoWriter()
        build(&inner)
        raw(inner.bytes)
        key(field, wireType: 4)
    }
}

/// A delimited message a newer schema might add: a few scalars, a nested group, a string that
/// contains what look like group tags.
private func newerDelimited(_ w: inout ProtoWriter) {
    w.varintField(1, 42)
    w.stringField(2, "trace \u{0B}\u{0C} ✨")  // 0x0B, 0x0C: the tags of field 1 as start/end group
    w.groupField(3) { inner in
        inner.fixed64Field(1, .max)
        inner.fixed32Field(2, 7)
    }
}

private let putEnvelope = Envelope.request(Request(
    callID: 5, timeoutMs: 100, call: .put(key: "ключ", value: "a\u{0}b", id: RequestID(clientID: 77, seq: 8))))

/// The Put above written by hand, with unknown group fields (field numbers 50–53) at every level.
private func putWithGroups() -> [UInt8] {
    var raw = ProtoWriter()
    raw.groupField(50, newerDelimited)
    raw.messageField(3) { r in
        r.varintField(1, 5)
        r.groupField(51, newerDelimited)
        r.varintField(2, 100)
        r.messageField(21) { p in
            p.bytesField(1, Array("ключ".utf8))
            p.groupField(52, newerDelimited)
            p.bytesField(2, Array("a\u{0}b".utf8))
            p.messageField(3) { id in
                id.fixed64Field(1, 77)
                id.groupField(53, newerDelimited)
                id.varintField(2, 8)
            }
        }
    }
    raw.groupField(54) { $0.groupField(55) { $0.groupField(56, newerDelimited) } }  // groups in groups
    return raw.bytes
}

@Suite("Unknown fields of the group wire types")
struct UnknownGroupFieldsTests {
    @Test("protobuf-c by itself refuses a whole envelope with an unknown group field (why the function exists)")
    func protobufCRefusesGroups() {
        var raw = ProtoWriter()
        raw.messageField(3) { $0.varintField(1, 1); $0.messageField(11) { _ in } }
        raw.groupField(50, newerDelimited)
        let bytes = raw.bytes
        let message = bytes.withUnsafeBufferPointer { pbkv__envelope__unpack(nil, $0.count, $0.baseAddress) }
        #expect(message == nil)
        if let message { pbkv__envelope__free_unpacked(message, nil) }
    }

    @Test("Unknown group fields at every level are removed; the rest decodes as without them")
    func removedEverywhere() throws {
        let stripped = try #require(UnknownGroupFields.removed(fromEnvelope: putWithGroups()))
        #expect(stripped == Array(EnvelopeCodec.encode(putEnvelope).readableBytesView))
        #expect(try EnvelopeCodec.decode(ByteBuffer(bytes: putWithGroups())) == putEnvelope)
    }

    @Test("Inside repeated messages and replies too")
    func repeatedAndReplies() throws {
        var forward = ProtoWriter()
        forward.messageField(3) { r in
            r.varintField(1, 6)
            r.messageField(30) { f in
                f.varintField(1, 4)
                for seq in 1...3 {
                    f.messageField(4) { op in
                        op.varintField(1, 1)
                        op.groupField(60, newerDelimited)
                        op.bytesField(2, Array("k\(seq)".utf8))
                        op.messageField(4) { id in id.fixed64Field(1, 9); id.varintField(2, UInt64(seq)) }
                    }
                }
            }
        }
        let ops = (1...3).map { Operation(kind: .put, key: "k\($0)", id: RequestID(clientID: 9, seq: UInt64($0))) }
        #expect(try EnvelopeCodec.decode(ByteBuffer(bytes: forward.bytes))
            == .request(Request(callID: 6, timeoutMs: 0, call: .forward(ForwardArgs(viewnum: 4, primary: "", firstIndex: 0, ops: ops)))))

        var reply = ProtoWriter()
        reply.messageField(4) { r in
            r.varintField(1, 2)
            r.stringField(4, "127.0.0.1:7010")
            r.groupField(70, newerDelimited)
            r.messageField(10) { v in v.varintField(1, 3); v.groupField(5, newerDelimited); v.stringField(2, "p") }
        }
        #expect(try EnvelopeCodec.decode(ByteBuffer(bytes: reply.bytes))
            == .response(Response(callID: 2, result: .view(View(viewnum: 3, primary: "p", backup: "")))))
    }

    @Test("Bytes without a group come back as they are, not copied")
    func untouched() {
        for sample in roundTripSamples.prefix(40) {
            let buffer = EnvelopeCodec.encode(sample.envelope)
            #expect(UnknownGroupFields.removed(fromEnvelope: Array(buffer.readableBytesView)) == nil)
            #expect(UnknownGroupFields.removed(from: buffer) == buffer)
        }
    }

    @Test("Malformed groups are left for protobuf-c to refuse", arguments: [
        [UInt8]([0x93, 0x03, 0x08, 0x01]),  // field 50 starts, never ends
        [0x94, 0x03],  // field 50 ends, never started
        [0x93, 0x03, 0x9C, 0x03],  // starts 50, ends 51
        [0x93, 0x03, 0x12, 0x05, 0x61, 0x94, 0x03],  // a length past the end inside the group
        [0x1B, 0x08, 0x01, 0x1C],  // field 3 (Envelope.request, a known message) as a group
    ])
    func malformed(bytes: [UInt8]) {
        #expect(UnknownGroupFields.removed(fromEnvelope: bytes) == nil)
        #expect(throws: MessageCodecError.self) { try EnvelopeCodec.decode(ByteBuffer(bytes: bytes)) }
    }

    @Test("A server answers a call carrying unknown group fields and keeps the connection")
    func overTheWire() async throws {
        try await LiveServer.with { live in
            let raw = try await live.raw()
            defer { Task { await raw.close() } }
            _ = try await raw.handshake()
            var request = ProtoWriter()
            request.groupField(50, newerDelimited)
            request.messageField(3) { r in
                r.varintField(1, 21)
                r.messageField(11) { $0.groupField(9, newerDelimited) }
                r.groupField(51, newerDelimited)
            }
            try await raw.send(frameBytes(payload: request.bytes))
            let envelopes = try await raw.envelopes(count: 2)
            #expect(envelopes.dropFirst().first == .response(Response(callID: 21, result: .view(EchoViewService.fixedView))))
            try await raw.send(frameBytes(.request(Request(callID: 22, timeoutMs: 0, call: .getView))))
            #expect(try await raw.envelopes(count: 3).count == 3)
            #expect(!raw.isClosed)
        }
    }
}
