import CVFIO
import IOMMUBackends
import IOMMUCore
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The iommufd backend: each context is an iommufd of its own (a fresh open of `/dev/iommu`)
/// holding one IOAS, and a group is attached by binding each of its VFIO device cdevs
/// (`/dev/vfio/devices/vfioN`) to that iommufd and attaching it to the IOAS.
///
/// Lifetime:
/// - `createContext` opens `/dev/iommu` and allocates an IOAS (`IOMMU_IOAS_ALLOC`).
/// - `attach` finds the group's devices in `<root>/sys/kernel/iommu_groups/<group>/devices`;
///   each must be bound to vfio-pci (its `vfio-dev/vfioN` names the cdev) or to no driver at
///   all (it is skipped, as VFIO's viability check allows). Each cdev is opened, bound
///   (`VFIO_DEVICE_BIND_IOMMUFD`) and attached to the IOAS (`VFIO_DEVICE_ATTACH_IOMMUFD_PT`);
///   then `IOMMU_IOAS_IOVA_RANGES` gives the usable ranges. The cdev fds stay open while the
///   group is attached; `deviceFD` hands out duplicates of them.
/// - `map` mmaps the tenant's memfd into the daemon and calls `IOMMU_IOAS_MAP` with
///   FIXED_IOVA; `unmap` calls `IOMMU_IOAS_UNMAP` and drops the daemon mappings in range.
/// - `detach` detaches and closes the group's cdevs. An IOAS keeps its mappings without any
///   device, but the protocol says the last group takes them, as VFIO type1 does, so the last
///   detach unmaps everything.
/// - `destroyContext` detaches and closes every cdev (a duplicate the tenant still holds then
///   blocks DMA), unmaps everything, destroys the IOAS and closes the iommufd.
///
/// Failure handling: an attach that fails at any device detaches and closes the devices it had
/// bound, so the group is left as it was; a failed IOAS_MAP munmaps the daemon mapping. Kernel
/// refusals keep the kernel's errno and name the ioctl (`kernel IOMMU_IOAS_MAP: EINVAL: …`).
///
/// iommufd has no page-size bitmap for an IOAS: `pageSizes` is the one bit of the IOVA
/// alignment IOMMU_IOAS_IOVA_RANGES reports (4 KiB when it reports less).
public final class IOMMUFDBackend: IOMMUBackend {
    public let name = "iommufd"
    /// The prefix for `dev/iommu`, `dev/vfio/devices` and `sys/kernel/iommu_groups`, normally `/`.
    public let root: String
    let registry = ContextRegistry<IOAS>(backend: "iommufd")

    struct IOAS: Sendable {
        let iommufd: FileDescriptor
        let id: UInt32
        var groups: [UInt32: [BoundDevice]] = [:]
        var mappings = DaemonMappings()
    }

    struct BoundDevice: Sendable {
        var device: GroupDevice
        var fd: FileDescriptor
        var devid: UInt32
    }

    /// A device of an IOMMU group and its VFIO cdev.
    struct GroupDevice: Hashable, Sendable {
        /// The PCI address, `0000:00:03.0`.
        var name: String
        /// `vfio3` for `/dev/vfio/devices/vfio3`.
        var cdev: String
    }

    /// Checks that `<root>/dev/iommu` exists and allocates an IOAS.
    public convenience init(root: String = "/") throws(BackendError) {
        let path = joinPath(root, "dev/iommu")
        let operation = "iommufd startup"
        guard fileExists(path) else {
            throw BackendError(
                .ENOENT, operation: operation,
                detail: "\(path) does not exist: `modprobe iommufd` on a kernel with CONFIG_IOMMUFD and "
                    + "CONFIG_VFIO_DEVICE_CDEV (Debian's kernels have neither), and boot with the IOMMU on "
                    + "(intel_iommu=on or amd_iommu=on); or use --backend vfio")
        }
        let fd = try openDevice(path, operation: operation)
        defer { closeQuietly(fd) }
        var ioas: UInt32 = 0
        let result = cvfio_iommufd_ioas_alloc(fd.rawValue, &ioas)
        guard result == 0 else {
            throw BackendError(
                ErrnoCode(kernel: -result), operation: operation,
                detail: "\(path) is not an iommufd: IOMMU_IOAS_ALLOC failed")
        }
        self.init(uncheckedRoot: root)
    }

