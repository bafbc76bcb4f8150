import NIOCore
import PBKVWire
import Testing

@testable import PBKVCore
@testable import PBKVServer

private func limitedPut(_ key: String, _ value: String, client: UInt64, seq: UInt64) -> Operation {
    Operation(kind: .put, key: key, value: value, id: RequestID(clientID: client, seq: seq))
}

/// Encodes `call` as the shell would (largest call id and timeout) in a frame of at most
/// `maxPayload` bytes; returns the payload size, or throws when it does not fit.
private func encodedSize(_ call: Call, maxPayload: Int) throws -> Int {
    var codec = FrameCodec(maxPayload: maxPayload)
    var out = ByteBuffer()
    try codec.encode(.request(Request(callID: .max, timeoutMs: .max, call: call)), into: &out)
    return out.readableBytes - Frame.headerSize
}

/// Small limits: a 16 KiB frame, keys up to 200 bytes, values as large as the frame allows, and
/// a batch budget far above the frame (the frame must still win).
private func smallFrameConfiguration(me: String = "p") -> ReplicaConfiguration {
    var configuration = ReplicaConfiguration()
    configuration.maxFrameBytes = 16 * 1024
    configuration.maxKeyBytes = 200
    configuration.maxValueBytes = configuration.maxFrameBytes - EncodedSize.batchEnvelope(primaryBytes: me.utf8.count)
        - EncodedSize.itemOverhead - configuration.maxKeyBytes
    configuration.maxBatchBytes = 1 << 20
    configuration.maxChunkEntries = 100_000
    return configuration
}

@Suite("Replica rules: key and value limits, batches that fit a frame")
struct ReplicaLimitsTests {
    @Test("A key or value over its limit is refused with BAD_REQUEST naming the limit; nothing is applied or forwarded")
    func overLimitRefused() throws {
        var configuration = ReplicaConfiguration()
        configuration.maxKeyBytes = 8
        configuration.maxValueBytes = 16
        var net = ReplicaNetwork.primaryWithBackup(configuration: configuration)
        net.request("p", limitedPut("k", "v", client: 1, seq: 1), token: 1)
        net.settle()
        let before = net["p"].store

        let cases: [(Operation, String)] = [
            (limitedPut("123456789", "v", client: 2, seq: 1), "key of 9 bytes exceeds this server's limit of 8 bytes (--max-key-bytes)"),
            (limitedPut("k", String(repeating: "v", count: 17), client: 3, seq: 1),
             "value of 17 bytes exceeds this server's limit of 16 bytes (--max-value-bytes)"),
            (Operation(kind: .putHash, key: "k", value: String(repeating: "é", count: 9), id: RequestID(clientID: 4, seq: 1)),
             "value of 18 bytes exceeds this server's limit of 16 bytes (--max-value-bytes)"),
            (Operation(kind: .get, key: "ключ-ключ", id: RequestID(clientID: 5, seq: 1)),
             "key of 17 bytes exceeds this server's limit of 8 bytes (--max-key-bytes)"),
        ]
        for (i, (op, message)) in cases.enumerated() {
            let token = ReplyToken(10 + i)
            #expect(net.request("p", op, token: token) == [.reply(token, KVReply(code: .badRequest, value: message))])
        }
        #expect(net.inFlight.isEmpty, "nothing forwarded")
        #expect(net["p"].store == before, "nothing applied, no duplicate row written")
        #expect(net["p"].pendingCount == 0)

        // Exactly at the limits: applied, forwarded, acknowledged.
        let atLimit = limitedPut("12345678", String(repeating: "v", count: 16), client: 2, seq: 1)
        net.request("p", atLimit, token: 20)
        net.settle()
        #expect(net.replies.last == .reply(20, KVReply(code: .ok)))
        #expect(net["b"].store.map["12345678"] == String(repeating: "v", count: 16))
        #expect(net["b"].store == net["p"].store)

        // Every role refuses alike: retrying elsewhere cannot help.
        var idle = ReplicaStateMachine(me: "i", configuration: configuration)
        #expect(idle.onClientRequest(cases[0].0, token: 30) == [.reply(30, KVReply(code: .badRequest, value: cases[0].1))])
    }

