#if canImport(Glibc)
    import Glibc
#endif

// The guest's own view of the kernel: the VFIO type1 ioctls it needs to compare the daemon
// with, laid out here after include/uapi/linux/vfio.h rather than through CVFIO, so that the
// rig checks the daemon's kernel backend against an independent implementation.

/// A kernel call that failed, with the errno it returned.
struct KernelError: Error, CustomStringConvertible {
    var call: String
    var errno: Int32

    var description: String { "\(call): \(errnoName(errno))" }
}

func errnoName(_ code: Int32) -> String {
    let names: [Int32: String] = [
        0: "ok", EPERM: "EPERM", ENOENT: "ENOENT", EIO: "EIO", EBADF: "EBADF", ENOMEM: "ENOMEM", EACCES: "EACCES",
        EFAULT: "EFAULT", EBUSY: "EBUSY", EEXIST: "EEXIST", ENODEV: "ENODEV", EINVAL: "EINVAL", ENOSPC: "ENOSPC",
        ENOTTY: "ENOTTY", ENOSYS: "ENOSYS", EOVERFLOW: "EOVERFLOW", EOPNOTSUPP: "EOPNOTSUPP", ENXIO: "ENXIO",
    ]
    return names[code] ?? "errno \(code)"
}

/// ioctl numbers: _IO(';', 100 + n), VFIO's encoding (the size lives in each struct's argsz).
enum VFIORequest {
    private static func io(_ n: UInt) -> UInt { (UInt(UInt8(ascii: ";")) << 8) | (100 + n) }
    static let getAPIVersion = io(0)
    static let checkExtension = io(1)
    static let setIOMMU = io(2)
    static let groupGetStatus = io(3)
    static let groupSetContainer = io(4)
    static let groupGetDeviceFD = io(6)
    static let deviceGetRegionInfo = io(8)
    static let iommuGetInfo = io(12)
    static let mapDMA = io(13)
    static let unmapDMA = io(14)

    static let type1v2: Int32 = 3
    static let groupViable: UInt32 = 1
    static let capIOVARange: UInt16 = 1
    static let capDMAAvail: UInt16 = 3
    static let infoCaps: UInt32 = 1 << 1
}

/// ioctl with a pointer argument, retried on EINTR; 0 or the errno.
private func ioctlErrno(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer) -> Int32 {
    while true {
        if ioctl(fd, request, argument) >= 0 { return 0 }
        if errno != EINTR { return errno }
    }
}

private func openOrThrow(_ path: String, _ flags: Int32) throws(KernelError) -> Int32 {
    let fd = open(path, flags | O_CLOEXEC)
    guard fd >= 0 else { throw KernelError(call: "open \(path)", errno: errno) }
    return fd
}

/// What VFIO_IOMMU_GET_INFO reports, capability chain parsed.
struct Type1Info {
    var pageSizes: UInt64
    /// The IOVA_RANGE capability: usable [start, end] ranges, inclusive.
    var ranges: [(first: UInt64, last: UInt64)]
    /// The DMA_AVAIL capability: mappings the container may still make.
    var dmaAvailable: UInt32?
}

/// A VFIO container (/dev/vfio/vfio) with the type1 v2 IOMMU once a group is in it.
final class VFIOContainer {
    let fd: Int32

    init() throws(KernelError) {
        fd = try openOrThrow("/dev/vfio/vfio", O_RDWR)
        let version = ioctl(fd, VFIORequest.getAPIVersion)
        guard version == 0 else {
            close(fd)
            throw KernelError(call: "VFIO_GET_API_VERSION (got \(version))", errno: EINVAL)
        }
        guard ioctl(fd, VFIORequest.checkExtension, VFIORequest.type1v2) > 0 else {
            close(fd)
            throw KernelError(call: "VFIO_CHECK_EXTENSION(TYPE1v2)", errno: ENOSYS)
        }
    }

    deinit { close(fd) }

    /// VFIO_SET_IOMMU, after the first group joined.
    func setType1v2() throws(KernelError) {
        guard ioctl(fd, VFIORequest.setIOMMU, VFIORequest.type1v2) == 0 else {
            throw KernelError(call: "VFIO_SET_IOMMU", errno: errno)
        }
    }

