import CLibDeflate
import CZlib
import NIOCore
import PBKVCore

/// Why zlib could not compress or decompress a payload.
public enum ZlibError: Error, Sendable, Hashable, CustomStringConvertible {
    case initFailed(Int32)
    /// libdeflate could not allocate a compressor or decompressor.
    case outOfMemory
    case corrupt(String)
    case tooLarge(limit: Int)
    case sizeMismatch(declared: Int, actual: Int)

    public var description: String {
        switch self {
        case .initFailed(let code): "zlib could not be initialised (code \(code))"
        case .outOfMemory: "libdeflate could not allocate its state: the process is out of memory"
        case .corrupt(let why): "corrupt zlib data: \(why)"
        case .tooLarge(let limit): "decompressed data exceeds the declared size or the \(limit)-byte limit (zlib bomb?)"
        case .sizeMismatch(let declared, let actual): "zlib data inflated to \(actual) bytes, frame declared \(declared)"
        }
    }
}

/// A reusable compressor of whole frames into zlib streams (RFC 1950), on libdeflate: the same
/// format as zlib's, written about twice as fast at level 1 (a transfer's chunks are where it
/// shows). Owns its compressor and frees it in `deinit`.
final class ZlibDeflater {
    private let compressor: OpaquePointer

    init(level: Int32 = 1) throws(ZlibError) {
        guard let compressor = libdeflate_alloc_compressor(level) else { throw .outOfMemory }
        self.compressor = compressor
    }

    deinit { libdeflate_free_compressor(compressor) }

    /// Appends the zlib stream of `input`'s readable bytes to `output`.
    func compress(_ input: ByteBuffer, into output: inout ByteBuffer) throws(ZlibError) {
        let bound = libdeflate_zlib_compress_bound(compressor, input.readableBytes)
        var written = 0
        input.withUnsafeReadableBytes { inBytes in
            _ = output.writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { outBytes in
                written = libdeflate_zlib_compress(compressor, inBytes.baseAddress, inBytes.count, outBytes.baseAddress, bound)
                return written
            }
        }
        // The bound guarantees room, so 0 is a libdeflate failure.
        if written == 0 { throw .corrupt("libdeflate could not compress \(input.readableBytes) bytes into \(bound)") }
    }
}

/// A reusable, bounded decompressor of whole zlib frames, on libdeflate; owns its decompressor
/// and frees it in `deinit`.
final class ZlibInflater {
    private let decompressor: OpaquePointer

    init() throws(ZlibError) {
        guard let decompressor = libdeflate_alloc_decompressor() else { throw .outOfMemory }
        self.decompressor = decompressor
    }

    deinit { libdeflate_free_decompressor(decompressor) }

    /// Inflates `input` into a new buffer of exactly `declaredSize` bytes. Never writes more:
    /// output beyond `declaredSize` is a zlib bomb or a lie and is refused.
    func decompress(_ input: ByteBuffer, declaredSize: Int, allocator: ByteBufferAllocator) throws(ZlibError) -> ByteBuffer {
        var output = allocator.buffer(capacity: declaredSize)
        var result = LIBDEFLATE_SUCCESS
        var produced = 0
        input.withUnsafeReadableBytes { inBytes in
            _ = output.writeWithUnsafeMutableBytes(minimumWritableBytes: declaredSize) { outBytes in
                result = libdeflate_zlib_decompress(
                    decompressor, inBytes.baseAddress, inBytes.count, outBytes.baseAddress, declaredSize, &produced)
                return result == LIBDEFLATE_SUCCESS ? produced : 0
            }
        }
        switch result {
        case LIBDEFLATE_SUCCESS:
            guard produced == declaredSize else { throw .sizeMismatch(declared: declaredSize, actual: produced) }
            return output
        case LIBDEFLATE_INSUFFICIENT_SPACE:
            throw .tooLarge(limit: declaredSize)
        default:
            throw .corrupt("not a complete zlib stream (truncated, or a bad header, block or checksum)")
        }
    }
}

