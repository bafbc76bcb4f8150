import NIOCore
import PBKVCore
import PBKVWire
import Testing

/// A named envelope, so a 1 MiB value does not end up in the test report.
struct Sample: Sendable, CustomTestStringConvertible {
    var name: String
    var envelope: Envelope
    var testDescription: String { name }
}

private let id1 = RequestID(clientID: 0x0123_4567_89AB_CDEF, seq: 1)
private let idMax = RequestID(clientID: .max, seq: .max)
private let oneMiB = String(repeating: "0123456789abcdef", count: 65_536)  // 1 MiB
private let nonASCII = ["ключ", "鍵", "🔑🗝️", "ünïcødé", "👩‍👩‍👧‍👦"]

private func request(_ call: Call, id: UInt64 = 7, timeoutMs: UInt32 = 250) -> Envelope {
    .request(Request(callID: id, timeoutMs: timeoutMs, call: call))
}

private func response(_ result: CallResult, id: UInt64 = 7) -> Envelope {
    .response(Response(callID: id, result: result))
}

let roundTripSamples: [Sample] = {
    var samples: [Sample] = [
        // Handshake and goodbye.
        Sample(name: "Hello", envelope: .hello(Hello(protocolVersion: 1, features: [.zlib], maxFrameSize: 16 << 20, clientName: "client-1"))),
        Sample(name: "Hello, empty", envelope: .hello(Hello(protocolVersion: 0, features: [], maxFrameSize: 0, clientName: ""))),
        Sample(name: "Hello, repeated feature", envelope: .hello(Hello(protocolVersion: .max, features: [.zlib, .zlib], maxFrameSize: .max, clientName: "клиент"))),
        Sample(name: "HelloReply", envelope: .helloReply(HelloReply(protocolVersion: 1, features: [.zlib], maxFrameSize: 1024, serverName: "pbkv@127.0.0.1:7000"))),
        Sample(name: "HelloReply, empty", envelope: .helloReply(HelloReply(protocolVersion: 1, features: [], maxFrameSize: 0))),
        Sample(name: "Goodbye", envelope: .goodbye(Goodbye(code: .protocolViolation, message: "the first frame on a connection must be Hello"))),
        Sample(name: "Goodbye, empty message", envelope: .goodbye(Goodbye(code: .frameTooLarge, message: ""))),
        Sample(name: "Goodbye, code OK", envelope: .goodbye(Goodbye(code: .ok, message: "bye 👋"))),

        // Every call.
        Sample(name: "Ping", envelope: request(.ping(PingArgs(server: "127.0.0.1:7001", viewnum: 3)))),
        Sample(name: "Ping, restart (viewnum 0, empty server)", envelope: request(.ping(PingArgs(server: "", viewnum: 0)), id: 0, timeoutMs: 0)),
        Sample(name: "Ping, max values", envelope: request(.ping(PingArgs(server: "[::1]:7001", viewnum: .max)), id: .max, timeoutMs: .max)),
        Sample(name: "GetView", envelope: request(.getView)),
        Sample(name: "ViewServiceStatus", envelope: request(.viewServiceStatus)),
        Sample(name: "ServerStatus", envelope: request(.serverStatus)),
        Sample(name: "ViewServiceRole", envelope: request(.viewServiceRole)),
        Sample(name: "ViewServiceRole result, follower", envelope: response(.viewServiceRole(ViewServiceRole(
            role: .follower, leader: "127.0.0.1:7000")))),
        Sample(name: "ViewServiceRole result, failed", envelope: response(.viewServiceRole(ViewServiceRole(
            role: .failed, detail: "the stored view in /var/lib/pbkv/view.record cannot be read")))),
        Sample(name: "ViewServiceStatus result", envelope: response(.viewServiceStatus(ViewServiceStatus(
            view: View(viewnum: 3, primary: "127.0.0.1:7001", backup: "127.0.0.1:7002", acknowledged: true),
            servers: [ServerSeen(server: "127.0.0.1:7001", lastPingMsAgo: 12), ServerSeen(server: "127.0.0.1:7003", lastPingMsAgo: .max)])))),
        Sample(name: "ViewServiceStatus result, no servers", envelope: response(.viewServiceStatus(ViewServiceStatus(
            view: .initial, servers: [])))),
        Sample(name: "ServerStatus result, transferring", envelope: response(.serverStatus(ServerStatus(
            server: "127.0.0.1:7001", role: "primary", view: View(viewnum: 4, primary: "127.0.0.1:7001", backup: "127.0.0.1:7003"),
            keys: 1_000_000, bytes: 110_000_000, duplicateRows: 65_536, operations: .max, connections: 51,
            transfer: TransferProgress(peer: "127.0.0.1:7003", entriesDone: 16_384, entriesTotal: 1_000_000, chunks: 1),
            uptimeMs: 123_456)))),
        Sample(name: "ServerStatus result, idle", envelope: response(.serverStatus(ServerStatus(
            server: "[::1]:7002", role: "idle", view: .initial)))),
        Sample(name: "Get", envelope: request(.get(key: "k", id: id1))),
        Sample(name: "Get, empty key", envelope: request(.get(key: "", id: RequestID(clientID: 0, seq: 0)))),
        Sample(name: "Put", envelope: request(.put(key: "a", value: "b", id: id1))),
        Sample(name: "Put, empty key and value", envelope: request(.put(key: "", value: "", id: idMax))),
        Sample(name: "Put, 1 MiB value", envelope: request(.put(key: "big", value: oneMiB, id: id1))),
        Sample(name: "PutHash", envelope: request(.putHash(key: "h", value: "12345", id: id1))),
        Sample(name: "PutHash, empty value", envelope: request(.putHash(key: "h", value: "", id: idMax))),
        Sample(name: "Forward, no ops", envelope: request(.forward(ForwardArgs(viewnum: 2, primary: "p:1", firstIndex: 0, ops: [])))),
        Sample(name: "Forward, several ops", envelope: request(.forward(ForwardArgs(
            viewnum: 9, primary: "127.0.0.1:7001", firstIndex: 1234,
            ops: [
                Operation(kind: .put, key: "x", value: "1", id: RequestID(clientID: 1, seq: 1)),
                Operation(kind: .get, key: "x", id: RequestID(clientID: 2, seq: 1)),
                Operation(kind: .putHash, key: "ключ", value: "значение", id: RequestID(clientID: 1, seq: 2)),
                Operation(kind: .put, key: "", value: "", id: idMax),
                Operation(kind: .put, key: "x", value: "1", id: RequestID(clientID: 1, seq: 1)),  // a duplicate op
            ])))),
        Sample(name: "Transfer, entries and duplicates", envelope: request(.transfer(TransferChunk(
            viewnum: 4, primary: "127.0.0.1:7001", transferID: 0xDEAD_BEEF_0000_0001, chunkIndex: 3, last: true, nextIndex: 77,
            entries: [Entry(key: "a", value: "1"), Entry(key: "鍵", value: "値"), Entry(key: "empty", value: "")],
            duplicates: [
                DuplicateEntry(clientID: 1, seq: 5, reply: KVReply(code: .ok, value: "prev")),
                DuplicateEntry(clientID: .max, seq: 0, reply: KVReply(code: .noKey)),
                DuplicateEntry(clientID: 3, seq: 9, reply: KVReply(code: .ok)),
                DuplicateEntry(clientID: 4, seq: 1, reply: KVReply(code: .wrongServer)),
            ])))),
        Sample(name: "Transfer, bounded duplicate table: rows' last use, a Get row, the clock", envelope: request(.transfer(TransferChunk(
            viewnum: 4, primary: "127.0.0.1:7001", transferID: 2, chunkIndex: 0, last: true, nextIndex: 5,
            entries: [Entry(key: "a", value: "1")],
            duplicates: [
                DuplicateEntry(clientID: 1, seq: 5, reply: KVReply(code: .ok, value: "prev"), lastUsed: 41),
                DuplicateEntry(clientID: 2, seq: 1, reply: KVReply(code: .wrongServer), lastUsed: .max, reread: true),
            ],
            clock: 0xFFFF_FFFF_FFFF)))),
        Sample(name: "Response kv SESSION_EXPIRED", envelope: response(.kv(KVReply(code: .sessionExpired, value: "start a new session")))),
        Sample(name: "Transfer, first empty chunk", envelope: request(.transfer(TransferChunk(
            viewnum: 1, primary: "", transferID: 0, chunkIndex: 0, last: false, nextIndex: 0, entries: [], duplicates: [])))),

        // Every result.
        Sample(name: "Response view", envelope: response(.view(View(viewnum: 5, primary: "127.0.0.1:7001", backup: "127.0.0.1:7002")))),
        Sample(name: "Response acknowledged view", envelope: response(.view(View(viewnum: .max, primary: "p", backup: "", acknowledged: true)))),
        Sample(name: "Response initial view", envelope: response(.view(.initial))),
        Sample(name: "Response kv", envelope: response(.kv(KVReply(code: .ok, value: "value")))),
        Sample(name: "Response kv, empty value", envelope: response(.kv(KVReply(code: .ok, value: "")))),
        Sample(name: "Response kv NO_KEY", envelope: response(.kv(KVReply(code: .noKey)))),
        Sample(name: "Response kv WRONG_SERVER", envelope: response(.kv(KVReply(code: .wrongServer)))),
        Sample(name: "Response kv, 1 MiB value", envelope: response(.kv(KVReply(code: .ok, value: oneMiB)), id: .max)),
        Sample(name: "Response forward", envelope: response(.forward(ForwardReply(code: .ok, nextIndex: 99)))),
        Sample(name: "Response forward OUT_OF_ORDER", envelope: response(.forward(ForwardReply(code: .outOfOrder, nextIndex: .max)))),
        Sample(name: "Response forward NOT_READY", envelope: response(.forward(ForwardReply(code: .notReady)))),
        Sample(name: "Response transfer", envelope: response(.transfer(TransferReply(code: .ok)))),
        Sample(name: "Response transfer WRONG_SERVER", envelope: response(.transfer(TransferReply(code: .wrongServer)))),
    ]
    // Error responses, one for each error code.
    let errorCodes: [Code] = [.noKey, .wrongServer, .notReady, .unknownMethod, .badRequest, .protocolViolation,
                              .frameTooLarge, .unsupportedVersion, .internal, .outOfOrder, .notLeader, .unavailable]
    for (i, code) in errorCodes.enumerated() {
        samples.append(Sample(
            name: "Error response \(code)",
            envelope: .response(Response(callID: UInt64(i), code: code, message: "failed: \(code) — детали"))))
    }
    samples.append(Sample(name: "Error response, empty message", envelope: .response(Response(callID: 1, code: .internal, message: ""))))
    // Non-ASCII keys and values in every kind of key/value field.
    for key in nonASCII {
        samples.append(Sample(name: "Put, key \(key)", envelope: request(.put(key: key, value: key + key, id: id1))))
        samples.append(Sample(name: "Get, key \(key)", envelope: request(.get(key: key, id: id1))))
        samples.append(Sample(name: "PutHash, key \(key)", envelope: request(.putHash(key: key, value: "→" + key, id: id1))))
    }
    // Many repeated entries.
    var manyOps: [Operation] = []
    for i in 0..<5_000 {
        let kind: OpKind = [.get, .put, .putHash][i % 3]
        let value = kind == .get ? "" : "v\(i)"
        manyOps.append(Operation(kind: kind, key: "key-\(i % 97)", value: value, id: RequestID(clientID: UInt64(i % 13), seq: UInt64(i))))
    }
    let manyOpsArgs = ForwardArgs(viewnum: 3, primary: "p", firstIndex: 10, ops: manyOps)
    samples.append(Sample(name: "Forward, 5,000 ops", envelope: request(.forward(manyOpsArgs))))
    var entries: [Entry] = []
    for i in 0..<20_000 {
        entries.append(Entry(key: "k\(i)-ключ", value: String(repeating: "v", count: i % 50)))
    }
    var duplicates: [DuplicateEntry] = []
    for i in 0..<2_000 {
        let reply = KVReply(code: i % 2 == 0 ? .ok : .noKey, value: "r\(i)")
        duplicates.append(DuplicateEntry(clientID: UInt64(i), seq: UInt64(i * 7), reply: reply))
    }
    let bigChunk = TransferChunk(
        viewnum: 3, primary: "p", transferID: 1, chunkIndex: 0, last: true, nextIndex: 0, entries: entries, duplicates: duplicates)
    samples.append(Sample(name: "Transfer, 20,000 entries and 2,000 duplicates", envelope: request(.transfer(bigChunk))))
    return samples
}()

