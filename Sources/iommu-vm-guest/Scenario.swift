import PolicyClient
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Issue 6's guest scenario, run as the (non-root) tenant against a daemon serving the real
/// kernel's IOMMU. Each step prints its checks; `run` ends with the summary line.
final class Scenario {
    struct Options {
        var mode: Mode
        var socket: String
        var daemonLog: String
        var uid: UInt32
        var gid: UInt32
    }

    /// IOVAs of the two DMA regions: below 256 MiB, because edu masks DMA addresses to 28 bits.
    static let iovaA: UInt64 = 0x0200_0000
    static let iovaB: UInt64 = 0x0300_0000
    static let iovaHeld: UInt64 = 0x0400_0000
    static let page: UInt64 = 4096

    let options: Options
    let checks = Checks()
    let edu: PCIDevice
    let testdev: PCIDevice
    let kernelLog: KernelLog

    /// Must be called as root: it opens /dev/kmsg before the caller drops privileges.
    init(options: Options) throws {
        self.options = options
        edu = try PCIDevice.find(Edu.vendorDevice)
        testdev = try PCIDevice.find("1b36:0005")
        kernelLog = try KernelLog()
    }

    func run() -> Int32 {
        var release = utsname()
        uname(&release)
        let kernel = withUnsafeBytes(of: release.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        say("scenario: mode \(options.mode.rawValue), kernel \(kernel), uid \(getuid()) gid \(getgid())")
        say(
            "scenario: edu \(edu.address) group \(edu.group) BAR0 \(edu.bar0.map { hex($0) } ?? "none");"
                + " pci-testdev \(testdev.address) group \(testdev.group)")
        step("tenant") { try tenantIsolation() }
        step("ranges") { try ranges() }
        step("dma") { try dmaAndDenials() }
        step("kill") { try killedTenant() }
        step("differential") { try differential() }
        say(checks.summary)
        return checks.failed == 0 ? 0 : 1
    }

    private func step(_ name: String, _ body: () throws -> Void) {
        say("--- \(name)")
        do { try body() } catch { checks.fail("\(name): step aborted", error) }
    }

    // MARK: The tenant is not root and, in daemon mode, cannot reach the device itself

    func tenantIsolation() throws {
        checks.check("tenant runs unprivileged", getuid() == options.uid && geteuid() != 0, "uid \(getuid())")
        guard options.mode == .daemon else { return }
        let fd = open("/dev/vfio/\(edu.group)", O_RDWR | O_CLOEXEC)
        if fd >= 0 { Glibc.close(fd) }
        checks.check(
            "the tenant cannot open edu's group itself", fd < 0 && errno == EACCES,
            fd < 0 ? "open /dev/vfio/\(edu.group): \(errnoName(errno))" : "open succeeded")
        // With VFIO_DEVICE_CDEV (the iommufd kernel) the device has a node of its own too.
        if let cdev = edu.cdev, exists(cdev) {
            let fd = open(cdev, O_RDWR | O_CLOEXEC)
            if fd >= 0 { Glibc.close(fd) }
            checks.check(
                "the tenant cannot open edu's VFIO cdev itself", fd < 0 && errno == EACCES,
                fd < 0 ? "open \(cdev): \(errnoName(errno))" : "open succeeded")
        }
    }

    // MARK: QUERY_RANGES against the kernel's IOVA_RANGE

    func ranges() throws {
        let session = try TenantSession(mode: options.mode, socket: options.socket, group: edu.group)
        defer { session.close() }
        checks.check("attach edu's group \(edu.group)", true)
        let reply = try session.client.ranges()
        // The kernel's own answer: edu's group itself in direct mode; in daemon mode the daemon
        // holds edu's group, so pci-testdev's, which on q35 has the same reserved regions.
        let kernelView: Type1Info
        let viewName: String
        if let own = session.own {
            kernelView = try own.info()
            viewName = "VFIO_IOMMU_GET_INFO on edu's group \(edu.group) (own container)"
        } else {
            kernelView = try OwnContainer(group: testdev.group).info()
            viewName = "VFIO_IOMMU_GET_INFO on pci-testdev's group \(testdev.group) (own container)"
        }
        let peer = reply.reserved.filter { $0.kind == "peer-mmio" }.map { (first: $0.first, last: $0.last) }
        let expected = subtract(kernelView.ranges, peer)
        say("kernel IOVA_RANGE (\(viewName)): \(hex(kernelView.ranges)), pgsizes \(hex(kernelView.pageSizes))")
        say("daemon peer-mmio windows: \(hex(peer))")
        say("daemon usable: \(hex(reply.usable))")
        checks.check(
            "QUERY_RANGES usable == kernel IOVA_RANGE minus the daemon's peer-mmio windows",
            equal(reply.usable, expected), "expected \(hex(expected))")
        let kernelSpan = kernelView.ranges.first.map { first in (first: first.first, last: kernelView.ranges.last!.last)
        }
        checks.check(
            "QUERY_RANGES aperture spans the kernel's ranges",
            reply.aperture.map { $0.first == kernelSpan?.first && $0.last == kernelSpan?.last } ?? false,
            "daemon \(reply.aperture.map { hex($0) } ?? "null"), kernel \(kernelSpan.map { hex($0) } ?? "none")")
        checks.check(
            "QUERY_RANGES pgsizes == kernel iova_pgsizes", reply.pageSizes == kernelView.pageSizes,
            "daemon \(hex(reply.pageSizes)), kernel \(hex(kernelView.pageSizes))")
        checks.check(
            "peer-mmio includes edu's own BAR0",
            edu.bar0.map { bar in peer.contains { $0.first <= bar.first && bar.last <= $0.last } } ?? false)
    }

    // MARK: DMA through the mappings, denials, and DMA after unmap

    func dmaAndDenials() throws {
        let session = try TenantSession(mode: options.mode, socket: options.socket, group: edu.group)
        defer { session.close() }
        let a = try SharedMemory(name: "A", size: Self.page)
        let b = try SharedMemory(name: "B", size: Self.page)
        let first = pattern(0xA5)
        try a.fill(first)
        try b.fill([UInt8](repeating: 0xEE, count: Int(Self.page)))
        try session.map(a, iova: Self.iovaA)
        try session.map(b, iova: Self.iovaB)
        checks.check("map A at \(hex(Self.iovaA)) and B at \(hex(Self.iovaB)) (4 KiB memfds)", true)

        let fd = try session.deviceFD(edu)
        defer { Glibc.close(fd) }
        let device = try Edu(device: fd)
        let id = try device.read32(Edu.identification)
        try device.write32(Edu.liveness, 0x1234_5678)
        let live = try device.read32(Edu.liveness)
        checks.check(
            "edu device fd from \(session.deviceSource): BAR0 answers",
            id & 0xff == 0xed && live == ~UInt32(0x1234_5678),
            "id \(hex(UInt64(id))), liveness \(hex(UInt64(live))), BAR0 region offset \(hex(device.bar0.offset)) size \(hex(device.bar0.size))"
        )
        let command = try device.enableBusMaster()
        checks.check("bus mastering enabled in config space", command & 0x4 != 0, "command \(hex(UInt64(command)))")

        let took = try device.copy(from: Self.iovaA, to: Self.iovaB, count: Self.page)
        let arrived = try b.contents(Int(Self.page))
        checks.check(
            "edu DMA A -> buffer 0x40000 -> B: the pattern arrived in B's memfd", arrived == first,
            "B holds \(describe(arrived)) after \(took) ms")

        denials(session)

        try session.unmap(iova: Self.iovaA, size: Self.page)
        checks.check("unmap A", true)
        let second = pattern(0x3C)
        try a.fill(second)
        _ = kernelLog.newMessages()
        // The read leg: edu reads A's IOVA, which no longer translates, then writes its buffer
        // to B. QEMU completes a faulted DMA read with zeros, so B gets zeros, not A's bytes.
        _ = try device.copy(from: Self.iovaA, to: Self.iovaB, count: Self.page)
        let afterRead = try b.contents(Int(Self.page))
        checks.check("DMA from unmapped A: A's new pattern did not reach B", afterRead != second, describe(afterRead))
        checks.check(
            "DMA from unmapped A: B holds what it had or the faulted read's zeros, nothing of A",
            afterRead == first || afterRead.allSatisfy { $0 == 0 },
            afterRead == first
                ? "B kept what it had" : "B holds \(describe(afterRead)) (QEMU's data for a faulted read)")
        expectFault("DMA Read", at: Self.iovaA)
        // The write leg: edu loads a new pattern from B (still mapped) and writes it to A.
        let third = pattern(0xC3)
        try b.fill(third)
        _ = try device.copy(from: Self.iovaB, to: Self.iovaA, count: Self.page)
        let afterWrite = try a.contents(Int(Self.page))
        checks.check(
            "DMA into unmapped A: A keeps what it had", afterWrite == second,
            afterWrite == second ? "A holds its own pattern, not B's" : "A holds \(describe(afterWrite))")
        expectFault("DMA Write", at: Self.iovaA)
        try session.unmap(iova: Self.iovaB, size: Self.page)
    }

    /// Checks that the kernel logged an IOMMU fault of `kind` ("DMA Read", "DMA Write") for edu
    /// at `iova`: intel-iommu prints "DMAR: [DMA Read NO_PASID] Request device [00:01.0] fault
    /// addr 0x2000000 [fault reason 0x06] PTE Read access is not set".
    func expectFault(_ kind: String, at iova: UInt64) {
        let slot = edu.address.split(separator: ":", maxSplits: 1).last.map(String.init) ?? edu.address
        var faults: [String] = []
        for _ in 0..<100 {
            faults += kernelLog.newMessages().filter { $0.contains("DMAR") && $0.contains("fault addr") }
            if faults.contains(where: { $0.contains(kind) }) { break }
            usleep(20_000)
        }
        let match = faults.first { $0.contains(kind) && $0.contains(slot) && $0.contains("fault addr \(hex(iova))") }
        checks.check(
            "the kernel logged a DMAR fault (\(kind)) for edu at \(hex(iova))", match != nil,
            match ?? (faults.isEmpty ? "no DMAR fault in the kernel log" : faults.joined(separator: " | ")))
    }

    /// Maps the kernel would also refuse, which the daemon must refuse itself, before any
    /// kernel call, with its own reason.
    func denials(_ session: TenantSession) {
        let msi: UInt64 = 0xfee0_0000
        let apertureEnd: UInt64 = 0x80_0000_0000
        var cases: [(name: String, iova: UInt64, size: UInt64, kind: String)] = [
            ("at the MSI window", msi, Self.page, "msi"),
            ("straddling the MSI window's start", msi - Self.page, 2 * Self.page, "msi"),
            ("straddling the MSI window's end", msi + 0x10_0000 - Self.page, 2 * Self.page, "msi"),
            ("beyond the aperture", apertureEnd, Self.page, "outside-aperture"),
            ("straddling the aperture's end", apertureEnd - Self.page, 2 * Self.page, "outside-aperture"),
        ]
        if let bar = edu.bar0 { cases.append(("over edu's own BAR0", bar.first, Self.page, "peer-mmio")) }
        let memory = try? SharedMemory(name: "denied", size: 2 * Self.page)
        for entry in cases {
            let name = "map \(entry.name) (\(hex(entry.iova)), \(hex(entry.size))) denied"
            do {
                try session.client.map(iova: entry.iova, size: entry.size, memory: memory?.fd)
                checks.check(name, false, "the daemon allowed it")
            } catch let error as PolicyError {
                checks.check(
                    name,
                    error.errno == EINVAL && error.conflict?.kind == entry.kind
                        && !(error.reason ?? "").hasPrefix("kernel"),
                    error.description)
            } catch {
                checks.fail(name, error)
            }
        }
        // The audit trail: each denial is a map-denied record carrying the policy's conflict,
        // and no record about that IOVA names a kernel call.
        for entry in cases {
            let name = "audit: \(entry.name) denied by policy, kernel not called"
            let iova = "dma.iova=\(hex(entry.iova))"
            var records: [String] = []
            for _ in 0..<100 {
                records = (readText(options.daemonLog) ?? "").split(separator: "\n").map(String.init)
                    .filter { $0.contains(" \(iova) ") || $0.hasSuffix(" \(iova)") }
                if records.contains(where: { $0.contains("audit.event=map-denied") }) { break }
                usleep(20_000)
            }
            let denied = records.first { $0.contains("audit.event=map-denied") }
            let kernelCalls = records.filter { $0.lowercased().contains("kernel") }
            checks.check(
                name,
                denied.map {
                    $0.contains("decision=deny") && $0.contains("region.kind=\(entry.kind)")
                } == true && kernelCalls.isEmpty,
                denied.map { field("reason", in: $0) ?? $0 }
                    ?? "no map-denied record for \(iova) in \(options.daemonLog)")
        }
    }

    // MARK: A killed tenant's mappings are gone

    func killedTenant() throws {
        let arguments = [
            "hold", "--socket", options.socket, "--group", String(edu.group), "--iova", hex(Self.iovaHeld),
            "--mode", options.mode.rawValue,
        ]
        let child = try spawnSelf(arguments)
        defer { Glibc.close(child.stdout) }
        let line = readLine(child.stdout) ?? "(no output)"
        guard checks.check("a tenant process maps \(hex(Self.iovaHeld)) and holds it", line.hasPrefix("held"), line)
        else {
            kill(child.pid, SIGKILL)
            var status: Int32 = 0
            waitpid(child.pid, &status, 0)
            return
        }
        kill(child.pid, SIGKILL)
        var status: Int32 = 0
        waitpid(child.pid, &status, 0)
        checks.check("the tenant was killed (SIGKILL)", status & 0x7f == SIGKILL, "wait status \(status)")

        let session = try TenantSession(mode: options.mode, socket: options.socket, group: edu.group)
        defer { session.close() }
        checks.check(
            "a new session attaches edu's group", true,
            "after \(session.busyRetries) EBUSY retries of 20 ms")
        let c = try SharedMemory(name: "C", size: Self.page)
        let d = try SharedMemory(name: "D", size: Self.page)
        let third = pattern(0x5A)
        try c.fill(third)
        try d.fill([UInt8](repeating: 0xEE, count: Int(Self.page)))
        do {
            try session.map(c, iova: Self.iovaHeld)
            checks.check("the new session maps the same IOVA \(hex(Self.iovaHeld))", true)
        } catch {
            checks.fail("the new session maps the same IOVA \(hex(Self.iovaHeld))", error)
            return
        }
        // The IOVA now translates to the new session's memory, not the dead tenant's.
        try session.map(d, iova: Self.iovaB)
        let fd = try session.deviceFD(edu)
        defer { Glibc.close(fd) }
        let device = try Edu(device: fd)
        _ = try device.enableBusMaster()
        _ = try device.copy(from: Self.iovaHeld, to: Self.iovaB, count: Self.page)
        let arrived = try d.contents(Int(Self.page))
        checks.check(
            "DMA from \(hex(Self.iovaHeld)) reads the new session's memory", arrived == third, describe(arrived))
    }

    /// The child side of `killedTenant`: maps `iova` and waits to be killed.
    static func hold(mode: Mode, socket: String, group: UInt32, iova: UInt64) -> Int32 {
        do {
            let session = try TenantSession(mode: mode, socket: socket, group: group)
            let memory = try SharedMemory(name: "held", size: page)
            try memory.fill(pattern(0x77))
            try session.map(memory, iova: iova)
            say("held \(hex(iova)) in group \(group) as pid \(getpid())")
            while true { pause() }
        } catch {
            say("hold failed: \(error)")
            return 1
        }
    }

    // MARK: Helpers

    func field(_ key: String, in record: String) -> String? {
        guard let start = record.range(of: " \(key)=") else { return nil }
        let rest = record[start.upperBound...]
        // Values may hold spaces (reasons); the next key is a lower-case dotted word and `=`.
        var end = rest.endIndex
        for key in [" region.kind=", " region.source=", " session.id=", " tenant."] {
            if let next = rest.range(of: key), next.lowerBound < end { end = next.lowerBound }
        }
        return String(rest[..<end])
    }
}

/// `ranges` minus `holes`, both lists of inclusive ranges.
func subtract(_ ranges: [(first: UInt64, last: UInt64)], _ holes: [(first: UInt64, last: UInt64)])
    -> [(first: UInt64, last: UInt64)]
{
    var result = ranges.sorted { $0.first < $1.first }
    for hole in holes {
        var next: [(first: UInt64, last: UInt64)] = []
        for range in result {
            if hole.last < range.first || hole.first > range.last {
                next.append(range)
                continue
            }
            if hole.first > range.first { next.append((range.first, hole.first - 1)) }
            if hole.last < range.last { next.append((hole.last + 1, range.last)) }
        }
        result = next
    }
    return result
}

func equal(_ lhs: [(first: UInt64, last: UInt64)], _ rhs: [(first: UInt64, last: UInt64)]) -> Bool {
    lhs.count == rhs.count && zip(lhs, rhs).allSatisfy { $0.first == $1.first && $0.last == $1.last }
}
