import CPBKVProto
import PBKVCore

/// Reading protobuf-c's field representations into Swift values: what the generated
/// copy-out code (Sources/PBKVWire/Generated/pbkv.codec.swift) calls for each kind of field.
enum CDecode {
    /// A protobuf `string` field: NULL and "" are both empty; invalid UTF-8 is refused.
    static func text(_ pointer: UnsafeMutablePointer<CChar>?, _ field: String) throws(MessageCodecError) -> String {
        guard let pointer, pointer.pointee != 0 else { return "" }
        guard let string = String(validatingCString: pointer) else { throw .invalidUTF8(field: field) }
        return string
    }

    /// A protobuf `bytes` field holding UTF-8 text: every byte kept (NUL included); invalid UTF-8 refused.
    static func utf8(_ data: ProtobufCBinaryData, _ field: String) throws(MessageCodecError) -> String {
        guard data.len > 0, let bytes = data.data else { return "" }
        let buffer = UnsafeBufferPointer(start: bytes, count: data.len)
        // ASCII (the common case) is valid UTF-8 and takes the fast non-generic initializer;
        // `String(validating:as:)` instantiates generic metadata on every call (seen in profiles
        // of state transfers), so it is kept for text with non-ASCII bytes.
        if PackedEntries.isASCII(UnsafeRawBufferPointer(buffer)) { return String(decoding: buffer, as: UTF8.self) }
        guard let string = String(validating: buffer, as: UTF8.self) else { throw .invalidUTF8(field: field) }
        return string
    }

    /// A repeated message field (`n_x`, `x`); NULL elements are skipped.
    static func messages<C, T>(
        _ count: Int, _ array: UnsafeMutablePointer<UnsafeMutablePointer<C>?>?, _ body: (C) throws(MessageCodecError) -> T
    ) throws(MessageCodecError) -> [T] {
        guard let array, count > 0 else { return [] }
        var result: [T] = []
        result.reserveCapacity(count)
        for i in 0..<count {
            guard let element = array[i] else { continue }
            result.append(try body(element.pointee))
        }
        return result
    }

    /// A repeated scalar or enum field; elements `body` maps to nil (unknown enum values) are dropped.
    static func values<C, T>(_ count: Int, _ array: UnsafeMutablePointer<C>?, _ body: (C) -> T?) -> [T] {
        guard let array, count > 0 else { return [] }
        return (0..<count).compactMap { body(array[$0]) }
    }
}

extension CArena {
    /// A repeated message field for protobuf-c: (`n_x`, `x`), an array of struct pointers.
    func messages<T, C>(_ values: [T], _ body: (T) -> UnsafeMutablePointer<C>) -> (Int, UnsafeMutablePointer<UnsafeMutablePointer<C>?>?) {
        guard !values.isEmpty else { return (0, nil) }
        let array = allocate(UnsafeMutablePointer<C>?.self, count: values.count)
        for (i, value) in values.enumerated() { array[i] = body(value) }
        return (values.count, array)
    }

    /// A repeated scalar or enum field for protobuf-c: (`n_x`, `x`).
    func values<T, C>(_ values: [T], _ body: (T) -> C) -> (Int, UnsafeMutablePointer<C>?) {
        guard !values.isEmpty else { return (0, nil) }
        let array = allocate(C.self, count: values.count)
        for (i, value) in values.enumerated() { array[i] = body(value) }
        return (values.count, array)
    }
}

/// `Request.call` (a generator hook): a call that cannot be decoded is kept as the reason, so
/// the server answers that one call (UNKNOWN_METHOD or BAD_REQUEST) instead of closing.
enum RequestCallField {
    static func encode(_ call: Result<Call, CallDecodeError>, into c: UnsafeMutablePointer<Pbkv__Request>, _ arena: CArena) {
        guard case .success(let call) = call else { return }  // sends "no method"
        call.encode(into: c, arena)
    }

    static func decode(_ c: Pbkv__Request) throws(MessageCodecError) -> Result<Call, CallDecodeError> {
        do throws(MessageCodecError) {
            guard let call = try Call(c) else { return .failure(.unknownMethod) }
            return .success(call)
        } catch {
            return .failure(.badArguments(error.description))
        }
    }
}

/// `TransferChunk.entries` and `packed_entries` as one `PackedEntries` (a generator hook): pbkv
/// sends the packed layout; it accepts both, the repeated `entries` (older senders) first.
enum TransferChunkEntriesField {
    static func encode(_ entries: PackedEntries, into c: UnsafeMutablePointer<Pbkv__TransferChunk>, _ arena: CArena) {
        guard !entries.isEmpty else { return }
        c.pointee.packed_entries = entries.bytes.withUnsafeBytes { arena.binary($0) }
    }

    static func decode(_ t: Pbkv__TransferChunk) throws(MessageCodecError) -> PackedEntries {
        let packed = t.packed_entries
        let raw = UnsafeRawBufferPointer(start: packed.data, count: packed.data == nil ? 0 : packed.len)
        let result: PackedEntries
        do throws(PackedEntriesError) {
            result = try PackedEntries(validating: raw)
        } catch .invalidUTF8(let which) {
            throw .invalidUTF8(field: "TransferChunk.packed_entries \(which)")
        } catch {
            throw .malformed("TransferChunk.packed_entries: \(error)")
        }
        guard t.n_entries > 0 else { return result }
        let entries = try CDecode.messages(t.n_entries, t.entries) { (e) throws(MessageCodecError) in try Entry(e) }
        return PackedEntries(entries + result.entries)
    }
}
