import IOMMUCore
import Synchronization

/// A simulated IOMMU with real semantics, modelled on the iommufd selftest mock domain: groups
/// with apertures, page sizes and reserved ranges, a page table per context that stores real
/// translations at page granularity, the kernel's errno for each refusal, and hooks that inject
/// failures. Tests drive it through `IOMMUBackend` as they would drive a kernel.
///
/// Each context gets a domain once its first group is attached. The domain's aperture is the
/// intersection of its groups' apertures and its page-size bitmap their AND, as VFIO type1
/// computes a container's. When the bitmap narrows on attach, existing PTEs that use a size the
/// new group lacks are split, as type1 replays mappings into a new domain.
///
/// Every operation either completes or leaves the state exactly as it was. In debug builds the
/// touched part of the page table and the counters are checked after every mutation;
/// `checkInvariants()` checks everything.
public final class SimulatedIOMMU: IOMMUBackend {
    /// What the simulated hardware and kernel know about one group.
    public struct GroupConfig: Hashable, Sendable {
        public var aperture: IOVARange
        /// Supported page sizes (bit n set means 2^n bytes). Must not be 0.
        public var pageSizes: UInt64
        /// The interrupt window: never translated, whatever the page table says.
        public var msiWindow: IOVARange?
        /// Further ranges the kernel refuses to map (its reserved regions other than MSI).
        public var reservedRanges: [IOVARange]

        public init(
            aperture: IOVARange, pageSizes: UInt64 = PageSizes.x86, msiWindow: IOVARange? = nil,
            reservedRanges: [IOVARange] = []
        ) {
            self.aperture = aperture
            self.pageSizes = pageSizes
            self.msiWindow = msiWindow
            self.reservedRanges = reservedRanges
        }

        /// The x86 interrupt window, 0xfee00000-0xfeefffff.
        public static let x86MSIWindow = IOVARange(first: 0xfee0_0000, last: 0xfeef_ffff)!

        /// A group behind an x86 IOMMU with a `bits`-bit input address width.
        public static func x86(addressBits bits: Int = 48) -> GroupConfig {
            GroupConfig(aperture: PageSizes.aperture(bits: bits)!, msiWindow: x86MSIWindow)
        }
    }

    /// A failure to inject, as iommufd's selftest does with fail_nth. Each fires once, on the
    /// next call of its kind that passes validation (where the kernel would call the driver),
    /// and the failed call leaves the state exactly as before.
    public enum Fault: Hashable, Sendable {
        /// Maps may install `afterPages` more PTEs in total; the map that needs one more fails
        /// and removes what it installed. The count carries over successful maps, like fail_nth.
        case failMap(afterPages: Int, errno: ErrnoCode)
        /// The next map fails before installing anything.
        case failMapOnce(ErrnoCode)
        case failUnmapOnce(ErrnoCode)
        case failAttach(ErrnoCode)
        case failCreateContext(ErrnoCode)
    }

    /// How one IOVA translates.
    public struct Translation: Hashable, Sendable {
        /// The memory handle and the offset of the translated byte in it.
        public var memory: MemoryReference
        public var pageSize: UInt64
        /// The IOVA range of the PTE that translated it.
        public var page: IOVARange
        public var protection: DMAProtection
    }

    /// Why a DMA access would fault, in the order the hardware decides.
    public enum TranslationFault: Error, Hashable, Sendable {
        /// The context is unknown or has no group attached: nothing translates.
        case noDomain
        /// The address is an attached group's MSI window, which the hardware intercepts as an
        /// interrupt before translation, even where a PTE exists.
        case msiWindow
        case outsideAperture
        case notMapped
        /// The PTE does not grant the access (a write to a read-only page, say).
        case permission
    }

    /// A run of IOVA translated to one contiguous stretch of one memory handle with one
    /// protection; also used for single PTEs.
    public struct MappedExtent: Hashable, Sendable {
        public var range: IOVARange
        /// The handle and the offset of the range's first byte.
        public var memory: MemoryReference
        public var protection: DMAProtection

