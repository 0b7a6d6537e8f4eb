import Foundation
import PolicyClient

#if canImport(Glibc)
    import Glibc
#endif

/// One client count's figures for one server.
struct RoundTripRun: Codable {
    var clients: Int
    /// map+unmap pairs per second (the baseline: round trips per second / 2).
    var pairsPerSecond: Double
    /// One request and its reply (a map, an unmap, or one echo).
    var latency: Percentiles
    /// The server process's user+system CPU per pair, from /proc/PID/stat.
    var serverCPUMicrosecondsPerPair: Double
    /// The same, user and system (kernel) time apart.
    var serverUserMicrosecondsPerPair: Double
    var serverSystemMicrosecondsPerPair: Double
    /// The client process's user+system CPU per pair, and the two apart.
    var clientCPUMicrosecondsPerPair: Double
    var clientUserMicrosecondsPerPair: Double
    var clientSystemMicrosecondsPerPair: Double
    var seconds: Double
}

struct RoundTripComparison: Codable {
    var clients: Int
    /// The daemon driven by PolicyClient threads in the bench (the figure the target is for).
    var daemon: RoundTripRun
    /// The daemon driven by the C tenant (Benchmarks/vfio_user_client.c): the server alone,
    /// with a client as cheap as the baseline's.
    var daemonWithCClient: RoundTripRun
    var baseline: RoundTripRun
    var ratio: Double
    /// daemonWithCClient over baseline.
    var ratioWithCClient: Double
    /// The targets: 0.8 with 1 client, 0.7 with 16; none for other counts.
    var target: Double?
    var met: Bool?
}

struct RoundTripResult: Codable {
    var pinnedCPU: Int?
    var secondsPerRun: Double
    var runs: [RoundTripComparison]
}

/// Map+unmap pairs over the tenant socket against the real daemon, and the same number of
/// 48-byte round trips against the C echo server, with server and clients pinned to one CPU.
struct RoundTripBenchmark {
    var daemonBinary: String
    var baseline: EchoBaseline
    var scratch: String
    var clientCounts: [Int]
    var seconds: Double
    var warmUp: Double
    var cpu: Int?

    static func target(clients: Int) -> Double? { clients == 1 ? 0.8 : clients == 16 ? 0.7 : nil }

    func run(log: (String) -> Void) throws -> RoundTripResult {
        try Affinity.pinned(to: cpu) {
            // Started from this (pinned) thread, so the daemon, the C server and the C client
            // inherit the mask, and so do the client threads started below.
            let directory = scratch + "/roundtrip"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            // Every run attaches groups of its own: a session's groups are released by its thread
            // after the client has gone, so the next run must not wait for or race with that.
            let groupsNeeded = 2 * clientCounts.reduce(0, +)
            let daemon = try RunningDaemon(
                binary: daemonBinary, directory: directory,
                platform: ["--profile", "x86-intel", "--profile-groups", String(groupsNeeded)])
            defer { daemon.stop() }
            let echoSocket = directory + "/echo.sock"
            let server = try ChildProcess(baseline.server, [echoSocket], stderr: directory + "/echo_server.log")
            defer { server.stop() }
            try waitForSocket(echoSocket, process: server)

            var runs: [RoundTripComparison] = []
            var nextGroup = 0
            for clients in clientCounts {
                let ours = try daemonRun(daemon, clients: clients, firstGroup: nextGroup)
                nextGroup += clients
                log(
                    "round trip: daemon, \(clients) client(s): \(formatCount(ours.pairsPerSecond)) pairs/s, p50 \(format(ours.latency.p50Microseconds)) µs"
                )
                let oursC = try cRun(
                    baseline.tenant, server: daemon.process, socket: daemon.socketPath, clients: clients,
                    directory: directory, extra: [String(nextGroup)], pairsPerRoundTrip: 0.5)
                nextGroup += clients
                log(
                    "round trip: daemon with the C tenant, \(clients) client(s): \(formatCount(oursC.pairsPerSecond)) pairs/s, p50 \(format(oursC.latency.p50Microseconds)) µs"
                )
                let theirs = try cRun(
                    baseline.client, server: server, socket: echoSocket, clients: clients, directory: directory,
                    extra: [], pairsPerRoundTrip: 0.5)
                log(
                    "round trip: C echo, \(clients) client(s): \(formatCount(theirs.pairsPerSecond)) pairs/s, p50 \(format(theirs.latency.p50Microseconds)) µs"
                )
                let ratio = ours.pairsPerSecond / theirs.pairsPerSecond
                let target = Self.target(clients: clients)
                runs.append(
                    RoundTripComparison(
                        clients: clients, daemon: ours, daemonWithCClient: oursC, baseline: theirs, ratio: ratio,
                        ratioWithCClient: oursC.pairsPerSecond / theirs.pairsPerSecond, target: target,
                        met: target.map { ratio >= $0 }))
            }
            guard daemon.process.isRunning else { throw BenchFailure("the daemon died:\n\(daemon.log)") }
            return RoundTripResult(pinnedCPU: cpu, secondsPerRun: seconds, runs: runs)
        }
    }