    /// No checks: for tests that drive the sysfs walk against a fake tree.
    init(uncheckedRoot root: String) {
        self.root = root
    }

    // MARK: IOMMUBackend

    public func createContext() throws(BackendError) -> BackendContextID {
        let fd = try openDevice(joinPath(root, "dev/iommu"), operation: "iommufd create context")
        var ioas: UInt32 = 0
        let result = cvfio_iommufd_ioas_alloc(fd.rawValue, &ioas)
        guard result == 0 else {
            closeQuietly(fd)
            throw BackendError(
                ErrnoCode(kernel: -result), operation: "kernel IOMMU_IOAS_ALLOC", detail: "a new context's IOAS")
        }
        return registry.add(IOAS(iommufd: fd, id: ioas))
    }

    public func attach(group: UInt32, to context: BackendContextID) throws(BackendError) -> BackendGroupInfo {
        try registry.with(context, operation: "attach") { (ioas: inout IOAS) throws(BackendError) in
            try registry.reserve(group, for: context)
            do throws(BackendError) {
                let devices = try Self.vfioDevices(ofGroup: group, root: root)
                var bound: [BoundDevice] = []
                do throws(BackendError) {
                    for device in devices { bound.append(try bind(device, group: group, to: ioas)) }
                    let info = try Self.usableRanges(of: ioas)
                    ioas.groups[group] = bound
                    return info
                } catch {
                    for device in bound { release(device) }
                    throw error
                }
            } catch {
                registry.release([group])
                throw error
            }
        }
    }

    /// Opens, binds and attaches one device; closes it again when a step fails (closing the
    /// cdev unbinds it).
    private func bind(_ device: GroupDevice, group: UInt32, to ioas: IOAS) throws(BackendError) -> BoundDevice {
        let path = joinPath(root, "dev/vfio/devices/\(device.cdev)")
        let fd = try openDevice(path, operation: "iommufd attach", hint: "device \(device.name) of group \(group)")
        do throws(BackendError) {
            var devid: UInt32 = 0
            try kernelCall(
                cvfio_device_bind_iommufd(fd.rawValue, ioas.iommufd.rawValue, &devid), "VFIO_DEVICE_BIND_IOMMUFD",
                "device \(device.name) (\(path)) of group \(group)")
            var attached: UInt32 = 0
            try kernelCall(
                cvfio_device_attach_iommufd_pt(fd.rawValue, ioas.id, &attached), "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
                "device \(device.name) of group \(group) to IOAS \(ioas.id)")
            return BoundDevice(device: device, fd: fd, devid: devid)
        } catch {
            closeQuietly(fd)
            throw error
        }
    }

    /// Detaches the device from the IOAS (so a duplicate fd the tenant holds blocks DMA) and
    /// closes the daemon's fd.
    private func release(_ device: BoundDevice) {
        _ = cvfio_device_detach_iommufd_pt(device.fd.rawValue)
        closeQuietly(device.fd)
    }

    public func detach(group: UInt32, from context: BackendContextID) throws(BackendError) {
        try registry.with(context, operation: "detach") { (ioas: inout IOAS) throws(BackendError) in
            guard let devices = ioas.groups[group] else {
                throw BackendError(
                    .EINVAL, operation: "iommufd detach", detail: "group \(group) is not attached to \(context)")
            }
            for device in devices { release(device) }
            ioas.groups[group] = nil
            if ioas.groups.isEmpty {
                var unmapped: UInt64 = 0
                _ = cvfio_iommufd_ioas_unmap(ioas.iommufd.rawValue, ioas.id, 0, UInt64.max, &unmapped)
                ioas.mappings.unmapAll()
            }
            registry.release([group])
        }
    }

