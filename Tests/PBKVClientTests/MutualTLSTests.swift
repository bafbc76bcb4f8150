import Foundation
import Logging
import NIOPosix
import PBKVCore
import PBKVClient
import PBKVTLS
import PBKVTestSupport
import PBKVWire
import Testing

/// Only members act as members: a cluster of real processes with mutual TLS (its own CA), and
/// outsiders who try what an outsider on the network could do before.
@Suite("Mutual TLS (processes)", .serialized, .timeLimit(.minutes(2)))
struct MutualTLSTests {
    static let quiet = Logger(label: "pbkv.test", factory: { _ in SwiftLogNoOpLogHandler() })

    /// A TLS cluster: view service, s1 primary, s2 backup, keys a and b written.
    static func start() async throws -> (ProcessCluster, KVClient, View) {
        let cluster = try ProcessCluster(executable: try ProcessCluster.builtExecutable(), pingIntervalMs: 100, tls: true)
        try cluster.startViewService()
        var config = KVClientConfiguration()
        config.deadline = .seconds(10)
        let client = try cluster.client(config, logger: quiet)
        _ = try await cluster.startServersInOrder(["s1", "s2"], watching: client)
        try await client.put("a", "1")
        try await client.put("b", "2")
        return (cluster, client, try await client.currentView())
    }

    /// An RPC client of `address` presenting `tls` (nil: plaintext).
    static func outsider(_ address: String, tls: MutualTLS?) throws -> RPCClient {
        var configuration = RPCClientConfiguration()
        configuration.tls = tls
        configuration.connectTimeout = .seconds(2)
        return RPCClient(
            peer: try PeerAddress(parsing: address), eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
            configuration: configuration, logger: quiet)
    }

    static func code(of call: Call, via client: RPCClient) async -> Code? {
        do {
            _ = try await client.call(call, timeout: .seconds(3)).get()
            return .ok
        } catch RPCError.remote(let code, _) {
            return code
        } catch {
            return nil
        }
    }

    /// Acknowledged data is still there, the view did not move, and the store takes writes.
    static func expectUnharmed(_ client: KVClient, view before: View) async throws {
        #expect(try await client.get("a") == "1")
        #expect(try await client.get("b") == "2")
        try await client.put("c", "3")
        #expect(try await client.get("c") == "3")
        #expect(try await client.currentView().sameAssignment(as: before))
    }

    @Test("A plaintext outsider cannot complete a handshake: no pbkv frame is answered")
    func plaintextOutsiderRefused() async throws {
        let (cluster, client, view) = try await Self.start()
        defer { cluster.stopAll() }
        for address in [cluster.viewServiceAddress, view.primary, view.backup] {
            let plain = try Self.outsider(address, tls: nil)
            do {
                _ = try await plain.call(.getView, timeout: .seconds(3)).get()
                Issue.record("a plaintext GetView to \(address) was answered")
            } catch let error as RPCError {
                if case .remote = error { Issue.record("\(address) answered a plaintext call with a pbkv error: \(error)") }
            }
            _ = try? await plain.shutdown().get()
        }
        try await Self.expectUnharmed(client, view: view)
        await client.close()
    }

    @Test("An outsider holding a client certificate cannot Ping, Forward or Transfer")
    func clientCertificateIsNotAMember() async throws {
        let (cluster, client, view) = try await Self.start()
        defer { cluster.stopAll() }
        let directory = try #require(cluster.tlsDirectory)
        try CertificateAuthority(directory: directory).issue(name: "outsider", role: .client, hosts: [])
        let tls = try MutualTLS(directory: directory, name: "outsider")
        let toViewService = try Self.outsider(cluster.viewServiceAddress, tls: tls)
        let toBackup = try Self.outsider(view.backup, tls: tls)
        // What a client may do, it may.
        #expect(await Self.code(of: .getView, via: toViewService) == .ok)
        // A ping as the primary (restarted, viewnum 0) would depose it; as a new server it would
        // join the view. Both refused.
        #expect(await Self.code(of: .ping(PingArgs(server: view.primary, viewnum: 0)), via: toViewService) == .permissionDenied)
        #expect(await Self.code(of: .ping(PingArgs(server: "127.0.0.1:1", viewnum: 0)), via: toViewService) == .permissionDenied)
        // Forged operations and a forged state transfer to the backup, naming the real primary.
        let forged = Operation(kind: .put, key: "a", value: "forged", id: RequestID(clientID: 9, seq: 1))
        let forward = ForwardArgs(viewnum: view.viewnum, primary: view.primary, firstIndex: 0, ops: [forged])
        #expect(await Self.code(of: .forward(forward), via: toBackup) == .permissionDenied)
        let chunk = TransferChunk(
            viewnum: view.viewnum, primary: view.primary, transferID: 1, chunkIndex: 0, last: true, nextIndex: 0,
            entries: [], duplicates: [])
        #expect(await Self.code(of: .transfer(chunk), via: toBackup) == .permissionDenied)
        _ = try? await toViewService.shutdown().get()
        _ = try? await toBackup.shutdown().get()
        // The primary dies: the backup, untouched by the forgeries, holds every acknowledged key.
        try #require(cluster.process(at: view.primary)).killAndWait()
        _ = try await client.waitForView(within: .seconds(10)) { $0.primary == view.backup }
        #expect(try await client.get("a") == "1")
        #expect(try await client.get("b") == "2")
        await client.close()
    }

    @Test("A server certificate speaks only for its own addresses")
    func serverCertificateSpeaksForItselfOnly() async throws {
        let (cluster, client, view) = try await Self.start()
        defer { cluster.stopAll() }
        let directory = try #require(cluster.tlsDirectory)
        let elsewhere = "127.0.0.1:\(try ProcessCluster.freePort())"
        try CertificateAuthority(directory: directory).issue(name: "other-server", role: .server, hosts: [elsewhere])
        let tls = try MutualTLS(directory: directory, name: "other-server")
        let toViewService = try Self.outsider(cluster.viewServiceAddress, tls: tls)
        let toBackup = try Self.outsider(view.backup, tls: tls)
        #expect(await Self.code(of: .ping(PingArgs(server: view.primary, viewnum: 0)), via: toViewService) == .permissionDenied)
        let forward = ForwardArgs(
            viewnum: view.viewnum, primary: view.primary, firstIndex: 0,
            ops: [Operation(kind: .put, key: "a", value: "forged", id: RequestID(clientID: 9, seq: 1))])
        #expect(await Self.code(of: .forward(forward), via: toBackup) == .permissionDenied)
        _ = try? await toViewService.shutdown().get()
        _ = try? await toBackup.shutdown().get()
        try await Self.expectUnharmed(client, view: view)
        await client.close()
    }

    @Test("A client checks that the server's certificate covers the address it dialed")
    func serverMustCoverDialedAddress() async throws {
        let (cluster, client, view) = try await Self.start()
        defer { cluster.stopAll() }
        // The view service's certificate covers 127.0.0.1:PORT, not localhost:PORT.
        let port = try PeerAddress(parsing: cluster.viewServiceAddress).port
        let other = try Self.outsider("localhost:\(port)", tls: cluster.clientTLS)
        do {
            _ = try await other.call(.getView, timeout: .seconds(3)).get()
            Issue.record("a view service was believed at an address its certificate does not cover")
        } catch RPCError.connectionRefused(_, let reason) {
            #expect(reason.contains("does not cover"), "\(reason)")
        }
        _ = try? await other.shutdown().get()
        try await Self.expectUnharmed(client, view: view)
        await client.close()
    }
}
