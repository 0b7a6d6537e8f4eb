import ArgumentParser
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

@main
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "iommu-policyd-bench",
        abstract:
            "Benchmarks iommu-policyd: round trips against a C echo baseline, decision cost, memory, start-up, fairness.",
        discussion: """
            Run it as `swift build -c release --product iommu-policyd && swift run -c release iommu-policyd-bench`. \
            It starts the release iommu-policyd from its own build directory and compiles the C baseline \
            (Benchmarks/*.c) with cc -O2 into a scratch directory. docs/PERFORMANCE.md explains every figure.
            """)

    @Flag(help: "A few seconds in all (for CI): short runs, 50k mappings instead of 1M; figures not judged.")
    var short = false

    @Option(help: "Also write the results as JSON to this file.")
    var json: String?

    @Option(
        help: "Only these phases, comma-separated: roundtrip, decision, memory, startup, fairness.",
        transform: { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } })
    var only: [String] = []

    @Option(help: "The CPU the round-trip and fairness phases pin server and clients to.")
    var cpu: Int = 0

    @Flag(name: .customLong("no-pin"), help: "Do not pin the round-trip and fairness phases to one CPU.")
    var noPin = false

    @Option(
        help: "Client counts for the round-trip phase, comma-separated.",
        transform: { text in
            try text.split(separator: ",").map {
                guard let count = Int($0), count > 0, count <= 32 else {
                    throw ValidationError("client counts are 1 to 32")
                }
                return count
            }
        })
    var clients: [Int] = [1, 4, 16]

    @Option(help: "Seconds per round-trip and fairness run (default: 3, or 0.3 with --short).")
    var seconds: Double?

    @Option(help: "Mappings for the memory phase (default: 1000000, or 50000 with --short).")
    var mappings: Int?

    @Option(help: "The iommu-policyd binary (default: the one beside this program, built first).")
    var daemon: String?

    @Flag(
        name: .customLong("no-build"),
        help: "Use the iommu-policyd beside this program as it is, without `swift build --product iommu-policyd` first."
    )
    var noBuild = false

    @Flag(help: "Keep the scratch directory (daemon logs, generated sysfs tree).")
    var keep = false

    @Option(help: "Where the scratch directory goes (default: /dev/shm when writable, else $TMPDIR or /tmp).")
    var scratch: String?

    static let phases = ["roundtrip", "decision", "memory", "startup", "fairness"]

    func validate() throws {
        for phase in only where !Self.phases.contains(phase) {
            throw ValidationError("unknown phase \(phase) (phases: \(Self.phases.joined(separator: ", ")))")
        }
        if cpu < 0 || cpu >= ProcFS.cpuCount { throw ValidationError("--cpu must be below \(ProcFS.cpuCount)") }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let began = Date()
        let selected = only.isEmpty ? Self.phases : only
        let daemonBinary = daemon ?? Locations.buildDirectory + "/iommu-policyd"
        let scratch = try ScratchDirectory(
            prefix: "iommu-policyd-bench", base: self.scratch ?? ScratchDirectory.defaultBase)
        scratch.keep = keep
        let pin: Int? = noPin ? nil : cpu
        let runSeconds = seconds ?? (short ? 0.3 : 3)
        func log(_ line: String) {
            FileHandle.standardError.write(Data("[bench] \(line)\n".utf8))
        }
        log("mode \(short ? "short" : "full"), daemon \(daemonBinary), scratch \(scratch.path)")
        let needsDaemon = selected.contains { $0 != "decision" }
        if daemon == nil && !noBuild && needsDaemon {
            try Locations.buildDaemon(scratch: scratch.path, log: log)
        }
        let loadBefore = ProcFS.loadAverage
        let busyBefore = ProcFS.busyFraction(over: 0.5)
        if busyBefore > 0.1 {
            log(
                "warning: the CPUs were \(format(busyBefore * 100, 0))% busy before the run: something else is running, figures will suffer"
            )
        }

        let systemBefore = ProcFS.systemCPU()
        let ownBefore = ProcFS.ownCPUWithChildren()
        var report = BenchReport(
            mode: short ? "short" : "full", command: CommandLine.arguments.joined(separator: " "),
            date: ISO8601DateFormatter().string(from: began),
            machine: .init(cpus: ProcFS.cpuCount, model: ProcFS.cpuModel, kernel: ProcFS.kernel),
            daemon: daemonBinary, revision: Locations.revision, loadAverageBefore: loadBefore,
            busyBefore: busyBefore)

        if selected.contains("roundtrip") {
            let phaseStart = Date()
            defer { log("roundtrip took \(format(Date().timeIntervalSince(phaseStart), 1)) s") }
            let baseline = try EchoBaseline.build(
                sources: Locations.packageRoot + "/Benchmarks", into: scratch.path)
            report.roundTrip = try RoundTripBenchmark(
                daemonBinary: daemonBinary, baseline: baseline, scratch: scratch.path, clientCounts: clients,
                seconds: runSeconds, warmUp: short ? 0.05 : 0.3, cpu: pin
            ).run(log: log)
        }
        if selected.contains("decision") {
            let phaseStart = Date()
            defer { log("decision took \(format(Date().timeIntervalSince(phaseStart), 1)) s") }
            report.decision = try DecisionBenchmark(
                sizes: [1_000, 100_000, 1_000_000], samples: short ? 20_000 : 200_000
            ).run(log: log)
        }
        if selected.contains("memory") {
            let phaseStart = Date()
            defer { log("memory took \(format(Date().timeIntervalSince(phaseStart), 1)) s") }
            report.memory = try MemoryBenchmark(
                daemonBinary: daemonBinary, scratch: scratch.path, count: mappings ?? (short ? 50_000 : 1_000_000)
            ).run(log: log)
        }
        if selected.contains("startup") {
            let phaseStart = Date()
            defer { log("startup took \(format(Date().timeIntervalSince(phaseStart), 1)) s") }
            report.startup = try StartupBenchmark(
                daemonBinary: daemonBinary, scratch: scratch.path, runs: short ? 1 : 7
            )
            .run(log: log)
        }
        if selected.contains("fairness") {
            let phaseStart = Date()
            defer { log("fairness took \(format(Date().timeIntervalSince(phaseStart), 1)) s") }
            report.fairness = try FairnessBenchmark(
                daemonBinary: daemonBinary, scratch: scratch.path, seconds: short ? 0.5 : max(runSeconds, 3), cpu: pin,
                alsoUnpinned: !short
            ).run(log: log)
        }
        report.seconds = Date().timeIntervalSince(began)
        report.loadAverageAfter = ProcFS.loadAverage
        // Every child has been waited for by now, so its CPU time is in RUSAGE_CHILDREN.
        let systemAfter = ProcFS.systemCPU()
        report.foreignCPUSeconds = max(
            0, (systemAfter.busy - systemBefore.busy) - (ProcFS.ownCPUWithChildren() - ownBefore))
        report.stealSeconds = systemAfter.steal - systemBefore.steal
        if report.foreignCPUSeconds > 0.05 * report.seconds * Double(ProcFS.cpuCount) {
            log(
                "warning: other processes used \(format(report.foreignCPUSeconds, 1)) CPU-seconds during the run: the figures are disturbed"
            )
        }
        report.busyAfter = ProcFS.busyFraction(over: 0.5)
        if report.busyAfter > 0.1 {
            log(
                "warning: the CPUs were \(format(report.busyAfter * 100, 0))% busy after the run: something else was running"
            )
        }
        print(report.table())
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(report).write(to: URL(fileURLWithPath: json))
            log("wrote \(json)")
        }
    }
}