    public func map(
        _ range: IOVARange, memory: MemoryReference, backing: BackingFile?, protection: DMAProtection,
        in context: BackendContextID
    ) throws(BackendError) {
        let backing = try requireBacking(backing, backend: name)
        try registry.with(context, operation: "map") { (ioas: inout IOAS) throws(BackendError) in
            guard !ioas.groups.isEmpty else {
                throw BackendError(
                    .EINVAL, operation: "iommufd map", detail: "no IOMMU group is attached to \(context)")
            }
            var flags = CVFIO_IOAS_MAP_FIXED_IOVA
            if protection.contains(.read) { flags |= CVFIO_IOAS_MAP_READABLE }
            if protection.contains(.write) { flags |= CVFIO_IOAS_MAP_WRITEABLE }
            let mapping = try mapThroughKernel(
                range, memory: memory, backing: backing, protection: protection, backend: name
            ) { (mapping) throws(BackendError) in
                try kernelCall(
                    cvfio_iommufd_ioas_map(
                        ioas.iommufd.rawValue, ioas.id, mapping.address, mapping.length, range.first, flags),
                    "IOMMU_IOAS_MAP", "\(range) \(protection.label) from offset \(Hex(memory.offset))")
            }
            ioas.mappings.insert(range, mapping)
        }
    }

    public func unmap(_ range: IOVARange, in context: BackendContextID) throws(BackendError) -> UInt64 {
        try registry.with(context, operation: "unmap") { (ioas: inout IOAS) throws(BackendError) in
            guard !ioas.groups.isEmpty else { return 0 }
            var unmapped: UInt64 = 0
            // iova 0 with length 2^64-1 is iommufd's "everything".
            let (iova, length) = range.size.map { (range.first, $0) } ?? (0, UInt64.max)
            let result = cvfio_iommufd_ioas_unmap(ioas.iommufd.rawValue, ioas.id, iova, length, &unmapped)
            // iommufd says ENOENT for a range with no mapping in it; the protocol says 0 bytes.
            // With a daemon mapping there, ENOENT means the range cuts one, and stays an error.
            if result == -ENOENT && !ioas.mappings.overlaps(range) { return 0 }
            try kernelCall(result, "IOMMU_IOAS_UNMAP", "\(range)")
            ioas.mappings.unmapAll(inside: range)
            return unmapped
        }
    }

    public func destroyContext(_ context: BackendContextID) {
        guard var ioas = registry.remove(context) else { return }
        for devices in ioas.groups.values {
            for device in devices { release(device) }
        }
        var unmapped: UInt64 = 0
        _ = cvfio_iommufd_ioas_unmap(ioas.iommufd.rawValue, ioas.id, 0, UInt64.max, &unmapped)
        _ = cvfio_iommufd_destroy(ioas.iommufd.rawValue, ioas.id)
        closeQuietly(ioas.iommufd)
        ioas.mappings.unmapAll()
        registry.release(ioas.groups.keys)
    }

    public func deviceFD(_ device: String, group: UInt32, in context: BackendContextID) throws(BackendError) -> Int32 {
        try registry.with(context, operation: "device fd") { (ioas: inout IOAS) throws(BackendError) in
            guard let devices = ioas.groups[group] else {
                throw BackendError(
                    .EINVAL, operation: "iommufd device fd", detail: "group \(group) is not attached to \(context)")
            }
            guard let bound = devices.first(where: { $0.device.name == device }) else {
                throw BackendError(
                    .ENOENT, operation: "iommufd device fd",
                    detail: "device \(device) is not a vfio-pci device of group \(group)")
            }
            let fd = fcntl(bound.fd.rawValue, F_DUPFD_CLOEXEC, 0)
            guard fd >= 0 else {
                throw BackendError(ErrnoCode(kernel: errno), operation: "iommufd device fd", detail: "dup of \(device)")
            }
            return fd
        }
    }

