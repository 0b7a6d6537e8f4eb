import IOMMUCore
import Testing

@Suite struct PolicyEngineMapTests {
    let platform = Fixture.platform
    let tenant = TenantPolicy()

    func decide(
        _ iova: UInt64, _ size: UInt64, flags: UInt32 = 3, offset: UInt64 = 0, groups: [UInt32] = [Fixture.plain],
        tenant: TenantPolicy? = nil, state: TenantState? = nil
    ) -> Result<MapPlan, Denial> {
        let tenant = tenant ?? self.tenant
        let state = state ?? Fixture.state(attached: groups, tenant: tenant)
        return PolicyEngine.decideMap(
            MapRequest(iova: iova, size: size, flags: flags, offset: offset), platform: platform, tenant: tenant,
            state: state)
    }

    @Test func zeroSizeIsEINVAL() {
        #expect(decide(0x1000, 0).denial?.code == .zeroSize)
        #expect(decide(0x1000, 0).errno == .EINVAL)
    }

    @Test func aRangeThatWrapsIsEOVERFLOW() {
        #expect(decide(UInt64.max - 0xfff, 0x2000, groups: [Fixture.wide]).errno == .EOVERFLOW)
        // Wrap is checked before alignment, as in VFIO.
        #expect(decide(UInt64.max, 2).errno == .EOVERFLOW)
    }

    @Test func flagsMustNameReadOrWriteAndNothingElse() {
        #expect(decide(0x1000, 0x1000, flags: 0).denial?.code == .badFlags)
        #expect(decide(0x1000, 0x1000, flags: 4).errno == .EINVAL)
        #expect(decide(0x1000, 0x1000, flags: 7).errno == .EINVAL)
        #expect(decide(0x1000, 0x1000, flags: 0x8000_0000).errno == .EINVAL)
        for flags: UInt32 in [1, 2, 3] {
            #expect(decide(0x1000, 0x1000, flags: flags).errno == nil)
        }
    }

    @Test func iovaSizeAndOffsetMustBePageAligned() {
        #expect(decide(0x1001, 0x1000).denial?.code == .misaligned)
        #expect(decide(0x1000, 0xfff).errno == .EINVAL)
        #expect(decide(0x1000, 0x1001).errno == .EINVAL)
        #expect(decide(0x1000, 0x1000, offset: 0x800).errno == .EINVAL)
        #expect(decide(0x1000, 0x1000, offset: 0x3000).errno == nil)
    }

    @Test func theSmallestPageSizeOfEveryAttachedGroupApplies() {
        #expect(decide(0x20_0000, 0x1000, groups: [Fixture.hugeOnly]).errno == .EINVAL)
        #expect(decide(0x20_0000, 0x20_0000, groups: [Fixture.hugeOnly]).errno == nil)
        #expect(decide(0x20_0000, 0x1000, groups: [Fixture.plain, Fixture.hugeOnly]).errno == .EINVAL)
    }

    @Test func aMapBeforeAnyGroupIsAttachedIsEINVAL() {
        #expect(decide(0x1000, 0x1000, groups: []).denial?.code == .noGroupAttached)
    }

