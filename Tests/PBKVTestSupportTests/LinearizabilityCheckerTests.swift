import PBKVCore
import PBKVWire
import Synchronization
import Testing

@testable import PBKVTestSupport

// MARK: - Helpers

/// A completed get on `key` over [start, end] that returned `returns` (nil = absent).
private func get(
    _ start: UInt64, _ end: UInt64, returns: String?, key: String = "k", client: Int = 0
) -> HistoryOperation {
    HistoryOperation(
        client: client, kind: .get, key: key, invokedAt: start,
        outcome: .completed(output: returns.map(OperationOutput.value) ?? .absent, at: end))
}

/// A put on `key` over [start, end]; `end == nil` makes it indeterminate.
private func put(
    _ value: String, _ start: UInt64, _ end: UInt64?, key: String = "k", client: Int = 0
) -> HistoryOperation {
    HistoryOperation(
        client: client, kind: .put, key: key, value: value, invokedAt: start,
        outcome: end.map { .completed(output: .ok, at: $0) } ?? .indeterminate)
}

/// A putHash on `key` over [start, end] that returned `previous`; `end == nil` = indeterminate.
private func putHash(
    _ value: String, _ start: UInt64, _ end: UInt64?, returns previous: String, key: String = "k",
    client: Int = 0
) -> HistoryOperation {
    HistoryOperation(
        client: client, kind: .putHash, key: key, value: value, invokedAt: start,
        outcome: end.map { .completed(output: .value(previous), at: $0) } ?? .indeterminate)
}

/// Numbers the operations 0, 1, 2… (their `id`s).
private func numbered(_ operations: [HistoryOperation]) -> [HistoryOperation] {
    operations.enumerated().map { index, operation in
        var operation = operation
        operation.id = index
        return operation
    }
}

private func check(_ operations: [HistoryOperation]) -> LinearizabilityResult {
    LinearizabilityChecker().check(numbered(operations))
}

private func hash(_ previous: String, _ value: String) -> String {
    PutHash.newValue(previous: previous, value: value)
}

/// SplitMix64: a small deterministic generator, so randomized histories are reproducible.
private struct SplitMix64: RandomNumberGenerator {
    var state: UInt64

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A linearizable history: a sequential register map whose operations take effect at increasing
/// linearization points, each inside a random interval; each client is sequential. A few writes
/// are indeterminate (taking effect or not); a few gets too.
private func generateHistory(
    seed: UInt64, clients: Int, operations: Int, keys: [String]
) -> [HistoryOperation] {
    var rng = SplitMix64(state: seed)
    var store: [String: String] = [:]
    var clientFree = [UInt64](repeating: 0, count: clients)
    var point: UInt64 = 100
    var history: [HistoryOperation] = []
    for index in 0..<operations {
        point += UInt64.random(in: 1...20, using: &rng)
        point = max(point, (clientFree.min() ?? 0) + 1)
        let free = (0..<clients).filter { clientFree[$0] < point }
        let client = free.randomElement(using: &rng) ?? 0
        let invokedAt = max(clientFree[client] + 1, point - min(point, UInt64.random(in: 0...40, using: &rng)))
        let completedAt = point + UInt64.random(in: 0...40, using: &rng)
        clientFree[client] = completedAt
        let key = keys.randomElement(using: &rng) ?? "k"
        let roll = Int.random(in: 0..<100, using: &rng)
        let kind: OperationKind = roll < 45 ? .get : (roll < 80 ? .put : .putHash)
        let indeterminate = Int.random(in: 0..<100, using: &rng) < (kind == .get ? 3 : 5)
        let takesEffect = !indeterminate || Bool.random(using: &rng)
        var value: String?
        let output: OperationOutput
        switch kind {
        case .get:
            output = store[key].map(OperationOutput.value) ?? .absent
        case .put:
            value = "v\(index)"
            if takesEffect { store[key] = value }
            output = .ok
        case .putHash:
            let input = "h\(index)"
            value = input
            let previous = store[key] ?? ""
            if takesEffect { store[key] = PutHash.newValue(previous: previous, value: input) }
            output = .value(previous)
        }
        history.append(
            HistoryOperation(
                id: index, client: client, kind: kind, key: key, value: value, invokedAt: invokedAt,
                outcome: indeterminate ? .indeterminate : .completed(output: output, at: completedAt)))
    }
    return history
}

// MARK: - Hand-made histories

@Suite("Linearizability checker")
struct LinearizabilityCheckerTests {
    @Test("Sequential puts and gets are linearizable")
    func sequentialPutGet() {
        let result = check([
            get(0, 5, returns: nil),
            put("1", 10, 20),
            get(30, 40, returns: "1"),
            put("2", 50, 60),
            get(70, 80, returns: "2"),
        ])
        #expect(result.verdict == .linearizable)
        #expect(result.isLinearizable)
        #expect(result.failingKey == nil)
        #expect(result.counterexample.isEmpty)
    }