/// The fixed parameters of the per-connection deflate streams (`FEATURE_DEFLATE_STREAM`, frame
/// flag 0x02): raw deflate (RFC 1951, no zlib header or trailer), one stream per direction, a
/// sync flush per frame. Part of the protocol: a receiver inflates with exactly this window.
public enum DeflateStream {
    /// log2 of the window: 8 KiB of history. A sender must not refer further back (a receiver
    /// refuses it as corrupt). 4 KiB left ~6 % more bytes on 1 KiB JSON records (0.259× plain
    /// instead of 0.243×) for ~16 KiB less memory per connection end.
    public static let windowBits: Int32 = 13
    /// deflate's memLevel (a 4 KiB hash table, a 4 KiB symbol buffer): the sender's choice, not
    /// the protocol's; 8 (zlib's default) compressed small frames no better.
    public static let memLevel: Int32 = 4
    /// The best level: for a slow link bytes matter more than CPU (level 6 left ~2 % more bytes
    /// on 1 KiB JSON records for ~20 % less deflate time; level 1 ~25 % more bytes).
    public static let level: Int32 = 9
    /// The empty stored block a sync flush ends with: the sender leaves it out of each frame,
    /// the receiver appends it before inflating (as WebSocket's permessage-deflate does).
    static let syncTrailer: [UInt8] = [0x00, 0x00, 0xFF, 0xFF]
}

/// The sending half of a connection's deflate stream: one context kept across frames, each
/// frame's bytes ended by a sync flush (so the peer can inflate it on arrival) and sent without
/// the flush's 4-byte trailer. Owns its `z_stream` and frees it in `deinit`.
final class ZlibStreamDeflater {
    private var stream = z_stream()
    private var ready = false

    init(level: Int32 = DeflateStream.level) throws(ZlibError) {
        let rc = pbkv_deflateInit2(&stream, level, -DeflateStream.windowBits, DeflateStream.memLevel)
        guard rc == Z_OK else { throw .initFailed(rc) }
        ready = true
    }

    deinit { if ready { deflateEnd(&stream) } }

    /// Appends the stream's continuation for `input`'s readable bytes to `output`, up to and
    /// including a sync flush, less the flush's trailer `00 00 FF FF`.
    func compress(_ input: ByteBuffer, into output: inout ByteBuffer) throws(ZlibError) {
        let start = output.writerIndex
        var rc: Int32 = Z_OK
        var full = false
        input.withUnsafeReadableBytes { inBytes in
            stream.setInput(inBytes)
            repeat {
                // deflateBound is for a whole stream; the flush adds a few bytes. Loop while the room ran out.
                let room = Int(deflateBound(&stream, uLong(stream.avail_in))) + 64
                _ = output.writeWithUnsafeMutableBytes(minimumWritableBytes: room) { outBytes in
                    stream.setOutput(outBytes, room: room)
                    rc = deflate(&stream, Z_SYNC_FLUSH)
                    full = stream.avail_out == 0
                    return room - Int(stream.avail_out)
                }
            } while rc == Z_OK && full
            stream.detachBuffers()
        }
        // Z_BUF_ERROR: nothing to do (an empty input right after a flush) — no bytes, a valid piece.
        guard rc == Z_OK || rc == Z_BUF_ERROR else { throw .corrupt("deflate failed with code \(rc)") }
        let written = output.writerIndex - start
        if written == 0 { return }
        guard written >= 4, output.getBytes(at: output.writerIndex - 4, length: 4) == DeflateStream.syncTrailer else {
            throw .corrupt("deflate's sync flush did not end with 00 00 FF FF")
        }
        output.moveWriterIndex(to: output.writerIndex - 4)
    }
}

/// The receiving half of a connection's deflate stream: inflates each frame's piece (with the
/// sync-flush trailer appended) into exactly its declared size. After any error it refuses
/// everything (the stream is out of step; the connection must end). Owns its `z_stream`.
final class ZlibStreamInflater {
    private var stream = z_stream()
    private var ready = false
    private var failed = false

    init() throws(ZlibError) {
        let rc = pbkv_inflateInit2(&stream, -DeflateStream.windowBits)
        guard rc == Z_OK else { throw .initFailed(rc) }
        ready = true
    }

    deinit { if ready { inflateEnd(&stream) } }