        public init(range: IOVARange, memory: MemoryReference, protection: DMAProtection) {
            self.range = range
            self.memory = memory
            self.protection = protection
        }
    }

    /// One context's complete state, for tests that compare before and after.
    public struct ContextSnapshot: Hashable, Sendable {
        public var id: BackendContextID
        public var groups: [UInt32]
        public var info: BackendGroupInfo?
        /// Every PTE, in address order.
        public var pages: [MappedExtent]
        public var mappedBytes: UInt64
    }

    public let name = "simulated"
    /// The groups the simulated hardware has; hot-plugged ones are added by `platformChanged`.
    public var groupConfigs: [UInt32: GroupConfig] { state.withLock { $0.configs } }
    /// False models an older kernel that did not check reserved regions on map or attach and
    /// reported no usable ranges, so that tests can install PTEs over the MSI window.
    public let enforcesReservedRanges: Bool
    let state: Mutex<State>

    public init(groups: [UInt32: GroupConfig], enforcesReservedRanges: Bool = true) {
        for (id, config) in groups {
            precondition(config.pageSizes != 0, "group \(id) has no page sizes")
        }
        self.enforcesReservedRanges = enforcesReservedRanges
        state = Mutex(State(configs: groups, enforcesReservedRanges: enforcesReservedRanges))
    }

    // MARK: IOMMUBackend

    public func createContext() throws(BackendError) -> BackendContextID {
        try state.withLock { state throws(BackendError) in try state.createContext() }
    }

    public func attach(group: UInt32, to context: BackendContextID) throws(BackendError) -> BackendGroupInfo {
        try state.withLock { state throws(BackendError) in try state.attach(group: group, to: context) }
    }

    public func detach(group: UInt32, from context: BackendContextID) throws(BackendError) {
        try state.withLock { state throws(BackendError) in try state.detach(group: group, from: context) }
    }

    public func map(
        _ range: IOVARange, memory: MemoryReference, backing: BackingFile?, protection: DMAProtection,
        in context: BackendContextID
    ) throws(BackendError) {
        try state.withLock { state throws(BackendError) in
            try state.map(range, memory: memory, protection: protection, in: context)
        }
    }

    public func unmap(_ range: IOVARange, in context: BackendContextID) throws(BackendError) -> UInt64 {
        try state.withLock { state throws(BackendError) in try state.unmap(range, in: context) }
    }

    public func destroyContext(_ context: BackendContextID) {
        state.withLock { $0.destroyContext(context) }
    }

    // MARK: Hardware

    /// What a DMA of `access` to `iova` by a device of `context` would reach.
    public func translate(
        iova: UInt64, access: DMAProtection, in context: BackendContextID
    ) -> Result<Translation, TranslationFault> {
        state.withLock { $0.translate(iova: iova, access: access, in: context) }
    }

    // MARK: Fault injection

    /// Arms `fault`, replacing an armed fault of the same operation (the two map kinds share one).
    public func injectFault(_ fault: Fault) {
        state.withLock { $0.arm(fault) }
    }

    public func clearFaults() {
        state.withLock { $0.faults = Faults() }
    }

    /// The faults still armed; a `failMap` shows the PTEs it still allows.
    public var pendingFaults: [Fault] {
        state.withLock { $0.faults.pending }
    }

    // MARK: Queries

    public var contexts: [BackendContextID] {
        state.withLock { $0.contexts.keys.sorted() }
    }

    /// The groups attached to `context`, sorted; nil for an unknown context.
    public func groups(in context: BackendContextID) -> [UInt32]? {
        state.withLock { $0.contexts[context]?.groups }
    }

    /// The context `group` is attached to, if any.
    public func context(of group: UInt32) -> BackendContextID? {
        state.withLock { $0.owners[group] }
    }

    /// What the context translates now; nil when it is unknown or has no group.
    public func info(of context: BackendContextID) -> BackendGroupInfo? {
        state.withLock { state in
            state.contexts[context]?.domain?.info(enforcingReserved: state.enforcesReservedRanges)
        }
    }

