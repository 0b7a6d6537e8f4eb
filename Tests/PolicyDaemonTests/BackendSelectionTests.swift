import Foundation
import Testing

/// `--backend` as an operator meets it on this machine, which has neither /dev/iommu nor
/// /dev/vfio: auto falls back to the simulated IOMMU and says so; a kernel backend named
/// explicitly stops the daemon with what is missing.
@Suite(
    .enabled(
        if: !FileManager.default.fileExists(atPath: "/dev/vfio/vfio")
            && !FileManager.default.fileExists(atPath: "/dev/iommu"),
        "this machine has /dev/vfio or /dev/iommu: the fallback is checked where neither exists"))
struct BackendSelectionTests {
    @Test func autoWithoutKernelDevicesServesOnTheSimulatedIOMMUAndLogsWhy() throws {
        let daemon = try DaemonProcess(arguments: ["--profile", "x86-intel", "--backend", "auto"])
        #expect(daemon.log.contains("backend: auto: no /dev/iommu or /dev/vfio/vfio: simulated"))
        try daemon.client().map(iova: 0x4000_0000, size: 0x1000)
    }

    @Test(arguments: [
        ("vfio", "/dev/vfio/vfio does not exist: load VFIO with `modprobe vfio-pci`"),
        ("iommufd", "/dev/iommu"),
        ("bogus", "unknown backend \"bogus\": choose auto, vfio, iommufd or simulated"),
    ])
    func aMissingOrUnknownBackendNamedExplicitlyStopsTheDaemonWithWhatIsMissing(name: String, message: String) throws {
        let outcome = try run(
            DaemonProcess.binary("iommu-policyd"),
            ["--backend", name, "--socket", "/nonexistent/unused.sock", "--log-target", "stderr"])
        #expect(outcome.status == 2)
        #expect(outcome.stderr.contains("--backend \(name): "), "\(outcome.stderr)")
        #expect(outcome.stderr.contains(message), "\(outcome.stderr)")
    }
}
