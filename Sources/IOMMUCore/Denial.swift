/// Why a request was refused: one value that the wire reply, the audit record, the admin
/// event and the command-line tool all render.
public struct Denial: Error, Hashable, Sendable {
    /// A stable machine code; see `Code`.
    public var code: Code
    public var errno: ErrnoCode
    /// One line for a person, for example
    /// "overlaps msi region 0xfee00000-0xfeefffff (source: sysfs group 7)".
    public var reason: String
    /// The range the request ran into, when there is one.
    public var conflict: Conflict?

    public init(_ code: Code, _ errno: ErrnoCode, _ reason: String, conflict: Conflict? = nil) {
        self.code = code
        self.errno = errno
        self.reason = reason
        self.conflict = conflict
    }

    /// Stable names for each cause of refusal. The set grows with the daemon, so this is a
    /// struct, not an enum.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let zeroSize = Code("zero-size")
        public static let wraps = Code("wraps")
        public static let badFlags = Code("bad-flags")
        public static let misaligned = Code("misaligned")
        public static let noGroupAttached = Code("no-group-attached")
        public static let overlapsMapping = Code("overlaps-mapping")
        public static let mappingQuota = Code("mapping-quota")
        public static let reservedRegion = Code("reserved-region")
        public static let byteQuota = Code("byte-quota")
        public static let unmapAllWithRange = Code("unmap-all-with-range")
        public static let partialUnmap = Code("partial-unmap")
        public static let nothingMapped = Code("nothing-mapped")
        public static let unknownGroup = Code("unknown-group")
        public static let groupNotPermitted = Code("group-not-permitted")
        public static let firmwareDirect = Code("firmware-direct-region")
        public static let alreadyAttached = Code("already-attached")
        public static let mappingsConflictGroup = Code("mappings-conflict-group")
        public static let notATenant = Code("not-a-tenant")
        public static let pageSizesDisjoint = Code("page-sizes-disjoint")
    }
}

/// The range a refused request ran into.
public struct Conflict: Hashable, Sendable {
    /// A region kind's name, or `mapping` for one of the tenant's own mappings.
    public var kind: String
    public var range: IOVARange
    public var source: String

    public init(kind: String, range: IOVARange, source: String) {
        self.kind = kind
        self.range = range
        self.source = source
    }

    public init(_ region: ReservedRegion) {
        self.init(kind: region.kind.rawValue, range: region.range, source: region.source)
    }

    public static func mapping(_ range: IOVARange) -> Conflict {
        Conflict(kind: "mapping", range: range, source: "tenant mapping")
    }
}

extension Denial: CustomStringConvertible {
    public var description: String { "\(errno.name): \(reason)" }
}
