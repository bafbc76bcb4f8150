import ArgumentParser
import Foundation
import Logging

/// The `pbkv` command: servers, client commands and tools.
@main
struct PBKV: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pbkv",
        abstract: "A fault-tolerant primary/backup replicated key/value store.",
        subcommands: [
            ViewServiceCommand.self, ServerCommand.self, ViewCommand.self,
            GetCommand.self, PutCommand.self, PutHashCommand.self, LocalCommand.self, ChaosCommand.self, BenchCommand.self,
            ClusterBenchCommand.self, CertsCommand.self,
        ]
    )
}

/// Logging options shared by the long-running commands.
struct LoggingOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func bootstrap(label: String) -> Logger {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        return Logger(label: label)
    }
}

/// Exit codes for scripts: 0 success, 1 absent key, 2 failure.
enum ExitStatus {
    static let absent = ExitCode(1)
    static let failure = ExitCode(2)
}

/// Writes `message` and a newline to standard error.
func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}
