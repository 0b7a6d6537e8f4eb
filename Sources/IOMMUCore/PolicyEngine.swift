/// Decides map, unmap and attach requests. Every function is pure: it reads the platform,
/// the tenant's policy and state, and returns a plan or a `Denial`; the caller acts on it.
public enum PolicyEngine {
    /// The kernel's message (6.6 and later) for a device with a non-relaxable RMRR/IVMD.
    public static let firmwareDirectReason =
        "Firmware has requested this device have a 1:1 IOMMU mapping, rejecting configuring the device without a 1:1 mapping. Contact your platform vendor."

    /// The smallest page size every attached group supports; 4 KiB when none is attached.
    public static func minimumPageSize(platform: PlatformDatabase, groups: [UInt32]) -> UInt64 {
        var bitmap = UInt64.max
        for id in groups { bitmap &= platform.groups[id]?.pageSizes ?? PageSizes.x86 }
        return groups.isEmpty ? 4096 : PageSizes.smallest(bitmap)
    }

    /// Checks a map in the order VFIO type1 does, with its errno for each failure.
    public static func decideMap(
        _ request: MapRequest, platform: PlatformDatabase, tenant: TenantPolicy, state: TenantState
    ) -> Result<MapPlan, Denial> {
        guard request.size != 0 else {
            return .failure(Denial(.zeroSize, .EINVAL, "size is 0"))
        }
        guard let range = IOVARange(start: request.iova, size: request.size) else {
            return .failure(
                Denial(.wraps, .EOVERFLOW, "iova \(Hex(request.iova)) + size \(Hex(request.size)) wraps past 2^64"))
        }
        let protection = DMAProtection(rawValue: request.flags & MapRequest.knownFlags)
        guard request.flags & ~MapRequest.knownFlags == 0 else {
            return .failure(
                Denial(.badFlags, .EINVAL, "unknown flag bits \(Hex(request.flags & ~MapRequest.knownFlags))"))
        }
        guard !protection.isEmpty else {
            return .failure(Denial(.badFlags, .EINVAL, "neither READ nor WRITE requested"))
        }
        guard !state.groups.isEmpty else {
            return .failure(Denial(.noGroupAttached, .EINVAL, "no IOMMU group is attached"))
        }
        let page = minimumPageSize(platform: platform, groups: state.groups)
        guard range.isAligned(to: page), request.offset & (page - 1) == 0 else {
            return .failure(
                Denial(
                    .misaligned, .EINVAL,
                    "iova \(Hex(request.iova)), size \(Hex(request.size)) or offset \(Hex(request.offset)) is not aligned to the \(Hex(page)) page size"
                ))
        }
        if let existing = state.mappings.firstOverlap(range) {
            return .failure(
                Denial(
                    .overlapsMapping, .EEXIST, "overlaps existing mapping \(existing.range)",
                    conflict: .mapping(existing.range)))
        }
        guard state.mappingCount < tenant.maxMappings else {
            return .failure(
                Denial(.mappingQuota, .ENOSPC, "mapping limit of \(tenant.maxMappings) reached (\(tenant.origin))"))
        }
        for group in state.groups {
            if let region = platform.conflict(group: group, range: range, relaxable: tenant.relaxable) {
                return .failure(Denial(.reservedRegion, .EINVAL, "overlaps \(region)", conflict: Conflict(region)))
            }
        }
        let (total, overflow) = state.mappedBytes.addingReportingOverflow(request.size)
        guard !overflow, total <= tenant.maxBytes else {
            return .failure(
                Denial(
                    .byteQuota, .ENOMEM,
                    "mapping \(Hex(request.size)) bytes would exceed the limit of \(Hex(tenant.maxBytes)) bytes (\(tenant.origin))"
                ))
        }
        return .success(MapPlan(range: range, protection: protection, bytes: request.size))
    }

