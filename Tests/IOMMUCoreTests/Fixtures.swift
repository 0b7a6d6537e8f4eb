import IOMMUCore

/// A small platform with one group per situation the engine must handle.
enum Fixture {
    static let msi = IOVARange(first: 0xfee0_0000, last: 0xfeef_ffff)!
    /// 39-bit, the x86 MSI window (shared by every group).
    static let plain: UInt32 = 0
    /// Has a firmware `direct` region (an RMRR for a NIC).
    static let direct: UInt32 = 1
    /// Has only a `direct-relaxable` region (the ISA bridge's 0-16 MiB).
    static let relaxable: UInt32 = 2
    /// A full 64-bit aperture, so the last page of the space is mappable.
    static let wide: UInt32 = 3
    /// 2 MiB minimum page size.
    static let hugeOnly: UInt32 = 4
    /// Like `plain`, plus a reserved window at 0x4000_0000-0x4fff_ffff.
    static let extra: UInt32 = 5

    static let extraWindow = IOVARange(first: 0x4000_0000, last: 0x4fff_ffff)!
    static let rmrr = IOVARange(first: 0x7c00_0000, last: 0x7c0f_ffff)!

    static var platform: PlatformDatabase {
        var db = PlatformDatabase()
        let narrow = PageSizes.aperture(bits: 39)!
        for id in [plain, direct, relaxable, extra] {
            db.addGroup(IOMMUGroup(id: id, aperture: narrow, apertureSource: "test 39-bit"))
        }
        db.addGroup(IOMMUGroup(id: wide, aperture: .all, apertureSource: "test 64-bit"))
        db.addGroup(IOMMUGroup(id: hugeOnly, aperture: narrow, apertureSource: "test 39-bit", pageSizes: 0x4020_0000))
        try! db.addRegion(ReservedRegion(kind: .msi, range: msi, owner: .profile, source: "test msi", group: nil))
        try! db.addRegion(
            ReservedRegion(kind: .direct, range: rmrr, owner: .acpi, source: "DMAR RMRR #1 (03:00.0)", group: direct))
        try! db.addRegion(
            ReservedRegion(
                kind: .directRelaxable, range: IOVARange(first: 0, last: 0xff_ffff)!, owner: .sysfs,
                source: "sysfs group 2",
                group: relaxable))
        try! db.addRegion(
            ReservedRegion(kind: .reserved, range: extraWindow, owner: .config, source: "config test:3", group: extra))
        return db
    }

    static func state(attached groups: [UInt32], tenant: TenantPolicy = TenantPolicy()) -> TenantState {
        var state = TenantState()
        for group in groups {
            guard
                case .success(let plan) = PolicyEngine.decideAttach(
                    group: group, platform: platform, tenant: tenant, state: state)
            else { fatalError("fixture attach of \(group) failed") }
            state.commit(plan)
        }
        return state
    }
}

extension Result where Failure == Denial {
    var denial: Denial? {
        if case .failure(let denial) = self { return denial }
        return nil
    }
    var errno: ErrnoCode? { denial?.errno }
}
