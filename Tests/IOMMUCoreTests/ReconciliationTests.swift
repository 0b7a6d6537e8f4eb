import IOMMUCore
import Testing

@Suite struct ReconciliationTests {
    func r(_ first: UInt64, _ last: UInt64) -> IOVARange { IOVARange(first: first, last: last)! }

    @Test func identicalViewsAgree() {
        let usable = [r(0, 0xfedf_ffff), r(0xfef0_0000, 0x7f_ffff_ffff)]
        #expect(Reconciliation.compare(kernelUsable: usable, databaseUsable: usable).agrees)
    }

    @Test func aPeerBarTheDaemonAddsIsDatabaseOnly() {
        let kernel = [r(0, 0xfedf_ffff), r(0xfef0_0000, 0x7f_ffff_ffff)]
        let database = [r(0, 0xbfff_ffff), r(0xc001_0000, 0xfedf_ffff), r(0xfef0_0000, 0x7f_ffff_ffff)]
        let result = Reconciliation.compare(kernelUsable: kernel, databaseUsable: database)
        #expect(result.kernelOnly.isEmpty)
        #expect(result.databaseOnly == [r(0xc000_0000, 0xc000_ffff)])
    }

    @Test func aRangeOnlyTheKernelRefusesBecomesARegionOfTheGroup() {
        // Discovery saw a 48-bit aperture, the kernel reports 39 bits, and an RMRR discovery missed.
        let kernel = [r(0, 0x7bff_ffff), r(0x7c10_0000, 0xfedf_ffff), r(0xfef0_0000, 0x7f_ffff_ffff)]
        let database = [r(0, 0xfedf_ffff), r(0xfef0_0000, 0xffff_ffff_ffff)]
        let result = Reconciliation.compare(kernelUsable: kernel, databaseUsable: database)
        #expect(result.kernelOnly == [r(0x7c00_0000, 0x7c0f_ffff), r(0x80_0000_0000, 0xffff_ffff_ffff)])
        #expect(result.databaseOnly.isEmpty)
        let regions = result.kernelRegions(group: 4, source: "kernel VFIO_IOMMU_GET_INFO IOVA_RANGE")
        #expect(regions.map(\.range) == result.kernelOnly)
        #expect(regions.allSatisfy { $0.group == 4 && $0.owner == .kernel && $0.kind == .reserved })
        // Adopting them makes the database's usable ranges the intersection of the two views.
        var db = PlatformDatabase()
        db.addGroup(IOMMUGroup(id: 4, aperture: PageSizes.aperture(bits: 48)!, apertureSource: "test"))
        try? db.addRegion(
            ReservedRegion(kind: .msi, range: r(0xfee0_0000, 0xfeef_ffff), owner: .sysfs, source: "t", group: 4))
        for region in regions { try? db.addRegion(region) }
        #expect(db.usableRanges(groups: [4], relaxable: .deny) == kernel)
    }
}
