import Foundation
import PolicyClient

#if canImport(Glibc)
    import Glibc
#endif

struct FairnessResult: Codable {
    var pinnedCPU: Int?
    /// The same measurement with nothing pinned (both CPUs), for comparison; full mode only.
    var unpinned: FairnessResult.Unpinned?

    struct Unpinned: Codable {
        var alone: Percentiles
        var flooded: Percentiles
        var floodPairsPerSecond: Double
        var p99Ratio: Double
    }

    var secondsPerRun: Double
    /// The well-behaved client's request latencies (maps and unmaps), alone and under the flood.
    var alone: Percentiles
    var flooded: Percentiles
    /// The flooding client's pairs per second meanwhile.
    var floodPairsPerSecond: Double
    var p99Ratio: Double
    var targetRatio: Double
    var met: Bool
}

/// A well-behaved client (one map+unmap pair every millisecond) alone, then while another
/// session floods the daemon with map+unmap pairs as fast as one connection can; the ratio of
/// its p99 latencies. Daemon and both clients share one CPU, as in the round-trip phase.
struct FairnessBenchmark {
    var daemonBinary: String
    var scratch: String
    var seconds: Double
    var cpu: Int?
    /// Also measure with nothing pinned.
    var alsoUnpinned: Bool

    func run(log: (String) -> Void) throws -> FairnessResult {
        let pinned = try Affinity.pinned(to: cpu) { try measure(name: "fairness", log: log) }
        var result = FairnessResult(
            pinnedCPU: cpu, secondsPerRun: seconds, alone: pinned.alone, flooded: pinned.flooded,
            floodPairsPerSecond: pinned.floodPairs, p99Ratio: pinned.ratio, targetRatio: 5, met: pinned.ratio <= 5)
        if alsoUnpinned && cpu != nil {
            let free = try measure(name: "fairness-unpinned", log: log)
            result.unpinned = .init(
                alone: free.alone, flooded: free.flooded, floodPairsPerSecond: free.floodPairs, p99Ratio: free.ratio)
        }
        return result
    }

    private func measure(
        name: String, log: (String) -> Void
    ) throws -> (alone: Percentiles, flooded: Percentiles, floodPairs: Double, ratio: Double) {
        let directory = scratch + "/" + name
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let daemon = try RunningDaemon(binary: daemonBinary, directory: directory)
        defer { daemon.stop() }
        let alone = try polite(daemon, flood: false)
        log("\(name): alone p99 \(format(alone.latency.p99Microseconds)) µs")
        let flooded = try polite(daemon, flood: true)
        log(
            "\(name): under a flood (\(formatCount(flooded.floodPairs)) pairs/s) p99 \(format(flooded.latency.p99Microseconds)) µs"
        )
        guard daemon.process.isRunning else { throw BenchFailure("the daemon died:\n\(daemon.log)") }
        let ratio = Double(flooded.latency.p99Nanoseconds) / Double(max(1, alone.latency.p99Nanoseconds))
        return (alone.latency, flooded.latency, flooded.floodPairs, ratio)
    }

    private func polite(_ daemon: RunningDaemon, flood: Bool) throws -> (latency: Percentiles, floodPairs: Double) {
        let phase = Phase()
        let flooder = ClientResult(capacity: flood ? Int(seconds * 200_000) : 0)
        let socketPath = daemon.socketPath
        var joinFlood: () -> Void = {}
        if flood {
            let connected = DispatchSemaphore(value: 0)
            joinFlood = startThreads(1, name: "flood") { _ in
                let client: PolicyClient
                do {
                    client = try PolicyClient(path: socketPath)
                    try client.attach(group: 1)
                } catch {
                    flooder.failure = "flooding client: \(error)"
                    connected.signal()
                    return
                }
                connected.signal()
                flooder.exercise(client, iova: 0x2_0000_0000, phase: phase)
                client.close()
            }
            connected.wait()
            if let failure = flooder.failure { throw BenchFailure(failure) }
            // Let the flood get going before the well-behaved client is timed.
            sleep(seconds: 0.1)
        }
        phase.set(Phase.measure)
        let floodStart = nowNanoseconds()
        let client = try daemon.client()
        try client.attach(group: 0)
        let iova: UInt64 = 0x1_0000_0000
        var latencies: [UInt64] = []
        latencies.reserveCapacity(Int(seconds * 2000) + 16)
        let interval: UInt64 = 1_000_000
        let start = nowNanoseconds()
        let end = start + UInt64(seconds * 1e9)
        var next = start
        // A few unmeasured pairs first.
        for _ in 0..<10 {
            try client.map(iova: iova, size: 0x1000)
            try client.unmap(iova: iova, size: 0x1000)
        }
        while next < end {
            sleep(untilNanoseconds: next)
            next += interval
            let begin = nowNanoseconds()
            try client.map(iova: iova, size: 0x1000)
            let mapped = nowNanoseconds()
            try client.unmap(iova: iova, size: 0x1000)
            latencies.append(mapped - begin)
            latencies.append(nowNanoseconds() - mapped)
        }
        client.close()
        phase.set(Phase.stop)
        let floodSeconds = Double(nowNanoseconds() - floodStart) / 1e9
        joinFlood()
        if let failure = flooder.failure { throw BenchFailure(failure) }
        return (Percentiles(latencies), Double(flooder.pairs) / floodSeconds)
    }
}
