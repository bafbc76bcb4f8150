/// Picks how long a call to the backup may go unanswered before it is retried, from the round
/// trips measured so far: TCP's retransmission timeout (RFC 6298, after Jacobson and Karels).
///
/// - a sample R updates the smoothed round trip and its variation (α = 1/8, β = 1/4; the first
///   sample sets SRTT = R, RTTVAR = R/2); the timeout is SRTT + max(G, 4 × RTTVAR), G = 1 ms;
/// - it is never below `minimum`: below a few tens of milliseconds, scheduling on a busy
///   machine looks like loss, and a spurious resend costs more than the wait;
/// - before the first sample it is `initial`;
/// - each timeout doubles it (exponential backoff) until a fresh sample arrives; calls already
///   in flight when it backed off do not double it again when they time out too;
/// - it never exceeds `maximum`.
///
/// Sizes. A call's round trip grows with what it carries and with what is queued ahead of it
/// on the link (a transfer keeps several 1 MiB chunks in flight), so estimates are kept per
/// `referenceBytes` of load: a call that finds `bytes` on the link (itself included) is
/// sampled as `rtt × referenceBytes / bytes` and given `timeout × bytes / referenceBytes`,
/// never less than one reference unit. Small calls (a forward of a few operations) therefore
/// use the plain estimate; a 1 MiB chunk gets 16 reference timeouts. Assuming the whole round
/// trip grows with size overestimates large calls, which is the safe side: a spurious timeout
/// of an accepted transfer chunk restarts the transfer.
///
/// Pure: samples come in as `Duration`s measured by the caller; no clock inside.
public struct RoundTripEstimator: Sendable, Hashable {
    /// Calls up to this many bytes on the link count as one reference unit.
    public static let defaultReferenceBytes = 64 * 1024
    /// Clock granularity G of RFC 6298: the least margin above the smoothed round trip.
    public static let granularity = Duration.milliseconds(1)
    /// Doublings beyond this change nothing that `maximum` does not already cap.
    static let maxBackoffs = 16

    /// The timeout of one reference unit before any round trip was measured.
    public let initial: Duration
    /// The least timeout of one reference unit.
    public let minimum: Duration
    /// The most any call waits, whatever its size and however often it backed off.
    public let maximum: Duration
    public let referenceBytes: Int
    /// Smoothed round trip of one reference unit (SRTT); nil before the first sample.
    public private(set) var smoothed: Duration?
    /// Smoothed mean deviation of the round trip (RTTVAR).
    public private(set) var variation: Duration = .zero
    /// Timeouts since the last fresh sample; each doubles the timeout.
    public private(set) var backoffs = 0

    public init(initial: Duration, minimum: Duration, maximum: Duration, referenceBytes: Int = defaultReferenceBytes) {
        precondition(minimum > .zero && minimum <= maximum && referenceBytes > 0)
        self.initial = initial
        self.minimum = minimum
        self.maximum = maximum
        self.referenceBytes = referenceBytes
    }

    /// The timeout of one reference unit, without backoff.
    public var baseTimeout: Duration {
        guard let smoothed else { return max(minimum, min(initial, maximum)) }
        let rto = smoothed + max(Self.granularity, variation * 4)
        return max(minimum, min(rto, maximum))
    }

    /// The timeout of a call that finds `bytes` on the link, itself included.
    public func timeout(forBytes bytes: Int) -> Duration {
        let scaled = baseTimeout * units(bytes) * Double(1 << backoffs)
        return min(scaled, maximum)
    }

    /// A reply came `rtt` after the call was sent with `bytes` on the link. Only for calls sent
    /// once (Karn's rule): a resend may be answered from work the first attempt already did.
    public mutating func observe(_ rtt: Duration, bytes: Int) {
        let sample = rtt / units(bytes)
        if let smoothed {
            let deviation = smoothed > sample ? smoothed - sample : sample - smoothed
            variation = variation * 0.75 + deviation * 0.25
            self.smoothed = smoothed * 0.875 + sample * 0.125
        } else {
            smoothed = sample
            variation = sample / 2
        }
        backoffs = 0
    }

    /// A call sent when `backoffs` was `backoffsAtSend` got no reply within its timeout: double
    /// the timeout, once per round of calls (several calls in flight that all time out count once).
    public mutating func timedOut(backoffsAtSend: Int) {
        backoffs = max(backoffs, min(backoffsAtSend + 1, Self.maxBackoffs))
    }

    /// Forgets the backoff (a new peer: its silence says nothing about this one); keeps the samples.
    public mutating func resetBackoff() {
        backoffs = 0
    }

    private func units(_ bytes: Int) -> Double {
        max(1, Double(bytes) / Double(referenceBytes))
    }
}
