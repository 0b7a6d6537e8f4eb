import IOMMUBackends
import IOMMUCore
import Testing

@Suite("Translation: hits, misses, permissions, MSI and aperture edges")
struct TranslationTests {
    @Test func translationHitsTheFirstAndLastByteOfAMappingAndMissesOneByteEitherSide() throws {
        let (sim, context) = try makeSimulator()
        let mapped = range(0x1000_0000, size: 3 * page4K)
        try sim.map(mapped, memory: memory(7, 0x5000), protection: .readWrite, in: context)

        let first = try sim.translate(iova: mapped.first, access: .read, in: context).get()
        #expect(first.memory == memory(7, 0x5000))
        #expect(first.pageSize == page4K)
        #expect(first.page == range(0x1000_0000, size: page4K))
        let last = try sim.translate(iova: mapped.last, access: .write, in: context).get()
        #expect(last.memory == memory(7, 0x7fff))
        #expect(last.page == range(0x1000_2000, size: page4K))

        #expect(sim.translate(iova: mapped.first - 1, access: .read, in: context) == .failure(.notMapped))
        #expect(sim.translate(iova: mapped.last + 1, access: .read, in: context) == .failure(.notMapped))
    }

    @Test func translationInsideA2MPageAddsTheOffsetWithinThePage() throws {
        let (sim, context) = try makeSimulator()
        try sim.map(range(page2M, size: page2M), memory: memory(3, 4 * page2M), protection: .read, in: context)
        let hit = try sim.translate(iova: page2M + 0x12345, access: .read, in: context).get()
        #expect(hit.pageSize == page2M)
        #expect(hit.memory == memory(3, 4 * page2M + 0x12345))
    }

    @Test func writesToReadOnlyPagesAndReadsOfWriteOnlyPagesFault() throws {
        let (sim, context) = try makeSimulator()
        try sim.map(range(0x10000, size: page4K), memory: memory(1, 0), protection: .read, in: context)
        try sim.map(range(0x20000, size: page4K), memory: memory(1, 0), protection: .write, in: context)
        #expect((try? sim.translate(iova: 0x10010, access: .read, in: context).get()) != nil)
        #expect(sim.translate(iova: 0x10010, access: .write, in: context) == .failure(.permission))
        #expect(sim.translate(iova: 0x10010, access: .readWrite, in: context) == .failure(.permission))
        #expect(sim.translate(iova: 0x20010, access: .read, in: context) == .failure(.permission))
        #expect((try? sim.translate(iova: 0x20010, access: .write, in: context).get()) != nil)
    }

    @Test func theMSIWindowIsNeverTranslatedEvenWhenAPTEWasInstalledThere() throws {
        // A kernel that does not check reserved regions lets the PTE in; the hardware still
        // treats the window as interrupts.
        let (sim, context) = try makeSimulator(enforcesReservedRanges: false)
        let window = SimulatedIOMMU.GroupConfig.x86MSIWindow
        try sim.map(range(0xfe00_0000, size: 0x200_0000), memory: memory(1, 0), protection: .readWrite, in: context)
        #expect(sim.translate(iova: window.first, access: .read, in: context) == .failure(.msiWindow))
        #expect(sim.translate(iova: window.last, access: .write, in: context) == .failure(.msiWindow))
        #expect((try? sim.translate(iova: window.first - 1, access: .read, in: context).get()) != nil)
        #expect((try? sim.translate(iova: window.last + 1, access: .read, in: context).get()) != nil)
        // Such a kernel reports no reserved ranges either.
        #expect(sim.info(of: context)?.usableRanges == [PageSizes.aperture(bits: 48)!])
    }

    @Test func theMSIWindowFaultsAsInterruptsWhenNothingIsMappedToo() throws {
        let (sim, context) = try makeSimulator()
        #expect(sim.translate(iova: 0xfee0_0000, access: .read, in: context) == .failure(.msiWindow))
        #expect(sim.translate(iova: 0xfed0_0000, access: .read, in: context) == .failure(.notMapped))
    }

