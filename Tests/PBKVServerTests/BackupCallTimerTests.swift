import PBKVTestSupport
import PBKVWire
import Testing

@testable import PBKVCore
@testable import PBKVServer

private let reference = RoundTripEstimator.defaultReferenceBytes

/// Equal up to the rounding of `Duration * Double`.
private func close(_ a: Duration, _ b: Duration) -> Bool {
    (a > b ? a - b : b - a) < .microseconds(1)
}

private func timer() -> BackupCallTimer {
    BackupCallTimer(initial: .milliseconds(250), minimum: .milliseconds(30), maximum: .seconds(5))
}

private func forward(_ firstIndex: UInt64) -> ForwardArgs {
    let op = Operation(kind: .put, key: "k", value: "v", id: RequestID(clientID: 1, seq: firstIndex + 1))
    return ForwardArgs(viewnum: 3, primary: "p", firstIndex: firstIndex, ops: [op])
}

private func chunk(view: UInt64 = 3, id: UInt64 = 9, _ index: UInt32, valueBytes: Int = 10) -> TransferChunk {
    TransferChunk(
        viewnum: view, primary: "p", transferID: id, chunkIndex: index, last: false, nextIndex: 0,
        entries: [Entry(key: "k\(index)", value: String(repeating: "x", count: valueBytes))], duplicates: [])
}

@Suite("Backup call timer")
struct BackupCallTimerTests {
    @Test("A forward's reply is a sample: the next forward's timeout follows it")
    func forwardSample() {
        var t = timer()
        var clock = FakeClock()
        let first = t.willSendForward(forward(0), at: clock.now)
        #expect(first.timeout == .milliseconds(250) && first.sampled)
        clock.advance(by: .milliseconds(40))
        t.didComplete(first, replied: true, at: clock.now)
        #expect(t.estimator.smoothed == .milliseconds(40))
        #expect(t.willSendForward(forward(1), at: clock.now).timeout == .milliseconds(120))
        #expect(t.willSendTransfer(chunk(0), to: "b", at: clock.now).timeout == .milliseconds(120), "one estimate for the link")
    }

    @Test("Karn's rule: a resend after a timeout is not sampled and keeps the backoff until a fresh reply")
    func karn() {
        var t = timer()
        var clock = FakeClock()
        t.didComplete(t.willSendForward(forward(0), at: clock.now), replied: true, at: clock.now + .milliseconds(40))
        clock.advance(by: .milliseconds(100))
        let lost = t.willSendForward(forward(1), at: clock.now)
        clock.advance(by: lost.timeout)
        t.didComplete(lost, replied: false, at: clock.now)
        #expect(t.estimator.backoffs == 1)

        clock.advance(by: .milliseconds(20))
        let resend = t.willSendForward(forward(1), at: clock.now)
        #expect(!resend.sampled)
        #expect(resend.timeout == .milliseconds(240), "backed off")
        clock.advance(by: .milliseconds(1))  // the backup had it already: a quick duplicate answer
        t.didComplete(resend, replied: true, at: clock.now)
        #expect(t.estimator.smoothed == .milliseconds(40), "not sampled")
        #expect(t.estimator.backoffs == 1, "still backed off")

        let fresh = t.willSendForward(forward(2), at: clock.now)
        #expect(fresh.sampled && fresh.timeout == .milliseconds(240))
        clock.advance(by: .milliseconds(40))
        t.didComplete(fresh, replied: true, at: clock.now)
        #expect(t.estimator.backoffs == 0)
        #expect(t.willSendForward(forward(3), at: clock.now).timeout < .milliseconds(120))
    }

    @Test("After a transfer whose only chunk was re-sent, the forwards' replies end the backoff for the next transfer")
    func oneEstimateForTheLink() {
        var t = timer()
        var clock = FakeClock()
        let lost = t.willSendTransfer(chunk(0), to: "b", at: clock.now)
        clock.advance(by: lost.timeout)
        t.didComplete(lost, replied: false, at: clock.now)
        let resend = t.willSendTransfer(chunk(0), to: "b", at: clock.now)
        clock.advance(by: .milliseconds(2))
        t.didComplete(resend, replied: true, at: clock.now)
        _ = t.transferCompleted(to: "b", at: clock.now)
        #expect(t.estimator.backoffs == 1, "Karn: the resend's reply is no sample")
        for index: UInt64 in 0..<10 {
            let call = t.willSendForward(forward(index), at: clock.now)
            clock.advance(by: .milliseconds(2))
            t.didComplete(call, replied: true, at: clock.now)
        }
        #expect(t.willSendTransfer(chunk(view: 4, id: 12, 0), to: "b", at: clock.now).timeout == .milliseconds(30))
    }

