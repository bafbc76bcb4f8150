import CPBKVProto
import NIOCore
import PBKVCore

/// Removes the unknown fields of the group wire types from protobuf bytes before protobuf-c sees them.
///
/// protobuf-c 1.4.1 skips unknown fields of wire types 0, 1, 2 and 5, but refuses the whole
/// message when it meets one of wire type 3 or 4 (start and end of a group): the proto2 `group`,
/// and what protobuf editions emit for a message field with `features.message_encoding =
/// DELIMITED`. A peer whose newer schema added such a field would have every envelope refused
/// and its connection closed. Removing those fields first makes it interoperate like a peer
/// that added any other field (README, "Compatibility policy").
///
/// Only fields whose number the schema does not know are removed, in the envelope and in every
/// nested message the schema knows (found through protobuf-c's descriptors, so this follows the
/// schema as it grows). A known field sent as a group (a changed encoding, which the policy
/// forbids) is left for protobuf-c to refuse. Bytes that are not well-formed protobuf are left
/// unchanged too, for protobuf-c to report.
public enum UnknownGroupFields {
    /// Deeper nesting than this (of messages, or of groups inside a group) is left unchanged.
    static let maxDepth = 32

    /// `buffer` without the unknown group fields of `pbkv.Envelope` and its nested messages.
    /// Without any (the usual case: one scan of the tags, nothing copied), `buffer` itself.
    public static func removed(from buffer: ByteBuffer) -> ByteBuffer {
        let stripped = buffer.withUnsafeReadableBytes { raw in
            withUnsafePointer(to: pbkv__envelope__descriptor) { strip(raw, 0, raw.count, $0, depth: 0) }
        }
        guard let stripped else { return buffer }
        return ByteBuffer(bytes: stripped)
    }

    /// The bytes of a `pbkv.Envelope` without its unknown group fields, or nil when it has none.
    public static func removed(fromEnvelope bytes: [UInt8]) -> [UInt8]? {
        bytes.withUnsafeBytes { raw in
            withUnsafePointer(to: pbkv__envelope__descriptor) { strip(raw, 0, raw.count, $0, depth: 0) }
        }
    }

    // MARK: - internals

    /// The message in `bytes[start..<end]`, described by `descriptor`, rewritten without its
    /// unknown group fields (recursively); nil when nothing changes or the bytes are malformed.
    private static func strip(
        _ bytes: UnsafeRawBufferPointer, _ start: Int, _ end: Int,
        _ descriptor: UnsafePointer<ProtobufCMessageDescriptor>, depth: Int
    ) -> [UInt8]? {
        var out: [UInt8]?  // made at the first change: everything before it, then each kept field
        var at = start
        while at < end {
            let fieldStart = at
            guard let tag = varint(bytes, &at, end) else { return nil }
            let number = tag >> 3
            switch tag & 7 {
            case 0, 1, 5:
                guard skipScalar(wireType: tag & 7, bytes, &at, end) else { return nil }
            case 2:
                guard let length = varint(bytes, &at, end), length <= UInt64(end - at) else { return nil }
                let valueStart = at
                at += Int(length)
                if depth < maxDepth, let nested = messageDescriptor(descriptor, number),
                    let rewritten = strip(bytes, valueStart, at, nested, depth: depth + 1)
                {
                    var kept = out ?? Array(bytes[start..<fieldStart])
                    appendVarint(tag, to: &kept)
                    appendVarint(UInt64(rewritten.count), to: &kept)
                    kept += rewritten
                    out = kept
                    continue
                }
            case 3:
                // A known field in a group encoding is a changed type, not a newer field: keep it.
                guard field(descriptor, number) == nil, skipGroup(number: number, bytes, &at, end) else { return nil }
                if out == nil { out = Array(bytes[start..<fieldStart]) }
                continue  // removed
            default:
                return nil  // an end of group that was never started, or wire type 6 or 7
            }
            out?.append(contentsOf: bytes[fieldStart..<at])
        }
        return out
    }

    /// Moves `at` past the group whose start tag (field `number`) was just read, nested groups
    /// included; false when it does not end properly.
    private static func skipGroup(number: UInt64, _ bytes: UnsafeRawBufferPointer, _ at: inout Int, _ end: Int) -> Bool {
        var open: [UInt64] = [number]
        while at < end {
            guard let tag = varint(bytes, &at, end) else { return false }
            switch tag & 7 {
            case 0, 1, 5:
                guard skipScalar(wireType: tag & 7, bytes, &at, end) else { return false }
            case 2:
                guard let length = varint(bytes, &at, end), length <= UInt64(end - at) else { return false }
                at += Int(length)
            case 3:
                open.append(tag >> 3)
                guard open.count <= maxDepth else { return false }
            case 4:
                guard open.last == tag >> 3 else { return false }
                open.removeLast()
                if open.isEmpty { return true }
            default:
                return false
            }
        }
        return false
    }

    private static func skipScalar(wireType: UInt64, _ bytes: UnsafeRawBufferPointer, _ at: inout Int, _ end: Int) -> Bool {
        switch wireType {
        case 0: return varint(bytes, &at, end) != nil
        case 1:
            guard end - at >= 8 else { return false }
            at += 8
        default:
            guard end - at >= 4 else { return false }
            at += 4
        }
        return true
    }

    private static func varint(_ bytes: UnsafeRawBufferPointer, _ at: inout Int, _ end: Int) -> UInt64? {
        ProtobufWireFormat.varint(bytes, &at, end)
    }

    private static func appendVarint(_ value: UInt64, to out: inout [UInt8]) {
        var v = value
        while v >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        out.append(UInt8(v))
    }

    private static func field(
        _ descriptor: UnsafePointer<ProtobufCMessageDescriptor>, _ number: UInt64
    ) -> UnsafePointer<ProtobufCFieldDescriptor>? {
        guard let fields = descriptor.pointee.fields else { return nil }
        for i in 0..<Int(descriptor.pointee.n_fields) where UInt64(fields[i].id) == number {
            return fields + i
        }
        return nil
    }

    /// The descriptor of field `number` when the schema knows it as a message field.
    private static func messageDescriptor(
        _ descriptor: UnsafePointer<ProtobufCMessageDescriptor>, _ number: UInt64
    ) -> UnsafePointer<ProtobufCMessageDescriptor>? {
        guard let field = field(descriptor, number), field.pointee.type == PROTOBUF_C_TYPE_MESSAGE,
            let nested = field.pointee.descriptor
        else { return nil }
        return nested.assumingMemoryBound(to: ProtobufCMessageDescriptor.self)
    }
}
