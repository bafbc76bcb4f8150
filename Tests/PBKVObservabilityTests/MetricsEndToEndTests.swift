import Logging
import NIOCore
import NIOPosix
import PBKVCore
import PBKVClient
import PBKVObservability
import PBKVServer
import PBKVTestSupport
import PBKVWire
import Testing

@Suite("Metrics end to end")
struct MetricsEndToEndTests {
    /// A server of `cluster` with its own registry served over HTTP on a random loopback port.
    private struct MeasuredNode {
        var node: InProcessCluster.Node
        var http: MetricsHTTPServer
        var url: String { "http://127.0.0.1:\(http.port)/metrics" }
    }

    private func startMeasured(_ name: String, in cluster: InProcessCluster, group: any EventLoopGroup) async throws -> MeasuredNode {
        let metrics = ProcessMetrics()
        let node = try await cluster.startServer(name: name) { $0.metrics = metrics.factory }
        let server = node.server
        metrics.addSampler { await server.refreshMetrics() }
        let http = try await MetricsHTTPServer.start(
            host: "127.0.0.1", port: 0, metrics: metrics, group: group, logger: Logger(label: "pbkv.test.metrics"))
        return MeasuredNode(node: node, http: http)
    }

    @Test("Scrapes of the primary, backup and view service show the calls, bytes, batches, transfer, keys, roles and view")
    func scrapesShowTheWork() async throws {
        let vsMetrics = ProcessMetrics()
        let cluster = try await InProcessCluster.start(metrics: vsMetrics.factory)
        vsMetrics.addSampler { await cluster.refreshViewServiceMetrics() }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let vsHTTP = try await MetricsHTTPServer.start(
            host: "127.0.0.1", port: 0, metrics: vsMetrics, group: group, logger: Logger(label: "pbkv.test.metrics"))
        let primary = try await startMeasured("a", in: cluster, group: group)
        var backup: MeasuredNode?
        let client = try cluster.client()
        do {
            try await cluster.waitForView { $0.primary == primary.node.address && $0.acknowledged }
            // State for the transfer: 200 keys of compressible 100-byte values.
            var expected: [String: String] = [:]
            for i in 0..<200 {
                let value = String(repeating: "v", count: 100)
                try await client.put("k\(i)", value)
                expected["k\(i)"] = value
            }
            backup = try await startMeasured("b", in: cluster, group: group)
            let view = try await cluster.waitForView { $0.backup == backup?.node.address && $0.acknowledged }
            for i in 0..<20 {
                try await client.put("k\(i)", "new-\(i)")
                expected["k\(i)"] = "new-\(i)"
            }
            for i in 0..<10 { #expect(try await client.get("k\(i)") == "new-\(i)") }

            let (status, p) = try await Scrape.get(primary.url)
            #expect(status == 200)
            #expect(p.value("pbkv_rpc_calls_total", ["method": "Put", "code": "OK"]) ?? 0 >= 220)
            #expect(p.value("pbkv_rpc_calls_total", ["method": "Get", "code": "OK"]) ?? 0 >= 10)
            #expect(p.value("pbkv_rpc_duration_seconds_count", ["method": "Put"]) ?? 0 >= 220)
            #expect(p.value("pbkv_keys") == 200)
            #expect(p.value("pbkv_stored_bytes") == Double(expected.reduce(0) { $0 + $1.key.utf8.count + $1.value.utf8.count }))
            #expect(p.value("pbkv_duplicate_rows") == 1)
            #expect(p.value("pbkv_role", ["role": "primary"]) == 1)
            #expect(p.value("pbkv_role", ["role": "backup"]) == 0)
            #expect(p.value("pbkv_view_number") == Double(view.viewnum))
            #expect(p.value("pbkv_connections") ?? 0 >= 1)
            // Every operation after the transfer went to the backup in batches.
            #expect(p.value("pbkv_forward_batch_operations_count") ?? 0 >= 1)
            // The 20 Puts made with the backup in the view (Gets are answered under the read
            // lease; one whose lease lapsed on a busy machine is forwarded too).
            #expect(p.value("pbkv_forward_batch_operations_sum") ?? 0 >= 20)
            #expect(p.value("pbkv_state_transfers_completed_total") == 1)
            #expect(p.value("pbkv_transfer_entries_total") == 0)  // no transfer in progress
            #expect(p.value("pbkv_wire_bytes_total", ["kind": "client", "direction": "in"]) ?? 0 > 0)
            #expect(p.value("pbkv_payload_bytes_total", ["kind": "forward", "direction": "out"]) ?? 0 > 0)
            #expect(p.value("pbkv_frames_total", ["kind": "viewservice", "direction": "out"]) ?? 0 >= 1)
            // Small client frames are never compressed; the transfer chunk of repetitive values is.
            #expect(p.value("pbkv_compression_ratio", ["kind": "client", "direction": "in"]) == 1)
            #expect(p.value("pbkv_compression_ratio", ["kind": "transfer", "direction": "out"]) ?? 1 < 0.5)

            let (_, b) = try await Scrape.get(try #require(backup).url)
            #expect(b.value("pbkv_keys") == 200)
            #expect(b.value("pbkv_role", ["role": "backup"]) == 1)
            #expect(b.value("pbkv_rpc_calls_total", ["method": "Forward", "code": "OK"]) ?? 0 >= 1)
            #expect(b.value("pbkv_rpc_calls_total", ["method": "Transfer", "code": "OK"]) ?? 0 >= 1)
            #expect(b.value("pbkv_payload_bytes_total", ["kind": "transfer", "direction": "in"]) ?? 0 > 20_000)

            let (_, v) = try await Scrape.get("http://127.0.0.1:\(vsHTTP.port)/metrics")
            #expect(v.value("pbkv_view_number") == Double(view.viewnum))
            #expect(v.value("pbkv_viewservice_leader") == 1)
            #expect(v.value("pbkv_viewservice_live_servers") == 2)
            #expect(v.value("pbkv_view_changes_total") ?? 0 >= 2)
            #expect(v.value("pbkv_rpc_calls_total", ["method": "Ping", "code": "OK"]) ?? 0 >= 2)

            // Counters only grow between scrapes.
            try await client.put("k0", "again")
            let (_, p2) = try await Scrape.get(primary.url)
            #expect(p2.value("pbkv_rpc_calls_total", ["method": "Put", "code": "OK"])! > p.value("pbkv_rpc_calls_total", ["method": "Put", "code": "OK"])!)

            let (notFound, _) = try await Scrape.get("http://127.0.0.1:\(primary.http.port)/other")
            #expect(notFound == 404)
        } catch {
            Issue.record(error)
        }
        await client.close()
        for measured in [primary, backup].compactMap({ $0 }) {
            await measured.http.close()
            await cluster.kill(measured.node)
        }
        await vsHTTP.close()
        await cluster.shutdown()
        try await group.shutdownGracefully()
    }
}
