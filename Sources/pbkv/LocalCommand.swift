import ArgumentParser
import Foundation
import Logging
import PBKVClient
import PBKVTestSupport
import PBKVWire

#if canImport(Glibc)
import Glibc
#endif

/// `pbkv local`: a view service and three servers as real processes on loopback, a visible
/// workload, a SIGKILL of the primary part-way, and a check that nothing acknowledged was lost.
struct LocalCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "local", abstract: "Start a local cluster, kill its primary mid-workload, verify nothing was lost.")

    @Option(help: "Number of Puts in the workload.")
    var operations: Int = 300
    @Option(help: "Kill the primary after this many Puts.")
    var killAfter: Int = 150
    @Option(help: "Ping interval of the cluster, in milliseconds.")
    var pingIntervalMs: Int = 100
    @Flag(help: "Keep the cluster running after the demo and print its addresses (Ctrl-C stops it).")
    var keepRunning = false

    func run() async throws {
        let started = ContinuousClock.now
        let say: @Sendable (String) -> Void = { line in
            let t = ContinuousClock.now - started
            print(String(format: "[%6.2fs] ", t.inSeconds) + line)
            fflush(nil)
        }
        let cluster = try ProcessCluster(executable: ProcessCluster.currentExecutable, pingIntervalMs: pingIntervalMs)
        defer { if !keepRunning { cluster.stopAll() } }
        let vs = try cluster.startViewService()
        say("view service started at \(vs.address) (pid \(vs.pid)); logs in \(cluster.logDirectory.path)")

        var logger = Logger(label: "pbkv.local")
        logger.logLevel = .critical
        var clientConfig = KVClientConfiguration()
        clientConfig.deadline = .seconds(20)
        let client = try KVClient(viewService: vs.address, configuration: clientConfig, logger: logger)

        // Servers one after another, so s1 is primary and s2 its backup; s3 waits idle.
        var servers: [ClusterProcess] = []
        for i in 1...3 {
            let server = try cluster.startServer(name: "s\(i)")
            servers.append(server)
            say("server s\(i) started at \(server.address) (pid \(server.pid))")
            if i < 3 {
                _ = try await client.waitForView(within: .seconds(10)) { view in
                    view.acknowledged && (i == 1 ? view.primary == server.address : view.backup == server.address)
                }
            }
        }
        var lastView = try await client.waitForView(within: .seconds(10)) { $0.acknowledged && !$0.backup.isEmpty }
        say("view \(lastView.viewnum): primary \(Self.name(lastView.primary, servers)), backup \(Self.name(lastView.backup, servers))")

        let serverList = servers
        let firstView = lastView
        let watcher = Task {
            var seen = firstView
            while !Task.isCancelled {
                if let view = try? await client.currentView(), !view.sameAssignment(as: seen) {
                    say("view \(view.viewnum): primary \(Self.name(view.primary, serverList)), backup \(Self.name(view.backup, serverList))")
                    seen = view
                }
                try? await Task.sleep(for: .milliseconds(50))
            }
        }

        var acknowledged: [String: String] = [:]
        var killedAt: ContinuousClock.Instant?
        var gap: Duration?
        for i in 0..<operations {
            if i == killAfter {
                let view = try await client.currentView()
                if let primary = cluster.process(at: view.primary) {
                    primary.killAndWait()
                    killedAt = .now
                    say("killed the primary \(Self.name(primary.address, servers)) with SIGKILL (pid \(primary.pid))")
                }
            }
            let key = "key-\(i % 100)"
            let value = "value-\(i)"
            try await client.put(key, value)
            acknowledged[key] = value
            if let k = killedAt, gap == nil {
                gap = ContinuousClock.now - k
                say("first Put acknowledged after the kill: \(gap!.milliseconds) ms after it")
            }
            if (i + 1) % 50 == 0 { say("\(i + 1)/\(operations) Puts acknowledged") }
        }
        watcher.cancel()
        lastView = try await client.currentView()
        say("final view \(lastView.viewnum): primary \(Self.name(lastView.primary, servers)), backup \(Self.name(lastView.backup, servers))")

        var lost = 0
        for (key, value) in acknowledged.sorted(by: { $0.key < $1.key }) {
            let read = try await client.get(key)
            if read != value {
                lost += 1
                say("LOST: \(key) should be \(value), read \(read ?? "(absent)")")
            }
        }
        if lost == 0 {
            say("verified: all \(acknowledged.count) keys hold their last acknowledged value — nothing lost")
        } else {
            say("FAILED: \(lost) acknowledged writes lost")
        }
        if keepRunning {
            say("cluster running. Try:")
            print("  pbkv view --viewservice \(vs.address)")
            print("  pbkv put hello world --viewservice \(vs.address)")
            print("  pbkv get hello --viewservice \(vs.address)")
            print("Press Ctrl-C to stop (the processes are stopped with it).")
            signal(SIGINT, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: SIGINT)
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                source.setEventHandler { done.resume() }
                source.resume()
            }
            cluster.stopAll()
        }
        await client.close()
        if lost > 0 { throw ExitStatus.failure }
    }

    private static func name(_ address: String, _ servers: [ClusterProcess]) -> String {
        guard !address.isEmpty else { return "(none)" }
        guard let i = servers.firstIndex(where: { $0.address == address }) else { return address }
        return "s\(i + 1) (\(address))"
    }
}
