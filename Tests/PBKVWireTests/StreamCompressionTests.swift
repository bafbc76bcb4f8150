import CoreMetrics
import Logging
import NIOCore
import NIOEmbedded
import PBKVCore
import PBKVTestSupport
import PBKVWire
import Testing

/// Two ends of one connection with the deflate streams agreed.
private func streamingPair() -> (FrameCodec, FrameCodec) {
    var a = FrameCodec()
    var b = FrameCodec()
    a.compressionEnabled = true
    a.streamEnabled = true
    b.compressionEnabled = true
    b.streamEnabled = true
    return (a, b)
}

/// Encodes `envelope` at `sender` and decodes it at `receiver`: the frame's flags and size, and
/// whether the envelope came back unchanged.
private func travel(_ envelope: Envelope, _ sender: inout FrameCodec, _ receiver: inout FrameCodec) throws -> (flags: FrameFlags, size: Int) {
    var wire = ByteBuffer()
    try sender.encode(envelope, into: &wire)
    let size = wire.readableBytes
    let frame = try #require(try FrameDecoder.readFrame(from: &wire, maxPayload: Frame.defaultMaxPayload))
    #expect(wire.readableBytes == 0)
    #expect(try EnvelopeCodec.decode(receiver.payload(of: frame, allocator: ByteBufferAllocator())) == envelope)
    return (frame.flags, size)
}

private func put(_ n: Int, _ value: String) -> Envelope {
    .request(Request(callID: UInt64(n), timeoutMs: 500, call: .put(key: "key:\(n)", value: value, id: RequestID(clientID: 7, seq: UInt64(n)))))
}

private func putReply(_ n: Int) -> Envelope { .response(Response(callID: UInt64(n), result: .kv(KVReply(code: .ok)))) }

@Suite("Deflate streams (FEATURE_DEFLATE_STREAM)", .timeLimit(.minutes(1)))
struct StreamCompressionTests {
    @Test("Many small frames both ways through the streams: each decodes on arrival, flagged 0x02, far smaller than plain")
    func manySmallFramesBothWays() throws {
        var (client, server) = streamingPair()
        var text = SampleText(seed: 3)
        var streamed = 0
        var plain = 0
        for n in 1...300 {
            // Sizes from empty to 2 KiB, so pieces of every length cross the stream.
            let value = n % 10 == 0 ? "" : text.jsonRecord(id: n, bytes: (n * 37) % 2048)
            let request = put(n, value)
            let sent = try travel(request, &client, &server)
            #expect(sent.flags == .stream, "request \(n)")
            let answered = try travel(putReply(n), &server, &client)
            #expect(answered.flags == .stream, "reply \(n)")
            streamed += sent.size + answered.size
            plain += frameBytes(request).count + frameBytes(putReply(n)).count
        }
        #expect(streamed * 3 < plain, "streamed \(streamed) bytes, plain \(plain)")
    }

    @Test("The stream remembers: a frame like the one before costs a fraction of the first")
    func contextTakeover() throws {
        var (client, server) = streamingPair()
        var text = SampleText(seed: 4)
        let value = text.english(bytes: 1024)
        let first = try travel(put(1, value), &client, &server)
        let second = try travel(put(2, value), &client, &server)
        // Per frame, the same value costs as much every time.
        var perFrame = FrameCodec(compressionThreshold: 0)
        perFrame.compressionEnabled = true
        var receiver = perFrame
        let again = try travel(put(2, value), &perFrame, &receiver)
        #expect(again.flags == .zlib)
        #expect(second.size * 5 < first.size, "first \(first.size) bytes, second \(second.size)")
        #expect(second.size * 5 < again.size, "streamed \(second.size) bytes, per frame \(again.size)")
    }

    @Test("Frames above the stream's limit go per frame (zlib or plain) and the stream goes on around them")
    func largeFramesBypassTheStream() throws {
        var (client, server) = streamingPair()
        let big = String(repeating: "a chunk of state transfer; ", count: 5_000)  // ~135 KB
        #expect(try travel(put(1, "small"), &client, &server).flags == .stream)
        #expect(try travel(put(2, big), &client, &server).flags == .zlib)
        #expect(try travel(put(3, "small"), &client, &server).flags == .stream)
        client.compressionEnabled = false
        #expect(try travel(put(4, big), &client, &server).flags == [])
        #expect(try travel(put(5, "small again"), &client, &server).flags == .stream)
    }

