#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import PBKVCore
import PBKVWire

/// The default view store: one file, `DIR/view.record`, holding a `pbkv.ViewRecord`.
///
/// A record is written to `view.record.tmp`, fsynced, renamed over `view.record`, and the
/// directory is fsynced, so after a crash the file holds either the old or the new record,
/// whole. The directory is locked (`flock` on `DIR/lock`) for the life of the store so two view
/// services never share it. A file that cannot be decoded is an error, never "no record".
public actor FileViewStore: ViewStore {
    public nonisolated let location: String
    private let directory: String
    private var recordPath: String { directory + "/view.record" }
    private var temporaryPath: String { directory + "/view.record.tmp" }
    /// The record this store last read or wrote: what `compareAndStore` expects to find.
    private var current: ViewRecord?
    private var lockDescriptor: Int32

    /// Opens (creating it if absent) and locks `directory`.
    public init(directory: String) throws(ViewStoreError) {
        self.directory = directory
        self.location = directory + "/view.record"
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw .unavailable(location: directory, reason: "cannot create the directory: \(Self.errorText())")
        }
        let fd = open(directory + "/lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .unavailable(location: directory, reason: "cannot open its lock file: \(Self.errorText())") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw .unavailable(
                location: directory, reason: "another view service is using this data directory (its lock is held); "
                    + "give each view service its own --data-dir")
        }
        self.lockDescriptor = fd
    }

    deinit { close(lockDescriptor) }

    public func load() async throws(ViewStoreError) -> ViewRecord? {
        let fd = open(recordPath, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT {
                current = nil
                return nil
            }
            throw .unavailable(location: location, reason: "cannot open: \(Self.errorText())")
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .unavailable(location: location, reason: "cannot read: \(Self.errorText())")
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
            if bytes.count > 1 << 20 { throw .unreadable(location: location, reason: "larger than 1 MiB: not a view record") }
        }
        do {
            let record = try EnvelopeCodec.decodeViewRecord(bytes)
            current = record
            return record
        } catch {
            throw .unreadable(location: location, reason: "\(bytes.count) bytes that are not a pbkv.ViewRecord: \(error)")
        }
    }

    public func compareAndStore(_ record: ViewRecord, expected: ViewRecord?) async throws(ViewStoreError) {
        guard current == expected else { throw .conflict(location: location) }
        let bytes = EnvelopeCodec.encode(record)
        let fd = open(temporaryPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .unavailable(location: location, reason: "cannot create \(temporaryPath): \(Self.errorText())") }
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + written, $0.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                let reason = Self.errorText()
                close(fd)
                throw .unavailable(location: location, reason: "cannot write \(temporaryPath): \(reason)")
            }
            written += n
        }
        guard fsync(fd) == 0 else {
            let reason = Self.errorText()
            close(fd)
            throw .unavailable(location: location, reason: "fsync of \(temporaryPath) failed: \(reason)")
        }
        close(fd)
        guard rename(temporaryPath, recordPath) == 0 else {
            throw .unavailable(location: location, reason: "cannot rename \(temporaryPath) over it: \(Self.errorText())")
        }
        // The rename is durable only once the directory is.
        let dirFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFD >= 0 {
            defer { close(dirFD) }
            guard fsync(dirFD) == 0 else {
                throw .unavailable(location: location, reason: "fsync of directory \(directory) failed: \(Self.errorText())")
            }
        }
        current = record
    }

    private static func errorText() -> String { String(cString: strerror(errno)) }
}
