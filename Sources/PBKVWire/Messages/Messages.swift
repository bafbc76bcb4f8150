/// Result and error codes carried on the wire (`pbkv.Code` in proto/pbkv.proto).
public enum Code: Int32, Sendable, Hashable, CustomStringConvertible {
    case ok = 0
    case noKey = 1
    case wrongServer = 2
    case notReady = 3
    case unknownMethod = 4
    case badRequest = 5
    case protocolViolation = 6
    case frameTooLarge = 7
    case unsupportedVersion = 8
    case `internal` = 9
    case outOfOrder = 10
    case notLeader = 11
    /// In a Goodbye: the server takes no more connections now (its connection limit).
    case unavailable = 12
    case permissionDenied = 13
    /// Get, Put or PutHash: the duplicate table has no row for this client id and seq > 1 (the
    /// session was evicted). The request was not executed; start a new session.
    case sessionExpired = 14

    public var description: String {
        switch self {
        case .ok: "OK"
        case .noKey: "NO_KEY"
        case .wrongServer: "WRONG_SERVER"
        case .notReady: "NOT_READY"
        case .unknownMethod: "UNKNOWN_METHOD"
        case .badRequest: "BAD_REQUEST"
        case .protocolViolation: "PROTOCOL_VIOLATION"
        case .frameTooLarge: "FRAME_TOO_LARGE"
        case .unsupportedVersion: "UNSUPPORTED_VERSION"
        case .internal: "INTERNAL"
        case .outOfOrder: "OUT_OF_ORDER"
        case .notLeader: "NOT_LEADER"
        case .unavailable: "UNAVAILABLE"
        case .permissionDenied: "PERMISSION_DENIED"
        case .sessionExpired: "SESSION_EXPIRED"
        }
    }
}

/// Optional capabilities agreed in the handshake.
public enum Feature: Int32, Sendable, Hashable {
    case zlib = 1
    /// One deflate stream per direction kept across frames (frame flag 0x02).
    case deflateStream = 2
}

/// First frame of a connection, client to server.
public struct Hello: Sendable, Hashable {
    public var protocolVersion: UInt32
    public var features: [Feature]
    public var maxFrameSize: UInt32
    public var clientName: String

    public init(protocolVersion: UInt32, features: [Feature], maxFrameSize: UInt32, clientName: String = "") {
        self.protocolVersion = protocolVersion
        self.features = features
        self.maxFrameSize = maxFrameSize
        self.clientName = clientName
    }
}

/// The server's answer to `Hello`: agreed version and features.
public struct HelloReply: Sendable, Hashable {
    public var protocolVersion: UInt32
    public var features: [Feature]
    public var maxFrameSize: UInt32
    public var serverName: String

    public init(protocolVersion: UInt32, features: [Feature], maxFrameSize: UInt32, serverName: String = "") {
        self.protocolVersion = protocolVersion
        self.features = features
        self.maxFrameSize = maxFrameSize
        self.serverName = serverName
    }
}

/// Sent just before a side closes a connection: an error code, `.unavailable` (connection
/// limit), or `.ok` for a normal close (e.g. the connection was idle too long).
public struct Goodbye: Sendable, Hashable {
    public var code: Code
    public var message: String

    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }
}

/// Who is primary and who is backup; an empty string means none.
public struct View: Sendable, Hashable, CustomStringConvertible {
    public var viewnum: UInt64
    public var primary: String
    public var backup: String
    /// The primary has acknowledged this view (pinged with `viewnum`).
    public var acknowledged: Bool

    public init(viewnum: UInt64, primary: String, backup: String, acknowledged: Bool = false) {
        self.viewnum = viewnum
        self.primary = primary
        self.backup = backup
        self.acknowledged = acknowledged
    }

    /// Same number, primary and backup (ignores `acknowledged`).
    public func sameAssignment(as other: View) -> Bool {
        viewnum == other.viewnum && primary == other.primary && backup == other.backup
    }

    /// View 0: nobody, before any ping.
    public static let initial = View(viewnum: 0, primary: "", backup: "")

    public var description: String {
        "view \(viewnum) {primary: \(primary.isEmpty ? "-" : primary), backup: \(backup.isEmpty ? "-" : backup)}"
    }
}

