#if canImport(Glibc)
import Glibc
#endif

/// A key/value map of UTF-8 text kept compactly: records in slabs of contiguous memory, and a
/// hash index of their positions. A value type with copy-on-write parts, so a copy is a
/// snapshot that costs O(1) to take and whose extra memory grows only with what changes.
///
/// **Records.** Each key and value is one record, `varint(key length) key varint(value length)
/// value` — the layout of `TransferChunk.packed_entries`, so a transfer copies records out and
/// in as they are. Records are appended to the open slab (1 MiB); a record larger than 1/16 of
/// a slab gets a slab of its own size. A Put of an existing key appends a new record and leaves
/// the old one as garbage; a slab whose garbage passes a quarter of its bytes is compacted (its
/// live records move to the open slab and it is freed), so slabs hold at most 4/3 of the live
/// bytes plus the open slab (and the unused tails of full slabs, under 1/16 of a slab each).
///
/// **Index.** 256 segments (by the hash's top byte), each an open-addressing table with linear
/// probing of 64-bit slots: offset in the slab (20 bits), slab number + 1 (24 bits), 20 bits
/// of the key's hash (to skip most key comparisons, and to grow tables of up to 2^20 slots
/// without hashing keys again). A segment grows by doubling when more than 3/4 full. Keys are
/// never removed (pbkv has no Delete), so probing needs no tombstones.
///
/// **Copies.** Copying the map copies three arrays of references and sizes. Slab bytes are
/// never written below a slab's fill level, and new records are appended only to an open slab
/// this copy references alone (otherwise a fresh slab is opened), so a copy and the original
/// never see each other's writes. An index segment is copied (64 KiB per segment at a million
/// keys) the first time it changes after a copy. A transfer's snapshot therefore costs the
/// primary, while it applies writes, at most the index segments those writes touch (at most
/// the whole index, ~16 B per key), the slabs the writes fill, and compacted slabs the
/// snapshot still holds — bounded by what changes, never a copy of the data as a whole.
public struct CompactMap: Sendable {
    /// Bytes of a regular slab (at most 2^20: offsets take 20 bits).
    public let slabBytes: Int

    private var segments: [Segment]
    private var slabs: [SlabInfo] = []
    /// Numbers of freed slabs, reused first.
    private var freeSlabs: [Int] = []
    /// The slab new records go to, if any.
    private var openSlab: Int?
    public private(set) var count = 0
    /// Bytes of every key and value held (not their length prefixes, nor garbage).
    public private(set) var keyValueBytes = 0

    static let segmentCount = 256
    private static let offsetBits = 20
    private static let slabBits = 24
    private static let tagBits = 20
    private static let slabShift = UInt64(offsetBits)
    private static let tagShift = UInt64(offsetBits + slabBits)

    /// `slabBytes` below the default are for tests (many slabs from little data).
    public init(slabBytes: Int = 1 << 20) {
        precondition(slabBytes >= 64 && slabBytes <= 1 << CompactMap.offsetBits, "slab size must be 64 B … 1 MiB")
        self.slabBytes = slabBytes
        segments = Array(repeating: Segment(), count: CompactMap.segmentCount)
    }

    public var isEmpty: Bool { count == 0 }

    // MARK: - reading

    /// The value stored for `key`, nil if absent.
    public subscript(key: String) -> String? {
        var key = key
        return key.withUTF8 { utf8 in
            let raw = UnsafeRawBufferPointer(utf8)
            guard let slot = find(raw, hash: Self.hash(raw)) else { return nil }
            let value = record(at: segments[slot.segment].slots[slot.index]).value
            return String(unsafeUninitializedCapacity: value.count) { out in
                UnsafeMutableRawBufferPointer(out).copyMemory(from: value)
                return value.count
            }
        }
    }

    /// Every key and value, as a dictionary (tests and tools: O(n) strings).
    public var dictionary: [String: String] {
        var result: [String: String] = [:]
        result.reserveCapacity(count)
        forEach { key, value in result[String(decoding: key, as: UTF8.self)] = String(decoding: value, as: UTF8.self) }
        return result
    }

    /// Calls `body` with every key and value, in index order; the buffers are valid only inside it.
    public func forEach(_ body: (_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) -> Void) {
        for segment in segments {
            for slot in segment.slots where slot != 0 {
                let record = self.record(at: slot)
                body(record.key, record.value)
            }
        }
    }

    /// Where a walk over the records stands: the next record, by slab and offset.
    public struct Position: Sendable, Hashable {
        var slab = 0
        var offset = 0

        public init() {}
    }

