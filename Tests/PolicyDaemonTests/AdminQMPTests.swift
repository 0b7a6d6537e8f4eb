import Foundation
import Glibc
import Testing

/// The admin socket against the real `qemu.qmp` client: `Tests/admin/test_admin.py` starts the
/// built daemon, drives every command of docs/ADMIN.md with `QMPClient` (and `qmp-shell`), and
/// prints one line per check. The checks that run a process as uid 65534 need root; the script
/// skips them without root and says so.
struct AdminQMPTests {
    @Test(.enabled(if: AdminScript.unavailable == nil, "\(AdminScript.unavailable ?? "")"))
    func theAdminSocketPassesTheQemuQmpIntegrationScript() throws {
        let outcome = try AdminScript.run()
        let transcript = outcome.output
        #expect(outcome.status == 0, "test_admin.py exited with \(outcome.status):\n\(transcript)")
        let summary = transcript.split(separator: "\n").filter {
            $0.hasPrefix("skip") || $0.contains(" passed, ")
        }
        print(summary.joined(separator: "\n"))
        if getuid() != 0 {
            print("AdminQMPTests: not root, so test_admin.py skipped its uid 65534 (setpriv) checks")
        }
    }
}

enum AdminScript {
    /// The repository's root, three levels above this file.
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let script = root.appendingPathComponent("Tests/admin/test_admin.py").path
    static let python = findOnPath("python3")
    /// How long the script may run before it is interrupted (it takes about 15 s).
    static let timeout: TimeInterval = 300

    /// Why the test cannot run here, or nil.
    static let unavailable: String? = {
        guard let python else { return "python3 is not installed: the admin socket's QMP script is not run" }
        guard let check = try? runProcess(python, ["-c", "import qemu.qmp, prometheus_client"]), check.status == 0
        else {
            return "the Python modules qemu.qmp and prometheus_client are not both installed "
                + "(pip install qemu.qmp prometheus_client): the admin socket's QMP script is not run"
        }
        return nil
    }()

    static func findOnPath(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let directories = path.split(separator: ":").map(String.init) + ["/usr/local/bin", "/usr/bin", "/bin"]
        return directories.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    struct Outcome {
        var status: Int32
        /// stdout, then stderr.
        var output: String
    }

    /// Runs the script on the built binaries. A script that overruns `timeout` gets SIGINT (so
    /// it stops its daemon and tenants), then SIGKILL.
    static func run() throws -> Outcome {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python!)
        process.arguments = [
            script, DaemonProcess.binary("iommu-policyd"), DaemonProcess.binary("iommu-policyctl"),
        ]
        process.currentDirectoryURL = root
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        let finished = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in finished.signal() }
        try process.run()
        let drained = DispatchGroup()
        nonisolated(unsafe) var stdout = Data()
        nonisolated(unsafe) var stderr = Data()
        DispatchQueue.global().async(group: drained) { stdout = out.fileHandleForReading.readDataToEndOfFile() }
        DispatchQueue.global().async(group: drained) { stderr = err.fileHandleForReading.readDataToEndOfFile() }
        var overran = false
        if finished.wait(timeout: .now() + timeout) == .timedOut {
            overran = true
            kill(process.processIdentifier, SIGINT)
            if finished.wait(timeout: .now() + 30) == .timedOut {
                kill(process.processIdentifier, SIGKILL)
                finished.wait()
            }
        }
        drained.wait()
        process.waitUntilExit()
        var outcome = Outcome(
            status: process.terminationStatus,
            output: String(decoding: stdout, as: UTF8.self) + String(decoding: stderr, as: UTF8.self))
        if overran {
            outcome.status = outcome.status == 0 ? -1 : outcome.status
            outcome.output += "\ntest_admin.py did not finish within \(Int(timeout)) s and was interrupted"
        }
        return outcome
    }
}
