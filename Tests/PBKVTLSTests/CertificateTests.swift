import Foundation
import PBKVTLS
import Testing
import X509

/// `pbkv certs` without OpenSSL: the CA, member certificates, and the identity they state.
@Suite("Cluster certificates")
struct CertificateTests {
    func freshDirectory() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("pbkv-certs-\(UUID().uuidString)").path
    }

    func mode(_ path: String) throws -> Int {
        try #require(FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int)
    }

    @Test("init makes ca.pem and ca-key.pem (0600) in a new directory and never overwrites them")
    func initNeverOverwrites() throws {
        let dir = freshDirectory()
        try CertificateAuthority.create(in: dir)
        let key = CertificateAuthority.keyPath(dir, "ca")
        let before = try String(contentsOfFile: key, encoding: .utf8)
        #expect(try mode(key) == 0o600)
        #expect(throws: ClusterCertificateError.authorityExists(path: CertificateAuthority.certificatePath(dir, "ca"))) {
            try CertificateAuthority.create(in: dir)
        }
        #expect(try String(contentsOfFile: key, encoding: .utf8) == before)
    }

    @Test("A server certificate covers exactly its --host addresses (port included) and carries IP names for TLS tools")
    func serverIdentity() throws {
        let dir = freshDirectory()
        try CertificateAuthority.create(in: dir)
        try CertificateAuthority(directory: dir).issue(name: "s1", role: .server, hosts: ["10.0.0.5:7001", "10.0.0.5:7002"])
        #expect(try mode(CertificateAuthority.keyPath(dir, "s1")) == 0o600)
        let tls = try ClusterTLS(directory: dir, name: "s1")
        #expect(tls.identity.role == .server)
        #expect(tls.identity.speaks(for: "10.0.0.5:7001"))
        #expect(tls.identity.speaks(for: "10.0.0.5:7002"))
        #expect(!tls.identity.speaks(for: "10.0.0.5:7003"), "the port is part of the identity")
        let certificate = try Certificate(pemEncoded: String(contentsOfFile: CertificateAuthority.certificatePath(dir, "s1"), encoding: .utf8))
        let names = try #require(try certificate.extensions.subjectAlternativeNames)
        #expect(names.contains(.ipAddress(.init(contentBytes: [10, 0, 0, 5]))))
    }

    @Test("A client certificate states the client role and speaks for no address")
    func clientIdentity() throws {
        let dir = freshDirectory()
        try CertificateAuthority.create(in: dir)
        try CertificateAuthority(directory: dir).issue(name: "app", role: .client, hosts: [])
        let tls = try ClusterTLS(directory: dir, name: "app")
        #expect(tls.identity == MemberIdentity(name: "app", role: .client))
        #expect(!tls.identity.speaks(for: "127.0.0.1:7001"))
        #expect(throws: ClusterCertificateError.self) {
            try CertificateAuthority(directory: dir).issue(name: "bad", role: .client, hosts: ["127.0.0.1:1"])
        }
        #expect(throws: ClusterCertificateError.self) {
            try CertificateAuthority(directory: dir).issue(name: "bad", role: .server, hosts: [])
        }
        #expect(throws: ClusterCertificateError.self) {
            try CertificateAuthority(directory: dir).issue(name: "bad", role: .server, hosts: ["no-port"])
        }
    }

    @Test("Issuing without a CA says to run certs init")
    func issueWithoutCA() throws {
        let dir = freshDirectory()
        #expect(throws: ClusterCertificateError.missing(
            path: CertificateAuthority.certificatePath(dir, "ca"), hint: "run `pbkv certs init \(dir)` first")) {
            try CertificateAuthority(directory: dir)
        }
    }

    @Test("TLS contexts build from the files")
    func contexts() throws {
        let dir = freshDirectory()
        try CertificateAuthority.create(in: dir)
        try CertificateAuthority(directory: dir).issue(name: "s1", role: .server, hosts: ["127.0.0.1:7001"])
        let tls = try ClusterTLS(directory: dir, name: "s1")
        _ = try tls.makeServerContext()
        _ = try tls.makeClientContext()
    }
}
