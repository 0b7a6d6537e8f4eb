/// The kinds of IOVA range a tenant must not map, named as the CLI, the wire and the audit
/// trail print them.
public enum RegionKind: String, CaseIterable, Sendable, Comparable {
    /// A hardware MSI window, never translated (x86: 0xfee00000-0xfeefffff).
    case msi
    /// A software MSI window (ARM): the kernel maps the interrupt doorbell there.
    case swMSI = "sw-msi"
    /// A firmware-mandated identity mapping that cannot be dropped (RMRR, IVMD unity).
    case direct
    /// A firmware identity mapping the kernel treats as safe to drop (USB and display RMRRs).
    case directRelaxable = "direct-relaxable"
    /// Never to be mapped or given to a device (for example the AMD HyperTransport hole).
    case reserved
    /// A BAR of a device in the same group, or a PCI host-bridge window: a DMA there may be
    /// routed peer to peer and never reach the IOMMU.
    case peerMMIO = "peer-mmio"
    /// Beyond the IOMMU's input address width.
    case outsideAperture = "outside-aperture"

    public static func < (lhs: RegionKind, rhs: RegionKind) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// Who added a region, so that everything one source added can be removed at once (a config
/// overlay on reload, a device on hot-unplug, an admin connection when it closes).
public struct RegionOwner: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    public init(_ name: String) { self.name = name }
    public var description: String { name }

    public static let sysfs = RegionOwner("sysfs")
    public static let acpi = RegionOwner("acpi")
    public static let iomem = RegionOwner("iomem")
    public static let config = RegionOwner("config")
    public static let profile = RegionOwner("profile")
    public static let aperture = RegionOwner("aperture")
    /// Added at run time through the admin plane, held by one admin connection: removed when
    /// it closes.
    public static func admin(connection: UInt64) -> RegionOwner { RegionOwner("admin-connection-\(connection)") }
    /// Added at run time with `persist`: kept in the daemon's state file across restarts.
    public static let persistent = RegionOwner("admin-persistent")

    /// Whether the region came from the admin plane rather than the platform or the config.
    public var isRuntime: Bool { name.hasPrefix("admin-") }
}

/// One range a tenant must not map, with where it came from.
public struct ReservedRegion: Hashable, Sendable {
    public var kind: RegionKind
    public var range: IOVARange
    public var owner: RegionOwner
    /// A person-readable origin: `sysfs group 7`, `DMAR RMRR #2 (00:14.0)`,
    /// `BAR2 of 0000:03:00.1`, `config /etc/iommu-policyd/policy.toml:12`, `profile x86-amd`.
    public var source: String
    /// The group the region applies to; nil for every group.
    public var group: UInt32?

    public init(kind: RegionKind, range: IOVARange, owner: RegionOwner, source: String, group: UInt32?) {
        self.kind = kind
        self.range = range
        self.owner = owner
        self.source = source
        self.group = group
    }
}

extension ReservedRegion: CustomStringConvertible {
    /// `msi region 0xfee00000-0xfeefffff (source: sysfs group 7)`
    public var description: String { "\(kind.rawValue) region \(range) (source: \(source))" }
}

/// How `direct-relaxable` regions are treated.
public enum RelaxablePolicy: String, Sendable, CaseIterable {
    /// Unmappable, like every other reserved kind.
    case deny
    /// Treated as free IOVA space, as VFIO and iommufd do.
    case allow
}

extension RegionKind {
    /// Whether a tenant may map over a region of this kind.
    public func blocksMapping(relaxable: RelaxablePolicy) -> Bool {
        !(self == .directRelaxable && relaxable == .allow)
    }
}