@Suite("Envelope codec (protoc-c)")
struct EnvelopeCodecTests {
    @Test("Every message kind survives encode then decode unchanged", arguments: roundTripSamples)
    func roundTrip(sample: Sample) throws {
        let encoded = EnvelopeCodec.encode(sample.envelope)
        #expect(encoded.readableBytes > 0)
        let decoded = try EnvelopeCodec.decode(encoded)
        #expect(decoded == sample.envelope)
        // Encoding into an existing buffer appends after what is there and reports its size.
        var buffer = ByteBuffer(bytes: [0xAA, 0xBB])
        let written = EnvelopeCodec.encode(sample.envelope, into: &buffer)
        #expect(written == encoded.readableBytes)
        #expect(buffer.readBytes(length: 2) == [0xAA, 0xBB])
        #expect(buffer == encoded)
    }

    @Test("Encoding uses the field numbers and wire types of pbkv.proto")
    func encodingMatchesSchema() throws {
        // Envelope.request(3) { call_id(1)=300, timeout_ms(2)=5, put(21) { key(1), value(2), id(3) { client_id(1) fixed64, seq(2) } } }
        var expected = ProtoWriter()
        expected.messageField(3) { r in
            r.varintField(1, 300)
            r.varintField(2, 5)
            r.messageField(21) { p in
                p.bytesField(1, Array("ключ".utf8))
                p.bytesField(2, [0x61, 0x00, 0x62])
                p.messageField(3) { id in
                    id.fixed64Field(1, 0x0102_0304_0506_0708)
                    id.varintField(2, 9)
                }
            }
        }
        let envelope = Envelope.request(Request(
            callID: 300, timeoutMs: 5, call: .put(key: "ключ", value: "a\u{0}b", id: RequestID(clientID: 0x0102_0304_0506_0708, seq: 9))))
        #expect(bytes(of: EnvelopeCodec.encode(envelope)) == expected.bytes)
        #expect(try EnvelopeCodec.decode(buffer(expected.bytes)) == envelope)

        // Envelope.goodbye(5) { code(1)=FRAME_TOO_LARGE(7), message(2) }
        var goodbye = ProtoWriter()
        goodbye.messageField(5) { g in
            g.varintField(1, 7)
            g.stringField(2, "too big")
        }
        #expect(bytes(of: EnvelopeCodec.encode(.goodbye(Goodbye(code: .frameTooLarge, message: "too big")))) == goodbye.bytes)
    }

