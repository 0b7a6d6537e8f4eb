import IOMMUBackends
import IOMMUCore

/// Picks the backend `--backend` names.
///
/// - `vfio` (or `vfio-type1`): `VFIOType1Backend` on `<root>/dev/vfio`.
/// - `iommufd`: `IOMMUFDBackend` on `<root>/dev/iommu`.
/// - `auto`: iommufd when `/dev/iommu` exists and works, else VFIO when `/dev/vfio/vfio` exists
///   and works, else no kernel backend: the caller runs the simulated IOMMU.
/// - `simulated`: no kernel backend.
///
/// A backend named explicitly that is missing or unusable throws its startup error, which says
/// what is missing and how to fix it; `auto` instead moves on and says why in `why`.
public enum KernelBackendSelection {
    /// The names `make` accepts.
    public static let names = ["auto", "vfio", "vfio-type1", "iommufd", "simulated"]

    /// The backend to run, nil for the simulated IOMMU, and a sentence for the log saying why:
    /// `auto: /dev/iommu present, using iommufd`.
    public static func make(
        _ name: String, root: String = "/"
    ) throws(BackendError) -> (backend: (any IOMMUBackend)?, why: String) {
        let iommu = joinPath(root, "dev/iommu")
        let container = joinPath(root, "dev/vfio/vfio")
        switch name {
        case "vfio", "vfio-type1":
            let backend = try VFIOType1Backend(devicePath: joinPath(root, "dev/vfio"))
            return (backend, "vfio: \(container) offers VFIO type1 v2, using vfio-type1")
        case "iommufd":
            let backend = try IOMMUFDBackend(root: root)
            return (backend, "iommufd: \(iommu) works, using iommufd")
        case "simulated":
            return (nil, "simulated: chosen explicitly")
        case "auto":
            var passed: [String] = []
            if fileExists(iommu) {
                do throws(BackendError) {
                    return (try IOMMUFDBackend(root: root), "auto: \(iommu) present, using iommufd")
                } catch {
                    passed.append("\(iommu) present but unusable (\(error))")
                }
            } else {
                passed.append("no \(iommu)")
            }
            if fileExists(container) {
                do throws(BackendError) {
                    let backend = try VFIOType1Backend(devicePath: joinPath(root, "dev/vfio"))
                    return (backend, "auto: \(passed.joined(separator: ", ")), \(container) present, using vfio-type1")
                } catch {
                    passed.append("\(container) present but unusable (\(error))")
                }
            } else {
                passed.append("no \(container)")
            }
            if passed == ["no \(iommu)", "no \(container)"] {
                return (nil, "auto: no \(iommu) or \(container): simulated")
            }
            return (nil, "auto: \(passed.joined(separator: ", ")): simulated")
        default:
            throw BackendError(
                .EINVAL, operation: "backend selection",
                detail: "unknown backend \"\(name)\": choose auto, vfio, iommufd or simulated")
        }
    }
}
