import ArgumentParser
import Foundation
import Logging
import PBKVCommandLine

/// The `pbkv` command: servers, client commands and tools (the tools run `pbkv-tools`).
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

    static func main() async {
        ToolCommand.runIfTool(CommandLine.arguments)
        await main(nil)
    }
}

