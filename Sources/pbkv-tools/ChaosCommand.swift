import ArgumentParser
import PBKVCommandLine
import Foundation
import PBKVCore
import PBKVEtcd
import PBKVTestSupport

/// `pbkv chaos`: clients against a real cluster under a seeded nemesis; checks linearizability
/// and that nothing acknowledged was lost. Exit status 1 on a violation.
struct ChaosCommand: AsyncParsableCommand {
    static let configuration = Tool.chaos.configuration

    @Option(help: "Seconds of workload per seed.")
    var seconds: Double = 20
    @Option(help: "Seeds to run, comma-separated (each run replays exactly from its seed's schedule).")
    var seeds: String = "1"
    @Option(help: "Concurrent clients.")
    var clients: Int = 4
    @Option(help: "Operations each client keeps outstanding, pipelined in one session (1 to 64); each is a process of its own in the history.")
    var pipeline: Int = 1
    @Option(help: "Number of keys the clients share.")
    var keys: Int = 4
    @Option(help: "Request and reply drop probability on every server.")
    var drop: Double = 0.02
    @Option(help: "Ping interval of the cluster, in milliseconds.")
    var pingIntervalMs: Int = 100
    @Option(help: "Servers answer Gets on read leases (true or false, e.g. --read-leases=false).")
    var readLeases = true
    @OptionGroup var security: OwnClusterSecurityOptions
    @Flag(help: "Replicated view service: three view services on a three-member etcd (needs /usr/bin/etcd); the nemesis also kills etcd members.")
    var etcd = false
    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard seconds > 0, clients > 0, keys > 0 else { throw ValidationError("--seconds, --clients and --keys must be positive") }
        guard (1...Int(RequestID.maxWindow)).contains(pipeline) else {
            throw ValidationError("--pipeline must be between 1 and \(RequestID.maxWindow)")
        }
        guard parsedSeeds != nil else { throw ValidationError("--seeds must be comma-separated integers, e.g. 1,2,3") }
    }

    private var parsedSeeds: [UInt64]? {
        let parts = seeds.split(separator: ",").map { UInt64($0.trimmingCharacters(in: .whitespaces)) }
        return parts.contains(nil) || parts.isEmpty ? nil : parts.compactMap { $0 }
    }

    func run() async throws {
        _ = logging.bootstrap(label: "pbkv.chaos")
        var passed = 0
        var failed = 0
        for seed in parsedSeeds ?? [1] {
            var configuration = ChaosConfiguration()
            configuration.seconds = seconds
            configuration.clients = clients
            configuration.pipeline = pipeline
            configuration.keys = keys
            configuration.seed = seed
            configuration.dropProbability = drop
            configuration.pingIntervalMs = pingIntervalMs
            configuration.tls = security.tls
            configuration.readLeases = readLeases
            configuration.memberArguments = logging.memberArguments
            if etcd { configuration.etcdProbe = { await EtcdClient.isServing(endpoint: $0) } }
            print("== chaos run, seed \(seed): \(clients) clients\(pipeline > 1 ? " × \(pipeline) pipelined" : ""), \(keys) keys, \(seconds) s, drops \(drop), read leases \(readLeases ? "on" : "off")\(etcd ? ", view service on etcd" : "")")
            let runner = ChaosRunner(configuration: configuration) { line in
                print("  " + line)
                fflush(nil)
            }
            let report = try await runner.run()
            print(report.description.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
            if report.passed {
                passed += 1
                print("  PASS")
            } else {
                failed += 1
                print("  FAIL (replay with: pbkv chaos --seeds \(seed) --seconds \(seconds) --clients \(clients) --keys \(keys) --drop \(drop) --read-leases=\(readLeases)\(etcd ? " --etcd" : ""))")
            }
        }
        print("chaos: \(passed) passed, \(failed) failed")
        if failed > 0 { throw ExitCode(1) }
    }
}
