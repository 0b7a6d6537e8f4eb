import IOMMUCore
import Testing

@Suite struct RevalidationTests {
    let tenant = TenantPolicy()

    /// A session on group `plain` with mappings at `ranges`.
    func session(_ ranges: [(UInt64, UInt64)], groups: [UInt32] = [Fixture.plain]) -> TenantState {
        var state = Fixture.state(attached: groups)
        for (iova, size) in ranges {
            guard
                case .success(let plan) = PolicyEngine.decideMap(
                    MapRequest(iova: iova, size: size), platform: Fixture.platform, tenant: tenant, state: state)
            else { fatalError("fixture map \(iova) failed") }
            state.commit(plan)
        }
        return state
    }

    func platform(adding region: ReservedRegion) -> PlatformDatabase {
        var db = Fixture.platform
        try! db.addRegion(region)
        return db
    }

    @Test func anUnchangedPlatformRevokesNothing() {
        let state = session([(0x1000, 0x1000), (0x4000_0000, 0x20_0000)])
        #expect(PolicyEngine.revalidate(platform: Fixture.platform, tenant: tenant, state: state).isClean)
    }

    @Test func aNewRegionRevokesExactlyTheMappingsItOverlapsAndNamesItself() {
        let state = session([(0x1000, 0x1000), (0x10_0000, 0x1000), (0x10_2000, 0x2000), (0x20_0000, 0x1000)])
        let region = ReservedRegion(
            kind: .reserved, range: IOVARange(first: 0x10_0000, last: 0x10_2fff)!, owner: .config,
            source: "config policy.toml:9", group: nil)
        let result = PolicyEngine.revalidate(platform: platform(adding: region), tenant: tenant, state: state)
        #expect(result.sessionDenial == nil)
        #expect(result.revoked.map(\.entry.range.first) == [0x10_0000, 0x10_2000])
        for revoked in result.revoked {
            #expect(revoked.denial.code == .reservedRegion)
            #expect(revoked.denial.errno == .EINVAL)
            #expect(revoked.denial.conflict?.source == "config policy.toml:9")
        }
    }

    @Test func aMappingOverlappingTwoNewRegionsIsRevokedOnceForTheLowerOne() {
        let state = session([(0x10_0000, 0x10_0000)])
        var db = Fixture.platform
        try! db.addRegion(
            ReservedRegion(
                kind: .reserved, range: IOVARange(first: 0x18_0000, last: 0x18_0fff)!, owner: .config, source: "high",
                group: nil))
        try! db.addRegion(
            ReservedRegion(
                kind: .reserved, range: IOVARange(first: 0x10_0000, last: 0x10_0fff)!, owner: .config, source: "low",
                group: nil))
        let result = PolicyEngine.revalidate(platform: db, tenant: tenant, state: state)
        #expect(result.revoked.count == 1)
        #expect(result.revoked.first?.denial.conflict?.source == "low")
    }

    @Test func aRelaxableRegionRevokesOnlyWhenTheTenantTreatsItAsBlocking() {
        let state = session([(0x20_0000, 0x1000)])
        let region = ReservedRegion(
            kind: .directRelaxable, range: IOVARange(first: 0x20_0000, last: 0x20_0fff)!, owner: .config,
            source: "relaxable", group: nil)
        let db = platform(adding: region)
        var lenient = tenant
        lenient.relaxable = .allow
        #expect(PolicyEngine.revalidate(platform: db, tenant: lenient, state: state).isClean)
        #expect(PolicyEngine.revalidate(platform: db, tenant: tenant, state: state).revoked.count == 1)
    }

    @Test func aShrunkApertureRevokesTheMappingsBeyondIt() {
        let state = session([(0x1000, 0x1000), (0x100_0000_0000, 0x1000)], groups: [Fixture.wide])
        var db = Fixture.platform
        db.addGroup(IOMMUGroup(id: Fixture.wide, aperture: PageSizes.aperture(bits: 39)!, apertureSource: "now 39"))
        let result = PolicyEngine.revalidate(platform: db, tenant: tenant, state: state)
        #expect(result.revoked.map(\.entry.range.first) == [0x100_0000_0000])
        #expect(result.revoked.first?.denial.conflict?.kind == RegionKind.outsideAperture.rawValue)
    }

    @Test func aVanishedGroupOrTenantRuleEndsTheWholeSession() {
        let state = session([(0x1000, 0x1000)])
        var db = Fixture.platform
        db.removeGroup(Fixture.plain)
        #expect(
            PolicyEngine.revalidate(platform: db, tenant: tenant, state: state).sessionDenial?.code == .unknownGroup)
        #expect(
            PolicyEngine.revalidate(platform: Fixture.platform, tenant: nil, state: state).sessionDenial?.code
                == .notATenant)
        var narrowed = tenant
        narrowed.groups = .only([Fixture.direct])
        #expect(
            PolicyEngine.revalidate(platform: Fixture.platform, tenant: narrowed, state: state).sessionDenial?.code
                == .groupNotPermitted)
    }

    @Test func aLoweredQuotaDoesNotRevokeExistingMappings() {
        let state = session([(0x1000, 0x1000), (0x3000, 0x1000)])
        var stingy = tenant
        stingy.maxMappings = 1
        stingy.maxBytes = 0x1000
        #expect(PolicyEngine.revalidate(platform: Fixture.platform, tenant: stingy, state: state).isClean)
    }

    /// Against the per-mapping definition: a mapping survives exactly when no attached group has
    /// a blocking region over it.
    @Test func survivorsAreExactlyTheMappingsWithNoConflictOverManyRandomRegions() {
        var seed: UInt64 = 0x5eed
        func next() -> UInt64 {
            seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return seed >> 33
        }
        for _ in 0..<50 {
            let ranges = (0..<40).map { index in (UInt64(index) * 0x10_0000 + (next() % 16) * 0x1000, UInt64(0x1000)) }
            let state = session(ranges)
            var db = Fixture.platform
            for _ in 0..<5 {
                let first = (next() % 0x300) * 0x1_0000
                try! db.addRegion(
                    ReservedRegion(
                        kind: .reserved, range: IOVARange(first: first, last: first + (next() % 0x8_0000))!,
                        owner: .config, source: "random", group: nil))
            }
            let result = PolicyEngine.revalidate(platform: db, tenant: tenant, state: state)
            let revoked = Set(result.revoked.map(\.entry.range))
            for entry in state.mappings.entries {
                let conflicted = db.conflict(group: Fixture.plain, range: entry.range, relaxable: .deny) != nil
                #expect(revoked.contains(entry.range) == conflicted, "\(entry.range)")
            }
        }
    }
}
