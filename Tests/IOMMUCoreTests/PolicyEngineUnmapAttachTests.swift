import IOMMUCore
import Testing

@Suite struct PolicyEngineUnmapTests {
    let platform = Fixture.platform

    /// Mappings at 0x10000-0x1ffff, 0x30000-0x30fff and 0x31000-0x33fff.
    func populated(group: UInt32 = Fixture.plain) -> TenantState {
        var state = Fixture.state(attached: [group])
        for (iova, size): (UInt64, UInt64) in [(0x10000, 0x10000), (0x30000, 0x1000), (0x31000, 0x3000)] {
            let plan = try! PolicyEngine.decideMap(
                MapRequest(iova: iova, size: size), platform: platform, tenant: TenantPolicy(), state: state
            ).get()
            state.commit(plan)
        }
        return state
    }

    func unmap(_ iova: UInt64, _ size: UInt64, flags: UInt32 = 0, state: TenantState? = nil) -> Result<
        UnmapPlan, Denial
    > {
        PolicyEngine.decideUnmap(
            UnmapRequest(iova: iova, size: size, flags: flags), platform: platform, state: state ?? populated())
    }

    @Test func exactlyOneMappingIsRemovedWithItsBytes() throws {
        let plan = try unmap(0x10000, 0x10000).get()
        #expect(plan.bytes == 0x10000)
        #expect(plan.entries.map(\.range) == [IOVARange(first: 0x10000, last: 0x1ffff)!])
    }

    @Test func oneRangeMayRemoveSeveralWholeMappingsAcrossGaps() throws {
        let plan = try unmap(0x10000, 0x24000).get()
        #expect(plan.bytes == 0x14000)
        #expect(plan.entries.count == 3)
        var state = populated()
        state.commit(plan)
        #expect(state.mappingCount == 0)
        #expect(state.mappedBytes == 0)
    }

    @Test func aRangeThatCutsThroughAMappingAtEitherEndIsEINVAL() {
        #expect(unmap(0x10000, 0x1000).denial?.code == .partialUnmap)
        #expect(unmap(0x1f000, 0x1000).errno == .EINVAL)
        #expect(unmap(0x0, 0x11000).errno == .EINVAL)
        #expect(unmap(0x30000, 0x2000).errno == .EINVAL)
        #expect(unmap(0x30000, 0x2000).denial?.conflict == .mapping(IOVARange(first: 0x31000, last: 0x33fff)!))
    }

    @Test func aRangeThatHoldsNothingIsENOENTEvenRightBesideAMapping() {
        #expect(unmap(0xf000, 0x1000).errno == .ENOENT)
        #expect(unmap(0x20000, 0x1000).errno == .ENOENT)
        #expect(unmap(0x20000, 0x10000).denial?.code == .nothingMapped)
    }

    @Test func sizeZeroWrapAndMisalignmentAreRefused() {
        #expect(unmap(0x10000, 0).errno == .EINVAL)
        #expect(unmap(UInt64.max - 0xfff, 0x2000).errno == .EOVERFLOW)
        #expect(unmap(0x10800, 0x1000).errno == .EINVAL)
        #expect(unmap(0x10000, 0x800).denial?.code == .misaligned)
    }

    @Test func unknownFlagsAreEINVAL() {
        #expect(unmap(0x10000, 0x10000, flags: 1).errno == .EINVAL)
        #expect(unmap(0x10000, 0x10000, flags: 4).errno == .EINVAL)
    }

    @Test func unmapAllRemovesEverythingAndRequiresZeroIovaAndSize() throws {
        let plan = try unmap(0, 0, flags: UnmapRequest.unmapAllFlag).get()
        #expect(plan.entries.count == 3)
        #expect(plan.bytes == 0x14000)
        #expect(unmap(0x10000, 0, flags: UnmapRequest.unmapAllFlag).denial?.code == .unmapAllWithRange)
        #expect(unmap(0, 0x1000, flags: UnmapRequest.unmapAllFlag).errno == .EINVAL)
        let empty = Fixture.state(attached: [Fixture.plain])
        #expect((try unmap(0, 0, flags: UnmapRequest.unmapAllFlag, state: empty).get()).bytes == 0)
    }