    @Test("A stream frame is refused when the stream was not agreed")
    func streamWithoutAgreement() throws {
        var (sender, _) = streamingPair()
        var receiver = FrameCodec()
        receiver.compressionEnabled = true
        var wire = ByteBuffer()
        try sender.encode(put(1, "v"), into: &wire)
        let frame = try #require(try FrameDecoder.readFrame(from: &wire, maxPayload: 1 << 20))
        #expect(throws: FrameError.streamNotNegotiated) { try receiver.payload(of: frame, allocator: ByteBufferAllocator()) }
        #expect(FrameError.streamNotNegotiated.code == .protocolViolation)
    }

    @Test("Corrupt, missing, lying, final and doubly-flagged stream pieces are refused, and the stream stays refused")
    func badStreamPieces() throws {
        func received(_ frames: [Frame]) -> FrameError? {
            var (_, receiver) = streamingPair()
            for frame in frames {
                do {
                    _ = try receiver.payload(of: frame, allocator: ByteBufferAllocator())
                } catch {
                    return error
                }
            }
            return nil
        }
        func pieces(_ envelopes: [Envelope]) throws -> [Frame] {
            var (sender, _) = streamingPair()
            return try envelopes.map { envelope in
                var wire = ByteBuffer()
                try sender.encode(envelope, into: &wire)
                return try #require(try FrameDecoder.readFrame(from: &wire, maxPayload: 1 << 20))
            }
        }
        func expectStreamError(_ frames: [Frame], mentioning text: String, sourceLocation: SourceLocation = #_sourceLocation) {
            guard case .badStreamPayload(let why)? = received(frames) else {
                Issue.record("expected badStreamPayload, got \(String(describing: received(frames)))", sourceLocation: sourceLocation)
                return
            }
            #expect(text.isEmpty || why.contains(text), "\(why)", sourceLocation: sourceLocation)
        }
        let value = String(repeating: "same words again ", count: 30)
        let good = try pieces([put(1, value), put(2, value)])
        #expect(received(good) == nil)
        // The second piece refers back into the first: without it, the history is missing.
        expectStreamError([good[1]], mentioning: "too far back")
        // Garbage.
        expectStreamError([Frame(flags: .stream, payload: buffer([0, 0, 0, 64, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]))], mentioning: "corrupt")
        // A declared size smaller or larger than what the piece inflates to.
        func declaring(_ size: UInt32, _ frame: Frame) -> Frame {
            var payload = frame.payload
            payload.setInteger(size, at: payload.readerIndex)
            return Frame(flags: .stream, payload: payload)
        }
        let plainSize = UInt32(EnvelopeCodec.encode(put(1, value)).readableBytes)
        expectStreamError([declaring(plainSize - 1, good[0])], mentioning: "bomb")
        expectStreamError([declaring(plainSize + 1, good[0])], mentioning: "inflated to")
        // A piece cut short (its end-of-block and flush bits missing) leaves the stream out of
        // step: refused at once or, when all its bytes came out, at the next piece.
        var cut = good[0].payload
        cut.moveWriterIndex(to: cut.writerIndex - 3)
        expectStreamError([Frame(flags: .stream, payload: cut), good[1]], mentioning: "")
        // A final block (what a per-frame deflate ends with) ends the stream: refused.
        expectStreamError([Frame(flags: .stream, payload: buffer([0, 0, 0, 1, 0x4B, 0x04, 0x00]))], mentioning: "final block")
        // After a refusal, even a good piece is refused: the stream is out of step.
        var (_, receiver) = streamingPair()
        #expect(throws: FrameError.self) {
            try receiver.payload(of: Frame(flags: .stream, payload: buffer([0, 0, 0, 9, 0xFF])), allocator: ByteBufferAllocator())
        }
        #expect(throws: FrameError.badStreamPayload("corrupt zlib data: an earlier frame of this stream was refused")) {
            try receiver.payload(of: good[0], allocator: ByteBufferAllocator())
        }
        #expect(received([Frame(flags: .stream, payload: buffer([0, 0]))]) == .badStreamPayload("missing the uncompressed length"))
        #expect(received([Frame(flags: .stream, payload: buffer([0xFF, 0, 0, 0]))]) == .frameTooLarge(size: 0xFF00_0000, max: Frame.defaultMaxPayload))
        #expect(received([Frame(flags: [.zlib, .stream], payload: good[0].payload)]) == .conflictingFlags(0x03))
        #expect(FrameError.conflictingFlags(0x03).code == .protocolViolation)
    }

    @Test("A server connection with the streams agreed answers many calls through them (EmbeddedChannel)")
    func serverConnectionOnEmbeddedChannel() throws {
        for serverStreams in [true, false] {
            var configuration = RPCServerConfiguration(host: "127.0.0.1", port: 0)
            configuration.compression = serverStreams ? .stream : .frame
            let channel = EmbeddedChannel()
            try TCPListener.addConnectionHandlers(
                to: channel.pipeline.syncOperations, configuration: configuration,
                tables: [.viewService(EchoViewService(log: CallLog()))], logger: quietLogger)
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).wait()
            var (client, reader) = streamingPair()
            var out = ByteBuffer(bytes: frameBytes(.hello(Hello(protocolVersion: 1, features: [.zlib, .deflateStream], maxFrameSize: 0))))
            try channel.writeInbound(out)
            var received = ByteBuffer()
            func next() throws -> (FrameFlags, Envelope)? {
                while let more = try channel.readOutbound(as: ByteBuffer.self) { received.writeImmutableBuffer(more) }
                guard let frame = try FrameDecoder.readFrame(from: &received, maxPayload: Frame.defaultMaxPayload) else { return nil }
                return (frame.flags, try EnvelopeCodec.decode(reader.payload(of: frame, allocator: ByteBufferAllocator())))
            }
            let hello = try #require(try next())
            #expect(hello.0 == [], "a HelloReply is never compressed")
            guard case .helloReply(let reply) = hello.1 else {
                Issue.record("expected a HelloReply, got \(hello.1)")
                return
            }
            #expect(reply.features == (serverStreams ? [.zlib, .deflateStream] : [.zlib]))
            guard serverStreams else {
                // Not agreed: a stream frame ends the connection with a Goodbye saying why.
                out.clear()
                try client.encode(.request(Request(callID: 1, call: .getView)), into: &out)
                try channel.writeInbound(out)
                channel.embeddedEventLoop.run()
                guard case (_, .goodbye(let goodbye))? = try next() else {
                    Issue.record("expected a Goodbye")
                    return
                }
                #expect(goodbye.code == .protocolViolation)
                #expect(goodbye.message.contains("not agreed"), "\(goodbye.message)")
                #expect(!channel.isActive)
                continue
            }
            // Calls in batches of 10 per read, as they arrive from a busy client.
            for batch in 0..<20 {
                out.clear()
                for n in UInt64(batch * 10 + 1)...UInt64(batch * 10 + 10) {
                    try client.encode(.request(Request(callID: n, call: .ping(PingArgs(server: "caller-\(n)", viewnum: n)))), into: &out)
                }
                try channel.writeInbound(out)
                for n in UInt64(batch * 10 + 1)...UInt64(batch * 10 + 10) {
                    let (flags, answer) = try #require(try next())
                    #expect(flags == .stream)
                    #expect(answer == .response(Response(callID: n, result: echoed(n, "caller-\(n)"))))
                }
            }
            #expect(channel.isActive)
            _ = try channel.finish(acceptAlreadyClosed: true)
        }
    }

    @Test(
        "RPCClient and RPCServer over loopback: streams when both offer them, otherwise as before",
        arguments: [(true, true), (true, false), (false, true)])
    func negotiation(clientStreams: Bool, serverStreams: Bool) async throws {
        let metrics = RPCMetrics(factory: NOOPMetricsHandler.instance)
        // The thresholds of the KV paths: below 64 KiB nothing is compressed per frame.
        try await LiveServer.with(configure: {
            $0.compression = serverStreams ? .stream : .frame
            $0.compressionThreshold = FrameCodec.latencyCompressionThreshold
            $0.metrics = metrics
        }) { live async throws in
            let client = live.client(configure: {
                $0.compression = clientStreams ? .stream : .frame
                $0.compressionThreshold = FrameCodec.latencyCompressionThreshold
            })
            var text = SampleText(seed: 5)
            // 200 calls, 20 in flight at a time, each carrying 1 KiB of JSON both ways.
            for round in 0..<10 {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for n in UInt64(round * 20 + 1)...UInt64(round * 20 + 20) {
                        let server = text.jsonRecord(id: Int(n), bytes: 1024)
                        group.addTask {
                            let result = try await client.call(.ping(PingArgs(server: server, viewnum: n)), timeout: .seconds(20))
                            #expect(result == echoed(n, server))
                        }
                    }
                    try await group.waitForAll()
                }
            }
            let inbound = metrics.traffic(.viewService, .inbound)
            let outbound = metrics.traffic(.viewService, .outbound)
            #expect(inbound.frames == 200)
            #expect(outbound.frames == 200)
            if clientStreams && serverStreams {
                #expect(inbound.wire * 3 < inbound.payload, "requests: \(inbound)")
                #expect(outbound.wire * 3 < outbound.payload, "replies: \(outbound)")
            } else {
                #expect(inbound.wire == inbound.payload, "requests: \(inbound)")
                #expect(outbound.wire == outbound.payload, "replies: \(outbound)")
            }
        }
    }
}