    func info() throws(KernelError) -> Type1Info {
        // struct vfio_iommu_type1_info: argsz, flags, iova_pgsizes, cap_offset (24 bytes with
        // padding). The kernel raises argsz to what the capability chain needs.
        var buffer = [UInt8](repeating: 0, count: 24)
        for _ in 0..<2 {
            store(UInt32(buffer.count), at: 0, in: &buffer)
            let result = buffer.withUnsafeMutableBytes { ioctlErrno(fd, VFIORequest.iommuGetInfo, $0.baseAddress!) }
            guard result == 0 else { throw KernelError(call: "VFIO_IOMMU_GET_INFO", errno: result) }
            let needed = Int(load(UInt32.self, at: 0, in: buffer))
            if needed <= buffer.count { break }
            buffer = [UInt8](repeating: 0, count: needed)
        }
        var info = Type1Info(pageSizes: load(UInt64.self, at: 8, in: buffer), ranges: [], dmaAvailable: nil)
        guard load(UInt32.self, at: 4, in: buffer) & VFIORequest.infoCaps != 0 else { return info }
        // struct vfio_info_cap_header { u16 id; u16 version; u32 next; }, next from the start.
        var offset = Int(load(UInt32.self, at: 16, in: buffer))
        var seen = 0
        while offset != 0, offset + 8 <= buffer.count, seen < 16 {
            let id = load(UInt16.self, at: offset, in: buffer)
            switch id {
            case VFIORequest.capIOVARange:
                let count = Int(load(UInt32.self, at: offset + 8, in: buffer))
                for index in 0..<count where offset + 16 + index * 16 + 16 <= buffer.count {
                    let base = offset + 16 + index * 16
                    info.ranges.append(
                        (load(UInt64.self, at: base, in: buffer), load(UInt64.self, at: base + 8, in: buffer)))
                }
            case VFIORequest.capDMAAvail:
                info.dmaAvailable = load(UInt32.self, at: offset + 8, in: buffer)
            default: break
            }
            offset = Int(load(UInt32.self, at: offset + 4, in: buffer))
            seen += 1
        }
        return info
    }

    /// VFIO_IOMMU_MAP_DMA: 0 or the kernel's errno.
    func map(vaddr: UInt64, iova: UInt64, size: UInt64, flags: UInt32 = 3) -> Int32 {
        // struct vfio_iommu_type1_dma_map { u32 argsz; u32 flags; u64 vaddr; u64 iova; u64 size; }
        var buffer = [UInt8](repeating: 0, count: 32)
        store(UInt32(32), at: 0, in: &buffer)
        store(flags, at: 4, in: &buffer)
        store(vaddr, at: 8, in: &buffer)
        store(iova, at: 16, in: &buffer)
        store(size, at: 24, in: &buffer)
        return buffer.withUnsafeMutableBytes { ioctlErrno(fd, VFIORequest.mapDMA, $0.baseAddress!) }
    }

    /// VFIO_IOMMU_UNMAP_DMA: the errno (0 on success) and the bytes the kernel unmapped.
    func unmap(iova: UInt64, size: UInt64, flags: UInt32 = 0) -> (errno: Int32, bytes: UInt64) {
        // struct vfio_iommu_type1_dma_unmap { u32 argsz; u32 flags; u64 iova; u64 size; }
        var buffer = [UInt8](repeating: 0, count: 24)
        store(UInt32(24), at: 0, in: &buffer)
        store(flags, at: 4, in: &buffer)
        store(iova, at: 8, in: &buffer)
        store(size, at: 16, in: &buffer)
        let result = buffer.withUnsafeMutableBytes { ioctlErrno(fd, VFIORequest.unmapDMA, $0.baseAddress!) }
        return (result, load(UInt64.self, at: 16, in: buffer))
    }
}

/// A VFIO group (/dev/vfio/N), joined to a container.
final class VFIOGroup {
    let fd: Int32
    let id: UInt32

    init(id: UInt32) throws(KernelError) {
        self.id = id
        fd = try openOrThrow("/dev/vfio/\(id)", O_RDWR)
    }

    deinit { close(fd) }

    func isViable() throws(KernelError) -> Bool {
        var status: (UInt32, UInt32) = (8, 0)
        let result = withUnsafeMutableBytes(of: &status) { ioctlErrno(fd, VFIORequest.groupGetStatus, $0.baseAddress!) }
        guard result == 0 else { throw KernelError(call: "VFIO_GROUP_GET_STATUS", errno: result) }
        return status.1 & VFIORequest.groupViable != 0
    }

