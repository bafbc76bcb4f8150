import NIOCore
import PBKVEtcd
import Testing

/// A Prometheus text scrape, parsed: every sample with its name, labels and value.
struct Scrape {
    struct Sample {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    let samples: [Sample]
    let text: String

    /// GETs `url` (http://HOST:PORT/path); the status code and the parsed body.
    static func get(_ url: String) async throws -> (status: UInt, scrape: Scrape) {
        let rest = try #require(url.hasPrefix("http://") ? url.dropFirst("http://".count) : nil)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let colon = try #require(rest[..<slash].lastIndex(of: ":"))
        let port = try #require(Int(rest[rest.index(after: colon)..<slash]))
        let response = try await HTTPExchange.perform(
            .GET, host: String(rest[..<colon]), port: port, path: slash == rest.endIndex ? "/" : String(rest[slash...]),
            maximumBodyBytes: 16 << 20, deadline: .now() + .seconds(10))
        return (response.status.code, Scrape(text: String(buffer: response.body)))
    }

    init(text: String) {
        self.text = text
        var samples: [Sample] = []
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            let series = line[..<space]
            var labels: [String: String] = [:]
            var name = String(series)
            if let brace = series.firstIndex(of: "{") {
                name = String(series[..<brace])
                let inner = series[series.index(after: brace)..<(series.lastIndex(of: "}") ?? series.endIndex)]
                for pair in inner.split(separator: ",") {
                    let parts = pair.split(separator: "=", maxSplits: 1)
                    guard parts.count == 2 else { continue }
                    labels[String(parts[0])] = String(parts[1].dropFirst().dropLast())
                }
            }
            samples.append(Sample(name: name, labels: labels, value: value))
        }
        self.samples = samples
    }

    /// The value of the series `name` whose labels include `labels`; nil when there is none.
    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples.first { sample in sample.name == name && labels.allSatisfy { sample.labels[$0.key] == $0.value } }?.value
    }
}
