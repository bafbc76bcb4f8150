/// Reading protobuf's wire format by hand, where pbkv must look at the bytes protobuf-c is
/// given (NUL bytes in string fields, unknown group fields).
enum ProtobufWireFormat {
    /// The base-128 varint at `at` (advanced past it); nil when truncated or longer than 64 bits.
    static func varint(_ bytes: UnsafeRawBufferPointer, _ at: inout Int, _ end: Int) -> UInt64? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while at < end, shift < 64 {
            let byte = bytes[at]
            at += 1
            value |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
        }
        return nil
    }
}
