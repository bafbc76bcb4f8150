import NIOCore
import PBKVCore
import PBKVWire
import Testing

/// Fields a newer schema might add: a varint (99), a length-delimited field (100), a fixed32 (101)
/// and a fixed64 (102).
private func appendUnknownFields(to writer: inout ProtoWriter) {
    writer.varintField(99, 123_456_789)
    writer.bytesField(100, Array("from the future ✨".utf8))
    writer.fixed32Field(101, 0xDEAD_BEEF)
    writer.fixed64Field(102, .max)
}

@Suite("Schema evolution")
struct SchemaEvolutionTests {
    @Test("Unknown fields appended to an encoded Envelope are skipped", arguments: roundTripSamples.prefix(30))
    func unknownFieldsAtTopLevel(sample: Sample) throws {
        var extra = ProtoWriter()
        appendUnknownFields(to: &extra)
        let raw = bytes(of: EnvelopeCodec.encode(sample.envelope)) + extra.bytes
        #expect(try EnvelopeCodec.decode(buffer(raw)) == sample.envelope)
        // Also before the known field: order does not matter.
        #expect(try EnvelopeCodec.decode(buffer(extra.bytes + bytes(of: EnvelopeCodec.encode(sample.envelope)))) == sample.envelope)
    }

    @Test("Unknown fields inside nested messages are skipped")
    func unknownFieldsNested() throws {
        // Request { call_id, put { key, value, id { client_id, seq, <new> }, <new> }, <new> }
        var raw = ProtoWriter()
        raw.messageField(3) { r in
            r.varintField(1, 5)
            r.varintField(2, 100)
            r.messageField(21) { p in
                p.bytesField(1, Array("ключ".utf8))
                appendUnknownFields(to: &p)
                p.bytesField(2, Array("value".utf8))
                p.messageField(3) { id in
                    id.fixed64Field(1, 77)
                    appendUnknownFields(to: &id)
                    id.varintField(2, 8)
                }
            }
            appendUnknownFields(to: &r)
        }
        let expected = Envelope.request(Request(
            callID: 5, timeoutMs: 100, call: .put(key: "ключ", value: "value", id: RequestID(clientID: 77, seq: 8))))
        #expect(try EnvelopeCodec.decode(buffer(raw.bytes)) == expected)
    }

    @Test("Unknown fields inside a reply and inside repeated entries are skipped")
    func unknownFieldsInReplyAndRepeated() throws {
        var reply = ProtoWriter()
        reply.messageField(4) { r in
            r.varintField(1, 9)
            r.messageField(10) { v in
                v.varintField(1, 3)
                appendUnknownFields(to: &v)
                v.stringField(2, "p")
                v.stringField(3, "b")
            }
            appendUnknownFields(to: &r)
        }
        #expect(try EnvelopeCodec.decode(buffer(reply.bytes))
            == .response(Response(callID: 9, result: .view(View(viewnum: 3, primary: "p", backup: "b")))))

