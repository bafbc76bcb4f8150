import ArgumentParser
import PBKVCommandLine
import Foundation
import Logging
import PBKVCore
import PBKVClient
import PBKVObservability
import PBKVTLS
import PBKVWire

/// Options every client command takes.
struct ClientOptions: ParsableArguments {
    @Option(help: "The view service, HOST:PORT; a replicated one as HOST:PORT,HOST:PORT,…")
    var viewservice: String = "127.0.0.1:7000"
    @Option(help: "Give up after this many seconds.")
    var timeout: Double = 30
    @OptionGroup var compression: CompressionOptions
    @OptionGroup var security: SecurityOptions

    /// `--timeout` as a duration.
    var deadline: Duration { .milliseconds(Int64(timeout * 1000)) }

    /// The TLS material chosen by the flags (nil: plaintext); an unusable choice is printed and
    /// ends the command with the failure status.
    func resolveTLS() throws -> MutualTLS? {
        do {
            return try security.resolve()
        } catch {
            printError("pbkv: \(error)")
            throw ExitStatus.failure
        }
    }

    func makeClient() throws -> KVClient {
        var configuration = KVClientConfiguration()
        configuration.deadline = deadline
        configuration.tls = try resolveTLS()
        configuration.compression = compression.mode
        var logger = Logger(label: "pbkv.client")
        logger.logLevel = .critical
        do {
            return try KVClient(viewService: viewservice, configuration: configuration, logger: logger)
        } catch {
            printError("pbkv: \(error)")
            throw ExitStatus.failure
        }
    }

    /// Runs `body` with a new client, then closes it; an error is printed and ends the command
    /// with the failure status.
    func withClient<Result>(_ body: (KVClient) async throws -> Result) async throws -> Result {
        let client = try makeClient()
        do {
            let result = try await body(client)
            await client.close()
            return result
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
        guard let value = try await options.withClient({ try await $0.get(key) }) else {
            printError("pbkv: key \"\(key)\" is absent")
            throw ExitStatus.absent
        }
        print(value)
    }
}

/// `pbkv put KEY VALUE`.
struct PutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "put", abstract: "Set KEY to VALUE.")
    @Argument var key: String
    @Argument var value: String
    @OptionGroup var options: ClientOptions

    func run() async throws {
        try await options.withClient { try await $0.put(key, value) }
        print("OK")
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
        print(try await options.withClient { try await $0.putHash(key, value) })
    }
}

/// `pbkv view`: prints the current view; with `--watch`, every change of it as it happens.
struct ViewCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "view", abstract: "Print the current view (--watch: every change).")
    @Flag(help: "Print JSON: {\"viewnum\":N,\"primary\":\"HOST:PORT\",\"backup\":\"HOST:PORT\"} (with --watch also \"acknowledged\" and \"time\").")
    var json = false
    @Flag(help: "Keep running and print one line per change of the view (number, servers or acknowledgement) until interrupted.")
    var watch = false
    @Option(help: "With --watch: milliseconds between two reads of the view.")
    var intervalMs: Int = 100
    @OptionGroup var options: ClientOptions

    func validate() throws {
        guard intervalMs > 0 else { throw ValidationError("--interval-ms must be positive") }
    }

    func run() async throws {
        let client = try options.makeClient()
        if watch { return try await watchViews(client) }
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

    /// Reads the view every `intervalMs` and prints it whenever it differs from the last one
    /// printed (the first at once); says on stderr when the view service cannot be reached,
    /// once per outage. Runs until interrupted.
    private func watchViews(_ client: KVClient) async throws {
        var last: View?
        var unreachable = false
        while !Task.isCancelled {
            do {
                let view = try await client.currentView()
                if unreachable {
                    printError("pbkv: the view service answers again")
                    unreachable = false
                }
                if view != last {
                    last = view
                    writeLine(watchLine(view, at: JSONLogHandler.timestamp()))
                }
            } catch {
                if !unreachable {
                    printError("pbkv: cannot read the view from \(options.viewservice): \(error); still trying")
                    unreachable = true
                }
            }
            try await Task.sleep(for: .milliseconds(intervalMs))
        }
    }

    private func watchLine(_ view: View, at time: String) -> String {
        if json {
            return "{\"time\":\(jsonString(time)),\"viewnum\":\(view.viewnum),\"primary\":\(jsonString(view.primary)),"
                + "\"backup\":\(jsonString(view.backup)),\"acknowledged\":\(view.acknowledged)}"
        }
        return "\(time) view \(view.viewnum) primary \(view.primary.isEmpty ? "(none)" : view.primary) "
            + "backup \(view.backup.isEmpty ? "(none)" : view.backup)\(view.acknowledged ? " acknowledged" : " not yet acknowledged")"
    }

    private func jsonString(_ s: String) -> String {
        var out = ""
        JSONLogHandler.appendString(s, to: &out)
        return out
    }
}

/// Writes `line` and a newline to standard output at once (not held in a buffer: a pipe reads it now).
func writeLine(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
