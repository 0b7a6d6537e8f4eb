import Foundation

/// Everything one run measured, as printed and as written with --json.
struct BenchReport: Codable {
    struct Machine: Codable {
        var cpus: Int
        var model: String
        var kernel: String
    }

    struct Target: Codable {
        var name: String
        var figure: String
        var target: String
        /// nil: not judged (a --short figure measured below the target's scale).
        var met: Bool?
    }

    var mode: String
    var command: String
    var date: String
    var machine: Machine
    var daemon: String
    /// `git describe --always --dirty` of the package.
    var revision: String
    /// /proc/loadavg's 1-minute figure before and after: anything else running skews the figures.
    var loadAverageBefore: Double
    /// How busy all CPUs were over half a second before the first phase and after the last
    /// (0 to 1): above 0.1, something else was running and the figures suffer.
    var busyBefore: Double
    var busyAfter: Double = 0
    /// CPU time used during the run by processes other than the bench and its children, and
    /// the hypervisor's steal time (seconds): the disturbance the figures carry.
    var foreignCPUSeconds: Double = 0
    var stealSeconds: Double = 0
    var loadAverageAfter: Double = 0
    var seconds: Double = 0
    var roundTrip: RoundTripResult?
    var decision: DecisionResult?
    var memory: MemoryResult?
    var startup: StartupResult?
    var fairness: FairnessResult?
    var targets: [Target] = []

    enum CodingKeys: String, CodingKey {
        case mode, command, date, machine, daemon, revision, loadAverageBefore, loadAverageAfter, busyBefore, busyAfter,
            foreignCPUSeconds, stealSeconds, seconds, roundTrip, decision, memory, startup, fairness, targets
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(mode, forKey: .mode)
        try container.encode(command, forKey: .command)
        try container.encode(date, forKey: .date)
        try container.encode(machine, forKey: .machine)
        try container.encode(daemon, forKey: .daemon)
        try container.encode(revision, forKey: .revision)
        try container.encode(loadAverageBefore, forKey: .loadAverageBefore)
        try container.encode(loadAverageAfter, forKey: .loadAverageAfter)
        try container.encode(busyBefore, forKey: .busyBefore)
        try container.encode(busyAfter, forKey: .busyAfter)
        try container.encode(foreignCPUSeconds, forKey: .foreignCPUSeconds)
        try container.encode(stealSeconds, forKey: .stealSeconds)
        try container.encode(seconds, forKey: .seconds)
        try container.encodeIfPresent(roundTrip, forKey: .roundTrip)
        try container.encodeIfPresent(decision, forKey: .decision)
        try container.encodeIfPresent(memory, forKey: .memory)
        try container.encodeIfPresent(startup, forKey: .startup)
        try container.encodeIfPresent(fairness, forKey: .fairness)
        try container.encode(computedTargets, forKey: .targets)
    }

    /// Each of the issue's targets next to its figure.
    var computedTargets: [Target] {
        var targets: [Target] = []
        if let roundTrip {
            for run in roundTrip.runs {
                guard let target = run.target else { continue }
                targets.append(
                    Target(
                        name: "round trip, \(run.clients) client\(run.clients == 1 ? "" : "s") (daemon/C pairs/s)",
                        figure: format(run.ratio, 2) + "×", target: "≥ " + format(target, 1) + "×", met: run.met))
            }
        }
        if let decision, let largest = decision.sizes.last, let smallest = decision.sizes.first {
            let scale = "\(formatMappings(largest.mappings))"
            for (name, figures, ratio) in [
                ("map", largest.map, decision.mapRatio), ("unmap", largest.unmap, decision.unmapRatio),
            ] {
                targets.append(
                    Target(
                        name: "decide\(name.capitalized) p50 at \(scale) mappings",
                        figure: format(figures.p50Microseconds, 2) + " µs",
                        target: "< " + format(decision.targetP50Microseconds, 0) + " µs",
                        met: figures.p50Microseconds < decision.targetP50Microseconds))
                targets.append(
                    Target(
                        name:
                            "decide\(name.capitalized) p50 \(scale)/\(formatMappings(smallest.mappings)) (log ratio \(format(decision.logRatio, 1))×)",
                        figure: format(ratio, 2) + "×", target: "≤ " + format(decision.targetRatio, 0) + "×",
                        met: ratio <= decision.targetRatio))
            }
        }
        if let memory {
            targets.append(
                Target(
                    name: "resident bytes per mapping at \(formatMappings(memory.mappings))"
                        + (memory.met == nil ? " (target is at 1M: not judged)" : ""),
                    figure: format(memory.bytesPerMapping, 0) + " B", target: "≤ 160 B", met: memory.met))
        }
        if let startup {
            targets.append(
                Target(
                    name: "start-up to READY=1, \(startup.devices) devices (median of \(startup.runs))",
                    figure: format(startup.medianMilliseconds, 1) + " ms",
                    target: "< " + format(startup.targetMilliseconds, 0) + " ms", met: startup.met))
        }
        if let fairness {
            targets.append(
                Target(
                    name: "fairness: polite client's p99 flooded/alone", figure: format(fairness.p99Ratio, 2) + "×",
                    target: "≤ " + format(fairness.targetRatio, 0) + "×", met: fairness.met))
        }
        return targets
    }

