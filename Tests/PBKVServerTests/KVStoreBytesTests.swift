import PBKVWire
import Testing

@testable import PBKVCore
@testable import PBKVServer

@Suite("KV store: stored bytes")
struct KVStoreBytesTests {
    /// UTF-8 bytes of every key and value, counted the slow way.
    private func counted(_ store: KVStore) -> Int {
        store.map.dictionary.reduce(0) { $0 + $1.key.utf8.count + $1.value.utf8.count }
    }

    @Test("bytes follows Puts, overwrites, PutHash, Gets, a reset and a transfer load")
    func bytesStayExact() {
        var store = KVStore()
        var seq: UInt64 = 0
        func apply(_ kind: OpKind, _ key: String, _ value: String = "") {
            seq += 1
            _ = store.apply(Operation(kind: kind, key: key, value: value, id: RequestID(clientID: 1, seq: seq)))
        }
        apply(.put, "a", "hello")
        #expect(store.bytes == 6)
        apply(.put, "a", "hi")
        #expect(store.bytes == 3)
        apply(.put, "ключ", "значение ü")
        apply(.putHash, "a", "x")
        apply(.putHash, "fresh", "y")
        apply(.get, "a")
        apply(.get, "absent")
        #expect(store.bytes == counted(store))
        #expect(store.bytes > 3)
        store.reset()
        #expect(store.bytes == 0)
        store.load(entries: PackedEntries([Entry(key: "k1", value: "v1"), Entry(key: "k2", value: "value2")]), duplicates: [])
        store.load(entries: PackedEntries([Entry(key: "k1", value: "longer value")]), duplicates: [])
        #expect(store.bytes == counted(store))
        #expect(store.bytes == 2 + 12 + 2 + 6)
    }
}
