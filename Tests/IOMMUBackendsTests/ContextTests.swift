import IOMMUBackends
import IOMMUCore
import Testing

@Suite("Contexts, groups and the domain they share")
struct ContextTests {
    static let twoGroups: [UInt32: SimulatedIOMMU.GroupConfig] = [1: .x86(addressBits: 48), 2: .x86(addressBits: 39)]

    @Test func attachingAGroupThatBelongsToAnotherContextFailsWithEBUSY() throws {
        let (sim, first) = try makeSimulator(groups: Self.twoGroups)
        let second = try sim.createContext()
        let busy = failure { _ = try sim.attach(group: 1, to: second) }
        #expect(busy?.errno == .EBUSY)
        #expect(busy?.description == "simulated attach: EBUSY: group 1 is already attached to context 1")
        #expect(errno { _ = try sim.attach(group: 1, to: first) } == .EBUSY)
        #expect(sim.groups(in: second) == [])
        #expect(sim.context(of: 1) == first)
    }

    @Test func unknownGroupsAndContextsFailWithENOENT() throws {
        let (sim, context) = try makeSimulator()
        let ghost = BackendContextID(rawValue: 42)
        #expect(errno { _ = try sim.attach(group: 9, to: context) } == .ENOENT)
        #expect(errno { _ = try sim.attach(group: 1, to: ghost) } == .ENOENT)
        #expect(errno { try sim.detach(group: 9, from: context) } == .ENOENT)
        #expect(
            errno { try sim.map(range(0, size: page4K), memory: memory(1, 0), protection: .read, in: ghost) } == .ENOENT
        )
        #expect(errno { _ = try sim.unmap(range(0, size: page4K), in: ghost) } == .ENOENT)
    }

    @Test func mappingWithoutAnAttachedGroupFailsWithEINVAL() throws {
        let sim = SimulatedIOMMU(groups: [1: .x86()])
        let context = try sim.createContext()
        let error = failure {
            try sim.map(range(0, size: page4K), memory: memory(1, 0), protection: .read, in: context)
        }
        #expect(error?.errno == .EINVAL)
        #expect(error?.operation == "simulated map")
        #expect(try sim.unmap(range(0, size: page4K), in: context) == 0)
    }

    @Test func attachReportsTheIntersectionOfApertureAndPageSizesAndTheUsableRanges() throws {
        let groups: [UInt32: SimulatedIOMMU.GroupConfig] = [
            1: .x86(addressBits: 48),
            2: .init(
                aperture: PageSizes.aperture(bits: 39)!, pageSizes: page4K | page2M,
                msiWindow: SimulatedIOMMU.GroupConfig.x86MSIWindow, reservedRanges: [range(0, size: 0x100_0000)]),
        ]
        let sim = SimulatedIOMMU(groups: groups)
        let context = try sim.createContext()
        let one = try sim.attach(group: 1, to: context)
        #expect(one.aperture == PageSizes.aperture(bits: 48)!)
        #expect(one.pageSizes == PageSizes.x86)
        #expect(
            one.usableRanges == [
                IOVARange(first: 0, last: 0xfedf_ffff)!, IOVARange(first: 0xfef0_0000, last: (1 << 48) - 1)!,
            ])
        let both = try sim.attach(group: 2, to: context)
        #expect(both.aperture == PageSizes.aperture(bits: 39)!)
        #expect(both.pageSizes == page4K | page2M)
        #expect(
            both.usableRanges == [
                IOVARange(first: 0x100_0000, last: 0xfedf_ffff)!, IOVARange(first: 0xfef0_0000, last: (1 << 39) - 1)!,
            ])
        #expect(sim.info(of: context) == both)
        #expect(sim.checkInvariants() == nil)
    }

    @Test func attachingAGroupWhoseApertureExcludesAnExistingMappingFailsWithEINVALAndChangesNothing() throws {
        let (sim, context) = try makeSimulator(groups: Self.twoGroups)
        try sim.map(range(1 << 40, size: page2M), memory: memory(1, 0), protection: .readWrite, in: context)
        let before = sim.snapshot()
        let error = failure { _ = try sim.attach(group: 2, to: context) }
        #expect(error?.errno == .EINVAL)
        #expect(error?.detail.contains("outside group 2's aperture") == true)
        #expect(sim.snapshot() == before)
        #expect(sim.context(of: 2) == nil)
    }

    @Test func attachingAGroupWhoseReservedRangeHoldsAnExistingMappingFailsWithEINVAL() throws {
        let groups: [UInt32: SimulatedIOMMU.GroupConfig] = [
            1: .init(aperture: PageSizes.aperture(bits: 48)!),
            2: .x86(addressBits: 48),
        ]
        let (sim, context) = try makeSimulator(groups: groups)
        try sim.map(range(0xfee0_0000, size: page4K), memory: memory(1, 0), protection: .readWrite, in: context)
        #expect(errno { _ = try sim.attach(group: 2, to: context) } == .EINVAL)
        #expect(sim.groups(in: context) == [1])
    }

    @Test func attachingAGroupWithFewerPageSizesSplitsExistingPagesAndKeepsTranslations() throws {
        let groups: [UInt32: SimulatedIOMMU.GroupConfig] = [
            1: .x86(addressBits: 48),
            2: .init(aperture: PageSizes.aperture(bits: 48)!, pageSizes: page4K),
        ]
        let (sim, context) = try makeSimulator(groups: groups)
        try sim.map(range(page1G, size: page1G + page2M), memory: memory(5, 0), protection: .read, in: context)
        #expect(sim.pteCount(in: context) == [page1G: 1, page2M: 1])
        let extents = sim.mappedExtents(in: context)

        _ = try sim.attach(group: 2, to: context)
        #expect(sim.pteCount(in: context) == [page4K: 262_144 + 512])
        #expect(sim.mappedExtents(in: context) == extents)
        #expect((try? sim.translate(iova: page1G + 0x1234, access: .read, in: context).get())?.pageSize == page4K)
        #expect(sim.checkInvariants() == nil)

        // Detaching widens the bitmap again: old pages stay 4K, new maps may use 1G.
        try sim.detach(group: 2, from: context)
        #expect(sim.info(of: context)?.pageSizes == PageSizes.x86)
        #expect(sim.pteCount(in: context) == [page4K: 262_144 + 512])
        try sim.map(range(4 * page1G, size: page1G), memory: memory(5, 0), protection: .read, in: context)
        #expect(sim.pteCount(in: context) == [page4K: 262_144 + 512, page1G: 1])
        #expect(sim.checkInvariants() == nil)
    }

    @Test func attachingAGroupWhoseSmallestPageIsLargerThanExistingPagesFailsWithEINVAL() throws {
        let groups: [UInt32: SimulatedIOMMU.GroupConfig] = [
            1: .x86(addressBits: 48),
            2: .init(aperture: PageSizes.aperture(bits: 48)!, pageSizes: page2M),
        ]
        let (sim, context) = try makeSimulator(groups: groups)
        try sim.map(range(page2M, size: page2M + page4K), memory: memory(1, 0), protection: .read, in: context)
        let before = sim.snapshot()
        #expect(errno { _ = try sim.attach(group: 2, to: context) } == .EINVAL)
        #expect(sim.snapshot() == before)
    }

    @Test func groupsWithDisjointAperturesOrNoCommonPageSizeCannotShareAContext() throws {
        let groups: [UInt32: SimulatedIOMMU.GroupConfig] = [
            1: .init(aperture: IOVARange(first: 0, last: 0xffff_ffff)!),
            2: .init(aperture: IOVARange(first: 1 << 32, last: (1 << 33) - 1)!),
            3: .init(aperture: .all, pageSizes: 0x10000),
        ]
        let (sim, context) = try makeSimulator(groups: groups)
        #expect(errno { _ = try sim.attach(group: 2, to: context) } == .EINVAL)
        #expect(errno { _ = try sim.attach(group: 3, to: context) } == .EINVAL)
        #expect(sim.groups(in: context) == [1])
    }

    @Test func detachingTheLastGroupDropsEveryMappingAsVFIOType1Does() throws {
        let (sim, context) = try makeSimulator()
        try sim.map(range(0, size: page2M), memory: memory(1, 0), protection: .read, in: context)
        #expect(errno { try sim.detach(group: 1, from: BackendContextID(rawValue: 77)) } == .ENOENT)
        try sim.detach(group: 1, from: context)
        #expect(sim.mappedBytes(in: context) == 0)
        #expect(sim.info(of: context) == nil)
        #expect(errno { try sim.detach(group: 1, from: context) } == .EINVAL)
        _ = try sim.attach(group: 1, to: context)
        #expect(sim.pages(in: context) == [])
    }

    @Test func destroyContextReleasesItsGroupsAndMappings() throws {
        let (sim, context) = try makeSimulator(groups: Self.twoGroups, attached: [1, 2])
        try sim.map(range(page1G, size: page1G), memory: memory(1, 0), protection: .readWrite, in: context)
        sim.destroyContext(context)
        #expect(sim.contexts == [])
        #expect(sim.context(of: 1) == nil && sim.context(of: 2) == nil)
        #expect(sim.mappedBytes(in: context) == 0)
        #expect(sim.translate(iova: page1G, access: .read, in: context) == .failure(.noDomain))
        #expect(
            errno { try sim.map(range(0, size: page4K), memory: memory(1, 0), protection: .read, in: context) }
                == .ENOENT)

        let next = try sim.createContext()
        #expect(next != context)
        _ = try sim.attach(group: 2, to: next)
        #expect(sim.pages(in: next) == [])
        sim.destroyContext(context)  // already gone: ignored
        #expect(sim.checkInvariants() == nil)
    }
}

