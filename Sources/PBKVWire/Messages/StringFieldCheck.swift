import CPBKVProto

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
import PBKVCore
#endif

/// Finds NUL bytes in protobuf `string` fields, which protobuf-c would silently cut short.
///
/// protobuf-c unpacks a `string` field into a NUL-terminated `char *` and forgets its length,
/// so `"ADDR\0tail"` arrives as `"ADDR"`: a silent change of what the peer sent. The schema
/// keeps `string` (other languages' generated code stays text); instead the received bytes
/// are walked once more, guided by protobuf-c's own message descriptors: every
/// length-delimited field whose descriptor says `string` is searched for a 0 byte, every
/// `message` field is walked in turn, everything else (varints, `bytes`, packed scalars) is
/// skipped by its length. A new `string` field in the schema is covered without code changes.
/// Part of the codec: the only other file that reads protobuf-c's structs.
extension EnvelopeCodec {
    /// The first `string` field of `bytes` (a message of type `descriptor`, or any message
    /// nested in it) that holds a NUL byte, as `Message.field`; nil if there is none.
    ///
    /// Called after protobuf-c unpacked `bytes`, so they are well-formed; the walk still checks
    /// every length and stops (nil) at anything it cannot follow.
    static func stringFieldWithNUL(
        in bytes: UnsafeRawBufferPointer, of descriptor: UnsafePointer<ProtobufCMessageDescriptor>, depth: Int = 0
    ) -> String? {
        guard depth < 32, let base = bytes.baseAddress, bytes.count > 0 else { return nil }
        let data = base.assumingMemoryBound(to: UInt8.self)
        let end = bytes.count
        var at = 0

        func varint() -> UInt64? { ProtobufWireFormat.varint(bytes, &at, end) }

        while at < end {
            guard let tag = varint() else { return nil }
            switch tag & 7 {
            case 0:  // varint
                guard varint() != nil else { return nil }
            case 1:  // fixed64
                at += 8
            case 5:  // fixed32
                at += 4
            case 2:  // length-delimited: string, bytes, message or packed scalars
                guard let length = varint(), length <= UInt64(end - at) else { return nil }
                let start = at
                at += Int(length)
                let number = tag >> 3
                guard number <= UInt64(UInt32.max),
                    let field = protobuf_c_message_descriptor_get_field(descriptor, UInt32(number))
                else { continue }  // an unknown field (newer peer): skipped, as protobuf-c does
                switch field.pointee.type {
                case PROTOBUF_C_TYPE_STRING:
                    if length > 0 && memchr(data + start, 0, Int(length)) != nil {
                        return "\(String(cString: descriptor.pointee.short_name)).\(String(cString: field.pointee.name))"
                    }
                case PROTOBUF_C_TYPE_MESSAGE:
                    guard let nested = field.pointee.descriptor?.assumingMemoryBound(to: ProtobufCMessageDescriptor.self)
                    else { continue }
                    if let found = stringFieldWithNUL(
                        in: UnsafeRawBufferPointer(start: data + start, count: Int(length)), of: nested, depth: depth + 1)
                    {
                        return found
                    }
                default:
                    break
                }
            default:  // groups (3, 4) and reserved wire types: protobuf-c does not accept them
                return nil
            }
            guard at <= end else { return nil }
        }
        return nil
    }
}
