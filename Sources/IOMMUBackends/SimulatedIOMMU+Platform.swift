import IOMMUCore

extension SimulatedIOMMU {
    /// A simulated IOMMU for every group of `platform`, refusing what a kernel would: its MSI
    /// window and its `direct` and `reserved` regions. Peer BARs and relaxable regions are
    /// the daemon's own policy, which the kernel does not enforce, so the simulation does not
    /// either; that keeps the daemon's checks the ones under test.
    public convenience init(platform: PlatformDatabase) {
        self.init(groups: Self.configs(platform))
    }

    static func configs(_ platform: PlatformDatabase) -> [UInt32: GroupConfig] {
        var groups: [UInt32: GroupConfig] = [:]
        for (id, group) in platform.groups {
            // Only what the hardware and the kernel would know: not the policy's own regions.
            let regions = (platform.regions(group: id) ?? []).filter { $0.owner != .config && !$0.owner.isRuntime }
            let msi = regions.first { $0.kind == .msi || $0.kind == .swMSI }?.range
            let refused = regions.filter { $0.kind == .direct || $0.kind == .reserved }.map(\.range)
            groups[id] = GroupConfig(
                aperture: group.aperture, pageSizes: group.pageSizes == 0 ? PageSizes.x86 : group.pageSizes,
                msiWindow: msi, reservedRanges: refused)
        }
        return groups
    }

    /// A device was hot-plugged: groups the simulated hardware did not have appear. Groups it
    /// has keep their configuration, as hardware would; a vanished group stays until its
    /// context lets it go (the daemon revokes its sessions).
    public func platformChanged(_ platform: PlatformDatabase) {
        let fresh = Self.configs(platform)
        state.withLock { state in
            for (id, config) in fresh where state.configs[id] == nil { state.configs[id] = config }
        }
    }
}
