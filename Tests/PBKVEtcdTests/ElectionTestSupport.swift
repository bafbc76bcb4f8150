import PBKVCore
import PBKVEtcd
import PBKVViewService
import Logging
import Testing

/// What an election reported, in order; fails the test if two reports overlap.
actor LeadershipLog {
    enum Entry: Equatable, CustomStringConvertible {
        case leader(term: Int64)
        case follower(String?)

        var description: String {
            switch self {
            case .leader(let term): "leader(term \(term))"
            case .follower(let leader): "follower(\(leader ?? "nil"))"
            }
        }
    }

    private(set) var entries: [Entry] = []
    /// The store of the last `.leader` report (kept after stepping down: a stale leader's store).
    private(set) var lastStore: EtcdViewStore?
    private var inFlight = 0

    func begin() {
        #expect(inFlight == 0, "onChange calls overlap")
        inFlight += 1
    }

    func end(_ leadership: ViewServiceLeadership) {
        inFlight -= 1
        switch leadership {
        case .leader(let store):
            let store = store as? EtcdViewStore
            #expect(store != nil, "an etcd election reports an EtcdViewStore")
            lastStore = store
            entries.append(.leader(term: store?.term ?? -1))
        case .follower(let leader):
            entries.append(.follower(leader))
        }
    }

    var last: Entry? { entries.last }

    var isLeader: Bool {
        if case .leader = entries.last { return true }
        return false
    }

    /// The leader this follower names (nil: leader, nothing reported, or none known).
    var followedLeader: String? {
        if case .follower(let leader) = entries.last { return leader }
        return nil
    }
}

/// One `EtcdElection` running in a task, with what it reported.
final class RunningElection: Sendable {
    let election: EtcdElection
    let log = LeadershipLog()
    private let task: Task<Void, Never>

    init(client: EtcdClient, advertise: String, prefix: String = "pbkv", logger: Logger) {
        let election = EtcdElection(client: client, prefix: prefix, advertise: advertise, logger: logger)
        self.election = election
        let log = self.log
        task = Task {
            try? await election.run { leadership in
                await log.begin()
                // Gives an overlapping call a chance to show up.
                try? await Task.sleep(for: .milliseconds(5))
                await log.end(leadership)
            }
        }
    }

    var advertise: String { election.advertise }

    /// Cancels the election (it revokes its lease) and waits until it stopped.
    func stop() async {
        task.cancel()
        await task.value
    }
}
