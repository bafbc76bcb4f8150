import PBKVCore
import PBKVClient
import PBKVObservability
import PBKVServer
import PBKVTestSupport
import PBKVWire
import Testing

/// `--compression stream` end to end: an in-process view service, primary and backup over
/// loopback TCP, every one of them offering the deflate streams; bytes read off the primary's metrics.
@Suite("Deflate streams end to end", .serialized, .timeLimit(.minutes(2)))
struct StreamCompressionEndToEndTests {
    @Test("Puts and Gets of 1 KiB JSON records through a streaming cluster: values intact, client and forward traffic streamed, a client without streams served as before")
    func streamingCluster() async throws {
        let cluster = try await InProcessCluster.start()
        let metrics = ProcessMetrics()
        let primary = try await cluster.startServer(name: "a") {
            $0.compression = .stream
            $0.metrics = metrics.factory
        }
        let primaryServer = primary.server
        metrics.addSampler { await primaryServer.refreshMetrics() }  // brings the byte counters into the registry
        // "a" is primary before "b" starts (else "b" could ping first and become primary).
        _ = try await cluster.waitForView { $0.primary == primary.address && $0.acknowledged }
        let backup = try await cluster.startServer(name: "b") { $0.compression = .stream }
        let client = try cluster.client { $0.compression = .stream }
        let plainClient = try cluster.client()
        do {
            try await cluster.waitForView { $0.primary == primary.address && $0.backup == backup.address && $0.acknowledged }
            var text = SampleText(seed: 9)
            var expected: [String: String] = [:]
            for i in 0..<100 {
                let value = text.jsonRecord(id: i, bytes: 1024)
                try await client.put("customer:\(i)", value)
                expected["customer:\(i)"] = value
            }
            #expect(try await client.putHash("h", "x") == "")
            for (key, value) in expected { #expect(try await client.get(key) == value) }
            #expect(try await client.get("h") == PutHash.newValue(previous: "", value: "x"))

            let streamed = Scrape(text: String(decoding: await metrics.scrape(), as: UTF8.self))
            func traffic(_ scrape: Scrape, _ kind: String, _ direction: String) throws -> (wire: Double, payload: Double) {
                let labels = ["kind": kind, "direction": direction]
                return (
                    try #require(scrape.value("pbkv_wire_bytes_total", labels)),
                    try #require(scrape.value("pbkv_payload_bytes_total", labels)))
            }
            let clientIn = try traffic(streamed, "client", "in")
            let forwardOut = try traffic(streamed, "forward", "out")
            #expect(clientIn.payload > 100 * 1024)
            #expect(clientIn.wire * 3 < clientIn.payload, "client requests: \(clientIn)")
            #expect(forwardOut.wire * 3 < forwardOut.payload, "forwards: \(forwardOut)")

            // A client that does not offer the streams: its frames below 64 KiB go plain.
            for i in 0..<20 {
                let value = text.jsonRecord(id: 1_000 + i, bytes: 1024)
                try await plainClient.put("plain:\(i)", value)
                #expect(try await plainClient.get("plain:\(i)") == value)
            }
            let after = Scrape(text: String(decoding: await metrics.scrape(), as: UTF8.self))
            let plainIn = try traffic(after, "client", "in")
            #expect(plainIn.wire - clientIn.wire == plainIn.payload - clientIn.payload)
            #expect(plainIn.payload - clientIn.payload > 20 * 1024)
        } catch {
            Issue.record(error)
        }
        await client.close()
        await plainClient.close()
        await cluster.kill(primary)
        await cluster.kill(backup)
        await cluster.shutdown()
    }
}
