/// How the kernel's view of a context (VFIO_IOMMU_GET_INFO's IOVA_RANGE capability, iommufd's
/// IOMMU_IOAS_IOVA_RANGES) differs from the daemon's region database for the same groups.
/// The usable ranges are the intersection of the two views; each difference is something to
/// tell an operator.
public struct Reconciliation: Hashable, Sendable {
    /// Ranges the kernel refuses that the database would allow: discovery missed a region.
    /// The daemon adopts them, so it refuses them itself, with a reason, before the kernel does.
    public var kernelOnly: [IOVARange]
    /// Ranges the database refuses that the kernel would allow: peer BARs, host-bridge windows,
    /// policy regions. Expected, and the point of the daemon; reported once.
    public var databaseOnly: [IOVARange]

    public var agrees: Bool { kernelOnly.isEmpty && databaseOnly.isEmpty }

    /// Compares the usable ranges of the two views (sorted, disjoint, inclusive).
    public static func compare(kernelUsable: [IOVARange], databaseUsable: [IOVARange]) -> Reconciliation {
        Reconciliation(
            kernelOnly: databaseUsable.subtracting(kernelUsable), databaseOnly: kernelUsable.subtracting(databaseUsable)
        )
    }

    /// Regions for what only the kernel refuses, for `group`, named after the call that said so.
    public func kernelRegions(group: UInt32, source: String) -> [ReservedRegion] {
        kernelOnly.map { ReservedRegion(kind: .reserved, range: $0, owner: .kernel, source: source, group: group) }
    }
}

extension RegionOwner {
    /// Learned from the kernel at attach (reconciliation): ranges discovery did not find.
    public static let kernel = RegionOwner("kernel")
}
