import IOMMUBackends
import IOMMUCore
import TestSupport
import Testing

@testable import KernelBackends

/// How the iommufd backend finds a group's VFIO cdevs, against fake sysfs trees laid out as
/// the kernel's: iommu_groups/N/devices/BDF links to the device directory, which holds a
/// `driver` link and, for vfio-pci with CONFIG_VFIO_DEVICE_CDEV, `vfio-dev/vfioN`.
@Suite("iommufd sysfs discovery")
struct SysfsDiscoveryTests {
    /// Adds `device` to `group`, bound to `driver` (nil: none), with cdev `vfioN` when given.
    static func add(
        _ device: String, group: UInt32, driver: String?, cdev: String?, in root: TemporaryDirectory
    ) throws {
        let directory = "sys/devices/pci0000:00/\(device)"
        try root.makeDirectory(directory)
        if let driver { try root.link("\(directory)/driver", to: "../../../bus/pci/drivers/\(driver)") }
        if let cdev { try root.makeDirectory("\(directory)/vfio-dev/\(cdev)") }
        try root.link(
            "sys/kernel/iommu_groups/\(group)/devices/\(device)", to: "../../../../devices/pci0000:00/\(device)")
    }

    @Test func aGroupBoundToVFIOPCIYieldsItsCdevsAndSkipsDriverlessDevices() throws {
        let root = try TemporaryDirectory()
        try Self.add("0000:00:03.0", group: 7, driver: "vfio-pci", cdev: "vfio2", in: root)
        try Self.add("0000:00:03.1", group: 7, driver: nil, cdev: nil, in: root)
        try Self.add("0000:00:04.0", group: 8, driver: "vfio-pci", cdev: "vfio3", in: root)
        let devices = try IOMMUFDBackend.vfioDevices(ofGroup: 7, root: root.path)
        #expect(devices == [IOMMUFDBackend.GroupDevice(name: "0000:00:03.0", cdev: "vfio2")])
    }

    @Test func aDeviceBoundToAnotherDriverMakesTheGroupUnusableAndSaysHowToRebind() throws {
        let root = try TemporaryDirectory()
        try Self.add("0000:00:03.0", group: 7, driver: "vfio-pci", cdev: "vfio2", in: root)
        try Self.add("0000:00:03.1", group: 7, driver: "e1000e", cdev: nil, in: root)
        let error = backendError { try IOMMUFDBackend.vfioDevices(ofGroup: 7, root: root.path) }
        #expect(error?.errno == .EINVAL)
        #expect(error?.detail.hasPrefix("device 0000:00:03.1 of group 7 is bound to e1000e, not vfio-pci") == true)
        #expect(error?.detail.contains("driver_override") == true)
    }

    @Test func vfioPCIWithoutACdevMeansTheKernelLacksDeviceCdevs() throws {
        let root = try TemporaryDirectory()
        try Self.add("0000:00:03.0", group: 7, driver: "vfio-pci", cdev: nil, in: root)
        let error = backendError { try IOMMUFDBackend.vfioDevices(ofGroup: 7, root: root.path) }
        #expect(error?.errno == .ENODEV)
        #expect(error?.detail.contains("CONFIG_VFIO_DEVICE_CDEV") == true)
    }

    @Test func aGroupWithNoVFIODeviceOrNoDirectoryIsRefused() throws {
        let root = try TemporaryDirectory()
        try Self.add("0000:00:03.0", group: 7, driver: nil, cdev: nil, in: root)
        #expect(
            backendError { try IOMMUFDBackend.vfioDevices(ofGroup: 7, root: root.path) }?.detail
                == "no device of group 7 is bound to vfio-pci")
        #expect(backendError { try IOMMUFDBackend.vfioDevices(ofGroup: 9, root: root.path) }?.errno == .ENOENT)
    }

    @Test func attachingAGroupWhoseCdevIsMissingLeavesTheGroupFree() throws {
        let root = try TemporaryDirectory()
        try Self.add("0000:00:03.0", group: 7, driver: "vfio-pci", cdev: "vfio2", in: root)
        // A context without a kernel behind it: the registry alone, as createContext would
        // leave it after IOMMU_IOAS_ALLOC.
        let backend = IOMMUFDBackend(uncheckedRoot: root.path)
        let ioas = try root.write("dev/iommu", "")
        let fd = try openDevice(ioas, operation: "test")
        let context = backend.registry.add(IOMMUFDBackend.IOAS(iommufd: fd, id: 1))
        let error = backendError { try backend.attach(group: 7, to: context) }
        #expect(error?.errno == .ENOENT)
        #expect(error?.detail.contains("\(root.path)/dev/vfio/devices/vfio2") == true)
        #expect(backend.context(of: 7) == nil)
        // Now the cdev exists but is no VFIO device: the kernel's ENOTTY, and the fd is closed.
        let cdev = try root.write("dev/vfio/devices/vfio2", "")
        let bind = backendError { try backend.attach(group: 7, to: context) }
        #expect(bind?.description.hasPrefix("kernel VFIO_DEVICE_BIND_IOMMUFD: ENOTTY: device 0000:00:03.0") == true)
        #expect(backend.context(of: 7) == nil)
        #expect(openDescriptors(to: cdev) == 0)
        backend.destroyContext(context)
        #expect(openDescriptors(to: ioas) == 0)
        #expect(backend.contexts.isEmpty)
    }
}
