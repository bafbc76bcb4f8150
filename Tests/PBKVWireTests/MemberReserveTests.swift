import Foundation
import NIOPosix
import PBKVTLS
import PBKVCore
import PBKVTestSupport
import PBKVWire
import Testing

/// With mutual TLS a server keeps places for cluster members: clients (client certificates)
/// may hold at most `maxConnections − memberReserve` connections, and connections that never
/// say Hello give way, so a flood of either never cuts a member off.
@Suite("Connection limits: a reserve for cluster members (mutual TLS)", .timeLimit(.minutes(1)))
struct MemberReserveTests {
    /// A CA in a temporary directory with a server certificate for `127.0.0.1:port`, two member
    /// certificates and a client certificate.
    struct Certificates {
        let directory: String
        let port: Int

        init() throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("pbkv-reserve-\(UUID().uuidString)").path
            port = try ProcessCluster.freePort()
            let ca = try CertificateAuthority.create(in: directory)
            try ca.issue(name: "server", role: .server, hosts: ["127.0.0.1:\(port)"])
            try ca.issue(name: "member-1", role: .server, hosts: ["127.0.0.1:1"])
            try ca.issue(name: "member-2", role: .server, hosts: ["127.0.0.1:2"])
            try ca.issue(name: "member-3", role: .server, hosts: ["127.0.0.1:3"])
            try ca.issue(name: "alice", role: .client, hosts: [])
        }

        func tls(_ name: String) throws -> MutualTLS { try MutualTLS(directory: directory, name: name) }

        func remove() { try? FileManager.default.removeItem(atPath: directory) }
    }

    static func reason(_ error: RPCError?) -> String? {
        guard case .connectionRefused(_, let reason)? = error else { return nil }
        return reason
    }

    @Test("Clients get at most maxConnections − memberReserve places; members connect through a flood of clients and silent connections")
    func membersFindRoom() async throws {
        let certificates = try Certificates()
        defer { certificates.remove() }
        let serverTLS = try certificates.tls("server")
        try await LiveServer.with(configure: {
            $0.port = certificates.port
            $0.tls = serverTLS
            $0.maxConnections = 4
            $0.memberReserve = 2
            $0.handshakeTimeout = .seconds(30)
        }) { live async throws in
            let alice = try certificates.tls("alice")
            let clients = (0..<3).map { _ in live.client { $0.tls = alice } }
            #expect(try await clients[0].call(.getView, timeout: .seconds(5)) == .view(EchoViewService.fixedView))
            #expect(try await clients[1].call(.getView, timeout: .seconds(5)) == .view(EchoViewService.fixedView))
            // A third client connection: refused after its Hello, with the reason.
            let refused = await rpcError { () async throws(RPCError) in try await clients[2].call(.getView, timeout: .seconds(5)) }
            let reason = Self.reason(refused)
            #expect(reason?.contains("too many client connections (limit 2; 2 of 4 kept for cluster members)") == true,
                "\(String(describing: refused))")

            // Silent connections (no TLS handshake, no Hello) fill the two free places.
            var silent: [RawConnection] = []
            for _ in 0..<5 { silent.append(try await live.raw()) }
            #expect(await poll { live.server.connectionCount == 4 })

            // Members still connect, each in the place of a silent connection.
            let members = try (1...2).map { n in try certificates.tls("member-\(n)") }.map { tls in live.client { $0.tls = tls } }
            for member in members {
                #expect(try await member.call(.getView, timeout: .seconds(5)) == .view(EchoViewService.fixedView))
            }
            #expect(live.server.connectionCount == 4)
            // The clients that were in keep being served.
            #expect(try await clients[0].call(.getView, timeout: .seconds(5)) == .view(EchoViewService.fixedView))

            // Every place is now held past its Hello: even a member is refused, with a Goodbye
            // that names the limit (a plaintext frame, so its TLS handshake fails).
            let memberThree = try certificates.tls("member-3")
            let third = live.client { $0.tls = memberThree }
            let full = await rpcError { () async throws(RPCError) in try await third.call(.getView, timeout: .seconds(5)) }
            #expect(full != nil)
            for raw in silent { await raw.close() }
        }
    }

    @Test("The automatic reserve is a quarter of the limit, at most 64; plaintext keeps none")
    func automaticReserve() throws {
        var configuration = RPCServerConfiguration(host: "127.0.0.1", port: 0)
        configuration.maxConnections = 960
        #expect(configuration.effectiveMemberReserve == 0, "plaintext: no members to tell apart")
        #expect(configuration.clientConnectionLimit == 960)
        let certificates = try Certificates()
        defer { certificates.remove() }
        configuration.tls = try certificates.tls("server")
        #expect(configuration.effectiveMemberReserve == 64)
        #expect(configuration.clientConnectionLimit == 896)
        configuration.maxConnections = 40
        #expect(configuration.effectiveMemberReserve == 10)
        configuration.memberReserve = 3
        #expect(configuration.clientConnectionLimit == 37)
    }
}
