import PBKVWire
import Testing

@testable import PBKVCore
@testable import PBKVServer

/// Every record of `map`, walked as a transfer walks them, `maxEntries` at a time.
private func walk(_ map: CompactMap, maxEntries: Int = 7) -> [Entry] {
    var position = CompactMap.Position()
    var entries: [Entry] = []
    var done = false
    while !done {
        var packed = PackedEntries()
        var bytes = 0
        done = map.appendRecords(from: &position, to: &packed, maxEntries: maxEntries, maxBytes: 1 << 20, bytes: &bytes)
        #expect(packed.count <= maxEntries)
        entries += packed.entries
    }
    return entries
}

/// Text of `length` characters drawn from ASCII, NUL, Cyrillic and emoji.
private func text(_ rng: inout SplitMix64, length: Int) -> String {
    let alphabet: [Character] = ["a", "b", "z", "0", " ", "\u{0}", "ж", "я", "🙂", "é"]
    return String((0..<length).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] })
}

@Suite("Compact map: slabs, index, snapshots")
struct CompactMapTests {
    @Test("A Put of an existing key replaces its value; the count does not change")
    func overwrite() {
        var map = CompactMap()
        map.set("k", "v1")
        map.set("other", "x")
        map.set("k", "second value, longer")
        map.set("k", "")
        #expect(map["k"] == "")
        #expect(map["other"] == "x")
        #expect(map["absent"] == nil)
        #expect(map.count == 2)
    }

