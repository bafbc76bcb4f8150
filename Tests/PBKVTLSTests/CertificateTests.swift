import Foundation
import PBKVTLS
import Testing

/// `pbkv certs`: the CA, member certificates, and the identity they state; checked against the
/// `openssl` command as an independent reader.
@Suite("Cluster certificates")
struct CertificateTests {
    func freshDirectory() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("pbkv-certs-\(UUID().uuidString)").path
    }

    func mode(_ path: String) throws -> Int {
        try #require(FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int)
    }

    struct OpenSSLCommandFailed: Error {
        var output: String
    }

    /// Runs the `openssl` command (the Makefile installs it) and returns its output; throws when it fails.
    @discardableResult
    func openssl(_ arguments: [String]) throws -> String {
        try String(decoding: opensslOutput(arguments), as: UTF8.self)
    }

    func opensslOutput(_ arguments: [String]) throws -> [UInt8] {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["openssl"] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw OpenSSLCommandFailed(output: String(decoding: output, as: UTF8.self)) }
        return Array(output)
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
        #expect(tls.identity.name == "s1")
        let names = try openssl(["x509", "-noout", "-ext", "subjectAltName", "-in", CertificateAuthority.certificatePath(dir, "s1")])
        #expect(names.contains("URI:pbkv://server/10.0.0.5:7001, IP Address:10.0.0.5, URI:pbkv://server/10.0.0.5:7002"), "\(names)")
    }

    @Test("openssl verifies each certificate against the CA, for its purpose, and reads what it states")
    func opensslAgrees() throws {
        let dir = freshDirectory()
        try CertificateAuthority.create(in: dir)
        let ca = try CertificateAuthority(directory: dir)
        try ca.issue(name: "s1", role: .server, hosts: ["127.0.0.1:7001", "[::1]:7001", "db.example:7002"])
        try ca.issue(name: "app", role: .client, hosts: [])
        let caFile = CertificateAuthority.certificatePath(dir, "ca")
        let server = CertificateAuthority.certificatePath(dir, "s1")
        let client = CertificateAuthority.certificatePath(dir, "app")
        #expect(try openssl(["verify", "-CAfile", caFile, "-purpose", "sslserver", server]).contains(": OK"))
        #expect(try openssl(["verify", "-CAfile", caFile, "-purpose", "sslclient", server]).contains(": OK"))
        #expect(try openssl(["verify", "-CAfile", caFile, "-purpose", "sslclient", client]).contains(": OK"))
        #expect(throws: OpenSSLCommandFailed.self, "a client certificate is not a server's") {
            try openssl(["verify", "-CAfile", caFile, "-purpose", "sslserver", client])
        }
        let text = try openssl(["x509", "-noout", "-text", "-in", server])
        for expected in [
            "Subject: CN = s1", "Issuer: CN = pbkv cluster CA", "Public Key Algorithm: id-ecPublicKey", "NIST CURVE: P-256",
            "Signature Algorithm: ecdsa-with-SHA256", "CA:FALSE", "TLS Web Server Authentication, TLS Web Client Authentication",
            "URI:pbkv://server/127.0.0.1:7001", "IP Address:127.0.0.1", "URI:pbkv://server/[::1]:7001", "IP Address:0:0:0:0:0:0:0:1",
            "DNS:db.example",
        ] {
            #expect(text.contains(expected), "openssl x509 -text lacks \(expected)")
        }
        let caText = try openssl(["x509", "-noout", "-text", "-in", caFile])
        #expect(caText.contains("CA:TRUE, pathlen:0"))
        #expect(caText.contains("Certificate Sign, CRL Sign"))
        let key = try openssl(["pkey", "-noout", "-text", "-in", CertificateAuthority.keyPath(dir, "s1")])
        #expect(key.contains("NIST CURVE: P-256"))
    }

    @Test("A certificate that is not DER, or DER with bytes after it, states no identity")
    func garbageIsNoIdentity() throws {
        let dir = freshDirectory()
        try CertificateAuthority.create(in: dir)
        try CertificateAuthority(directory: dir).issue(name: "app", role: .client, hosts: [])
        let der = try opensslOutput(["x509", "-outform", "DER", "-in", CertificateAuthority.certificatePath(dir, "app")])
        #expect(MemberIdentity(derEncoded: der) == MemberIdentity(name: "app", role: .client))
        #expect(MemberIdentity(derEncoded: der + [0]) == nil)
        #expect(MemberIdentity(derEncoded: Array(der.dropLast())) == nil)
        #expect(MemberIdentity(derEncoded: []) == nil)
        #expect(MemberIdentity(derEncoded: Array("not a certificate".utf8)) == nil)
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
