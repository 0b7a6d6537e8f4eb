import CVFIO
import IOMMUBackends
import IOMMUCore
import Synchronization
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

// The pieces both kernel backends share: turning a C shim result into a BackendError, opening
// device nodes, the daemon's own mmap of a tenant's memfd, and the registry of contexts.

/// Checks a CVFIO result (0 or more on success, -errno on failure) and returns it.
/// The error names the ioctl as the audit trail prints it: `kernel VFIO_IOMMU_MAP_DMA: EINVAL: …`.
@discardableResult
func kernelCall(_ result: Int32, _ ioctl: String, _ detail: @autoclosure () -> String) throws(BackendError) -> Int32 {
    guard result < 0 else { return result }
    throw BackendError(ErrnoCode(kernel: -result), operation: "kernel \(ioctl)", detail: detail())
}

/// `root` and `relative` joined with exactly one slash: `/` + `dev/iommu` is `/dev/iommu`.
func joinPath(_ root: String, _ relative: String) -> String {
    root.hasSuffix("/") ? root + relative : root + "/" + relative
}

func fileExists(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0
}

/// Opens a device node read-write and close-on-exec; the error names the path.
func openDevice(_ path: String, operation: String, hint: String = "") throws(BackendError) -> FileDescriptor {
    do {
        return try FileDescriptor.open(path, .readWrite, options: [.closeOnExec], retryOnInterrupt: true)
    } catch let errno as Errno {
        throw BackendError(
            ErrnoCode(kernel: errno.rawValue), operation: operation,
            detail: "cannot open \(path)" + (hint.isEmpty ? "" : ": \(hint)"))
    } catch {
        throw BackendError(.EIO, operation: operation, detail: "cannot open \(path): \(error)")
    }
}

/// Closes a descriptor the backend owns. Linux frees the descriptor even when close reports
/// an error, so there is nothing to retry and nothing to report.
func closeQuietly(_ fd: FileDescriptor) {
    _ = Glibc.close(fd.rawValue)
}

/// The names in a directory (without `.` and `..`), sorted; nil when it cannot be read.
func directoryEntries(_ path: String) -> [String]? {
    guard let dir = opendir(path) else { return nil }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if name != "." && name != ".." { names.append(name) }
    }
    return names.sorted()
}

/// The last path component of a symlink's target (a sysfs `driver` link names the driver).
func linkTargetName(_ path: String) -> String? {
    var buffer = [CChar](repeating: 0, count: 4096)
    let count = readlink(path, &buffer, buffer.count - 1)
    guard count > 0 else { return nil }
    let target = String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return target.split(separator: "/").last.map(String.init)
}

extension DMAProtection {
    /// `read`, `write` or `read-write`, for details.
    var label: String {
        switch (contains(.read), contains(.write)) {
        case (true, true): "read-write"
        case (true, false): "read"
        case (false, true): "write"
        case (false, false): "none"
        }
    }
}

// MARK: - The daemon's view of a tenant's memory

/// The daemon's own MAP_SHARED mapping of a tenant's memfd, whose address the kernel pins.
/// It lives exactly as long as the IOMMU mapping: made just before the map ioctl, removed when
/// the ioctl fails, and after the unmap ioctl succeeds.
struct DaemonMapping: Sendable {
    var address: UInt64
    var length: UInt64
}

/// The first check of every kernel map: without the tenant's memory there is no address to
/// give the kernel.
func requireBacking(_ backing: BackingFile?, backend: String) throws(BackendError) -> BackingFile {
    if let backing { return backing }
    throw BackendError(
        .EINVAL, operation: "\(backend) map", detail: "a kernel backend needs the mapping's memory: pass a memfd")
}

/// Maps `range`'s share of `backing` (from `memory.offset`) into the daemon. The device's
/// access decides the protection: the kernel pins pages writable only for a mapping the device
/// may write, and that needs a writable VMA; PROT_READ is always there, as MAP_SHARED needs.
func mapTenantMemory(
    _ range: IOVARange, memory: MemoryReference, backing: BackingFile, protection: DMAProtection, backend: String
) throws(BackendError) -> DaemonMapping {
    guard !protection.isEmpty, protection.isSubset(of: .readWrite) else {
        throw BackendError(
            .EINVAL, operation: "\(backend) map",
            detail: "protection \(Hex(protection.rawValue)) is not a non-empty set of READ and WRITE")
    }
    guard let size = range.size else {
        throw BackendError(
            .EOVERFLOW, operation: "\(backend) map", detail: "\(range) is 2^64 bytes, more than mmap takes")
    }
    let prot = CVFIO_PROT_READ | (protection.contains(.write) ? CVFIO_PROT_WRITE : 0)
    var address: UInt64 = 0
    let result = cvfio_mmap_shared(backing.fd, memory.offset, size, prot, &address)
    guard result == 0 else {
        throw BackendError(
            ErrnoCode(kernel: -result), operation: "mmap",
            detail: "cannot map \(Hex(size)) bytes of the tenant's memory (fd \(backing.fd), offset "
                + "\(Hex(memory.offset)), \(prot & CVFIO_PROT_WRITE != 0 ? "read-write" : "read-only")) for \(range)")
    }
    return DaemonMapping(address: address, length: size)
}

/// The whole of a kernel map: the tenant's memory into the daemon (`mapTenantMemory`), then
/// `program` hands that address to the kernel. When the kernel refuses, the daemon's mapping
/// is removed before the error is thrown, so nothing is left half done.
func mapThroughKernel(
    _ range: IOVARange, memory: MemoryReference, backing: BackingFile, protection: DMAProtection, backend: String,
    _ program: (DaemonMapping) throws(BackendError) -> Void
) throws(BackendError) -> DaemonMapping {
    let mapping = try mapTenantMemory(range, memory: memory, backing: backing, protection: protection, backend: backend)
    do throws(BackendError) {
        try program(mapping)
    } catch {
        unmapDaemonMemory(mapping)
        throw error
    }
    return mapping
}

