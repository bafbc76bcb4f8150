import CoreMetrics
import PBKVCore
import PBKVWire

/// A KV server's own series (`--metrics`), besides the RPC layer's. State — role, view, keys,
/// bytes, duplicate rows, transfer progress — is sampled from the server's loop at scrape time
/// (`KVServer.refreshMetrics()`), never updated per operation; forward batch sizes and completed
/// transfers are recorded as they happen, once per batch or transfer.
final class ServerMetrics: Sendable {
    let rpc: RPCMetrics
    /// `pbkv_forward_batch_operations`: operations per Forward call sent to the backup.
    let forwardBatch: Recorder
    /// `pbkv_state_transfers_completed_total`: transfers this server completed as primary.
    let transfersCompleted: Counter
    private let roles: [(role: ReplicaRole, gauge: Gauge)]
    private let viewNumber: Gauge
    private let keys: Gauge
    private let bytes: Gauge
    private let duplicateRows: Gauge
    private let transferEntriesDone: Gauge
    private let transferEntriesTotal: Gauge
    private let transferChunks: Gauge

    init(factory: any MetricsFactory) {
        rpc = RPCMetrics(factory: factory)
        forwardBatch = Recorder(label: "pbkv_forward_batch_operations", factory: factory)
        transfersCompleted = Counter(label: "pbkv_state_transfers_completed_total", factory: factory)
        roles = [ReplicaRole.idle, .backup, .primary, .primaryWithoutState].map {
            ($0, Gauge(label: "pbkv_role", dimensions: [("role", $0.rawValue)], factory: factory))
        }
        viewNumber = Gauge(label: "pbkv_view_number", factory: factory)
        keys = Gauge(label: "pbkv_keys", factory: factory)
        bytes = Gauge(label: "pbkv_stored_bytes", factory: factory)
        duplicateRows = Gauge(label: "pbkv_duplicate_rows", factory: factory)
        transferEntriesDone = Gauge(label: "pbkv_transfer_entries_done", factory: factory)
        transferEntriesTotal = Gauge(label: "pbkv_transfer_entries_total", factory: factory)
        transferChunks = Gauge(label: "pbkv_transfer_chunks", factory: factory)
    }

    /// Sets the state gauges from `status` and brings the RPC series up to date.
    func update(from status: ServerStatus) {
        for (role, gauge) in roles { gauge.record(role.rawValue == status.role ? 1 : 0) }
        viewNumber.record(status.view.viewnum)
        keys.record(status.keys)
        bytes.record(status.bytes)
        duplicateRows.record(status.duplicateRows)
        transferEntriesDone.record(status.transfer?.entriesDone ?? 0)
        transferEntriesTotal.record(status.transfer?.entriesTotal ?? 0)
        transferChunks.record(status.transfer?.chunks ?? 0)
        rpc.flush()
    }
}
