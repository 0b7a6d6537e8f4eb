/// An ordered set of IOVA ranges with values, as an AVL tree augmented with the largest
/// `last` of each subtree, so that insert, remove and overlap queries are O(log n).
///
/// Ranges may overlap (reserved regions of different kinds do); entries are ordered by
/// `first` and then by insertion slot. Nodes live in one array and link by index, which keeps
/// a million entries compact and gives the tree value semantics through the array's
/// copy-on-write.
public struct IntervalTree<Value>: Sendable where Value: Sendable {
    /// Identifies one entry for as long as it is in the tree.
    public struct ID: Hashable, Sendable, Comparable {
        let slot: Int32
        public static func < (lhs: ID, rhs: ID) -> Bool { lhs.slot < rhs.slot }
    }

    public struct Entry: Sendable {
        public let id: ID
        public let range: IOVARange
        public let value: Value
    }

    // The tree's shape lives in parallel arrays indexed by slot, apart from the values, so
    // that rebalancing touches only plain integers (cheap in debug builds too) and an entry
    // costs 33 bytes plus its value.
    private var firsts: [UInt64] = []
    private var lasts: [UInt64] = []
    /// The largest `last` in the subtree rooted at each slot: what makes overlap queries prune.
    private var maxLasts: [UInt64] = []
    private var lefts: [Int32] = []
    private var rights: [Int32] = []
    private var heights: [Int8] = []
    /// nil marks a free slot.
    private var values: [Value?] = []

    private static var none: Int32 { -1 }

    private var freeSlots: [Int32] = []
    private var root: Int32 = -1
    public private(set) var count = 0

    public init() {}

    public var isEmpty: Bool { count == 0 }

    // MARK: Mutation

    @discardableResult
    public mutating func insert(_ range: IOVARange, _ value: Value) -> ID {
        let slot: Int32
        if let reused = freeSlots.popLast() {
            slot = reused
            let i = Int(slot)
            firsts[i] = range.first
            lasts[i] = range.last
            maxLasts[i] = range.last
            lefts[i] = Self.none
            rights[i] = Self.none
            heights[i] = 1
            values[i] = value
        } else {
            precondition(values.count < Int(Int32.max), "interval tree is full")
            slot = Int32(values.count)
            firsts.append(range.first)
            lasts.append(range.last)
            maxLasts.append(range.last)
            lefts.append(Self.none)
            rights.append(Self.none)
            heights.append(1)
            values.append(value)
        }
        root = insert(slot, into: root)
        count += 1
        return ID(slot: slot)
    }

    /// Removes the entry and returns its value; nil when `id` is not in the tree.
    @discardableResult
    public mutating func remove(_ id: ID) -> Value? {
        guard contains(id) else { return nil }
        let i = Int(id.slot)
        let value = values[i]
        root = remove(key: (firsts[i], id.slot), from: root)
        values[i] = nil
        freeSlots.append(id.slot)
        count -= 1
        return value
    }

    public mutating func removeAll() {
        self = IntervalTree()
    }

    /// Replaces the value of an entry in place; the range is unchanged.
    public mutating func updateValue(_ id: ID, _ value: Value) {
        precondition(contains(id), "no such entry")
        values[Int(id.slot)] = value
    }

    // MARK: Queries

    public func contains(_ id: ID) -> Bool {
        id.slot >= 0 && Int(id.slot) < values.count && values[Int(id.slot)] != nil
    }

    public subscript(id: ID) -> Entry? {
        guard contains(id) else { return nil }
        return entry(id.slot)
    }

    /// The entry with the lowest `first` among those overlapping `range`.
    public func firstOverlap(_ range: IOVARange) -> Entry? {
        var found: Entry?
        visitOverlaps(root, range) {
            found = $0
            return false
        }
        return found
    }

    public func overlaps(_ range: IOVARange) -> Bool { firstOverlap(range) != nil }

    /// Every entry overlapping `range`, ordered by `first`.
    public func overlapping(_ range: IOVARange) -> [Entry] {
        var found: [Entry] = []
        visitOverlaps(root, range) {
            found.append($0)
            return true
        }
        return found
    }

    /// Calls `body` on each entry overlapping `range`, in order, until it returns false.
    public func forEachOverlap(_ range: IOVARange, _ body: (Entry) -> Bool) {
        visitOverlaps(root, range, body)
    }

    /// All entries, ordered by `first`.
    public var entries: [Entry] {
        overlapping(.all)
    }

    // MARK: Invariants

