import IOMMUCore

/// One leaf of the simulated page table: where a page's bytes come from and what DMA may do.
struct PageTableEntry: Hashable, Sendable {
    var handle: UInt64
    /// The offset of the page's first byte in the memory object. It is aligned to the page
    /// size, as a hardware PTE's output address is.
    var offset: UInt64
    var protection: DMAProtection
}

/// A sparse, multi-level IOMMU page table for one domain, with real page granularity.
///
/// Each level has a block size `2^shift`. The levels are the page sizes of the domain's
/// bitmap plus directory levels at most 9 bits apart above and between them, up to a root
/// that spans the whole 64-bit space (shift 64). So for x86 (4K|2M|1G) the shifts are
/// 12, 21, 30, 39, 48, 57 and 64, which is the shape of a 6-level x86 page table.
///
/// A block is empty, a leaf (a PTE of the level's page size) or a table (holding at least one
/// non-empty block of the level below). Leaves are kept in a dictionary per level keyed by page
/// number, and a table is just a count of its non-empty children, so memory is proportional to
/// the number of PTEs however sparse they are, while the counts let a walk skip empty space the
/// way a hardware walk skips a non-present directory entry.
///
/// Invariants (`invariantViolation()` checks them all; `localViolation` checks the blocks a
/// mutation touched):
/// - a block is never both a leaf and a table, and no leaf lies inside a larger leaf, so no two
///   PTEs overlap;
/// - leaves exist only at page-size levels, and each leaf's output offset is aligned to its size;
/// - every table count equals the number of its non-empty children, and no table count is 0;
/// - `mappedBytes` is the sum of the leaves' sizes.
struct PageTable: Sendable {
    /// A block: a level and its number at that level (`iova >> shift`).
    struct Slot: Hashable, Sendable {
        var level: Int
        var key: UInt64
    }

    enum MapFailure: Error {
        /// The PTE that the new page would overlap.
        case exists(IOVARange, pageSize: UInt64)
        /// The injected fault fired after the given number of PTEs (all since removed).
        case injected(installedBefore: Int)
    }

    let pageSizes: UInt64
    /// log2 of each level's block size, ascending; the last is 64, the root.
    private let shifts: [Int]
    private let isLeafLevel: [Bool]
    /// Indices of the page-size levels, ascending.
    private let leafLevels: [Int]
    /// The level whose block size is `2^shift`, or -1 when that size is not a page size.
    private let levelOfShift: [Int]
    private var leaves: [[UInt64: PageTableEntry]]
    private var tables: [[UInt64: Int]]
    private(set) var mappedBytes: UInt64 = 0

    init(pageSizes: UInt64) {
        precondition(pageSizes != 0, "a page table needs at least one page size")
        self.pageSizes = pageSizes
        var shifts = [pageSizes.trailingZeroBitCount]
        while let shift = shifts.last, shift < 64 {
            let above = shift >= 63 ? 0 : pageSizes & ~Self.mask(shift + 1)
            let nextPage = above == 0 ? 64 : above.trailingZeroBitCount
            shifts.append(min(nextPage, shift + 9, 64))
        }
        self.shifts = shifts
        let isLeafLevel = shifts.map { $0 < 64 && pageSizes & (UInt64(1) << UInt64($0)) != 0 }
        self.isLeafLevel = isLeafLevel
        self.leafLevels = shifts.indices.filter { isLeafLevel[$0] }
        var levelOfShift = [Int](repeating: -1, count: 65)
        for level in leafLevels { levelOfShift[shifts[level]] = level }
        self.levelOfShift = levelOfShift
        leaves = Array(repeating: [:], count: shifts.count)
        tables = Array(repeating: [:], count: shifts.count)
    }

    // MARK: Geometry

    /// `2^shift - 1`, for shifts up to 64.
    static func mask(_ shift: Int) -> UInt64 { shift >= 64 ? UInt64.max : (UInt64(1) << UInt64(shift)) - 1 }

    var smallestPageSize: UInt64 { UInt64(1) << UInt64(pageSizes.trailingZeroBitCount) }

    func pageSize(of slot: Slot) -> UInt64 { UInt64(1) << UInt64(shifts[slot.level]) }

