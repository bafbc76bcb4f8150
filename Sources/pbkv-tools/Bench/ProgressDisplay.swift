import Foundation
import PBKVCore
import PBKVTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Shows a `ProgressReporter` on standard error while some work runs: a bar when stderr is a
/// terminal, a few plain lines otherwise. Standard output (results, JSON) is never touched.
struct ProgressDisplay: Sendable {
    /// What the work has done so far: a fraction (nil when unknown) and its figures as text.
    typealias Sample = @Sendable () -> (fraction: Double?, detail: String)

    /// nil: show nothing (`--no-progress`).
    let style: ProgressReporter.Style?

    init(enabled: Bool) {
        style = enabled ? (isatty(STDERR_FILENO) != 0 ? .bar : .lines) : nil
    }

    /// Runs `body`, sampling its progress every 0.2 s (a terminal) or every second; when it
    /// ends, erases the bar or prints a last line (nothing more when it threw).
    func run<T>(
        _ title: String, isolation: isolated (any Actor)? = #isolation, sample: @escaping Sample,
        _ body: () async throws -> T
    ) async throws -> T {
        guard let style else { return try await body() }
        let start = ContinuousClock.now
        let ticker = Task {
            var reporter = ProgressReporter(title: title, style: style)
            while !Task.isCancelled {
                let (fraction, detail) = sample()
                if let text = reporter.update(fraction: fraction, detail: detail, elapsed: ContinuousClock.now - start) { Self.write(text) }
                try? await Task.sleep(for: style == .bar ? .milliseconds(200) : .seconds(1))
            }
            return reporter
        }
        let result: Result<T, any Error>
        do { result = .success(try await body()) } catch { result = .failure(error) }
        ticker.cancel()
        let reporter = await ticker.value
        switch result {
        case .success: Self.write(reporter.finish(detail: sample().detail, elapsed: ContinuousClock.now - start))
        case .failure: if style == .bar { Self.write(reporter.finish(detail: "", elapsed: .zero)) }  // erase the bar
        }
        return try result.get()
    }

    private static func write(_ text: String) {
        FileHandle.standardError.write(Data(text.utf8))
    }
}