    /// Appends the live records from `position` on to `packed`, at most `maxEntries` of them
    /// and `maxBytes` of `EncodedSize.item`s — unless the first one alone is larger, which then
    /// goes alone. `bytes` counts what was added. Returns true when every record was walked.
    ///
    /// The walk goes through the slabs in order, reading them sequentially, and copies runs of
    /// consecutive live records with one copy each. In a slab without garbage every record is
    /// live; in others a record is live if the index points at it.
    public func appendRecords(
        from position: inout Position, to packed: inout PackedEntries, maxEntries: Int, maxBytes: Int, bytes: inout Int
    ) -> Bool {
        while position.slab < slabs.count {
            let info = slabs[position.slab]
            if let slab = info.slab {
                let base = UnsafeRawPointer(slab.base)
                let checkLiveness = info.garbage > 0
                // A run of live records not yet copied: where it starts, entries, key and value bytes.
                var run = (start: position.offset, entries: 0, text: 0)
                func flush() {
                    guard run.entries > 0 else { return }
                    packed.append(
                        records: UnsafeRawBufferPointer(start: base + run.start, count: position.offset - run.start),
                        count: run.entries, textBytes: run.text)
                }
                while position.offset < info.used {
                    let record = Self.record(in: base, at: position.offset)
                    let at = position.offset + record.whole.count
                    let (keyLength, valueLength) = (record.key.count, record.value.count)
                    if checkLiveness && !isLive(record.key, at: (position.slab, position.offset)) {
                        flush()
                        position.offset = at
                        run = (at, 0, 0)
                        continue
                    }
                    let size = EncodedSize.item(keyBytes: keyLength, valueBytes: valueLength)
                    if packed.count + run.entries >= maxEntries || (packed.count + run.entries > 0 && bytes + size > maxBytes) {
                        flush()
                        return false
                    }
                    bytes += size
                    run.entries += 1
                    run.text += keyLength + valueLength
                    position.offset = at
                }
                flush()
                withExtendedLifetime(slab) {}
            }
            position.slab += 1
            position.offset = 0
        }
        return true
    }

    /// Whether the index points at the record of `key` at `location`.
    private func isLive(_ key: UnsafeRawBufferPointer, at location: (slab: Int, offset: Int)) -> Bool {
        guard let found = find(key, hash: Self.hash(key)) else { return false }
        return Self.location(segments[found.segment].slots[found.index]) == location
    }

    /// Slabs held, their bytes written, and how many of those are garbage (overwritten records).
    public var storage: (slabs: Int, usedBytes: Int, garbageBytes: Int) {
        var result = (slabs: 0, usedBytes: 0, garbageBytes: 0)
        for info in slabs where info.slab != nil {
            result.slabs += 1
            result.usedBytes += info.used
            result.garbageBytes += info.garbage
        }
        return result
    }

    // MARK: - writing

    /// Stores `value` for `key` (replacing any previous value).
    public mutating func set(_ key: String, _ value: String) {
        var key = key
        var value = value
        key.withUTF8 { k in value.withUTF8 { v in set(key: UnsafeRawBufferPointer(k), value: UnsafeRawBufferPointer(v)) } }
    }

    /// Stores `value` for `key`; both must be valid UTF-8 (they come from a `String` or from
    /// checked `PackedEntries`).
    public mutating func set(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        let hash = Self.hash(key)
        let location = append(key: key, value: value)
        if let found = find(key, hash: hash) {
            let old = segments[found.segment].slots[found.index]
            keyValueBytes += value.count - record(at: old).value.count
            segments[found.segment].slots[found.index] = Self.slot(location, hash: hash)
            addGarbage(of: old)
        } else {
            insertNew(Self.slot(location, hash: hash), hash: hash)
            count += 1
            keyValueBytes += key.count + value.count
        }
        compactPending()
    }

    /// Stores every entry of `packed`.
    public mutating func load(_ packed: PackedEntries) {
        packed.forEach { key, value in set(key: key, value: value) }
    }

    // MARK: - internals

    private struct Segment: Sendable {
        var slots: [UInt64] = []
        var count = 0
    }

    private struct SlabInfo: Sendable {
        var slab: ByteSlab?
        var used = 0
        var garbage = 0
    }

    /// A record's parts, pointing into its slab.
    private struct Record {
        var whole: UnsafeRawBufferPointer
        var key: UnsafeRawBufferPointer
        var value: UnsafeRawBufferPointer
    }

    /// Slabs whose garbage passed the threshold, compacted at the end of the current write.
    private var pendingCompactions: [Int] = []

    private static func hash(_ key: UnsafeRawBufferPointer) -> UInt64 {
        var hasher = Hasher()
        hasher.combine(bytes: key)
        return UInt64(bitPattern: Int64(hasher.finalize()))
    }

