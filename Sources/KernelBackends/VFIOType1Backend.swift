import CVFIO
import IOMMUBackends
import IOMMUCore
import SystemPackage

/// The VFIO type1 v2 backend: each context is a VFIO container of its own (a fresh open of
/// `/dev/vfio/vfio`), so tenants never share an IOMMU domain.
///
/// Lifetime:
/// - `createContext` opens a container; it has no IOMMU until its first group arrives.
/// - `attach` opens `/dev/vfio/<group>`, checks that the group is viable (every device bound to
///   vfio-pci or to no driver), adds it to the container, sets `VFIO_TYPE1v2_IOMMU` when it is
///   the first group, and reads `VFIO_IOMMU_GET_INFO`. The group fd stays open while attached.
/// - `map` mmaps the tenant's memfd into the daemon (MAP_SHARED, at the memory offset) and
///   hands that address to `VFIO_IOMMU_MAP_DMA`; the daemon mapping lives until the range is
///   unmapped. `unmap` calls `VFIO_IOMMU_UNMAP_DMA` and then drops the daemon mappings in range.
/// - `detach` unsets the group's container; the last group's departure takes the container's
///   IOMMU and, in the kernel, every mapping with it, so the daemon mappings go too.
/// - `destroyContext` unmaps everything (so a device fd the tenant still holds can reach
///   nothing), unsets and closes the groups, closes the container and drops the daemon mappings.
///
/// Failure handling: every step that can fail is undone before the error is thrown, in reverse
/// order: a failed MAP_DMA munmaps the daemon mapping; a failed SET_IOMMU or GET_INFO unsets the
/// group and closes it. A kernel refusal keeps the kernel's errno and names the ioctl
/// (`kernel VFIO_IOMMU_MAP_DMA: EINVAL: …`); the daemon's own refusals name the backend
/// (`vfio-type1 map: …`).
///
/// Each context has its own lock, and the group-to-context table another; see `ContextRegistry`.
public final class VFIOType1Backend: IOMMUBackend {
    public let name = "vfio-type1"
    /// The directory holding `vfio` and the group nodes, normally `/dev/vfio`.
    public let devicePath: String
    let registry = ContextRegistry<Container>(backend: "vfio-type1")

    struct Container: Sendable {
        let fd: FileDescriptor
        /// The attached groups' fds.
        var groups: [UInt32: FileDescriptor] = [:]
        var mappings = DaemonMappings()
    }

    /// Checks that `<devicePath>/vfio` exists, speaks VFIO API version 0 and offers type1 v2.
    public convenience init(devicePath: String = "/dev/vfio") throws(BackendError) {
        let container = joinPath(devicePath, "vfio")
        let operation = "vfio-type1 startup"
        guard fileExists(container) else {
            throw BackendError(
                .ENOENT, operation: operation,
                detail: "\(container) does not exist: load VFIO with `modprobe vfio-pci` (it brings vfio and "
                    + "vfio_iommu_type1) on a kernel with CONFIG_VFIO and CONFIG_VFIO_IOMMU_TYPE1, and boot with "
                    + "the IOMMU on (intel_iommu=on or amd_iommu=on)")
        }
        let fd = try openDevice(container, operation: operation)
        defer { closeQuietly(fd) }
        let version = cvfio_get_api_version(fd.rawValue)
        if version < 0 {
            throw BackendError(
                ErrnoCode(kernel: -version), operation: operation,
                detail: "\(container) is not a VFIO container: VFIO_GET_API_VERSION failed")
        }
        guard version == CVFIO_API_VERSION else {
            throw BackendError(
                .EINVAL, operation: operation,
                detail:
                    "\(container) speaks VFIO API version \(version); this daemon knows version \(CVFIO_API_VERSION)")
        }
        let type1v2 = cvfio_check_extension(fd.rawValue, CVFIO_TYPE1v2_IOMMU)
        guard type1v2 > 0 else {
            throw BackendError(
                type1v2 < 0 ? ErrnoCode(kernel: -type1v2) : .ENODEV, operation: operation,
                detail: "VFIO offers no type1 v2 IOMMU: `modprobe vfio_iommu_type1` (CONFIG_VFIO_IOMMU_TYPE1), "
                    + "and check that the kernel found an IOMMU (dmesg | grep -e DMAR -e AMD-Vi)")
        }
        self.init(uncheckedDevicePath: devicePath)
    }

