import PBKVCore
import PBKVWire

/// A view store that forgets everything when the process ends: for unit tests and for
/// `pbkv viewservice --in-memory` (a restart then starts again from view 0).
public actor InMemoryViewStore: ViewStore {
    public nonisolated let location = "memory"
    private var record: ViewRecord?
    /// How many records were stored (tests).
    public private(set) var writes = 0

    public init(record: ViewRecord? = nil) { self.record = record }

    public func load() async throws(ViewStoreError) -> ViewRecord? { record }

    public func compareAndStore(_ new: ViewRecord, expected: ViewRecord?) async throws(ViewStoreError) {
        guard record == expected else { throw .conflict(location: location) }
        record = new
        writes += 1
    }
}
