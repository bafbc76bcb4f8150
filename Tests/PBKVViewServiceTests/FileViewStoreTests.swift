import Foundation
import PBKVCore
import PBKVViewService
import PBKVWire
import Testing

/// The default view store on disk: what survives, and what it refuses to read.
@Suite("File view store")
struct FileViewStoreTests {
    let record = ViewRecord(view: View(viewnum: 4, primary: "127.0.0.1:7001", backup: "127.0.0.1:7002", acknowledged: true))

    @Test("A stored record is read back by a new store on the same directory; no temporary file is left")
    func survivesReopen() async throws {
        let directory = temporaryDirectory(prefix: "pbkv-file-store")
        do {
            let store = try FileViewStore(directory: directory)
            try await store.compareAndStore(record, expected: nil)
        }
        let reopened = try FileViewStore(directory: directory)
        #expect(try await reopened.load() == record)
        #expect(!FileManager.default.fileExists(atPath: directory + "/view.record.tmp"))
    }

    @Test("A truncated record, garbage and another format version are unreadable, never 'nothing stored'", arguments: [0, 1, 2])
    func damagedIsUnreadable(damage: Int) async throws {
        let directory = temporaryDirectory(prefix: "pbkv-file-store")
        var bytes = EnvelopeCodec.encode(record)
        switch damage {
        case 0: bytes = Array(bytes.prefix(bytes.count - 3))  // truncated
        case 1: bytes = [0xff, 0xfe, 0x00, 0x13, 0x37]  // not protobuf
        default: bytes[1] = 2  // format_version 2 (field 1, varint)
        }
        try Data(bytes).write(to: URL(fileURLWithPath: directory + "/view.record"))
        let store = try FileViewStore(directory: directory)
        await #expect {
            _ = try await store.load()
        } throws: { error in
            guard case ViewStoreError.unreadable(let location, _) = error else { return false }
            return location == directory + "/view.record" && "\(error)".contains(location)
        }
    }

    @Test("Two view services cannot share a data directory")
    func directoryIsLocked() throws {
        let directory = temporaryDirectory(prefix: "pbkv-file-store")
        let first = try FileViewStore(directory: directory)
        #expect(throws: ViewStoreError.self) { _ = try FileViewStore(directory: directory) }
        withExtendedLifetime(first) {}
    }

    @Test("A store expecting a record other than the one it holds is a conflict and writes nothing")
    func compareFails() async throws {
        let directory = temporaryDirectory(prefix: "pbkv-file-store")
        let store = try FileViewStore(directory: directory)
        try await store.compareAndStore(record, expected: nil)
        var other = record
        other.view.viewnum = 9
        await #expect(throws: ViewStoreError.conflict(location: directory + "/view.record")) {
            try await store.compareAndStore(other, expected: nil)
        }
        #expect(try await store.load() == record)
    }
}
