import Logging
import PBKVCore
import PBKVViewService
import PBKVWire

/// The etcd keys of one replicated view service: `<prefix>/view` holds the view record,
/// `<prefix>/leader` names the leader (its address, bound to the leader's lease).
public struct EtcdKeys: Sendable, Hashable {
    /// The prefix, without a trailing slash (default "pbkv", `--etcd-prefix NAME`).
    public let prefix: String

    public init(prefix: String = "pbkv") {
        var prefix = prefix
        while prefix.hasSuffix("/") { prefix.removeLast() }
        self.prefix = prefix
    }

    /// `<prefix>/view`: the `pbkv.ViewRecord` (protobuf), not bound to any lease.
    public var view: String { prefix + "/view" }
    /// `<prefix>/leader`: the leader's advertised `HOST:PORT`, bound to its lease.
    public var leader: String { prefix + "/leader" }
}

/// The view store of the replicated view service, for one leadership term.
///
/// The record lives at `<prefix>/view` as `EnvelopeCodec.encode(record)`. Every write is one
/// transaction that requires both
/// - the view key's mod revision to be the one this store last read or wrote (0: absent), and
/// - the leader key's create revision to be this term's (`term`),
///
/// so a leader whose lease expired (paused, partitioned) cannot write once the leader key is gone
/// or was created again by another leader, even if nobody has written the view since.
/// `EtcdElection` makes one per term; tests may make one for a term they set up by hand.
public actor EtcdViewStore: ViewStore {
    public nonisolated let location: String
    public nonisolated let keys: EtcdKeys
    /// The create revision of the leader key for the term this store writes in.
    public nonisolated let term: Int64
    private let client: EtcdClient
    private let logger: Logger
    /// The record this store last read or wrote: what `compareAndStore` expects to find.
    private var current: ViewRecord?
    /// The view key's mod revision when this store last read or wrote it (0: absent).
    private var modRevision: Int64 = 0

    public init(client: EtcdClient, keys: EtcdKeys, term: Int64, logger: Logger) {
        self.client = client
        self.keys = keys
        self.term = term
        self.logger = logger
        self.location = "etcd key \(keys.view) at \(client.endpoints.joined(separator: ","))"
    }

    public func load() async throws(ViewStoreError) -> ViewRecord? {
        let result: EtcdRangeResult
        do {
            result = try await client.range(keys.view)
        } catch {
            throw .unavailable(location: location, reason: error.description)
        }
        guard let kv = result.keyValue else {
            current = nil
            modRevision = 0
            return nil
        }
        let record: ViewRecord
        do {
            record = try EnvelopeCodec.decodeViewRecord(kv.value)
        } catch {
            throw .unreadable(
                location: location, reason: "\(kv.value.count) bytes at revision \(kv.modRevision) that are not a pbkv.ViewRecord: \(error)")
        }
        current = record
        modRevision = kv.modRevision
        logger.debug("view loaded from etcd", metadata: [
            "etcd.key": "\(keys.view)", "etcd.mod_revision": "\(kv.modRevision)", "view.num": "\(record.view.viewnum)",
        ])
        return record
    }

    public func compareAndStore(_ record: ViewRecord, expected: ViewRecord?) async throws(ViewStoreError) {
        guard current == expected else { throw .conflict(location: location) }
        let result: EtcdTxnResult
        do {
            result = try await client.txn(
                compare: [
                    EtcdCompare(key: keys.view, .modRevision(modRevision)),
                    EtcdCompare(key: keys.leader, .createRevision(term)),
                ],
                success: [.put(key: keys.view, value: EnvelopeCodec.encode(record))])
        } catch {
            throw .unavailable(location: location, reason: error.description)
        }
        guard result.succeeded else {
            logger.warning("view not stored: the view or the leadership changed in etcd", metadata: [
                "etcd.key": "\(keys.view)", "etcd.expected_mod_revision": "\(modRevision)", "etcd.term": "\(term)",
                "view.num": "\(record.view.viewnum)",
            ])
            throw .conflict(location: location)
        }
        current = record
        modRevision = result.revision
        logger.debug("view stored in etcd", metadata: [
            "etcd.key": "\(keys.view)", "etcd.mod_revision": "\(result.revision)", "view.num": "\(record.view.viewnum)",
        ])
    }
}
