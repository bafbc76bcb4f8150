import PBKVCore
import PBKVWire

/// The three-valued verdict of a linearizability check.
public enum LinearizabilityVerdict: Sendable, Hashable, CustomStringConvertible {
    /// Some sequential order of the operations respects real time and the register semantics.
    case linearizable
    /// No such order exists.
    case notLinearizable
    /// The search budget was exhausted before a verdict was reached.
    case unknown

    public var description: String {
        switch self {
        case .linearizable: "linearizable"
        case .notLinearizable: "not linearizable"
        case .unknown: "unknown (search budget exhausted)"
        }
    }
}

/// The outcome of checking a whole (multi-key) history with `LinearizabilityChecker`.
///
/// On failure it names the failing key and carries a small counterexample: a sub-history of that
/// key's operations that is not linearizable on its own (see `LinearizabilityChecker.shrink`).
public struct LinearizabilityResult: Sendable, CustomStringConvertible {
    /// `.notLinearizable` if any key is, else `.unknown` if any key's search ran out of budget.
    public var verdict: LinearizabilityVerdict
    /// The first key (in sorted order) found not linearizable.
    public var failingKey: String?
    /// Every key found not linearizable, sorted.
    public var failingKeys: [String]
    /// Every key whose search exhausted its budget, sorted.
    public var unknownKeys: [String]
    /// A small sub-history of `failingKey`'s operations that is not linearizable by itself,
    /// sorted by invocation time; empty unless `verdict == .notLinearizable`.
    public var counterexample: [HistoryOperation]
    /// How many operations `failingKey` had in the checked history (before shrinking).
    public var failingKeyOperationCount: Int
    /// Total number of operations and of distinct keys checked.
    public var operationCount: Int
    public var keyCount: Int
    /// Search steps spent on the verdict (shrinking not included).
    public var searchSteps: Int

    public var isLinearizable: Bool { verdict == .linearizable }

    public var description: String {
        let summary = "\(operationCount) operations, \(keyCount) keys, \(searchSteps) search steps"
        var lines: [String] = []
        switch verdict {
        case .linearizable:
            lines.append("linearizable (\(summary))")
        case .unknown:
            lines.append("unknown (search budget exhausted) for keys \(Self.quoted(unknownKeys)) (\(summary))")
        case .notLinearizable:
            let key = failingKey.map { String(reflecting: $0) } ?? "?"
            lines.append("not linearizable: key \(key) (\(summary))")
            if failingKeys.count > 1 {
                lines.append("keys not linearizable: \(Self.quoted(failingKeys))")
            }
            if !unknownKeys.isEmpty {
                lines.append("keys unknown (search budget exhausted): \(Self.quoted(unknownKeys))")
            }
            lines.append(
                "counterexample: \(counterexample.count) of \(failingKeyOperationCount) operations on key \(key),"
                    + " not linearizable on their own:")
            for operation in counterexample {
                lines.append("  \(operation)")
            }
        }
        return lines.joined(separator: "\n")
    }

    private static func quoted(_ keys: [String]) -> String {
        keys.map { String(reflecting: $0) }.joined(separator: ", ")
    }
}

/// Checks a history of `get`/`put`/`putHash` operations on a map of string registers for
/// linearizability.
///
/// Keys are independent registers (linearizability is compositional), so the history is
/// partitioned by key and each partition checked on its own with the Wing & Gong / Lowe search
/// as in Porcupine: call/return events sorted by time in a linked list, depth-first search that
/// lifts linearized operations out of the list and unlifts them on backtracking, memoizing
/// visited (linearized-set bitset, register state) pairs. Indeterminate operations return at
/// +infinity with any output. Each key's search is bounded by `maxStepsPerKey`.
public struct LinearizabilityChecker: Sendable {
    /// Search steps allowed per key before its verdict becomes `.unknown`.
    public var maxStepsPerKey: Int
    /// Checks allowed while shrinking a counterexample (0 disables shrinking).
    public var maxShrinkChecks: Int
    /// Search steps allowed for each check while shrinking.
    public var maxStepsPerShrinkCheck: Int