        var transfer = ProtoWriter()
        transfer.messageField(3) { r in
            r.varintField(1, 10)
            r.messageField(31) { t in
                t.varintField(1, 2)
                for i in 0..<3 {
                    t.messageField(7) { e in
                        e.bytesField(1, Array("k\(i)".utf8))
                        appendUnknownFields(to: &e)
                        e.bytesField(2, Array("v\(i)".utf8))
                    }
                }
                t.messageField(8) { d in
                    d.fixed64Field(1, 4)
                    d.varintField(2, 5)
                    d.messageField(3) { kv in
                        kv.varintField(1, 1)
                        appendUnknownFields(to: &kv)
                    }
                }
                t.varintField(5, 1)
            }
        }
        let expected = Envelope.request(Request(callID: 10, timeoutMs: 0, call: .transfer(TransferChunk(
            viewnum: 2, primary: "", transferID: 0, chunkIndex: 0, last: true, nextIndex: 0,
            entries: [Entry(key: "k0", value: "v0"), Entry(key: "k1", value: "v1"), Entry(key: "k2", value: "v2")],
            duplicates: [DuplicateEntry(clientID: 4, seq: 5, reply: KVReply(code: .noKey))]))))
        #expect(try EnvelopeCodec.decode(buffer(transfer.bytes)) == expected)
    }

    @Test("A feature offered by a newer peer is ignored in the handshake")
    func unknownFeature() throws {
        var raw = ProtoWriter()
        raw.messageField(1) { h in
            h.varintField(1, 1)
            h.bytesField(2, [0x07, 0x01, 0x2A])  // packed: features 7, ZLIB, 42
            h.varintField(3, 4096)
            h.stringField(4, "newer")
        }
        #expect(try EnvelopeCodec.decode(buffer(raw.bytes))
            == .hello(Hello(protocolVersion: 1, features: [.zlib], maxFrameSize: 4096, clientName: "newer")))
    }

    @Test("A request for a method this version does not know decodes as unknownMethod", arguments: [50, 12, 1000])
    func unknownMethod(field: Int) throws {
        var raw = ProtoWriter()
        raw.messageField(3) { r in
            r.varintField(1, 77)
            r.varintField(2, 30)
            r.messageField(UInt64(field)) { args in
                args.bytesField(1, Array("some key".utf8))
                args.varintField(2, 5)
            }
        }
        #expect(try EnvelopeCodec.decode(buffer(raw.bytes))
            == .request(Request(callID: 77, timeoutMs: 30, decoded: .failure(.unknownMethod))))
    }

    @Test("A request with no method at all decodes as unknownMethod")
    func noMethod() throws {
        var raw = ProtoWriter()
        raw.messageField(3) { $0.varintField(1, 78) }
        #expect(try EnvelopeCodec.decode(buffer(raw.bytes))
            == .request(Request(callID: 78, timeoutMs: 0, decoded: .failure(.unknownMethod))))
    }

    @Test("An error code from a newer server is reported as a protocol violation of that call")
    func unknownCode() throws {
        var raw = ProtoWriter()
        raw.messageField(4) { r in
            r.varintField(1, 4)
            r.varintField(2, 99)
            r.stringField(3, "new error")
        }
        guard case .response(let response) = try EnvelopeCodec.decode(buffer(raw.bytes)) else {
            Issue.record("expected a response")
            return
        }
        #expect(response.callID == 4)
        #expect(response.code == .protocolViolation)
        #expect(response.message.contains("99"))
    }
}

@Suite("Packed transfer entries")
struct PackedTransferEntriesTests {
    @Test("Entries survive the packed layout: non-ASCII, NUL, empty and long (two-byte length) values")
    func roundTrip() throws {
        let entries = [
            Entry(key: "ключ", value: "значение"), Entry(key: "nul", value: "a\u{0}b"), Entry(key: "", value: ""),
            Entry(key: "long", value: String(repeating: "x", count: 300)), Entry(key: "emoji 🙂", value: "🙂"),
        ]
        let envelope = Envelope.request(Request(callID: 3, timeoutMs: 0, call: .transfer(TransferChunk(
            viewnum: 4, primary: "p:1", transferID: 9, chunkIndex: 2, last: false, nextIndex: 7, entries: entries,
            duplicates: []))))
        #expect(try EnvelopeCodec.decode(EnvelopeCodec.encode(envelope)) == envelope)
    }

    @Test("Repeated and packed entries in one chunk are both taken, repeated first")
    func mixed() throws {
        var raw = ProtoWriter()
        raw.messageField(3) { r in
            r.varintField(1, 1)
            r.messageField(31) { t in
                t.messageField(7) { e in
                    e.bytesField(1, Array("a".utf8))
                    e.bytesField(2, Array("1".utf8))
                }
                t.bytesField(9, [1, 0x62, 2, 0x32, 0x32])  // "b" -> "22"
            }
        }
        guard case .request(let request) = try EnvelopeCodec.decode(buffer(raw.bytes)),
            case .success(.transfer(let chunk)) = request.call
        else {
            Issue.record("expected a transfer")
            return
        }
        #expect(chunk.entries == [Entry(key: "a", value: "1"), Entry(key: "b", value: "22")])
    }

    @Test("Malformed packed entries are refused per call, never misread", arguments: [
        [UInt8]([5, 0x61]),  // key length past the end
        [1, 0x61],  // value missing
        [1, 0x61, 0x80],  // truncated varint
        [1, 0xFF, 0],  // key not UTF-8
        [1, 0x61, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],  // absurd length
    ])
    func malformed(packed: [UInt8]) throws {
        var raw = ProtoWriter()
        raw.messageField(3) { r in
            r.varintField(1, 12)
            r.messageField(31) { t in t.bytesField(9, packed) }
        }
        guard case .request(let request) = try EnvelopeCodec.decode(buffer(raw.bytes)) else {
            Issue.record("expected a request")
            return
        }
        #expect(request.callID == 12)
        guard case .failure(.badArguments(let why)) = request.call else {
            Issue.record("expected badArguments, got \(request.call)")
            return
        }
        #expect(why.contains("packed_entries"))
    }
}
