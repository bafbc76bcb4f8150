/// Keys and values of a transfer chunk, held as the bytes of `TransferChunk.packed_entries`:
/// for each entry `varint(key length) key varint(value length) value`. A primary fills it by
/// copying records straight from its store, the codec sends the bytes as they are, and a
/// backup loads them straight into its store: no `Entry` or `String` per key on the way.
///
/// Every instance holds well-formed records of valid UTF-8: built from entries, appended to
/// with `append`, or checked by `init(validating:)` (what the decoder uses).
public struct PackedEntries: Sendable, Hashable {
    /// The packed records.
    public private(set) var bytes: [UInt8] = []
    /// Number of entries.
    public private(set) var count = 0
    /// Key and value bytes of every entry, without the length prefixes.
    public private(set) var textBytes = 0

    public init() {}

    public init(_ entries: [Entry]) {
        for entry in entries {
            var key = entry.key
            var value = entry.value
            key.withUTF8 { k in value.withUTF8 { v in append(key: UnsafeRawBufferPointer(k), value: UnsafeRawBufferPointer(v)) } }
        }
    }

    /// Checks `raw` (lengths within bounds, keys and values valid UTF-8) and keeps a copy.
    public init(validating raw: UnsafeRawBufferPointer) throws(PackedEntriesError) {
        var reader = PackedEntries.Reader(raw)
        var count = 0
        var text = 0
        while !reader.isAtEnd {
            let (key, value) = try reader.next()
            guard PackedEntries.isValidUTF8(key) else { throw .invalidUTF8("key") }
            guard PackedEntries.isValidUTF8(value) else { throw .invalidUTF8("value") }
            count += 1
            text += key.count + value.count
        }
        bytes = [UInt8](unsafeUninitializedCapacity: raw.count) { out, initialized in
            if raw.count > 0 { UnsafeMutableRawBufferPointer(out).copyMemory(from: raw) }
            initialized = raw.count
        }
        self.count = count
        textBytes = text
    }

    public var isEmpty: Bool { count == 0 }

    /// Reserves room for `byteCount` packed bytes.
    public mutating func reserveCapacity(_ byteCount: Int) { bytes.reserveCapacity(byteCount) }

    /// Appends one entry. `key` and `value` must be valid UTF-8 (the caller's data already is).
    public mutating func append(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        appendVarint(key.count)
        bytes.append(contentsOf: key.bindMemory(to: UInt8.self))
        appendVarint(value.count)
        bytes.append(contentsOf: value.bindMemory(to: UInt8.self))
        count += 1
        textBytes += key.count + value.count
    }

    /// Appends records already in the packed layout: `records` holds exactly `count` entries
    /// whose keys and values (`textBytes` in all) are valid UTF-8 — e.g. records of a store
    /// that keeps this layout.
    public mutating func append(records: UnsafeRawBufferPointer, count: Int, textBytes: Int) {
        bytes.append(contentsOf: records.bindMemory(to: UInt8.self))
        self.count += count
        self.textBytes += textBytes
    }

    /// Calls `body` with each key and value, in order; the buffers are valid only inside it.
    public func forEach(_ body: (_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws -> Void) rethrows {
        try bytes.withUnsafeBytes { raw in
            var reader = Reader(raw)
            while !reader.isAtEnd {
                // Every instance holds well-formed records (see the type's comment).
                guard let entry = try? reader.next() else { preconditionFailure("PackedEntries holds a malformed record") }
                try body(entry.key, entry.value)
            }
        }
    }

    /// The entries as values (tests, tools; transfers use `forEach`).
    public var entries: [Entry] {
        var result: [Entry] = []
        result.reserveCapacity(count)
        forEach { key, value in
            result.append(Entry(key: String(decoding: key, as: UTF8.self), value: String(decoding: value, as: UTF8.self)))
        }
        return result
    }

    private mutating func appendVarint(_ value: Int) {
        var value = UInt(value)
        while value >= 0x80 {
            bytes.append(UInt8(value & 0x7F) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
    }

    /// Bytes `varint(length)` takes.
    public static func varintSize(_ value: Int) -> Int {
        var value = UInt(value)
        var size = 1
        while value >= 0x80 {
            value >>= 7
            size += 1
        }
        return size
    }

    /// Writes `varint(value)` at `base + at`; returns the offset after it.
    public static func writeVarint(_ value: Int, to base: UnsafeMutableRawPointer, at start: Int) -> Int {
        var value = UInt(value)
        var at = start
        while value >= 0x80 {
            base.storeBytes(of: UInt8(value & 0x7F) | 0x80, toByteOffset: at, as: UInt8.self)
            value >>= 7
            at += 1
        }
        base.storeBytes(of: UInt8(value), toByteOffset: at, as: UInt8.self)
        return at + 1
    }

    /// Valid UTF-8: ASCII (the common case) is checked eight bytes at a time; other text goes
    /// through the standard library's validation.
    public static func isValidUTF8(_ raw: UnsafeRawBufferPointer) -> Bool {
        isASCII(raw) || String(validating: raw.bindMemory(to: UInt8.self), as: UTF8.self) != nil
    }

    /// Whether every byte is below 0x80, eight at a time.
    package static func isASCII(_ raw: UnsafeRawBufferPointer) -> Bool {
        guard let base = raw.baseAddress else { return true }
        var i = 0
        var bits: UInt64 = 0
        while i + 8 <= raw.count {
            bits |= base.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < raw.count {
            bits |= UInt64(raw[i])
            i += 1
        }
        return bits & 0x8080_8080_8080_8080 == 0
    }

    /// Reads records of the packed layout one by one, checking lengths.
    public struct Reader {
        private let raw: UnsafeRawBufferPointer
        private(set) var offset = 0

        public init(_ raw: UnsafeRawBufferPointer) { self.raw = raw }

        public var isAtEnd: Bool { offset >= raw.count }

        /// The next key and value (slices of the buffer given to `init`).
        public mutating func next() throws(PackedEntriesError) -> (key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
            let key = try field()
            let value = try field()
            return (key, value)
        }

        private mutating func field() throws(PackedEntriesError) -> UnsafeRawBufferPointer {
            var length = 0
            var shift = 0
            while true {
                guard offset < raw.count, shift < 64 else { throw .truncatedLength }
                let byte = raw[offset]
                offset += 1
                length |= Int(byte & 0x7F) << shift
                if byte & 0x80 == 0 { break }
                shift += 7
            }
            guard length >= 0, length <= raw.count - offset else { throw .lengthPastEnd }
            let slice = UnsafeRawBufferPointer(rebasing: raw[offset..<offset + length])
            offset += length
            return slice
        }
    }
}

/// Why bytes are not a valid `packed_entries` field.
public enum PackedEntriesError: Error, Sendable, Hashable, CustomStringConvertible {
    case truncatedLength
    case lengthPastEnd
    /// "key" or "value".
    case invalidUTF8(String)

    public var description: String {
        switch self {
        case .truncatedLength: "truncated length"
        case .lengthPastEnd: "length past the end"
        case .invalidUTF8(let which): "\(which) is not valid UTF-8"
        }
    }
}
