import ArgumentParser
import PBKVCommandLine

/// `pbkv-tools`: the commands that start clusters of their own and measure them (`pbkv local`,
/// `pbkv chaos`, `pbkv bench`, `pbkv bench-cluster`, `pbkv bench-wire`). A binary of its own so
/// that the server binary does not link the test harness (process clusters, nemesis,
/// linearizability checker); `pbkv` runs it for these commands, git-style.
@main
struct PBKVTools: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pbkv",
        abstract: "pbkv's tools: a local cluster, the chaos test, benchmarks.",
        subcommands: [LocalCommand.self, ChaosCommand.self, BenchCommand.self, ClusterBenchCommand.self, WireBenchCommand.self]
    )
}