    @Test(
        "A get overlapping a put may see the old or the new value",
        arguments: [nil, "0", "1"] as [String?])
    func concurrentPutAndGet(seen: String?) {
        let history = [
            put("0", 0, 5, client: 1),
            put("1", 10, 50, client: 1),
            get(20, 40, returns: seen, client: 2),
        ]
        let result = check(history)
        if seen == nil {
            #expect(result.verdict == .notLinearizable, "absent after put 0 completed")
        } else {
            #expect(result.verdict == .linearizable, "\(result)")
        }
    }

    @Test("A get that starts after a put completed and returns the older value is a stale read")
    func staleRead() {
        let result = check([
            put("1", 0, 10, client: 1),
            put("2", 20, 30, client: 1),
            get(40, 50, returns: "1", client: 2),
        ])
        #expect(result.verdict == .notLinearizable)
        #expect(result.failingKey == "k")
        #expect(result.counterexample.map(\.id) == [0, 1, 2])
    }

    @Test("A later get missing the second of two sequential puts is a lost write", arguments: [nil, "1"] as [String?])
    func lostWrite(seen: String?) {
        let result = check([
            put("1", 0, 10, client: 1),
            put("2", 20, 30, client: 2),
            get(40, 50, returns: seen, client: 3),
        ])
        #expect(result.verdict == .notLinearizable)
        #expect(result.counterexample.contains { $0.kind == .get })
        #expect(result.counterexample.contains { $0.kind == .put && $0.value == "2" })
    }

    @Test("Two putHash calls that both return the same previous value were applied to the same state")
    func doubleAppliedPutHashByPreviousValues() {
        let result = check([
            putHash("a", 0, 10, returns: "", client: 1),
            putHash("a", 20, 30, returns: "", client: 2),
        ])
        #expect(result.verdict == .notLinearizable)
    }

    @Test("A get seeing one putHash applied twice is not linearizable")
    func doubleAppliedPutHashByFinalValue() {
        let once = hash("", "a")
        let twice = hash(once, "a")
        #expect(check([putHash("a", 0, 10, returns: ""), get(20, 30, returns: once)]).isLinearizable)
        #expect(check([putHash("a", 0, 10, returns: ""), get(20, 30, returns: twice)]).verdict == .notLinearizable)
        // Even if the putHash itself timed out.
        #expect(check([putHash("a", 0, nil, returns: ""), get(20, 30, returns: twice)]).verdict == .notLinearizable)
    }

