import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import PBKVWire

/// A key and its value as etcd stores them, with the revisions that compare-and-swap uses.
public struct EtcdKeyValue: Sendable, Hashable {
    public var key: String
    public var value: [UInt8]
    /// The revision at which the key was created (changes only when it is deleted and created again).
    public var createRevision: Int64
    /// The revision of the key's last write.
    public var modRevision: Int64
    public var version: Int64
    /// The lease the key is bound to (0: none).
    public var lease: Int64

    public init(key: String, value: [UInt8], createRevision: Int64, modRevision: Int64, version: Int64, lease: Int64) {
        self.key = key
        self.value = value
        self.createRevision = createRevision
        self.modRevision = modRevision
        self.version = version
        self.lease = lease
    }
}

/// One condition of a transaction: a key's create or mod revision, version, value or lease
/// compared with a given one. An absent key has revisions, version and lease 0 and an empty value.
public struct EtcdCompare: Sendable, Hashable {
    /// What is compared, and with what.
    public enum Target: Sendable, Hashable {
        case createRevision(Int64)
        case modRevision(Int64)
        case version(Int64)
        case value([UInt8])
        case lease(Int64)
    }

    /// How the key's field must relate to the target.
    public enum Relation: String, Sendable, Hashable {
        case equal = "EQUAL"
        case greater = "GREATER"
        case less = "LESS"
        case notEqual = "NOT_EQUAL"
    }

    public var key: String
    public var target: Target
    public var relation: Relation

    public init(key: String, _ target: Target, _ relation: Relation = .equal) {
        self.key = key
        self.target = target
        self.relation = relation
    }
}

/// One operation of a transaction's success or failure branch.
public enum EtcdOperation: Sendable, Hashable {
    /// Reads one key.
    case range(key: String)
    /// Writes one key, bound to `lease` unless it is 0.
    case put(key: String, value: [UInt8], lease: Int64 = 0)
    /// Deletes one key.
    case delete(key: String)
}

/// What one `EtcdOperation` of the branch that ran returned, in the same order.
public enum EtcdOperationResult: Sendable, Hashable {
    /// The key read (empty when absent).
    case range([EtcdKeyValue])
    case put
    /// How many keys were deleted (0 or 1).
    case delete(deleted: Int64)
}

/// The reply to a transaction.
public struct EtcdTxnResult: Sendable, Hashable {
    /// True when every comparison held and the success branch ran.
    public var succeeded: Bool
    /// The store's revision after the transaction (a put in it has this mod revision).
    public var revision: Int64
    /// The results of the branch that ran.
    public var results: [EtcdOperationResult]
}

/// The reply to a read of one key.
public struct EtcdRangeResult: Sendable, Hashable {
    /// The key, or nil when absent.
    public var keyValue: EtcdKeyValue?
    /// The store's revision at the time of the read.
    public var revision: Int64
}

/// A lease granted by etcd.
public struct EtcdLease: Sendable, Hashable {
    public var id: Int64
    /// The TTL etcd granted, in seconds (it may raise a small TTL to its minimum).
    public var ttl: Int64
}

/// A small typed client of etcd's v3 JSON gateway (`POST /v3/kv/range`, `/v3/kv/txn`,
/// `/v3/lease/grant|keepalive|revoke`) over HTTP/1.1 without TLS, one connection per request
/// (`HTTPExchange`).
///
/// It talks to one endpoint at a time and moves to the next when a connection fails, a request
/// times out or the member says it cannot serve (gRPC UNAVAILABLE or DEADLINE_EXCEEDED); within one
/// call it tries each endpoint at most once. Each attempt is bounded by `requestTimeout`. A
/// retried request may have been applied by the member that did not answer; every write pbkv
/// makes is guarded by a comparison, so a retry that finds its own write fails its comparison
/// instead of writing twice.
public final class EtcdClient: Sendable {
    /// The endpoints, `HOST:PORT`, in the order given.
    public let endpoints: [String]
    /// The bound on one attempt at one endpoint.
    public let requestTimeout: Duration
    /// `endpoints`, parsed once.
    private let peers: [PeerAddress]
    private let current: NIOLockedValueBox<Int>
    private let logger: Logger
    /// Replies larger than this are refused (a view record is a few hundred bytes).
    private static let maximumReplyBytes = 4 << 20