    private func waitForSocket(_ path: String, process: ChildProcess) throws {
        for _ in 0..<400 {
            if let fd = try? connectUnix(path) {
                close(fd)
                return
            }
            guard process.isRunning else { throw BenchFailure("\(process.name) exited at start-up") }
            usleep(5000)
        }
        throw BenchFailure("\(process.name) did not listen on \(path)")
    }

    /// `clients` threads, each with its own PolicyClient session and group, each mapping and
    /// unmapping one 4 KiB page of its own in a loop.
    private func daemonRun(_ daemon: RunningDaemon, clients: Int, firstGroup: Int) throws -> RoundTripRun {
        let phase = Phase()
        let results = (0..<clients).map { _ in ClientResult(capacity: Int(seconds * 200_000) / max(1, clients)) }
        let connected = DispatchSemaphore(value: 0)
        let go = DispatchSemaphore(value: 0)
        let socketPath = daemon.socketPath
        let cpu = self.cpu
        let join = startThreads(clients, name: "rt-client") { index in
            let result = results[index]
            if let cpu { Affinity.set(Affinity.only(cpu: cpu)) }
            let client: PolicyClient
            do {
                client = try PolicyClient(path: socketPath)
                try client.attach(group: UInt32(firstGroup + index))
            } catch {
                result.failure = "client \(index): \(error)"
                connected.signal()
                return
            }
            connected.signal()
            go.wait()
            let iova: UInt64 = 0x1_0000_0000 + UInt64(index) << 24
            result.exercise(client, iova: iova, phase: phase)
            client.close()
        }
        for _ in 0..<clients { connected.wait() }
        if let failure = results.compactMap(\.failure).first {
            for _ in 0..<clients { go.signal() }
            phase.set(Phase.stop)
            join()
            throw BenchFailure("\(failure)\n\(daemon.log)")
        }
        for _ in 0..<clients { go.signal() }
        sleep(seconds: warmUp)
        let serverBefore = ProcFS.cpuTimes(pid: daemon.pid) ?? (0, 0)
        let clientBefore = ProcFS.cpuTimes(pid: getpid()) ?? (0, 0)
        let start = nowNanoseconds()
        phase.set(Phase.measure)
        sleep(seconds: seconds)
        phase.set(Phase.stop)
        let elapsed = Double(nowNanoseconds() - start) / 1e9
        let serverAfter = ProcFS.cpuTimes(pid: daemon.pid) ?? (0, 0)
        let clientAfter = ProcFS.cpuTimes(pid: getpid()) ?? (0, 0)
        join()
        if let failure = results.compactMap(\.failure).first { throw BenchFailure("\(failure)\n\(daemon.log)") }
        let pairs = results.reduce(0) { $0 + $1.pairs }
        guard pairs > 0 else { throw BenchFailure("no pair completed against the daemon") }
        return RoundTripRun(
            clients: clients, pairsPerSecond: Double(pairs) / elapsed,
            latency: Percentiles(results.flatMap(\.latencies)),
            serverCPUMicrosecondsPerPair: Double(
                serverAfter.user + serverAfter.system - serverBefore.user - serverBefore.system) / 1000 / Double(pairs),
            serverUserMicrosecondsPerPair: Double(serverAfter.user - serverBefore.user) / 1000 / Double(pairs),
            serverSystemMicrosecondsPerPair: Double(serverAfter.system - serverBefore.system) / 1000 / Double(pairs),
            clientCPUMicrosecondsPerPair: Double(
                clientAfter.user + clientAfter.system - clientBefore.user - clientBefore.system) / 1000 / Double(pairs),
            clientUserMicrosecondsPerPair: Double(clientAfter.user - clientBefore.user) / 1000 / Double(pairs),
            clientSystemMicrosecondsPerPair: Double(clientAfter.system - clientBefore.system) / 1000 / Double(pairs),
            seconds: elapsed)
    }