    public init(
        maxStepsPerKey: Int = 10_000_000,
        maxShrinkChecks: Int = 1_000,
        maxStepsPerShrinkCheck: Int = 1_000_000
    ) {
        self.maxStepsPerKey = maxStepsPerKey
        self.maxShrinkChecks = maxShrinkChecks
        self.maxStepsPerShrinkCheck = maxStepsPerShrinkCheck
    }

    /// Checks every key of `history` and, if one is not linearizable, shrinks a counterexample.
    public func check(_ history: [HistoryOperation]) -> LinearizabilityResult {
        var byKey: [String: [HistoryOperation]] = [:]
        for operation in history {
            byKey[operation.key, default: []].append(operation)
        }
        var failingKeys: [String] = []
        var unknownKeys: [String] = []
        var firstFailure: [HistoryOperation] = []
        var searchSteps = 0
        for (key, operations) in byKey.sorted(by: { $0.key < $1.key }) {
            let outcome = RegisterSearch.run(operations, maxSteps: maxStepsPerKey)
            searchSteps += outcome.steps
            switch outcome.verdict {
            case .linearizable: break
            case .unknown: unknownKeys.append(key)
            case .notLinearizable:
                if failingKeys.isEmpty { firstFailure = operations }
                failingKeys.append(key)
            }
        }
        let verdict: LinearizabilityVerdict =
            !failingKeys.isEmpty ? .notLinearizable : (!unknownKeys.isEmpty ? .unknown : .linearizable)
        return LinearizabilityResult(
            verdict: verdict,
            failingKey: failingKeys.first,
            failingKeys: failingKeys,
            unknownKeys: unknownKeys,
            counterexample: failingKeys.isEmpty ? [] : shrink(firstFailure),
            failingKeyOperationCount: firstFailure.count,
            operationCount: history.count,
            keyCount: byKey.count,
            searchSteps: searchSteps)
    }

    /// Checks `operations` as operations on one single register, whatever their keys.
    public func checkRegister(_ operations: [HistoryOperation]) -> LinearizabilityVerdict {
        RegisterSearch.run(operations, maxSteps: maxStepsPerKey).verdict
    }

    /// Shrinks a non-linearizable single-register history to a small sub-history that is still
    /// not linearizable on its own, within `maxShrinkChecks` checks. Returns it sorted by
    /// invocation time (the input itself, sorted, if nothing smaller was proven).
    ///
    /// First it cuts the history at the earliest completion time T such that the operations
    /// invoked up to T, with those completing after T made indeterminate, are already not
    /// linearizable (a sound witness: it implies the whole history is not). Then it tries to drop
    /// `get`s (also sound), then writes whose stored value no remaining operation observed, keeping
    /// each removal only if the rest stays not linearizable. Dropping writes can change which
    /// symptom the counterexample shows, but never drops the write a remaining read observed.
    public func shrink(_ operations: [HistoryOperation]) -> [HistoryOperation] {
        var shrinker = Shrinker(maxChecks: maxShrinkChecks, maxSteps: maxStepsPerShrinkCheck)
        return shrinker.shrink(operations).sorted { ($0.invokedAt, $0.id) < ($1.invokedAt, $1.id) }
    }
}

// MARK: - Shrinking

private struct Shrinker {
    let maxChecks: Int
    let maxSteps: Int
    var checks = 0

    init(maxChecks: Int, maxSteps: Int) {
        self.maxChecks = maxChecks
        self.maxSteps = maxSteps
    }

    private var hasBudget: Bool { checks < maxChecks }

    private mutating func isViolation(_ operations: [HistoryOperation]) -> Bool {
        checks += 1
        return RegisterSearch.run(operations, maxSteps: maxSteps).verdict == .notLinearizable
    }