    @Test("A quick failure (nothing listening) does not back off")
    func quickFailure() {
        var t = timer()
        let call = t.willSendForward(forward(0), at: .zero)
        t.didComplete(call, replied: false, at: .milliseconds(1))
        #expect(t.estimator.backoffs == 0)
        #expect(t.willSendForward(forward(0), at: .milliseconds(21)).timeout == .milliseconds(250))
    }

    @Test("A transfer is timed from its first chunk 0, resends included")
    func transferSummary() {
        var t = timer()
        var clock = FakeClock()
        let first = t.willSendTransfer(chunk(0), to: "b", at: clock.now)
        clock.advance(by: first.timeout)
        t.didComplete(first, replied: false, at: clock.now)
        clock.advance(by: .milliseconds(20))
        let resend = t.willSendTransfer(chunk(0), to: "b", at: clock.now)
        #expect(resend.timeout == .milliseconds(500) && !resend.sampled)
        clock.advance(by: .milliseconds(10))
        t.didComplete(resend, replied: true, at: clock.now)
        let one = t.willSendTransfer(chunk(1), to: "b", at: clock.now)
        let two = t.willSendTransfer(chunk(2), to: "b", at: clock.now)
        clock.advance(by: .milliseconds(20))
        t.didComplete(one, replied: true, at: clock.now)
        t.didComplete(two, replied: true, at: clock.now)
        #expect(t.estimator.backoffs == 0)
        let summary = t.transferCompleted(to: "b", at: clock.now)
        #expect(summary == BackupCallTimer.TransferSummary(elapsed: .milliseconds(300), chunksSent: 4, resends: 1, unanswered: 1))
        #expect(t.transferCompleted(to: "b", at: clock.now) == nil, "reported once")
    }

    @Test("A restarted transfer (fresh snapshot) counts its repeated chunks as resends; a new view starts a new record")
    func restartAndNewView() {
        var t = timer()
        var clock = FakeClock()
        let zero = t.willSendTransfer(chunk(0), to: "b", at: clock.now)
        clock.advance(by: .milliseconds(10))
        t.didComplete(zero, replied: true, at: clock.now)
        let one = t.willSendTransfer(chunk(1), to: "b", at: clock.now)
        let two = t.willSendTransfer(chunk(2), to: "b", at: clock.now)
        clock.advance(by: .milliseconds(10))
        t.didComplete(one, replied: false, at: clock.now)  // refused: start over
        t.didComplete(two, replied: false, at: clock.now)
        for index: UInt32 in 0...3 {
            let call = t.willSendTransfer(chunk(id: 10, index), to: "b", at: clock.now)
            t.didComplete(call, replied: true, at: clock.now + .milliseconds(5))
        }
        clock.advance(by: .milliseconds(5))
        #expect(t.transferCompleted(to: "b", at: clock.now) == .init(elapsed: .milliseconds(25), chunksSent: 7, resends: 3, unanswered: 2))

        _ = t.willSendTransfer(chunk(view: 3, id: 11, 0), to: "b", at: clock.now)
        clock.advance(by: .milliseconds(100))
        _ = t.willSendTransfer(chunk(view: 4, id: 12, 0), to: "b", at: clock.now)
        clock.advance(by: .milliseconds(7))
        #expect(t.transferCompleted(to: "b", at: clock.now)?.elapsed == .milliseconds(7), "view 4's transfer is another one")
        #expect(t.transferCompleted(to: "c", at: clock.now) == nil)
    }

    @Test("A chunk's timeout counts the bytes already on the link ahead of it")
    func loadAhead() {
        var t = timer()
        let big = 4 * reference
        let one = t.willSendTransfer(chunk(1, valueBytes: big), to: "b", at: .zero)
        let two = t.willSendTransfer(chunk(2, valueBytes: big), to: "b", at: .zero)
        #expect(two.load == one.bytes + two.bytes)
        #expect(two.timeout > one.timeout)
        t.didComplete(one, replied: true, at: .milliseconds(100))
        t.didComplete(two, replied: true, at: .milliseconds(200))
        #expect(t.bytesInFlight == 0)
        // 100 ms for 4 reference units, then 200 ms for 8: both about 25 ms per 64 KiB.
        let perUnit = t.estimator.smoothed!
        #expect(perUnit > .milliseconds(24) && perUnit <= .milliseconds(25), "\(perUnit)")
    }

    @Test("A new backup forgets the backoff")
    func newBackup() {
        var t = timer()
        let call = t.willSendForward(forward(0), at: .zero)
        t.didComplete(call, replied: false, at: call.timeout)
        #expect(t.estimator.backoffs == 1)
        t.backupChanged()
        #expect(t.estimator.backoffs == 0)
        #expect(t.willSendForward(forward(0), at: call.timeout).sampled, "a call to the new backup is no resend")
    }
}