    /// A client of the etcd members at `endpoints` (`HOST:PORT` each; `http://` may precede it).
    public init(endpoints: [String], requestTimeout: Duration = .seconds(1), logger: Logger) throws(EtcdError) {
        guard !endpoints.isEmpty else { throw .noEndpoints }
        var checked: [(text: String, peer: PeerAddress)] = []
        for endpoint in endpoints { checked.append(try Self.validate(endpoint)) }
        self.endpoints = checked.map(\.text)
        self.peers = checked.map(\.peer)
        self.requestTimeout = requestTimeout
        self.logger = logger
        self.current = NIOLockedValueBox(0)
    }

    /// Splits `HOST:PORT[,HOST:PORT…]` (the `--etcd` option) into checked endpoints.
    public static func parseEndpoints(_ list: String) throws(EtcdError) -> [String] {
        let parts = list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !parts.isEmpty else { throw .noEndpoints }
        var checked: [String] = []
        for part in parts { checked.append(try validate(part).text) }
        return checked
    }

    private static func validate(_ endpoint: String) throws(EtcdError) -> (text: String, peer: PeerAddress) {
        var text = endpoint
        if text.hasPrefix("http://") { text.removeFirst("http://".count) }
        if text.hasSuffix("/") { text.removeLast() }
        guard !text.contains("/"), !text.contains(" "), let peer = try? PeerAddress(parsing: text), peer.port >= 1
        else { throw .invalidEndpoint(endpoint) }
        return (text, peer)
    }

    /// Whether the etcd member at `endpoint` serves a linearizable read now (it is up and its
    /// cluster has a leader): the readiness probe of test clusters.
    public static func isServing(endpoint: String, timeout: Duration = .milliseconds(500)) async -> Bool {
        guard let client = try? EtcdClient(endpoints: [endpoint], requestTimeout: timeout, logger: Logger(label: "pbkv.etcd.probe"))
        else { return false }
        do throws(EtcdError) {
            _ = try await client.range("pbkv-probe")
            return true
        } catch {
            return false
        }
    }

    /// The endpoint the next request goes to first.
    public var currentEndpoint: String { endpoints[current.withLockedValue { $0 }] }

    // MARK: - KV

    /// Reads `key` (linearizable).
    public func range(_ key: String) async throws(EtcdError) -> EtcdRangeResult {
        let (endpoint, reply) = try await call("/v3/kv/range", GatewayJSON.RangeRequest(key: GatewayJSON.base64(key)),
            as: GatewayJSON.RangeResponse.self)
        let kvs = try Self.keyValues(reply.kvs, endpoint: endpoint)
        return EtcdRangeResult(keyValue: kvs.first, revision: try Self.revision(reply.header, endpoint: endpoint))
    }

    /// Runs `success` if every comparison in `compare` holds, else `failure`, atomically.
    public func txn(
        compare: [EtcdCompare], success: [EtcdOperation], failure: [EtcdOperation] = []
    ) async throws(EtcdError) -> EtcdTxnResult {
        let request = GatewayJSON.TxnRequest(
            compare: compare.map(Self.json), success: success.map(Self.json), failure: failure.map(Self.json))
        let (endpoint, reply) = try await call("/v3/kv/txn", request, as: GatewayJSON.TxnResponse.self)
        var results: [EtcdOperationResult] = []
        for op in reply.responses ?? [] {
            if let range = op.responseRange {
                results.append(.range(try Self.keyValues(range.kvs, endpoint: endpoint)))
            } else if op.responsePut != nil {
                results.append(.put)
            } else if let delete = op.responseDeleteRange {
                guard let deleted = GatewayJSON.int64(delete.deleted) else {
                    throw .malformedResponse(endpoint: endpoint, reason: "deleted is not an integer")
                }
                results.append(.delete(deleted: deleted))
            } else {
                throw .malformedResponse(endpoint: endpoint, reason: "a transaction response of an unknown kind")
            }
        }
        return EtcdTxnResult(
            succeeded: reply.succeeded ?? false, revision: try Self.revision(reply.header, endpoint: endpoint),
            results: results)
    }

    // MARK: - leases