    mutating func shrink(_ operations: [HistoryOperation]) -> [HistoryOperation] {
        var current = operations

        // Phase 1: the earliest cut-off time whose truncated history is already a violation.
        // Truncation is monotone (a later cut-off only adds constraints), so binary search works.
        let times = Set(operations.compactMap(\.completedAt)).sorted()
        var low = 0
        var high = times.count - 1
        var best: UInt64?
        while low <= high && hasBudget {
            let middle = (low + high) / 2
            if isViolation(Self.truncated(operations, at: times[middle])) {
                best = times[middle]
                high = middle - 1
            } else {
                low = middle + 1
            }
        }
        if let best {
            // The same operations with their real outputs are at least as constrained.
            let prefix = operations.filter { $0.invokedAt <= best }
            if prefix.count < current.count && hasBudget && isViolation(prefix) {
                current = prefix
            }
        }

        // Phase 2: drop reads, then unobserved writes, while the rest stays a violation.
        var changed = true
        while changed && hasBudget {
            changed = false
            if removeWhileViolating(&current, eligible: Self.reads) { changed = true }
            if removeWhileViolating(&current, eligible: Self.unobservedWrites) { changed = true }
        }
        return current
    }

    /// Operations invoked by `time`; those completing after it become indeterminate.
    static func truncated(_ operations: [HistoryOperation], at time: UInt64) -> [HistoryOperation] {
        operations.compactMap { operation in
            guard operation.invokedAt <= time else { return nil }
            var result = operation
            if let completedAt = operation.completedAt, completedAt > time {
                result.outcome = .indeterminate
            }
            return result
        }
    }

    static func reads(_ operations: [HistoryOperation]) -> [Int] {
        operations.indices.filter { operations[$0].kind == .get }
    }

    /// Writes whose stored value (when known) no remaining read or putHash observed.
    static func unobservedWrites(_ operations: [HistoryOperation]) -> [Int] {
        var observed = Set<String>()
        for operation in operations {
            guard case .completed(.value(let value), _) = operation.outcome else { continue }
            if operation.kind == .get || (operation.kind == .putHash && !value.isEmpty) {
                observed.insert(value)
            }
        }
        return operations.indices.filter { index in
            let operation = operations[index]
            switch operation.kind {
            case .get:
                return false
            case .put:
                return !observed.contains(operation.value ?? "")
            case .putHash:
                let previous: String
                switch operation.outcome {
                case .completed(.value(let value), _): previous = value
                case .completed(.absent, _): previous = ""
                case .completed(.ok, _), .indeterminate: return true
                }
                let stored = PutHash.newValue(previous: previous, value: operation.value ?? "")
                return !observed.contains(stored)
            }
        }
    }

    /// Delta-debugging style removal of chunks of `eligible` operations (recomputed after each
    /// removal), halving the chunk size down to single operations. Returns whether it removed any.
    private mutating func removeWhileViolating(
        _ current: inout [HistoryOperation],
        eligible: ([HistoryOperation]) -> [Int]
    ) -> Bool {
        var changed = false
        var chunk = max(1, eligible(current).count / 2)
        while hasBudget {
            var removed = false
            var start = 0
            while hasBudget {
                let candidates = eligible(current)
                if start >= candidates.count { break }
                let drop = Set(candidates[start..<min(start + chunk, candidates.count)])
                let candidate = current.indices.filter { !drop.contains($0) }.map { current[$0] }
                if isViolation(candidate) {
                    current = candidate
                    removed = true
                    changed = true
                } else {
                    start += chunk
                }
            }
            if chunk == 1 {
                if !removed { break }
            } else {
                chunk = max(1, chunk / 2)
            }
        }
        return changed
    }
}

// MARK: - Search

/// The Wing & Gong / Lowe search over one register's history.
enum RegisterSearch {
    struct Outcome {
        var verdict: LinearizabilityVerdict
        var steps: Int
    }

