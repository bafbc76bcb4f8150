import Foundation
import NIOCore
import PBKVCore
import PBKVWire
import Testing

/// One frame of protocol version 1 as it is on the wire, kept in `proto/golden/<name>.hex`.
struct GoldenFrame: Sendable, CustomTestStringConvertible {
    var name: String
    /// What the frame holds, in words (written into the file's header).
    var summary: String
    var envelope: Envelope
    var compressed = false
    var testDescription: String { name }
}

private let clientID: UInt64 = 0x0123_4567_89AB_CDEF
private let primary = "127.0.0.1:7001"
private let backup = "127.0.0.1:7002"

private func request(_ callID: UInt64, _ call: Call) -> Envelope {
    .request(Request(callID: callID, timeoutMs: 500, call: call))
}

/// A value that compresses well: 4 KiB of a repeating line.
let goldenCompressibleValue = String(repeating: "pbkv golden frame, compressed with zlib. ", count: 100)

/// Every kind of message of protocol version 1: each envelope body, each call, each result, error
/// responses, and compressed frames both ways. The Python client's tests decode the same files
/// (clients/python/tests/test_golden.py).
let goldenFrames: [GoldenFrame] = [
    GoldenFrame(
        name: "hello", summary: "Hello{protocol_version: 1, features: [FEATURE_ZLIB], max_frame_size: 16777216, client_name: \"golden-client\"}",
        envelope: .hello(Hello(protocolVersion: 1, features: [.zlib], maxFrameSize: 16 << 20, clientName: "golden-client"))),
    GoldenFrame(
        name: "hello_reply", summary: "HelloReply{protocol_version: 1, features: [FEATURE_ZLIB], max_frame_size: 16777216, server_name: \"pbkv@127.0.0.1:7001\"}",
        envelope: .helloReply(HelloReply(protocolVersion: 1, features: [.zlib], maxFrameSize: 16 << 20, serverName: "pbkv@127.0.0.1:7001"))),
    GoldenFrame(
        name: "goodbye", summary: "Goodbye{code: PROTOCOL_VIOLATION, message: \"the first frame on a connection must be Hello\"}",
        envelope: .goodbye(Goodbye(code: .protocolViolation, message: "the first frame on a connection must be Hello"))),
    GoldenFrame(
        name: "request_ping", summary: "Request{call_id: 1, timeout_ms: 500, ping: {server: \"127.0.0.1:7001\", viewnum: 3}}",
        envelope: request(1, .ping(PingArgs(server: primary, viewnum: 3)))),
    GoldenFrame(
        name: "request_get_view", summary: "Request{call_id: 2, timeout_ms: 500, get_view: {}}",
        envelope: request(2, .getView)),
    GoldenFrame(
        name: "request_get", summary: "Request{call_id: 3, timeout_ms: 500, get: {key: \"greeting\", id: {client_id: 0x0123456789abcdef, seq: 1}}}",
        envelope: request(3, .get(key: "greeting", id: RequestID(clientID: clientID, seq: 1)))),
    GoldenFrame(
        name: "request_put", summary: "Request{call_id: 4, timeout_ms: 500, put: {key: \"ключ\", value: \"a\\0b 🙂\", id: {client_id: 0x0123456789abcdef, seq: 2}}}",
        envelope: request(4, .put(key: "ключ", value: "a\u{0}b 🙂", id: RequestID(clientID: clientID, seq: 2)))),
    GoldenFrame(
        name: "request_put_hash", summary: "Request{call_id: 5, timeout_ms: 500, put_hash: {key: \"counter\", value: \"x\", id: {client_id: 0x0123456789abcdef, seq: 3}}}",
        envelope: request(5, .putHash(key: "counter", value: "x", id: RequestID(clientID: clientID, seq: 3)))),
    GoldenFrame(
        name: "request_forward",
        summary: "Request{call_id: 6, timeout_ms: 500, forward: {viewnum: 4, primary: \"127.0.0.1:7001\", first_index: 10, ops: [OP_PUT a=1 (seq 2), OP_GET a (seq 3), OP_PUT_HASH c+x (seq 4)]}}",
        envelope: request(6, .forward(ForwardArgs(viewnum: 4, primary: primary, firstIndex: 10, ops: [
            Operation(kind: .put, key: "a", value: "1", id: RequestID(clientID: clientID, seq: 2)),
            Operation(kind: .get, key: "a", id: RequestID(clientID: clientID, seq: 3)),
            Operation(kind: .putHash, key: "c", value: "x", id: RequestID(clientID: clientID, seq: 4)),
        ])))),
    GoldenFrame(
        name: "request_transfer",
        summary: "Request{call_id: 7, timeout_ms: 500, transfer: {viewnum: 4, primary: \"127.0.0.1:7001\", transfer_id: 0xfeedfacecafebeef, chunk_index: 0, last: true, next_index: 10, duplicates: [{client_id: 0x0123456789abcdef, seq: 4, reply: {OK, \"prev\"}}], packed_entries: a=1, 鍵=値}}",
        envelope: request(7, .transfer(TransferChunk(
            viewnum: 4, primary: primary, transferID: 0xFEED_FACE_CAFE_BEEF, chunkIndex: 0, last: true, nextIndex: 10,
            entries: [Entry(key: "a", value: "1"), Entry(key: "鍵", value: "値")],
            duplicates: [DuplicateEntry(clientID: clientID, seq: 4, reply: KVReply(code: .ok, value: "prev"))])))),
    GoldenFrame(
        name: "response_view", summary: "Response{call_id: 2, view: {viewnum: 4, primary: \"127.0.0.1:7001\", backup: \"127.0.0.1:7002\", acknowledged: true}}",
        envelope: .response(Response(callID: 2, result: .view(View(viewnum: 4, primary: primary, backup: backup, acknowledged: true))))),
    GoldenFrame(
        name: "response_get", summary: "Response{call_id: 3, kv: {code: OK, value: \"hello\"}}",
        envelope: .response(Response(callID: 3, result: .kv(KVReply(code: .ok, value: "hello"))))),
    GoldenFrame(
        name: "response_get_no_key", summary: "Response{call_id: 3, kv: {code: NO_KEY}}",
        envelope: .response(Response(callID: 3, result: .kv(KVReply(code: .noKey))))),
    GoldenFrame(
        name: "response_put", summary: "Response{call_id: 4, kv: {}} (OK, empty value)",
        envelope: .response(Response(callID: 4, result: .kv(KVReply(code: .ok))))),
    GoldenFrame(
        name: "response_wrong_server", summary: "Response{call_id: 5, kv: {code: WRONG_SERVER}}",
        envelope: .response(Response(callID: 5, result: .kv(KVReply(code: .wrongServer))))),
    GoldenFrame(
        name: "response_forward", summary: "Response{call_id: 6, forward: {code: OUT_OF_ORDER, next_index: 13}}",
        envelope: .response(Response(callID: 6, result: .forward(ForwardReply(code: .outOfOrder, nextIndex: 13))))),
    GoldenFrame(
        name: "response_transfer", summary: "Response{call_id: 7, transfer: {}} (OK)",
        envelope: .response(Response(callID: 7, result: .transfer(TransferReply(code: .ok))))),
    GoldenFrame(
        name: "response_not_leader", summary: "Response{call_id: 2, code: NOT_LEADER, message: \"not the leader\", leader: \"127.0.0.1:7010\"}",
        envelope: .response(Response(callID: 2, code: .notLeader, message: "not the leader", leader: "127.0.0.1:7010"))),
    GoldenFrame(
        name: "response_unknown_method", summary: "Response{call_id: 8, code: UNKNOWN_METHOD, message: \"unknown method\"}",
        envelope: .response(Response(callID: 8, code: .unknownMethod, message: "unknown method"))),
    GoldenFrame(
        name: "response_bad_request", summary: "Response{call_id: 9, code: BAD_REQUEST, message: \"field GetArgs.key is not valid UTF-8\"}",
        envelope: .response(Response(callID: 9, code: .badRequest, message: "field GetArgs.key is not valid UTF-8"))),
    GoldenFrame(
        name: "request_put_compressed", summary: "zlib frame: Request{call_id: 10, timeout_ms: 500, put: {key: \"big\", value: 4100 bytes (\"pbkv golden frame, …\" × 100), id: {client_id: 0x0123456789abcdef, seq: 5}}}",
        envelope: request(10, .put(key: "big", value: goldenCompressibleValue, id: RequestID(clientID: clientID, seq: 5))),
        compressed: true),
    GoldenFrame(
        name: "response_get_compressed", summary: "zlib frame: Response{call_id: 11, kv: {code: OK, value: 4100 bytes (\"pbkv golden frame, …\" × 100)}}",
        envelope: .response(Response(callID: 11, result: .kv(KVReply(code: .ok, value: goldenCompressibleValue)))),
        compressed: true),
]