    @Test("Keys and values keep NUL, non-ASCII and empty text byte for byte")
    func unusualText() {
        var map = CompactMap()
        let pairs = [("a\u{0}b", "v\u{0}"), ("a", "plain"), ("a\u{0}", "nul at the end"), ("ключ", "значение"),
                     ("", "empty key"), ("emoji 🙂", "🙂🙂"), ("empty value", "")]
        for (key, value) in pairs { map.set(key, value) }
        for (key, value) in pairs { #expect(map[key] == value) }
        #expect(map.count == pairs.count)
        #expect(map.dictionary == Dictionary(uniqueKeysWithValues: pairs))
    }

    @Test("Values near 1 MiB get slabs of their own, freed when overwritten")
    func largeValues() {
        var map = CompactMap()
        let key = String(repeating: "K", count: 4096)
        let big = String(repeating: "v", count: (1 << 20) - 10)
        map.set(key, big)
        map.set("small", "s")
        #expect(map[key] == big)
        #expect(map.storage.slabs == 2)  // its own slab and the open one
        let bigger = String(repeating: "w", count: 1 << 20)
        map.set(key, bigger)
        #expect(map[key] == bigger)
        #expect(map.storage.slabs == 2)  // the first big slab was all garbage: freed
        map.set(key, "short now")
        #expect(map[key] == "short now" && map["small"] == "s")
        #expect(map.storage.slabs == 1)
        #expect(map.storage.usedBytes < 4_200)  // the 4 KiB key's record and "small"
    }

    @Test("Overwrites leave garbage; a slab over a quarter garbage is compacted, live values intact")
    func compaction() {
        var map = CompactMap(slabBytes: 256)
        var model: [String: String] = [:]
        for round in 0..<20 {
            for i in 0..<50 {
                let value = "value \(i) of round \(round)"
                map.set("key \(i)", value)
                model["key \(i)"] = value
            }
            let storage = map.storage
            #expect(storage.garbageBytes <= storage.usedBytes / 4 + 256, "round \(round): \(storage)")
        }
        #expect(map.dictionary == model)
        #expect(map.count == 50)
        // 20 rounds wrote 20 times the live bytes; compaction keeps about the live size.
        let live = model.reduce(0) { $0 + 2 + $1.key.utf8.count + $1.value.utf8.count }
        #expect(map.storage.usedBytes <= live * 4 / 3 + 2 * 256)
    }

    @Test("A copy is a snapshot: later writes, growth and compaction neither show in it nor corrupt it")
    func snapshotIsolation() {
        var map = CompactMap(slabBytes: 512)
        for i in 0..<300 { map.set("k\(i)", "v\(i)") }
        let snapshot = map
        let before = snapshot.dictionary
        for round in 0..<5 {
            for i in 0..<600 { map.set("k\(i)", "round \(round) value \(i) " + String(repeating: "x", count: i % 40)) }
        }
        #expect(snapshot.dictionary == before)
        #expect(snapshot.count == 300 && snapshot["k7"] == "v7" && snapshot["k400"] == nil)
        #expect(map.count == 600 && map["k7"] == "round 4 value 7 " + String(repeating: "x", count: 7))
        #expect(Set(walk(snapshot).map(\.key)) == Set(before.keys))
        // Writing to the snapshot copy does not disturb the original either.
        var second = snapshot
        second.set("k1", "changed in the copy")
        #expect(snapshot["k1"] == "v1" && map["k1"] == "round 4 value 1 x")
    }

    @Test("A walk returns every key exactly once, in chunks of at most maxEntries")
    func walkCoversEveryKeyOnce() {
        var map = CompactMap(slabBytes: 1024)
        var model: [String: String] = [:]
        for i in 0..<2_000 {
            map.set("key-\(i % 1_500)", "\(i)")
            model["key-\(i % 1_500)"] = "\(i)"
        }
        let entries = walk(map)
        #expect(entries.count == 1_500)
        #expect(Dictionary(entries.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a }) == model)
    }

    @Test("A walk stops before the byte budget unless one record alone exceeds it")
    func walkByteBudget() {
        var map = CompactMap()
        for i in 0..<10 { map.set("k\(i)", String(repeating: "v", count: 100)) }
        var position = CompactMap.Position()
        var packed = PackedEntries()
        var bytes = 0
        let item = EncodedSize.item(keyBytes: 2, valueBytes: 100)
        #expect(!map.appendRecords(from: &position, to: &packed, maxEntries: 100, maxBytes: 3 * item + 1, bytes: &bytes))
        #expect(packed.count == 3 && bytes == 3 * item)
        packed = PackedEntries()
        bytes = 0
        #expect(!map.appendRecords(from: &position, to: &packed, maxEntries: 100, maxBytes: 1, bytes: &bytes))
        #expect(packed.count == 1)
    }

    @Test("Packed entries load straight into the map")
    func loadPacked() {
        let entries = [Entry(key: "a", value: "1"), Entry(key: "鍵", value: "値"), Entry(key: "nul\u{0}", value: ""), Entry(key: "a", value: "2")]
        var map = CompactMap()
        map.load(PackedEntries(entries))
        #expect(map.dictionary == ["a": "2", "鍵": "値", "nul\u{0}": ""])
    }

    @Test("Equality and hashing ignore insertion order and layout")
    func equality() {
        var a = CompactMap(slabBytes: 128)
        var b = CompactMap()
        for i in 0..<100 { a.set("k\(i)", "old") }
        for i in 0..<100 { a.set("k\(i)", "v\(i)") }
        for i in (0..<100).reversed() { b.set("k\(i)", "v\(i)") }
        #expect(a == b && a.hashValue == b.hashValue)
        b.set("k5", "different")
        #expect(a != b)
        #expect(["x": "1", "y": "2"] as CompactMap == ["y": "2", "x": "1"])
    }

    @Test("Random Puts, Gets and snapshots agree with a Dictionary", arguments: [1, 2, 3] as [UInt64])
    func matchesDictionary(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        var map = CompactMap(slabBytes: 512)
        var model: [String: String] = [:]
        var snapshots: [(CompactMap, [String: String])] = []
        let keys = (0..<150).map { i in text(&rng, length: i % 9) + "\(i % 120)" }
        for step in 0..<4_000 {
            let key = keys[Int(rng.next() % UInt64(keys.count))]
            switch rng.next() % 10 {
            case 0..<5:
                let length = rng.next() % 20 == 0 ? 200 + Int(rng.next() % 300) : Int(rng.next() % 24)
                let value = text(&rng, length: length)
                map.set(key, value)
                model[key] = value
            case 5..<9:
                #expect(map[key] == model[key], "step \(step)")
            default:
                if snapshots.count < 8 { snapshots.append((map, model)) }
            }
        }
        #expect(map.count == model.count)
        #expect(map.dictionary == model)
        for (snapshot, expected) in snapshots {
            #expect(snapshot.dictionary == expected)
            #expect(walk(snapshot).count == expected.count)
        }
    }
}
