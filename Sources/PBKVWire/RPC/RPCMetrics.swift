import CoreMetrics
import NIOCore
import PBKVCore
import Synchronization

/// What a frame carries, for byte counts and compression ratios: the method's traffic.
public enum TrafficKind: Int, CaseIterable, Sendable {
    /// Get, Put, PutHash.
    case client
    /// Operations a primary forwards to its backup.
    case forward
    /// State transfer chunks.
    case transfer
    /// Ping, GetView.
    case viewService
    /// Handshakes, goodbyes, status calls, calls of unknown methods.
    case other

    /// The `kind` label.
    public var label: String {
        switch self {
        case .client: "client"
        case .forward: "forward"
        case .transfer: "transfer"
        case .viewService: "viewservice"
        case .other: "other"
        }
    }

    /// The traffic a call of `method` (a `Call.methodIndex`) belongs to.
    static func of(method: Int) -> TrafficKind { methodKinds[method] }

    private static let methodKinds: [TrafficKind] = Call.methodNames.map { name in
        switch name {
        case "Get", "Put", "PutHash": .client
        case "Forward": .forward
        case "Transfer": .transfer
        case "Ping", "GetView": .viewService
        default: .other
        }
    }
}

/// Which way a frame went, as seen from this process.
public enum TrafficDirection: Int, CaseIterable, Sendable {
    case inbound
    case outbound

    /// The `direction` label.
    public var label: String { self == .inbound ? "in" : "out" }
}

/// The RPC layer's metrics for one process (`--metrics`): calls answered by method and code,
/// their latency, open connections, and frames and bytes per traffic kind and direction — frame
/// payloads as they travel (compressed or not; the 5-byte frame header not included) and the
/// protobuf they carry (before compression), whose ratio is the compression ratio.
///
/// The hot path stays cheap: byte counts are relaxed atomic adds into fixed slots, pushed into
/// swift-metrics counters only at scrape time (`flush()`); call counters and latency timers are
/// made once per method and code and then cached by each connection (`CallMetrics`).
public final class RPCMetrics: Sendable {
    private let factory: any MetricsFactory
    private let traffic: [TrafficCount]
    private let calls: Mutex<[Counter?]>
    private let latencies: Mutex<[Timer?]>
    private let exported: Mutex<Exported>
    private let connectionSources = Mutex<[@Sendable () -> Int]>([])

    /// Codes per method in the call counter table: every `Code` raw value is below it.
    static let codeSlots = 16

    /// What the swift-metrics counters hold, to push only the difference at the next scrape.
    private struct Exported {
        var frames: [Int]
        var wire: [Int]
        var payload: [Int]
        var frameCounters: [Counter?]
        var wireCounters: [Counter?]
        var payloadCounters: [Counter?]
        var ratios: [Gauge?]
        var connections: Gauge?
    }

    public init(factory: any MetricsFactory) {
        self.factory = factory
        let slots = TrafficKind.allCases.count * TrafficDirection.allCases.count
        self.traffic = (0..<slots).map { _ in TrafficCount() }
        self.calls = Mutex(Array(repeating: nil, count: Call.methodNames.count * Self.codeSlots))
        self.latencies = Mutex(Array(repeating: nil, count: Call.methodNames.count))
        self.exported = Mutex(Exported(
            frames: Array(repeating: 0, count: slots), wire: Array(repeating: 0, count: slots),
            payload: Array(repeating: 0, count: slots), frameCounters: Array(repeating: nil, count: slots),
            wireCounters: Array(repeating: nil, count: slots), payloadCounters: Array(repeating: nil, count: slots),
            ratios: Array(repeating: nil, count: slots)))
    }

    /// `pbkv_rpc_calls_total{method, code}`: calls this process answered.
    func callCounter(method: Int, code: Code) -> Counter {
        let slot = method * Self.codeSlots + min(Int(code.rawValue), Self.codeSlots - 1)
        return calls.withLock { table in
            if let counter = table[slot] { return counter }
            let counter = Counter(
                label: "pbkv_rpc_calls_total", dimensions: [("method", Call.methodNames[method]), ("code", "\(code)")],
                factory: factory)
            table[slot] = counter
            return counter
        }
    }

    /// `pbkv_rpc_duration_seconds{method}`: from a request's arrival to its reply being written.
    func latencyTimer(method: Int) -> Timer {
        latencies.withLock { table in
            if let timer = table[method] { return timer }
            let timer = Timer(label: "pbkv_rpc_duration_seconds", dimensions: [("method", Call.methodNames[method])], factory: factory)
            table[method] = timer
            return timer
        }
    }

