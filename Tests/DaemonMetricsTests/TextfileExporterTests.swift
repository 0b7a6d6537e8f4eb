import DaemonMetrics
import Foundation
import Synchronization
import Testing

/// A fresh directory under the system temporary directory, removed by `remove()`.
private struct ScratchDirectory {
    let path: String

    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("daemon-metrics-\(UUID())").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
    }

    var entries: [String] { (try? FileManager.default.contentsOfDirectory(atPath: path).sorted()) ?? [] }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

private func read(_ path: String) -> String? {
    FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) }
}

/// Polls `condition` for up to five seconds.
private func eventually(_ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + .seconds(5)
    while ContinuousClock.now < deadline {
        if condition() { return true }
        Thread.sleep(forTimeInterval: 0.005)
    }
    return condition()
}

@Suite struct TextfileExporterTests {
    @Test func writeReplacesTheFileWithTheMetricsAndLeavesNoTemporaryBehind() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let path = directory.path + "/iommu-policyd.prom"
        let metrics = DaemonMetrics()
        let exporter = TextfileExporter(metrics: metrics)

        metrics.setSessions(1)
        try exporter.write(to: path)
        metrics.setSessions(2)
        metrics.request(command: "map", result: .allowed)
        try exporter.write(to: path)

        let written = try #require(read(path))
        #expect(samples(written) == samples(metrics.prometheusText()))
        #expect(samples(written)["iommu_policyd_sessions"] == "2.0")
        #expect(directory.entries == ["iommu-policyd.prom"])
    }

    @Test func aReaderRacingTheWriterOnlyEverSeesCompleteFiles() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let path = directory.path + "/iommu-policyd.prom"
        let metrics = DaemonMetrics()
        for reason in ["quota", "overlaps-reserved", "outside-aperture", "backend-failure"] {
            metrics.request(command: "map", result: .denied(reason: reason))
            metrics.revocation(reason: reason)
        }
        metrics.decisionLatency(nanoseconds: 1000, command: "map")
        let exporter = TextfileExporter(metrics: metrics)
        try exporter.write(to: path)
        let lineCount = try #require(read(path)).split(separator: "\n").count

        let writing = Atomic(true)
        let torn = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 2) { role in
            if role == 0 {
                for i in 0..<300 {
                    metrics.setMappedBytes(UInt64(i) << 20)
                    try? exporter.write(to: path)
                }
                writing.store(false, ordering: .releasing)
            } else {
                while writing.load(ordering: .acquiring) {
                    guard let text = read(path) else { continue }
                    if !text.hasSuffix("\n") || text.split(separator: "\n").count != lineCount {
                        torn.withLock { $0.append(text) }
                    }
                }
            }
        }
        #expect(torn.withLock { $0 } == [])
        #expect(directory.entries == ["iommu-policyd.prom"])
    }

    @Test func aMissingDirectoryGivesAnErrorNamingThePath() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let path = directory.path + "/absent/iommu-policyd.prom"
        let exporter = TextfileExporter(metrics: DaemonMetrics())

        let error = try #require(throws: TextfileExportError.self) { try exporter.write(to: path) }
        #expect(error.path == path)
        #expect(error.call == "open")
        #expect(error.errno == ENOENT)
        #expect(error.description.contains(path))
    }

    @Test func aFailedRenameRemovesTheTemporaryFile() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        // A non-empty directory where the file should go: everything succeeds up to the rename.
        let path = directory.path + "/iommu-policyd.prom"
        try FileManager.default.createDirectory(atPath: path + "/occupied", withIntermediateDirectories: true)
        let exporter = TextfileExporter(metrics: DaemonMetrics())

        let error = try #require(throws: TextfileExportError.self) { try exporter.write(to: path) }
        #expect(error.call == "rename")
        #expect(error.description.contains(path))
        #expect(directory.entries == ["iommu-policyd.prom"])
    }

    @Test func thePeriodicWriterWritesAtStartOnEachTickAndAtStop() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let path = directory.path + "/iommu-policyd.prom"
        let metrics = DaemonMetrics()
        let exporter = TextfileExporter(metrics: metrics)

        metrics.setSessions(1)
        try exporter.start(every: .milliseconds(20), path: path)
        #expect(read(path).map(samples)?["iommu_policyd_sessions"] == "1.0")

        metrics.setSessions(2)
        #expect(eventually { read(path).map(samples)?["iommu_policyd_sessions"] == "2.0" })

        // Far longer than the period, but the stop still writes it.
        metrics.setSessions(3)
        try exporter.stop()
        #expect(read(path).map(samples)?["iommu_policyd_sessions"] == "3.0")

        metrics.setSessions(4)
        Thread.sleep(forTimeInterval: 0.1)
        #expect(read(path).map(samples)?["iommu_policyd_sessions"] == "3.0", "written after stop")
        #expect(directory.entries == ["iommu-policyd.prom"])
        try exporter.stop()  // a second stop does nothing
    }

    @Test func startOnABadPathThrowsAndStartsNothing() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let path = directory.path + "/absent/iommu-policyd.prom"
        let exporter = TextfileExporter(metrics: DaemonMetrics())

        let error = try #require(throws: TextfileExportError.self) {
            try exporter.start(every: .milliseconds(10), path: path)
        }
        #expect(error.path == path)
        try exporter.stop()
    }

    @Test func aTickThatFailsReportsToOnErrorAndKeepsRunning() throws {
        let directory = try ScratchDirectory()
        defer { directory.remove() }
        let path = directory.path + "/iommu-policyd.prom"
        let exporter = TextfileExporter(metrics: DaemonMetrics())
        let errors = Mutex<[TextfileExportError]>([])

        try exporter.start(every: .milliseconds(10), path: path) { error in errors.withLock { $0.append(error) } }
        directory.remove()
        #expect(eventually { errors.withLock { !$0.isEmpty } })
        #expect(errors.withLock { $0.first?.path } == path)

        // The directory comes back; the next tick writes again.
        try FileManager.default.createDirectory(atPath: directory.path, withIntermediateDirectories: false)
        #expect(eventually { read(path) != nil })
        try exporter.stop()
    }
}
