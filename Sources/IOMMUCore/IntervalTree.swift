/// An ordered set of IOVA ranges with values, as an AVL tree augmented with the largest
/// `last` of each subtree, so that insert, remove and overlap queries are O(log n).
///
/// Ranges may overlap (reserved regions of different kinds do); entries are ordered by
/// `first` and then by insertion slot. Nodes live in one array and link by index, which keeps
/// a million entries compact and gives the tree value semantics through the array's
/// copy-on-write.
public struct IntervalTree<Value>: Sendable where Value: Sendable {
    /// Identifies one entry for as long as it is in the tree.
    /// Identifies one entry for as long as it is in the tree. Slots are reused, so an ID also
    /// carries its slot's generation: an ID kept past its entry's removal never names a newer
    /// entry that took the slot.
    public struct ID: Hashable, Sendable, Comparable {
        let slot: Int32
        let generation: UInt32
        public static func < (lhs: ID, rhs: ID) -> Bool { (lhs.slot, lhs.generation) < (rhs.slot, rhs.generation) }
    }

    public struct Entry: Sendable {
        public let id: ID
        public let range: IOVARange
        public let value: Value
    }

    // The tree's shape lives in an array of plain links, apart from the values, so that
    // rebalancing touches only integers through one pointer (cheap in debug builds too) and an
    // entry costs 44 bytes plus its value.
    private var links: [Link] = []
    /// nil marks a free slot.
    private var values: [Value?] = []
    /// Bumped each time a slot is freed.
    private var generations: [UInt32] = []
    private var freeSlots: [Int32] = []
    private var root: Int32 = Link.none
    public private(set) var count = 0

    public init() {}

    public var isEmpty: Bool { count == 0 }

    // MARK: Mutation

    @discardableResult
    public mutating func insert(_ range: IOVARange, _ value: Value) -> ID {
        let link = Link(first: range.first, last: range.last)
        let slot: Int32
        if let reused = freeSlots.popLast() {
            slot = reused
            links[Int(slot)] = link
            values[Int(slot)] = value
        } else {
            precondition(values.count < Int(Int32.max), "interval tree is full")
            slot = Int32(values.count)
            links.append(link)
            values.append(value)
            generations.append(0)
        }
        let top = root
        root = links.withUnsafeMutableBufferPointer { Shape($0.baseAddress!).insert(slot, into: top) }
        count += 1
        return ID(slot: slot, generation: generations[Int(slot)])
    }

    /// Removes the entry and returns its value; nil when `id` is not in the tree.
    @discardableResult
    public mutating func remove(_ id: ID) -> Value? {
        guard contains(id) else { return nil }
        let value = values[Int(id.slot)]
        let top = root
        let key = (links[Int(id.slot)].first, id.slot)
        root = links.withUnsafeMutableBufferPointer { Shape($0.baseAddress!).remove(key: key, from: top) }
        values[Int(id.slot)] = nil
        generations[Int(id.slot)] &+= 1
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
            && generations[Int(id.slot)] == id.generation
    }

    public subscript(id: ID) -> Entry? {
        guard contains(id) else { return nil }
        let link = links[Int(id.slot)]
        return Entry(id: id, range: IOVARange(unchecked: link.first, link.last), value: values[Int(id.slot)]!)
    }

    /// The entry with the lowest `first` among those overlapping `range`.
    public func firstOverlap(_ range: IOVARange) -> Entry? {
        var found: Entry?
        forEachOverlap(range) {
            found = $0
            return false
        }
        return found
    }

    public func overlaps(_ range: IOVARange) -> Bool { firstOverlap(range) != nil }

    /// Every entry overlapping `range`, ordered by `first`.
    public func overlapping(_ range: IOVARange) -> [Entry] {
        var found: [Entry] = []
        forEachOverlap(range) {
            found.append($0)
            return true
        }
        return found
    }