    /// Grants a lease of `ttl` seconds (etcd may raise it to its minimum; see `EtcdLease.ttl`).
    public func leaseGrant(ttl: Int64) async throws(EtcdError) -> EtcdLease {
        let (endpoint, reply) = try await call(
            "/v3/lease/grant", GatewayJSON.LeaseGrantRequest(ttl: String(ttl)), as: GatewayJSON.LeaseGrantResponse.self)
        if let error = reply.error, !error.isEmpty { throw .rejected(endpoint: endpoint, code: 0, message: error) }
        guard let id = GatewayJSON.int64(reply.id), id != 0, let granted = GatewayJSON.int64(reply.ttl), granted > 0 else {
            throw .malformedResponse(endpoint: endpoint, reason: "a lease grant without an ID or TTL")
        }
        return EtcdLease(id: id, ttl: granted)
    }

    /// Renews lease `id` once; returns its TTL in seconds from now. Throws `.leaseNotFound` when
    /// it has expired or was revoked.
    public func leaseKeepAlive(_ id: Int64) async throws(EtcdError) -> Int64 {
        let (endpoint, line) = try await call(
            "/v3/lease/keepalive", GatewayJSON.LeaseIDRequest(id: String(id)), as: GatewayJSON.KeepAliveStreamLine.self)
        if let status = line.error {
            throw Self.rejection(status, endpoint: endpoint, lease: id)
        }
        guard let result = line.result, let ttl = GatewayJSON.int64(result.ttl) else {
            throw .malformedResponse(endpoint: endpoint, reason: "a keepalive reply without a result")
        }
        // etcd answers a dead lease with its ID and no TTL.
        guard ttl > 0 else { throw .leaseNotFound(id: id) }
        return ttl
    }

    /// Revokes lease `id`, deleting every key bound to it. A lease already gone is not an error.
    public func leaseRevoke(_ id: Int64) async throws(EtcdError) {
        do {
            _ = try await call("/v3/lease/revoke", GatewayJSON.LeaseIDRequest(id: String(id)), as: GatewayJSON.Empty.self)
        } catch .leaseNotFound {
            return
        }
    }

    // MARK: - transport

    private enum Attempt {
        case answered(ByteBuffer)
        /// etcd answered with an error status that another member would answer the same way.
        case rejected(GatewayJSON.Status)
        /// This endpoint cannot serve now: try the next.
        case failed(String)
    }

    /// Posts `body` to `path`, trying each endpoint at most once from the current one.
    private func call<Request: Encodable, Reply: Decodable>(
        _ path: String, _ body: Request, as: Reply.Type
    ) async throws(EtcdError) -> (endpoint: String, reply: Reply) {
        let payload: ByteBuffer
        do {
            payload = try JSONEncoder().encodeAsByteBuffer(body, allocator: ByteBufferAllocator())
        } catch {
            preconditionFailure("the gateway request types always encode: \(error)")
        }
        let first = current.withLockedValue { $0 }
        var attempts: [String] = []
        for step in 0..<endpoints.count {
            if Task.isCancelled { throw .cancelled }
            let index = (first + step) % endpoints.count
            let endpoint = endpoints[index]
            switch await attempt(path, payload, to: peers[index]) {
            case .answered(let buffer):
                if index != first { current.withLockedValue { $0 = index } }
                do {
                    return (endpoint, try GatewayJSON.decoder.decode(Reply.self, from: buffer))
                } catch {
                    throw .malformedResponse(endpoint: endpoint, reason: "\(path): \(error)")
                }
            case .rejected(let status):
                throw Self.rejection(status, endpoint: endpoint, lease: nil)
            case .failed(let reason):
                if Task.isCancelled { throw .cancelled }
                attempts.append("\(endpoint): \(reason)")
                let next = (index + 1) % endpoints.count
                current.withLockedValue { if $0 == index { $0 = next } }
                logger.debug("etcd endpoint failed", metadata: [
                    "etcd.endpoint": "\(endpoint)", "etcd.path": "\(path)", "reason": "\(reason)",
                    "etcd.next_endpoint": "\(endpoints[next])",
                ])
            }
        }
        throw .unreachable(attempts: attempts)
    }