    @Test("NUL bytes in keys and values round-trip unchanged")
    func nulBytes() throws {
        let key = "a\u{0}b"
        let value = "\u{0}x\u{0}\u{0}y\u{0}"
        let envelopes: [Envelope] = [
            .request(Request(callID: 1, call: .put(key: key, value: value, id: id1))),
            .request(Request(callID: 2, call: .get(key: key, id: id1))),
            .request(Request(callID: 3, call: .putHash(key: "\u{0}", value: "\u{0}", id: id1))),
            .request(Request(callID: 4, call: .forward(ForwardArgs(
                viewnum: 1, primary: "p", firstIndex: 0, ops: [Operation(kind: .put, key: key, value: value, id: id1)])))),
            .request(Request(callID: 5, call: .transfer(TransferChunk(
                viewnum: 1, primary: "p", transferID: 1, chunkIndex: 0, last: true, nextIndex: 0,
                entries: [Entry(key: key, value: value)],
                duplicates: [DuplicateEntry(clientID: 1, seq: 1, reply: KVReply(code: .ok, value: value))])))),
            .response(Response(callID: 6, result: .kv(KVReply(code: .ok, value: value)))),
        ]
        for envelope in envelopes {
            let decoded = try EnvelopeCodec.decode(EnvelopeCodec.encode(envelope))
            #expect(decoded == envelope)
        }
        // And the bytes really are on the wire: key "a\0b" is three bytes long.
        let encoded = bytes(of: EnvelopeCodec.encode(.request(Request(callID: 1, call: .get(key: key, id: id1)))))
        #expect(encoded.count > 0)
        #expect(contains(encoded, [0x0A, 0x03, 0x61, 0x00, 0x62]))
    }