    @Test func theLastPageOfThe64BitSpaceIsUnmappable() throws {
        var state = Fixture.state(attached: [Fixture.wide])
        let top = MapRequest(iova: UInt64.max - 0xfff, size: 0x1000)
        state.commit(try PolicyEngine.decideMap(top, platform: platform, tenant: TenantPolicy(), state: state).get())
        let plan = try unmap(UInt64.max - 0xfff, 0x1000, state: state).get()
        #expect(plan.bytes == 0x1000)
        #expect(unmap(UInt64.max - 0x1fff, 0x2000, state: state).errno == nil)
        #expect(unmap(UInt64.max - 0xfff, 0x800, state: state).errno == .EINVAL)
    }
}

@Suite struct PolicyEngineAttachTests {
    let platform = Fixture.platform

    func attach(_ group: UInt32, tenant: TenantPolicy = TenantPolicy(), state: TenantState = TenantState()) -> Result<
        AttachPlan, Denial
    > {
        PolicyEngine.decideAttach(group: group, platform: platform, tenant: tenant, state: state)
    }

    @Test func anUnknownGroupIsENOENT() {
        #expect(attach(99).errno == .ENOENT)
        #expect(attach(99).denial?.code == .unknownGroup)
    }

    @Test func aGroupThePolicyDoesNotListIsEPERM() {
        let tenant = TenantPolicy(groups: .only([Fixture.wide]))
        #expect(attach(Fixture.plain, tenant: tenant).denial?.code == .groupNotPermitted)
        #expect(attach(Fixture.plain, tenant: tenant).errno == .EPERM)
        #expect(attach(Fixture.wide, tenant: tenant).errno == nil)
    }

    @Test func aGroupWithAFirmwareDirectRegionIsEPERMWithTheKernelsReason() {
        let denial = attach(Fixture.direct).denial
        #expect(denial?.errno == .EPERM)
        #expect(denial?.code == .firmwareDirect)
        #expect(denial?.reason.contains("Firmware has requested this device have a 1:1 IOMMU mapping") == true)
        #expect(denial?.conflict == Conflict(kind: "direct", range: Fixture.rmrr, source: "DMAR RMRR #1 (03:00.0)"))
    }

    @Test func aRelaxableRegionDoesNotPreventAttach() {
        #expect(attach(Fixture.relaxable).errno == nil)
    }

    @Test func attachingTheSameGroupTwiceIsEBUSY() {
        let state = Fixture.state(attached: [Fixture.plain])
        #expect(attach(Fixture.plain, state: state).errno == .EBUSY)
    }

    @Test func aGroupWhoseRegionsCoverAnExistingMappingIsEINVAL() throws {
        var state = Fixture.state(attached: [Fixture.plain])
        state.commit(
            try PolicyEngine.decideMap(
                MapRequest(iova: 0x4000_0000, size: 0x1000), platform: platform, tenant: TenantPolicy(), state: state
            ).get())
        let denial = attach(Fixture.extra, state: state).denial
        #expect(denial?.code == .mappingsConflictGroup)
        #expect(denial?.errno == .EINVAL)
        #expect(attach(Fixture.hugeOnly, state: state).errno == .EINVAL)
        #expect(attach(Fixture.wide, state: state).errno == nil)
    }
}

@Suite struct UsableRangeTests {
    let platform = Fixture.platform