    @Test func overlappingAnExistingMappingIsEEXISTAtEitherEnd() {
        var state = Fixture.state(attached: [Fixture.plain])
        state.commit(try! decide(0x10000, 0x10000, state: state).get())
        #expect(decide(0x1f000, 0x1000, state: state).errno == .EEXIST)
        #expect(decide(0x10000, 0x1000, state: state).errno == .EEXIST)
        #expect(decide(0xf000, 0x2000, state: state).errno == .EEXIST)
        #expect(
            decide(0x0, 0x100000, state: state).denial?.conflict == .mapping(IOVARange(first: 0x10000, last: 0x1ffff)!))
        // Exactly adjacent on both sides is fine.
        #expect(decide(0xf000, 0x1000, state: state).errno == nil)
        #expect(decide(0x20000, 0x1000, state: state).errno == nil)
    }

    @Test func theMappingQuotaIsENOSPCAndCountsAfterOverlap() {
        let tenant = TenantPolicy(maxMappings: 2)
        var state = Fixture.state(attached: [Fixture.plain], tenant: tenant)
        state.commit(try! decide(0x1000, 0x1000, tenant: tenant, state: state).get())
        state.commit(try! decide(0x2000, 0x1000, tenant: tenant, state: state).get())
        #expect(decide(0x3000, 0x1000, tenant: tenant, state: state).denial?.code == .mappingQuota)
        #expect(decide(0x3000, 0x1000, tenant: tenant, state: state).errno == .ENOSPC)
        #expect(decide(0x2000, 0x1000, tenant: tenant, state: state).errno == .EEXIST)
        // The quota comes before the reserved-region check, as in VFIO.
        #expect(decide(0xfee0_0000, 0x1000, tenant: tenant, state: state).errno == .ENOSPC)
    }

    @Test func theMSIWindowIsRefusedAtItsFirstAndLastPageAndFreeRightBesideIt() {
        for iova: UInt64 in [0xfee0_0000, 0xfeef_f000, 0xfee8_0000] {
            let denial = decide(iova, 0x1000).denial
            #expect(denial?.errno == .EINVAL)
            #expect(denial?.code == .reservedRegion)
            #expect(denial?.conflict == Conflict(kind: "msi", range: Fixture.msi, source: "test msi"))
            #expect(denial?.reason == "overlaps msi region 0xfee00000-0xfeefffff (source: test msi)")
        }
        #expect(decide(0xfedf_f000, 0x1000).errno == nil)
        #expect(decide(0xfef0_0000, 0x1000).errno == nil)
        // Straddling either edge.
        #expect(decide(0xfedf_f000, 0x2000).errno == .EINVAL)
        #expect(decide(0xfeef_f000, 0x2000).errno == .EINVAL)
    }

    @Test func theApertureEndsAtTheAddressWidth() {
        #expect(decide(0x7f_ffff_f000, 0x1000).errno == nil)
        let beyond = decide(0x80_0000_0000, 0x1000).denial
        #expect(beyond?.errno == .EINVAL)
        #expect(beyond?.conflict?.kind == "outside-aperture")
        #expect(beyond?.conflict?.range == IOVARange(first: 0x80_0000_0000, last: UInt64.max))
        #expect(beyond?.conflict?.source == "test 39-bit")
        #expect(decide(0x7f_ffff_f000, 0x2000).errno == .EINVAL)
    }

    @Test func theLastPageOfThe64BitSpaceIsMappableWhenTheApertureAllows() {
        let plan = decide(UInt64.max - 0xfff, 0x1000, groups: [Fixture.wide])
        #expect(plan.errno == nil)
        #expect((try? plan.get())?.range.last == UInt64.max)
        #expect(decide(UInt64.max - 0xfff, 0x1000, groups: [Fixture.plain]).errno == .EINVAL)
    }

    @Test func reservedRegionsAreCheckedBeforeTheByteQuota() {
        let tenant = TenantPolicy(maxBytes: 0x1000)
        #expect(decide(0xfee0_0000, 0x2000, tenant: tenant).errno == .EINVAL)
        #expect(decide(0x1000, 0x2000, tenant: tenant).errno == .ENOMEM)
    }

    @Test func theByteQuotaIsENOMEMOnlyPastTheLimit() {
        let tenant = TenantPolicy(maxBytes: 0x3000)
        var state = Fixture.state(attached: [Fixture.plain], tenant: tenant)
        state.commit(try! decide(0x1000, 0x2000, tenant: tenant, state: state).get())
        #expect(decide(0x10000, 0x2000, tenant: tenant, state: state).denial?.code == .byteQuota)
        #expect(decide(0x10000, 0x1000, tenant: tenant, state: state).errno == nil)
    }

    @Test func theByteCountCannotOverflowWhenTheWholeSpaceIsMapped() throws {
        // Only a platform with no reserved region at all lets disjoint mappings add up to 2^64.
        var bare = PlatformDatabase()
        bare.addGroup(IOMMUGroup(id: 0, aperture: .all, apertureSource: "test"))
        let tenant = TenantPolicy(maxBytes: UInt64.max)
        var state = TenantState()
        state.commit(try PolicyEngine.decideAttach(group: 0, platform: bare, tenant: tenant, state: state).get())
        for (iova, size): (UInt64, UInt64) in [
            (0, 0x8000_0000_0000_0000), (0x8000_0000_0000_0000, 0x7fff_ffff_ffff_f000),
        ] {
            let request = MapRequest(iova: iova, size: size)
            state.commit(try PolicyEngine.decideMap(request, platform: bare, tenant: tenant, state: state).get())
        }
        #expect(state.mappedBytes == UInt64.max - 0xfff)
        let last = MapRequest(iova: UInt64.max - 0xfff, size: 0x1000)
        #expect(PolicyEngine.decideMap(last, platform: bare, tenant: tenant, state: state).errno == .ENOMEM)
    }

    @Test func relaxableRegionsFollowTheTenantsSetting() {
        let deny = decide(0, 0x1000, groups: [Fixture.relaxable])
        #expect(deny.errno == .EINVAL)
        #expect(deny.denial?.conflict?.kind == "direct-relaxable")
        let allow = TenantPolicy(relaxable: .allow)
        #expect(decide(0, 0x1000, groups: [Fixture.relaxable], tenant: allow).errno == nil)
        #expect(decide(0xff_f000, 0x2000, groups: [Fixture.relaxable]).errno == .EINVAL)
        #expect(decide(0x100_0000, 0x1000, groups: [Fixture.relaxable]).errno == nil)
    }

    @Test func everyAttachedGroupsRegionsApply() {
        #expect(decide(0x4000_0000, 0x1000, groups: [Fixture.plain]).errno == nil)
        let both = decide(0x4fff_f000, 0x1000, groups: [Fixture.plain, Fixture.extra])
        #expect(both.errno == .EINVAL)
        #expect(both.denial?.conflict?.source == "config test:3")
        #expect(decide(0x5000_0000, 0x1000, groups: [Fixture.plain, Fixture.extra]).errno == nil)
        #expect(decide(0x3fff_f000, 0x1000, groups: [Fixture.plain, Fixture.extra]).errno == nil)
    }
}
