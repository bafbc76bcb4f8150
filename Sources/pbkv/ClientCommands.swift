import ArgumentParser
import Foundation
import Logging
import PBKVClient
import PBKVWire

/// Options every client command takes.
struct ClientOptions: ParsableArguments {
    @Option(help: "The view service, HOST:PORT; a replicated one as HOST:PORT,HOST:PORT,…")
    var viewservice: String = "127.0.0.1:7000"
    @Option(help: "Give up after this many seconds.")
    var timeout: Double = 30
    @OptionGroup var security: SecurityOptions

    func makeClient() throws -> KVClient {
        var configuration = KVClientConfiguration()
        configuration.deadline = .milliseconds(Int64(timeout * 1000))
        do {
            configuration.tls = try security.resolve()
        } catch {
            printError("pbkv: \(error)")
            throw ExitStatus.failure
        }
        var logger = Logger(label: "pbkv.client")
        logger.logLevel = .critical
        do {
            return try KVClient(viewService: viewservice, configuration: configuration, logger: logger)
        } catch {
            printError("pbkv: \(error)")
            throw ExitStatus.failure
        }
    }
}

/// `pbkv get KEY`: prints the value; exit 1 if the key is absent.
struct GetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "get", abstract: "Print the value of KEY.")
    @Argument var key: String
    @OptionGroup var options: ClientOptions

    func run() async throws {
        let client = try options.makeClient()
        defer { Task { await client.close() } }
        do {
            if let value = try await client.get(key) {
                print(value)
            } else {
                printError("pbkv: key \"\(key)\" is absent")
                throw ExitStatus.absent
            }
        } catch let error as KVClientError {
            printError("pbkv: \(error)")
            throw ExitStatus.failure
        }
    }
}

/// `pbkv put KEY VALUE`.
struct PutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "put", abstract: "Set KEY to VALUE.")
    @Argument var key: String
    @Argument var value: String
    @OptionGroup var options: ClientOptions

    func run() async throws {
        let client = try options.makeClient()
        do {
            try await client.put(key, value)
            print("OK")
        } catch {
            printError("pbkv: \(error)")
            throw ExitStatus.failure
        }
        await client.close()
    }
}

/// `pbkv puthash KEY VALUE`: prints the previous value.
struct PutHashCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "puthash", abstract: "Set KEY to FNV-1a-32(previous + VALUE) in decimal; print the previous value.")
    @Argument var key: String
    @Argument var value: String
    @OptionGroup var options: ClientOptions

    func run() async throws {
        let client = try options.makeClient()
        do {
            print(try await client.putHash(key, value))
        } catch {
            printError("pbkv: \(error)")
            throw ExitStatus.failure
        }
        await client.close()
    }
}

/// `pbkv view`: prints the current view.
struct ViewCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "view", abstract: "Print the current view.")
    @Flag(help: "Print JSON: {\"viewnum\":N,\"primary\":\"HOST:PORT\",\"backup\":\"HOST:PORT\"}.")
    var json = false
    @OptionGroup var options: ClientOptions

    func run() async throws {
        let client = try options.makeClient()
        let view: View
        do {
            view = try await client.currentView()
        } catch {
            printError("pbkv: cannot read the view from \(options.viewservice): \(error)")
            throw ExitStatus.failure
        }
        await client.close()
        if json {
            print("{\"viewnum\":\(view.viewnum),\"primary\":\(jsonString(view.primary)),\"backup\":\(jsonString(view.backup))}")
        } else {
            print("view \(view.viewnum)\(view.acknowledged ? "" : " (not yet acknowledged)")")
            print("primary: \(view.primary.isEmpty ? "(none)" : view.primary)")
            print("backup:  \(view.backup.isEmpty ? "(none)" : view.backup)")
        }
    }

    private func jsonString(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
