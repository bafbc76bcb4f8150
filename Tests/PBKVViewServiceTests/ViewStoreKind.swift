import Foundation
import Testing
import PBKVViewService

/// The view stores the rules' tests run on.
enum ViewStoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case memory
    case file

    var testDescription: String { rawValue }

    func makeStore() async throws -> any ViewStore {
        switch self {
        case .memory: InMemoryViewStore()
        case .file: try FileViewStore(directory: temporaryDirectory(prefix: "pbkv-vs-store"))
        }
    }
}

/// A fresh directory under the system's temporary directory.
func temporaryDirectory(prefix: String) -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)").path
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}
