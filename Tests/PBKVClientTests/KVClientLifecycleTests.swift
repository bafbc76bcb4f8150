import PBKVClient
import PBKVTestSupport
import Synchronization
import Testing

/// What a caller controls: cancellation and `close()` end calls at once, not at their deadline
/// — a call in flight and one waiting for its turn alike. The cluster has a view service and no
/// server, so every call retries (no primary) until its 30 s deadline unless ended.
@Suite("KVClient cancellation and close", .timeLimit(.minutes(1)))
struct KVClientLifecycleTests {
    @Test("A cancelled call with no primary to reach ends with .cancelled, not after its 30 s deadline")
    func cancellationIsNotSwallowed() async throws {
        let cluster = try await InProcessCluster.start()
        let client = try cluster.client(deadline: .seconds(30))
        let call = Task { try await client.get("k") }
        // Let it fail an attempt or two (no server has pinged: no primary), then cancel it.
        try await cluster.waitUntil("the client retried") { await client.stats.retries >= 1 }
        call.cancel()
        await #expect(throws: KVClientError.cancelled(operation: "Get", key: "k")) { _ = try await call.value }
        await client.close()
        await cluster.shutdown()
    }

    @Test("A call waiting for its turn ends with .cancelled when its task is, while the call ahead still runs")
    func waitingCallCancelled() async throws {
        let cluster = try await InProcessCluster.start()
        let client = try cluster.client(deadline: .seconds(30))
        let aheadEnded = Atomic(false)
        let ahead = Task {
            defer { aheadEnded.store(true, ordering: .sequentiallyConsistent) }
            _ = try await client.get("a")
        }
        try await cluster.waitUntil("the first call is retrying") { await client.stats.retries >= 1 }
        let waiting = Task { try await client.put("b", "1") }
        try await cluster.waitUntil("the second call waits for its turn") { await client.callsWaiting == 1 }
        waiting.cancel()
        await #expect(throws: KVClientError.cancelled(operation: "Put", key: "b")) { try await waiting.value }
        let aheadEndedFirst = aheadEnded.load(ordering: .sequentiallyConsistent)
        #expect(!aheadEndedFirst, "ended before the call it waited behind")
        #expect(await client.callsWaiting == 0)
        #expect(await client.stats.operations == 1, "the cancelled call never got a request id")
        ahead.cancel()
        await #expect(throws: KVClientError.cancelled(operation: "Get", key: "a")) { try await ahead.value }
        await client.close()
        await cluster.shutdown()
    }

    @Test("close() ends the call in flight and the call waiting with .closed, not at their deadline")
    func closeEndsEveryCall() async throws {
        let cluster = try await InProcessCluster.start()
        let client = try cluster.client(deadline: .seconds(30))
        let inFlight = Task { _ = try await client.get("a") }
        try await cluster.waitUntil("the first call is retrying") { await client.stats.retries >= 1 }
        let waiting = Task { try await client.put("b", "1") }
        try await cluster.waitUntil("the second call waits for its turn") { await client.callsWaiting == 1 }
        await client.close()
        await #expect(throws: KVClientError.closed) { try await waiting.value }
        await #expect(throws: KVClientError.closed) { try await inFlight.value }
        await #expect(throws: KVClientError.closed) { try await client.get("c") }
        await cluster.shutdown()
    }
}