    /// No checks: for tests that drive the failure paths against a fake device directory.
    init(uncheckedDevicePath devicePath: String) {
        self.devicePath = devicePath
    }

    // MARK: IOMMUBackend

    public func createContext() throws(BackendError) -> BackendContextID {
        let fd = try openDevice(joinPath(devicePath, "vfio"), operation: "vfio-type1 create context")
        return registry.add(Container(fd: fd))
    }

    public func attach(group: UInt32, to context: BackendContextID) throws(BackendError) -> BackendGroupInfo {
        try registry.with(context, operation: "attach") { (container: inout Container) throws(BackendError) in
            try registry.reserve(group, for: context)
            do throws(BackendError) {
                let (fd, info) = try attachGroup(group, to: container)
                container.groups[group] = fd
                return info
            } catch {
                registry.release([group])
                throw error
            }
        }
    }

    /// Opens the group and joins it to the container; on any failure undoes what it did.
    private func attachGroup(
        _ group: UInt32, to container: Container
    ) throws(BackendError) -> (FileDescriptor, BackendGroupInfo) {
        let path = joinPath(devicePath, "\(group)")
        let groupFD = try openDevice(
            path, operation: "vfio-type1 attach",
            hint: "is every device of group \(group) bound to vfio-pci (echo vfio-pci > "
                + "/sys/bus/pci/devices/BDF/driver_override; echo BDF > /sys/bus/pci/drivers_probe)?")
        var joined = false
        let first = container.groups.isEmpty
        do throws(BackendError) {
            var flags: UInt32 = 0
            try kernelCall(cvfio_group_get_status(groupFD.rawValue, &flags), "VFIO_GROUP_GET_STATUS", "group \(group)")
            guard flags & CVFIO_GROUP_FLAGS_VIABLE != 0 else {
                throw BackendError(
                    .EINVAL, operation: "vfio-type1 attach",
                    detail: "group \(group) is not viable: not all devices of the group are bound to vfio-pci "
                        + "(see /sys/kernel/iommu_groups/\(group)/devices)")
            }
            try kernelCall(
                cvfio_group_set_container(groupFD.rawValue, container.fd.rawValue), "VFIO_GROUP_SET_CONTAINER",
                "group \(group)")
            joined = true
            if first {
                try kernelCall(
                    cvfio_set_iommu(container.fd.rawValue, CVFIO_TYPE1v2_IOMMU), "VFIO_SET_IOMMU",
                    "VFIO_TYPE1v2_IOMMU for group \(group)")
            }
            let info = try VFIOType1Info.query(container: container.fd.rawValue).groupInfo
            return (groupFD, info)
        } catch {
            // Unsetting the container's only group also drops its IOMMU, so the next attach
            // sets it again.
            if joined { _ = cvfio_group_unset_container(groupFD.rawValue) }
            closeQuietly(groupFD)
            throw error
        }
    }

    public func detach(group: UInt32, from context: BackendContextID) throws(BackendError) {
        try registry.with(context, operation: "detach") { (container: inout Container) throws(BackendError) in
            guard let groupFD = container.groups[group] else {
                throw BackendError(
                    .EINVAL, operation: "vfio-type1 detach", detail: "group \(group) is not attached to \(context)")
            }
            try kernelCall(
                cvfio_group_unset_container(groupFD.rawValue), "VFIO_GROUP_UNSET_CONTAINER",
                "group \(group) (the tenant must close the group's device fds first)")
            closeQuietly(groupFD)
            container.groups[group] = nil
            // The last group took the IOMMU and every mapping with it.
            if container.groups.isEmpty { container.mappings.unmapAll() }
            registry.release([group])
        }
    }