    func range(of slot: Slot) -> IOVARange {
        let first = slot.key << UInt64(shifts[slot.level])
        return IOVARange(first: first, last: first | Self.mask(shifts[slot.level]))!
    }

    private func slot(level: Int, containing iova: UInt64) -> Slot {
        Slot(level: level, key: iova >> UInt64(shifts[level]))
    }

    /// The kernel's `iommu_pgsize()`: the largest supported page size that divides both the
    /// IOVA and the output address and is no larger than what is left of the range.
    /// `remainingMinusOne` is the remaining length minus one, so 2^64 bytes can be expressed.
    func pageLevel(iova: UInt64, address: UInt64, remainingMinusOne: UInt64) -> Int? {
        var candidates = pageSizes
        if remainingMinusOne != UInt64.max {
            // Sizes up to the highest set bit of the remaining length fit.
            candidates &= Self.mask(64 - (remainingMinusOne + 1).leadingZeroBitCount)
        }
        let merged = iova | address
        if merged != 0 {
            candidates &= Self.mask(merged.trailingZeroBitCount + 1)
        }
        guard candidates != 0 else { return nil }
        let level = levelOfShift[63 - candidates.leadingZeroBitCount]
        return level >= 0 ? level : nil
    }

    // MARK: Queries

    var pteCounts: [UInt64: Int] {
        var counts: [UInt64: Int] = [:]
        for level in leafLevels where !leaves[level].isEmpty {
            counts[UInt64(1) << UInt64(shifts[level])] = leaves[level].count
        }
        return counts
    }

    var pteCount: Int { leafLevels.reduce(0) { $0 + leaves[$1].count } }

    /// The smallest page size that has at least one PTE.
    var smallestMappedPageSize: UInt64? {
        leafLevels.first { !leaves[$0].isEmpty }.map { UInt64(1) << UInt64(shifts[$0]) }
    }

    /// The leaf translating `iova`, if any. At most one exists, by the no-overlap invariant.
    func lookup(_ iova: UInt64) -> (slot: Slot, entry: PageTableEntry)? {
        for level in leafLevels {
            let slot = slot(level: level, containing: iova)
            if let entry = leaves[level][slot.key] { return (slot, entry) }
        }
        return nil
    }

    /// Calls `body` on every leaf overlapping `range`, in address order, until it returns false.
    /// Empty directory blocks are skipped without visiting their children.
    func forEachLeaf(overlapping range: IOVARange, _ body: (Slot, PageTableEntry) -> Bool) {
        _ = visit(level: shifts.count - 1, key: 0, range, body)
    }

    private func visit(level: Int, key: UInt64, _ range: IOVARange, _ body: (Slot, PageTableEntry) -> Bool) -> Bool {
        if let entry = leaves[level][key] { return body(Slot(level: level, key: key), entry) }
        guard level > 0, tables[level][key] != nil else { return true }
        let block = self.range(of: Slot(level: level, key: key))
        let childShift = UInt64(shifts[level - 1])
        let low = max(block.first, range.first) >> childShift
        let high = min(block.last, range.last) >> childShift
        var child = low
        while true {
            if !visit(level: level - 1, key: child, range, body) { return false }
            if child == high { return true }
            child += 1
        }
    }

    func leaves(overlapping range: IOVARange) -> [(slot: Slot, entry: PageTableEntry)] {
        var found: [(Slot, PageTableEntry)] = []
        forEachLeaf(overlapping: range) {
            found.append(($0, $1))
            return true
        }
        return found
    }

    func firstLeaf(overlapping range: IOVARange) -> Slot? {
        var found: Slot?
        forEachLeaf(overlapping: range) { slot, _ in
            found = slot
            return false
        }
        return found
    }

    /// The leaf that a new page at `slot` would overlap: a larger page covering it, a page
    /// already in the slot, or the first smaller page inside it.
    private func conflict(at slot: Slot) -> Slot? {
        let base = range(of: slot).first
        for level in leafLevels where level > slot.level {
            let covering = self.slot(level: level, containing: base)
            if leaves[level][covering.key] != nil { return covering }
        }
        if leaves[slot.level][slot.key] != nil { return slot }
        if slot.level > 0, tables[slot.level][slot.key] != nil { return firstLeaf(overlapping: range(of: slot)) }
        return nil
    }

