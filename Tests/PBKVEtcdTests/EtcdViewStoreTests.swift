import PBKVCore
import PBKVEtcd
import PBKVTestSupport
import PBKVViewService
import PBKVWire
import Testing

extension EtcdTests {
    @Suite("EtcdViewStore: the ViewStore contract on real etcd, fenced on the leader's term")
    struct EtcdViewStoreTests {
        let keys = EtcdKeys(prefix: "test")
        let logs = LogCapture()

        @Test("Nothing stored yet: load returns nil; the first store expects nil")
        func loadNil() async throws {
            try await withEtcd(logs: logs) { _, client in
                let term = try await claimLeadership(client, keys)
                let store = EtcdViewStore(client: client, keys: keys, term: term, logger: logs.logger)
                #expect(try await store.load() == nil)
                try await store.compareAndStore(record(1), expected: nil)
                #expect(try await client.range("test/view").keyValue?.value == EnvelopeCodec.encode(record(1)))
            }
        }

        @Test("Store, then load: another store of the same term reads what was stored and goes on from it")
        func storeThenLoad() async throws {
            try await withEtcd(logs: logs) { _, client in
                let term = try await claimLeadership(client, keys)
                let first = EtcdViewStore(client: client, keys: keys, term: term, logger: logs.logger)
                #expect(try await first.load() == nil)
                try await first.compareAndStore(record(1), expected: nil)
                try await first.compareAndStore(record(2), expected: record(1))
                let second = EtcdViewStore(client: client, keys: keys, term: term, logger: logs.logger)
                #expect(try await second.load() == record(2))
                try await second.compareAndStore(record(3), expected: record(2))
                #expect(try await first.load() == record(3))
                #expect(second.location.contains("test/view"))
            }
        }

        @Test("A wrong expected record is a conflict and nothing is written")
        func wrongExpected() async throws {
            try await withEtcd(logs: logs) { _, client in
                let term = try await claimLeadership(client, keys)
                let store = EtcdViewStore(client: client, keys: keys, term: term, logger: logs.logger)
                try await store.compareAndStore(record(1), expected: nil)
                let before = try #require(try await client.range("test/view").keyValue)
                await #expect(throws: ViewStoreError.conflict(location: store.location)) {
                    try await store.compareAndStore(record(2), expected: record(7))
                }
                await #expect(throws: ViewStoreError.conflict(location: store.location)) {
                    try await store.compareAndStore(record(2), expected: nil)
                }
                #expect(try await client.range("test/view").keyValue == before)
            }
        }

        @Test("A view written behind the store's back (another writer) makes its next store a conflict")
        func writtenBehindItsBack() async throws {
            try await withEtcd(logs: logs) { _, client in
                let term = try await claimLeadership(client, keys)
                let store = EtcdViewStore(client: client, keys: keys, term: term, logger: logs.logger)
                try await store.compareAndStore(record(1), expected: nil)
                _ = try await client.txn(compare: [], success: [.put(key: "test/view", value: EnvelopeCodec.encode(record(5)))])
                await #expect(throws: ViewStoreError.conflict(location: store.location)) {
                    try await store.compareAndStore(record(2), expected: record(1))
                }
                #expect(try await store.load() == record(5))
                try await store.compareAndStore(record(6), expected: record(5))
            }
        }

        @Test("A store of another term (the leader key was created again) cannot write, even if the view is unchanged")
        func fencedOnTerm() async throws {
            try await withEtcd(logs: logs) { _, client in
                let oldTerm = try await claimLeadership(client, keys)
                let stale = EtcdViewStore(client: client, keys: keys, term: oldTerm, logger: logs.logger)
                try await stale.compareAndStore(record(1), expected: nil)
                // The old leader's key goes (its lease expired) and a new leader creates it again.
                _ = try await client.txn(compare: [], success: [.delete(key: "test/leader")])
                await #expect(throws: ViewStoreError.conflict(location: stale.location)) {
                    try await stale.compareAndStore(record(2), expected: record(1))
                }
                let newTerm = try await claimLeadership(client, keys)
                #expect(newTerm > oldTerm)
                await #expect(throws: ViewStoreError.conflict(location: stale.location)) {
                    try await stale.compareAndStore(record(2), expected: record(1))
                }
                #expect(try await stale.load() == record(1))
                let current = EtcdViewStore(client: client, keys: keys, term: newTerm, logger: logs.logger)
                #expect(try await current.load() == record(1))
                try await current.compareAndStore(record(2), expected: record(1))
            }
        }

        @Test("Damaged data is .unreadable, never nil")
        func damaged() async throws {
            try await withEtcd(logs: logs) { _, client in
                let term = try await claimLeadership(client, keys)
                let store = EtcdViewStore(client: client, keys: keys, term: term, logger: logs.logger)
                for garbage: [UInt8] in [[0xFF, 0xFF, 0xFF], [], Array("not a record".utf8)] {
                    _ = try await client.txn(compare: [], success: [.put(key: "test/view", value: garbage)])
                    do {
                        _ = try await store.load()
                        Issue.record("\(garbage.count) bytes of garbage loaded")
                    } catch let error as ViewStoreError {
                        guard case .unreadable(let location, _) = error else {
                            Issue.record("expected .unreadable, got \(error)")
                            continue
                        }
                        #expect(location == store.location)
                        #expect(error.description.contains("restore it from a backup"))
                    }
                }
            }
        }

        @Test("etcd down: load and store are .unavailable (not a conflict, not nil)")
        func unavailable() async throws {
            try await withEtcd(logs: logs, requestTimeout: .milliseconds(300)) { cluster, client in
                let term = try await claimLeadership(client, keys)
                let store = EtcdViewStore(client: client, keys: keys, term: term, logger: logs.logger)
                try await store.compareAndStore(record(1), expected: nil)
                await cluster.members[0].stop()
                for attempt in 0..<2 {
                    do {
                        if attempt == 0 { _ = try await store.load() } else { try await store.compareAndStore(record(2), expected: record(1)) }
                        Issue.record("etcd is stopped but the store answered")
                    } catch let error as ViewStoreError {
                        guard case .unavailable(_, let reason) = error else {
                            Issue.record("expected .unavailable, got \(error)")
                            continue
                        }
                        #expect(reason.contains("no etcd endpoint answered"))
                    }
                }
            }
        }
    }
}

/// Makes this process leader of `keys` by hand (the leader key without a lease) and returns the
/// term (the key's create revision), for store tests that need no election.
private func claimLeadership(_ client: EtcdClient, _ keys: EtcdKeys, advertise: String = "127.0.0.1:9000") async throws -> Int64 {
    let result = try await client.txn(
        compare: [EtcdCompare(key: keys.leader, .createRevision(0))],
        success: [.put(key: keys.leader, value: Array(advertise.utf8))])
    try #require(result.succeeded, "the leader key was already there")
    return result.revision
}
