import NIOCore
import NIOPosix
import PBKVCore
import PBKVWire
import Testing

/// Something a broken or hostile peer sends to a live server.
enum BadInput: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case truncatedFrame
    case frameAboveMaximum
    case unknownFlagBits
    case corruptZlib
    case zlibBomb
    case zlibDeclaredAboveMaximum
    case zlibNotAgreed
    case garbageInsteadOfProtobuf
    case requestBeforeHello
    case unsupportedVersion
    case responseFromClient
    case nulInHelloClientName
    case maxFrameSize16
    case maxFrameSize64
    case maxFrameSizeJustBelowMinimum
    case streamNotAgreed
    case corruptStream
    case streamBomb
    case streamPieceMissing
    case zlibAndStreamFlags

    var testDescription: String { rawValue }

    /// Whether the server agrees to the deflate streams for this case.
    var serverStreams: Bool { [.corruptStream, .streamBomb, .streamPieceMissing, .zlibAndStreamFlags].contains(self) }

    /// The server's maximum payload for this case.
    var maxPayload: Int { self == .frameAboveMaximum ? Int(RPCProtocol.minimumMaxFrameSize) : Frame.defaultMaxPayload }

    /// The Goodbye the server must send (code and a word of its message); nil: it just closes.
    var expectedGoodbye: (code: Code, mentions: String)? {
        switch self {
        case .truncatedFrame: nil
        case .frameAboveMaximum: (.frameTooLarge, "exceeds the maximum")
        case .unknownFlagBits: (.protocolViolation, "unknown flag")
        case .corruptZlib: (.protocolViolation, "corrupt")
        case .zlibBomb: (.protocolViolation, "bomb")
        case .zlibDeclaredAboveMaximum: (.frameTooLarge, "exceeds the maximum")
        case .zlibNotAgreed: (.protocolViolation, "not agreed")
        case .garbageInsteadOfProtobuf: (.protocolViolation, "malformed")
        case .requestBeforeHello: (.protocolViolation, "must be Hello")
        case .unsupportedVersion: (.unsupportedVersion, "not supported")
        case .responseFromClient: (.protocolViolation, "accepts only Request")
        case .nulInHelloClientName: (.protocolViolation, "Hello.client_name contains a NUL byte")
        case .maxFrameSize16, .maxFrameSize64, .maxFrameSizeJustBelowMinimum: (.protocolViolation, "below the minimum of 4096 bytes")
        case .streamNotAgreed: (.protocolViolation, "not agreed")
        case .corruptStream: (.protocolViolation, "corrupt")
        case .streamBomb: (.protocolViolation, "bomb")
        case .streamPieceMissing: (.protocolViolation, "too far back")
        case .zlibAndStreamFlags: (.protocolViolation, "one or the other")
        }
    }

    /// A zlib frame whose stream inflates to `inflated` bytes, with the given declared size.
    static func zlibFrame(inflated: Int, declared: UInt32) throws -> [UInt8] {
        var codec = FrameCodec(compressionThreshold: 0)
        codec.compressionEnabled = true
        var wire = ByteBuffer()
        let value = String(repeating: "z", count: inflated)
        try codec.encode(.request(Request(callID: 1, call: .put(key: "k", value: value, id: RequestID(clientID: 1, seq: 1)))), into: &wire)
        var raw = bytes(of: wire)
        #expect(raw[4] == 0x01)
        raw[5] = UInt8(declared >> 24)
        raw[6] = UInt8(truncatingIfNeeded: declared >> 16)
        raw[7] = UInt8(truncatingIfNeeded: declared >> 8)
        raw[8] = UInt8(truncatingIfNeeded: declared)
        return raw
    }

    /// Stream frames (flag 0x02) of `envelopes`, as a client's deflate stream makes them.
    static func streamFrames(_ envelopes: [Envelope]) throws -> [[UInt8]] {
        var codec = FrameCodec()
        codec.streamEnabled = true
        return try envelopes.map { envelope in
            var wire = ByteBuffer()
            try codec.encode(envelope, into: &wire)
            let raw = bytes(of: wire)
            #expect(raw[4] == 0x02)
            return raw
        }
    }

    /// Does it, on a fresh connection.
    func perform(on raw: RawConnection) async throws {
        let ping = Envelope.request(Request(callID: 1, call: .ping(PingArgs(server: "bad", viewnum: 1))))
        switch self {
        case .truncatedFrame:
            _ = try await raw.handshake()
            // The header says 100 bytes; 10 arrive, then the peer stops sending.
            try await raw.send(Array(frameBytes(payload: Array(repeating: 0x11, count: 100)).prefix(15)))
            try await raw.finishSending()
        case .frameAboveMaximum:
            _ = try await raw.handshake()
            try await raw.send(frameBytes(payload: Array(repeating: 0, count: 8_192)))
        case .unknownFlagBits:
            _ = try await raw.handshake()
            try await raw.send(frameBytes(flags: 0x80, payload: bytes(of: EnvelopeCodec.encode(ping))))
        case .corruptZlib:
            let reply = try await raw.handshake(features: [.zlib])
            #expect(reply.features == [.zlib])
            try await raw.send(frameBytes(flags: 0x01, payload: [0, 0, 0, 64, 0x78, 0x9C, 0xDE, 0xAD, 0xBE, 0xEF, 0x01, 0x02, 0x03]))
        case .zlibBomb:
            #expect(try await raw.handshake(features: [.zlib]).features == [.zlib])
            // Declares 64 bytes; inflates to about 4 MiB.
            try await raw.send(try Self.zlibFrame(inflated: 4 << 20, declared: 64))
        case .zlibDeclaredAboveMaximum:
            #expect(try await raw.handshake(features: [.zlib]).features == [.zlib])
            try await raw.send(try Self.zlibFrame(inflated: 1_000, declared: UInt32(Frame.defaultMaxPayload + 1)))
        case .zlibNotAgreed:
            #expect(try await raw.handshake(features: []).features == [])
            var codec = FrameCodec(compressionThreshold: 0)
            codec.compressionEnabled = true
            var wire = ByteBuffer()
            try codec.encode(ping, into: &wire)
            try await raw.send(bytes(of: wire))
        case .garbageInsteadOfProtobuf:
            _ = try await raw.handshake()
            try await raw.send(frameBytes(payload: [0x1A, 0x64, 0x01, 0x02] + Array("not protobuf".utf8)))
        case .requestBeforeHello:
            try await raw.send(frameBytes(ping))
        case .unsupportedVersion:
            try await raw.send(frameBytes(.hello(Hello(protocolVersion: 99, features: [], maxFrameSize: 0))))
        case .responseFromClient:
            _ = try await raw.handshake()
            try await raw.send(frameBytes(.response(Response(callID: 1, result: .view(.initial)))))
        case .nulInHelloClientName:
            try await raw.send(frameBytes(payload: NULInString.helloClientName.bytes))
        case .maxFrameSize16, .maxFrameSize64, .maxFrameSizeJustBelowMinimum:
            let size: UInt32 = self == .maxFrameSize16 ? 16 : self == .maxFrameSize64 ? 64 : RPCProtocol.minimumMaxFrameSize - 1
            try await raw.send(frameBytes(.hello(Hello(protocolVersion: RPCProtocol.version, features: [], maxFrameSize: size))))
        case .streamNotAgreed:
            #expect(try await raw.handshake(features: [.zlib, .deflateStream]).features == [.zlib])
            try await raw.send(try Self.streamFrames([ping])[0])
        case .corruptStream:
            #expect(try await raw.handshake(features: [.deflateStream]).features == [.deflateStream])
            try await raw.send(frameBytes(flags: 0x02, payload: [0, 0, 0, 64, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x02]))
        case .streamBomb:
            #expect(try await raw.handshake(features: [.deflateStream]).features == [.deflateStream])
            // Declares 64 bytes; inflates to about 60 KiB.
            let value = String(repeating: "z", count: 60_000)
            var frame = try Self.streamFrames([.request(Request(callID: 1, call: .put(key: "k", value: value, id: RequestID(clientID: 1, seq: 1))))])[0]
            frame.replaceSubrange(5..<9, with: [0, 0, 0, 64])
            try await raw.send(frame)
        case .streamPieceMissing:
            #expect(try await raw.handshake(features: [.deflateStream]).features == [.deflateStream])
            // The second of two like frames refers back into the first, which never arrives.
            let echo = PingArgs(server: String(repeating: "the same words again ", count: 20), viewnum: 1)
            let frames = try Self.streamFrames([.request(Request(callID: 1, call: .ping(echo))), .request(Request(callID: 2, call: .ping(echo)))])
            try await raw.send(frames[1])
        case .zlibAndStreamFlags:
            #expect(try await raw.handshake(features: [.zlib, .deflateStream]).features == [.zlib, .deflateStream])
            var frame = try Self.streamFrames([ping])[0]
            frame[4] = 0x03
            try await raw.send(frame)
        }
    }
}