    /// A C client program, `clients` threads for `seconds`. The echo client's round trip is one
    /// 48-byte request and its 48-byte reply; the C tenant's is one map or one unmap. A pair is
    /// two of either.
    private func cRun(
        _ program: String, server: ChildProcess, socket: String, clients: Int, directory: String, extra: [String],
        pairsPerRoundTrip: Double
    ) throws -> RoundTripRun {
        let name = (program as NSString).lastPathComponent
        // A short unmeasured run first, as the PolicyClient threads get their warm-up. The C
        // tenant gets none (it would need groups of its own): the PolicyClient run has just
        // warmed the same daemon up.
        if extra.isEmpty {
            let warm = try ChildProcess(program, [socket, String(clients), String(max(warmUp, 0.05))] + extra)
            guard warm.wait() == 0 else { throw BenchFailure("\(name) warm-up failed") }
        }
        let output = directory + "/\(name).out"
        let errors = directory + "/\(name).err"
        let serverBefore = ProcFS.cpuTimes(pid: server.pid) ?? (0, 0)
        let client = try ChildProcess(
            program, [socket, String(clients), String(seconds)] + extra, stdout: output, stderr: errors)
        let status = client.wait()
        let serverAfter = ProcFS.cpuTimes(pid: server.pid) ?? (0, 0)
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        var fields: [String: Double] = [:]
        for pair in text.split(whereSeparator: \.isWhitespace) {
            let parts = pair.split(separator: "=", maxSplits: 1)
            if parts.count == 2, let value = Double(parts[1]) { fields[String(parts[0])] = value }
        }
        guard status == 0, let roundTrips = fields["round_trips"], let elapsed = fields["seconds"], roundTrips > 0,
            let p50 = fields["p50_ns"], let p99 = fields["p99_ns"], let user = fields["user_ns"],
            let system = fields["system_ns"]
        else {
            let problems = (try? String(contentsOfFile: errors, encoding: .utf8)) ?? ""
            throw BenchFailure("\(name) failed (status \(status)): \(text)\(problems)")
        }
        let pairs = roundTrips * pairsPerRoundTrip
        return RoundTripRun(
            clients: clients, pairsPerSecond: pairs / elapsed,
            latency: Percentiles(count: Int(roundTrips), p50: UInt64(p50), p99: UInt64(p99)),
            serverCPUMicrosecondsPerPair: Double(
                serverAfter.user + serverAfter.system - serverBefore.user - serverBefore.system) / 1000 / pairs,
            serverUserMicrosecondsPerPair: Double(serverAfter.user - serverBefore.user) / 1000 / pairs,
            serverSystemMicrosecondsPerPair: Double(serverAfter.system - serverBefore.system) / 1000 / pairs,
            clientCPUMicrosecondsPerPair: (user + system) / 1000 / pairs,
            clientUserMicrosecondsPerPair: user / 1000 / pairs,
            clientSystemMicrosecondsPerPair: system / 1000 / pairs, seconds: elapsed)
    }
}

/// What one client thread did: pairs completed and each request's latency, in the measured phase.
final class ClientResult: @unchecked Sendable {
    var latencies: [UInt64] = []
    var pairs = 0
    var failure: String?

    init(capacity: Int) { latencies.reserveCapacity(capacity) }

    /// Maps and unmaps `[iova, iova + 4 KiB)` until the phase is `stop`; counts and times only
    /// what completes in the `measure` phase.
    func exercise(_ client: PolicyClient, iova: UInt64, phase: Phase) {
        do {
            while true {
                let now = phase.current
                if now == Phase.stop { return }
                let start = nowNanoseconds()
                try client.map(iova: iova, size: 0x1000)
                let mapped = nowNanoseconds()
                try client.unmap(iova: iova, size: 0x1000)
                let end = nowNanoseconds()
                if now == Phase.measure {
                    latencies.append(mapped - start)
                    latencies.append(end - mapped)
                    pairs += 1
                }
            }
        } catch {
            failure = "\(error)"
        }
    }
}

/// A blocking connect to a Unix stream socket; returns the fd.
func connectUnix(_ path: String) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw BenchFailure("socket: \(String(cString: strerror(errno)))") }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        for (index, byte) in path.utf8.enumerated() where index < raw.count - 1 { raw[index] = byte }
    }
    let result = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }
    guard result == 0 else {
        let error = errno
        close(fd)
        throw BenchFailure("connect \(path): \(String(cString: strerror(error)))")
    }
    return fd
}