    /// Calls `body` on each entry overlapping `range`, in order, until it returns false.
    public func forEachOverlap(_ range: IOVARange, _ body: (Entry) -> Bool) {
        links.withUnsafeBufferPointer { buffer in
            guard let base = buffer.baseAddress else { return }
            _ = visitOverlaps(base, root, range, body)
        }
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
            if n == Link.none { return 0 }
            let i = Int(n)
            let link = links[i]
            guard values[i] != nil else {
                problem = "free slot \(n) is linked into the tree"
                return nil
            }
            let key = (link.first, n)
            if lower.map({ !($0 < key) }) ?? false || upper.map({ !(key < $0) }) ?? false {
                problem = "slot \(n) is out of order"
                return nil
            }
            guard let lh = check(link.left, lower: lower, upper: key),
                let rh = check(link.right, lower: key, upper: upper)
            else { return nil }
            guard abs(Int(lh) - Int(rh)) <= 1, link.height == max(lh, rh) + 1 else {
                problem = "slot \(n) is unbalanced or has a stale height"
                return nil
            }
            var maxLast = link.last
            if link.left != Link.none { maxLast = max(maxLast, links[Int(link.left)].maxLast) }
            if link.right != Link.none { maxLast = max(maxLast, links[Int(link.right)].maxLast) }
            guard link.maxLast == maxLast, link.first <= link.last else {
                problem = "slot \(n) has a stale maxLast"
                return nil
            }
            seen += 1
            return link.height
        }
        guard check(root, lower: nil, upper: nil) != nil else { return problem }
        guard seen == count else { return "count \(count) but \(seen) reachable entries" }
        guard values.count - freeSlots.count == count else { return "slot accounting broken" }
        return nil
    }

    // MARK: Internals

    private func visitOverlaps(
        _ base: UnsafePointer<Link>, _ n: Int32, _ range: IOVARange, _ body: (Entry) -> Bool
    ) -> Bool {
        if n == Link.none { return true }
        let link = base[Int(n)]
        // Nothing in this subtree ends at or after range.first.
        if link.maxLast < range.first { return true }
        if !visitOverlaps(base, link.left, range, body) { return false }
        // This entry and everything to its right start after the query.
        if link.first > range.last { return true }
        if link.last >= range.first {
            let entry = Entry(
                id: ID(slot: n, generation: generations[Int(n)]), range: IOVARange(unchecked: link.first, link.last),
                value: values[Int(n)]!)
            if !body(entry) { return false }
        }
        return visitOverlaps(base, link.right, range, body)
    }
}

/// One node's place in the tree.
private struct Link {
    static let none: Int32 = -1
    var first: UInt64
    var last: UInt64
    /// The largest `last` in the subtree rooted here: what lets overlap queries prune.
    var maxLast: UInt64
    var left: Int32 = none
    var right: Int32 = none
    var height: Int8 = 1

    init(first: UInt64, last: UInt64) {
        self.first = first
        self.last = last
        self.maxLast = last
    }
}

/// AVL insertion and removal over the links, through one pointer for the whole operation.
private struct Shape {
    let p: UnsafeMutablePointer<Link>
    init(_ p: UnsafeMutablePointer<Link>) { self.p = p }

    func height(_ n: Int32) -> Int8 { n == Link.none ? 0 : p[Int(n)].height }

    func key(_ n: Int32) -> (UInt64, Int32) { (p[Int(n)].first, n) }

    func update(_ n: Int32) {
        let l = p[Int(n)].left
        let r = p[Int(n)].right
        var maxLast = p[Int(n)].last
        if l != Link.none { maxLast = max(maxLast, p[Int(l)].maxLast) }
        if r != Link.none { maxLast = max(maxLast, p[Int(r)].maxLast) }
        p[Int(n)].maxLast = maxLast
        p[Int(n)].height = max(height(l), height(r)) + 1
    }

    func rotateLeft(_ n: Int32) -> Int32 {
        let r = p[Int(n)].right
        p[Int(n)].right = p[Int(r)].left
        p[Int(r)].left = n
        update(n)
        update(r)
        return r
    }

    func rotateRight(_ n: Int32) -> Int32 {
        let l = p[Int(n)].left
        p[Int(n)].left = p[Int(l)].right
        p[Int(l)].right = n
        update(n)
        update(l)
        return l
    }

    func balanceFactor(_ n: Int32) -> Int {
        Int(height(p[Int(n)].left)) - Int(height(p[Int(n)].right))
    }

    func rebalance(_ n: Int32) -> Int32 {
        update(n)
        let factor = balanceFactor(n)
        if factor > 1 {
            if balanceFactor(p[Int(n)].left) < 0 { p[Int(n)].left = rotateLeft(p[Int(n)].left) }
            return rotateRight(n)
        }
        if factor < -1 {
            if balanceFactor(p[Int(n)].right) > 0 { p[Int(n)].right = rotateRight(p[Int(n)].right) }
            return rotateLeft(n)
        }
        return n
    }

    func insert(_ slot: Int32, into n: Int32) -> Int32 {
        if n == Link.none { return slot }
        if key(slot) < key(n) {
            p[Int(n)].left = insert(slot, into: p[Int(n)].left)
        } else {
            p[Int(n)].right = insert(slot, into: p[Int(n)].right)
        }
        return rebalance(n)
    }

    func remove(key target: (UInt64, Int32), from n: Int32) -> Int32 {
        precondition(n != Link.none, "interval tree: key not found")
        if target < key(n) {
            p[Int(n)].left = remove(key: target, from: p[Int(n)].left)
        } else if key(n) < target {
            p[Int(n)].right = remove(key: target, from: p[Int(n)].right)
        } else {
            let left = p[Int(n)].left
            let right = p[Int(n)].right
            if left == Link.none { return right }
            if right == Link.none { return left }
            let (rest, successor) = removeMin(right)
            p[Int(successor)].left = left
            p[Int(successor)].right = rest
            return rebalance(successor)
        }
        return rebalance(n)
    }

    func removeMin(_ n: Int32) -> (root: Int32, min: Int32) {
        let left = p[Int(n)].left
        if left == Link.none { return (p[Int(n)].right, n) }
        let (rest, minimum) = removeMin(left)
        p[Int(n)].left = rest
        return (rebalance(n), minimum)
    }
}