    @Test("A key that is not UTF-8 (from a foreign client) is refused, never altered", arguments: [
        [UInt8]([0xFF, 0xFE]), [0x61, 0x80], [0xC3], [0xED, 0xA0, 0x80],  // lone byte, truncated sequence, surrogate
    ])
    func invalidUTF8Key(key: [UInt8]) throws {
        var raw = ProtoWriter()
        raw.messageField(3) { r in
            r.varintField(1, 11)
            r.messageField(21) { p in
                p.bytesField(1, key)
                p.bytesField(2, Array("v".utf8))
            }
        }
        let decoded = try EnvelopeCodec.decode(buffer(raw.bytes))
        guard case .request(let request) = decoded else {
            Issue.record("expected a request, got \(decoded)")
            return
        }
        #expect(request.callID == 11)  // still answerable per call
        guard case .failure(.badArguments(let why)) = request.call else {
            Issue.record("expected badArguments, got \(request.call)")
            return
        }
        #expect(why.contains("UTF-8"))
        #expect(why.contains("PutArgs.key"))
    }

    @Test("Invalid UTF-8 in any key/value or string field of a call is refused", arguments: [
        "Get.key", "PutHash.value", "Ping.server", "Forward op key", "Transfer entry value", "Transfer duplicate reply",
    ])
    func invalidUTF8Elsewhere(where field: String) throws {
        let bad: [UInt8] = [0x6B, 0xFF]
        var raw = ProtoWriter()
        raw.messageField(3) { r in
            r.varintField(1, 12)
            switch field {
            case "Get.key": r.messageField(20) { $0.bytesField(1, bad) }
            case "PutHash.value":
                r.messageField(22) { p in
                    p.bytesField(1, [0x6B])
                    p.bytesField(2, bad)
                }
            case "Ping.server": r.messageField(10) { $0.bytesField(1, bad) }
            case "Forward op key": r.messageField(30) { f in f.messageField(4) { $0.bytesField(2, bad) } }
            case "Transfer entry value": r.messageField(31) { t in t.messageField(7) { $0.bytesField(2, bad) } }
            default: r.messageField(31) { t in t.messageField(8) { d in d.messageField(3) { $0.bytesField(2, bad) } } }
            }
        }
        guard case .request(let request) = try EnvelopeCodec.decode(buffer(raw.bytes)),
            case .failure(.badArguments(let why)) = request.call
        else {
            Issue.record("expected badArguments")
            return
        }
        #expect(request.callID == 12)
        #expect(why.contains("UTF-8"))
    }

