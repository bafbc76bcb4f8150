import PBKVCore
import PBKVServer
import Testing

private let reference = RoundTripEstimator.defaultReferenceBytes

private func estimator() -> RoundTripEstimator {
    RoundTripEstimator(initial: .milliseconds(250), minimum: .milliseconds(30), maximum: .seconds(5))
}

/// Equal up to the rounding of `Duration * Double`.
private func close(_ a: Duration, _ b: Duration) -> Bool {
    (a > b ? a - b : b - a) < .microseconds(1)
}

@Suite("Round-trip estimator")
struct RoundTripEstimatorTests {
    @Test("Before any sample: the initial timeout, scaled by size, capped")
    func initial() {
        let e = estimator()
        #expect(e.timeout(forBytes: 100) == .milliseconds(250))
        #expect(e.timeout(forBytes: reference) == .milliseconds(250))
        #expect(close(e.timeout(forBytes: 16 * reference), .seconds(4)), "a 1 MiB chunk gets 16 reference units")
        #expect(e.timeout(forBytes: 64 * reference) == .seconds(5), "capped at the maximum")
    }

    @Test("The first sample R gives SRTT + 4 RTTVAR = R + 4 R/2 = 3 R")
    func firstSample() {
        var e = estimator()
        e.observe(.milliseconds(40), bytes: 100)
        #expect(e.smoothed == .milliseconds(40))
        #expect(e.variation == .milliseconds(20))
        #expect(e.timeout(forBytes: 100) == .milliseconds(120))
    }

    @Test("Steady fast round trips bring the timeout down to the floor, not below")
    func floor() {
        var e = estimator()
        for _ in 0..<100 { e.observe(.milliseconds(2), bytes: 100) }
        #expect(e.timeout(forBytes: 100) == .milliseconds(30))
        #expect(e.timeout(forBytes: 2 * reference) == .milliseconds(60))
    }

    @Test("Jittery round trips: the timeout covers the slow ones, far below the initial value")
    func jitter() {
        var e = estimator()
        for i in 0..<50 { e.observe(.milliseconds(i % 2 == 0 ? 10 : 50), bytes: 100) }
        let timeout = e.timeout(forBytes: 100)
        #expect(timeout > .milliseconds(50) && timeout < .milliseconds(150), "\(timeout)")
    }

    @Test("A slower path moves the estimate up within a few samples")
    func adapts() {
        var e = estimator()
        for _ in 0..<20 { e.observe(.milliseconds(5), bytes: 100) }
        #expect(e.timeout(forBytes: 100) == .milliseconds(30))
        for _ in 0..<5 { e.observe(.milliseconds(100), bytes: 100) }
        #expect(e.timeout(forBytes: 100) > .milliseconds(100))
    }

    @Test("Samples are per reference unit: a 1 MiB round trip of 640 ms is 40 ms per 64 KiB")
    func perByte() {
        var e = estimator()
        e.observe(.milliseconds(640), bytes: 16 * reference)
        #expect(close(e.smoothed!, .milliseconds(40)))
        #expect(close(e.timeout(forBytes: 100), .milliseconds(120)))
        #expect(close(e.timeout(forBytes: 8 * reference), .milliseconds(960)))
    }

    @Test("A timeout doubles the timeout once per round; a fresh sample ends the backoff")
    func backoff() {
        var e = estimator()
        e.observe(.milliseconds(40), bytes: 100)
        e.timedOut(backoffsAtSend: 0)
        #expect(e.timeout(forBytes: 100) == .milliseconds(240))
        e.timedOut(backoffsAtSend: 0)  // another call of the same round
        #expect(e.timeout(forBytes: 100) == .milliseconds(240))
        e.timedOut(backoffsAtSend: 1)  // the resend timed out too
        #expect(e.timeout(forBytes: 100) == .milliseconds(480))
        for n in 2..<40 { e.timedOut(backoffsAtSend: min(n, e.backoffs)) }
        #expect(e.timeout(forBytes: 100) == .seconds(5), "capped at the maximum")
        e.observe(.milliseconds(40), bytes: 100)
        #expect(e.backoffs == 0)
        #expect(e.timeout(forBytes: 100) < .milliseconds(120))
    }

    @Test("resetBackoff forgets the backoff, keeps the samples")
    func resetBackoff() {
        var e = estimator()
        e.observe(.milliseconds(40), bytes: 100)
        e.timedOut(backoffsAtSend: 0)
        e.resetBackoff()
        #expect(e.timeout(forBytes: 100) == .milliseconds(120))
    }
}