@Suite("A bad peer loses only its own connection", .timeLimit(.minutes(1)))
struct BadPeerTests {
    @Test("Bad input gets a Goodbye and a closed connection; other connections keep being served", arguments: BadInput.allCases)
    func badInput(input: BadInput) async throws {
        try await LiveServer.with(configure: {
            $0.maxPayload = input.maxPayload
            $0.compression = input.serverStreams ? .stream : .frame
        }) { live async throws in
            let client = live.client()
            #expect(try await client.call(.ping(PingArgs(server: "good", viewnum: 1)), timeout: .seconds(10)) == echoed(1, "good"))

            let raw = try await live.raw()
            try await input.perform(on: raw)
            #expect(await raw.waitForClose(), "the server must close the connection")
            let received = try raw.envelopes()
            if let expected = input.expectedGoodbye {
                guard case .goodbye(let goodbye)? = received.last else {
                    Issue.record("expected a Goodbye last, got \(received)")
                    return
                }
                #expect(goodbye.code == expected.code)
                #expect(goodbye.message.contains(expected.mentions), "\(goodbye.message)")
            } else {
                #expect(!received.contains { if case .response = $0 { true } else { false } })
            }
            await raw.close()

            // The good client's connection was not disturbed, and new ones are still accepted.
            #expect(try await client.call(.ping(PingArgs(server: "good", viewnum: 2)), timeout: .seconds(10)) == echoed(2, "good"))
            let goodConnections = live.log.connections
            let newcomer = live.client()
            #expect(try await newcomer.call(.getView, timeout: .seconds(10)) == .view(EchoViewService.fixedView))
            #expect(goodConnections.count == 1)
            #expect(live.log.connections.count == 2)
            #expect(!live.log.calls.contains(.ping(PingArgs(server: "bad", viewnum: 1))))
        }
    }