    func join(_ container: VFIOContainer) throws(KernelError) {
        var containerFD = container.fd
        let result = ioctlErrno(fd, VFIORequest.groupSetContainer, &containerFD)
        guard result == 0 else { throw KernelError(call: "VFIO_GROUP_SET_CONTAINER", errno: result) }
    }

    /// VFIO_GROUP_GET_DEVICE_FD by PCI address. The caller owns the fd.
    func deviceFD(_ address: String) throws(KernelError) -> Int32 {
        var name = Array(address.utf8CString)
        let fd = name.withUnsafeMutableBytes { ioctl(self.fd, VFIORequest.groupGetDeviceFD, $0.baseAddress!) }
        guard fd >= 0 else { throw KernelError(call: "VFIO_GROUP_GET_DEVICE_FD \(address)", errno: errno) }
        return fd
    }
}

/// A container holding one group, ready to map: what a tenant would build without the daemon.
///
/// A class, and every use goes through it, so the group stays open for as long as the
/// container is used: a container whose last group closes loses its IOMMU, and Swift may end
/// a value's lifetime at its last use, not at the end of the scope.
final class OwnContainer {
    private let container: VFIOContainer
    private let group: VFIOGroup

    init(group id: UInt32) throws(KernelError) {
        group = try VFIOGroup(id: id)
        guard try group.isViable() else { throw KernelError(call: "group \(id) is not viable", errno: EINVAL) }
        container = try VFIOContainer()
        try group.join(container)
        try container.setType1v2()
    }

    func info() throws(KernelError) -> Type1Info {
        defer { withExtendedLifetime(group) {} }
        return try container.info()
    }

    func map(vaddr: UInt64, iova: UInt64, size: UInt64, flags: UInt32 = 3) -> Int32 {
        defer { withExtendedLifetime(group) {} }
        return container.map(vaddr: vaddr, iova: iova, size: size, flags: flags)
    }

    func unmap(iova: UInt64, size: UInt64) -> (errno: Int32, bytes: UInt64) {
        defer { withExtendedLifetime(group) {} }
        return container.unmap(iova: iova, size: size)
    }

    func deviceFD(_ address: String) throws(KernelError) -> Int32 {
        defer { withExtendedLifetime(container) {} }
        return try group.deviceFD(address)
    }
}

/// A region of a VFIO device fd (VFIO_DEVICE_GET_REGION_INFO).
struct DeviceRegion {
    var index: UInt32
    var flags: UInt32
    var size: UInt64
    var offset: UInt64

    /// VFIO_PCI_BAR0_REGION_INDEX and VFIO_PCI_CONFIG_REGION_INDEX.
    static let bar0: UInt32 = 0
    static let config: UInt32 = 7

    init(device: Int32, index: UInt32) throws(KernelError) {
        // struct vfio_region_info { u32 argsz, flags, index, cap_offset; u64 size, offset; }
        var buffer = [UInt8](repeating: 0, count: 32)
        store(UInt32(32), at: 0, in: &buffer)
        store(index, at: 8, in: &buffer)
        let result = buffer.withUnsafeMutableBytes {
            ioctlErrno(device, VFIORequest.deviceGetRegionInfo, $0.baseAddress!)
        }
        guard result == 0 else { throw KernelError(call: "VFIO_DEVICE_GET_REGION_INFO(\(index))", errno: result) }
        self.index = index
        flags = load(UInt32.self, at: 4, in: buffer)
        size = load(UInt64.self, at: 16, in: buffer)
        offset = load(UInt64.self, at: 24, in: buffer)
    }
}

// MARK: Little-endian struct fields

func store<T: FixedWidthInteger>(_ value: T, at offset: Int, in buffer: inout [UInt8]) {
    withUnsafeBytes(of: value.littleEndian) { bytes in
        for (index, byte) in bytes.enumerated() { buffer[offset + index] = byte }
    }
}

func load<T: FixedWidthInteger>(_ type: T.Type, at offset: Int, in buffer: [UInt8]) -> T {
    var value = T.zero
    withUnsafeMutableBytes(of: &value) { bytes in
        for index in 0..<bytes.count { bytes[index] = buffer[offset + index] }
    }
    return T(littleEndian: value)
}