func unmapDaemonMemory(_ mapping: DaemonMapping) {
    // munmap of a whole mapping this process made cannot fail.
    _ = cvfio_munmap(mapping.address, mapping.length)
}

/// A context's daemon mappings by IOVA range.
struct DaemonMappings: Sendable {
    private var tree = IntervalTree<DaemonMapping>()

    var count: Int { tree.count }

    func overlaps(_ range: IOVARange) -> Bool { tree.overlaps(range) }

    /// Every mapped range, in address order.
    var ranges: [IOVARange] { tree.entries.map(\.range) }

    mutating func insert(_ range: IOVARange, _ mapping: DaemonMapping) {
        tree.insert(range, mapping)
    }

    /// Removes and munmaps every mapping inside `range`. A mapping that only overlaps it stays:
    /// the kernel refused to cut one, so after a successful unmap there is none.
    mutating func unmapAll(inside range: IOVARange) {
        for entry in tree.overlapping(range) where range.contains(entry.range) {
            if let mapping = tree.remove(entry.id) { unmapDaemonMemory(mapping) }
        }
    }

    mutating func unmapAll() {
        unmapAll(inside: .all)
    }
}

// MARK: - Contexts

/// The contexts of one backend and which context owns each group.
///
/// Each context has its own lock, so one tenant's slow map (the kernel pins every page) does
/// not hold up another's. The table has a lock of its own, taken briefly and never while
/// waiting for a context: code holding a context's lock may take the table's, never the
/// reverse, so the two cannot deadlock.
final class ContextRegistry<Context: Sendable>: Sendable {
    final class Box: Sendable {
        /// nil once the context is destroyed.
        let state: Mutex<Context?>
        init(_ context: Context) { state = Mutex(context) }
    }

    private struct Table {
        var next: UInt64 = 1
        var boxes: [BackendContextID: Box] = [:]
        var owners: [UInt32: BackendContextID] = [:]
    }

    let backend: String
    private let table = Mutex(Table())

    init(backend: String) {
        self.backend = backend
    }

    func add(_ context: Context) -> BackendContextID {
        let box = Box(context)
        return table.withLock { table in
            let id = BackendContextID(rawValue: table.next)
            table.next += 1
            table.boxes[id] = box
            return id
        }
    }

    /// Runs `body` on the context under its lock; ENOENT for an unknown or destroyed one.
    func with<R: Sendable>(
        _ id: BackendContextID, operation: String, _ body: (inout Context) throws(BackendError) -> R
    ) throws(BackendError) -> R {
        guard let box = table.withLock({ $0.boxes[id] }) else {
            throw BackendError(.ENOENT, operation: "\(backend) \(operation)", detail: "no \(id)")
        }
        return try box.state.withLock { (state: inout Context?) throws(BackendError) -> R in
            guard state != nil else {
                throw BackendError(.ENOENT, operation: "\(backend) \(operation)", detail: "no \(id)")
            }
            return try body(&state!)
        }
    }

    /// Claims `group` for `id`: EBUSY when any context (this one included) has it.
    func reserve(_ group: UInt32, for id: BackendContextID) throws(BackendError) {
        try table.withLock { (table: inout Table) throws(BackendError) in
            if let owner = table.owners[group] {
                throw BackendError(
                    .EBUSY, operation: "\(backend) attach",
                    detail: "group \(group) is already attached to \(owner == id ? "this context" : "\(owner)")")
            }
            table.owners[group] = id
        }
    }

    func release(_ groups: some Sequence<UInt32>) {
        table.withLock { table in
            for group in groups { table.owners[group] = nil }
        }
    }

    /// Forgets the context and hands back its state for teardown; nil when unknown. Waits for
    /// an operation in progress on it to finish.
    func remove(_ id: BackendContextID) -> Context? {
        guard let box = table.withLock({ $0.boxes.removeValue(forKey: id) }) else { return nil }
        return box.state.withLock { state in
            let context = state
            state = nil
            return context
        }
    }

    /// The group's owner, for tests and the admin plane.
    func owner(of group: UInt32) -> BackendContextID? {
        table.withLock { $0.owners[group] }
    }

    var contexts: [BackendContextID] {
        table.withLock { $0.boxes.keys.sorted() }
    }
}

// MARK: - Ranges

/// What a context can translate, from the kernel's usable ranges (sorted and disjoint in both
/// VFIO and iommufd, but normalised here anyway): the aperture is their hull.
func groupInfo(ranges: [cvfio_iova_range], pageSizes: UInt64, ioctl: String) throws(BackendError) -> BackendGroupInfo {
    var usable: [IOVARange] = []
    for range in ranges {
        guard let checked = IOVARange(first: range.start, last: range.last) else {
            throw BackendError(
                .EINVAL, operation: "kernel \(ioctl)",
                detail: "the kernel reported an inverted IOVA range \(Hex(range.start))-\(Hex(range.last))")
        }
        usable.append(checked)
    }
    usable = usable.normalized()
    guard let first = usable.first, let last = usable.last else {
        throw BackendError(.EINVAL, operation: "kernel \(ioctl)", detail: "the kernel reports no usable IOVA range")
    }
    return BackendGroupInfo(
        aperture: IOVARange(first: first.first, last: last.last)!, pageSizes: pageSizes, usableRanges: usable)
}
