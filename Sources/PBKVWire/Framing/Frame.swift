import NIOCore
import PBKVCore

/// Flags in a frame header.
public struct FrameFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// The payload is `u32 BE uncompressed length` followed by a zlib (RFC 1950) stream.
    public static let zlib = FrameFlags(rawValue: 0x01)
    /// The payload is `u32 BE uncompressed length` followed by this frame's piece of the
    /// connection's deflate stream (`DeflateStream`); only once `FEATURE_DEFLATE_STREAM` is agreed.
    public static let stream = FrameFlags(rawValue: 0x02)
    /// Every flag this version knows; any other bit set is a protocol violation (and so are
    /// `zlib` and `stream` together).
    public static let known: FrameFlags = [.zlib, .stream]
}

/// One frame as read from the wire: flags and the (possibly compressed) payload.
///
/// ```
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                 payload length (u32, big endian)              |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |     flags     |  payload (length bytes) ...
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
/// With flag 0x01 (zlib) the payload is a u32 BE uncompressed length, then the zlib stream; with
/// flag 0x02 (stream) a u32 BE uncompressed length, then a piece of the connection's deflate stream.
public struct Frame: Sendable, Hashable {
    public var flags: FrameFlags
    public var payload: ByteBuffer

    public init(flags: FrameFlags = [], payload: ByteBuffer) {
        self.flags = flags
        self.payload = payload
    }

    /// Bytes before the payload: 4 length + 1 flags.
    public static let headerSize = 5
    /// The default maximum payload size, compressed or not: 16 MiB.
    public static let defaultMaxPayload = EncodedSize.defaultMaxFramePayload
}

/// A framing error: the connection cannot continue and is closed after a `Goodbye`.
public enum FrameError: Error, Sendable, Hashable, CustomStringConvertible {
    case frameTooLarge(size: Int, max: Int)
    case unknownFlags(UInt8)
    case truncatedFrame(expected: Int, received: Int)
    case compressionNotNegotiated
    case badCompressedPayload(String)
    case streamNotNegotiated
    case badStreamPayload(String)
    case conflictingFlags(UInt8)

    public var description: String {
        switch self {
        case .frameTooLarge(let size, let max):
            "frame of \(size) bytes exceeds the maximum of \(max) bytes (keep keys and values well below it; library users can raise maxPayload in the RPC configuration of both sides)"
        case .unknownFlags(let flags):
            "frame has unknown flag bits 0x\(String(flags, radix: 16)) (peer speaks a newer protocol?)"
        case .truncatedFrame(let expected, let received):
            "connection closed inside a frame: expected \(expected) bytes, got \(received)"
        case .compressionNotNegotiated:
            "compressed frame received but zlib was not agreed in the handshake"
        case .badCompressedPayload(let why):
            "compressed frame rejected: \(why)"
        case .streamNotNegotiated:
            "stream-compressed frame (flag 0x02) received but the deflate stream was not agreed in the handshake"
        case .badStreamPayload(let why):
            "stream-compressed frame rejected, the connection's deflate stream is unusable: \(why)"
        case .conflictingFlags(let flags):
            "frame flags 0x\(String(flags, radix: 16)) set both zlib (0x01) and stream (0x02); a frame is one or the other"
        }
    }

    /// The wire code a `Goodbye` carries for this error.
    public var code: Code {
        switch self {
        case .frameTooLarge: .frameTooLarge
        default: .protocolViolation
        }
    }
}

/// Splits a TCP byte stream into `Frame`s. The length is checked against `maxPayload`
/// before any payload byte is buffered, so a huge length costs nothing.
public final class FrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = Frame

    private let maxPayload: Int

    public init(maxPayload: Int = Frame.defaultMaxPayload) {
        self.maxPayload = maxPayload
    }

    public func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try Self.readFrame(from: &buffer, maxPayload: maxPayload) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    public func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        if buffer.readableBytes > 0 {
            let expected = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self).map { Int($0) + Frame.headerSize }
            let received = buffer.readableBytes
            buffer.moveReaderIndex(forwardBy: received)
            throw FrameError.truncatedFrame(expected: expected ?? Frame.headerSize, received: received)
        }
        return .needMoreData
    }

    /// Reads one whole frame from `buffer`, or nil (nothing consumed) if it is not all there yet.
    public static func readFrame(from buffer: inout ByteBuffer, maxPayload: Int) throws(FrameError) -> Frame? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self),
            let rawFlags = buffer.getInteger(at: buffer.readerIndex + 4, as: UInt8.self)
        else { return nil }
        guard Int(length) <= maxPayload else { throw .frameTooLarge(size: Int(length), max: maxPayload) }
        let flags = FrameFlags(rawValue: rawFlags)
        guard FrameFlags.known.isSuperset(of: flags) else { throw .unknownFlags(rawFlags) }
        guard buffer.readableBytes >= Frame.headerSize + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: Frame.headerSize)
        let payload = buffer.readSlice(length: Int(length))!
        return Frame(flags: flags, payload: payload)
    }
}

/// Turns envelopes into frame bytes and frames into envelopes: protobuf encoding, zlib above
/// a threshold once the handshake agreed it, the connection's deflate streams once agreed, and
/// the size limits. One per connection: its stream contexts are shared by copies, so never use
/// a copy of a codec that sends or receives stream frames on another connection.
public struct FrameCodec {
    /// Largest payload accepted, before and after decompression.
    public var maxPayload: Int
    /// Largest payload the peer accepts (from the handshake); nil until known.
    public var peerMaxPayload: Int?
    private var sendLimit: Int { min(maxPayload, peerMaxPayload ?? maxPayload) }
    /// Payloads at least this large are compressed when compression is on.
    public var compressionThreshold: Int
    /// Set once the handshake agreed zlib.
    public var compressionEnabled = false
    /// Set once the handshake agreed `FEATURE_DEFLATE_STREAM`: payloads up to
    /// `streamMaxPayload` are sent as pieces of this connection's outbound deflate stream, and
    /// stream frames are accepted.
    public var streamEnabled = false
    /// Largest payload sent through the stream; larger ones (state transfer chunks) follow the
    /// per-frame rules, so they do not push the small messages' history out of the 8 KiB window.
    public var streamMaxPayload = FrameCodec.defaultStreamMaxPayload
    /// True once sending through the stream failed: the peer's copy of it is out of step, so
    /// the connection must be closed.
    public private(set) var streamBroken = false