/// `proto/golden`, found from this file's path (the fixtures belong to the protocol, not to a target).
private let goldenDirectory = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("proto/golden")

private let writing = ProcessInfo.processInfo.environment["PBKV_WRITE_GOLDEN"] == "1"

/// The frame bytes of a hex fixture: `#` lines are comments, the rest hex byte pairs.
func goldenBytes(_ name: String) throws -> [UInt8] {
    let text = try String(contentsOf: goldenDirectory.appendingPathComponent("\(name).hex"), encoding: .utf8)
    var bytes: [UInt8] = []
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        for pair in line.split(separator: " ") {
            guard let byte = UInt8(pair, radix: 16) else { throw GoldenError.notHex(name, String(pair)) }
            bytes.append(byte)
        }
    }
    return bytes
}

enum GoldenError: Error { case notHex(String, String) }

/// The frame as pbkv's codec writes it (compressed ones through `FrameCodec`, as a server would).
private func encodedFrame(_ golden: GoldenFrame) throws -> [UInt8] {
    var codec = FrameCodec(compressionThreshold: 1024)
    codec.compressionEnabled = golden.compressed
    var buffer = ByteBuffer()
    try codec.encode(golden.envelope, into: &buffer)
    return Array(buffer.readableBytesView)
}

@Suite("Golden frames of protocol version 1 (proto/golden)")
struct GoldenFrameTests {
    @Test("Writes the fixtures (only with PBKV_WRITE_GOLDEN=1)", .enabled(if: writing))
    func write() throws {
        try FileManager.default.createDirectory(at: goldenDirectory, withIntermediateDirectories: true)
        for golden in goldenFrames {
            let bytes = try encodedFrame(golden)
            var text = "# pbkv golden frame \"\(golden.name)\", protocol version 1: a whole frame (5-byte header, then the payload).\n"
            text += "# Written by Tests/PBKVWireTests/GoldenFrameTests.swift (PBKV_WRITE_GOLDEN=1); never edit, never regenerate for a change of v1.\n"
            text += "# \(golden.summary)\n"
            text += "# flags 0x0\(golden.compressed ? 1 : 0), payload \(bytes.count - 5) bytes\n"
            for start in stride(from: 0, to: bytes.count, by: 16) {
                text += bytes[start..<min(start + 16, bytes.count)].map { String(format: "%02x", $0) }.joined(separator: " ") + "\n"
            }
            try text.write(to: goldenDirectory.appendingPathComponent("\(golden.name).hex"), atomically: true, encoding: .utf8)
        }
    }

