import Foundation
import PolicyClient
import Testing

/// `iommu-policyctl --socket …` as a separate process, against the real daemon.
@Suite(.serialized) struct CommandLineTenantTests {
    let ctl = DaemonProcess.binary("iommu-policyctl")

    @Test func rangesMapAndExplainTalkToTheDaemon() throws {
        let daemon = try DaemonProcess(arguments: ["--profile", "x86-intel", "--aperture-bits", "39"])
        let ranges = try run(ctl, ["--socket", daemon.socketPath, "ranges", "--group", "0", "--json"])
        #expect(ranges.status == 0, "\(ranges.stderr)")
        #expect(ranges.stdout.contains("\"usable\":[[0,4276092927],[4277141504,549755813887]]"))

        let mapped = try run(
            ctl,
            ["--socket", daemon.socketPath, "map", "--group", "0", "--iova", "0x100000", "--size", "0x4000", "--memfd"])
        #expect(mapped.status == 0, "\(mapped.stdout)\(mapped.stderr)")
        #expect(mapped.stdout == "mapped\n")

        let denied = try run(
            ctl, ["--socket", daemon.socketPath, "map", "--iova", "0xfee00000", "--size", "0x1000", "--json"])
        #expect(denied.status == 1)
        #expect(denied.stdout.contains("\"errno\":22"))
        #expect(denied.stdout.contains("\"kind\":\"msi\""))

        let explained = try run(
            ctl, ["--socket", daemon.socketPath, "explain", "--iova", "0x8000000000", "--size", "0x1000", "--json"])
        #expect(explained.status == 1)
        #expect(explained.stdout.contains("\"kind\":\"outside-aperture\""))
        let allowed = try run(ctl, ["explain", "--socket", daemon.socketPath, "--iova", "0x1000", "--size", "0x1000"])
        #expect(allowed.status == 0)
        #expect(allowed.stdout == "allow\n")
    }

    @Test func aKilledTenantProcessLosesItsMappingsAndGroup() throws {
        let daemon = try DaemonProcess()
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: ctl)
        holder.arguments = [
            "--socket", daemon.socketPath, "map", "--group", "0", "--iova", "0x200000", "--size", "0x200000", "--memfd",
            "--hold", "60",
        ]
        holder.standardOutput = FileHandle.nullDevice
        try holder.run()
        try daemon.eventually("the other process's mapping") { daemon.log.contains("mapped 0x200000-0x3fffff") }
        let client = try daemon.client()
        #expect(throws: PolicyError.self) { try client.attach(group: 0) }
        kill(holder.processIdentifier, SIGKILL)
        holder.waitUntilExit()
        try daemon.eventually("the killed tenant's group to be released") { (try? client.attach(group: 0)) != nil }
        try client.map(iova: 0x200000, size: 0x200000)
    }

    @Test func theDaemonRefusesToStartOnAnUnknownBackendOrBadConfig() throws {
        let daemon = DaemonProcess.binary("iommu-policyd")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("policyd-bad-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let backend = try run(daemon, ["--socket", dir + "/s", "--backend", "teleport"])
        #expect(backend.status == 2)
        #expect(backend.stderr.contains("teleport"))
        try "[defaults]\nmax_sessions = \"many\"\n".write(toFile: dir + "/p.toml", atomically: true, encoding: .utf8)
        let config = try run(daemon, ["--socket", dir + "/s", "--config", dir + "/p.toml"])
        #expect(config.status == 2)
        #expect(config.stderr.contains("line 2"))
    }
}

@Suite(.serialized) struct AuditTrailTests {
    @Test func aDeniedMapIsOneRecordWithEveryField() throws {
        let daemon = try DaemonProcess()
        let client = try daemon.client()
        #expect(throws: PolicyError.self) { try client.map(iova: 0xfee0_0000, size: 0x1000) }
        try daemon.eventually("the denial's record") { daemon.log.contains("audit.event=map-denied") }
        let records = daemon.log.split(separator: "\n").filter { $0.contains("audit.event=map-denied") }
        #expect(records.count == 1)
        let record = String(records[0])
        for field in [
            "tenant.uid=0", "tenant.pid=\(getpid())", "iommu.group=0", "dma.iova=0xfee00000", "dma.size=0x1000",
            "decision=deny", "errno=22", "reason=overlaps msi region", "region.kind=msi",
            "region.source=profile x86-intel",
        ] {
            #expect(record.contains(field), "\(field) missing from \(record)")
        }
    }

    @Test func anIdleSessionIsClosedWhenAnIdleTimeoutIsSet() throws {
        let daemon = try DaemonProcess(config: "[defaults]\nidle_timeout = 0.3\n")
        let raw = try RawConnection(daemon.socketPath)
        #expect(try raw.errno(for: RawConnection.version()) == 0)
        #expect(try raw.isClosedByPeer())
        try daemon.eventually("the timeout's record") { daemon.log.contains("timed out waiting for a request") }
    }
}