    private let arena = CArena()
    private var deflater: ZlibDeflater?
    private var inflater: ZlibInflater?
    private var streamDeflater: ZlibStreamDeflater?
    private var streamInflater: ZlibStreamInflater?
    private var scratch: ByteBuffer

    /// The default threshold: 1 KiB.
    public static let defaultCompressionThreshold = 1024
    /// The threshold pbkv uses on latency-sensitive calls (client operations, forwards): 64 KiB.
    public static let latencyCompressionThreshold = 64 * 1024
    /// The default `streamMaxPayload`: 64 KiB.
    public static let defaultStreamMaxPayload = 64 * 1024

    public init(maxPayload: Int = Frame.defaultMaxPayload, compressionThreshold: Int = FrameCodec.defaultCompressionThreshold) {
        self.maxPayload = maxPayload
        self.compressionThreshold = compressionThreshold
        self.scratch = ByteBufferAllocator().buffer(capacity: 256)
    }

    /// Appends the frame carrying `envelope` to `out`; `compressionThreshold` overrides the
    /// codec's threshold for this frame (e.g. a higher one on a latency-sensitive call).
    /// Returns the size of the protobuf payload before any compression.
    @discardableResult
    public mutating func encode(
        _ envelope: Envelope, into out: inout ByteBuffer, compressionThreshold threshold: Int? = nil
    ) throws(FrameError) -> Int {
        let headerIndex = out.writerIndex
        out.writeInteger(UInt32(0))
        out.writeInteger(UInt8(0))
        let payloadStart = out.writerIndex
        let size = EnvelopeCodec.encode(envelope, into: &out, arena: arena)
        // The limit holds for the inflated payload too (the receiver checks the declared size).
        guard size <= sendLimit else {
            out.moveWriterIndex(to: headerIndex)
            throw .frameTooLarge(size: size, max: sendLimit)
        }
        // Through the stream only if its worst case (incompressible data in stored blocks) fits
        // the peer's limit: once bytes went into the stream they must be sent.
        let compression: FrameFlags?
        if streamEnabled && size <= streamMaxPayload && size + size / 64 + 64 <= sendLimit {
            compression = .stream
        } else if compressionEnabled && size >= (threshold ?? compressionThreshold) {
            compression = .zlib
        } else {
            compression = nil
        }
        if let compression {
            // Re-encode compressed: copy the plain payload aside, deflate it in place of itself.
            scratch.clear()
            var plain = out.getSlice(at: payloadStart, length: size)!
            scratch.writeBuffer(&plain)
            out.moveWriterIndex(to: payloadStart)
            out.writeInteger(UInt32(size))
            do {
                if compression == .stream {
                    if streamDeflater == nil { streamDeflater = try ZlibStreamDeflater() }
                    try streamDeflater!.compress(scratch, into: &out)
                } else {
                    if deflater == nil { deflater = try ZlibDeflater() }
                    try deflater!.compress(scratch, into: &out)
                }
            } catch {
                out.moveWriterIndex(to: headerIndex)
                guard compression == .stream else { throw .badCompressedPayload(error.description) }
                streamBroken = true
                throw .badStreamPayload(error.description)
            }
            out.setInteger(compression.rawValue, at: headerIndex + 4)
        }
        let payloadLength = out.writerIndex - payloadStart
        guard payloadLength <= sendLimit else {
            if compression == .stream { streamBroken = true }  // what went into the stream is not sent
            out.moveWriterIndex(to: headerIndex)
            throw .frameTooLarge(size: payloadLength, max: sendLimit)
        }
        out.setInteger(UInt32(payloadLength), at: headerIndex)
        return size
    }

    /// The plain protobuf payload of `frame`, inflated if it is compressed (per frame, or as
    /// the next piece of the connection's inbound deflate stream).
    public mutating func payload(of frame: Frame, allocator: ByteBufferAllocator) throws(FrameError) -> ByteBuffer {
        if frame.flags.isEmpty { return frame.payload }
        let streamed = frame.flags.contains(.stream)
        if streamed {
            guard !frame.flags.contains(.zlib) else { throw .conflictingFlags(frame.flags.rawValue) }
            guard streamEnabled else { throw .streamNotNegotiated }
        } else {
            guard compressionEnabled else { throw .compressionNotNegotiated }
        }
        func refusal(_ why: String) -> FrameError { streamed ? .badStreamPayload(why) : .badCompressedPayload(why) }
        var payload = frame.payload
        guard let declared = payload.readInteger(as: UInt32.self) else { throw refusal("missing the uncompressed length") }
        guard Int(declared) <= maxPayload else {
            throw .frameTooLarge(size: Int(declared), max: maxPayload)
        }
        do {
            if streamed {
                if streamInflater == nil { streamInflater = try ZlibStreamInflater() }
                return try streamInflater!.decompress(payload, declaredSize: Int(declared), allocator: allocator)
            }
            if inflater == nil { inflater = try ZlibInflater() }
            return try inflater!.decompress(payload, declaredSize: Int(declared), allocator: allocator)
        } catch {
            throw refusal(error.description)
        }
    }
}