    /// Bytes mapped in `context`; 0 for an unknown context.
    public func mappedBytes(in context: BackendContextID) -> UInt64 {
        state.withLock { $0.contexts[context]?.domain?.pageTable.mappedBytes ?? 0 }
    }

    /// PTEs by page size (only sizes in use appear).
    public func pteCount(in context: BackendContextID) -> [UInt64: Int] {
        state.withLock { $0.contexts[context]?.domain?.pageTable.pteCounts ?? [:] }
    }

    /// Every PTE, in address order.
    public func pages(in context: BackendContextID) -> [MappedExtent] {
        state.withLock { $0.contexts[context]?.domain?.pages() ?? [] }
    }

    /// The mapped IOVA as maximal runs that are contiguous in IOVA and in one memory handle
    /// and have one protection, in address order.
    public func mappedExtents(in context: BackendContextID) -> [MappedExtent] {
        var extents: [MappedExtent] = []
        for page in pages(in: context) {
            if let tail = extents.last, tail.range.last &+ 1 == page.range.first, tail.range.last != UInt64.max,
                tail.memory.handle == page.memory.handle, tail.protection == page.protection,
                tail.memory.offset &+ tail.range.sizeMinusOne &+ 1 == page.memory.offset
            {
                extents[extents.count - 1].range = IOVARange(first: tail.range.first, last: page.range.last)!
            } else {
                extents.append(page)
            }
        }
        return extents
    }

    /// Every context, by ID.
    public func snapshot() -> [ContextSnapshot] {
        state.withLock { state in
            state.contexts.keys.sorted().map { id in
                let context = state.contexts[id]!
                return ContextSnapshot(
                    id: id, groups: context.groups,
                    info: context.domain?.info(enforcingReserved: state.enforcesReservedRanges),
                    pages: context.domain?.pages() ?? [], mappedBytes: context.domain?.pageTable.mappedBytes ?? 0)
            }
        }
    }

    /// Checks every invariant of every context in O(n); nil when all hold, else the first
    /// violation. The debug build already checks the touched part after each mutation.
    public func checkInvariants() -> String? {
        state.withLock { $0.invariantViolation() }
    }
}

// MARK: - State

// The simulator's state lives in these nested types, so that the module's later backends can
// have their own.
extension SimulatedIOMMU {
    /// The armed faults, one slot per operation.
    struct Faults: Sendable {
        var map: (remaining: Int, errno: ErrnoCode)?
        var unmap: ErrnoCode?
        var attach: ErrnoCode?
        var createContext: ErrnoCode?

        var pending: [Fault] {
            var faults: [Fault] = []
            if let map { faults.append(.failMap(afterPages: map.remaining, errno: map.errno)) }
            if let unmap { faults.append(.failUnmapOnce(unmap)) }
            if let attach { faults.append(.failAttach(attach)) }
            if let createContext { faults.append(.failCreateContext(createContext)) }
            return faults
        }
    }

    /// A reserved range and why it is reserved, for details.
    struct ReservedRange: Sendable {
        var range: IOVARange
        var isMSI: Bool
        var group: UInt32

        var label: String { "\(isMSI ? "msi window" : "reserved range") \(range) of group \(group)" }
    }

    /// The translation state of a context with at least one group.
    struct Domain: Sendable {
        var aperture: IOVARange
        var pageSizes: UInt64
        var reserved: [ReservedRange]
        var pageTable: PageTable

        func info(enforcingReserved: Bool) -> BackendGroupInfo {
            let holes = enforcingReserved ? reserved.map(\.range) : []
            return BackendGroupInfo(
                aperture: aperture, pageSizes: pageSizes, usableRanges: [aperture].subtracting(holes))
        }

        func isMSI(_ iova: UInt64) -> Bool {
            reserved.contains { $0.isMSI && $0.range.contains(iova) }
        }

        func pages() -> [MappedExtent] {
            pageTable.leaves(overlapping: .all).map { slot, entry in
                MappedExtent(
                    range: pageTable.range(of: slot),
                    memory: MemoryReference(handle: entry.handle, offset: entry.offset),
                    protection: entry.protection)
            }
        }