    /// Counts one frame: `wire` bytes of payload as it travels, `payload` bytes of protobuf it
    /// carries (the same unless compressed).
    func count(_ kind: TrafficKind, _ direction: TrafficDirection, wire: Int, payload: Int) {
        let slot = traffic[kind.rawValue * TrafficDirection.allCases.count + direction.rawValue]
        slot.frames.add(1, ordering: .relaxed)
        slot.wire.add(wire, ordering: .relaxed)
        slot.payload.add(payload, ordering: .relaxed)
    }

    /// Frames and bytes counted so far for `kind` and `direction` (what the next `flush()`
    /// exports): for tests and tools that read them without a metrics backend.
    public func traffic(_ kind: TrafficKind, _ direction: TrafficDirection) -> (frames: Int, wire: Int, payload: Int) {
        let slot = traffic[kind.rawValue * TrafficDirection.allCases.count + direction.rawValue]
        return (slot.frames.load(ordering: .relaxed), slot.wire.load(ordering: .relaxed), slot.payload.load(ordering: .relaxed))
    }

    /// Adds a source of open connections to `pbkv_connections` (an RPC server of this process).
    func addConnectionSource(_ source: @escaping @Sendable () -> Int) {
        connectionSources.withLock { $0.append(source) }
    }

    /// Brings the exported series up to date (call before each scrape): `pbkv_frames_total`,
    /// `pbkv_wire_bytes_total`, `pbkv_payload_bytes_total` and `pbkv_compression_ratio` (wire ÷
    /// protobuf bytes since start: 1 when nothing was compressed) per kind and direction, and
    /// `pbkv_connections`.
    public func flush() {
        let connections = connectionSources.withLock { sources in sources.reduce(0) { $0 + $1() } }
        exported.withLock { state in
            for kind in TrafficKind.allCases {
                for direction in TrafficDirection.allCases {
                    let slot = kind.rawValue * TrafficDirection.allCases.count + direction.rawValue
                    let frames = traffic[slot].frames.load(ordering: .relaxed)
                    let wire = traffic[slot].wire.load(ordering: .relaxed)
                    let payload = traffic[slot].payload.load(ordering: .relaxed)
                    guard payload > 0 else { continue }
                    let dimensions = [("kind", kind.label), ("direction", direction.label)]
                    if state.wireCounters[slot] == nil {
                        state.frameCounters[slot] = Counter(label: "pbkv_frames_total", dimensions: dimensions, factory: factory)
                        state.wireCounters[slot] = Counter(label: "pbkv_wire_bytes_total", dimensions: dimensions, factory: factory)
                        state.payloadCounters[slot] = Counter(
                            label: "pbkv_payload_bytes_total", dimensions: dimensions, factory: factory)
                        state.ratios[slot] = Gauge(label: "pbkv_compression_ratio", dimensions: dimensions, factory: factory)
                    }
                    state.frameCounters[slot]?.increment(by: frames - state.frames[slot])
                    state.wireCounters[slot]?.increment(by: wire - state.wire[slot])
                    state.payloadCounters[slot]?.increment(by: payload - state.payload[slot])
                    state.frames[slot] = frames
                    state.wire[slot] = wire
                    state.payload[slot] = payload
                    state.ratios[slot]?.record(Double(wire) / Double(payload))
                }
            }
            if state.connections == nil { state.connections = Gauge(label: "pbkv_connections", factory: factory) }
            state.connections?.record(connections)
        }
    }
}

/// Bytes of one traffic kind in one direction since start.
private final class TrafficCount: Sendable {
    let frames = Atomic<Int>(0)
    let wire = Atomic<Int>(0)
    let payload = Atomic<Int>(0)
}

/// One connection's handles on the shared `RPCMetrics`: counters and timers looked up once per
/// method and code, then used without a lock. Lives on the connection's event loop.
struct CallMetrics {
    let metrics: RPCMetrics
    private var counters: [Counter?]
    private var timers: [Timer?]

    init(_ metrics: RPCMetrics) {
        self.metrics = metrics
        self.counters = Array(repeating: nil, count: Call.methodNames.count * RPCMetrics.codeSlots)
        self.timers = Array(repeating: nil, count: Call.methodNames.count)
    }

    /// Counts a call of `method` answered with `code`, `started` being when its request arrived.
    mutating func answered(method: Int, code: Code, started: NIODeadline) {
        let slot = method * RPCMetrics.codeSlots + min(Int(code.rawValue), RPCMetrics.codeSlots - 1)
        if counters[slot] == nil { counters[slot] = metrics.callCounter(method: method, code: code) }
        counters[slot]?.increment()
        if timers[method] == nil { timers[method] = metrics.latencyTimer(method: method) }
        timers[method]?.recordNanoseconds((NIODeadline.now() - started).nanoseconds)
    }
}
