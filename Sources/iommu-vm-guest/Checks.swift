#if canImport(Glibc)
    import Glibc
#endif

/// The scenario's scorecard: every check prints one line as it is decided, and the last line
/// is the `N passed, N failed` summary the host greps for (Tests/vm/run).
final class Checks {
    private(set) var passed = 0
    private(set) var failed = 0

    /// Records one check. `detail` says what was compared, so a passing log is evidence too.
    @discardableResult
    func check(_ name: String, _ condition: Bool, _ detail: @autoclosure () -> String = "") -> Bool {
        if condition { passed += 1 } else { failed += 1 }
        let text = detail()
        say("\(condition ? "PASS" : "FAIL") \(name)" + (text.isEmpty ? "" : ": \(text)"))
        return condition
    }

    /// A check that failed because a step threw before it could be decided.
    func fail(_ name: String, _ error: any Error) {
        check(name, false, "\(error)")
    }

    var summary: String { "\(passed) passed, \(failed) failed" }
}

/// One line on stdout, written at once (stdout may be the serial console, shared with the kernel
/// and the daemon, so a line must not be split across writes).
func say(_ line: String) {
    var bytes = Array((line + "\n").utf8)
    var offset = 0
    while offset < bytes.count {
        let written = bytes.withUnsafeMutableBytes { write(1, $0.baseAddress! + offset, $0.count - offset) }
        if written < 0 && errno == EINTR { continue }
        guard written > 0 else { return }
        offset += written
    }
}

func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

func hex(_ range: (first: UInt64, last: UInt64)) -> String { "\(hex(range.first))-\(hex(range.last))" }

func hex(_ ranges: [(first: UInt64, last: UInt64)]) -> String {
    "[" + ranges.map { hex($0) }.joined(separator: ", ") + "]"
}