@Suite("Map and unmap refusals")
struct MapRefusalTests {
    @Test func misalignedRangesAndOffsetsFailWithEINVAL() throws {
        let (sim, context) = try makeSimulator()
        #expect(
            errno { try sim.map(range(0x800, size: page4K), memory: memory(1, 0), protection: .read, in: context) }
                == .EINVAL)
        #expect(
            errno { try sim.map(range(0, size: 0x1800), memory: memory(1, 0), protection: .read, in: context) }
                == .EINVAL)
        #expect(
            errno { try sim.map(range(0, size: page4K), memory: memory(1, 0x10), protection: .read, in: context) }
                == .EINVAL)
        #expect(errno { _ = try sim.unmap(range(0x10, size: page4K), in: context) } == .EINVAL)
    }

    @Test func emptyOrUnknownProtectionFailsWithEINVAL() throws {
        let (sim, context) = try makeSimulator()
        #expect(
            errno { try sim.map(range(0, size: page4K), memory: memory(1, 0), protection: [], in: context) } == .EINVAL)
        let exec = DMAProtection(rawValue: 1 << 2)
        #expect(
            errno { try sim.map(range(0, size: page4K), memory: memory(1, 0), protection: [.read, exec], in: context) }
                == .EINVAL)
    }

    @Test func anOffsetThatWrapsPast2To64FailsWithEOVERFLOW() throws {
        let (sim, context) = try makeSimulator()
        #expect(
            errno {
                try sim.map(
                    range(0, size: 2 * page4K), memory: memory(1, UInt64.max - page4K + 1), protection: .read,
                    in: context)
            }
                == .EOVERFLOW)
    }

    @Test func overlappingAnExistingPageFailsWithEEXISTAndLeavesBothMappingsAsTheyWere() throws {
        let (sim, context) = try makeSimulator()
        try sim.map(range(page2M, size: page2M), memory: memory(1, 0), protection: .read, in: context)
        try sim.map(range(0x10_0000, size: page4K), memory: memory(1, 0), protection: .read, in: context)
        let before = sim.snapshot()
        // Inside the 2M page, across its start, and a 2M-aligned range holding the 4K page.
        let inside = failure {
            try sim.map(range(page2M + page4K, size: page4K), memory: memory(2, 0), protection: .read, in: context)
        }
        #expect(inside?.errno == .EEXIST)
        #expect(inside?.detail == "0x201000-0x201fff overlaps existing 2M page 0x200000-0x3fffff")
        #expect(
            errno {
                try sim.map(
                    range(page2M - page4K, size: 2 * page4K), memory: memory(2, 0), protection: .read, in: context)
            }
                == .EEXIST)
        let holding = failure {
            try sim.map(range(0, size: page2M), memory: memory(2, 0), protection: .read, in: context)
        }
        #expect(holding?.detail == "0x0-0x1fffff overlaps existing 4K page 0x100000-0x100fff")
        // A map that installs pages before reaching the conflict takes them out again.
        #expect(
            errno { try sim.map(range(0, size: 2 * page2M), memory: memory(2, 0), protection: .read, in: context) }
                == .EEXIST)
        #expect(sim.snapshot() == before)
        #expect(sim.checkInvariants() == nil)
    }

    @Test func unmappingPartOfALargePageFailsWithEINVALAndUnmapsNothing() throws {
        let (sim, context) = try makeSimulator()
        try sim.map(range(0, size: page4K), memory: memory(1, 0), protection: .read, in: context)
        try sim.map(range(page2M, size: page2M), memory: memory(1, 0), protection: .read, in: context)
        let before = sim.snapshot()
        let cut = failure { _ = try sim.unmap(range(0, size: page2M + page4K), in: context) }
        #expect(cut?.errno == .EINVAL)
        #expect(cut?.description == "simulated unmap: EINVAL: 0x0-0x200fff cuts through the 2M page 0x200000-0x3fffff")
        #expect(sim.snapshot() == before)
    }

    @Test func unmapRemovesEveryPageInTheRangeAndReturnsTheirBytes() throws {
        let (sim, context) = try makeSimulator()
        try sim.map(range(0x1ff000, size: page4K + page2M), memory: memory(1, 0x1ff000), protection: .read, in: context)
        try sim.map(range(page1G, size: page1G), memory: memory(2, 0), protection: .read, in: context)
        try sim.map(range(3 * page1G, size: page4K), memory: memory(2, 0), protection: .read, in: context)
        #expect(try sim.unmap(range(0, size: 2 * page1G), in: context) == page4K + page2M + page1G)
        #expect(try sim.unmap(range(0, size: 2 * page1G), in: context) == 0)
        #expect(sim.pages(in: context).map(\.range) == [range(3 * page1G, size: page4K)])
        #expect(sim.checkInvariants() == nil)
    }

    @Test func mappedExtentsMergePagesThatAreContiguousInIOVAAndMemory() throws {
        let (sim, context) = try makeSimulator()
        try sim.map(range(0x1ff000, size: page4K + page2M), memory: memory(1, 0x1ff000), protection: .read, in: context)
        try sim.map(range(0x3ff000 + page4K, size: page4K), memory: memory(1, 0x400000), protection: .read, in: context)
        try sim.map(range(0x401000, size: page4K), memory: memory(1, 0x900000), protection: .read, in: context)
        try sim.map(range(0x402000, size: page4K), memory: memory(1, 0x901000), protection: .write, in: context)
        #expect(
            sim.mappedExtents(in: context) == [
                .init(range: range(0x1ff000, size: 0x202000), memory: memory(1, 0x1ff000), protection: .read),
                .init(range: range(0x401000, size: page4K), memory: memory(1, 0x900000), protection: .read),
                .init(range: range(0x402000, size: page4K), memory: memory(1, 0x901000), protection: .write),
            ])
    }
}
