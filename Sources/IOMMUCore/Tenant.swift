/// Which groups a tenant may attach.
public enum GroupPermission: Hashable, Sendable {
    /// Every group the platform has (groups with a firmware `direct` region stay refused).
    case any
    case only(Set<UInt32>)

    public func permits(_ group: UInt32) -> Bool {
        switch self {
        case .any: true
        case .only(let groups): groups.contains(group)
        }
    }
}

/// What one tenant may do: the result of matching its credentials against the config.
public struct TenantPolicy: Hashable, Sendable {
    public static let defaultMaxMappings = 65535
    public static let defaultMaxBytes: UInt64 = 64 << 30

    public var groups: GroupPermission
    /// Mapping slots per session, as VFIO's `dma_entry_limit`.
    public var maxMappings: Int
    /// Mapped bytes per session.
    public var maxBytes: UInt64
    public var relaxable: RelaxablePolicy
    /// Concurrent sessions this tenant's uid may hold.
    public var maxSessions: Int
    /// Which rule granted this policy, for audit and diagnostics.
    public var origin: String

    public init(
        groups: GroupPermission = .any, maxMappings: Int = Self.defaultMaxMappings,
        maxBytes: UInt64 = Self.defaultMaxBytes, relaxable: RelaxablePolicy = .deny, maxSessions: Int = 16,
        origin: String = "defaults"
    ) {
        self.groups = groups
        self.maxMappings = maxMappings
        self.maxBytes = maxBytes
        self.relaxable = relaxable
        self.maxSessions = maxSessions
        self.origin = origin
    }

    /// The one group of `platform` this tenant may attach, if there is exactly one: the daemon
    /// attaches it implicitly at the first DMA_MAP, so clients that know nothing of ATTACH_GROUP work.
    public func soleGroup(in platform: PlatformDatabase) -> UInt32? {
        let candidates = platform.groupIDs.filter { groups.permits($0) }
        return candidates.count == 1 ? candidates[0] : nil
    }
}

/// DMA access a mapping grants, with VFIO's flag bits (READ is bit 0, WRITE bit 1).
public struct DMAProtection: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let read = DMAProtection(rawValue: 1 << 0)
    public static let write = DMAProtection(rawValue: 1 << 1)
    public static let readWrite: DMAProtection = [.read, .write]
}

/// Where a mapping's bytes come from: an opaque handle the caller owns (a session's memfd, a
/// simulated buffer) and the offset into it.
public struct MemoryReference: Hashable, Sendable {
    public var handle: UInt64
    public var offset: UInt64
    public init(handle: UInt64, offset: UInt64) {
        self.handle = handle
        self.offset = offset
    }
}

public struct Mapping: Hashable, Sendable {
    public var protection: DMAProtection
    public var memory: MemoryReference?
    public init(protection: DMAProtection, memory: MemoryReference?) {
        self.protection = protection
        self.memory = memory
    }
}

/// A tenant session's state as the policy engine sees it: attached groups and mappings.
///
/// The engine only reads it. A caller commits a decision after the backend has done its part,
/// so a refused or failed request leaves it unchanged.
public struct TenantState: Sendable {
    public typealias MappingID = IntervalTree<Mapping>.ID

    public private(set) var groups: [UInt32] = []
    public private(set) var mappings = IntervalTree<Mapping>()
    /// Never exceeds UInt64.max: a map that would overflow it is refused (ENOMEM).
    public private(set) var mappedBytes: UInt64 = 0

    public init() {}

    public var mappingCount: Int { mappings.count }

    public mutating func commit(_ plan: AttachPlan) {
        groups.append(plan.group)
        groups.sort()
    }

    /// Detaches a group. Detaching the last one drops every mapping, as VFIO type1 does when a
    /// container loses its last group; the dropped mappings are returned for the caller to release.
    @discardableResult
    public mutating func detach(group: UInt32) -> [(range: IOVARange, mapping: Mapping)] {
        groups.removeAll { $0 == group }
        guard groups.isEmpty else { return [] }
        let dropped = mappings.entries.map { ($0.range, $0.value) }
        mappings.removeAll()
        mappedBytes = 0
        return dropped
    }

    @discardableResult
    public mutating func commit(_ plan: MapPlan, memory: MemoryReference? = nil) -> MappingID {
        let id = mappings.insert(plan.range, Mapping(protection: plan.protection, memory: memory))
        mappedBytes += plan.bytes
        return id
    }

    /// Removes what `plan` names and returns the removed mappings in address order.
    @discardableResult
    public mutating func commit(_ plan: UnmapPlan) -> [(range: IOVARange, mapping: Mapping)] {
        var removed: [(IOVARange, Mapping)] = []
        for entry in plan.entries {
            // A plan decided against an older state may name entries that are gone; IDs carry a
            // generation, so it can never remove a newer mapping in their place.
            guard let mapping = mappings.remove(entry.id) else { continue }
            removed.append((entry.range, mapping))
            mappedBytes -= entry.range.sizeMinusOne + 1
        }
        return removed
    }
}