    @Test("A Goodbye is sent even when the server's maximum payload is tiny")
    func goodbyeWithTinyMaximum() async throws {
        try await LiveServer.with(configure: { $0.maxPayload = 48 }) { live async throws in
            let raw = try await live.raw()
            _ = try await raw.handshake()
            try await raw.send(frameBytes(payload: Array(repeating: 0, count: 49)))
            #expect(await raw.waitForClose())
            guard case .goodbye(let goodbye)? = try raw.envelopes().last else {
                Issue.record("no Goodbye: \(try raw.envelopes())")
                return
            }
            #expect(goodbye.code == .frameTooLarge)
        }
    }

    @Test("Unknown method is answered per call with UNKNOWN_METHOD and the connection stays open")
    func unknownMethodKeepsConnection() async throws {
        try await LiveServer.with { live async throws in
            let raw = try await live.raw()
            _ = try await raw.handshake()
            var request = ProtoWriter()
            request.messageField(3) { r in
                r.varintField(1, 41)
                r.messageField(50) { $0.bytesField(1, Array("args of a newer method".utf8)) }
            }
            try await raw.send(frameBytes(payload: request.bytes))
            let afterUnknown = try await raw.envelopes(count: 2)
            guard afterUnknown.count == 2, case .response(let response) = afterUnknown[1] else {
                Issue.record("expected a response, got \(afterUnknown)")
                return
            }
            #expect(response.callID == 41)
            #expect(response.code == .unknownMethod)
            #expect(response.result == nil)
            #expect(!response.message.isEmpty)

            // Same connection, a valid call: answered.
            try await raw.send(frameBytes(.request(Request(callID: 42, call: .ping(PingArgs(server: "again", viewnum: 8))))))
            let afterValid = try await raw.envelopes(count: 3)
            #expect(afterValid.count == 3)
            #expect(afterValid.last == .response(Response(callID: 42, result: echoed(8, "again"))))
            #expect(!raw.isClosed)
            #expect(live.log.count == 1)
            await raw.close()
        }
    }