/// What a view service stores before it shows a view to anyone: the view (with its
/// acknowledgement) and the previous view's backup. `pbkv.ViewRecord` on disk and in etcd.
public struct ViewRecord: Sendable, Hashable, CustomStringConvertible {
    /// The only `format_version` this code writes and reads.
    public static let formatVersion: UInt32 = 1

    public var view: View
    public var previousBackup: String

    public init(view: View, previousBackup: String = "") {
        self.view = view
        self.previousBackup = previousBackup
    }

    /// Nothing stored yet: view 0.
    public static let initial = ViewRecord(view: .initial)

    public var description: String {
        "\(view)\(view.acknowledged ? " acknowledged" : "")\(previousBackup.isEmpty ? "" : ", previous backup \(previousBackup)")"
    }
}

/// A server's heartbeat to the view service; `viewnum` 0 means "I (re)started with no state".
public struct PingArgs: Sendable, Hashable {
    public var server: String
    public var viewnum: UInt64

    public init(server: String, viewnum: UInt64) {
        self.server = server
        self.viewnum = viewnum
    }
}

/// Identifies a client request for at-most-once execution.
public struct RequestID: Sendable, Hashable, CustomStringConvertible {
    public var clientID: UInt64
    public var seq: UInt64

    public init(clientID: UInt64, seq: UInt64) {
        self.clientID = clientID
        self.seq = seq
    }

    public var description: String { "\(String(clientID, radix: 16))#\(seq)" }
}

/// The kind of a key/value operation.
public enum OpKind: Int32, Sendable, Hashable {
    case get = 0
    case put = 1
    case putHash = 2
}

/// One client operation: Get, Put or PutHash, with its request id. Also the unit the primary
/// forwards to the backup.
public struct Operation: Sendable, Hashable {
    public var kind: OpKind
    public var key: String
    /// Empty for Get.
    public var value: String
    public var id: RequestID

    public init(kind: OpKind, key: String, value: String = "", id: RequestID) {
        self.kind = kind
        self.key = key
        self.value = value
        self.id = id
    }
}

/// Reply to Get/Put/PutHash: `code` is `.ok`, `.noKey` (Get) or `.wrongServer`.
/// `value` is Get's value or PutHash's previous value; empty for Put.
public struct KVReply: Sendable, Hashable {
    public var code: Code
    public var value: String

    public init(code: Code, value: String = "") {
        self.code = code
        self.value = value
    }
}

/// Primary to backup: operations in the primary's order, starting at stream index `firstIndex`.
public struct ForwardArgs: Sendable, Hashable {
    public var viewnum: UInt64
    public var primary: String
    public var firstIndex: UInt64
    public var ops: [Operation]

    public init(viewnum: UInt64, primary: String, firstIndex: UInt64, ops: [Operation]) {
        self.viewnum = viewnum
        self.primary = primary
        self.firstIndex = firstIndex
        self.ops = ops
    }
}

/// Backup's answer to a forward: `.ok`, `.wrongServer`, `.notReady` or `.outOfOrder`
/// (then `nextIndex` is the index the backup expects).
public struct ForwardReply: Sendable, Hashable {
    public var code: Code
    public var nextIndex: UInt64

    public init(code: Code, nextIndex: UInt64 = 0) {
        self.code = code
        self.nextIndex = nextIndex
    }
}

/// One key and its value in a state transfer.
public struct Entry: Sendable, Hashable {
    public var key: String
    public var value: String

    public init(key: String, value: String) {
        self.key = key
        self.value = value
    }
}

/// One client's last request and its reply: a row of the at-most-once table.
public struct DuplicateEntry: Sendable, Hashable {
    public var clientID: UInt64
    public var seq: UInt64
    /// The reply a retry gets; not sent (and `KVReply(code: .ok)` when decoded) if `reread`.
    public var reply: KVReply
    /// The sender's operation clock when the row was last used (eviction order).
    public var lastUsed: UInt64
    /// A Get's row: a retry is executed again, so no reply is kept.
    public var reread: Bool

