import ArgumentParser
import Foundation
import Logging
import PBKVObservability

/// The `pbkv` command: servers, client commands and tools.
@main
struct PBKV: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pbkv",
        abstract: "A fault-tolerant primary/backup replicated key/value store.",
        subcommands: [
            ViewServiceCommand.self, ServerCommand.self, ViewCommand.self,
            GetCommand.self, PutCommand.self, PutHashCommand.self, LocalCommand.self, ChaosCommand.self, BenchCommand.self,
            ClusterBenchCommand.self, WireBenchCommand.self, CertsCommand.self, StatusCommand.self,
        ]
    )
}

/// How log lines look: swift-log's text lines, or one JSON object per line.
enum LogFormat: String, ExpressibleByArgument, CaseIterable {
    case text
    case json
}

/// Logging options shared by the long-running commands; those that start a cluster pass them
/// on to its processes (`memberArguments`), so every log line of a run has one format.
struct LoggingOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"
    @Option(help: "Log lines on standard error: text, or json (one object per line: time, level, label, source, message, metadata).")
    var logFormat: LogFormat = .text

    func bootstrap(label: String) -> Logger {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        let format = logFormat
        LoggingSystem.bootstrap { label in
            switch format {
            case .text:
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            case .json:
                var handler = JSONLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
        }
        return Logger(label: label)
    }

    /// The same options as arguments of the `pbkv viewservice` and `pbkv server` processes a
    /// command starts.
    var memberArguments: [String] { ["--log-level", logLevel, "--log-format", logFormat.rawValue] }
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
