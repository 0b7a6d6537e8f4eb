import Foundation
import IOMMUBackends
import IOMMUCore
import Testing

@testable import KernelBackends

/// Against the machine's own kernel. Here (a build machine without an IOMMU) these skip and say
/// why; the VM rig (Tests/vm) proves the same paths in a QEMU guest with an emulated Intel IOMMU.
/// On real hardware, bind a spare device to vfio-pci and set IOMMU_POLICYD_TEST_VFIO_GROUP to
/// its group to run the map tests too.
@Suite("Real kernel")
struct RealKernelTests {
    static let hasVFIO = FileManager.default.fileExists(atPath: "/dev/vfio/vfio")
    static let hasIOMMUFD = FileManager.default.fileExists(atPath: "/dev/iommu")
    static let group = ProcessInfo.processInfo.environment["IOMMU_POLICYD_TEST_VFIO_GROUP"].flatMap { UInt32($0) }

    @Test(
        .enabled(
            if: hasVFIO, "no /dev/vfio/vfio on this machine: the VFIO backend runs in the VM rig (Tests/vm)"))
    func theVFIOBackendStartsAndItsContainersOpenAndClose() throws {
        let backend = try VFIOType1Backend()
        let context = try backend.createContext()
        #expect(try backend.unmap(IOVARange(first: 0, last: 0xfff)!, in: context) == 0)
        backend.destroyContext(context)
        #expect(backend.contexts.isEmpty)
    }

    @Test(
        .enabled(
            if: hasIOMMUFD, "no /dev/iommu on this machine: the iommufd backend runs in the VM rig (Tests/vm)"))
    func theIOMMUFDBackendStartsAndItsIOASesAllocateAndGo() throws {
        let backend = try IOMMUFDBackend()
        let context = try backend.createContext()
        backend.destroyContext(context)
        #expect(backend.contexts.isEmpty)
    }

    @Test(
        .enabled(
            if: hasVFIO && group != nil,
            Comment(
                rawValue: hasVFIO
                    ? "set IOMMU_POLICYD_TEST_VFIO_GROUP to a group bound to vfio-pci to map through the real "
                        + "VFIO backend"
                    : "no /dev/vfio/vfio on this machine: the VFIO backend runs in the VM rig (Tests/vm)")))
    func aRealGroupAttachesMapsUnmapsAndRefusesTheMSIWindow() throws {
        let backend = try VFIOType1Backend()
        let group = try #require(Self.group)
        let context = try backend.createContext()
        defer { backend.destroyContext(context) }
        let info = try backend.attach(group: group, to: context)
        #expect(!info.usableRanges.isEmpty)
        #expect(backendError { try backend.attach(group: group, to: context) }?.errno == .EBUSY)

        let path = "/dev/shm/iommu-policyd-test-\(UUID().uuidString)"
        #expect(FileManager.default.createFile(atPath: path, contents: Data(count: 0x20_0000)))
        let fd = open(path, O_RDWR | O_CLOEXEC)
        defer {
            close(fd)
            unlink(path)
        }
        let memory = MemoryReference(handle: 1, offset: 0)
        let mapped = IOVARange(start: 0x4000_0000, size: 0x20_0000)!
        try backend.map(mapped, memory: memory, backing: BackingFile(fd: fd), protection: .readWrite, in: context)
        #expect(daemonMappings(of: path).count == 1)
        let duplicate = backendError {
            try backend.map(mapped, memory: memory, backing: BackingFile(fd: fd), protection: .readWrite, in: context)
        }
        #expect(duplicate?.description.hasPrefix("kernel VFIO_IOMMU_MAP_DMA: EEXIST") == true)
        let msi = IOVARange(start: 0xfee0_0000, size: 0x1000)!
        let refused = backendError {
            try backend.map(msi, memory: memory, backing: BackingFile(fd: fd), protection: .read, in: context)
        }
        #expect(refused?.description.hasPrefix("kernel VFIO_IOMMU_MAP_DMA: EINVAL") == true)
        // Only the successful map is still in the daemon.
        #expect(daemonMappings(of: path).count == 1)
        #expect(try backend.unmap(mapped, in: context) == 0x20_0000)
        #expect(daemonMappings(of: path).isEmpty)
    }
}