    @Test func aQ35GroupHasTheKernelsTwoUsableRanges() {
        // What VFIO's IOVA_RANGE capability reports in a q35 intel-iommu guest.
        #expect(
            platform.usableRanges(groups: [Fixture.plain], relaxable: .deny) == [
                IOVARange(first: 0, last: 0xfedf_ffff)!, IOVARange(first: 0xfef0_0000, last: 0x7f_ffff_ffff)!,
            ])
    }

    @Test func severalGroupsIntersect() {
        #expect(
            platform.usableRanges(groups: [Fixture.plain, Fixture.extra, Fixture.relaxable], relaxable: .deny) == [
                IOVARange(first: 0x100_0000, last: 0x3fff_ffff)!, IOVARange(first: 0x5000_0000, last: 0xfedf_ffff)!,
                IOVARange(first: 0xfef0_0000, last: 0x7f_ffff_ffff)!,
            ])
    }

    @Test func relaxableRegionsAreUsableWhenAllowed() {
        #expect(platform.usableRanges(groups: [Fixture.relaxable], relaxable: .allow).first?.first == 0)
        #expect(platform.usableRanges(groups: [Fixture.relaxable], relaxable: .deny).first?.first == 0x100_0000)
    }

    @Test func noGroupsOrAnUnknownGroupHaveNoUsableRange() {
        #expect(platform.usableRanges(groups: [], relaxable: .deny).isEmpty)
        #expect(platform.usableRanges(groups: [Fixture.plain, 77], relaxable: .deny).isEmpty)
    }

    @Test func theWideGroupReachesTheTopOfTheSpace() {
        #expect(platform.usableRanges(groups: [Fixture.wide], relaxable: .deny).last?.last == UInt64.max)
    }

    @Test func removingAnOwnersRegionsFreesTheirRanges() {
        var db = platform
        #expect(db.removeRegions(ownedBy: .config) == 1)
        #expect(
            db.usableRanges(groups: [Fixture.extra], relaxable: .deny)
                == db.usableRanges(groups: [Fixture.plain], relaxable: .deny))
        #expect(db.regions(group: Fixture.extra)?.contains { $0.owner == .config } == false)
    }

    @Test func outsideApertureRegionsAreListedWithTheApertureSource() {
        let outside = platform.regions(group: Fixture.plain)?.filter { $0.kind == .outsideAperture }
        #expect(outside?.map(\.range) == [IOVARange(first: 0x80_0000_0000, last: UInt64.max)!])
        #expect(platform.regions(group: Fixture.wide)?.contains { $0.kind == .outsideAperture } == false)
    }
}

@Suite struct TenantStateCommitTests {
    let platform = Fixture.platform
    let tenant = TenantPolicy()

    func map(_ iova: UInt64, into state: inout TenantState) throws {
        let request = MapRequest(iova: iova, size: 0x1000)
        state.commit(try PolicyEngine.decideMap(request, platform: platform, tenant: tenant, state: state).get())
    }

    /// A second plan decided against the same state once removed the mapping that reused the
    /// freed slot, and broke the byte count.
    @Test func aStaleUnmapPlanNeverRemovesAMappingThatReusedItsSlot() throws {
        var state = Fixture.state(attached: [Fixture.plain])
        try map(0x1000, into: &state)
        let first = try PolicyEngine.decideUnmap(
            UnmapRequest(iova: 0x1000, size: 0x1000), platform: platform, state: state
        ).get()
        let second = try PolicyEngine.decideUnmap(
            UnmapRequest(iova: 0x1000, size: 0x1000), platform: platform, state: state
        ).get()
        state.commit(first)
        try map(0x9000, into: &state)
        #expect(state.commit(second).isEmpty)
        #expect(state.mappings.entries.map(\.range) == [IOVARange(start: 0x9000, size: 0x1000)!])
        #expect(state.mappedBytes == 0x1000)
    }

    @Test func anIDKeptPastRemovalNoLongerResolves() {
        var tree = IntervalTree<Int>()
        let old = tree.insert(IOVARange(first: 0, last: 1)!, 1)
        tree.remove(old)
        let new = tree.insert(IOVARange(first: 0, last: 1)!, 2)
        #expect(tree[old] == nil)
        #expect(tree.remove(old) == nil)
        #expect(tree[new]?.value == 2)
    }

    @Test func detachingTheLastGroupDropsEveryMappingAsVFIODoes() throws {
        var state = Fixture.state(attached: [Fixture.plain, Fixture.wide])
        try map(0x1000, into: &state)
        #expect(state.detach(group: Fixture.wide).isEmpty)
        #expect(state.mappingCount == 1)
        #expect(state.detach(group: Fixture.plain).map(\.range) == [IOVARange(start: 0x1000, size: 0x1000)!])
        #expect(state.mappingCount == 0)
        #expect(state.mappedBytes == 0)
    }

    @Test func groupsWithNoPageSizeInCommonCannotBeAttachedTogether() throws {
        var db = PlatformDatabase()
        db.addGroup(IOMMUGroup(id: 0, aperture: .all, apertureSource: "t", pageSizes: 0x1000))
        db.addGroup(IOMMUGroup(id: 1, aperture: .all, apertureSource: "t", pageSizes: 0x20_0000))
        var state = TenantState()
        state.commit(try PolicyEngine.decideAttach(group: 0, platform: db, tenant: tenant, state: state).get())
        let denial = PolicyEngine.decideAttach(group: 1, platform: db, tenant: tenant, state: state).denial
        #expect(denial?.code == .pageSizesDisjoint)
        #expect(denial?.errno == .EINVAL)
    }
}