    @Test(
        "A golden frame decodes to the expected envelope, and encoding that envelope gives the same bytes",
        .enabled(if: !writing), arguments: goldenFrames)
    func decode(golden: GoldenFrame) throws {
        let bytes = try goldenBytes(golden.name)
        var buffer = ByteBuffer(bytes: bytes)
        let frame = try #require(try FrameDecoder.readFrame(from: &buffer, maxPayload: Frame.defaultMaxPayload))
        #expect(buffer.readableBytes == 0, "one whole frame, nothing after it")
        #expect(frame.flags == (golden.compressed ? .zlib : []))
        var codec = FrameCodec()
        codec.compressionEnabled = true
        let payload = try codec.payload(of: frame, allocator: ByteBufferAllocator())
        #expect(try EnvelopeCodec.decode(payload) == golden.envelope)
        // protobuf-c writes fields in number order, so the encoding is deterministic: the same
        // envelope gives the same payload bytes (for a zlib frame, the inflated payload).
        #expect(Array(EnvelopeCodec.encode(golden.envelope).readableBytesView) == Array(payload.readableBytesView))
        if !golden.compressed {
            #expect(try encodedFrame(golden) == bytes)
        }
    }

    @Test("proto/golden holds exactly the golden frames, and they cover every kind of message", .enabled(if: !writing))
    func coverage() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: goldenDirectory.path)
            .filter { $0.hasSuffix(".hex") }.map { String($0.dropLast(4)) }
        #expect(Set(files) == Set(goldenFrames.map(\.name)))
        var kinds = Set<String>()
        for golden in goldenFrames {
            switch golden.envelope {
            case .hello: kinds.insert("hello")
            case .helloReply: kinds.insert("helloReply")
            case .goodbye: kinds.insert("goodbye")
            case .request(let r):
                if case .success(let call) = r.call { kinds.insert("call \(call.method)") }
            case .response(let r):
                switch r.result {
                case .view: kinds.insert("result view")
                case .kv: kinds.insert("result kv")
                case .forward: kinds.insert("result forward")
                case .transfer: kinds.insert("result transfer")
                case .viewServiceStatus: kinds.insert("result view_service_status")
                case .serverStatus: kinds.insert("result server_status")
                case .viewServiceRole: kinds.insert("result view_service_role")
                case nil: kinds.insert("error \(r.code)")
                }
            }
            if golden.compressed { kinds.insert(golden.envelope.isRequest ? "compressed request" : "compressed response") }
        }
        #expect(kinds == [
            "hello", "helloReply", "goodbye",
            "call Ping", "call GetView", "call Get", "call Put", "call PutHash", "call Forward", "call Transfer",
            "result view", "result kv", "result forward", "result transfer",
            "error NOT_LEADER", "error UNKNOWN_METHOD", "error BAD_REQUEST", "compressed request", "compressed response",
        ])
    }
}

extension Envelope {
    fileprivate var isRequest: Bool {
        if case .request = self { return true }
        return false
    }
}
