/// What the platform knows about one IOMMU group.
public struct IOMMUGroup: Hashable, Sendable {
    public var id: UInt32
    /// The IOVA range the IOMMU can translate for this group.
    public var aperture: IOVARange
    /// Where the aperture came from, for example `DMAR host address width 39`.
    public var apertureSource: String
    /// Supported page sizes as a bitmap (bit n set means 2^n bytes), as VFIO reports it.
    public var pageSizes: UInt64
    /// Member devices (PCI addresses such as `0000:00:14.0`).
    public var devices: [String]
    /// The kernel's default domain type (`DMA`, `identity`, …) when known.
    public var domainType: String?

    public init(
        id: UInt32, aperture: IOVARange, apertureSource: String, pageSizes: UInt64 = PageSizes.x86,
        devices: [String] = [], domainType: String? = nil
    ) {
        self.id = id
        self.aperture = aperture
        self.apertureSource = apertureSource
        self.pageSizes = pageSizes
        self.devices = devices
        self.domainType = domainType
    }

    /// The smallest supported page size; 4 KiB when the bitmap is empty.
    public var minimumPageSize: UInt64 { PageSizes.smallest(pageSizes) }
}

public enum PageSizes {
    /// 4 KiB, 2 MiB and 1 GiB: what Intel and AMD IOMMUs (and SMMUv3 with a 4K granule) offer.
    public static let x86: UInt64 = 0x4020_1000

    public static func smallest(_ bitmap: UInt64) -> UInt64 {
        bitmap == 0 ? 4096 : UInt64(1) << UInt64(bitmap.trailingZeroBitCount)
    }

    /// The aperture `[0, 2^bits - 1]`; nil unless 1 <= bits <= 64.
    public static func aperture(bits: Int) -> IOVARange? {
        guard (1...64).contains(bits) else { return nil }
        return IOVARange(first: 0, last: bits == 64 ? UInt64.max : (UInt64(1) << UInt64(bits)) - 1)
    }
}

/// The reserved-region database: every IOMMU group the platform has, and every range a
/// tenant must not map in each, with its owner and source.
///
/// Regions that apply to every group (a host-bridge window, an IVMD for all devices) are
/// kept once, in their own tree; the rest sit in a tree per group. The ranges outside a
/// group's aperture are stored as `outside-aperture` regions, so that listings, conflicts and
/// usable-range arithmetic treat them like any other kind.
public struct PlatformDatabase: Sendable {
    public typealias RegionID = IntervalTree<ReservedRegion>.ID

    public private(set) var groups: [UInt32: IOMMUGroup] = [:]
    private var groupRegions: [UInt32: IntervalTree<ReservedRegion>] = [:]
    private var globalRegions = IntervalTree<ReservedRegion>()

    public init() {}

    public var groupIDs: [UInt32] { groups.keys.sorted() }

    /// Adds a group, or replaces what is known about it, and records its aperture.
    public mutating func addGroup(_ group: IOMMUGroup) {
        groups[group.id] = group
        var tree = groupRegions[group.id] ?? IntervalTree()
        for entry in tree.entries where entry.value.owner == .aperture { tree.remove(entry.id) }
        for outside in IOVARange.all.subtracting(group.aperture) {
            tree.insert(
                outside,
                ReservedRegion(
                    kind: .outsideAperture, range: outside, owner: .aperture,
                    source: group.apertureSource, group: group.id))
        }
        groupRegions[group.id] = tree
    }

    public mutating func removeGroup(_ id: UInt32) {
        groups[id] = nil
        groupRegions[id] = nil
    }

    /// Adds a region to its group (which must exist) or, when `region.group` is nil, to all.
    public mutating func addRegion(_ region: ReservedRegion) throws(PlatformDatabaseError) {
        if let group = region.group {
            guard groupRegions[group] != nil else { throw .unknownGroup(group) }
            groupRegions[group]!.insert(region.range, region)
        } else {
            globalRegions.insert(region.range, region)
        }
    }

    /// Removes every region `owner` added; returns how many.
    @discardableResult
    public mutating func removeRegions(ownedBy owner: RegionOwner) -> Int {
        precondition(owner != .aperture, "aperture regions follow their group")
        var removed = 0
        func sweep(_ tree: inout IntervalTree<ReservedRegion>) {
            for entry in tree.entries where entry.value.owner == owner {
                tree.remove(entry.id)
                removed += 1
            }
        }
        sweep(&globalRegions)
        for id in groupRegions.keys { sweep(&groupRegions[id]!) }
        return removed
    }

    /// Every region that applies to `group`, ordered by range then kind. Nil for an unknown group.
    public func regions(group: UInt32) -> [ReservedRegion]? {
        guard let tree = groupRegions[group] else { return nil }
        return (tree.entries.map(\.value) + globalRegions.entries.map(\.value)).sorted(by: Self.listingOrder)
    }

    /// Every region of every group, the all-groups ones once.
    public var allRegions: [ReservedRegion] {
        (groupRegions.values.flatMap { $0.entries.map(\.value) } + globalRegions.entries.map(\.value))
            .sorted(by: Self.listingOrder)
    }

    /// The first region of `group` that forbids mapping `range`, lowest address first.
    public func conflict(group: UInt32, range: IOVARange, relaxable: RelaxablePolicy) -> ReservedRegion? {
        var best: ReservedRegion?
        func scan(_ tree: IntervalTree<ReservedRegion>) {
            tree.forEachOverlap(range) { entry in
                guard entry.value.kind.blocksMapping(relaxable: relaxable) else { return true }
                if best == nil || Self.listingOrder(entry.value, best!) { best = entry.value }
                // Entries come in address order, so the first blocking one is this tree's best.
                return false
            }
        }
        if let tree = groupRegions[group] { scan(tree) }
        scan(globalRegions)
        return best
    }

    /// True when the group has a non-relaxable identity-mapping requirement, which makes the
    /// kernel (since 6.6) refuse to give its devices to user space.
    public func firmwareDirectRegion(group: UInt32) -> ReservedRegion? {
        regions(group: group)?.first { $0.kind == .direct }
    }

    /// The IOVA ranges a tenant attached to all of `groups` may map: each group's aperture minus
    /// its blocking regions, intersected across the groups. Empty for no groups or an unknown one.
    public func usableRanges(groups ids: [UInt32], relaxable: RelaxablePolicy) -> [IOVARange] {
        var usable: [IOVARange]?
        for id in ids {
            guard let group = groups[id], let regions = regions(group: id) else { return [] }
            let holes = regions.filter { $0.kind.blocksMapping(relaxable: relaxable) }.map(\.range)
            let mine = [group.aperture].subtracting(holes)
            usable = usable.map { $0.intersecting(mine) } ?? mine
        }
        return usable ?? []
    }

    private static func listingOrder(_ a: ReservedRegion, _ b: ReservedRegion) -> Bool {
        if a.range != b.range { return a.range < b.range }
        if a.kind != b.kind { return a.kind < b.kind }
        return a.source < b.source
    }
}

public enum PlatformDatabaseError: Error, Hashable, Sendable, CustomStringConvertible {
    case unknownGroup(UInt32)

    public var description: String {
        switch self {
        case .unknownGroup(let id): "no IOMMU group \(id)"
        }
    }
}
