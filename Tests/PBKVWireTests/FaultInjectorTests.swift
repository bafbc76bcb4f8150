import NIOCore
import PBKVCore
import PBKVWire
import Testing

@Suite("Fault injector", .timeLimit(.minutes(1)))
struct FaultInjectorTests {
    @Test("dropRequest 0.3 drops about 30 % of 10,000 requests", arguments: [UInt64(1), 42, 0xC0FFEE])
    func dropRate(seed: UInt64) {
        let injector = FaultInjector(policy: FaultPolicy(dropRequest: 0.3), seed: seed)
        var dropped = 0
        for _ in 0..<10_000 where injector.shouldDropRequest() { dropped += 1 }
        let rate = Double(dropped) / 10_000
        #expect(abs(rate - 0.3) <= 0.03, "observed \(rate)")
        #expect(injector.counts.requestsSeen == 10_000)
        #expect(injector.counts.requestsDropped == dropped)
    }

    @Test("The same seed gives the same decisions; another seed does not")
    func reproducible() {
        func decisions(seed: UInt64) -> [Bool] {
            let injector = FaultInjector(policy: FaultPolicy(dropRequest: 0.3, dropReply: 0.5), seed: seed)
            return (0..<1_000).map { i in i % 2 == 0 ? injector.shouldDropRequest() : injector.shouldDropReply() }
        }
        let a = decisions(seed: 2024)
        #expect(a == decisions(seed: 2024))
        #expect(a != decisions(seed: 2025))
        #expect(a.contains(true) && a.contains(false))
    }

    @Test("Probability 0 never fires, 1 always fires, a partition drops everything")
    func extremes() {
        let never = FaultInjector(policy: .none, seed: 3)
        #expect(!(0..<1_000).contains { _ in never.shouldDropRequest() || never.shouldDropReply() || never.shouldRefuseConnection() })
        #expect(never.connectionDelay() == nil)
        let always = FaultInjector(policy: FaultPolicy(dropReply: 1, refuseConnection: 1, delayConnection: 1,
                                                       connectionDelay: .milliseconds(7)), seed: 3)
        #expect((0..<1_000).allSatisfy { _ in always.shouldDropReply() && always.shouldRefuseConnection() })
        #expect(always.connectionDelay() == .milliseconds(7))
        let partitioned = FaultInjector(policy: .none, seed: 3)
        partitioned.policy.partitioned = true
        #expect((0..<100).allSatisfy { _ in partitioned.shouldDropRequest() && partitioned.shouldDropReply() })
        partitioned.policy = .none
        #expect(!partitioned.shouldDropRequest())
        #expect(partitioned.counts.requestsSeen == 101)
        #expect(partitioned.counts.requestsDropped == 100)
        #expect(partitioned.counts.repliesDropped == 100)
    }

    @Test("dropNextRequests and dropNextReplies drop exactly that many, then the probabilities rule")
    func dropNext() {
        let injector = FaultInjector(policy: FaultPolicy(dropNextRequests: 2, dropNextReplies: 1), seed: 4)
        #expect((0..<5).map { _ in injector.shouldDropRequest() } == [true, true, false, false, false])
        #expect((0..<3).map { _ in injector.shouldDropReply() } == [true, false, false])
        #expect(injector.policy.dropNextRequests == 0 && injector.policy.dropNextReplies == 0)
        #expect(injector.counts.requestsDropped == 2 && injector.counts.repliesDropped == 1)
        injector.policy.dropNextRequests = 1
        #expect(injector.shouldDropRequest() && !injector.shouldDropRequest())
    }

    @Test("SplitMix64 is uniform enough for fault decisions")
    func splitMix() {
        var rng = SplitMix64(seed: 99)
        var buckets = [Int](repeating: 0, count: 10)
        for _ in 0..<100_000 { buckets[Int(rng.next() % 10)] += 1 }
        #expect(buckets.allSatisfy { abs($0 - 10_000) < 500 }, "\(buckets)")
    }

    @Test("dropReply on a live server: the handler ran, the caller times out")
    func dropReplyOnLiveServer() async throws {
        let faults = FaultInjector(policy: FaultPolicy(dropReply: 1.0), seed: 5)
        try await LiveServer.with(configure: { $0.faults = faults }) { live async throws in
            let client = live.client()
            let start = ContinuousClock.now
            let error = await rpcError { () async throws(RPCError) in
                try await client.call(.ping(PingArgs(server: "effect", viewnum: 9)), timeout: .milliseconds(300))
            }
            let elapsed = ContinuousClock.now - start
            if case .timeout? = error {} else { Issue.record("expected timeout, got \(String(describing: error))") }
            #expect(elapsed < .seconds(5))
            #expect(live.log.calls == [.ping(PingArgs(server: "effect", viewnum: 9))], "the handler ran once")
            #expect(faults.counts.repliesDropped == 1)
            #expect(faults.counts.requestsDropped == 0)
            // Healing the network: the next call is answered on the same connection.
            faults.policy = .none
            #expect(try await client.call(.ping(PingArgs(server: "s", viewnum: 10)), timeout: .seconds(10)) == echoed(10))
            #expect(live.log.connections.count == 1)
        }
    }

    @Test("Client-side faults: a dropped request never reaches the server, a dropped reply times out after it ran")
    func clientSideFaults() async throws {
        try await LiveServer.with { live async throws in
            let dropRequests = FaultInjector(policy: FaultPolicy(dropRequest: 1.0), seed: 1)
            let a = live.client(configure: { $0.faults = dropRequests })
            let first = await rpcError { () async throws(RPCError) in try await a.call(.getView, timeout: .milliseconds(200)) }
            if case .timeout? = first {} else { Issue.record("expected timeout, got \(String(describing: first))") }
            #expect(live.log.count == 0)

            let dropReplies = FaultInjector(policy: FaultPolicy(dropReply: 1.0), seed: 1)
            let b = live.client(configure: { $0.faults = dropReplies })
            let second = await rpcError { () async throws(RPCError) in try await b.call(.getView, timeout: .milliseconds(200)) }
            if case .timeout? = second {} else { Issue.record("expected timeout, got \(String(describing: second))") }
            #expect(live.log.calls == [.getView])
            #expect(dropReplies.counts.repliesDropped == 1)
        }
    }

    @Test("refuseConnection closes new connections; the client reports connectionRefused")
    func refuseConnection() async throws {
        let faults = FaultInjector(policy: FaultPolicy(refuseConnection: 1.0), seed: 1)
        try await LiveServer.with(configure: { $0.faults = faults }) { live async throws in
            let client = live.client()
            let error = await rpcError { () async throws(RPCError) in try await client.call(.getView, timeout: .seconds(5)) }
            if case .connectionRefused? = error {} else { Issue.record("expected connectionRefused, got \(String(describing: error))") }
            #expect(faults.counts.connectionsRefused >= 1)
            faults.policy = .none
            #expect(try await client.call(.getView, timeout: .seconds(5)) == .view(EchoViewService.fixedView))
        }
    }
}