    @Test("A correct putHash chain, sequential or concurrent, is linearizable")
    func putHashChain() {
        let h1 = hash("", "a")
        let h2 = hash(h1, "b")
        let h3 = hash(h2, "c")
        #expect(
            check([
                putHash("a", 0, 10, returns: ""),
                putHash("b", 20, 30, returns: h1),
                get(40, 50, returns: h2),
                putHash("c", 60, 70, returns: h2),
                get(80, 90, returns: h3),
            ]).isLinearizable)
        // Overlapping: "b" was applied first although invoked later.
        let hb = hash("x", "b")
        let hba = hash(hb, "a")
        #expect(
            check([
                put("x", 0, 5),
                putHash("a", 10, 100, returns: hb, client: 1),
                putHash("b", 20, 30, returns: "x", client: 2),
                get(110, 120, returns: hba, client: 3),
            ]).isLinearizable)
    }

    @Test("A putHash returning a wrong previous value is not linearizable")
    func putHashWrongPrevious() {
        let h1 = hash("", "a")
        let result = check([
            putHash("a", 0, 10, returns: ""),
            putHash("b", 20, 30, returns: "wrong"),
            get(40, 50, returns: hash(h1, "b")),
        ])
        #expect(result.verdict == .notLinearizable)
        #expect(result.counterexample.contains { $0.kind == .putHash && $0.output == .value("wrong") })
        // Absent is returned as "" by putHash, not as the stored value of a different key.
        #expect(check([putHash("a", 0, 10, returns: "x")]).verdict == .notLinearizable)
    }

    @Test("An indeterminate put may take effect, late, or never")
    func indeterminatePut() {
        // Seen by a later get, long after the put's client gave up.
        #expect(check([put("1", 0, nil, client: 1), get(1_000, 1_010, returns: "1", client: 2)]).isLinearizable)
        // Never seen.
        #expect(
            check([
                put("1", 0, nil, client: 1),
                get(1_000, 1_010, returns: nil, client: 2),
                put("2", 1_020, 1_030, client: 2),
                get(1_040, 1_050, returns: "2", client: 2),
            ]).isLinearizable)
        // Seen after a later completed put: it took effect after that put.
        #expect(
            check([
                put("1", 0, nil, client: 1),
                put("2", 10, 20, client: 2),
                get(30, 40, returns: "1", client: 2),
            ]).isLinearizable)
        // But it cannot take effect before it was invoked, nor be un-done once seen.
        #expect(check([get(0, 10, returns: "1"), put("1", 20, nil, client: 1)]).verdict == .notLinearizable)
        #expect(
            check([
                put("1", 0, nil, client: 1),
                get(10, 20, returns: "1", client: 2),
                get(30, 40, returns: nil, client: 2),
            ]).verdict == .notLinearizable)
    }

    @Test("Indeterminate gets and unobserved indeterminate puts do not change verdicts")
    func manyIndeterminateOperations() {
        var history: [HistoryOperation] = []
        for index in 0..<200 {
            let time = UInt64(index) * 100
            history.append(put("lost\(index)", time, nil, client: 1_000 + index))
            history.append(put("v\(index)", time + 10, time + 20, client: 1))
            history.append(
                HistoryOperation(client: 2, kind: .get, key: "k", invokedAt: time + 30, outcome: .indeterminate))
            history.append(get(time + 40, time + 50, returns: "v\(index)", client: 2))
        }
        #expect(check(history).isLinearizable)
        history.append(get(1_000_000, 1_000_010, returns: "v3", client: 2))
        #expect(check(history).verdict == .notLinearizable)
    }

    @Test("A get returning \"\" for a never-written key is not linearizable: absent differs from empty")
    func absentVersusEmpty() {
        #expect(check([get(0, 10, returns: "")]).verdict == .notLinearizable)
        #expect(check([get(0, 10, returns: nil)]).isLinearizable)
        #expect(check([put("", 0, 10), get(20, 30, returns: "")]).isLinearizable)
        #expect(check([put("", 0, 10), get(20, 30, returns: nil)]).verdict == .notLinearizable)
        // putHash reports an absent key as "".
        #expect(check([putHash("a", 0, 10, returns: ""), get(20, 30, returns: hash("", "a"))]).isLinearizable)
    }

    @Test("Keys are checked independently and a violation names its key")
    func perKeyIndependence() {
        let result = check([
            put("1", 0, 10, key: "a", client: 1),
            put("1", 0, 10, key: "b", client: 2),
            put("2", 20, 30, key: "b", client: 2),
            get(40, 50, returns: "1", key: "a", client: 3),
            get(40, 50, returns: "1", key: "b", client: 3),
            put("x", 5, 60, key: "c", client: 4),
            get(20, 30, returns: "x", key: "c", client: 5),
        ])
        #expect(result.verdict == .notLinearizable)
        #expect(result.failingKey == "b")
        #expect(result.failingKeys == ["b"])
        #expect(result.keyCount == 3)
        #expect(!result.counterexample.isEmpty)
        #expect(result.counterexample.allSatisfy { $0.key == "b" })
        // The same operations on one register are not linearizable for another reason too.
        #expect(LinearizabilityChecker().checkRegister(numbered([put("1", 0, 10), get(20, 30, returns: "x")])) == .notLinearizable)
    }

    @Test("An exhausted search budget gives an unknown verdict instead of hanging")
    func searchBudget() {
        let history = generateHistory(seed: 7, clients: 4, operations: 200, keys: ["k"])
        let result = LinearizabilityChecker(maxStepsPerKey: 10).check(history)
        #expect(result.verdict == .unknown)
        #expect(!result.isLinearizable)
        #expect(result.unknownKeys == ["k"])
        #expect(result.description.contains("unknown (search budget exhausted)"))
        #expect(LinearizabilityChecker().check(history).isLinearizable)
    }

    @Test("The description lists the counterexample one operation per line")
    func failureDescription() {
        let result = check([
            put("1", 100, 200, client: 1),
            put("2", 300, 400, client: 1),
            get(500, 600, returns: "1", client: 2),
            put("3", 700, nil, client: 3),
        ])
        let lines = result.description.split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("not linearizable: key \"k\"") == true)
        #expect(lines.contains("  #0 client 1 [100, 200] put(\"k\", \"1\") -> ok"))
        #expect(lines.contains("  #2 client 2 [500, 600] get(\"k\") -> \"1\""))
        #expect(!lines.contains { $0.contains("\"3\"") }, "the irrelevant indeterminate put is shrunk away")
        #expect(put("3", 700, nil, client: 3).description == "#0 client 3 [700, ∞) put(\"k\", \"3\") -> indeterminate")
    }

    @Test("Shrinking a long history keeps a small sub-history that is still not linearizable")
    func shrinking() {
        var history = generateHistory(seed: 42, clients: 5, operations: 400, keys: ["k"])
        // A stale read early on: a get, after two completed sequential puts, sees the first.
        let base = (history.map(\.invokedAt).max() ?? 0) + 1_000
        history += [
            put("early1", base, base + 10, client: 90),
            put("early2", base + 20, base + 30, client: 90),
            get(base + 40, base + 50, returns: "early1", client: 91),
        ]
        history += generateHistory(seed: 43, clients: 5, operations: 400, keys: ["k"]).map { operation in
            var operation = operation
            operation.invokedAt += base + 100
            if case .completed(let output, let at) = operation.outcome {
                operation.outcome = .completed(output: output, at: at + base + 100)
            }
            return operation
        }
        let result = LinearizabilityChecker().check(numbered(history))
        #expect(result.verdict == .notLinearizable)
        #expect(result.counterexample.count <= 5, "\(result)")
        #expect(LinearizabilityChecker().checkRegister(result.counterexample) == .notLinearizable)
    }

    // MARK: - Randomized

    @Test("Randomized linearizable histories pass, and a corrupted get makes them fail", arguments: [1, 2, 3] as [UInt64])
    func randomized(seed: UInt64) throws {
        let history = generateHistory(seed: seed, clients: 6, operations: 500, keys: ["a", "b", "c"])
        let result = LinearizabilityChecker().check(history)
        #expect(result.verdict == .linearizable, "\(result)")

        var rng = SplitMix64(state: seed ^ 0xC0FFEE)
        let gets = history.indices.filter { history[$0].kind == .get && !history[$0].isIndeterminate }
        let index = try #require(gets.randomElement(using: &rng))
        var corrupted = history
        corrupted[index].outcome = .completed(
            output: .value("never-written"), at: corrupted[index].completedAt ?? corrupted[index].invokedAt)
        let failure = LinearizabilityChecker().check(corrupted)
        #expect(failure.verdict == .notLinearizable)
        #expect(failure.failingKey == history[index].key)
        #expect(failure.counterexample.contains { $0.id == history[index].id }, "\(failure)")
        #expect(failure.counterexample.count <= 3, "\(failure)")
    }

    @Test("A few thousand operations on one key are checked quickly", .timeLimit(.minutes(1)))
    func largeSingleKeyHistory() {
        let history = generateHistory(seed: 99, clients: 8, operations: 4_000, keys: ["k"])
        let result = LinearizabilityChecker().check(history)
        #expect(result.verdict == .linearizable, "\(result)")
        #expect(result.searchSteps < 100_000, "the search backtracks far more than a nearly sequential history needs")
    }
}