    /// Checks ordering, AVL balance, heights, the `maxLast` augmentation and the count.
    /// O(n); tests call it after mutations. Returns a description of the first violation.
    public func invariantViolation() -> String? {
        var seen = 0
        var problem: String?
        /// Returns the subtree's height, or nil once a problem is found.
        func check(_ n: Int32, lower: (UInt64, Int32)?, upper: (UInt64, Int32)?) -> Int8? {
            if n == Self.none { return 0 }
            let i = Int(n)
            guard values[i] != nil else {
                problem = "free slot \(n) is linked into the tree"
                return nil
            }
            let key = (firsts[i], n)
            if let lower, !(lower < key) || upper.map({ !(key < $0) }) ?? false {
                problem = "slot \(n) is out of order"
                return nil
            }
            guard let lh = check(lefts[i], lower: lower, upper: key),
                let rh = check(rights[i], lower: key, upper: upper)
            else { return nil }
            guard abs(Int(lh) - Int(rh)) <= 1, heights[i] == max(lh, rh) + 1 else {
                problem = "slot \(n) is unbalanced or has a stale height"
                return nil
            }
            var maxLast = lasts[i]
            if lefts[i] != Self.none { maxLast = max(maxLast, maxLasts[Int(lefts[i])]) }
            if rights[i] != Self.none { maxLast = max(maxLast, maxLasts[Int(rights[i])]) }
            guard maxLasts[i] == maxLast, firsts[i] <= lasts[i] else {
                problem = "slot \(n) has a stale maxLast"
                return nil
            }
            seen += 1
            return heights[i]
        }
        guard check(root, lower: nil, upper: nil) != nil else { return problem }
        guard seen == count else { return "count \(count) but \(seen) reachable entries" }
        guard values.count - freeSlots.count == count else { return "slot accounting broken" }
        return nil
    }

    // MARK: Internals

    private func entry(_ slot: Int32) -> Entry {
        let i = Int(slot)
        return Entry(id: ID(slot: slot), range: IOVARange(unchecked: firsts[i], lasts[i]), value: values[i]!)
    }

    @discardableResult
    private func visitOverlaps(_ n: Int32, _ range: IOVARange, _ body: (Entry) -> Bool) -> Bool {
        if n == Self.none { return true }
        let i = Int(n)
        // Nothing in this subtree ends at or after range.first.
        if maxLasts[i] < range.first { return true }
        if !visitOverlaps(lefts[i], range, body) { return false }
        // This entry and everything to its right start after the query.
        if firsts[i] > range.last { return true }
        if lasts[i] >= range.first, !body(entry(n)) { return false }
        return visitOverlaps(rights[i], range, body)
    }

    private func height(_ n: Int32) -> Int8 { n == Self.none ? 0 : heights[Int(n)] }

    private func key(_ n: Int32) -> (UInt64, Int32) { (firsts[Int(n)], n) }

    private mutating func update(_ n: Int32) {
        let i = Int(n)
        let l = lefts[i]
        let r = rights[i]
        var maxLast = lasts[i]
        if l != Self.none { maxLast = max(maxLast, maxLasts[Int(l)]) }
        if r != Self.none { maxLast = max(maxLast, maxLasts[Int(r)]) }
        maxLasts[i] = maxLast
        heights[i] = max(height(l), height(r)) + 1
    }

    private mutating func rotateLeft(_ n: Int32) -> Int32 {
        let r = rights[Int(n)]
        rights[Int(n)] = lefts[Int(r)]
        lefts[Int(r)] = n
        update(n)
        update(r)
        return r
    }

    private mutating func rotateRight(_ n: Int32) -> Int32 {
        let l = lefts[Int(n)]
        lefts[Int(n)] = rights[Int(l)]
        rights[Int(l)] = n
        update(n)
        update(l)
        return l
    }

    private func balanceFactor(_ n: Int32) -> Int {
        Int(height(lefts[Int(n)])) - Int(height(rights[Int(n)]))
    }

    private mutating func rebalance(_ n: Int32) -> Int32 {
        update(n)
        let factor = balanceFactor(n)
        if factor > 1 {
            if balanceFactor(lefts[Int(n)]) < 0 { lefts[Int(n)] = rotateLeft(lefts[Int(n)]) }
            return rotateRight(n)
        }
        if factor < -1 {
            if balanceFactor(rights[Int(n)]) > 0 { rights[Int(n)] = rotateRight(rights[Int(n)]) }
            return rotateLeft(n)
        }
        return n
    }

    private mutating func insert(_ slot: Int32, into n: Int32) -> Int32 {
        if n == Self.none { return slot }
        if key(slot) < key(n) {
            lefts[Int(n)] = insert(slot, into: lefts[Int(n)])
        } else {
            rights[Int(n)] = insert(slot, into: rights[Int(n)])
        }
        return rebalance(n)
    }

    private mutating func remove(key target: (UInt64, Int32), from n: Int32) -> Int32 {
        precondition(n != Self.none, "interval tree: key not found")
        if target < key(n) {
            lefts[Int(n)] = remove(key: target, from: lefts[Int(n)])
        } else if key(n) < target {
            rights[Int(n)] = remove(key: target, from: rights[Int(n)])
        } else {
            let left = lefts[Int(n)]
            let right = rights[Int(n)]
            if left == Self.none { return right }
            if right == Self.none { return left }
            let (rest, successor) = removeMin(right)
            lefts[Int(successor)] = left
            rights[Int(successor)] = rest
            return rebalance(successor)
        }
        return rebalance(n)
    }

    private mutating func removeMin(_ n: Int32) -> (root: Int32, min: Int32) {
        let left = lefts[Int(n)]
        if left == Self.none { return (rights[Int(n)], n) }
        let (rest, minimum) = removeMin(left)
        lefts[Int(n)] = rest
        return (rebalance(n), minimum)
    }
}
