import ArgumentParser
import Foundation
import Logging
import PBKVTLS

/// `--tls DIR --tls-name NAME` or `--insecure`, on every command that talks to a cluster.
/// `PBKV_TLS_DIR`, `PBKV_TLS_NAME` and `PBKV_INSECURE=1` stand in for the flags.
public struct SecurityOptions: ParsableArguments, Sendable {
    public init() {}

    @Option(help: "Mutual TLS: the directory of the cluster CA (trusts DIR/ca.pem). Env: PBKV_TLS_DIR.")
    public var tls: String?
    @Option(help: "Mutual TLS: the certificate to present, DIR/NAME.pem and DIR/NAME-key.pem. Env: PBKV_TLS_NAME.")
    public var tlsName: String?
    @Flag(help: "Plaintext, unauthenticated: anyone who reaches a server can act as a member. Env: PBKV_INSECURE=1.")
    public var insecure = false

    /// What was chosen, flags first, then the environment.
    public enum Choice {
        case tls(directory: String, name: String)
        case insecure
    }

    public func choice() throws -> Choice {
        let environment = ProcessInfo.processInfo.environment
        let directory = tls ?? environment["PBKV_TLS_DIR"]
        let name = tlsName ?? environment["PBKV_TLS_NAME"]
        let insecure = self.insecure || insecureByEnvironment
        switch (directory, name) {
        case (let directory?, let name?):
            if self.insecure { throw ValidationError("--insecure and --tls exclude each other: choose one") }
            return .tls(directory: directory, name: name)
        case (_?, nil):
            throw ValidationError("--tls needs --tls-name NAME too (the certificate DIR/NAME.pem to present)")
        case (nil, _?):
            throw ValidationError("--tls-name needs --tls DIR too (the directory of the cluster CA)")
        case (nil, nil):
            guard insecure else {
                throw ValidationError(
                    "choose how to talk to the cluster: --tls DIR --tls-name NAME (mutual TLS; see `pbkv certs`) "
                        + "or --insecure (plaintext); or set PBKV_TLS_DIR and PBKV_TLS_NAME, or PBKV_INSECURE=1")
            }
            return .insecure
        }
    }

    /// The TLS material to use (nil: plaintext). `longRunning` processes warn about plaintext.
    public func resolve(logger: Logger? = nil) throws -> MutualTLS? {
        switch try choice() {
        case .insecure:
            logger?.warning("plaintext and unauthenticated (--insecure): anyone who can reach this process can act as a cluster member")
            return nil
        case .tls(let directory, let name):
            let material = try MutualTLS(directory: directory, name: name)
            logger?.info("mutual TLS", metadata: ["tls.dir": "\(directory)", "tls.identity": "\(material.material.identity)"])
            return material
        }
    }
}

/// For the tools that start a cluster of their own (`pbkv local`, `pbkv chaos`,
/// `pbkv bench-cluster`): mutual TLS with a CA made for it in a temporary directory (the
/// default), or `--insecure` / `PBKV_INSECURE=1` for plaintext.
public struct OwnClusterSecurityOptions: ParsableArguments, Sendable {
    public init() {}

    @Flag(help: "Run the cluster in plaintext instead of mutual TLS with a CA of its own. Env: PBKV_INSECURE=1.")
    public var insecure = false

    /// True: the cluster makes its own CA and every process uses it.
    public var tls: Bool { !(insecure || insecureByEnvironment) }
}

/// `PBKV_INSECURE=1` (or `true`, `yes`) in the environment: plaintext, as with `--insecure`.
private var insecureByEnvironment: Bool {
    ["1", "true", "yes"].contains(ProcessInfo.processInfo.environment["PBKV_INSECURE"]?.lowercased() ?? "")
}
