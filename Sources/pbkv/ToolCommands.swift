import ArgumentParser
import Foundation
import PBKVCommandLine

#if canImport(Glibc)
import Glibc
#endif

/// The tools (`pbkv local`, `chaos`, `bench`, `bench-cluster`, `bench-wire`) live in the
/// `pbkv-tools` binary, so that this one (the servers) does not link the test harness. `pbkv`
/// runs it for them, git-style: `pbkv TOOL ARGS…` execs `pbkv-tools TOOL ARGS…` from the directory
/// `pbkv` is in (both are built by `swift build`, side by side).
enum ToolCommand {
    static let names = Set(Tool.allCases.map(\.rawValue))

    /// `pbkv-tools` beside this binary.
    static var toolsExecutable: String {
        let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent("pbkv-tools").path
    }

    /// Replaces this process with `pbkv-tools` when `arguments` name a tool; returns otherwise.
    /// Exits with the failure status when `pbkv-tools` cannot be run.
    static func runIfTool(_ arguments: [String]) {
        guard arguments.count > 1, names.contains(arguments[1]) else { return }
        let tools = toolsExecutable
        let argv = [tools] + arguments.dropFirst()
        var cArguments = argv.map { strdup($0) } + [nil]
        execv(tools, &cArguments)
        printError("pbkv: cannot run \(tools) for `pbkv \(arguments[1])`: \(String(cString: strerror(errno))); build it with `swift build` (it is built beside pbkv)")
        exit(ExitStatus.failure.rawValue)
    }
}

/// The help entries of the tools: `pbkv` never parses their arguments (`ToolCommand` hands
/// them to `pbkv-tools`), but `pbkv --help` lists them.
protocol ToolHelpEntry: ParsableCommand {
    static var tool: Tool { get }
}

extension ToolHelpEntry {
    static var configuration: CommandConfiguration {
        CommandConfiguration(commandName: tool.rawValue, abstract: tool.abstract + " (pbkv-tools)")
    }
}

struct LocalCommand: ToolHelpEntry { static let tool = Tool.local }
struct ChaosCommand: ToolHelpEntry { static let tool = Tool.chaos }
struct BenchCommand: ToolHelpEntry { static let tool = Tool.bench }
struct ClusterBenchCommand: ToolHelpEntry { static let tool = Tool.benchCluster }
struct WireBenchCommand: ToolHelpEntry { static let tool = Tool.benchWire }
