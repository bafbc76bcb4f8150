import NIOCore
import PBKVWire
import Synchronization

/// The services behind the fuzzed server: every method answers at once, the key/value ones from
/// a small in-memory map (a new one per input), so each method table and each kind of result
/// is reached, including replies too large for a peer's `max_frame_size`.
final class FuzzServices: ViewServiceProtocol, KVServiceProtocol, ReplicaServiceProtocol {
    private let store = Mutex<[String: String]>([:])

    func ping(_ args: PingArgs, context: RPCCallContext) -> EventLoopFuture<View> {
        context.eventLoop.makeSucceededFuture(View(viewnum: args.viewnum, primary: args.server, backup: ""))
    }

    func getView(context: RPCCallContext) -> EventLoopFuture<View> {
        context.eventLoop.makeSucceededFuture(View(viewnum: 1, primary: "127.0.0.1:7001", backup: "127.0.0.1:7002"))
    }

    func get(key: String, id: RequestID, context: RPCCallContext) -> EventLoopFuture<KVReply> {
        let value = store.withLock { $0[key] }
        return context.eventLoop.makeSucceededFuture(value.map { KVReply(code: .ok, value: $0) } ?? KVReply(code: .noKey))
    }

    func put(key: String, value: String, id: RequestID, context: RPCCallContext) -> EventLoopFuture<KVReply> {
        store.withLock { $0[key] = value }
        return context.eventLoop.makeSucceededFuture(KVReply(code: .ok))
    }

    func putHash(key: String, value: String, id: RequestID, context: RPCCallContext) -> EventLoopFuture<KVReply> {
        let previous = store.withLock { store in
            let previous = store[key] ?? ""
            store[key] = PutHash.newValue(previous: previous, value: value)
            return previous
        }
        return context.eventLoop.makeSucceededFuture(KVReply(code: .ok, value: previous))
    }

    func forward(_ args: ForwardArgs, context: RPCCallContext) -> EventLoopFuture<ForwardReply> {
        context.eventLoop.makeSucceededFuture(ForwardReply(code: .ok, nextIndex: args.firstIndex &+ UInt64(args.ops.count)))
    }

    func transfer(_ chunk: TransferChunk, context: RPCCallContext) -> EventLoopFuture<TransferReply> {
        context.eventLoop.makeSucceededFuture(TransferReply(code: chunk.last ? .ok : .notReady))
    }
}
