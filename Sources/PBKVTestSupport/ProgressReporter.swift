/// The text of a progress display for long work (a benchmark cell, a fill, a state transfer):
/// a bar redrawn in place on a terminal, or a few plain lines otherwise (logs, pipes).
///
/// Pure: the caller passes how far the work is and how long it has run, and writes the
/// returned text to standard error; nothing here reads a clock or touches a file.
///
/// ```
/// bar:    "\rfill 1000000 keys [##########..........]  50%  500000/1000000 keys  12.0 s\e[K"
/// lines:  "fill 1000000 keys: 50%  500000/1000000 keys  12.0 s\n"
/// ```
public struct ProgressReporter: Sendable {
    /// How progress is shown.
    public enum Style: Sendable, Equatable {
        /// One line redrawn with a carriage return (stderr is a terminal); erased when done.
        case bar
        /// Whole lines, only a few: a line per `lineStep` of progress, at most one per `lineInterval`.
        case lines
    }

    public let title: String
    public let style: Style
    /// Characters of the bar between its brackets.
    public var barWidth = 20
    /// Lines style: a line once the fraction reached another multiple of this (10 %) …
    public var lineStep = 0.1
    /// … and at least this long after the previous line (or, when no fraction is known, every
    /// this long).
    public var lineInterval: Duration = .seconds(3)

    private var stepsShown = 0
    private var lastLineAt: Duration?

    public init(title: String, style: Style) {
        self.title = title
        self.style = style
    }

    /// The text to write for this sample, or nil when there is nothing new to show.
    /// - Parameters:
    ///   - fraction: how much of the work is done, 0…1 (clamped); nil when unknown.
    ///   - detail: the figures behind it, e.g. "500000/1000000 keys".
    ///   - elapsed: time since the work started.
    public mutating func update(fraction: Double?, detail: String, elapsed: Duration) -> String? {
        switch style {
        case .bar:
            return "\r" + barLine(fraction: fraction, detail: detail, elapsed: elapsed) + "\u{1B}[K"
        case .lines:
            if let last = lastLineAt, elapsed - last < lineInterval { return nil }
            if let fraction {
                let steps = Int((Self.clamp(fraction) / lineStep).rounded(.down))
                guard steps > stepsShown, Self.clamp(fraction) < 1 else { return nil }
                stepsShown = steps
            }
            lastLineAt = elapsed
            return "\(title): " + figures(fraction: fraction, detail: detail, elapsed: elapsed) + "\n"
        }
    }

    /// The text to write once the work is over: the bar erased (the command prints its result
    /// next), or a last line.
    public func finish(detail: String, elapsed: Duration) -> String {
        switch style {
        case .bar: "\r\u{1B}[K"
        case .lines: "\(title): done  " + figures(fraction: nil, detail: detail, elapsed: elapsed) + "\n"
        }
    }

    private func barLine(fraction: Double?, detail: String, elapsed: Duration) -> String {
        guard let fraction else { return "\(title)  " + figures(fraction: nil, detail: detail, elapsed: elapsed) }
        let filled = Int((Self.clamp(fraction) * Double(barWidth)).rounded(.down))
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: barWidth - filled)
        return "\(title) [\(bar)] " + figures(fraction: fraction, detail: detail, elapsed: elapsed)
    }

    /// "` 50%  DETAIL  12.0 s`" (the percentage only when known).
    private func figures(fraction: Double?, detail: String, elapsed: Duration) -> String {
        var parts: [String] = []
        if let fraction {
            let percent = String(Int((Self.clamp(fraction) * 100).rounded(.down)))
            parts.append(String(repeating: " ", count: max(0, 3 - percent.count)) + percent + "%")
        }
        if !detail.isEmpty { parts.append(detail) }
        parts.append(Self.seconds(elapsed))
        return parts.joined(separator: "  ")
    }

    private static func clamp(_ fraction: Double) -> Double {
        fraction.isNaN ? 0 : min(1, max(0, fraction))
    }

    /// "12.0 s": tenths of a second, rounded down.
    private static func seconds(_ duration: Duration) -> String {
        let tenths = max(0, duration.components.seconds * 10 + duration.components.attoseconds / 100_000_000_000_000_000)
        return "\(tenths / 10).\(tenths % 10) s"
    }
}