    /// One operation as a transition of the register model; values are interned (-1 = absent).
    private enum Step {
        case read(expected: Int)
        case impossible
        case write(Int)
        case hash(input: Int, expectedPrevious: Int?)

        /// Whether this is a get that can be linearized in `state`.
        func reads(_ state: Int) -> Bool {
            if case .read(let expected) = self { return expected == state }
            return false
        }
    }

    /// A linearized operation on the search stack: its call node and the state before it.
    private struct Frame {
        var call: Int
        var state: Int
        /// Its position in the candidate list of the state it was chosen in; after backtracking
        /// the search resumes with the next candidate (the list is rebuilt identically). -1 for
        /// a forced read (linearized greedily, with no alternative to explore).
        var candidateIndex: Int

        var forced: Bool { candidateIndex < 0 }
    }

    private struct PairKey: Hashable {
        var state: Int
        var input: Int
    }

    /// Interned register values and memoized PutHash results.
    private struct Model {
        private(set) var strings: [String] = [""]
        private var ids: [String: Int] = ["": 0]
        private var hashes: [PairKey: Int] = [:]
        let emptyID = 0

        mutating func intern(_ string: String) -> Int {
            if let id = ids[string] { return id }
            let id = strings.count
            strings.append(string)
            ids[string] = id
            return id
        }

        mutating func apply(_ step: Step, to state: Int) -> Int? {
            switch step {
            case .read(let expected):
                return state == expected ? state : nil
            case .impossible:
                return nil
            case .write(let value):
                return value
            case .hash(let input, let expectedPrevious):
                if let expectedPrevious, expectedPrevious != (state < 0 ? emptyID : state) {
                    return nil
                }
                let key = PairKey(state: state, input: input)
                if let result = hashes[key] { return result }
                let previous = state < 0 ? "" : strings[state]
                let result = intern(PutHash.newValue(previous: previous, value: strings[input]))
                hashes[key] = result
                return result
            }
        }
    }

    private struct Bitset: Hashable {
        var words: [UInt64]

        init(count: Int) {
            words = [UInt64](repeating: 0, count: (count + 63) / 64)
        }

        mutating func insert(_ index: Int) {
            words[index >> 6] |= 1 << UInt64(index & 63)
        }

        mutating func remove(_ index: Int) {
            words[index >> 6] &= ~(1 << UInt64(index & 63))
        }
    }

    private struct CacheKey: Hashable {
        var linearized: Bitset
        var state: Int
    }

    /// The doubly linked list of call/return events; node 0 is the head sentinel.
    private struct Events {
        var next: [Int]
        var previous: [Int]
        /// For a call node, its return node; -1 for return nodes and the head.
        var match: [Int]
        /// The operation of each node.
        var operation: [Int]

        /// Removes a call and its return from the list.
        mutating func lift(_ call: Int) {
            next[previous[call]] = next[call]
            previous[next[call]] = previous[call]
            let ret = match[call]
            next[previous[ret]] = next[ret]
            if next[ret] >= 0 { previous[next[ret]] = previous[ret] }
        }

        /// Puts back a call and its return lifted by `lift`.
        mutating func unlift(_ call: Int) {
            let ret = match[call]
            next[previous[ret]] = ret
            if next[ret] >= 0 { previous[next[ret]] = ret }
            next[previous[call]] = call
            previous[next[call]] = call
        }
    }

