import IOMMUBackends
import IOMMUCore
import PropertyBased
import Testing

@Suite("Injected faults leave the state exactly as before")
struct FaultInjectionTests {
    /// Two 4K pages up to a 2M boundary, two 2M pages up to 1G, a 1G page, then a 2M and a 4K
    /// page: 7 PTEs, with existing mappings touching both ends.
    static let mixed = IOVARange(first: page1G - 2 * page2M - 2 * page4K, last: 2 * page1G + page2M + page4K - 1)!

    static func populated() throws -> (SimulatedIOMMU, BackendContextID) {
        let (sim, context) = try makeSimulator()
        try sim.map(range(mixed.first - page4K, size: page4K), memory: memory(1, 0), protection: .read, in: context)
        try sim.map(range(mixed.last + 1, size: page4K), memory: memory(1, 0), protection: .read, in: context)
        return (sim, context)
    }

    @Test func aMapFailingAfterEveryPossibleNumberOfPagesLeavesNothingOfItMapped() throws {
        let (probe, probeContext) = try Self.populated()
        try probe.map(Self.mixed, memory: memory(2, Self.mixed.first), protection: .readWrite, in: probeContext)
        let ptes = probe.pages(in: probeContext).count - 2
        #expect(ptes == 7)

        for n in 0..<ptes {
            let (sim, context) = try Self.populated()
            let before = sim.snapshot()
            sim.injectFault(.failMap(afterPages: n, errno: .ENOMEM))
            let error = failure {
                try sim.map(Self.mixed, memory: memory(2, Self.mixed.first), protection: .readWrite, in: context)
            }
            #expect(error?.errno == .ENOMEM, "after \(n) pages")
            #expect(error?.operation == "simulated map")
            #expect(sim.snapshot() == before, "after \(n) pages")
            #expect(sim.pendingFaults == [])
            #expect(sim.checkInvariants() == nil)
            #expect(sim.translate(iova: Self.mixed.first, access: .read, in: context) == .failure(.notMapped))
        }
    }

    @Test func aFailMapBudgetCarriesOverSuccessfulMapsLikeFailNth() throws {
        let (sim, context) = try makeSimulator()
        sim.injectFault(.failMap(afterPages: 3, errno: .ENOSPC))
        try sim.map(range(0, size: 2 * page4K), memory: memory(1, 0), protection: .read, in: context)
        #expect(sim.pendingFaults == [.failMap(afterPages: 1, errno: .ENOSPC)])
        #expect(
            errno { try sim.map(range(page2M, size: 2 * page4K), memory: memory(1, 0), protection: .read, in: context) }
                == .ENOSPC)
        #expect(sim.pendingFaults == [])
        #expect(sim.pteCount(in: context) == [page4K: 2])
        try sim.map(range(page2M, size: 2 * page4K), memory: memory(1, 0), protection: .read, in: context)
    }

    @Test func validationErrorsComeBeforeAnInjectedFaultAndDoNotConsumeIt() throws {
        let (sim, context) = try makeSimulator()
        sim.injectFault(.failMapOnce(.EBUSY))
        #expect(
            errno { try sim.map(range(0x800, size: page4K), memory: memory(1, 0), protection: .read, in: context) }
                == .EINVAL)
        #expect(sim.pendingFaults == [.failMap(afterPages: 0, errno: .EBUSY)])
        #expect(
            errno { try sim.map(range(0, size: page4K), memory: memory(1, 0), protection: .read, in: context) }
                == .EBUSY)
        try sim.map(range(0, size: page4K), memory: memory(1, 0), protection: .read, in: context)
    }

    @Test func anInjectedUnmapFailureUnmapsNothingAndFiresOnce() throws {
        let (sim, context) = try Self.populated()
        try sim.map(Self.mixed, memory: memory(2, Self.mixed.first), protection: .readWrite, in: context)
        let before = sim.snapshot()
        sim.injectFault(.failUnmapOnce(.ENOMEM))
        let error = failure { _ = try sim.unmap(Self.mixed, in: context) }
        #expect(error?.description == "simulated unmap: ENOMEM: injected fault")
        #expect(sim.snapshot() == before)
        #expect(try sim.unmap(Self.mixed, in: context) == Self.mixed.sizeMinusOne + 1)
    }

    @Test func anInjectedAttachFailureLeavesTheGroupFreeAndTheDomainUnchanged() throws {
        let (sim, context) = try makeSimulator(
            groups: [1: .x86(), 2: .init(aperture: PageSizes.aperture(bits: 48)!, pageSizes: page4K)])
        try sim.map(range(0, size: page2M), memory: memory(1, 0), protection: .read, in: context)
        let before = sim.snapshot()
        sim.injectFault(.failAttach(.ENOMEM))
        #expect(errno { _ = try sim.attach(group: 2, to: context) } == .ENOMEM)
        #expect(sim.snapshot() == before)
        #expect(sim.context(of: 2) == nil)
        _ = try sim.attach(group: 2, to: context)
        #expect(sim.pteCount(in: context) == [page4K: 512])
    }

    @Test func anInjectedCreateContextFailureCreatesNothing() throws {
        let sim = SimulatedIOMMU(groups: [1: .x86()])
        sim.injectFault(.failCreateContext(.ENOMEM))
        #expect(errno { _ = try sim.createContext() } == .ENOMEM)
        #expect(sim.contexts == [])
        _ = try sim.createContext()
        sim.injectFault(.failUnmapOnce(.EBUSY))
        sim.clearFaults()
        #expect(sim.pendingFaults == [])
    }

    @Test func aRandomMapFailingAtARandomPageLeavesTheStateEqualToBefore() async throws {
        // Ranges of 1-2000 pages at 4K/2M-biased positions in a 4G window with mappings around.
        let start = Gen.uint64(in: 0...0xfffff)
        let alignment = Gen.element(of: [page4K, page2M, page1G])
        let pages = Gen.uint64(in: 1...2000)
        let nth = Gen.int(in: 0...40)
        await propertyCheck(count: 200, input: start, alignment, pages, nth) { start, alignment, pages, nth in
            let alignment = alignment ?? page4K
            let first = (start * page4K) & ~(alignment - 1)
            let request = range(first + page1G, size: pages * page4K)
            let (sim, context) = try makeSimulator()
            try sim.map(range(page1G - page4K, size: page4K), memory: memory(1, 0), protection: .read, in: context)
            try sim.map(range(3 * page1G, size: page2M), memory: memory(1, 0), protection: .read, in: context)
            let before = sim.snapshot()
            sim.injectFault(.failMap(afterPages: nth, errno: .ENOMEM))
            let outcome = errno { try sim.map(request, memory: memory(2, first), protection: .read, in: context) }
            if outcome == nil {
                #expect(sim.mappedBytes(in: context) == before[0].mappedBytes + request.sizeMinusOne + 1)
                let installed = sim.pages(in: context).count - 2
                #expect(installed <= nth)
                #expect(sim.pendingFaults == [.failMap(afterPages: nth - installed, errno: .ENOMEM)])
            } else {
                #expect(sim.snapshot() == before)
            }
            #expect(sim.checkInvariants() == nil)
        }
    }
}