    func table() -> String {
        var out: [String] = []
        out.append(
            "iommu-policyd-bench (\(mode)) at \(revision): \(machine.cpus) CPUs, \(machine.model), Linux \(machine.kernel), \(format(seconds, 0)) s, "
                + "other processes \(format(foreignCPUSeconds, 1)) CPU-s during the run, steal \(format(stealSeconds, 1)) s, CPUs \(format(busyBefore * 100, 0))% busy before"
        )
        if let roundTrip {
            out.append("")
            out.append(
                "Round trip: map+unmap pairs/s, one session per client; C echo: 48-byte request and reply, 2 per pair; "
                    + (roundTrip.pinnedCPU.map { "all on CPU \($0)" } ?? "unpinned")
                    + ", \(format(roundTrip.secondsPerRun, 1)) s per run")
            func cpu(_ total: Double, _ user: Double, _ system: Double) -> String {
                "\(format(total, 1)) (\(format(user, 1))+\(format(system, 1)))"
            }
            var rows = [
                [
                    "clients", "daemon pairs/s", "C echo pairs/s", "ratio", "target", "daemon pairs/s (C tenant)",
                    "ratio (C tenant)",
                ]
            ]
            for run in roundTrip.runs {
                rows.append([
                    "\(run.clients)", formatCount(run.daemon.pairsPerSecond), formatCount(run.baseline.pairsPerSecond),
                    format(run.ratio, 2) + "×", run.target.map { "≥ \(format($0, 1))× " + verdict(run.met) } ?? "-",
                    formatCount(run.daemonWithCClient.pairsPerSecond), format(run.ratioWithCClient, 2) + "×",
                ])
            }
            out += columns(rows)
            out.append("Latency of one request (a map, an unmap, or one echo), p50 / p99 µs")
            rows = [["clients", "daemon", "daemon (C tenant)", "C echo"]]
            for run in roundTrip.runs {
                rows.append(
                    ["\(run.clients)"]
                        + [run.daemon, run.daemonWithCClient, run.baseline].map {
                            "\(format($0.latency.p50Microseconds)) / \(format($0.latency.p99Microseconds))"
                        })
            }
            out += columns(rows)
            out.append("CPU µs per pair, user+system (/proc/PID/stat)")
            rows = [
                [
                    "clients", "daemon", "PolicyClient", "daemon (C tenant)", "C tenant", "C echo server",
                    "C echo client",
                ]
            ]
            for run in roundTrip.runs {
                var row = ["\(run.clients)"]
                for side in [run.daemon, run.daemonWithCClient, run.baseline] {
                    row.append(
                        cpu(
                            side.serverCPUMicrosecondsPerPair, side.serverUserMicrosecondsPerPair,
                            side.serverSystemMicrosecondsPerPair))
                    row.append(
                        cpu(
                            side.clientCPUMicrosecondsPerPair, side.clientUserMicrosecondsPerPair,
                            side.clientSystemMicrosecondsPerPair))
                }
                rows.append(row)
            }
            out += columns(rows)
        }
        if let decision {
            out.append("")
            out.append(
                "Decision cost: PolicyEngine in-process, \(decision.reservedRegions) reserved regions, \(decision.samplesPerSize) samples per size (clock pair \(decision.timerOverheadNanoseconds) ns, included)"
            )
            var rows = [["mappings", "map p50 / p99 ns", "map mean ns", "unmap p50 / p99 ns", "unmap mean ns"]]
            for size in decision.sizes {
                rows.append([
                    formatMappings(size.mappings), "\(size.map.p50Nanoseconds) / \(size.map.p99Nanoseconds)",
                    format(size.mapMeanNanoseconds, 0), "\(size.unmap.p50Nanoseconds) / \(size.unmap.p99Nanoseconds)",
                    format(size.unmapMeanNanoseconds, 0),
                ])
            }
            out += columns(rows)
            out.append(
                "p50 ratio \(formatMappings(decision.sizes.last!.mappings))/\(formatMappings(decision.sizes.first!.mappings)): map \(format(decision.mapRatio, 2))×, unmap \(format(decision.unmapRatio, 2))×; ratio of the logarithms \(format(decision.logRatio, 2))×"
            )
            if let perMapping = decision.tenantStateBytesPerMapping {
                out.append("TenantState alone (the bench's RSS growth): \(format(perMapping, 0)) bytes per mapping")
            }
        }
        if let memory {
            out.append("")
            out.append(
                "Memory: one session, \(memory.mappings) 4 KiB mappings without fds"
                    + (memory.mappings < memory.targetMappings ? " (short mode: fewer than the target's 1M)" : ""))
            out.append(
                "RSS \(memory.rssBeforeBytes / 1024) KiB -> \(memory.rssAfterBytes / 1024) KiB: \(format(memory.bytesPerMapping, 0)) bytes per mapping; filled at \(formatCount(memory.mapsPerSecond)) maps/s (pipelined)"
            )
        }
        if let startup {
            out.append("")
            out.append(
                "Start-up: exec to READY=1 on a generated tree: \(startup.devices) PCI functions, \(startup.groups) groups, \(startup.barsPerDevice) BARs each, \(startup.rmrrs) RMRRs (\(startup.regions) regions)"
            )
            out.append(
                "median \(format(startup.medianMilliseconds)) ms, fastest \(format(startup.minimumMilliseconds)) ms of \(startup.runs); discovery in-process \(format(startup.discoveryMilliseconds)) ms; built-in profile (no discovery) \(format(startup.profileMilliseconds)) ms"
            )
        }
        if let fairness {
            out.append("")
            out.append(
                "Fairness: one pair per ms from a polite client, alone and while another session floods; "
                    + (fairness.pinnedCPU.map { "all on CPU \($0)" } ?? "unpinned")
                    + ", \(format(fairness.secondsPerRun, 1)) s each")
            out.append(
                "polite p50/p99 alone \(format(fairness.alone.p50Microseconds)) / \(format(fairness.alone.p99Microseconds)) µs, flooded \(format(fairness.flooded.p50Microseconds)) / \(format(fairness.flooded.p99Microseconds)) µs; flood \(formatCount(fairness.floodPairsPerSecond)) pairs/s"
            )
            if let free = fairness.unpinned {
                out.append(
                    "unpinned (for comparison): alone \(format(free.alone.p50Microseconds)) / \(format(free.alone.p99Microseconds)) µs, flooded \(format(free.flooded.p50Microseconds)) / \(format(free.flooded.p99Microseconds)) µs, p99 ratio \(format(free.p99Ratio, 2))×; flood \(formatCount(free.floodPairsPerSecond)) pairs/s"
                )
            }
        }
        out.append("")
        out.append("Targets" + (mode == "short" ? " (short mode: figures are not judged)" : ""))
        var rows = [["what", "figure", "target", ""]]
        for target in computedTargets {
            rows.append([target.name, target.figure, target.target, verdict(target.met)])
        }
        out += columns(rows)
        return out.joined(separator: "\n")
    }

    private func verdict(_ met: Bool?) -> String {
        switch met {
        case true?: "met"
        case false?: "NOT MET"
        case nil: "n/a"
        }
    }

    private func formatMappings(_ count: Int) -> String {
        if count >= 1_000_000 && count % 1_000_000 == 0 { return "\(count / 1_000_000)M" }
        if count >= 1000 && count % 1000 == 0 { return "\(count / 1000)k" }
        return "\(count)"
    }

    /// Left-aligned columns two spaces apart.
    private func columns(_ rows: [[String]]) -> [String] {
        var widths: [Int] = []
        for row in rows {
            for (index, cell) in row.enumerated() {
                if index >= widths.count { widths.append(0) }
                widths[index] = max(widths[index], cell.count)
            }
        }
        return rows.map { row in
            row.enumerated().map { index, cell in
                index == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[index] - cell.count)
            }.joined(separator: "  ")
        }
    }
}