    // MARK: Mutation

    /// Maps `range` to `offset` in `handle`, split into pages as `iommu_map()` does. The caller
    /// has checked that the range and the offset are aligned to the smallest page size and that
    /// the offset does not wrap. `budget` is how many PTEs may be installed before an injected
    /// fault stops the map. On failure every PTE this call installed is removed again, so the
    /// table is exactly as before. Returns the slots installed.
    mutating func map(
        _ range: IOVARange, handle: UInt64, offset: UInt64, protection: DMAProtection, budget: Int?
    ) -> Result<[Slot], MapFailure> {
        var installed: [Slot] = []
        var cursor = range.first
        while true {
            let address = offset + (cursor - range.first)
            guard let level = pageLevel(iova: cursor, address: address, remainingMinusOne: range.last - cursor) else {
                preconditionFailure("map of \(range) at offset \(Hex(offset)) is not aligned to the smallest page size")
            }
            let slot = slot(level: level, containing: cursor)
            if let budget, installed.count >= budget {
                undo(installed)
                return .failure(.injected(installedBefore: installed.count))
            }
            if let existing = conflict(at: slot) {
                undo(installed)
                return .failure(.exists(self.range(of: existing), pageSize: pageSize(of: existing)))
            }
            install(slot, PageTableEntry(handle: handle, offset: address, protection: protection))
            installed.append(slot)
            let pageLast = cursor + (pageSize(of: slot) - 1)
            if pageLast == range.last { return .success(installed) }
            cursor = pageLast + 1
        }
    }

    private mutating func undo(_ installed: [Slot]) {
        for slot in installed.reversed() { remove(slot) }
    }

    /// Installs a leaf into an empty slot that no other leaf overlaps.
    mutating func install(_ slot: Slot, _ entry: PageTableEntry) {
        precondition(isLeafLevel[slot.level], "leaf at a directory level")
        leaves[slot.level][slot.key] = entry
        mappedBytes += pageSize(of: slot)
        // The block became non-empty: count it in its parent, and go on up only while each
        // parent was empty before.
        let base = range(of: slot).first
        for level in (slot.level + 1)..<shifts.count {
            let key = base >> UInt64(shifts[level])
            let before = tables[level][key, default: 0]
            tables[level][key] = before + 1
            if before != 0 { break }
        }
    }

    /// Removes a leaf, and every table left empty by its removal.
    mutating func remove(_ slot: Slot) {
        guard leaves[slot.level].removeValue(forKey: slot.key) != nil else {
            preconditionFailure("no leaf at \(range(of: slot))")
        }
        mappedBytes -= pageSize(of: slot)
        let base = range(of: slot).first
        for level in (slot.level + 1)..<shifts.count {
            let key = base >> UInt64(shifts[level])
            let after = tables[level][key]! - 1
            if after != 0 {
                tables[level][key] = after
                break
            }
            tables[level][key] = nil
        }
    }

    /// The same mappings in a table for another bitmap, each PTE installed whole when its size
    /// is supported and split with `iommu_pgsize()` otherwise, as VFIO type1 replays a
    /// container's mappings into a new domain. Nil when a PTE is smaller than, or not aligned
    /// to, the new smallest page size.
    func rebuilt(pageSizes newSizes: UInt64) -> PageTable? {
        var table = PageTable(pageSizes: newSizes)
        let smallest = table.smallestPageSize
        var ok = true
        forEachLeaf(overlapping: .all) { slot, entry in
            let page = range(of: slot)
            guard page.isAligned(to: smallest), entry.offset & (smallest - 1) == 0,
                case .success = table.map(
                    page, handle: entry.handle, offset: entry.offset, protection: entry.protection, budget: nil)
            else {
                ok = false
                return false
            }
            return true
        }
        return ok ? table : nil
    }

    // MARK: Invariants