        /// Leaves outside the aperture: none, by invariant. Walks only the holes, so it is cheap.
        func leafOutsideAperture() -> PageTable.Slot? {
            for hole in [IOVARange.all].subtracting([aperture]) {
                if let slot = pageTable.firstLeaf(overlapping: hole) { return slot }
            }
            return nil
        }

        func invariantViolation() -> String? {
            shapeViolation() ?? pageTable.invariantViolation()
        }

        /// The checks an attach or detach that kept the table needs: the bitmap, no PTE outside
        /// the (possibly narrower) aperture, and the counters. Cheap: it walks only the holes.
        func shapeViolation() -> String? {
            if pageTable.pageSizes != pageSizes { return "page table bitmap differs from the domain's" }
            if let slot = leafOutsideAperture() {
                return "PTE \(pageTable.range(of: slot)) outside the aperture \(aperture)"
            }
            return pageTable.localViolation(touched: [], installed: true)
        }

        func localViolation(touched: [PageTable.Slot], installed: Bool) -> String? {
            if installed {
                for slot in touched where !aperture.contains(pageTable.range(of: slot)) {
                    return "PTE \(pageTable.range(of: slot)) outside the aperture \(aperture)"
                }
            }
            return pageTable.localViolation(touched: touched, installed: installed)
        }
    }

    struct Context: Sendable {
        /// Sorted.
        var groups: [UInt32] = []
        /// Nil exactly when `groups` is empty.
        var domain: Domain?
    }

    /// Why groups cannot share one domain.
    struct Incompatible: Error {
        var detail: String
    }

    struct State: Sendable {
        var configs: [UInt32: GroupConfig]
        let enforcesReservedRanges: Bool
        var nextContext: UInt64 = 1
        var contexts: [BackendContextID: Context] = [:]
        /// Which context each attached group belongs to.
        var owners: [UInt32: BackendContextID] = [:]
        var faults = Faults()

        init(configs: [UInt32: GroupConfig], enforcesReservedRanges: Bool) {
            self.configs = configs
            self.enforcesReservedRanges = enforcesReservedRanges
        }

        mutating func arm(_ fault: Fault) {
            switch fault {
            case .failMap(let pages, let errno):
                precondition(pages >= 0, "afterPages must not be negative")
                faults.map = (pages, errno)
            case .failMapOnce(let errno): faults.map = (0, errno)
            case .failUnmapOnce(let errno): faults.unmap = errno
            case .failAttach(let errno): faults.attach = errno
            case .failCreateContext(let errno): faults.createContext = errno
            }
        }

        // MARK: Contexts and groups

        mutating func createContext() throws(BackendError) -> BackendContextID {
            if let errno = faults.createContext {
                faults.createContext = nil
                throw BackendError(errno, operation: "simulated create context", detail: "injected fault")
            }
            let id = BackendContextID(rawValue: nextContext)
            nextContext += 1
            contexts[id] = Context()
            return id
        }

        mutating func destroyContext(_ id: BackendContextID) {
            guard let context = contexts.removeValue(forKey: id) else { return }
            for group in context.groups { owners[group] = nil }
        }

        /// The domain shape for a set of groups: aperture intersection, bitmap AND and every
        /// reserved range. Fails with a detail when the groups cannot share a domain.
        private func shape(of groups: [UInt32]) -> Result<(IOVARange, UInt64, [ReservedRange]), Incompatible> {
            var aperture = IOVARange.all
            var pageSizes = UInt64.max
            var reserved: [ReservedRange] = []
            for group in groups {
                let config = configs[group]!
                guard let both = aperture.intersection(config.aperture) else {
                    return .failure(
                        Incompatible(
                            detail: "group \(group)'s aperture \(config.aperture) does not intersect \(aperture)"))
                }
                aperture = both
                pageSizes &= config.pageSizes
                guard pageSizes != 0 else {
                    return .failure(
                        Incompatible(
                            detail: "group \(group)'s page sizes \(Hex(config.pageSizes)) share none with the context's"
                        ))
                }
                if let msi = config.msiWindow { reserved.append(ReservedRange(range: msi, isMSI: true, group: group)) }
                for range in config.reservedRanges {
                    reserved.append(ReservedRange(range: range, isMSI: false, group: group))
                }
            }
            return .success((aperture, pageSizes, reserved))
        }

