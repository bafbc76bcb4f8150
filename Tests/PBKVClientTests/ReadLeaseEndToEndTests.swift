import Foundation
import Logging
import NIOPosix
import PBKVCore
import PBKVClient
import PBKVTestSupport
import PBKVWire
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Read leases against real `pbkv` processes: the classic trap of a paused primary that wakes
/// after the view moved on, with a client still connected to it.
@Suite("Read leases (processes)", .serialized, .timeLimit(.minutes(2)))
struct ReadLeaseEndToEndTests {
    static let quiet = Logger(label: "pbkv.test", factory: { _ in SwiftLogNoOpLogHandler() })

    /// A Get sent straight to `server` on `rpc`: the KVReply, or nil when the call failed.
    static func get(_ key: String, seq: UInt64, via rpc: RPCClient) async -> KVReply? {
        let id = RequestID(clientID: 0x5eed, seq: seq)
        guard case .kv(let reply) = try? await rpc.call(.get(key: key, id: id), timeout: .seconds(5)).get() else { return nil }
        return reply
    }

    @Test("A SIGSTOPped primary woken after the backup took over and a write happened never returns the old value",
        arguments: [true, false])
    func pausedPrimaryWakes(readLeases: Bool) async throws {
        let cluster = try ProcessCluster(executable: try ProcessCluster.builtExecutable(), pingIntervalMs: 100)
        defer { cluster.stopAll() }
        try cluster.startViewService()
        var config = KVClientConfiguration()
        config.deadline = .seconds(15)
        let client = try cluster.client(config, logger: Self.quiet)
        var servers: [ClusterProcess] = []
        for (i, name) in ["s1", "s2"].enumerated() {
            servers.append(try cluster.startServer(name: name, extraArguments: ["--read-leases=\(readLeases)"]))
            _ = try await client.waitForView(within: .seconds(15)) { view in
                view.acknowledged && (i == 0 ? view.primary == servers[0].address : view.backup == servers[1].address)
            }
        }
        try await client.put("k", "old")
        let primary = servers[0]
        let rpc = try cluster.rpcClient(to: primary.address, eventLoop: MultiThreadedEventLoopGroup.singleton.next(), logger: Self.quiet)
        defer { _ = rpc.shutdown() }
        #expect(await Self.get("k", seq: 1, via: rpc) == KVReply(code: .ok, value: "old"))

        // Pause the primary; the view service promotes the backup, which takes a write.
        primary.signal(SIGSTOP)
        _ = try await client.waitForView(within: .seconds(10)) { $0.primary == servers[1].address }
        try await client.put("k", "new")

        // A Get sent while it sleeps waits in its socket; it wakes and must not answer "old".
        async let woken = Self.get("k", seq: 2, via: rpc)
        try await Task.sleep(for: .milliseconds(200))
        primary.signal(SIGCONT)
        let reply = await woken
        #expect(reply == KVReply(code: .wrongServer), "the woken primary answered \(String(describing: reply))")
        // And afterwards, once it has heard of the new view, every Get is refused.
        #expect(await Self.get("k", seq: 3, via: rpc) == KVReply(code: .wrongServer))
        #expect(try await client.get("k") == "new")
        await client.close()
    }
}
