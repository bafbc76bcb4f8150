#if PBKV_FUZZ
/// libFuzzer's entry point. The fuzz build (`make fuzz`) compiles this target with
/// `-sanitize=fuzzer,address -parse-as-library -D PBKV_FUZZ`; libFuzzer brings `main`.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    FuzzTarget.run(UnsafeRawBufferPointer(start: start, count: count))
    return 0
}

/// libFuzzer's driver (compiler-rt), declared by hand: a C function of C types only.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ testOneInput: @convention(c) (UnsafeRawPointer, Int) -> CInt
) -> CInt

/// A debug build of SwiftPM links an executable's `main` to `PBKVFuzz_main` (for testable
/// executables), so libFuzzer's own `main` is not used: this hands control to its driver instead.
/// Unused in release builds, where libFuzzer's `main` is.
@_cdecl("PBKVFuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv) { start, count in fuzz(start, count) }
}
#else
import Foundation
import PBKVCore

/// Without libFuzzer (a plain `swift build`): runs the inputs named on the command line (files,
/// or every file of a directory, e.g. `Fuzz/corpus`) once each through the same paths, so that a
/// crashing input can be replayed under a debugger; exits non-zero on a broken invariant (a crash).
@main
enum ReplayInputs {
    static func main() throws {
        let arguments = CommandLine.arguments.dropFirst()
        guard !arguments.isEmpty else {
            print("usage: pbkv-fuzz FILE|DIR... (replays fuzz inputs; `make fuzz` runs the fuzzer itself)")
            exit(2)
        }
        var count = 0
        for path in arguments {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                print("pbkv-fuzz: no such file or directory: \(path)")
                exit(2)
            }
            let files = isDirectory.boolValue
                ? try FileManager.default.contentsOfDirectory(atPath: path).sorted().map { "\(path)/\($0)" } : [path]
            for file in files {
                let input = try Data(contentsOf: URL(fileURLWithPath: file))
                input.withUnsafeBytes { FuzzTarget.run($0) }
                count += 1
            }
        }
        print("pbkv-fuzz: replayed \(count) inputs, no invariant broken")
    }
}
#endif