    public var contexts: [BackendContextID] { registry.contexts }

    /// The context `group` is attached to, if any.
    public func context(of group: UInt32) -> BackendContextID? { registry.owner(of: group) }

    // MARK: Kernel and sysfs

    /// The IOAS's usable ranges after an attach, via IOMMU_IOAS_IOVA_RANGES.
    static func usableRanges(of ioas: IOAS) throws(BackendError) -> BackendGroupInfo {
        var capacity: UInt32 = 16
        while true {
            var ranges = [cvfio_iova_range](repeating: cvfio_iova_range(), count: Int(capacity))
            var count: UInt32 = 0
            var alignment: UInt64 = 0
            let result = ranges.withUnsafeMutableBufferPointer {
                cvfio_iommufd_ioas_iova_ranges(
                    ioas.iommufd.rawValue, ioas.id, $0.baseAddress!, capacity, &count, &alignment)
            }
            if result == -EMSGSIZE && count > capacity {
                capacity = count
                continue
            }
            try kernelCall(result, "IOMMU_IOAS_IOVA_RANGES", "IOAS \(ioas.id)")
            return try groupInfo(
                ranges: Array(ranges.prefix(Int(count))), pageSizes: pageSizes(alignment: alignment),
                ioctl: "IOMMU_IOAS_IOVA_RANGES")
        }
    }

    /// The one page size an IOVA alignment implies: the alignment itself, but at least 4 KiB
    /// (the kernel reports 1 for an IOAS without a domain).
    static func pageSizes(alignment: UInt64) -> UInt64 {
        guard alignment.nonzeroBitCount == 1, alignment > 4096 else { return 4096 }
        return alignment
    }

    /// The group's devices that VFIO can give out, from sysfs. A device bound to no driver is
    /// skipped (it does not stop the group being claimed); one bound to another driver, or to
    /// vfio-pci without a cdev, fails with the reason and the fix.
    static func vfioDevices(ofGroup group: UInt32, root: String) throws(BackendError) -> [GroupDevice] {
        let groupDirectory = joinPath(root, "sys/kernel/iommu_groups/\(group)/devices")
        guard let names = directoryEntries(groupDirectory) else {
            throw BackendError(
                .ENOENT, operation: "iommufd attach", detail: "no IOMMU group \(group) (\(groupDirectory))")
        }
        var devices: [GroupDevice] = []
        for name in names {
            let deviceDirectory = groupDirectory + "/" + name
            if let cdev = directoryEntries(deviceDirectory + "/vfio-dev")?.first(where: { $0.hasPrefix("vfio") }) {
                devices.append(GroupDevice(name: name, cdev: cdev))
                continue
            }
            guard let driver = linkTargetName(deviceDirectory + "/driver") else { continue }
            if driver == "vfio-pci" {
                throw BackendError(
                    .ENODEV, operation: "iommufd attach",
                    detail: "device \(name) of group \(group) is bound to vfio-pci but has no vfio-dev cdev: the "
                        + "kernel lacks CONFIG_VFIO_DEVICE_CDEV; use --backend vfio")
            }
            throw BackendError(
                .EINVAL, operation: "iommufd attach",
                detail: "device \(name) of group \(group) is bound to \(driver), not vfio-pci: not all devices of "
                    + "the group are bound to vfio-pci (echo vfio-pci > /sys/bus/pci/devices/\(name)/driver_override; "
                    + "echo \(name) > /sys/bus/pci/drivers/\(driver)/unbind; echo \(name) > /sys/bus/pci/drivers_probe)"
            )
        }
        guard !devices.isEmpty else {
            throw BackendError(
                .EINVAL, operation: "iommufd attach", detail: "no device of group \(group) is bound to vfio-pci")
        }
        return devices
    }
}
