import ArgumentParser
import PBKVCommandLine
import PBKVTLS

/// `pbkv certs`: a cluster CA and member certificates, without OpenSSL.
struct CertsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "certs", abstract: "Make a cluster CA and issue server and client certificates for mutual TLS.",
        subcommands: [Init.self, Issue.self])

    /// `pbkv certs init DIR`.
    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a CA: DIR/ca.pem and DIR/ca-key.pem (DIR is created; an existing CA is never overwritten).")

        @Argument(help: "Directory of the CA.")
        var directory: String

        func run() throws {
            try CertificateAuthority.create(in: directory)
            print("CA written: \(CertificateAuthority.certificatePath(directory, "ca")) (key \(CertificateAuthority.keyPath(directory, "ca")), mode 0600)")
        }
    }

    /// `pbkv certs issue DIR NAME --role server|client [--host HOST:PORT]…`.
    struct Issue: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue DIR/NAME.pem and DIR/NAME-key.pem, signed by the CA in DIR.")

        @Argument(help: "Directory of the CA.")
        var directory: String
        @Argument(help: "Name of the certificate (its files are NAME.pem and NAME-key.pem).")
        var name: String
        @Option(help: "server (a KV server or view service; works in both directions) or client.")
        var role: String
        @Option(name: .customLong("host"), help: "An advertised address the server may speak for, HOST:PORT (repeatable).")
        var hosts: [String] = []

        func run() throws {
            guard let memberRole = MemberRole(rawValue: role) else {
                throw ValidationError("--role must be server or client, not \"\(role)\"")
            }
            try CertificateAuthority(directory: directory).issue(name: name, role: memberRole, hosts: hosts)
            let covers = memberRole == .server ? " for \(hosts.joined(separator: ", "))" : ""
            print("\(memberRole) certificate written: \(CertificateAuthority.certificatePath(directory, name))\(covers)")
        }
    }
}
