/// What a changed platform database or policy means for a session that is already running:
/// either the session as a whole no longer stands (its tenant rule or one of its groups is
/// gone), or some of its mappings now overlap a region that forbids them.
public struct Revalidation: Sendable {
    /// Set when the whole session must end: every mapping goes, and the connection closes.
    public var sessionDenial: Denial?
    /// The mappings that must go, each with why, in address order. Empty when
    /// `sessionDenial` is set (then all of them go).
    public var revoked: [(entry: IntervalTree<Mapping>.Entry, denial: Denial)]

    public var isClean: Bool { sessionDenial == nil && revoked.isEmpty }
}

extension PolicyEngine {
    /// Checks a running session's groups and mappings against a new platform and policy.
    ///
    /// A mapping stays when every attached group still allows its range; quotas are not
    /// re-applied (a lowered quota limits new maps, not existing ones). Cost: one interval
    /// query per blocking region of each attached group, not one per mapping, so sessions with
    /// millions of mappings revalidate in time proportional to what they lose.
    public static func revalidate(
        platform: PlatformDatabase, tenant: TenantPolicy?, state: TenantState
    ) -> Revalidation {
        guard let tenant else {
            return Revalidation(
                sessionDenial: Denial(.notATenant, .EPERM, "the policy no longer has a [[tenant]] rule for this peer"),
                revoked: [])
        }
        for group in state.groups {
            guard platform.groups[group] != nil else {
                return Revalidation(
                    sessionDenial: Denial(.unknownGroup, .ENOENT, "IOMMU group \(group) is gone"), revoked: [])
            }
            guard tenant.groups.permits(group) else {
                return Revalidation(
                    sessionDenial: Denial(
                        .groupNotPermitted, .EPERM, "policy no longer permits group \(group) (\(tenant.origin))"),
                    revoked: [])
            }
            if let region = platform.firmwareDirectRegion(group: group) {
                return Revalidation(
                    sessionDenial: Denial(
                        .firmwareDirect, .EPERM, "group \(group) now has \(region): \(firmwareDirectReason)",
                        conflict: Conflict(region)),
                    revoked: [])
            }
        }
        // Regions in listing order, so each mapping is charged to the region `conflict` would name.
        var charged: [IntervalTree<Mapping>.ID: (entry: IntervalTree<Mapping>.Entry, denial: Denial)] = [:]
        for group in state.groups {
            for region in platform.regions(group: group) ?? []
            where region.kind.blocksMapping(relaxable: tenant.relaxable) {
                for entry in state.mappings.overlapping(region.range) where charged[entry.id] == nil {
                    charged[entry.id] = (
                        entry, Denial(.reservedRegion, .EINVAL, "overlaps \(region)", conflict: Conflict(region))
                    )
                }
            }
        }
        return Revalidation(sessionDenial: nil, revoked: charged.values.sorted { $0.entry.range < $1.entry.range })
    }
}
