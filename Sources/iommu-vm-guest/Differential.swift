import PolicyClient

#if canImport(Glibc)
    import Glibc
#endif

extension Scenario {
    /// One map request of the differential check.
    struct Request: Hashable {
        var iova: UInt64
        var size: UInt64
        var flags: UInt32 = 3
    }

    /// Asks the daemon (EXPLAIN, on a session holding edu's group) and the kernel (a real
    /// VFIO_IOMMU_MAP_DMA on a container holding pci-testdev's group, unmapped again at once)
    /// about the same requests near every boundary either side knows of. The daemon may refuse
    /// more (the peer-MMIO windows the kernel does not know); it must never allow what the
    /// kernel refuses.
    func differential() throws {
        let session = try PolicyClient(path: options.socket)
        defer { session.close() }
        _ = try session.attachRetryingBusy(group: edu.group)
        let reply = try session.ranges()
        let kernel = try OwnContainer(group: testdev.group)
        let info = try kernel.info()
        // Backing for the kernel's maps: pinning needs real pages for every size tried.
        let backing = try SharedMemory(name: "differential", size: 0x20_0000)

        var boundaries: Set<UInt64> = [0, 1 << 28, 1 << 32, 0xfee0_0000, 0xfef0_0000, 1 << 39, 1 << 48]
        for range in info.ranges + reply.usable {
            boundaries.insert(range.first)
            if range.last < .max { boundaries.insert(range.last + 1) }
        }
        for region in reply.reserved {
            boundaries.insert(region.first)
            if region.last < .max { boundaries.insert(region.last + 1) }
        }
        if let aperture = reply.aperture, aperture.last < .max { boundaries.insert(aperture.last + 1) }

        var requests: [Request] = []
        var seen: Set<Request> = []
        func add(_ request: Request) {
            if seen.insert(request).inserted { requests.append(request) }
        }
        for boundary in boundaries.sorted() {
            for delta: Int64 in [-0x20_0000, -0x2000, -0x1000, 0, 0x1000] {
                let (iova, overflow) =
                    delta < 0
                    ? boundary.subtractingReportingOverflow(UInt64(-delta))
                    : boundary.addingReportingOverflow(UInt64(delta))
                if overflow { continue }
                for size: UInt64 in [0x1000, 0x2000, 0x20_0000] { add(Request(iova: iova, size: size)) }
            }
        }
        // Requests every layer must refuse for their form, not their place.
        add(Request(iova: 0x10_0800, size: 0x1000))  // misaligned IOVA
        add(Request(iova: 0x10_0000, size: 0x1800))  // misaligned size
        add(Request(iova: 0x10_0000, size: 0))  // empty
        add(Request(iova: 0xffff_ffff_ffff_f000, size: 0x2000))  // wraps past 2^64
        add(Request(iova: 0xffff_ffff_ffff_f000, size: 0x1000))  // the last page of the space
        add(Request(iova: 0x10_0000, size: 0x1000, flags: 0))  // neither READ nor WRITE
        add(Request(iova: 0x10_0000, size: 0x1000, flags: 1 << 2))  // VADDR: only updates an existing mapping
        add(Request(iova: 0x10_0000, size: 0x1000, flags: 1 << 8))  // an unknown flag
        add(Request(iova: 0x10_0000, size: 0x1000, flags: 1))  // read-only: allowed
        add(Request(iova: 0x10_0000, size: 0x1000, flags: 2))  // write-only: allowed

        var bothAllow = 0
        var bothDeny = 0
        var errnoDiffers: [String] = []
        var daemonOnlyDeny: [String: Int] = [:]
        var kernelOnlyDeny: [String] = []
        var unmapProblems: [String] = []
        for request in requests {
            let decision: Explanation
            do {
                decision = try session.explain(iova: request.iova, size: request.size, flags: request.flags)
            } catch {
                kernelOnlyDeny.append("\(describe(request)): EXPLAIN failed: \(error)")
                continue
            }
            let kernelErrno = kernel.map(
                vaddr: backing.vaddr, iova: request.iova, size: request.size, flags: request.flags)
            if kernelErrno == 0 {
                let unmapped = kernel.unmap(iova: request.iova, size: request.size)
                if unmapped.errno != 0 || unmapped.bytes != request.size {
                    unmapProblems.append(
                        "\(describe(request)): unmap \(errnoName(unmapped.errno)), \(unmapped.bytes) bytes")
                }
            }
            switch (decision.allowed, kernelErrno == 0) {
            case (true, true): bothAllow += 1
            case (false, false):
                bothDeny += 1
                if decision.errno != kernelErrno {
                    errnoDiffers.append(
                        "\(describe(request)): daemon \(errnoName(decision.errno)), kernel \(errnoName(kernelErrno))")
                }
            case (false, true): daemonOnlyDeny[decision.conflict?.kind ?? errnoName(decision.errno), default: 0] += 1
            case (true, false):
                kernelOnlyDeny.append("\(describe(request)): kernel \(errnoName(kernelErrno))")
            }
        }

        let daemonDeniesKernelAllows = daemonOnlyDeny.values.reduce(0, +)
        say("differential: \(requests.count) requests near \(boundaries.count) boundaries")
        say("                  kernel allows  kernel refuses")
        say("  daemon allows   \(pad(bothAllow))  \(pad(kernelOnlyDeny.count))")
        say("  daemon denies   \(pad(daemonDeniesKernelAllows))  \(pad(bothDeny))")
        say(
            "  daemon-only denials by kind: "
                + daemonOnlyDeny.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        say("  both refuse, different errno: \(errnoDiffers.count)")
        for line in errnoDiffers.prefix(10) { say("    \(line)") }
        for line in kernelOnlyDeny { say("  DAEMON ALLOWED, KERNEL REFUSED: \(line)") }

        checks.check("differential: at least 200 requests", requests.count >= 200, "\(requests.count)")
        checks.check(
            "differential: the daemon never allows what the kernel refuses", kernelOnlyDeny.isEmpty,
            "\(kernelOnlyDeny.count) such requests")
        checks.check(
            "differential: the daemon refuses beyond the kernel only in peer-mmio windows",
            daemonOnlyDeny.keys.allSatisfy { $0 == "peer-mmio" }, "\(daemonOnlyDeny)")
        checks.check(
            "differential: every kernel map was unmapped whole", unmapProblems.isEmpty, unmapProblems.first ?? "")
        let left = try kernel.info().dmaAvailable
        checks.check(
            "differential: the kernel container is empty afterwards", left == nil || left == info.dmaAvailable,
            "DMA_AVAIL \(left.map(String.init) ?? "absent") (was \(info.dmaAvailable.map(String.init) ?? "absent"))")
    }

    private func describe(_ request: Request) -> String {
        "\(hex(request.iova))+\(hex(request.size))" + (request.flags == 3 ? "" : " flags \(request.flags)")
    }

    private func pad(_ count: Int) -> String {
        let text = String(count)
        return String(repeating: " ", count: max(0, 13 - text.count)) + text
    }
}