    static func run(_ input: [HistoryOperation], maxSteps: Int) -> Outcome {
        let operations = relevantOperations(input)
        let count = operations.count
        if count == 0 { return Outcome(verdict: .linearizable, steps: 0) }

        var model = Model()
        var steps: [Step] = []
        steps.reserveCapacity(count)
        for operation in operations {
            steps.append(step(for: operation, model: &model))
        }

        // Events sorted by time; at equal times calls come first (treated as concurrent).
        struct Event {
            var time: UInt64
            var isCall: Bool
            var operation: Int
        }
        var timeline: [Event] = []
        timeline.reserveCapacity(2 * count)
        for index in 0..<count {
            let invokedAt = operations[index].invokedAt
            var returnTime = UInt64.max  // indeterminate: returns at +infinity
            if let completedAt = operations[index].completedAt { returnTime = max(completedAt, invokedAt) }
            timeline.append(Event(time: invokedAt, isCall: true, operation: index))
            timeline.append(Event(time: returnTime, isCall: false, operation: index))
        }
        timeline.sort { a, b in
            if a.time != b.time { return a.time < b.time }
            if a.isCall != b.isCall { return a.isCall }
            return a.operation < b.operation
        }

        let nodeCount = 2 * count + 1
        var events = Events(
            next: (0..<nodeCount).map { $0 + 1 < nodeCount ? $0 + 1 : -1 },
            previous: (0..<nodeCount).map { $0 - 1 },
            match: [Int](repeating: -1, count: nodeCount),
            operation: [Int](repeating: -1, count: nodeCount))
        var callNode = [Int](repeating: 0, count: count)
        for (position, event) in timeline.enumerated() {
            let node = position + 1
            events.operation[node] = event.operation
            if event.isCall {
                callNode[event.operation] = node
            } else {
                events.match[callNode[event.operation]] = node
            }
        }

        var linearized = Bitset(count: count)
        var visited = Set<CacheKey>()
        var stack: [Frame] = []
        var candidates: [Int] = []
        var state = -1
        // After backtracking to a choice: the candidate index to resume from (-1: a fresh state).
        var resumeAt = -1
        var stepCount = 0
        search: while events.next[0] >= 0 {
            if stepCount >= maxSteps { return Outcome(verdict: .unknown, steps: stepCount) }
            stepCount += 1

            // The calls that can be linearized next: those before the first remaining return
            // (every operation that returned before they were invoked is linearized already),
            // tried in invocation order as Porcupine does. (Earliest-return-first was tried and
            // is far worse: operations pending forever are then tried last, after every
            // reordering of their neighbours — 1.86 M steps instead of 7 k on 4,000 operations.)
            candidates.removeAll(keepingCapacity: true)
            var node = events.next[0]
            while node >= 0 && events.match[node] >= 0 {
                candidates.append(node)
                node = events.next[node]
            }

            var stuck = false
            var forcedRead = -1
            if resumeAt < 0 {
                for call in candidates where steps[events.operation[call]].reads(state) {
                    forcedRead = call
                    break
                }
            }
            if forcedRead >= 0 {
                let read = forcedRead
                // A get that can be linearized now can always be linearized first (it changes
                // nothing, and whatever must precede it already is), so it gets no alternative.
                var newLinearized = linearized
                newLinearized.insert(events.operation[read])
                if visited.insert(CacheKey(linearized: newLinearized, state: state)).inserted {
                    stack.append(Frame(call: read, state: state, candidateIndex: -1))
                    linearized = newLinearized
                    events.lift(read)
                    continue search
                }
                stuck = true  // explored before, without success
            }
            if !stuck {
                for index in max(resumeAt, 0)..<candidates.count {
                    let call = candidates[index]
                    let operation = events.operation[call]
                    guard let newState = model.apply(steps[operation], to: state) else { continue }
                    var newLinearized = linearized
                    newLinearized.insert(operation)
                    if visited.insert(CacheKey(linearized: newLinearized, state: newState)).inserted {
                        stack.append(Frame(call: call, state: state, candidateIndex: index))
                        state = newState
                        linearized = newLinearized
                        events.lift(call)
                        resumeAt = -1
                        continue search
                    }
                }
            }

            // Nothing works from here: backtrack to the last choice that had alternatives.
            while true {
                guard let top = stack.popLast() else {
                    return Outcome(verdict: .notLinearizable, steps: stepCount)
                }
                state = top.state
                linearized.remove(events.operation[top.call])
                events.unlift(top.call)
                if !top.forced {
                    resumeAt = top.candidateIndex + 1
                    break
                }
            }
        }
        return Outcome(verdict: .linearizable, steps: stepCount)
    }