    public init(clientID: UInt64, seq: UInt64, reply: KVReply, lastUsed: UInt64 = 0, reread: Bool = false) {
        self.clientID = clientID
        self.seq = seq
        self.reply = reply
        self.lastUsed = lastUsed
        self.reread = reread
    }
}

/// A piece of the whole state, primary to a new backup. Chunk 0 starts a transfer; `last`
/// completes it, after which the backup expects forwards from `nextIndex`.
public struct TransferChunk: Sendable, Hashable {
    public var viewnum: UInt64
    public var primary: String
    public var transferID: UInt64
    public var chunkIndex: UInt32
    public var last: Bool
    public var nextIndex: UInt64
    /// The keys and values, in the wire's packed layout (what a store copies to and from).
    public var packedEntries: PackedEntries
    public var duplicates: [DuplicateEntry]
    /// The sender's operation clock at the snapshot (orders duplicate rows for eviction).
    public var clock: UInt64

    public init(
        viewnum: UInt64, primary: String, transferID: UInt64, chunkIndex: UInt32, last: Bool,
        nextIndex: UInt64, entries: [Entry], duplicates: [DuplicateEntry], clock: UInt64 = 0
    ) {
        self.init(
            viewnum: viewnum, primary: primary, transferID: transferID, chunkIndex: chunkIndex, last: last,
            nextIndex: nextIndex, packedEntries: PackedEntries(entries), duplicates: duplicates, clock: clock)
    }

    public init(
        viewnum: UInt64, primary: String, transferID: UInt64, chunkIndex: UInt32, last: Bool,
        nextIndex: UInt64, packedEntries: PackedEntries, duplicates: [DuplicateEntry], clock: UInt64 = 0
    ) {
        self.clock = clock
        self.viewnum = viewnum
        self.primary = primary
        self.transferID = transferID
        self.chunkIndex = chunkIndex
        self.last = last
        self.nextIndex = nextIndex
        self.packedEntries = packedEntries
        self.duplicates = duplicates
    }

    /// The keys and values as values (decoded from `packedEntries` on each access: for tests
    /// and tools; the transfer path works on `packedEntries`).
    public var entries: [Entry] {
        get { packedEntries.entries }
        set { packedEntries = PackedEntries(newValue) }
    }
}

/// Backup's answer to a transfer chunk.
public struct TransferReply: Sendable, Hashable {
    public var code: Code

    public init(code: Code) { self.code = code }
}

/// A state transfer in progress, as one server sees it (`pbkv.TransferProgress`).
public struct TransferProgress: Sendable, Hashable {
    /// The backup receiving (on a primary) or the primary sending (on a backup).
    public var peer: String
    /// Entries sent (primary) or received (backup) so far.
    public var entriesDone: UInt64
    /// Entries in the snapshot being sent; 0 when unknown (on a backup).
    public var entriesTotal: UInt64
    /// Chunks sent or received so far.
    public var chunks: UInt32

    public init(peer: String, entriesDone: UInt64, entriesTotal: UInt64, chunks: UInt32) {
        self.peer = peer
        self.entriesDone = entriesDone
        self.entriesTotal = entriesTotal
        self.chunks = chunks
    }
}

/// What a KV server says about itself (`pbkv.ServerStatus`); counters count since it started.
public struct ServerStatus: Sendable, Hashable {
    public var server: String
    /// `ReplicaRole`'s name: idle, backup, primary or primary-without-state.
    public var role: String
    public var view: View
    public var keys: UInt64
    /// UTF-8 bytes of the keys and values held.
    public var bytes: UInt64
    public var duplicateRows: UInt64
    /// Get, Put and PutHash calls received.
    public var operations: UInt64
    public var connections: UInt32
    /// Set while a state transfer is in progress.
    public var transfer: TransferProgress?
    public var uptimeMs: UInt64

    public init(
        server: String, role: String, view: View, keys: UInt64 = 0, bytes: UInt64 = 0, duplicateRows: UInt64 = 0,
        operations: UInt64 = 0, connections: UInt32 = 0, transfer: TransferProgress? = nil, uptimeMs: UInt64 = 0
    ) {
        self.server = server
        self.role = role
        self.view = view
        self.keys = keys
        self.bytes = bytes
        self.duplicateRows = duplicateRows
        self.operations = operations
        self.connections = connections
        self.transfer = transfer
        self.uptimeMs = uptimeMs
    }
}

