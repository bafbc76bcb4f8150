import CZlib
import NIOCore

/// Why zlib could not compress or decompress a payload.
public enum ZlibError: Error, Sendable, Hashable, CustomStringConvertible {
    case initFailed(Int32)
    case corrupt(String)
    case tooLarge(limit: Int)
    case sizeMismatch(declared: Int, actual: Int)

    public var description: String {
        switch self {
        case .initFailed(let code): "zlib could not be initialised (code \(code))"
        case .corrupt(let why): "corrupt zlib data: \(why)"
        case .tooLarge(let limit): "decompressed data exceeds the declared size or the \(limit)-byte limit (zlib bomb?)"
        case .sizeMismatch(let declared, let actual): "zlib data inflated to \(actual) bytes, frame declared \(declared)"
        }
    }
}

/// A reusable zlib compressor (RFC 1950 streams); owns its `z_stream` and frees it in `deinit`.
final class ZlibDeflater {
    private var stream = z_stream()
    private var ready = false

    init(level: Int32 = 1) throws(ZlibError) {
        let rc = pbkv_deflateInit(&stream, level)
        guard rc == Z_OK else { throw .initFailed(rc) }
        ready = true
    }

    deinit { if ready { deflateEnd(&stream) } }

    /// Appends the zlib stream of `input`'s readable bytes to `output`.
    func compress(_ input: ByteBuffer, into output: inout ByteBuffer) throws(ZlibError) {
        deflateReset(&stream)
        let bound = Int(deflateBound(&stream, uLong(input.readableBytes)))
        var rc: Int32 = Z_OK
        input.withUnsafeReadableBytes { inBytes in
            _ = output.writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { outBytes in
                stream.next_in = UnsafeMutablePointer(mutating: inBytes.baseAddress?.assumingMemoryBound(to: Bytef.self))
                stream.avail_in = uInt(inBytes.count)
                stream.next_out = outBytes.baseAddress!.assumingMemoryBound(to: Bytef.self)
                stream.avail_out = uInt(bound)
                rc = deflate(&stream, Z_FINISH)
                let written = bound - Int(stream.avail_out)
                stream.next_in = nil
                stream.next_out = nil
                return rc == Z_STREAM_END ? written : 0
            }
        }
        // deflateBound guarantees room, so anything else is a zlib failure.
        if rc != Z_STREAM_END { throw .corrupt("deflate failed with code \(rc)") }
    }
}

/// A reusable, bounded zlib decompressor; owns its `z_stream` and frees it in `deinit`.
final class ZlibInflater {
    private var stream = z_stream()
    private var ready = false

    init() throws(ZlibError) {
        let rc = pbkv_inflateInit(&stream)
        guard rc == Z_OK else { throw .initFailed(rc) }
        ready = true
    }

    deinit { if ready { inflateEnd(&stream) } }

    /// Inflates `input` into a new buffer of exactly `declaredSize` bytes. Never writes more:
    /// output beyond `declaredSize` is a zlib bomb or a lie and is refused.
    func decompress(_ input: ByteBuffer, declaredSize: Int, allocator: ByteBufferAllocator) throws(ZlibError) -> ByteBuffer {
        inflateReset(&stream)
        var output = allocator.buffer(capacity: declaredSize + 1)
        var rc: Int32 = Z_OK
        var produced = 0
        // One spare byte of room: if inflate fills it, the data is longer than declared.
        input.withUnsafeReadableBytes { inBytes in
            _ = output.writeWithUnsafeMutableBytes(minimumWritableBytes: declaredSize + 1) { outBytes in
                stream.next_in = UnsafeMutablePointer(mutating: inBytes.baseAddress?.assumingMemoryBound(to: Bytef.self))
                stream.avail_in = uInt(inBytes.count)
                stream.next_out = outBytes.baseAddress!.assumingMemoryBound(to: Bytef.self)
                stream.avail_out = uInt(declaredSize + 1)
                rc = inflate(&stream, Z_FINISH)
                produced = declaredSize + 1 - Int(stream.avail_out)
                stream.next_in = nil
                stream.next_out = nil
                return min(produced, declaredSize)
            }
        }
        if produced > declaredSize { throw .tooLarge(limit: declaredSize) }
        switch rc {
        case Z_STREAM_END:
            guard produced == declaredSize else { throw .sizeMismatch(declared: declaredSize, actual: produced) }
            return output
        case Z_BUF_ERROR:
            throw .corrupt("stream truncated")
        default:
            let message = stream.msg.map { String(cString: $0) } ?? "inflate returned \(rc)"
            throw .corrupt(message)
        }
    }
}