        mutating func attach(group: UInt32, to id: BackendContextID) throws(BackendError) -> BackendGroupInfo {
            func refuse(_ errno: ErrnoCode, _ detail: String) -> BackendError {
                BackendError(errno, operation: "simulated attach", detail: detail)
            }
            guard let current = contexts[id] else { throw refuse(.ENOENT, "no \(id)") }
            guard let config = configs[group] else { throw refuse(.ENOENT, "no IOMMU group \(group)") }
            if let owner = owners[group] {
                throw refuse(
                    .EBUSY, "group \(group) is already attached to \(owner == id ? "this context" : "\(owner)")")
            }
            let groups = (current.groups + [group]).sorted()
            let (aperture, pageSizes, reserved): (IOVARange, UInt64, [ReservedRange])
            switch shape(of: groups) {
            case .success(let shape): (aperture, pageSizes, reserved) = shape
            case .failure(let incompatible): throw refuse(.EINVAL, incompatible.detail)
            }
            var pageTable = current.domain?.pageTable ?? PageTable(pageSizes: pageSizes)
            if let domain = current.domain {
                // VFIO type1 refuses a group whose aperture or reserved regions exclude an existing
                // mapping (vfio_iommu_aper_conflict, vfio_iommu_resv_conflict): EINVAL.
                let probe = Domain(aperture: aperture, pageSizes: pageSizes, reserved: [], pageTable: domain.pageTable)
                if let slot = probe.leafOutsideAperture() {
                    throw refuse(
                        .EINVAL,
                        "existing mapping \(pageTable.range(of: slot)) lies outside group \(group)'s aperture "
                            + "\(config.aperture)")
                }
                if enforcesReservedRanges {
                    for hole in reserved where hole.group == group {
                        if let slot = pageTable.firstLeaf(overlapping: hole.range) {
                            throw refuse(
                                .EINVAL, "existing mapping \(pageTable.range(of: slot)) overlaps \(hole.label)")
                        }
                    }
                }
                if pageSizes != domain.pageSizes {
                    guard let rebuilt = pageTable.rebuilt(pageSizes: pageSizes) else {
                        throw refuse(
                            .EINVAL,
                            "existing \(pageSizeName(pageTable.smallestMappedPageSize ?? 0)) pages cannot be expressed "
                                + "in group \(group)'s page sizes \(Hex(config.pageSizes))")
                    }
                    pageTable = rebuilt
                }
            }
            if let errno = faults.attach {
                faults.attach = nil
                throw refuse(errno, "injected fault")
            }
            let rebuilt = current.domain.map { $0.pageSizes != pageSizes } ?? false
            let domain = Domain(aperture: aperture, pageSizes: pageSizes, reserved: reserved, pageTable: pageTable)
            contexts[id] = Context(groups: groups, domain: domain)
            owners[group] = id
            #if DEBUG
                if let violation = rebuilt ? domain.invariantViolation() : domain.shapeViolation() {
                    preconditionFailure("simulated IOMMU: invariant broken by attach of group \(group): \(violation)")
                }
            #endif
            return domain.info(enforcingReserved: enforcesReservedRanges)
        }

