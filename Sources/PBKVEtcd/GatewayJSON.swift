import Foundation

// The JSON shapes of etcd's v3 gateway (grpc-gateway, proto3 JSON): int64 and uint64 as decimal
// strings, bytes as base64, fields equal to their default omitted (so nearly everything is
// optional when decoding). Only the fields pbkv uses are declared; the decoder ignores the others.
// Field names: the gateway writes the proto names (`create_revision`, `response_put`), which
// `GatewayJSON.decoder` turns into the Swift names; it reads the proto names and their lowerCamel
// JSON names alike, so requests go out with the Swift names as they are. `ID` and `TTL` are
// proto names in capitals: those types spell them out.

enum GatewayJSON {
    struct ResponseHeader: Codable {
        var revision: String?
    }

    struct KeyValue: Codable {
        var key: String?
        var createRevision: String?
        var modRevision: String?
        var version: String?
        var value: String?
        var lease: String?
    }

    struct RangeRequest: Codable {
        var key: String
    }

    struct RangeResponse: Codable {
        var header: ResponseHeader?
        var kvs: [KeyValue]?
    }

    struct PutRequest: Codable {
        var key: String
        var value: String
        var lease: String?
    }

    struct PutResponse: Codable {
        var header: ResponseHeader?
    }

    struct DeleteRangeRequest: Codable {
        var key: String
    }

    struct DeleteRangeResponse: Codable {
        var header: ResponseHeader?
        var deleted: String?
    }

    struct Compare: Codable {
        var key: String
        var target: String
        var result: String?
        var createRevision: String?
        var modRevision: String?
        var version: String?
        var value: String?
        var lease: String?
    }

    struct RequestOp: Codable {
        var requestRange: RangeRequest?
        var requestPut: PutRequest?
        var requestDeleteRange: DeleteRangeRequest?
    }

    struct ResponseOp: Codable {
        var responseRange: RangeResponse?
        var responsePut: PutResponse?
        var responseDeleteRange: DeleteRangeResponse?
    }

    struct TxnRequest: Codable {
        var compare: [Compare]
        var success: [RequestOp]
        var failure: [RequestOp]
    }

    struct TxnResponse: Codable {
        var header: ResponseHeader?
        var succeeded: Bool?
        var responses: [ResponseOp]?
    }

    struct LeaseGrantRequest: Codable {
        var ttl: String

        enum CodingKeys: String, CodingKey { case ttl = "TTL" }
    }

    struct LeaseGrantResponse: Codable {
        var id: String?
        var ttl: String?
        var error: String?

        enum CodingKeys: String, CodingKey {
            case id = "ID"
            case ttl = "TTL"
            case error
        }
    }

    struct LeaseIDRequest: Codable {
        var id: String

        enum CodingKeys: String, CodingKey { case id = "ID" }
    }

    struct LeaseKeepAliveResponse: Codable {
        var id: String?
        var ttl: String?

        enum CodingKeys: String, CodingKey {
            case id = "ID"
            case ttl = "TTL"
        }
    }

    /// `/v3/lease/keepalive` is a streaming call: each reply line is `{"result": …}` or `{"error": …}`.
    struct KeepAliveStreamLine: Codable {
        var result: LeaseKeepAliveResponse?
        var error: Status?
    }

    struct Empty: Codable {}

    /// An error reply: `{"error": "…", "message": "…", "code": N}` (the gateway's gRPC status).
    struct Status: Codable {
        var error: String?
        var message: String?
        var code: Int?
    }
}

extension GatewayJSON {
    /// Decodes the gateway's replies: its snake_case proto names become the Swift names.
    static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return decoder
    }()

    static func base64(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }
    static func base64(_ string: String) -> String { Data(string.utf8).base64EncodedString() }

    static func bytes(base64 text: String?) -> [UInt8]? {
        guard let text else { return [] }
        return Data(base64Encoded: text).map { [UInt8]($0) }
    }

    static func int64(_ text: String?) -> Int64? {
        guard let text else { return 0 }
        return Int64(text)
    }
}