// MARK: - Recorder

/// A trivially linearizable in-memory map.
private final class LockedStore: Sendable {
    let map = Mutex<[String: String]>([:])
}

@Suite("History recorder")
struct HistoryRecorderTests {
    @Test("Concurrent recording from several tasks produces well-formed, linearizable operations")
    func concurrentRecording() async {
        let recorder = HistoryRecorder()
        let store = LockedStore()
        let clients = 8
        let perClient = 100
        await withTaskGroup(of: Void.self) { group in
            for client in 0..<clients {
                group.addTask {
                    for index in 0..<perClient {
                        let key = "k\(index % 3)"
                        switch (client + index) % 4 {
                        case 0:
                            let token = recorder.invoke(client: client, kind: .put, key: key, value: "\(client)-\(index)")
                            store.map.withLock { $0[key] = "\(client)-\(index)" }
                            await Task.yield()
                            recorder.complete(token, output: .ok)
                        case 1:
                            let token = recorder.invoke(client: client, kind: .putHash, key: key, value: "\(index)")
                            let previous = store.map.withLock { store in
                                let previous = store[key] ?? ""
                                store[key] = PutHash.newValue(previous: previous, value: "\(index)")
                                return previous
                            }
                            recorder.complete(token, output: .value(previous))
                        case 2:
                            let token = recorder.invoke(client: client, kind: .put, key: key, value: "lost")
                            await Task.yield()
                            recorder.completeIndeterminate(token)
                        default:
                            let token = recorder.invoke(client: client, kind: .get, key: key)
                            await Task.yield()
                            let value = store.map.withLock { $0[key] }
                            recorder.complete(token, output: value.map(OperationOutput.value) ?? .absent)
                        }
                    }
                }
            }
        }
        let history = recorder.history()
        #expect(history.count == clients * perClient)
        #expect(recorder.count == clients * perClient)
        #expect(history.map(\.id) == Array(0..<history.count))
        for operation in history {
            if let completedAt = operation.completedAt {
                #expect(operation.invokedAt <= completedAt)
            } else {
                #expect(operation.kind == .put && operation.value == "lost")
            }
        }
        // Each client is sequential.
        for client in 0..<clients {
            let own = history.filter { $0.client == client }
            #expect(own.count == perClient)
            for (earlier, later) in zip(own, own.dropFirst()) {
                #expect((earlier.completedAt ?? earlier.invokedAt) <= later.invokedAt)
            }
        }
        let result = LinearizabilityChecker().check(history)
        #expect(result.isLinearizable, "\(result)")
    }

    @Test("Open operations are indeterminate and double completions are ignored")
    func openAndDoubleCompletion() {
        let ticks = Mutex<UInt64>(0)
        let recorder = HistoryRecorder(clock: {
            ticks.withLock { ticks in
                ticks += 10
                return ticks
            }
        })
        let first = recorder.invoke(client: 1, kind: .put, key: "k", value: "1")
        let second = recorder.invoke(client: 2, kind: .get, key: "k")
        recorder.complete(first, output: .ok)
        recorder.complete(first, output: .value("ignored"))
        recorder.completeIndeterminate(first)
        recorder.complete(OperationToken(id: 99), output: .ok)
        let history = recorder.history()
        #expect(history.count == 2)
        #expect(history[0].outcome == .completed(output: .ok, at: 30))
        #expect(history[0].invokedAt == 10)
        #expect(history[1].id == second.id)
        #expect(history[1].isIndeterminate)
        #expect(LinearizabilityChecker().check(history).isLinearizable)
    }
}