    private static func segmentNumber(_ hash: UInt64) -> Int { Int(truncatingIfNeeded: hash >> 56) }

    private static func tag(_ hash: UInt64) -> UInt64 { (hash >> 20) & ((1 << UInt64(tagBits)) - 1) }

    private static func slot(_ location: (slab: Int, offset: Int), hash: UInt64) -> UInt64 {
        tag(hash) << tagShift | UInt64(location.slab + 1) << slabShift | UInt64(location.offset)
    }

    private static func location(_ slot: UInt64) -> (slab: Int, offset: Int) {
        (Int((slot >> slabShift) & ((1 << UInt64(slabBits)) - 1)) - 1, Int(slot & ((1 << slabShift) - 1)))
    }

    /// First slot to probe for `hash` in a table of `mask + 1` slots.
    private static func start(_ hash: UInt64, mask: Int) -> Int { Int(truncatingIfNeeded: hash >> 20) & mask }

    private func record(at slot: UInt64) -> Record {
        let (slab, offset) = Self.location(slot)
        return Self.record(in: UnsafeRawPointer(slabs[slab].slab!.base), at: offset)
    }

    /// The record at `offset` of the slab at `base`.
    private static func record(in base: UnsafeRawPointer, at offset: Int) -> Record {
        var at = offset
        let keyLength = readVarint(base, &at)
        let key = UnsafeRawBufferPointer(start: base + at, count: keyLength)
        at += keyLength
        let valueLength = readVarint(base, &at)
        let value = UnsafeRawBufferPointer(start: base + at, count: valueLength)
        at += valueLength
        return Record(whole: UnsafeRawBufferPointer(start: base + offset, count: at - offset), key: key, value: value)
    }

