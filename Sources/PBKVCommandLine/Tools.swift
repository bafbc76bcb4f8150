import ArgumentParser

/// The commands of the `pbkv-tools` binary, which `pbkv` runs for them (`pbkv TOOL ARGS…`): their
/// names and one-line summaries, kept here once for the help of both binaries.
public enum Tool: String, CaseIterable, Sendable {
    case local
    case chaos
    case bench
    case benchCluster = "bench-cluster"
    case benchWire = "bench-wire"

    /// The summary `pbkv-tools --help` and `pbkv --help` show.
    public var abstract: String {
        switch self {
        case .local: "Start a local cluster, kill its primary mid-workload, verify nothing was lost."
        case .chaos: "Run clients against a local cluster under random faults and check the history."
        case .bench: "Measure throughput and latency of a running pbkv cluster."
        case .benchCluster: "Measure failover gap, state transfer and memory per key on local clusters of processes."
        case .benchWire: "Wire bytes and CPU per Put for plain, per-frame zlib and streaming compression (in process)."
        }
    }

    /// The command's configuration in `pbkv-tools`.
    public var configuration: CommandConfiguration { CommandConfiguration(commandName: rawValue, abstract: abstract) }
}
