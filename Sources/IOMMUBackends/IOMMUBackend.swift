import IOMMUCore

/// Names one context of a backend: a VFIO container, or an iommufd IOAS, holding one tenant
/// session's groups and mappings. The backend issues it; it is never reused while the
/// backend lives, so a stale ID cannot reach another session's context.
public struct BackendContextID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { "context \(rawValue)" }
}

/// What a context can translate once a group has been attached, as the kernel reports it
/// (`VFIO_IOMMU_GET_INFO` with its IOVA_RANGE capability, or iommufd `IOMMU_IOAS_IOVA_RANGES`).
///
/// These are the *context's* values after the attach, not the group's alone: with several
/// groups attached the kernel reports the intersection, and that is what the daemon must
/// cross-check its own region database against.
public struct BackendGroupInfo: Hashable, Sendable {
    /// The IOVA range the context's domain translates: the intersection of its groups' apertures.
    public var aperture: IOVARange
    /// Supported page sizes (bit n set means 2^n bytes): the AND of its groups' bitmaps.
    public var pageSizes: UInt64
    /// The aperture minus every reserved range of every attached group, sorted and disjoint.
    public var usableRanges: [IOVARange]

    public init(aperture: IOVARange, pageSizes: UInt64, usableRanges: [IOVARange]) {
        self.aperture = aperture
        self.pageSizes = pageSizes
        self.usableRanges = usableRanges
    }
}

/// A backend refused or failed an operation. `operation` names the call the way the logs and
/// the audit trail print it ("simulated map", later "kernel VFIO_IOMMU_MAP_DMA"), so one value
/// says which layer said no.
public struct BackendError: Error, Hashable, Sendable, CustomStringConvertible {
    public var errno: ErrnoCode
    public var operation: String
    public var detail: String

    public init(_ errno: ErrnoCode, operation: String, detail: String) {
        self.errno = errno
        self.operation = operation
        self.detail = detail
    }

    /// `simulated map: EEXIST: 0x1000-0x1fff overlaps existing 4K page 0x1000-0x1fff`
    public var description: String { "\(operation): \(errno.name): \(detail)" }
}

/// The operations the daemon needs from an IOMMU, shaped after VFIO type1 and iommufd so that
/// the simulated IOMMU, a VFIO container and an iommufd IOAS can all sit behind it.
///
/// The protocol only programs the hardware. Policy (reserved regions, quotas, which groups a
/// tenant may have) is decided by `PolicyEngine` before a call is made; a backend still
/// enforces what its kernel would, and says so with a `BackendError` carrying the kernel's
/// errno. Every call either completes or leaves the context as it was.
///
/// Implementations are called from several threads at once and must be thread-safe.
public protocol IOMMUBackend: AnyObject, Sendable {
    /// A short name for logs, such as `simulated` or `vfio-type1`.
    var name: String { get }

    /// Opens an empty context (a container, an IOAS) with no groups and no mappings.
    func createContext() throws(BackendError) -> BackendContextID

    /// Attaches `group` and returns what the context can translate afterwards.
    /// A group belongs to at most one context at a time (EBUSY otherwise).
    func attach(group: UInt32, to context: BackendContextID) throws(BackendError) -> BackendGroupInfo

    /// Detaches `group`. When it was the context's last group the domain goes away and with it
    /// every mapping, as VFIO type1 does when a container loses its last group; callers that
    /// want to keep mappings must attach the next group first.
    func detach(group: UInt32, from context: BackendContextID) throws(BackendError)

    /// Maps `range` to `memory` (a handle and the offset of the range's first byte) with
    /// `protection`. Nothing is left mapped when it throws.
    ///
    /// `backing` is the file behind the memory (the tenant's memfd), open for the duration of
    /// the call: a kernel backend maps it into the daemon (MAP_SHARED, at `memory.offset`) to
    /// hand the kernel a virtual address, and keeps that mapping until the range is unmapped.
    /// The simulated IOMMU needs only the handle.
    func map(
        _ range: IOVARange, memory: MemoryReference, backing: BackingFile?, protection: DMAProtection,
        in context: BackendContextID
    ) throws(BackendError)

    /// Unmaps exactly `range` (which the caller guarantees covers whole mappings); returns bytes
    /// unmapped, 0 when nothing was mapped there. Nothing is unmapped when it throws.
    func unmap(_ range: IOVARange, in context: BackendContextID) throws(BackendError) -> UInt64

    /// Unmaps everything, releases the context's groups and forgets the context. Closing a
    /// container or an IOAS cannot fail, so neither can this; an unknown context is ignored.
    func destroyContext(_ context: BackendContextID)

    /// The daemon re-ran discovery (a reload): new groups may exist.
    func platformChanged(_ platform: PlatformDatabase)

    /// A new file descriptor for `device` (a PCI address such as `0000:00:03.0`) of a group
    /// attached to `context`, for the tenant to drive the device with (regions, config space,
    /// interrupts). The caller owns the fd. A VFIO device fd from VFIO_GROUP_GET_DEVICE_FD, or
    /// the bound iommufd cdev.
    func deviceFD(_ device: String, group: UInt32, in context: BackendContextID) throws(BackendError) -> Int32
}

/// The open file behind a mapping's memory, by its raw descriptor.
public struct BackingFile: Hashable, Sendable {
    public var fd: Int32

    public init(fd: Int32) {
        self.fd = fd
    }
}

extension IOMMUBackend {
    /// A map with no file behind it (tests, and the simulated IOMMU's own callers).
    public func map(
        _ range: IOVARange, memory: MemoryReference, protection: DMAProtection, in context: BackendContextID
    ) throws(BackendError) {
        try map(range, memory: memory, backing: nil, protection: protection, in: context)
    }

    /// Backends that find groups when they are attached (the kernel's) have nothing to do.
    public func platformChanged(_ platform: PlatformDatabase) {}

    /// Backends without real devices have none to give.
    public func deviceFD(_ device: String, group: UInt32, in context: BackendContextID) throws(BackendError) -> Int32 {
        throw BackendError(.ENOSYS, operation: "\(name) device fd", detail: "the \(name) backend has no devices")
    }
}