    private static func readVarint(_ base: UnsafeRawPointer, _ at: inout Int) -> Int {
        var value = 0
        var shift = 0
        while true {
            let byte = base.load(fromByteOffset: at, as: UInt8.self)
            at += 1
            value |= Int(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
        }
    }

    /// The slot holding `key`, if present.
    private func find(_ key: UnsafeRawBufferPointer, hash: UInt64) -> (segment: Int, index: Int)? {
        let segment = Self.segmentNumber(hash)
        let slots = segments[segment].slots
        guard !slots.isEmpty else { return nil }
        let mask = slots.count - 1
        let tag = Self.tag(hash)
        var i = Self.start(hash, mask: mask)
        while true {
            let slot = slots[i]
            if slot == 0 { return nil }
            if slot >> Self.tagShift == tag {
                let stored = record(at: slot).key
                if stored.count == key.count && (key.count == 0 || memcmp(stored.baseAddress!, key.baseAddress!, key.count) == 0) {
                    return (segment, i)
                }
            }
            i = (i + 1) & mask
        }
    }

    private mutating func insertNew(_ slot: UInt64, hash: UInt64) {
        let segment = Self.segmentNumber(hash)
        if (segments[segment].count + 1) * 4 > segments[segment].slots.count * 3 { grow(segment) }
        let mask = segments[segment].slots.count - 1
        var i = Self.start(hash, mask: mask)
        while segments[segment].slots[i] != 0 { i = (i + 1) & mask }
        segments[segment].slots[i] = slot
        segments[segment].count += 1
    }

    /// Doubles a segment's table. Slots keep 20 bits of their key's hash, enough to place them
    /// in tables of up to 2^20 slots; larger ones hash the keys again.
    private mutating func grow(_ segment: Int) {
        let old = segments[segment].slots
        let capacity = max(8, old.count * 2)
        var slots = [UInt64](repeating: 0, count: capacity)
        let mask = capacity - 1
        for slot in old where slot != 0 {
            let hash = capacity <= 1 << Self.tagBits ? (slot >> Self.tagShift) << 20 : Self.hash(record(at: slot).key)
            var i = Self.start(hash, mask: mask)
            while slots[i] != 0 { i = (i + 1) & mask }
            slots[i] = slot
        }
        segments[segment].slots = slots
    }

    /// Copies a record into the open slab (or a slab of its own) and returns where it is.
    private mutating func append(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> (slab: Int, offset: Int) {
        let size = PackedEntries.varintSize(key.count) + key.count + PackedEntries.varintSize(value.count) + value.count
        let location: (slab: Int, offset: Int)
        if size > slabBytes / 16 {
            location = (newSlab(capacity: size), 0)
        } else {
            location = (writableOpenSlab(for: size), slabs[openSlab!].used)
        }
        let base = slabs[location.slab].slab!.base
        var at = PackedEntries.writeVarint(key.count, to: base, at: location.offset)
        if key.count > 0 { (base + at).copyMemory(from: key.baseAddress!, byteCount: key.count) }
        at += key.count
        at = PackedEntries.writeVarint(value.count, to: base, at: at)
        if value.count > 0 { (base + at).copyMemory(from: value.baseAddress!, byteCount: value.count) }
        slabs[location.slab].used = location.offset + size
        return location
    }

    /// The open slab if `size` more bytes fit and no copy of this map shares it; else a new one.
    private mutating func writableOpenSlab(for size: Int) -> Int {
        if let open = openSlab, slabs[open].used + size <= slabBytes, isKnownUniquelyReferenced(&slabs[open].slab) {
            return open
        }
        if let sealed = openSlab { checkGarbage(sealed) }
        let open = newSlab(capacity: slabBytes)
        openSlab = open
        return open
    }

    private mutating func newSlab(capacity: Int) -> Int {
        let info = SlabInfo(slab: ByteSlab(capacity: capacity))
        if let reused = freeSlabs.popLast() {
            slabs[reused] = info
            return reused
        }
        precondition(slabs.count < (1 << Self.slabBits) - 1, "CompactMap: more than 2^24 slabs")
        slabs.append(info)
        return slabs.count - 1
    }

    private mutating func addGarbage(of slot: UInt64) {
        let slab = Self.location(slot).slab
        slabs[slab].garbage += record(at: slot).whole.count
        checkGarbage(slab)
    }

    /// Queues a sealed slab for compaction once more than a quarter of its bytes are garbage.
    private mutating func checkGarbage(_ slab: Int) {
        guard slab != openSlab, slabs[slab].garbage * 4 > slabs[slab].used, !pendingCompactions.contains(slab) else { return }
        pendingCompactions.append(slab)
    }

    private mutating func compactPending() {
        while let slab = pendingCompactions.popLast() {
            if slab != openSlab, slabs[slab].slab != nil { compact(slab) }
        }
    }

    /// Moves a slab's live records to the open slab and frees it. A copy of the map that still
    /// references the slab keeps it alive and unchanged.
    private mutating func compact(_ slab: Int) {
        let info = slabs[slab]
        guard let bytes = info.slab else { return }
        let base = UnsafeRawPointer(bytes.base)
        var offset = 0
        while offset < info.used {
            let record = Self.record(in: base, at: offset)
            defer { offset += record.whole.count }
            let hash = Self.hash(record.key)
            guard let found = find(record.key, hash: hash),
                Self.location(segments[found.segment].slots[found.index]) == (slab, offset)
            else { continue }  // garbage
            let moved = append(key: record.key, value: record.value)
            segments[found.segment].slots[found.index] = Self.slot(moved, hash: hash)
        }
        withExtendedLifetime(bytes) {}
        slabs[slab] = SlabInfo()
        freeSlabs.append(slab)
    }
}

extension CompactMap: Equatable {
    /// Same keys with the same values (whatever the layout).
    public static func == (lhs: CompactMap, rhs: CompactMap) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var equal = true
        lhs.forEach { key, value in
            guard equal else { return }
            guard let other = rhs.find(key, hash: CompactMap.hash(key)) else {
                equal = false
                return
            }
            let otherValue = rhs.record(at: rhs.segments[other.segment].slots[other.index]).value
            equal = otherValue.elementsEqual(value)
        }
        return equal
    }
}

extension CompactMap: Hashable {
    /// Order-independent: the sum of each entry's hash.
    public func hash(into hasher: inout Hasher) {
        var sum: UInt64 = 0
        forEach { key, value in
            var entry = Hasher()
            entry.combine(key.count)
            entry.combine(bytes: key)
            entry.combine(bytes: value)
            sum &+= UInt64(bitPattern: Int64(entry.finalize()))
        }
        hasher.combine(count)
        hasher.combine(sum)
    }
}

extension CompactMap: ExpressibleByDictionaryLiteral {
    public init(dictionaryLiteral elements: (String, String)...) {
        self.init()
        for (key, value) in elements { set(key, value) }
    }
}

/// One block of record bytes. Written only through a map that references it alone (checked
/// with `isKnownUniquelyReferenced`, the copy-on-write rule of the standard library's own
/// buffers), and only past its fill level; copies of the map only read below theirs. Hence
/// `@unchecked Sendable`: no two threads ever touch the same bytes with one of them writing.
final class ByteSlab: @unchecked Sendable {
    let base: UnsafeMutableRawPointer

    init(capacity: Int) {
        base = UnsafeMutableRawPointer.allocate(byteCount: max(1, capacity), alignment: 16)
    }

    deinit { base.deallocate() }
}
