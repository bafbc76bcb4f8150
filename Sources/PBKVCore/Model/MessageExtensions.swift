// What the generated message types (Sources/PBKVWire/Generated/pbkv.messages.swift) cannot say themselves:
// shorthands, well-known values, descriptions, and the Swift-only shape of a request's call.

extension View: CustomStringConvertible {
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

extension ViewRecord: CustomStringConvertible {
    /// The only `format_version` this code writes and reads.
    public static let formatVersion: UInt32 = 1

    /// Nothing stored yet: view 0.
    public static let initial = ViewRecord(view: .initial)

    public var description: String {
        "\(view)\(view.acknowledged ? " acknowledged" : "")\(previousBackup.isEmpty ? "" : ", previous backup \(previousBackup)")"
    }
}

extension RequestID: CustomStringConvertible {
    /// Most sequence numbers of one session outstanding at once (`seq - acked`): a server
    /// refuses a request beyond it with BAD_REQUEST, which bounds its duplicate table at this
    /// many kept replies per session. A protocol constant: every server and client agrees on it.
    public static let maxWindow: UInt64 = 64

    /// The seqs the client holds replies for: `acked`, or `seq - 1` when the request carries
    /// none (0: one request outstanding, the meaning before pipelining).
    public var effectiveAcked: UInt64 { acked != 0 ? acked : (seq > 0 ? seq - 1 : 0) }

    /// Why the server refuses this id's window (BAD_REQUEST); nil if it is fine.
    public var windowRefusal: String? {
        guard acked != 0 else { return nil }
        if acked >= seq { return "RequestId.acked (\(acked)) must be below seq (\(seq))" }
        if seq - acked > Self.maxWindow {
            return "seq \(seq) is \(seq - acked) past acked \(acked): at most \(Self.maxWindow) requests of one session may be outstanding (the server's window)"
        }
        return nil
    }

    public var description: String { "\(String(clientID, radix: 16))#\(seq)\(acked != 0 ? "^\(acked)" : "")" }
}

extension TransferChunk {
    public init(
        viewnum: UInt64, primary: String, transferID: UInt64, chunkIndex: UInt32, last: Bool,
        nextIndex: UInt64, entries: [Entry], duplicates: [DuplicateEntry], clock: UInt64 = 0
    ) {
        self.init(
            viewnum: viewnum, primary: primary, transferID: transferID, chunkIndex: chunkIndex, last: last,
            nextIndex: nextIndex, packedEntries: PackedEntries(entries), duplicates: duplicates, clock: clock)
    }

    /// The keys and values as values (decoded from `packedEntries` on each access: for tests
    /// and tools; the transfer path works on `packedEntries`).
    public var entries: [Entry] {
        get { packedEntries.entries }
        set { packedEntries = PackedEntries(newValue) }
    }
}

extension Call {
    /// The method's name, for logs and errors.
    public var method: String { caseName }

    /// Every method's name, indexed by `methodIndex`.
    public static var methodNames: [String] { caseNames }

    /// This method's position in `methodNames` (metrics keep per-method series in arrays).
    public var methodIndex: Int { caseIndex }

    public static func get(key: String, id: RequestID) -> Call { .get(GetArgs(key: key, id: id)) }
    public static func put(key: String, value: String, id: RequestID) -> Call { .put(PutArgs(key: key, value: value, id: id)) }
    public static func putHash(key: String, value: String, id: RequestID) -> Call {
        .putHash(PutHashArgs(key: key, value: value, id: id))
    }
}

/// Why a request's call could not be decoded (answered per call; the connection stays open).
public enum CallDecodeError: Error, Sendable, Hashable {
    /// No known field was set in `call`: a method this server does not know.
    case unknownMethod
    /// Arguments present but unusable (e.g. a key that is not valid UTF-8).
    case badArguments(String)
}

extension Request {
    public init(callID: UInt64, timeoutMs: UInt32 = 0, call: Call) {
        self.init(callID: callID, timeoutMs: timeoutMs, call: .success(call))
    }

    public init(callID: UInt64, timeoutMs: UInt32, decoded: Result<Call, CallDecodeError>) {
        self.init(callID: callID, timeoutMs: timeoutMs, call: decoded)
    }
}
