import NIOCore
import PBKVCore
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

    func get(_ request: GetArgs, context: RPCCallContext) -> EventLoopFuture<KVReply> {
        let value = store.withLock { $0[request.key] }
        return context.eventLoop.makeSucceededFuture(value.map { KVReply(code: .ok, value: $0) } ?? KVReply(code: .noKey))
    }

    func put(_ request: PutArgs, context: RPCCallContext) -> EventLoopFuture<KVReply> {
        store.withLock { $0[request.key] = request.value }
        return context.eventLoop.makeSucceededFuture(KVReply(code: .ok))
    }

    func putHash(_ request: PutHashArgs, context: RPCCallContext) -> EventLoopFuture<KVReply> {
        let previous = store.withLock { store in
            let previous = store[request.key] ?? ""
            store[request.key] = PutHash.newValue(previous: previous, value: request.value)
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
