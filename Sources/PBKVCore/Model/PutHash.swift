/// The PutHash rule, shared by servers, clients and test oracles.
///
/// PutHash(key, value) stores `String(fnv1a32(previous + value))` — FNV-1a 32-bit over the
/// UTF-8 bytes of the concatenation, as an unpadded decimal — and returns `previous`
/// (`""` when the key was absent).
public enum PutHash {
    /// The FNV-1a 32-bit offset basis.
    public static let offsetBasis: UInt32 = 2_166_136_261

    /// FNV-1a, 32-bit, over `bytes`, continuing from `state` (the offset basis to start).
    @inlinable
    public static func fnv1a32<Bytes: Sequence>(_ bytes: Bytes, state: UInt32 = offsetBasis) -> UInt32
    where Bytes.Element == UInt8 {
        var hash = state
        for byte in bytes {
            hash ^= UInt32(byte)
            hash &*= 16_777_619
        }
        return hash
    }

    /// The value PutHash stores when the key held `previous` ("" if absent).
    @inlinable
    public static func newValue(previous: String, value: String) -> String {
        String(fnv1a32(value.utf8, state: fnv1a32(previous.utf8)))
    }
}