    @Test("Forward batches always fit the frame, however many large operations wait")
    func forwardBatchesFitTheFrame() throws {
        let configuration = smallFrameConfiguration()
        try configuration.validate(me: "p")
        var net = ReplicaNetwork.primaryWithBackup(configuration: configuration)
        // The first operation goes at once; the others wait behind it and are batched.
        let sizes = [configuration.maxValueBytes, 10, 5_000, configuration.maxValueBytes, 7_000, 7_000, 100, 2_000, 9_000, 1]
        for (i, size) in sizes.enumerated() {
            let key = String(repeating: "k", count: i % 2 == 0 ? configuration.maxKeyBytes : 1) + "\(i)"
            let op = limitedPut(String(key.suffix(configuration.maxKeyBytes)), String(repeating: "v", count: size), client: UInt64(i + 1), seq: 1)
            net.request("p", op, token: ReplyToken(i))
        }
        var batches: [Int] = []
        var steps = 0
        while let call = net.inFlight.first {
            guard case .forward(_, let args, _) = call.directive else {
                Issue.record("expected only forwards, got \(call.directive)")
                return
            }
            let size = try encodedSize(.forward(args), maxPayload: configuration.maxFrameBytes)
            #expect(size <= configuration.maxFrameBytes)
            batches.append(args.ops.count)
            net.deliver()
            steps += 1
            try #require(steps < 100)
        }
        #expect(batches.count > 2, "several operations waited, and they did not fit one frame: \(batches)")
        #expect(batches.contains { $0 > 1 }, "small ones still share a frame: \(batches)")
        #expect(batches.reduce(0, +) == sizes.count)
        #expect(net.replies.count == sizes.count)
        #expect(net["b"].store == net["p"].store)
    }

    @Test("Transfer chunks always fit the frame: large entries and large duplicate-table replies")
    func transferChunksFitTheFrame() throws {
        let configuration = smallFrameConfiguration()
        var net = ReplicaNetwork(["p", "b"], configuration: configuration)
        net.onView("p", View(viewnum: 1, primary: "p", backup: ""))
        net.onView("p", View(viewnum: 1, primary: "p", backup: "", acknowledged: true))
        // Large values, and Gets of them: each client's duplicate row holds a whole value.
        for i in 0..<12 {
            let size = i % 3 == 0 ? configuration.maxValueBytes : 3_000 * (i % 3)
            net.request("p", limitedPut("key\(i)", String(repeating: "x", count: size), client: UInt64(i + 1), seq: 1), token: ReplyToken(i))
            net.request("p", Operation(kind: .get, key: "key\(i)", id: RequestID(clientID: UInt64(i + 1), seq: 2)), token: ReplyToken(100 + i))
        }
        let v2 = View(viewnum: 2, primary: "p", backup: "b")
        net.onView("p", v2)
        net.onView("b", v2)
        var chunks = 0
        var steps = 0
        while let call = net.inFlight.first {
            guard case .transfer(_, let chunk, _) = call.directive else {
                Issue.record("expected only transfer chunks, got \(call.directive)")
                return
            }
            let size = try encodedSize(.transfer(chunk), maxPayload: configuration.maxFrameBytes)
            #expect(size <= configuration.maxFrameBytes)
            chunks += 1
            net.deliver()
            steps += 1
            try #require(steps < 200)
        }
        #expect(chunks >= 8, "12 entries and 12 rows of which 8 are near a frame each: \(chunks) chunks")
        #expect(net["b"].hasState)
        #expect(net["b"].store == net["p"].store)
    }

    @Test("Limits that could not be forwarded in one frame are refused at startup, naming what to change")
    func validation() throws {
        try ReplicaConfiguration().validate(me: "127.0.0.1:7001")
        try smallFrameConfiguration().validate(me: "p")
        var tooBig = smallFrameConfiguration()
        tooBig.maxValueBytes += 1
        #expect(throws: ReplicaConfigurationError.limitsExceedFrame(
            maxKeyBytes: 200, maxValueBytes: tooBig.maxValueBytes, largestSum: tooBig.maxValueBytes - 1 + 200,
            maxFrameBytes: 16 * 1024)) { try tooBig.validate(me: "p") }
        // A longer address takes room from the frame too.
        #expect(throws: ReplicaConfigurationError.self) { try smallFrameConfiguration().validate(me: "pp") }
        var noKey = ReplicaConfiguration()
        noKey.maxKeyBytes = 0
        #expect(throws: ReplicaConfigurationError.keyLimitTooSmall(0)) { try noKey.validate(me: "p") }
        let error = ReplicaConfigurationError.limitsExceedFrame(maxKeyBytes: 4_096, maxValueBytes: 16 << 20, largestSum: 100, maxFrameBytes: 16 << 20)
        #expect(error.description.contains("--max-value-bytes"))
        #expect(error.description.contains("keep their sum at most 100"))

        var server = KVServerConfiguration(listenHost: "127.0.0.1", listenPort: 0, viewService: [])
        try server.validate()
        server.replica.maxValueBytes = Frame.defaultMaxPayload
        #expect(throws: KVServerConfigurationError.self) { try server.validate() }
        server.replica.maxValueBytes = 1_000
        server.maxPayload = 1_024
        #expect(throws: KVServerConfigurationError.maxPayloadOutOfRange(1_024)) { try server.validate() }
        server.maxPayload = Frame.defaultMaxPayload
        server.maxConnections = 0
        #expect(throws: KVServerConfigurationError.maxConnectionsNotPositive(0)) { try server.validate() }
    }
}