/// A server the view service heard from and counts alive (`pbkv.ServerSeen`).
public struct ServerSeen: Sendable, Hashable {
    public var server: String
    public var lastPingMsAgo: UInt64

    public init(server: String, lastPingMsAgo: UInt64) {
        self.server = server
        self.lastPingMsAgo = lastPingMsAgo
    }
}

/// What the leader view service knows (`pbkv.ViewServiceStatus`): the view and every live
/// server, idle ones included.
public struct ViewServiceStatus: Sendable, Hashable {
    public var view: View
    public var servers: [ServerSeen]

    public init(view: View, servers: [ServerSeen]) {
        self.view = view
        self.servers = servers
    }
}

/// An RPC method with its arguments: the field set in `Request.call`.
public enum Call: Sendable, Hashable {
    case ping(PingArgs)
    case getView
    case viewServiceStatus
    case get(key: String, id: RequestID)
    case put(key: String, value: String, id: RequestID)
    case putHash(key: String, value: String, id: RequestID)
    case forward(ForwardArgs)
    case transfer(TransferChunk)
    case serverStatus

    /// The method's name, for logs and errors.
    public var method: String { Call.methodNames[methodIndex] }

    /// Every method's name, indexed by `methodIndex`.
    public static let methodNames = [
        "Ping", "GetView", "ViewServiceStatus", "Get", "Put", "PutHash", "Forward", "Transfer", "ServerStatus",
    ]

    /// This method's position in `methodNames` (metrics keep per-method series in arrays).
    public var methodIndex: Int {
        switch self {
        case .ping: 0
        case .getView: 1
        case .viewServiceStatus: 2
        case .get: 3
        case .put: 4
        case .putHash: 5
        case .forward: 6
        case .transfer: 7
        case .serverStatus: 8
        }
    }
}

/// Why a request's call could not be decoded (answered per call; the connection stays open).
public enum CallDecodeError: Error, Sendable, Hashable {
    /// No known field was set in `call`: a method this server does not know.
    case unknownMethod
    /// Arguments present but unusable (e.g. a key that is not valid UTF-8).
    case badArguments(String)
}

/// A call with its id, as carried in an `Envelope`.
public struct Request: Sendable, Hashable {
    public var callID: UInt64
    public var timeoutMs: UInt32
    public var call: Result<Call, CallDecodeError>

    public init(callID: UInt64, timeoutMs: UInt32 = 0, call: Call) {
        self.callID = callID
        self.timeoutMs = timeoutMs
        self.call = .success(call)
    }

    public init(callID: UInt64, timeoutMs: UInt32, decoded: Result<Call, CallDecodeError>) {
        self.callID = callID
        self.timeoutMs = timeoutMs
        self.call = decoded
    }
}

/// A successful call's result: the field set in `Response.result`.
public enum CallResult: Sendable, Hashable {
    case view(View)
    case kv(KVReply)
    case forward(ForwardReply)
    case transfer(TransferReply)
    case viewServiceStatus(ViewServiceStatus)
    case serverStatus(ServerStatus)
}

/// The outcome of a call: `code == .ok` with a `result`, or an error code with a message.
public struct Response: Sendable, Hashable {
    public var callID: UInt64
    public var code: Code
    public var message: String
    /// With `.notLeader`: the view service leader's address, "" when unknown.
    public var leader: String
    public var result: CallResult?

    public init(callID: UInt64, result: CallResult) {
        self.callID = callID
        self.code = .ok
        self.message = ""
        self.leader = ""
        self.result = result
    }

    public init(callID: UInt64, code: Code, message: String, leader: String = "") {
        self.callID = callID
        self.code = code
        self.message = message
        self.leader = leader
        self.result = nil
    }
}

/// The payload of every frame.
public enum Envelope: Sendable, Hashable {
    case hello(Hello)
    case helloReply(HelloReply)
    case request(Request)
    case response(Response)
    case goodbye(Goodbye)
}