    public func map(
        _ range: IOVARange, memory: MemoryReference, backing: BackingFile?, protection: DMAProtection,
        in context: BackendContextID
    ) throws(BackendError) {
        let backing = try requireBacking(backing, backend: name)
        try registry.with(context, operation: "map") { (container: inout Container) throws(BackendError) in
            guard !container.groups.isEmpty else {
                throw BackendError(
                    .EINVAL, operation: "vfio-type1 map", detail: "no IOMMU group is attached to \(context)")
            }
            var flags: UInt32 = 0
            if protection.contains(.read) { flags |= CVFIO_DMA_MAP_FLAG_READ }
            if protection.contains(.write) { flags |= CVFIO_DMA_MAP_FLAG_WRITE }
            let mapping = try mapThroughKernel(
                range, memory: memory, backing: backing, protection: protection, backend: name
            ) { (mapping) throws(BackendError) in
                try kernelCall(
                    cvfio_iommu_map_dma(container.fd.rawValue, mapping.address, range.first, mapping.length, flags),
                    "VFIO_IOMMU_MAP_DMA", "\(range) \(protection.label) from offset \(Hex(memory.offset))")
            }
            container.mappings.insert(range, mapping)
        }
    }

    public func unmap(_ range: IOVARange, in context: BackendContextID) throws(BackendError) -> UInt64 {
        try registry.with(context, operation: "unmap") { (container: inout Container) throws(BackendError) in
            // No IOMMU, no mappings: like the kernel's type1, unmapping nothing is 0 bytes.
            guard !container.groups.isEmpty else { return 0 }
            var unmapped: UInt64 = 0
            // 2^64 bytes do not fit the size field; the whole space is UNMAP_ALL.
            let (iova, size, flags) =
                range.size.map { (range.first, $0, UInt32(0)) } ?? (0, 0, CVFIO_DMA_UNMAP_FLAG_ALL)
            try kernelCall(
                cvfio_iommu_unmap_dma(container.fd.rawValue, iova, size, flags, &unmapped), "VFIO_IOMMU_UNMAP_DMA",
                "\(range)")
            container.mappings.unmapAll(inside: range)
            return unmapped
        }
    }

    public func destroyContext(_ context: BackendContextID) {
        guard var container = registry.remove(context) else { return }
        if !container.groups.isEmpty {
            var unmapped: UInt64 = 0
            // UNMAP_ALL is 5.12's; before it, each mapping goes on its own.
            if cvfio_iommu_unmap_dma(container.fd.rawValue, 0, 0, CVFIO_DMA_UNMAP_FLAG_ALL, &unmapped) != 0 {
                for range in container.mappings.ranges {
                    _ = cvfio_iommu_unmap_dma(container.fd.rawValue, range.first, range.sizeMinusOne + 1, 0, &unmapped)
                }
            }
        }
        for (_, groupFD) in container.groups {
            // Fails (EBUSY) while the tenant holds one of the group's device fds; closing the
            // group fd then leaves the kernel to let go once those close. The mappings are gone.
            _ = cvfio_group_unset_container(groupFD.rawValue)
            closeQuietly(groupFD)
        }
        closeQuietly(container.fd)
        container.mappings.unmapAll()
        registry.release(container.groups.keys)
    }

    public func deviceFD(_ device: String, group: UInt32, in context: BackendContextID) throws(BackendError) -> Int32 {
        try registry.with(context, operation: "device fd") { (container: inout Container) throws(BackendError) in
            guard let groupFD = container.groups[group] else {
                throw BackendError(
                    .EINVAL, operation: "vfio-type1 device fd", detail: "group \(group) is not attached to \(context)")
            }
            let result = device.withCString { cvfio_group_get_device_fd(groupFD.rawValue, $0) }
            return try kernelCall(result, "VFIO_GROUP_GET_DEVICE_FD", "device \(device) of group \(group)")
        }
    }

    // MARK: Queries

    /// `VFIO_IOMMU_GET_INFO` now, for a context with at least one group: page sizes, usable
    /// ranges and the mapping slots left (DMA_AVAIL).
    public func kernelInfo(of context: BackendContextID) throws(BackendError) -> VFIOType1Info {
        try registry.with(context, operation: "info") { (container: inout Container) throws(BackendError) in
            guard !container.groups.isEmpty else {
                throw BackendError(
                    .EINVAL, operation: "vfio-type1 info", detail: "no IOMMU group is attached to \(context)")
            }
            return try VFIOType1Info.query(container: container.fd.rawValue)
        }
    }

    public var contexts: [BackendContextID] { registry.contexts }

    /// The context `group` is attached to, if any.
    public func context(of group: UInt32) -> BackendContextID? { registry.owner(of: group) }
}
