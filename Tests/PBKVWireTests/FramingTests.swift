import NIOCore
import NIOEmbedded
import NIOTestUtils
import PBKVCore
import PBKVWire
import Testing

private let repetitive = String(repeating: "the quick brown fox jumps over the lazy dog; ", count: 1_000)  // ~45 KB

private func putEnvelope(_ value: String, callID: UInt64 = 1) -> Envelope {
    .request(Request(callID: callID, call: .put(key: "key", value: value, id: RequestID(clientID: 1, seq: callID))))
}

@Suite("Framing")
struct FramingTests {
    @Test("FrameDecoder splits plain frames fed byte by byte, in batches and all at once")
    func decoderVerifierPlain() throws {
        let payloads: [[UInt8]] = [
            [], [0x42], Array("hello".utf8), Array(repeating: 0xAB, count: 3_000),
            bytes(of: EnvelopeCodec.encode(putEnvelope("v"))),
        ]
        var pairs: [(ByteBuffer, [Frame])] = payloads.map { payload in
            (buffer(frameBytes(payload: payload)), [Frame(flags: [], payload: buffer(payload))])
        }
        // Several frames in one input.
        pairs.append((
            buffer(frameBytes(payload: [1, 2, 3]) + frameBytes(payload: []) + frameBytes(payload: [4])),
            [Frame(payload: buffer([1, 2, 3])), Frame(payload: buffer([])), Frame(payload: buffer([4]))]
        ))
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs, decoderFactory: { FrameDecoder() })
    }

    @Test("FrameDecoder passes zlib-flagged frames through with their flag")
    func decoderVerifierZlib() throws {
        var codec = FrameCodec(compressionThreshold: 0)
        codec.compressionEnabled = true
        var pairs: [(ByteBuffer, [Frame])] = []
        for value in ["", "v", repetitive] {
            var encoded = ByteBuffer()
            try codec.encode(putEnvelope(value), into: &encoded)
            let raw = bytes(of: encoded)
            #expect(raw[4] == 0x01)
            // The expected frame, read off the header by hand: length, flags, payload.
            let length = Int(raw[0]) << 24 | Int(raw[1]) << 16 | Int(raw[2]) << 8 | Int(raw[3])
            #expect(length == raw.count - 5)
            pairs.append((buffer(raw), [Frame(flags: .zlib, payload: buffer(Array(raw[5...])))]))
        }
        pairs.append((
            buffer(frameBytes(flags: 0x01, payload: [9, 9]) + frameBytes(payload: [8])),
            [Frame(flags: .zlib, payload: buffer([9, 9])), Frame(payload: buffer([8]))]
        ))
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs, decoderFactory: { FrameDecoder() })
    }

    @Test("A frame above the maximum is refused from its header alone")
    func tooLargeFromHeader() throws {
        var header = buffer(Array(frameBytes(payload: Array(repeating: 0, count: 1_001)).prefix(5)))
        #expect(throws: FrameError.frameTooLarge(size: 1_001, max: 1_000)) {
            try FrameDecoder.readFrame(from: &header, maxPayload: 1_000)
        }
        var exact = buffer(frameBytes(payload: Array(repeating: 7, count: 1_000)))
        #expect(try FrameDecoder.readFrame(from: &exact, maxPayload: 1_000)?.payload.readableBytes == 1_000)
        #expect(FrameError.frameTooLarge(size: 1, max: 0).code == .frameTooLarge)
    }

    @Test("Unknown flag bits are refused", arguments: [UInt8(0x04), 0x80, 0x81, 0xFF])
    func unknownFlags(flags: UInt8) {
        var input = buffer(frameBytes(flags: flags, payload: [1]))
        #expect(throws: FrameError.unknownFlags(flags)) { try FrameDecoder.readFrame(from: &input, maxPayload: 100) }
        #expect(FrameError.unknownFlags(flags).code == .protocolViolation)
    }

    @Test("An incomplete frame consumes nothing")
    func incomplete() throws {
        let whole = frameBytes(payload: Array(repeating: 3, count: 100))
        for cut in [0, 1, 4, 5, 50, 104] {
            var input = buffer(Array(whole.prefix(cut)))
            #expect(try FrameDecoder.readFrame(from: &input, maxPayload: 1_000) == nil)
            #expect(input.readableBytes == cut)
        }
    }

    @Test("End of stream inside a frame is a truncated-frame error")
    func truncatedAtEOF() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder()))
        try channel.writeInbound(buffer(frameBytes(payload: [1, 2]) + Array(frameBytes(payload: Array(repeating: 0, count: 100)).prefix(15))))
        #expect(try channel.readInbound(as: Frame.self) == Frame(payload: buffer([1, 2])))
        #expect(throws: FrameError.truncatedFrame(expected: 105, received: 15)) { try channel.finish() }
    }

    @Test("Above the threshold with zlib agreed: flag set, smaller than plain, same envelope back")
    func compressedRoundTrip() throws {
        let envelope = putEnvelope(repetitive, callID: 99)
        let plainSize = EnvelopeCodec.encode(envelope).readableBytes
        var sender = FrameCodec()
        sender.compressionEnabled = true
        var wire = ByteBuffer()
        try sender.encode(envelope, into: &wire)
        #expect(wire.getInteger(at: 4, as: UInt8.self) == FrameFlags.zlib.rawValue)
        #expect(wire.readableBytes < plainSize / 5)

        var receiver = FrameCodec()
        receiver.compressionEnabled = true
        let frame = try #require(try FrameDecoder.readFrame(from: &wire, maxPayload: Frame.defaultMaxPayload))
        #expect(wire.readableBytes == 0)
        #expect(frame.flags == .zlib)
        // The payload starts with the uncompressed length.
        #expect(frame.payload.getInteger(at: frame.payload.readerIndex, as: UInt32.self) == UInt32(plainSize))
        let payload = try receiver.payload(of: frame, allocator: ByteBufferAllocator())
        #expect(payload.readableBytes == plainSize)
        #expect(try EnvelopeCodec.decode(payload) == envelope)

        // The same codec keeps working for the next frames (the z_streams are reused).
        for i in 0..<3 {
            let next = putEnvelope(repetitive + "\(i)", callID: UInt64(i))
            var more = ByteBuffer()
            try sender.encode(next, into: &more)
            let f = try #require(try FrameDecoder.readFrame(from: &more, maxPayload: Frame.defaultMaxPayload))
            #expect(try EnvelopeCodec.decode(receiver.payload(of: f, allocator: ByteBufferAllocator())) == next)
        }
    }

    @Test("Below the threshold, or without zlib agreed, frames are plain")
    func plainFrames() throws {
        var codec = FrameCodec(compressionThreshold: 1024)
        codec.compressionEnabled = true
        let small = putEnvelope("small")
        var wire = ByteBuffer()
        try codec.encode(small, into: &wire)
        #expect(wire.getInteger(at: 4, as: UInt8.self) == 0)
        #expect(bytes(of: wire) == frameBytes(small))

        var off = FrameCodec(compressionThreshold: 16)
        var big = ByteBuffer()
        try off.encode(putEnvelope(repetitive), into: &big)
        #expect(big.getInteger(at: 4, as: UInt8.self) == 0)
        let frame = try #require(try FrameDecoder.readFrame(from: &big, maxPayload: Frame.defaultMaxPayload))
        #expect(try EnvelopeCodec.decode(off.payload(of: frame, allocator: ByteBufferAllocator())) == putEnvelope(repetitive))
    }

    @Test("A compressed frame is refused when zlib was not agreed")
    func compressedWithoutAgreement() throws {
        var sender = FrameCodec(compressionThreshold: 0)
        sender.compressionEnabled = true
        var wire = ByteBuffer()
        try sender.encode(putEnvelope("x"), into: &wire)
        let frame = try #require(try FrameDecoder.readFrame(from: &wire, maxPayload: 1 << 20))
        var receiver = FrameCodec()
        #expect(throws: FrameError.compressionNotNegotiated) { try receiver.payload(of: frame, allocator: ByteBufferAllocator()) }
    }

    @Test("Corrupt, truncated, lying and oversized zlib payloads are refused")
    func badCompressedPayloads() throws {
        var sender = FrameCodec(compressionThreshold: 0)
        sender.compressionEnabled = true
        let big = String(repeating: "a", count: 200_000)
        var wire = ByteBuffer()
        try sender.encode(putEnvelope(big), into: &wire)
        let good = try #require(try FrameDecoder.readFrame(from: &wire, maxPayload: 1 << 20))
        let compressed = bytes(of: good.payload)
        let declared = Array(compressed.prefix(4))
        let stream = Array(compressed.dropFirst(4))

        var receiver = FrameCodec(maxPayload: 1 << 20)
        receiver.compressionEnabled = true
        func payload(_ raw: [UInt8]) throws(FrameError) -> ByteBuffer {
            try receiver.payload(of: Frame(flags: .zlib, payload: buffer(raw)), allocator: ByteBufferAllocator())
        }
        #expect(try payload(compressed).readableBytes > 200_000)

        func expectCompressedError(_ raw: [UInt8], mentioning text: String, sourceLocation: SourceLocation = #_sourceLocation) {
            do {
                _ = try payload(raw)
                Issue.record("expected a rejected payload", sourceLocation: sourceLocation)
            } catch {
                guard case .badCompressedPayload(let why) = error else {
                    Issue.record("unexpected \(error)", sourceLocation: sourceLocation)
                    return
                }
                #expect(why.contains(text), "\(why)", sourceLocation: sourceLocation)
                #expect(error.code == .protocolViolation, sourceLocation: sourceLocation)
            }
        }
        expectCompressedError([0, 0, 0], mentioning: "length")
        expectCompressedError([0, 0, 0, 10] + [0xDE, 0xAD, 0xBE, 0xEF, 0x00, 0x11], mentioning: "corrupt")
        expectCompressedError(declared + stream.prefix(stream.count / 2), mentioning: "truncated")
        // A bomb: declares 100 bytes, inflates to more than 200 KB; inflating stops at 101.
        expectCompressedError([0, 0, 0, 100] + stream, mentioning: "bomb")
        // Declares more than it holds.
        let actual = Int(UInt32(declared[0]) << 24 | UInt32(declared[1]) << 16 | UInt32(declared[2]) << 8 | UInt32(declared[3]))
        let more = UInt32(actual + 10)
        expectCompressedError([UInt8(more >> 24), UInt8(truncatingIfNeeded: more >> 16), UInt8(truncatingIfNeeded: more >> 8), UInt8(truncatingIfNeeded: more)] + stream,
                              mentioning: "declared")
        // Declares more than the maximum: refused before inflating.
        #expect(throws: FrameError.frameTooLarge(size: 0xFFFF_FFFF, max: 1 << 20)) { try payload([0xFF, 0xFF, 0xFF, 0xFF] + stream) }
        // And the receiver still works afterwards.
        #expect(try payload(compressed).readableBytes == actual)
    }

    @Test("Compression does not sneak a payload above the maximum past the limit")
    func compressedAboveMaximum() throws {
        // 5,000 repetitive bytes deflate to far below 1,000, but inflate to above it: a peer with the
        // same maximum would refuse the frame (and close the connection), so the sender must refuse it.
        let envelope = putEnvelope(String(repeating: "a", count: 5_000))
        var sender = FrameCodec(maxPayload: 1_000, compressionThreshold: 0)
        sender.compressionEnabled = true
        var out = ByteBuffer()
        #expect(throws: FrameError.self) { try sender.encode(envelope, into: &out) }
        #expect(out.readableBytes == 0)
        // Just below the limit it goes through, compressed, and the peer accepts it.
        let fits = putEnvelope(String(repeating: "a", count: 900))
        try sender.encode(fits, into: &out)
        #expect(out.getInteger(at: 4, as: UInt8.self) == FrameFlags.zlib.rawValue)
        var receiver = FrameCodec(maxPayload: 1_000)
        receiver.compressionEnabled = true
        let frame = try #require(try FrameDecoder.readFrame(from: &out, maxPayload: 1_000))
        #expect(try EnvelopeCodec.decode(receiver.payload(of: frame, allocator: ByteBufferAllocator())) == fits)
    }

    @Test("Encoding refuses a payload above the maximum and leaves the buffer as it was")
    func encodeTooLarge() throws {
        var codec = FrameCodec(maxPayload: 100)
        var out = ByteBuffer(bytes: [1, 2, 3])
        #expect(throws: FrameError.self) { try codec.encode(putEnvelope(String(repeating: "x", count: 200)), into: &out) }
        #expect(bytes(of: out) == [1, 2, 3])
        try codec.encode(putEnvelope("ok"), into: &out)
        #expect(bytes(of: out) == [1, 2, 3] + frameBytes(putEnvelope("ok")))
    }
}