    @Test("Invalid UTF-8 in a reply value is a protocol violation, not altered data")
    func invalidUTF8InReply() throws {
        var raw = ProtoWriter()
        raw.messageField(4) { r in
            r.varintField(1, 3)
            r.messageField(20) { $0.bytesField(2, [0xFF]) }
        }
        guard case .response(let response) = try EnvelopeCodec.decode(buffer(raw.bytes)) else {
            Issue.record("expected a response")
            return
        }
        #expect(response.callID == 3)
        #expect(response.code == .protocolViolation)
        #expect(response.result == nil)
        #expect(response.message.contains("UTF-8"))
    }

    @Test("Bytes that are not an Envelope are rejected", arguments: [
        [UInt8]([0x1A, 0x64, 0x01, 0x02]),  // request of 100 bytes, 2 present
        [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],  // endless varint
        [0x08],  // field 1 varint without a value
    ])
    func malformed(raw: [UInt8]) {
        #expect(throws: MessageCodecError.self) { try EnvelopeCodec.decode(buffer(raw)) }
    }

    /// Found by the fuzzer: protobuf-c keeps an enum as the int32 it arrived as, imported into
    /// Swift as UInt32; converting 2^31 and above to the Swift enums' Int32 trapped, so one Hello
    /// from anyone crashed the server.
    @Test("Enum values outside Int32's positive range (2^31, -1 as ten bytes) are unknown values, never a crash",
          arguments: [UInt64(0x8000_0000), 0xFFFF_FFFF, UInt64.max])
    func enumValuesBeyondInt32(value: UInt64) throws {
        let asInt32 = Int64(Int32(truncatingIfNeeded: value))
        var hello = ProtoWriter()
        hello.messageField(1) { h in h.varintField(1, 1); h.varintField(2, value); h.varintField(2, 1) }
        guard case .hello(let decodedHello) = try EnvelopeCodec.decode(buffer(hello.bytes)) else {
            Issue.record("not a Hello"); return
        }
        #expect(decodedHello.features == [.zlib])  // the unknown feature is dropped, the known one kept
        var goodbye = ProtoWriter()
        goodbye.messageField(5) { $0.varintField(1, value) }
        #expect(try EnvelopeCodec.decode(buffer(goodbye.bytes)) == .goodbye(Goodbye(code: .protocolViolation, message: "")))
        var reply = ProtoWriter()
        reply.messageField(4) { r in r.varintField(1, 7); r.varintField(2, value) }
        guard case .response(let response) = try EnvelopeCodec.decode(buffer(reply.bytes)) else {
            Issue.record("not a Response"); return
        }
        #expect(response.callID == 7)
        #expect(response.code == .protocolViolation)
        #expect(response.message.contains("unknown value \(asInt32) in field Response.code"))
    }

