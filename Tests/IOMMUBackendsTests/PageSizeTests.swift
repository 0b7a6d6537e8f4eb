import IOMMUBackends
import IOMMUCore
import Testing

@Suite("Page-size splitting follows iommu_pgsize")
struct PageSizeTests {
    @Test func aMappingStartingOnA4KBoundaryGrowsInto2MPagesAndShrinksBackAtItsEnd() throws {
        let (sim, context) = try makeSimulator()
        let first: UInt64 = 0x1ff000
        try sim.map(
            range(first, size: page4K + 2 * page2M + page4K), memory: memory(1, first), protection: .readWrite,
            in: context)
        #expect(
            sim.pages(in: context).map(\.range) == [
                range(0x1ff000, size: page4K), range(0x200000, size: page2M), range(0x400000, size: page2M),
                range(0x600000, size: page4K),
            ])
        #expect(sim.pteCount(in: context) == [page4K: 2, page2M: 2])
        #expect(sim.mappedBytes(in: context) == 2 * page4K + 2 * page2M)
        #expect(sim.checkInvariants() == nil)
    }

    @Test func aGigabyteAlignedMappingUses1GThen2MThen4KPages() throws {
        let (sim, context) = try makeSimulator()
        try sim.map(range(page1G, size: page1G + page2M + page4K), memory: memory(1, 0), protection: .read, in: context)
        #expect(sim.pteCount(in: context) == [page1G: 1, page2M: 1, page4K: 1])
        #expect(sim.pages(in: context).map(\.pageSize) == [page1G, page2M, page4K])
    }

    @Test func a64GiBGigabyteAlignedMappingUsesSixtyFour1GPTEs() throws {
        let (sim, context) = try makeSimulator()
        try sim.map(
            range(64 * page1G, size: 64 * page1G), memory: memory(1, 3 * page1G), protection: .readWrite,
            in: context)
        #expect(sim.pteCount(in: context) == [page1G: 64])
        #expect(sim.mappedBytes(in: context) == 64 << 30)
        #expect(
            sim.mappedExtents(in: context) == [
                SimulatedIOMMU.MappedExtent(
                    range: range(64 * page1G, size: 64 * page1G), memory: memory(1, 3 * page1G), protection: .readWrite)
            ])
    }

    @Test func anOffsetAlignedOnlyTo4KForcesEvery4KPageEvenAtA2MAlignedIOVA() throws {
        let (sim, context) = try makeSimulator()
        try sim.map(range(page2M, size: page2M), memory: memory(1, page4K), protection: .readWrite, in: context)
        #expect(sim.pteCount(in: context) == [page4K: 512])
    }

    @Test func anOffsetAlignedDifferentlyFromTheIOVALimitsThePageSizeToTheCommonAlignment() throws {
        let (sim, context) = try makeSimulator()
        // IOVA 1G-aligned, offset only 2M-aligned: 2M pages.
        try sim.map(range(page1G, size: page1G), memory: memory(1, page2M), protection: .readWrite, in: context)
        #expect(sim.pteCount(in: context) == [page2M: 512])
    }

    @Test func aBitmapWithout2MMapsA2MRangeAs4KPages() throws {
        let aperture = PageSizes.aperture(bits: 39)!
        let (sim, context) = try makeSimulator(
            groups: [1: .init(aperture: aperture, pageSizes: page4K | page1G)])
        try sim.map(range(page2M, size: page2M), memory: memory(1, page2M), protection: .readWrite, in: context)
        #expect(sim.pteCount(in: context) == [page4K: 512])
        try sim.map(range(page1G, size: page1G), memory: memory(1, page1G), protection: .readWrite, in: context)
        #expect(sim.pteCount(in: context) == [page4K: 512, page1G: 1])
        #expect(sim.checkInvariants() == nil)
    }

    @Test func anARMStyleBitmapUses64KPages() throws {
        let aperture = PageSizes.aperture(bits: 48)!
        let page64K: UInt64 = 0x10000
        let (sim, context) = try makeSimulator(
            groups: [1: .init(aperture: aperture, pageSizes: page4K | page64K | page2M)])
        try sim.map(range(0x30000, size: 0x200000), memory: memory(1, 0x30000), protection: .readWrite, in: context)
        // 0x30000-0x1fffff in 64K pages, then 0x200000-0x22ffff in 64K pages.
        #expect(sim.pteCount(in: context) == [page64K: 32])
        try sim.map(range(0x400000, size: page2M + page4K), memory: memory(1, 0), protection: .readWrite, in: context)
        #expect(sim.pteCount(in: context) == [page64K: 32, page2M: 1, page4K: 1])
        #expect(sim.checkInvariants() == nil)
    }

    @Test func aDomainWithTiny2KPagesLikeTheKernelMockMapsAtThatGranularity() throws {
        let (sim, context) = try makeSimulator(groups: [1: .init(aperture: .all, pageSizes: 0x800)])
        try sim.map(range(0x800, size: 0x1800), memory: memory(1, 0), protection: .readWrite, in: context)
        #expect(sim.pteCount(in: context) == [0x800: 3])
        #expect(throws: BackendError.self) {
            try sim.map(range(0x400, size: 0x800), memory: memory(1, 0), protection: .readWrite, in: context)
        }
    }
}