    /// The register transition of one operation. A separate function with nested switches, not
    /// a closure switching on a tuple: the latter crashed the Swift 6.3 optimizer (SIL
    /// CopyPropagation ownership error) in whole-module release builds.
    private static func step(for operation: HistoryOperation, model: inout Model) -> Step {
        let outcome = operation.outcome
        switch operation.kind {
        case .get:
            guard case .completed(let reply, _) = outcome else { return .impossible }
            switch reply {
            case .value(let value): return .read(expected: model.intern(value))
            case .absent: return .read(expected: -1)
            case .ok: return .impossible  // a get answering "ok" is malformed
            }
        case .put:
            return .write(model.intern(operation.value ?? ""))
        case .putHash:
            let input = model.intern(operation.value ?? "")
            guard case .completed(let reply, _) = outcome else {
                return .hash(input: input, expectedPrevious: nil)
            }
            switch reply {
            case .value(let previous): return .hash(input: input, expectedPrevious: model.intern(previous))
            case .absent: return .hash(input: input, expectedPrevious: model.emptyID)
            case .ok: return .hash(input: input, expectedPrevious: nil)
            }
        }
    }

    /// Drops operations that cannot change the verdict: indeterminate gets (no effect, any
    /// output), and indeterminate puts whose value — directly or through chains of
    /// indeterminate putHashes — no completed operation observed. Such a put can always be
    /// linearized last; conversely, removing it from a linearization leaves a valid one. Without
    /// this, every pending put would be retried at every point of the search.
    private static func relevantOperations(_ operations: [HistoryOperation]) -> [HistoryOperation] {
        var observed = Set<String>()
        var indeterminateHashInputs = Set<String>()
        var hasIndeterminatePut = false
        for operation in operations {
            switch (operation.kind, operation.outcome) {
            case (.get, .completed(.value(let value), _)), (.putHash, .completed(.value(let value), _)):
                observed.insert(value)
            case (.putHash, .completed(.absent, _)):
                observed.insert("")
            case (.putHash, .indeterminate), (.putHash, .completed(.ok, _)):
                // Its returned previous value is unconstrained, so its result can chain on anything.
                indeterminateHashInputs.insert(operation.value ?? "")
            case (.put, .indeterminate):
                hasIndeterminatePut = true
            default:
                break
            }
        }
        var droppable: [String: Bool] = [:]
        func isDroppable(_ value: String) -> Bool {
            if let known = droppable[value] { return known }
            var result = !observed.contains(value)
            if result && !indeterminateHashInputs.isEmpty {
                var seen: Set<String> = [value]
                var frontier: [String] = [value]
                var depth = 0
                while result && !frontier.isEmpty && depth < indeterminateHashInputs.count {
                    depth += 1
                    var nextFrontier: [String] = []
                    expand: for previous in frontier {
                        for input in indeterminateHashInputs {
                            let stored = PutHash.newValue(previous: previous, value: input)
                            if observed.contains(stored) || seen.count >= 1_024 {
                                // Observed, or too many chains to rule it out cheaply: keep it.
                                result = false
                                break expand
                            }
                            if seen.insert(stored).inserted { nextFrontier.append(stored) }
                        }
                    }
                    frontier = nextFrontier
                }
            }
            droppable[value] = result
            return result
        }
        return operations.filter { operation in
            switch (operation.kind, operation.outcome) {
            case (.get, .indeterminate): return false
            case (.put, .indeterminate): return !(hasIndeterminatePut && isDroppable(operation.value ?? ""))
            default: return true
            }
        }
    }
}