    @Test("An empty payload or an envelope with only unknown fields has no body")
    func emptyEnvelope() {
        #expect(throws: MessageCodecError.emptyEnvelope) { try EnvelopeCodec.decode(ByteBuffer()) }
        var newer = ProtoWriter()
        newer.messageField(9) { $0.varintField(1, 1) }  // a body kind from a newer protocol
        #expect(throws: MessageCodecError.emptyEnvelope) { try EnvelopeCodec.decode(buffer(newer.bytes)) }
    }
}

/// A `string` field with a NUL byte in it, as a foreign client could send it: protobuf-c would
/// hand pbkv the text up to the NUL, so the decoder must notice and refuse.
enum NULInString: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case pingServer, forwardPrimary, transferPrimary, helloClientName, helloReplyServerName
    case viewPrimaryInReply, leaderInReply, errorMessageInReply, goodbyeMessage

    var testDescription: String { rawValue }

    static let text = Array("ADDR\u{0}tail".utf8)

    var bytes: [UInt8] {
        var raw = ProtoWriter()
        switch self {
        case .pingServer:
            raw.messageField(3) { r in
                r.varintField(1, 21)
                r.messageField(10) { p in
                    p.bytesField(1, Self.text)
                    p.varintField(2, 4)
                }
            }
        case .forwardPrimary:
            raw.messageField(3) { r in
                r.varintField(1, 21)
                r.messageField(30) { f in
                    f.varintField(1, 2)
                    f.bytesField(2, Self.text)
                }
            }
        case .transferPrimary:
            raw.messageField(3) { r in
                r.varintField(1, 21)
                r.messageField(31) { $0.bytesField(2, Self.text) }
            }
        case .helloClientName:
            raw.messageField(1) { h in
                h.varintField(1, 1)
                h.bytesField(4, Self.text)
            }
        case .helloReplyServerName:
            raw.messageField(2) { h in
                h.varintField(1, 1)
                h.bytesField(4, Self.text)
            }
        case .viewPrimaryInReply:
            raw.messageField(4) { r in
                r.varintField(1, 21)
                r.messageField(10) { v in
                    v.varintField(1, 3)
                    v.bytesField(2, Self.text)
                }
            }
        case .leaderInReply:
            raw.messageField(4) { r in
                r.varintField(1, 21)
                r.varintField(2, UInt64(Code.notLeader.rawValue))
                r.bytesField(4, Self.text)
            }
        case .errorMessageInReply:
            raw.messageField(4) { r in
                r.varintField(1, 21)
                r.varintField(2, UInt64(Code.badRequest.rawValue))
                r.bytesField(3, Self.text)
            }
        case .goodbyeMessage:
            raw.messageField(5) { g in
                g.varintField(1, UInt64(Code.protocolViolation.rawValue))
                g.bytesField(2, Self.text)
            }
        }
        return raw.bytes
    }
}