    @Test("A method no table implements fails that call only, on the RPC client too")
    func unimplementedMethodViaClient() async throws {
        try await LiveServer.with { live async throws in
            let client = live.client()
            let error = await rpcError { () async throws(RPCError) in
                try await client.call(.get(key: "k", id: RequestID(clientID: 1, seq: 1)), timeout: .seconds(10))
            }
            guard case .remote(let code, let message)? = error else {
                Issue.record("expected a remote error, got \(String(describing: error))")
                return
            }
            #expect(code == .unknownMethod)
            #expect(message.contains("Get"))
            #expect(try await client.call(.ping(PingArgs(server: "s", viewnum: 3)), timeout: .seconds(10)) == echoed(3))
            #expect(live.log.connections.count == 1)
        }
    }

    @Test("A key that is not UTF-8 is answered BAD_REQUEST and the connection stays open")
    func invalidUTF8OnTheWire() async throws {
        try await LiveServer.with { live async throws in
            let raw = try await live.raw()
            _ = try await raw.handshake()
            var request = ProtoWriter()
            request.messageField(3) { r in
                r.varintField(1, 5)
                r.messageField(21) { p in
                    p.bytesField(1, [0xFF, 0xFE])
                    p.bytesField(2, Array("v".utf8))
                }
            }
            try await raw.send(frameBytes(payload: request.bytes))
            let received = try await raw.envelopes(count: 2)
            guard received.count == 2, case .response(let response) = received[1] else {
                Issue.record("expected a response, got \(received)")
                return
            }
            #expect(response.callID == 5)
            #expect(response.code == .badRequest)
            #expect(response.message.contains("UTF-8"))
            try await raw.send(frameBytes(.request(Request(callID: 6, call: .getView))))
            #expect(try await raw.envelopes(count: 3).last == .response(Response(callID: 6, result: .view(EchoViewService.fixedView))))
            #expect(!raw.isClosed)
            #expect(live.log.calls == [.getView])
            await raw.close()
        }
    }

    @Test("A string argument with a NUL byte is answered BAD_REQUEST, not cut short, and the connection stays open")
    func nulInStringArgument() async throws {
        try await LiveServer.with { live async throws in
            let raw = try await live.raw()
            _ = try await raw.handshake()
            // Ping{server: "ADDR\0tail"}: protobuf-c alone would have pinged as "ADDR".
            try await raw.send(frameBytes(payload: NULInString.pingServer.bytes))
            let received = try await raw.envelopes(count: 2)
            guard received.count == 2, case .response(let response) = received[1] else {
                Issue.record("expected a response, got \(received)")
                return
            }
            #expect(response.callID == 21)
            #expect(response.code == .badRequest)
            #expect(response.message.contains("PingArgs.server contains a NUL byte"))
            #expect(live.log.calls.isEmpty, "the call must not run: \(live.log.calls)")
            try await raw.send(frameBytes(.request(Request(callID: 22, call: .ping(PingArgs(server: "ADDR", viewnum: 4))))))
            #expect(try await raw.envelopes(count: 3).last == .response(Response(callID: 22, result: echoed(4, "ADDR"))))
            #expect(!raw.isClosed)
            #expect(live.log.calls == [.ping(PingArgs(server: "ADDR", viewnum: 4))])
            await raw.close()
        }
    }
}