    @Test func mapsOverlappingTheMSIWindowOrAReservedRangeAreRefusedWithEINVAL() throws {
        let config = SimulatedIOMMU.GroupConfig(
            aperture: PageSizes.aperture(bits: 39)!, msiWindow: SimulatedIOMMU.GroupConfig.x86MSIWindow,
            reservedRanges: [range(0x100_0000, size: 0x10_0000)])
        let (sim, context) = try makeSimulator(groups: [1: config])
        let msi = failure {
            try sim.map(
                range(0xfef0_0000 - page4K, size: 2 * page4K), memory: memory(1, 0), protection: .read,
                in: context)
        }
        #expect(msi?.errno == .EINVAL)
        #expect(msi?.description.contains("msi window 0xfee00000-0xfeefffff of group 1") == true)
        #expect(
            errno {
                try sim.map(range(0xff_f000, size: 2 * page4K), memory: memory(1, 0), protection: .read, in: context)
            }
                == .EINVAL)
        #expect(
            sim.info(of: context)?.usableRanges == [
                IOVARange(first: 0, last: 0xff_ffff)!, IOVARange(first: 0x110_0000, last: 0xfedf_ffff)!,
                IOVARange(first: 0xfef0_0000, last: (1 << 39) - 1)!,
            ])
        #expect(sim.mappedBytes(in: context) == 0)
    }

    @Test func theLastPageOfA48BitApertureMapsAndTheNextPageIsRefused() throws {
        let (sim, context) = try makeSimulator()
        let top: UInt64 = 1 << 48
        try sim.map(range(top - page4K, size: page4K), memory: memory(1, 0), protection: .readWrite, in: context)
        #expect((try? sim.translate(iova: top - 1, access: .write, in: context).get())?.memory == memory(1, 0xfff))
        #expect(sim.translate(iova: top, access: .read, in: context) == .failure(.outsideAperture))
        #expect(
            errno { try sim.map(range(top, size: page4K), memory: memory(1, 0), protection: .read, in: context) }
                == .EINVAL)
        #expect(
            errno {
                try sim.map(
                    range(top - 2 * page4K, size: 2 * page4K), memory: memory(1, 0), protection: .read, in: context)
            }
                == .EEXIST)
        // Beyond the aperture is refused before any overlap is looked for.
        #expect(
            errno {
                try sim.map(
                    range(top - 2 * page4K, size: 3 * page4K), memory: memory(1, 0), protection: .read, in: context)
            }
                == .EINVAL)
    }

    @Test func aFull64BitApertureMapsTranslatesAndUnmapsTheVeryLastPageOf2To64() throws {
        let (sim, context) = try makeSimulator(groups: [1: .init(aperture: .all)])
        let lastPage = IOVARange(first: UInt64.max - page4K + 1, last: UInt64.max)!
        try sim.map(lastPage, memory: memory(9, 0), protection: .readWrite, in: context)
        #expect((try? sim.translate(iova: UInt64.max, access: .write, in: context).get())?.memory == memory(9, 0xfff))
        #expect(sim.pages(in: context).map(\.range) == [lastPage])
        #expect(sim.checkInvariants() == nil)
        #expect(try sim.unmap(lastPage, in: context) == page4K)
        #expect(sim.translate(iova: UInt64.max, access: .read, in: context) == .failure(.notMapped))

        // The top 1G page too, and an unmap of the whole space that finds it.
        let lastGig = IOVARange(first: UInt64.max - page1G + 1, last: UInt64.max)!
        try sim.map(lastGig, memory: memory(9, 0), protection: .read, in: context)
        #expect(sim.pteCount(in: context) == [page1G: 1])
        #expect(try sim.unmap(.all, in: context) == page1G)
        #expect(sim.mappedBytes(in: context) == 0)
        #expect(sim.checkInvariants() == nil)
    }

    @Test func contextsWithoutADomainTranslateNothing() throws {
        let sim = SimulatedIOMMU(groups: [1: .x86()])
        let context = try sim.createContext()
        #expect(sim.translate(iova: 0, access: .read, in: context) == .failure(.noDomain))
        #expect(sim.translate(iova: 0, access: .read, in: BackendContextID(rawValue: 99)) == .failure(.noDomain))
    }
}