@Suite("String fields with NUL bytes")
struct NULInStringTests {
    @Test("A NUL byte in a string field is refused or marked, never silently cut short", arguments: NULInString.allCases)
    func refused(input: NULInString) throws {
        switch input {
        case .pingServer, .forwardPrimary, .transferPrimary:
            // A call's argument: that call is refused (BAD_REQUEST), the connection can go on.
            guard case .request(let request) = try EnvelopeCodec.decode(buffer(input.bytes)),
                case .failure(.badArguments(let why)) = request.call
            else {
                Issue.record("expected a request with bad arguments")
                return
            }
            #expect(request.callID == 21)
            let field = ["pingServer": "PingArgs.server", "forwardPrimary": "ForwardArgs.primary",
                         "transferPrimary": "TransferChunk.primary"][input.rawValue]!
            #expect(why == MessageCodecError.nulInString(field: field).description)
            #expect(why.contains("NUL"))
        case .helloClientName:
            #expect(throws: MessageCodecError.nulInString(field: "Hello.client_name")) {
                try EnvelopeCodec.decode(buffer(input.bytes))
            }
        case .helloReplyServerName:
            #expect(throws: MessageCodecError.nulInString(field: "HelloReply.server_name")) {
                try EnvelopeCodec.decode(buffer(input.bytes))
            }
        case .viewPrimaryInReply, .leaderInReply:
            // An address in a reply cannot be trusted cut short: the call fails.
            guard case .response(let response) = try EnvelopeCodec.decode(buffer(input.bytes)) else {
                Issue.record("expected a response")
                return
            }
            #expect(response.callID == 21)
            #expect(response.code == .protocolViolation)
            #expect(response.result == nil)
            #expect(response.message.contains(input == .viewPrimaryInReply ? "View.primary" : "Response.leader"))
            #expect(response.message.contains("NUL"))
        case .errorMessageInReply:
            // Only text for people: kept as far as it goes, and marked.
            #expect(try EnvelopeCodec.decode(buffer(input.bytes))
                == .response(Response(callID: 21, code: .badRequest, message: "ADDR [cut at a NUL byte]")))
        case .goodbyeMessage:
            #expect(try EnvelopeCodec.decode(buffer(input.bytes))
                == .goodbye(Goodbye(code: .protocolViolation, message: "ADDR [cut at a NUL byte]")))
        }
    }

    @Test("NUL bytes outside string fields are not refused: bytes fields, numbers, unknown fields")
    func notStrings() throws {
        var raw = ProtoWriter()
        raw.messageField(3) { r in
            r.varintField(1, 0)  // a 0 byte on the wire that is a number
            r.messageField(10) { p in
                p.stringField(1, "127.0.0.1:7001")
                p.varintField(2, 0)
                p.bytesField(99, [0, 0, 0])  // a newer peer's field, skipped
            }
            r.bytesField(98, Array("x\u{0}y".utf8))
        }
        #expect(try EnvelopeCodec.decode(buffer(raw.bytes))
            == .request(Request(callID: 0, call: .ping(PingArgs(server: "127.0.0.1:7001", viewnum: 0)))))
    }

    @Test("A stored view record with a NUL in an address is refused")
    func viewRecord() throws {
        var raw = ProtoWriter()
        raw.varintField(1, 1)
        raw.messageField(2) { v in
            v.varintField(1, 2)
            v.stringField(2, "127.0.0.1:7001")
        }
        raw.bytesField(3, NULInString.text)
        #expect(throws: MessageCodecError.nulInString(field: "ViewRecord.previous_backup")) {
            try EnvelopeCodec.decodeViewRecord(raw.bytes)
        }
    }
}

/// Whether `haystack` contains `needle` as a contiguous run.
func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard needle.count <= haystack.count else { return false }
    return (0...(haystack.count - needle.count)).contains { Array(haystack[$0..<($0 + needle.count)]) == needle }
}