    /// Checks the blocks one mutation touched and the counters: cheap enough to run after every
    /// map of a million-page test. `installed` says whether the slots should now hold leaves.
    func localViolation(touched: [Slot], installed: Bool) -> String? {
        for slot in touched {
            if installed {
                if let problem = leafViolation(slot) { return problem }
            } else {
                if leaves[slot.level][slot.key] != nil { return "leaf \(range(of: slot)) still present after removal" }
                // Every parent that still exists must still count something.
                let base = range(of: slot).first
                for level in (slot.level + 1)..<shifts.count {
                    let key = base >> UInt64(shifts[level])
                    if let count = tables[level][key], count <= 0 {
                        return "table at level \(level) key \(Hex(key)) has count \(count)"
                    }
                }
            }
        }
        return counterViolation()
    }

    private func leafViolation(_ slot: Slot) -> String? {
        guard isLeafLevel[slot.level] else { return "leaf at directory level \(slot.level)" }
        let shift = UInt64(shifts[slot.level])
        guard let entry = leaves[slot.level][slot.key] else { return "leaf \(range(of: slot)) missing" }
        guard (slot.key << shift) >> shift == slot.key else { return "page number \(Hex(slot.key)) beyond 2^64" }
        let size = pageSize(of: slot)
        if entry.offset & (size - 1) != 0 {
            return "PTE \(range(of: slot)) has offset \(Hex(entry.offset)) not aligned to its size"
        }
        if tables[slot.level][slot.key] != nil { return "PTE \(range(of: slot)) is also a table" }
        let base = slot.key << shift
        for level in leafLevels where level > slot.level {
            let covering = self.slot(level: level, containing: base)
            if leaves[level][covering.key] != nil {
                return "PTE \(range(of: slot)) lies inside PTE \(range(of: covering))"
            }
        }
        // The parent must count this block; the rest of the chain is the full check's job.
        let parent = slot.level + 1
        guard let count = tables[parent][base >> UInt64(shifts[parent])], count > 0 else {
            return "PTE \(range(of: slot)) is not counted by its parent table"
        }
        return nil
    }

    private func counterViolation() -> String? {
        var total: UInt64 = 0
        for level in leafLevels {
            let (bytes, overflow1) = UInt64(leaves[level].count).multipliedReportingOverflow(
                by: UInt64(1) << UInt64(shifts[level]))
            let (sum, overflow2) = total.addingReportingOverflow(bytes)
            if overflow1 || overflow2 { return "mapped bytes overflow 2^64" }
            total = sum
        }
        return total == mappedBytes ? nil : "byte counter \(Hex(mappedBytes)) but PTEs sum to \(Hex(total))"
    }

    /// Checks every invariant over the whole table. O(n · levels); for tests.
    func invariantViolation() -> String? {
        if !leaves[0].isEmpty, !isLeafLevel[0] { return "leaves at a directory level" }
        for level in shifts.indices where !isLeafLevel[level] && !leaves[level].isEmpty {
            return "leaves at directory level \(level)"
        }
        if !tables[0].isEmpty { return "tables at the lowest level" }
        // Rebuild the set of non-empty blocks per level from the leaves alone, then the table
        // counts from that, and compare.
        var nonEmpty = [Set<UInt64>](repeating: [], count: shifts.count)
        for level in leafLevels {
            for key in leaves[level].keys {
                let slot = Slot(level: level, key: key)
                if let problem = leafViolation(slot) { return problem }
                let base = range(of: slot).first
                for upper in level..<shifts.count { nonEmpty[upper].insert(base >> UInt64(shifts[upper])) }
            }
        }
        for level in 1..<shifts.count {
            var expected: [UInt64: Int] = [:]
            let step = UInt64(shifts[level] - shifts[level - 1])
            for child in nonEmpty[level - 1] { expected[child >> step, default: 0] += 1 }
            if expected != tables[level] {
                return "table counts at level \(level) (shift \(shifts[level])) disagree with the leaves"
            }
        }
        return counterViolation()
    }
}

/// `4K`, `2M`, `1G`: how page sizes are named in details.
func pageSizeName(_ size: UInt64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] where size >= UInt64(1) << UInt64(shift) {
        if size & PageTable.mask(shift) == 0 { return "\(size >> UInt64(shift))\(unit)" }
    }
    return "\(size)B"
}