        mutating func detach(group: UInt32, from id: BackendContextID) throws(BackendError) {
            func refuse(_ errno: ErrnoCode, _ detail: String) -> BackendError {
                BackendError(errno, operation: "simulated detach", detail: detail)
            }
            guard let current = contexts[id] else { throw refuse(.ENOENT, "no \(id)") }
            guard configs[group] != nil else { throw refuse(.ENOENT, "no IOMMU group \(group)") }
            guard current.groups.contains(group) else {
                throw refuse(.EINVAL, "group \(group) is not attached to \(id)")
            }
            let groups = current.groups.filter { $0 != group }
            owners[group] = nil
            guard !groups.isEmpty, let old = current.domain else {
                // VFIO type1: when the last domain goes, every mapping goes with it.
                contexts[id] = Context()
                return
            }
            guard case .success(let (aperture, pageSizes, reserved)) = shape(of: groups) else {
                preconditionFailure("a subset of compatible groups became incompatible")
            }
            // Fewer groups only widen the aperture and the bitmap, so every PTE stays valid; the
            // table is rebuilt only so that new maps can use the larger page sizes.
            let rebuilt = pageSizes != old.pageSizes
            let pageTable = rebuilt ? old.pageTable.rebuilt(pageSizes: pageSizes)! : old.pageTable
            let domain = Domain(aperture: aperture, pageSizes: pageSizes, reserved: reserved, pageTable: pageTable)
            contexts[id] = Context(groups: groups, domain: domain)
            #if DEBUG
                if let violation = rebuilt ? domain.invariantViolation() : domain.shapeViolation() {
                    preconditionFailure("simulated IOMMU: invariant broken by detach of group \(group): \(violation)")
                }
            #endif
        }

        // MARK: Map and unmap

        mutating func map(
            _ range: IOVARange, memory: MemoryReference, protection: DMAProtection, in id: BackendContextID
        ) throws(BackendError) {
            func refuse(_ errno: ErrnoCode, _ detail: String) -> BackendError {
                BackendError(errno, operation: "simulated map", detail: detail)
            }
            guard let context = contexts[id] else { throw refuse(.ENOENT, "no \(id)") }
            guard let domain = context.domain else { throw refuse(.EINVAL, "no IOMMU group is attached to \(id)") }
            guard !protection.isEmpty, protection.isSubset(of: .readWrite) else {
                throw refuse(.EINVAL, "protection \(Hex(protection.rawValue)) is not a non-empty set of READ and WRITE")
            }
            let page = PageSizes.smallest(domain.pageSizes)
            guard range.isAligned(to: page), memory.offset & (page - 1) == 0 else {
                throw refuse(
                    .EINVAL,
                    "\(range) at offset \(Hex(memory.offset)) is not aligned to the \(pageSizeName(page)) page size")
            }
            guard memory.offset.addingReportingOverflow(range.sizeMinusOne).overflow == false else {
                throw refuse(.EOVERFLOW, "offset \(Hex(memory.offset)) + size of \(range) wraps past 2^64")
            }
            // Real drivers refuse IOVAs beyond their input address width (the aperture).
            guard domain.aperture.contains(range) else {
                throw refuse(.EINVAL, "\(range) is outside the aperture \(domain.aperture)")
            }
            if enforcesReservedRanges, let hole = domain.reserved.first(where: { $0.range.overlaps(range) }) {
                throw refuse(.EINVAL, "\(range) overlaps \(hole.label)")
            }
            // The byte count must stay representable; only a mapping of nearly all 2^64 bytes can
            // reach this.
            let (_, overflow) = domain.pageTable.mappedBytes.addingReportingOverflow(range.sizeMinusOne)
            guard !overflow, domain.pageTable.mappedBytes + range.sizeMinusOne != UInt64.max else {
                throw refuse(.ENOMEM, "the context's mapped bytes would exceed 2^64-1")
            }
            _ = consume domain
            _ = consume context
            let budget = faults.map?.remaining
            // Mutate through the dictionary in place: a live copy of the table would make this map
            // copy the whole table.
            let result = contexts[id]!.domain!.pageTable.map(
                range, handle: memory.handle, offset: memory.offset, protection: protection, budget: budget)
            switch result {
            case .success(let installed):
                if let map = faults.map { faults.map = (map.remaining - installed.count, map.errno) }
                #if DEBUG
                    if let violation = contexts[id]!.domain!.localViolation(touched: installed, installed: true) {
                        preconditionFailure("simulated IOMMU: invariant broken by map of \(range): \(violation)")
                    }
                #endif
            case .failure(.exists(let existing, let size)):
                throw refuse(.EEXIST, "\(range) overlaps existing \(pageSizeName(size)) page \(existing)")
            case .failure(.injected(let installedBefore)):
                let errno = faults.map!.errno
                faults.map = nil
                throw refuse(errno, "injected fault after \(installedBefore) pages (all removed again)")
            }
        }