    private func attempt(_ path: String, _ payload: ByteBuffer, to peer: PeerAddress) async -> Attempt {
        let response: HTTPExchange.Response
        do {
            response = try await HTTPExchange.perform(
                .POST, host: peer.host, port: peer.port, path: path, body: payload, maximumBodyBytes: Self.maximumReplyBytes,
                deadline: .now() + TimeAmount(requestTimeout))
        } catch .timedOut {
            return .failed("no reply within \(requestTimeout)")
        } catch {
            return .failed("\(error)")
        }
        if response.status == .ok { return .answered(response.body) }
        let status = (try? GatewayJSON.decoder.decode(GatewayJSON.Status.self, from: response.body))
            ?? GatewayJSON.Status(error: nil, message: "HTTP \(response.status.code) \(response.status.reasonPhrase)", code: nil)
        // UNAVAILABLE (no leader, request timed out) and DEADLINE_EXCEEDED: another member may serve.
        if status.code == 14 || status.code == 4 || response.status == .serviceUnavailable {
            return .failed("\(status.message ?? status.error ?? "unavailable") (gRPC code \(status.code ?? 14))")
        }
        return .rejected(status)
    }

    private static func rejection(_ status: GatewayJSON.Status, endpoint: String, lease: Int64?) -> EtcdError {
        let message = status.message ?? status.error ?? "unknown error"
        // NOT_FOUND "etcdserver: requested lease not found"
        if status.code == 5 && message.contains("lease not found") { return .leaseNotFound(id: lease ?? 0) }
        return .rejected(endpoint: endpoint, code: status.code ?? 0, message: message)
    }

    // MARK: - conversions

    private static func keyValues(_ kvs: [GatewayJSON.KeyValue]?, endpoint: String) throws(EtcdError) -> [EtcdKeyValue] {
        var result: [EtcdKeyValue] = []
        for kv in kvs ?? [] {
            guard let keyBytes = GatewayJSON.bytes(base64: kv.key), let value = GatewayJSON.bytes(base64: kv.value),
                let create = GatewayJSON.int64(kv.createRevision), let mod = GatewayJSON.int64(kv.modRevision),
                let version = GatewayJSON.int64(kv.version), let lease = GatewayJSON.int64(kv.lease)
            else { throw .malformedResponse(endpoint: endpoint, reason: "a key-value with a malformed field") }
            result.append(EtcdKeyValue(
                key: String(decoding: keyBytes, as: UTF8.self), value: value, createRevision: create, modRevision: mod,
                version: version, lease: lease))
        }
        return result
    }

    private static func revision(_ header: GatewayJSON.ResponseHeader?, endpoint: String) throws(EtcdError) -> Int64 {
        guard let revision = GatewayJSON.int64(header?.revision) else {
            throw .malformedResponse(endpoint: endpoint, reason: "a header revision that is not an integer")
        }
        return revision
    }

    private static func json(_ compare: EtcdCompare) -> GatewayJSON.Compare {
        var c = GatewayJSON.Compare(key: GatewayJSON.base64(compare.key), target: "")
        c.result = compare.relation == .equal ? nil : compare.relation.rawValue
        switch compare.target {
        case .createRevision(let r):
            c.target = "CREATE"
            c.createRevision = String(r)
        case .modRevision(let r):
            c.target = "MOD"
            c.modRevision = String(r)
        case .version(let v):
            c.target = "VERSION"
            c.version = String(v)
        case .value(let bytes):
            c.target = "VALUE"
            c.value = GatewayJSON.base64(bytes)
        case .lease(let id):
            c.target = "LEASE"
            c.lease = String(id)
        }
        return c
    }

    private static func json(_ op: EtcdOperation) -> GatewayJSON.RequestOp {
        switch op {
        case .range(let key):
            GatewayJSON.RequestOp(requestRange: .init(key: GatewayJSON.base64(key)))
        case .put(let key, let value, let lease):
            GatewayJSON.RequestOp(requestPut: .init(
                key: GatewayJSON.base64(key), value: GatewayJSON.base64(value), lease: lease == 0 ? nil : String(lease)))
        case .delete(let key):
            GatewayJSON.RequestOp(requestDeleteRange: .init(key: GatewayJSON.base64(key)))
        }
    }
}
