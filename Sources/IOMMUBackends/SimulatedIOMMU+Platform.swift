import IOMMUCore

extension SimulatedIOMMU {
    /// A simulated IOMMU for every group of `platform`, refusing what a kernel would: its MSI
    /// window and its `direct` and `reserved` regions. Peer BARs and relaxable regions are
    /// the daemon's own policy, which the kernel does not enforce, so the simulation does not
    /// either; that keeps the daemon's checks the ones under test.
    public convenience init(platform: PlatformDatabase) {
        var groups: [UInt32: GroupConfig] = [:]
        for (id, group) in platform.groups {
            let regions = platform.regions(group: id) ?? []
            let msi = regions.first { $0.kind == .msi || $0.kind == .swMSI }?.range
            let refused = regions.filter { $0.kind == .direct || $0.kind == .reserved }.map(\.range)
            groups[id] = GroupConfig(
                aperture: group.aperture, pageSizes: group.pageSizes == 0 ? PageSizes.x86 : group.pageSizes,
                msiWindow: msi, reservedRanges: refused)
        }
        self.init(groups: groups)
    }
}
