import Foundation
import Glibc
import PolicyClient
import Testing
import UnixSockets

/// A NOTIFY_SOCKET the test owns: an AF_UNIX datagram socket, as systemd's.
final class NotifyListener {
    let path: String
    let fd: Int32
    private(set) var messages: [(time: Date, text: String)] = []

    init(directory: String) throws {
        path = directory + "/notify.sock"
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard fd >= 0, bound == 0 else { throw DaemonFailure("cannot bind \(path)") }
    }

    deinit { close(fd) }

    /// Collects datagrams until `seconds` have passed or `until` holds.
    func collect(for seconds: Double, until: ([String]) -> Bool = { _ in false }) {
        let deadline = Date().addingTimeInterval(seconds)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while Date() < deadline, !until(messages.map(\.text)) {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 50) > 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count > 0 { messages.append((Date(), String(decoding: buffer[..<count], as: UTF8.self))) }
        }
    }

    var texts: [String] { messages.map(\.text) }
}

@Suite(.serialized) struct NotifyTests {
    @Test func readyComesOnceTheSocketAcceptsThenStatusWatchdogAndStopping() throws {
        let directory = try TemporaryDirectory(prefix: "policyd-notify")
        let listener = try NotifyListener(directory: directory.path)
        let daemon = try DaemonProcess(
            environment: ["NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "400000"], waitForSocket: false)
        listener.collect(for: 10) { $0.contains { $0.contains("READY=1") } }
        let ready = try #require(listener.texts.first { $0.contains("READY=1") }, "\(daemon.log)")
        // READY=1 comes with the first STATUS=, and the socket accepts at once, with no retry.
        #expect(ready == "READY=1\nSTATUS=0 tenants, 0 mappings, 0 groups held")
        #expect(listener.texts.first == ready, "nothing comes before READY=1: \(listener.texts)")
        let client = try daemon.client()
        try client.map(iova: 0x4000_0000, size: 0x1000)
        let start = Date()
        listener.collect(for: 2)
        let elapsed = Date().timeIntervalSince(start)
        #expect(listener.texts.contains("STATUS=1 tenant, 1 mapping, 1 group held"), "\(listener.texts)")
        // WATCHDOG_USEC of 0.4 s: a ping every 0.2 s.
        let pings = listener.messages.filter { $0.text == "WATCHDOG=1" && $0.time >= start }.count
        let expected = elapsed / 0.2
        #expect(
            Double(pings) >= expected * 0.6 && Double(pings) <= expected * 1.4 + 1, "\(pings) pings in \(elapsed) s")
        #expect(daemon.stop() == 0)
        listener.collect(for: 1) { $0.contains("STOPPING=1") }
        #expect(listener.texts.contains("STOPPING=1"))
    }

    @Test func withoutWatchdogUsecThereAreNoPings() throws {
        let directory = try TemporaryDirectory(prefix: "policyd-notify")
        let listener = try NotifyListener(directory: directory.path)
        let daemon = try DaemonProcess(environment: ["NOTIFY_SOCKET": listener.path])
        listener.collect(for: 1.5)
        #expect(listener.texts.contains { $0.hasPrefix("READY=1") })
        #expect(!listener.texts.contains("WATCHDOG=1"))
        _ = daemon.stop()
    }

    @Test func sighupReportsReloadingAndKeepsServing() throws {
        let directory = try TemporaryDirectory(prefix: "policyd-notify")
        let listener = try NotifyListener(directory: directory.path)
        let daemon = try DaemonProcess(environment: ["NOTIFY_SOCKET": listener.path])
        listener.collect(for: 5) { $0.contains { $0.contains("READY=1") } }
        kill(daemon.pid, SIGHUP)
        listener.collect(for: 2) { $0.contains { $0.hasPrefix("RELOADING=1") } }
        #expect(listener.texts.contains { $0.hasPrefix("RELOADING=1\nMONOTONIC_USEC=") })
        #expect(try daemon.client().explain(iova: 0x1000, size: 0x1000).allowed)
    }
}

@Suite(.serialized) struct SocketActivationTests {
    /// systemd-socket-activate passes both named sockets; a bash loop stands in for systemd
    /// restarting the service on the same fds after the first daemon is killed.
    @Test func anActivatedDaemonServesAndARestartOnTheSameFdsServesAgain() throws {
        let directory = try TemporaryDirectory(prefix: "policyd-activate")
        let tenant = directory.path + "/tenant.sock"
        let admin = directory.path + "/admin.sock"
        let log = directory.path + "/daemon.log"
        let launcher = Process()
        launcher.executableURL = URL(fileURLWithPath: "/usr/bin/systemd-socket-activate")
        // LISTEN_PID must name the process that reads the fds: each subshell sets its own pid
        // and then becomes the daemon.
        let loop =
            #"for i in 1 2; do ( export LISTEN_PID=$BASHPID; exec "$0" --log-target stderr --log-level debug 2>>"$1" ); done"#
        launcher.arguments = [
            "-l", tenant, "--fdname=tenant", "-l", admin, "--fdname=admin",
            "/bin/bash", "-c", loop, DaemonProcess.binary("iommu-policyd"), log,
        ]
        launcher.standardOutput = FileHandle.nullDevice
        launcher.standardError = FileHandle.nullDevice
        try launcher.run()
        defer {
            launcher.terminate()
            kill(-launcher.processIdentifier, SIGKILL)
        }
        // systemd-socket-activate binds at once and starts the program at the first connection.
        var first: PolicyClient?
        for _ in 0..<200 where first == nil {
            first = try? PolicyClient(path: tenant)
            if first == nil { usleep(25_000) }
        }
        let client = try #require(first)
        try client.map(iova: 0x4000_0000, size: 0x1000)
        let logText = { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        #expect(logText().contains("socket-activated fd 3 (tenant)"))
        #expect(logText().contains("serving the admin plane on the socket-activated fd 4 (admin)"))
        // The admin fd is served too: it greets in QMP.
        let adminClient = try UnixSocket.connect(path: admin)
        defer { adminClient.close() }
        var greeting = [UInt8](repeating: 0, count: 512)
        let count = try greeting.withUnsafeMutableBytes { try adminClient.receive(into: $0, maxFDs: 0).count }
        #expect(String(decoding: greeting[..<count], as: UTF8.self).hasPrefix("{\"QMP\":"))
        #expect(!FileManager.default.fileExists(atPath: directory.path + "/iommu-policyd.sock"))

        // Kill the daemon; the loop starts it again on the same listening fds.
        // Found through /proc rather than pgrep: Foundation's Process reaps children one at a
        // time, so a second Process would wait behind the still-running launcher.
        let daemons = children(of: launcher.processIdentifier)
        #expect(daemons.count == 1)
        for pid in daemons { kill(pid, SIGKILL) }
        var second: PolicyClient?
        let deadline = Date().addingTimeInterval(10)
        while second == nil, Date() < deadline {
            if let candidate = try? PolicyClient(path: tenant),
                (try? candidate.explain(iova: 0x1000, size: 0x1000)) != nil
            {
                second = candidate
            } else {
                usleep(50_000)
            }
        }
        let again = try #require(second, "no daemon served the activated socket after the restart:\n\(logText())")
        // The new daemon holds nothing of the old one's: the same IOVA maps again.
        try again.map(iova: 0x4000_0000, size: 0x1000)
        #expect(logText().components(separatedBy: "socket-activated fd 3 (tenant)").count == 3)
    }
}

extension SocketActivationTests {
    /// LISTEN_FDS set by hand, for a fd 3 that is a file: the daemon refuses it at start-up.
    @Test func aPassedTenantFdThatIsNotAListeningUnixSocketStopsTheDaemonWithAReason() throws {
        let script =
            #"export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=tenant; exec 3</dev/null; exec "$0" --log-target stderr"#
        let outcome = try run(
            "/usr/bin/timeout", ["20", "/bin/bash", "-c", script, DaemonProcess.binary("iommu-policyd")])
        #expect(outcome.status != 0 && outcome.status != 124, "exit \(outcome.status)")
        #expect(outcome.stderr.contains("fd 3 (tenant) is not a listening Unix stream socket"), "\(outcome.stderr)")
    }
}

/// The pids whose parent is `parent`, read from `/proc/<pid>/stat`.
func children(of parent: Int32) -> [Int32] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { entry -> Int32? in
        guard let pid = Int32(entry),
            let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        // After "pid (comm)" come the state and then the parent pid.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 1 && Int32(fields[1]) == parent ? pid : nil
    }
}
