import PBKVCore
import PBKVTestSupport
import Testing

@Suite("Progress display text")
struct ProgressReporterTests {
    @Test("On a terminal every sample redraws one bar in place, and finishing erases it")
    func barRedrawsInPlace() {
        var reporter = ProgressReporter(title: "fill 10 keys", style: .bar)
        #expect(reporter.update(fraction: 0, detail: "0/10 keys", elapsed: .zero)
            == "\rfill 10 keys [....................]   0%  0/10 keys  0.0 s\u{1B}[K")
        #expect(reporter.update(fraction: 0.5, detail: "5/10 keys", elapsed: .milliseconds(1_560))
            == "\rfill 10 keys [##########..........]  50%  5/10 keys  1.5 s\u{1B}[K")
        // Redrawn on every sample, even without change; over 100 % stays a full bar.
        #expect(reporter.update(fraction: 0.5, detail: "5/10 keys", elapsed: .milliseconds(1_700))
            == "\rfill 10 keys [##########..........]  50%  5/10 keys  1.7 s\u{1B}[K")
        #expect(reporter.update(fraction: 1.2, detail: "12/10 keys", elapsed: .seconds(2))
            == "\rfill 10 keys [####################] 100%  12/10 keys  2.0 s\u{1B}[K")
        #expect(reporter.finish(detail: "10 keys", elapsed: .seconds(2)) == "\r\u{1B}[K")
    }

    @Test("On a terminal, work of unknown size shows its figures without a bar")
    func barWithoutFraction() {
        var reporter = ProgressReporter(title: "transfer", style: .bar)
        #expect(reporter.update(fraction: nil, detail: "12 MB sent", elapsed: .milliseconds(250))
            == "\rtransfer  12 MB sent  0.2 s\u{1B}[K")
    }

    @Test("Otherwise a line per 10 % reached, at most one per interval, and a last line")
    func linesAreFew() {
        var reporter = ProgressReporter(title: "bench", style: .lines)
        var written: [String] = []
        for (tenths, fraction) in [(2, 0.02), (10, 0.1), (15, 0.15), (30, 0.35), (40, 0.36), (45, 0.41), (90, 0.99), (95, 1.0)] {
            if let text = reporter.update(fraction: fraction, detail: "\(Int(fraction * 100)) ops", elapsed: .milliseconds(tenths * 100)) {
                written.append(text)
            }
        }
        written.append(reporter.finish(detail: "100 ops", elapsed: .milliseconds(9_600)))
        #expect(written == [
            "bench:  10%  10 ops  1.0 s\n",
            // 0.35 at 3.0 s is within 3 s of the last line; 0.36 at 4.0 s is not.
            "bench:  36%  36 ops  4.0 s\n",
            // 0.99 at 9.0 s reached the 90 % step; 1.0 is left to the last line.
            "bench:  99%  99 ops  9.0 s\n",
            "bench: done  100 ops  9.6 s\n",
        ])
    }

    @Test("Otherwise, work of unknown size prints a line every interval")
    func linesWithoutFraction() {
        var reporter = ProgressReporter(title: "transfer", style: .lines)
        reporter.lineInterval = .seconds(2)
        let written = (0...10).compactMap { second in
            reporter.update(fraction: nil, detail: "\(second) MB", elapsed: .seconds(second))
        }
        #expect(written == [
            "transfer: 0 MB  0.0 s\n", "transfer: 2 MB  2.0 s\n", "transfer: 4 MB  4.0 s\n",
            "transfer: 6 MB  6.0 s\n", "transfer: 8 MB  8.0 s\n", "transfer: 10 MB  10.0 s\n",
        ])
    }
}
