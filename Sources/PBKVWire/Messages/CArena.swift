import CPBKVProto

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
import PBKVCore
#endif

/// Scratch memory for building a protobuf-c message tree from Swift values: C structs, struct
/// arrays and copies of string bytes all live here until the message is packed, then go
/// together. Only the codec uses it; nothing allocated here escapes an encode call.
final class CArena {
    private var blocks: [UnsafeMutableRawPointer] = []
    private var cursor: UnsafeMutableRawPointer?
    private var remaining = 0
    /// Whether `blocks[0]` is a regular block (not a large one-off allocation).
    private var firstIsBlockSized = false
    private static let blockSize = 16 * 1024

    init() {}

    deinit {
        for block in blocks { free(block) }
    }

    /// Forgets every allocation but keeps the first block for the next message (one arena per
    /// connection, reset after each encode: no malloc per message for small ones).
    func reset() {
        guard let first = blocks.first else { return }
        for block in blocks.dropFirst() { free(block) }
        blocks.removeAll(keepingCapacity: true)
        if firstIsBlockSized {
            blocks.append(first)
            cursor = first
            remaining = Self.blockSize
        } else {
            free(first)
            cursor = nil
            remaining = 0
        }
    }

    /// Raw, zero-filled memory for `count` values of `T`, suitably aligned.
    func allocate<T>(_: T.Type, count: Int = 1) -> UnsafeMutablePointer<T> {
        let size = max(1, MemoryLayout<T>.stride * count)
        let raw = allocateRaw(size: size, alignment: max(MemoryLayout<T>.alignment, 8))
        memset(raw, 0, size)
        return raw.bindMemory(to: T.self, capacity: count)
    }

    /// Uninitialized bytes that live until the next `reset()`.
    func bytes(count: Int) -> UnsafeMutablePointer<UInt8> {
        allocateRaw(size: max(1, count), alignment: 1).assumingMemoryBound(to: UInt8.self)
    }

    /// The UTF-8 bytes of `string` as a protobuf `bytes` value (copied; NUL bytes kept).
    func binary(_ string: String) -> ProtobufCBinaryData {
        var string = string
        return string.withUTF8 { utf8 in
            guard utf8.count > 0 else { return ProtobufCBinaryData(len: 0, data: nil) }
            let dest = allocateRaw(size: utf8.count, alignment: 1)
            dest.copyMemory(from: utf8.baseAddress!, byteCount: utf8.count)
            return ProtobufCBinaryData(len: utf8.count, data: dest.assumingMemoryBound(to: UInt8.self))
        }
    }

    /// A copy of `raw` as a protobuf `bytes` value.
    func binary(_ raw: UnsafeRawBufferPointer) -> ProtobufCBinaryData {
        guard let source = raw.baseAddress, raw.count > 0 else { return ProtobufCBinaryData(len: 0, data: nil) }
        let dest = allocateRaw(size: raw.count, alignment: 1)
        dest.copyMemory(from: source, byteCount: raw.count)
        return ProtobufCBinaryData(len: raw.count, data: dest.assumingMemoryBound(to: UInt8.self))
    }

    /// `string` as a NUL-terminated C string for a protobuf `string` field. Such fields carry
    /// names and messages pbkv creates itself; anything after a NUL byte would be cut off, so
    /// NUL bytes are replaced by "?" beforehand (user data travels in `bytes` fields).
    func cString(_ string: String) -> UnsafeMutablePointer<CChar>? {
        guard !string.isEmpty else { return nil }
        var string = string
        if string.utf8.contains(0) { string = string.replacingNULs() }
        return string.withUTF8 { utf8 in
            let dest = allocateRaw(size: utf8.count + 1, alignment: 1)
            dest.copyMemory(from: utf8.baseAddress!, byteCount: utf8.count)
            dest.storeBytes(of: 0, toByteOffset: utf8.count, as: UInt8.self)
            return dest.assumingMemoryBound(to: CChar.self)
        }
    }

    private func allocateRaw(size: Int, alignment: Int) -> UnsafeMutableRawPointer {
        if size > Self.blockSize / 4 {
            let block = malloc(size)!
            if blocks.isEmpty { firstIsBlockSized = false }
            blocks.append(block)
            return block
        }
        if let cursor {
            let aligned = cursor.alignedUp(toMultipleOf: alignment)
            let padding = aligned - cursor
            if padding + size <= remaining {
                self.cursor = aligned + size
                remaining -= padding + size
                return aligned
            }
        }
        let block = malloc(Self.blockSize)!
        if blocks.isEmpty { firstIsBlockSized = true }
        blocks.append(block)
        cursor = block + size
        remaining = Self.blockSize - size
        return block
    }
}

extension String {
    fileprivate func replacingNULs() -> String {
        String(decoding: utf8.map { $0 == 0 ? 0x3F : $0 }, as: UTF8.self)
    }
}
