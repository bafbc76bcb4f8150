import Foundation
import Logging
import PBKVObservability
import Synchronization
import Testing

/// Lines a `JSONLogHandler` wrote, kept in memory.
final class CapturedLines: Sendable {
    private let lines = Mutex<[String]>([])
    func append(_ line: String) { lines.withLock { $0.append(line) } }
    var all: [String] { lines.withLock { $0 } }
}

/// The line parsed as a JSON object (fails the test when it is not one).
func jsonObject(_ line: String) throws -> [String: Any] {
    let parsed = try JSONSerialization.jsonObject(with: Data(line.utf8))
    return try #require(parsed as? [String: Any], "not a JSON object: \(line)")
}

@Suite("JSON log handler")
struct JSONLogHandlerTests {
    private func logger(_ captured: CapturedLines, level: Logger.Level = .info) -> Logger {
        var logger = Logger(label: "pbkv.test") { label in JSONLogHandler(label: label, write: captured.append) }
        logger.logLevel = level
        return logger
    }

    @Test("Each event is one line holding one JSON object with level, label, message and metadata")
    func oneObjectPerLine() throws {
        let captured = CapturedLines()
        var logger = logger(captured)
        logger[metadataKey: "server"] = "127.0.0.1:7001"
        logger.info("role changed", metadata: ["role.to": "primary", "view.num": "3"])
        logger.warning("second")
        let lines = captured.all
        #expect(lines.count == 2)
        #expect(lines.allSatisfy { $0.hasSuffix("}\n") && $0.dropLast().firstIndex(of: "\n") == nil })
        let first = try jsonObject(lines[0])
        #expect(first["level"] as? String == "info")
        #expect(first["label"] as? String == "pbkv.test")
        #expect(first["message"] as? String == "role changed")
        let metadata = try #require(first["metadata"] as? [String: Any])
        #expect(metadata["role.to"] as? String == "primary")
        #expect(metadata["view.num"] as? String == "3")
        #expect(metadata["server"] as? String == "127.0.0.1:7001")
        let second = try jsonObject(lines[1])
        #expect(second["level"] as? String == "warning")
        // The logger's own metadata goes on every line; the event's only on its own.
        #expect((second["metadata"] as? [String: String]) == ["server": "127.0.0.1:7001"])
    }

    @Test("Quotes, backslashes, newlines and control characters are escaped; nested metadata keeps its shape")
    func escapingAndNesting() throws {
        let captured = CapturedLines()
        let logger = logger(captured)
        let nasty = "a \"quoted\" \\ path\nnext line\t\u{01}end ü"
        logger.info("\(nasty)", metadata: ["list": ["x", "y"], "nested": ["inner": "v"], "text": "\(nasty)"])
        let object = try jsonObject(try #require(captured.all.first))
        #expect(object["message"] as? String == nasty)
        let metadata = try #require(object["metadata"] as? [String: Any])
        #expect(metadata["text"] as? String == nasty)
        #expect(metadata["list"] as? [String] == ["x", "y"])
        #expect((metadata["nested"] as? [String: Any])?["inner"] as? String == "v")
    }

    @Test("The time is UTC ISO 8601 with milliseconds, and close to now")
    func timestamp() throws {
        let captured = CapturedLines()
        logger(captured).error("boom")
        let object = try jsonObject(try #require(captured.all.first))
        let time = try #require(object["time"] as? String)
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let date = try #require(formatter.date(from: time), "not ISO 8601: \(time)")
        #expect(abs(date.timeIntervalSinceNow) < 60)
        #expect(time.hasSuffix("Z") && time.count == "2026-12-04T18:02:11.512Z".count)
    }

    @Test("Events below the level are not written")
    func levelFilter() {
        let captured = CapturedLines()
        let logger = logger(captured, level: .warning)
        logger.info("quiet")
        logger.debug("quieter")
        logger.warning("loud")
        #expect(captured.all.count == 1)
        #expect(captured.all.first?.contains("\"loud\"") == true)
    }
}
