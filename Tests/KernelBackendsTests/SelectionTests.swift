import IOMMUBackends
import IOMMUCore
import TestSupport
import Testing

@testable import KernelBackends

/// `--backend` against fake roots: what is there decides, and what is missing is said.
@Suite("Backend selection")
struct SelectionTests {
    @Test func autoWithNeitherDeviceChoosesTheSimulatedIOMMUAndSaysWhy() throws {
        let root = try TemporaryDirectory()
        let (backend, why) = try KernelBackendSelection.make("auto", root: root.path)
        #expect(backend == nil)
        #expect(why == "auto: no \(root.path)/dev/iommu or \(root.path)/dev/vfio/vfio: simulated")
    }

    @Test func autoOnTheRealRootSaysWhichDeviceItFound() throws {
        let (backend, why) = try KernelBackendSelection.make("auto")
        #expect(why.hasPrefix("auto: "))
        if backend == nil {
            #expect(why.hasSuffix(": simulated"))
        } else {
            #expect(why.contains("present, using"))
        }
    }

    @Test func anExplicitVFIOBackendThatIsMissingSaysWhatToLoad() throws {
        let root = try TemporaryDirectory()
        let error = backendError { try KernelBackendSelection.make("vfio", root: root.path) }
        #expect(error?.errno == .ENOENT)
        let text = error?.description ?? ""
        #expect(text.hasPrefix("vfio-type1 startup: ENOENT: \(root.path)/dev/vfio/vfio does not exist"))
        #expect(text.contains("modprobe vfio-pci"))
        #expect(text.contains("CONFIG_VFIO_IOMMU_TYPE1"))
        #expect(text.contains("intel_iommu=on"))
    }

    @Test func anExplicitIOMMUFDBackendThatIsMissingSaysWhatToLoad() throws {
        let root = try TemporaryDirectory()
        let error = backendError { try KernelBackendSelection.make("iommufd", root: root.path) }
        #expect(error?.errno == .ENOENT)
        let text = error?.description ?? ""
        #expect(text.hasPrefix("iommufd startup: ENOENT: \(root.path)/dev/iommu does not exist"))
        #expect(text.contains("modprobe iommufd"))
        #expect(text.contains("CONFIG_IOMMUFD"))
        #expect(text.contains("--backend vfio"))
    }

    @Test func aDeviceNodeThatIsNotAVFIOContainerIsRefusedWithTheKernelsAnswer() throws {
        let root = try TemporaryDirectory()
        try root.write("dev/vfio/vfio", "")
        let error = backendError { try KernelBackendSelection.make("vfio", root: root.path) }
        #expect(error?.errno.name == "ENOTTY")
        #expect(error?.detail.contains("is not a VFIO container") == true)
    }

    @Test func autoPassesOverDevicesThatDoNotWorkAndSaysSo() throws {
        let root = try TemporaryDirectory()
        try root.write("dev/iommu", "")
        try root.write("dev/vfio/vfio", "")
        let (backend, why) = try KernelBackendSelection.make("auto", root: root.path)
        #expect(backend == nil)
        #expect(why.hasPrefix("auto: \(root.path)/dev/iommu present but unusable (iommufd startup: ENOTTY"))
        #expect(why.contains("\(root.path)/dev/vfio/vfio present but unusable (vfio-type1 startup: ENOTTY"))
        #expect(why.hasSuffix(": simulated"))
    }

    @Test func autoWithOnlyABrokenIOMMUStillTriesVFIO() throws {
        let root = try TemporaryDirectory()
        try root.write("dev/iommu", "")
        let (backend, why) = try KernelBackendSelection.make("auto", root: root.path)
        #expect(backend == nil)
        #expect(why.contains("no \(root.path)/dev/vfio/vfio"))
    }

    @Test func simulatedIsAChoiceAndUnknownNamesAreRefused() throws {
        let (backend, why) = try KernelBackendSelection.make("simulated")
        #expect(backend == nil)
        #expect(why == "simulated: chosen explicitly")
        let error = backendError { try KernelBackendSelection.make("vfio2") }
        #expect(
            error?.description
                == "backend selection: EINVAL: unknown backend \"vfio2\": choose auto, vfio, iommufd or simulated")
    }
}