        mutating func unmap(_ range: IOVARange, in id: BackendContextID) throws(BackendError) -> UInt64 {
            func refuse(_ errno: ErrnoCode, _ detail: String) -> BackendError {
                BackendError(errno, operation: "simulated unmap", detail: detail)
            }
            guard let context = contexts[id] else { throw refuse(.ENOENT, "no \(id)") }
            // No domain, no mappings: like VFIO type1, unmapping nothing succeeds with 0 bytes.
            guard let domain = context.domain else { return 0 }
            let page = PageSizes.smallest(domain.pageSizes)
            guard range.isAligned(to: page) else {
                throw refuse(.EINVAL, "\(range) is not aligned to the \(pageSizeName(page)) page size")
            }
            var slots: [PageTable.Slot] = []
            var bytes: UInt64 = 0
            var cut: IOVARange?
            domain.pageTable.forEachLeaf(overlapping: range) { slot, _ in
                let page = domain.pageTable.range(of: slot)
                guard range.contains(page) else {
                    cut = page
                    return false
                }
                slots.append(slot)
                bytes += page.sizeMinusOne + 1
                return true
            }
            // The page table cannot split a PTE; the policy engine only unmaps whole mappings, and a
            // mapping always consists of whole PTEs.
            if let cut {
                throw refuse(.EINVAL, "\(range) cuts through the \(pageSizeName(cut.sizeMinusOne + 1)) page \(cut)")
            }
            _ = consume domain
            _ = consume context
            if let errno = faults.unmap {
                faults.unmap = nil
                throw refuse(errno, "injected fault")
            }
            for slot in slots { contexts[id]!.domain!.pageTable.remove(slot) }
            #if DEBUG
                if let violation = contexts[id]!.domain!.localViolation(touched: slots, installed: false) {
                    preconditionFailure("simulated IOMMU: invariant broken by unmap of \(range): \(violation)")
                }
            #endif
            return bytes
        }

        // MARK: Translation

        func translate(
            iova: UInt64, access: DMAProtection, in id: BackendContextID
        ) -> Result<Translation, TranslationFault> {
            guard let domain = contexts[id]?.domain else { return .failure(.noDomain) }
            if domain.isMSI(iova) { return .failure(.msiWindow) }
            guard domain.aperture.contains(iova) else { return .failure(.outsideAperture) }
            guard let (slot, entry) = domain.pageTable.lookup(iova) else { return .failure(.notMapped) }
            guard entry.protection.isSuperset(of: access) else { return .failure(.permission) }
            let page = domain.pageTable.range(of: slot)
            return .success(
                Translation(
                    memory: MemoryReference(handle: entry.handle, offset: entry.offset + (iova - page.first)),
                    pageSize: page.sizeMinusOne + 1, page: page, protection: entry.protection))
        }

        // MARK: Invariants

        func invariantViolation() -> String? {
            var owned: [UInt32: BackendContextID] = [:]
            for (id, context) in contexts {
                if context.groups != context.groups.sorted() { return "\(id): groups not sorted" }
                if context.groups.isEmpty != (context.domain == nil) { return "\(id): domain present without groups" }
                for group in context.groups {
                    if owned[group] != nil { return "group \(group) attached twice" }
                    owned[group] = id
                }
                guard let domain = context.domain else { continue }
                guard case .success(let (aperture, pageSizes, _)) = shape(of: context.groups),
                    aperture == domain.aperture, pageSizes == domain.pageSizes
                else { return "\(id): domain shape differs from its groups'" }
                if let violation = domain.invariantViolation() { return "\(id): \(violation)" }
            }
            if owned != owners { return "group owners disagree with the contexts' group lists" }
            return nil
        }
    }
}
