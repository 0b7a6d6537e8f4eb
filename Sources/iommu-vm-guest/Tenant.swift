import PolicyClient
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// How the scenario's tenant reaches the IOMMU.
enum Mode: String {
    /// Through the daemon only: it maps into its kernel backend and hands out the device fd.
    /// The tenant cannot open the group itself.
    case daemon
    /// The daemon (simulated backend) decides, and the guest mirrors every allowed map into a
    /// VFIO container of its own: proves the rig while the daemon has no kernel backend.
    case direct
}

/// One tenant session: a daemon connection with edu's group attached, plus in direct mode the
/// tenant's own container holding the same group.
final class TenantSession {
    let client: PolicyClient
    let own: OwnContainer?
    /// Attach attempts that got EBUSY before one succeeded.
    let busyRetries: Int

    init(mode: Mode, socket: String, group: UInt32) throws {
        client = try PolicyClient(path: socket)
        busyRetries = try client.attachRetryingBusy(group: group)
        own = mode == .direct ? try OwnContainer(group: group) : nil
    }

    func map(_ memory: SharedMemory, iova: UInt64) throws {
        try client.map(iova: iova, size: memory.size, memory: memory.fd)
        guard let own else { return }
        let result = own.map(vaddr: memory.vaddr, iova: iova, size: memory.size)
        if result != 0 {
            try? client.unmap(iova: iova, size: memory.size)
            throw KernelError(call: "own VFIO_IOMMU_MAP_DMA \(hex(iova))", errno: result)
        }
    }

    func unmap(iova: UInt64, size: UInt64) throws {
        try client.unmap(iova: iova, size: size)
        guard let own else { return }
        let result = own.unmap(iova: iova, size: size)
        guard result.errno == 0, result.bytes == size else {
            throw KernelError(
                call: "own VFIO_IOMMU_UNMAP_DMA \(hex(iova)) (\(result.bytes) bytes)", errno: result.errno)
        }
    }

    /// The device fd: from the daemon (DEVICE_FD), or in direct mode from the own group.
    func deviceFD(_ device: PCIDevice) throws -> Int32 {
        if let own { return try own.deviceFD(device.address) }
        return try client.deviceFD(group: device.group, device: device.address).rawValue
    }

    var deviceSource: String { own == nil ? "the daemon (DEVICE_FD)" : "the guest's own group fd (direct mode)" }

    func close() { client.close() }
}

extension PolicyClient {
    /// ATTACH_GROUP, retried for up to 2 s while it fails with EBUSY: a closed or killed
    /// session's group is released when the daemon reads the end of its connection, which
    /// may come after the next session's attach. Returns the number of retries.
    func attachRetryingBusy(group: UInt32) throws -> Int {
        var retries = 0
        while true {
            do {
                try attach(group: group)
                return retries
            } catch let error as PolicyError where error.errno == EBUSY && retries < 100 {
                retries += 1
                usleep(20_000)
            }
        }
    }
}
