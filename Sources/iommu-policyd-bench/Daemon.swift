import Foundation
import PolicyClient

#if canImport(Glibc)
    import Glibc
#endif

/// Where the bench finds what it runs: the daemon binary beside its own, and the C sources in
/// the package's Benchmarks/ directory.
struct Locations {
    var daemon: String
    var cSources: String

    /// This file is `<package>/Sources/iommu-policyd-bench/Daemon.swift`.
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    /// `swift build --product iommu-policyd` in this bench's configuration, so the daemon
    /// measured is the source beside it (a no-op build takes about half a second).
    static func buildDaemon(scratch: String, log: (String) -> Void) throws {
        let configuration = (buildDirectory as NSString).lastPathComponent == "debug" ? "debug" : "release"
        if configuration == "debug" { log("warning: a debug build; run with -c release for real figures") }
        log("building iommu-policyd (\(configuration))")
        let output = scratch + "/swift-build.log"
        let build = try ChildProcess(
            "/usr/bin/env",
            ["swift", "build", "-c", configuration, "--product", "iommu-policyd", "--package-path", packageRoot],
            stdout: output, stderr: output)
        guard build.wait() == 0 else {
            let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
            throw BenchFailure("swift build --product iommu-policyd failed:\n\(text)")
        }
    }

    /// `git describe --always --dirty` of the package, so a figure can be tied to the code it measured.
    static var revision: String {
        let output = NSTemporaryDirectory() + "iommu-policyd-bench-git-\(getpid())"
        defer { unlink(output) }
        guard
            let git = try? ChildProcess(
                "/usr/bin/env", ["git", "-C", packageRoot, "describe", "--always", "--dirty"], stdout: output),
            git.wait() == 0
        else { return "unknown" }
        return ((try? String(contentsOfFile: output, encoding: .utf8)) ?? "unknown")
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static var buildDirectory: String {
        let executable =
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? CommandLine.arguments[0]
        return (executable as NSString).deletingLastPathComponent
    }
}

/// The C programs, compiled with `cc -O2` from Benchmarks/ into a scratch directory: the echo
/// baseline's server and client, and a C tenant that measures the daemon without Swift's client.
struct EchoBaseline {
    var server: String
    var client: String
    var tenant: String

    static func build(sources: String, into directory: String) throws -> EchoBaseline {
        let compiler = ProcessInfo.processInfo.environment["CC"] ?? "cc"
        func compile(_ name: String) throws -> String {
            let output = "\(directory)/\(name)"
            let log = "\(directory)/\(name).cc.log"
            let source = "\(sources)/\(name).c"
            guard FileManager.default.fileExists(atPath: source) else { throw BenchFailure("missing \(source)") }
            let cc = try ChildProcess(
                "/usr/bin/env", [compiler, "-O2", "-pthread", "-o", output, source], stdout: log, stderr: log)
            guard cc.wait() == 0 else {
                let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                throw BenchFailure("\(compiler) -O2 \(source) failed:\n\(text)")
            }
            return output
        }
        return EchoBaseline(
            server: try compile("echo_server"), client: try compile("echo_client"),
            tenant: try compile("vfio_user_client"))
    }
}

/// A running `iommu-policyd` with the simulated backend on the x86-intel profile (or a sysfs
/// root), with a config that lifts the limits the bench would hit, readiness through a
/// NOTIFY_SOCKET the bench owns, and stderr (the log, at `error`) in a file.
final class RunningDaemon: @unchecked Sendable {
    let process: ChildProcess
    let socketPath: String
    let logPath: String
    /// From exec to READY=1.
    let startupNanoseconds: UInt64

    /// Enough for the memory phase's million mappings in one session, and for 16 clients
    /// plus the probes in the round-trip phase.
    static let benchConfig = """
        # iommu-policyd-bench: limits raised so that the bench measures the request path, not the quotas.
        [defaults]
        max_mappings = 4000000
        max_bytes = "1P"
        max_sessions = 64

        """

    init(
        binary: String, directory: String, platform: [String] = ["--profile", "x86-intel", "--profile-groups", "32"],
        config: String? = RunningDaemon.benchConfig, name: String = "daemon"
    ) throws {
        socketPath = "\(directory)/t.sock"
        logPath = "\(directory)/\(name).log"
        var arguments =
            platform + [
                "--backend", "simulated", "--socket", socketPath, "--log-level", "error", "--log-target", "stderr",
            ]
        if let config {
            let path = "\(directory)/policy.toml"
            try config.write(toFile: path, atomically: true, encoding: .utf8)
            arguments += ["--config", path]
        }
        let notify = try NotifyListener(path: "\(directory)/notify.sock")
        var environment = ProcessInfo.processInfo.environment.filter {
            ![
                "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
                "JOURNAL_STREAM", "RUNTIME_DIRECTORY", "STATE_DIRECTORY",
            ].contains($0.key)
        }
        environment["NOTIFY_SOCKET"] = notify.path
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw BenchFailure(
                "no daemon binary at \(binary): build it with `swift build -c release --product iommu-policyd`")
        }
        let start = nowNanoseconds()
        process = try ChildProcess(binary, arguments, environment: environment, stderr: logPath)
        let child = process
        guard let ready = notify.waitForReady(timeout: 30, alive: { child.isRunning }) else {
            process.stop()
            let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
            throw BenchFailure("the daemon did not send READY=1 (\(arguments.joined(separator: " "))):\n\(log)")
        }
        startupNanoseconds = ready - start
    }

    var pid: pid_t { process.pid }

    func client() throws -> PolicyClient {
        try PolicyClient(path: socketPath)
    }

    /// SIGTERM and a generous wait: under valgrind a graceful exit takes seconds.
    func stop() { process.stop(grace: 60) }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
}