    /// VFIO type1 v2 unmap: whole mappings only, several at once, or everything.
    public static func decideUnmap(
        _ request: UnmapRequest, platform: PlatformDatabase, state: TenantState
    ) -> Result<UnmapPlan, Denial> {
        guard request.flags & ~UnmapRequest.knownFlags == 0 else {
            return .failure(
                Denial(.badFlags, .EINVAL, "unknown flag bits \(Hex(request.flags & ~UnmapRequest.knownFlags))"))
        }
        if request.flags & UnmapRequest.unmapAllFlag != 0 {
            guard request.iova == 0, request.size == 0 else {
                return .failure(Denial(.unmapAllWithRange, .EINVAL, "UNMAP_ALL requires iova and size 0"))
            }
            return .success(UnmapPlan(entries: state.mappings.entries))
        }
        guard request.size != 0 else {
            return .failure(Denial(.zeroSize, .EINVAL, "size is 0"))
        }
        guard let range = IOVARange(start: request.iova, size: request.size) else {
            return .failure(
                Denial(.wraps, .EOVERFLOW, "iova \(Hex(request.iova)) + size \(Hex(request.size)) wraps past 2^64"))
        }
        let page = minimumPageSize(platform: platform, groups: state.groups)
        guard range.isAligned(to: page) else {
            return .failure(
                Denial(
                    .misaligned, .EINVAL,
                    "iova \(Hex(request.iova)) or size \(Hex(request.size)) is not aligned to the \(Hex(page)) page size"
                ))
        }
        let entries = state.mappings.overlapping(range)
        guard let head = entries.first, let tail = entries.last else {
            return .failure(Denial(.nothingMapped, .ENOENT, "nothing is mapped in \(range)"))
        }
        for cut in [head, tail] where !range.contains(cut.range) {
            return .failure(
                Denial(
                    .partialUnmap, .EINVAL, "\(range) cuts through mapping \(cut.range)", conflict: .mapping(cut.range))
            )
        }
        return .success(UnmapPlan(entries: entries))
    }

    /// Whether the tenant may attach `group` to its session.
    public static func decideAttach(
        group: UInt32, platform: PlatformDatabase, tenant: TenantPolicy, state: TenantState
    ) -> Result<AttachPlan, Denial> {
        guard platform.groups[group] != nil else {
            return .failure(Denial(.unknownGroup, .ENOENT, "no IOMMU group \(group)"))
        }
        guard !state.groups.contains(group) else {
            return .failure(Denial(.alreadyAttached, .EBUSY, "group \(group) is already attached to this session"))
        }
        guard tenant.groups.permits(group) else {
            return .failure(
                Denial(.groupNotPermitted, .EPERM, "policy does not permit group \(group) (\(tenant.origin))"))
        }
        if let region = platform.firmwareDirectRegion(group: group) {
            return .failure(
                Denial(
                    .firmwareDirect, .EPERM, "group \(group) has \(region): \(firmwareDirectReason)",
                    conflict: Conflict(region)))
        }
        let common = (state.groups + [group]).reduce(UInt64.max) { $0 & (platform.groups[$1]?.pageSizes ?? 0) }
        guard common != 0 else {
            return .failure(
                Denial(
                    .pageSizesDisjoint, .EINVAL,
                    "group \(group) shares no IOMMU page size with the groups already attached"))
        }
        // As VFIO does on attach: existing mappings must fit the new group too.
        let page = PageSizes.smallest(common)
        for entry in state.mappings.entries {
            if let region = platform.conflict(group: group, range: entry.range, relaxable: tenant.relaxable) {
                return .failure(
                    Denial(
                        .mappingsConflictGroup, .EINVAL,
                        "existing mapping \(entry.range) overlaps \(region) of group \(group)",
                        conflict: Conflict(region)))
            }
            if !entry.range.isAligned(to: page) {
                return .failure(
                    Denial(
                        .mappingsConflictGroup, .EINVAL,
                        "existing mapping \(entry.range) is not aligned to group \(group)'s \(Hex(page)) page size",
                        conflict: .mapping(entry.range)))
            }
        }
        return .success(AttachPlan(group: group))
    }
}
