import ArgumentParser
import Foundation
import Logging
import PBKVObservability
import PBKVWire

/// How log lines look: swift-log's text lines, or one JSON object per line.
public enum LogFormat: String, ExpressibleByArgument, CaseIterable, Sendable {
    case text
    case json
}

/// Logging options shared by the long-running commands; those that start a cluster pass them
/// on to its processes (`memberArguments`), so every log line of a run has one format.
public struct LoggingOptions: ParsableArguments, Sendable {
    public init() {}

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    public var logLevel: String = "info"
    @Option(help: "Log lines on standard error: text, or json (one object per line: time, level, label, source, message, metadata).")
    public var logFormat: LogFormat = .text

    public func bootstrap(label: String) -> Logger {
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
    public var memberArguments: [String] { ["--log-level", logLevel, "--log-format", logFormat.rawValue] }
}

/// Exit codes for scripts: 0 success, 1 absent key, 2 failure.
public enum ExitStatus {
    public static let absent = ExitCode(1)
    public static let failure = ExitCode(2)
}

/// Writes `message` and a newline to standard error.
public func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}

/// `--compression off|frame|stream` of every command that opens or accepts connections.
public struct CompressionOptions: ParsableArguments, Sendable {
    public init() {}

    @Option(
        help: ArgumentHelp(
            """
            What to offer in handshakes: off; frame (zlib per frame, for large frames only); stream (for \
            slow links: also one deflate stream per connection and direction, so that small, similar \
            messages compress well; costs CPU and ~65 KiB per connection). Used when both sides offer it.
            """, valueName: "off|frame|stream"),
        transform: { text in
            guard let mode = CompressionMode(rawValue: text) else {
                throw ValidationError("--compression must be off, frame or stream, not \"\(text)\"")
            }
            return mode
        })
    public var compression: CompressionMode = .frame

    public var mode: CompressionMode { compression }
}

