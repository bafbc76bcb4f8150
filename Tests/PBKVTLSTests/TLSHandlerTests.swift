import Foundation
import NIOCore
import NIOEmbedded
import PBKVTLS
import Testing

/// `TLSHandler` between two in-memory channels: the bytes one side writes are handed to the
/// other, so every handshake and record path runs without sockets or timing.
@Suite("TLS handler over OpenSSL")
struct TLSHandlerTests {
    /// A cluster CA in a fresh directory with server s1 (covering 127.0.0.1:7001) and client c1.
    static func cluster() throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("pbkv-tls-\(UUID().uuidString)").path
        try CertificateAuthority.create(in: directory)
        let authority = try CertificateAuthority(directory: directory)
        try authority.issue(name: "s1", role: .server, hosts: ["127.0.0.1:7001"])
        try authority.issue(name: "c1", role: .client, hosts: [])
        return directory
    }

    /// Client c1 and server s1 of a fresh cluster, after the handshake (or before it).
    static func connectedPair(handshake: Bool = true) throws -> Pair {
        let directory = try cluster()
        let pair = try Pair(client: ClusterTLS(directory: directory, name: "c1"), server: ClusterTLS(directory: directory, name: "s1"))
        if handshake { pair.exchange() }
        return pair
    }

    /// A client and a server channel, each with a `TLSHandler`, active, nothing exchanged yet.
    struct Pair {
        let client: EmbeddedChannel
        let server: EmbeddedChannel
        let clientTLS: TLSHandler
        let serverTLS: TLSHandler

        init(client clientMaterial: ClusterTLS, server serverMaterial: ClusterTLS) throws {
            clientTLS = try TLSHandler(context: clientMaterial.makeClientContext())
            serverTLS = try TLSHandler(context: serverMaterial.makeServerContext())
            client = EmbeddedChannel(handler: clientTLS)
            server = EmbeddedChannel(handler: serverTLS)
            try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 7001)).wait()
            try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 50000)).wait()
        }

        /// Moves ciphertext both ways until neither side has anything more to send. Errors the
        /// handlers raise are collected, not thrown (a failing side closes its channel).
        @discardableResult
        func exchange() -> [any Error] {
            var errors: [any Error] = []
            var moved = true
            while moved {
                moved = false
                for (from, to) in [(client, server), (server, client)] {
                    while let bytes = try? from.readOutbound(as: ByteBuffer.self) {
                        moved = true
                        guard to.isActive else { continue }
                        do { try to.writeInbound(bytes) } catch { errors.append(error) }
                    }
                }
            }
            return errors
        }

        func plaintext(from channel: EmbeddedChannel) throws -> String {
            var all = ""
            while var buffer = try channel.readInbound(as: ByteBuffer.self) {
                all += buffer.readString(length: buffer.readableBytes) ?? ""
            }
            return all
        }
    }

    @Test("Both ends verify each other; writes made before the handshake arrive after it, in order")
    func handshakeAndRoundTrip() throws {
        let pair = try Self.connectedPair(handshake: false)
        let early = pair.client.writeAndFlush(ByteBuffer(string: "hello "))
        pair.client.writeAndFlush(ByteBuffer(string: "server"), promise: nil)
        #expect(pair.clientTLS.peerIdentity == nil)
        #expect(pair.exchange().isEmpty)
        try early.wait()
        #expect(pair.clientTLS.peerIdentity == MemberIdentity(name: "s1", role: .server, addresses: ["127.0.0.1:7001"]))
        #expect(pair.serverTLS.peerIdentity == MemberIdentity(name: "c1", role: .client))
        #expect(try pair.plaintext(from: pair.server) == "hello server")
        try pair.server.writeAndFlush(ByteBuffer(string: "hello client")).wait()
        pair.exchange()
        #expect(try pair.plaintext(from: pair.client) == "hello client")
    }

    @Test("A 1 MiB write crosses as many records and arrives whole")
    func largeWrite() throws {
        let pair = try Self.connectedPair()
        let payload = String(repeating: "0123456789abcdef", count: 1 << 16)
        let written = pair.client.writeAndFlush(ByteBuffer(string: payload))
        pair.exchange()
        try written.wait()
        #expect(try pair.plaintext(from: pair.server) == payload)
    }

    @Test("Writes up to a flush go out as one record; their promises complete with it, none before the flush")
    func writesCoalesceUntilFlush() throws {
        let pair = try Self.connectedPair()
        let writes = (0..<10).map { pair.client.write(ByteBuffer(string: "frame \($0);")) }
        #expect(try pair.client.readOutbound(as: ByteBuffer.self) == nil)
        pair.client.flush()
        let record = try #require(try pair.client.readOutbound(as: ByteBuffer.self))
        #expect(try pair.client.readOutbound(as: ByteBuffer.self) == nil)
        // One TLS 1.3 record: a 5-byte header whose length covers the rest of the buffer.
        #expect(record.getInteger(at: 0, as: UInt8.self) == 23)
        #expect(Int(record.getInteger(at: 3, as: UInt16.self)!) == record.readableBytes - 5)
        for write in writes { try write.wait() }
        try pair.server.writeInbound(record)
        #expect(try pair.plaintext(from: pair.server) == (0..<10).map { "frame \($0);" }.joined())
    }

    @Test("A client certificate from another CA fails the handshake on the server, which closes, and nothing reaches it")
    func foreignCertificateRefused() throws {
        let directory = try Self.cluster()
        let stranger = try Self.cluster()  // its own CA, its own c1
        // The outsider trusts the cluster's CA (so it accepts s1) but holds a certificate of its own CA.
        let outsider = try Self.cluster()
        for file in ["c1.pem", "c1-key.pem"] {
            try FileManager.default.removeItem(atPath: outsider + "/" + file)
            try FileManager.default.copyItem(atPath: stranger + "/" + file, toPath: outsider + "/" + file)
        }
        try FileManager.default.removeItem(atPath: outsider + "/ca.pem")
        try FileManager.default.copyItem(atPath: directory + "/ca.pem", toPath: outsider + "/ca.pem")
        let pair = try Pair(
            client: ClusterTLS(directory: outsider, name: "c1"), server: ClusterTLS(directory: directory, name: "s1"))
        pair.client.writeAndFlush(ByteBuffer(string: "forged forward"), promise: nil)
        let errors = pair.exchange().compactMap { $0 as? TLSConnectionError }
        let reasons = errors.compactMap { error -> String? in
            if case .handshakeFailed(let reason) = error { return reason } else { return nil }
        }
        #expect(reasons.count == 1)
        #expect(reasons.first?.contains("certificate verify failed") == true)
        #expect(!pair.server.isActive)
        #expect(pair.serverTLS.peerIdentity == nil)
        #expect(try pair.server.readInbound(as: ByteBuffer.self) == nil)
        // The server's alert reaches the client, which closes too.
        #expect(!pair.client.isActive)
    }

    @Test("A client certificate cannot act as a server: the client refuses it")
    func clientCertificateAsServerRefused() throws {
        let directory = try Self.cluster()
        let pair = try Pair(
            client: ClusterTLS(directory: directory, name: "c1"), server: ClusterTLS(directory: directory, name: "c1"))
        let errors = pair.exchange()
        let failure = try #require(errors.compactMap { $0 as? TLSConnectionError }.first)
        #expect("\(failure)".contains("unsuitable certificate purpose"))
        #expect(!pair.client.isActive)
    }

    @Test("Bytes that are not TLS end the connection with a clear error, not a stall")
    func garbageRefused() throws {
        let directory = try Self.cluster()
        let server = EmbeddedChannel(handler: try TLSHandler(context: ClusterTLS(directory: directory, name: "s1").makeServerContext()))
        try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 50000)).wait()
        #expect(throws: TLSConnectionError.self) { try server.writeInbound(ByteBuffer(string: "SSH-2.0-OpenSSH_9.2\r\n")) }
        #expect(!server.isActive)
    }

    @Test("A corrupted record after the handshake closes the connection and delivers nothing of it")
    func corruptedRecord() throws {
        let pair = try Self.connectedPair()
        pair.client.writeAndFlush(ByteBuffer(string: "a forward to tamper with"), promise: nil)
        var record = try #require(try pair.client.readOutbound(as: ByteBuffer.self))
        let last = record.writerIndex - 1
        record.setInteger(record.getInteger(at: last, as: UInt8.self)! ^ 0x01, at: last)
        #expect(throws: TLSConnectionError.self) { try pair.server.writeInbound(record) }
        #expect(!pair.server.isActive)
        #expect(try pair.server.readInbound(as: ByteBuffer.self) == nil)
    }

    @Test("Closing sends close_notify, and the peer closes on it")
    func closeNotify() throws {
        let pair = try Self.connectedPair()
        try pair.client.close().wait()
        let alert = try #require(try pair.client.readOutbound(as: ByteBuffer.self))
        try pair.server.writeInbound(alert)
        #expect(!pair.server.isActive)
    }
}