    /// Inflates one frame's piece of the stream into a new buffer of exactly `declaredSize`
    /// bytes. Never writes more: a piece that inflates beyond it is a bomb or a lie.
    func decompress(_ input: ByteBuffer, declaredSize: Int, allocator: ByteBufferAllocator) throws(ZlibError) -> ByteBuffer {
        guard !failed else { throw .corrupt("an earlier frame of this stream was refused") }
        failed = true  // until this piece is proven good
        var leftover = 0
        let (output, produced, rc) = try stream.inflateBounded(declaredSize: declaredSize, allocator: allocator) { stream in
            var rc = input.withUnsafeReadableBytes { inBytes in
                stream.setInput(inBytes)
                return inflate(&stream, Z_SYNC_FLUSH)
            }
            leftover = Int(stream.avail_in)
            if (rc == Z_OK || rc == Z_BUF_ERROR) && leftover == 0 && stream.avail_out > 0 {
                rc = DeflateStream.syncTrailer.withUnsafeBytes { trailer in
                    stream.setInput(trailer)
                    return inflate(&stream, Z_SYNC_FLUSH)
                }
                leftover = Int(stream.avail_in)
            }
            return rc
        }
        switch rc {
        case Z_OK, Z_BUF_ERROR:
            guard leftover == 0 else { throw .corrupt("the piece does not end on a sync flush") }
            guard produced == declaredSize else { throw .sizeMismatch(declared: declaredSize, actual: produced) }
            failed = false
            return output
        case Z_STREAM_END:
            throw .corrupt("the piece ends the deflate stream (a final block); a connection's stream never ends")
        default:
            throw stream.inflateFailure(rc)
        }
    }
}

extension z_stream {
    /// Points the stream's input at `bytes` (valid only while they are).
    fileprivate mutating func setInput(_ bytes: UnsafeRawBufferPointer) {
        next_in = UnsafeMutablePointer(mutating: bytes.baseAddress?.assumingMemoryBound(to: Bytef.self))
        avail_in = uInt(bytes.count)
    }

    /// Points the stream's output at the first `room` bytes of `bytes` (valid only while they are).
    fileprivate mutating func setOutput(_ bytes: UnsafeMutableRawBufferPointer, room: Int) {
        next_out = bytes.baseAddress!.assumingMemoryBound(to: Bytef.self)
        avail_out = uInt(room)
    }

    /// Forgets the buffers of the last call, so that no pointer outlives them.
    fileprivate mutating func detachBuffers() {
        next_in = nil
        next_out = nil
    }

    /// Inflates into a new buffer of exactly `declaredSize` bytes: `run` sets the input and calls
    /// `inflate`, returning its code. The output has one spare byte of room; if inflate fills it,
    /// the data is longer than declared (a zlib bomb or a lie) and is refused. Returns the buffer,
    /// the bytes inflate produced and its code.
    fileprivate mutating func inflateBounded(
        declaredSize: Int, allocator: ByteBufferAllocator, _ run: (inout z_stream) -> Int32
    ) throws(ZlibError) -> (output: ByteBuffer, produced: Int, rc: Int32) {
        var output = allocator.buffer(capacity: declaredSize + 1)
        var rc: Int32 = Z_OK
        var produced = 0
        _ = output.writeWithUnsafeMutableBytes(minimumWritableBytes: declaredSize + 1) { outBytes in
            setOutput(outBytes, room: declaredSize + 1)
            rc = run(&self)
            produced = declaredSize + 1 - Int(avail_out)
            detachBuffers()
            return min(produced, declaredSize)
        }
        if produced > declaredSize { throw .tooLarge(limit: declaredSize) }
        return (output, produced, rc)
    }

    /// The error of a failed `inflate`: zlib's own message, or its code.
    fileprivate func inflateFailure(_ rc: Int32) -> ZlibError {
        .corrupt(msg.map { String(cString: $0) } ?? "inflate returned \(rc)")
    }
}

/// What a process offers in its handshakes (`--compression off|frame|stream`): nothing; zlib
/// per frame above a size threshold (the default); or, for slow links, the per-connection
/// deflate streams too (frames too large for the stream still go per frame).
public enum CompressionMode: String, Sendable, CaseIterable {
    case off
    case frame
    case stream

    /// The features offered in a handshake.
    public var offered: [Feature] {
        switch self {
        case .off: []
        case .frame: [.zlib]
        case .stream: [.zlib, .deflateStream]
        }
    }

    /// The features both sides use: those of the peer's that this mode offers too.
    public func agreed(with peer: [Feature]) -> [Feature] { offered.filter(peer.contains) }
}
