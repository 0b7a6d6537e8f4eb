import Foundation
import PolicyClient
@_exported import TestSupport
import Testing
import UnixSockets

/// The real `iommu-policyd` binary, started on a socket in a fresh directory and stopped
/// (SIGTERM) when the value goes away. Its stderr (the audit trail) is kept in a file.
final class DaemonProcess: @unchecked Sendable {
    let directory: String
    let socketPath: String
    let logPath: String
    let process = Process()

    static func binary(_ name: String) -> String {
        buildDirectory.appendingPathComponent(name).path
    }

    init(
        arguments: [String] = ["--profile", "x86-intel"], config: String? = nil, environment: [String: String] = [:],
        waitForSocket: Bool = true
    ) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("policyd-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        socketPath = directory + "/tenant.sock"
        logPath = directory + "/daemon.log"
        var args =
            ["--socket", socketPath, "--socket-mode", "0666", "--log-level", "debug", "--log-target", "stderr"]
            + arguments
        if let config {
            let path = directory + "/policy.toml"
            try config.write(toFile: path, atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: path)
            args += ["--config", path]
        }
        FileManager.default.createFile(atPath: logPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: Self.binary("iommu-policyd"))
        process.arguments = args
        process.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("NOTIFY_") }
            .merging(environment) { $1 }
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        if waitForSocket { try waitUntilAccepting() }
    }

    deinit {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    var pid: Int32 { process.processIdentifier }

    private func waitUntilAccepting() throws {
        for _ in 0..<400 {
            if let socket = try? UnixSocket.connect(path: socketPath) {
                socket.close()
                // Let the probe's session end, so fd counts taken now are the idle daemon's.
                try eventually("the start-up probe's session to close") { log.contains("session-closed") }
                return
            }
            guard process.isRunning else { throw DaemonFailure("the daemon exited at start-up:\n\(log)") }
            usleep(25_000)
        }
        throw DaemonFailure("the daemon did not accept within 10 s:\n\(log)")
    }

    func client(errorDetail: Bool = true) throws -> PolicyClient {
        try PolicyClient(path: socketPath, errorDetail: errorDetail)
    }

    /// SIGTERM, then the exit status.
    func stop() -> Int32 {
        process.terminate()
        process.waitUntilExit()
        return process.terminationStatus
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Open fds of the daemon.
    var fdCount: Int { FDCount.of(pid: pid) ?? -1 }

    /// Waits until `condition` holds (state changes after a disconnect are asynchronous).
    func eventually(_ what: String, timeout: Double = 5, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if (try? condition()) == true { return }
            usleep(20_000)
        }
        throw DaemonFailure("timed out waiting for \(what)")
    }
}

struct DaemonFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Runs a program and returns its exit status and output.
func run(_ executable: String, _ arguments: [String]) throws -> ProcessOutcome {
    try runProcess(executable, arguments)
}
