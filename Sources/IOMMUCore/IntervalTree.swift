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

    private struct Node: Sendable {
        var range: IOVARange
        var maxLast: UInt64
        var left: Int32
        var right: Int32
        var height: Int8
        var value: Value?
    }

    private static var none: Int32 { -1 }

    private var nodes: [Node] = []
    private var freeSlots: [Int32] = []
    private var root: Int32 = -1
    public private(set) var count = 0

    public init() {}

    public var isEmpty: Bool { count == 0 }

    // MARK: Mutation

    @discardableResult
    public mutating func insert(_ range: IOVARange, _ value: Value) -> ID {
        let node = Node(range: range, maxLast: range.last, left: Self.none, right: Self.none, height: 1, value: value)
        let slot: Int32
        if let reused = freeSlots.popLast() {
            slot = reused
            nodes[Int(slot)] = node
        } else {
            precondition(nodes.count < Int(Int32.max), "interval tree is full")
            slot = Int32(nodes.count)
            nodes.append(node)
        }
        root = insert(slot, into: root)
        count += 1
        return ID(slot: slot)
    }

    /// Removes the entry and returns its value; nil when `id` is not in the tree.
    @discardableResult
    public mutating func remove(_ id: ID) -> Value? {
        guard contains(id) else { return nil }
        let slot = id.slot
        let value = nodes[Int(slot)].value
        root = remove(key: (nodes[Int(slot)].range.first, slot), from: root)
        nodes[Int(slot)].value = nil
        freeSlots.append(slot)
        count -= 1
        return value
    }

    public mutating func removeAll() {
        nodes.removeAll()
        freeSlots.removeAll()
        root = Self.none
        count = 0
    }

    /// Replaces the value of an entry in place; the range is unchanged.
    public mutating func updateValue(_ id: ID, _ value: Value) {
        precondition(contains(id), "no such entry")
        nodes[Int(id.slot)].value = value
    }

    // MARK: Queries

    public func contains(_ id: ID) -> Bool {
        id.slot >= 0 && Int(id.slot) < nodes.count && nodes[Int(id.slot)].value != nil
    }

    public subscript(id: ID) -> Entry? {
        guard contains(id) else { return nil }
        return entry(id.slot)
    }

    /// The entry with the lowest `first` among those overlapping `range`.
    public func firstOverlap(_ range: IOVARange) -> Entry? {
        var found: Entry?
        visitOverlaps(root, range) { found = $0; return false }
        return found
    }

    public func overlaps(_ range: IOVARange) -> Bool { firstOverlap(range) != nil }

    /// Every entry overlapping `range`, ordered by `first`.
    public func overlapping(_ range: IOVARange) -> [Entry] {
        var found: [Entry] = []
        visitOverlaps(root, range) { found.append($0); return true }
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
        func check(_ n: Int32, lower: (UInt64, Int32)?, upper: (UInt64, Int32)?) -> (height: Int8, maxLast: UInt64)?? {
            if n == Self.none { return .some(nil) }
            let node = nodes[Int(n)]
            guard node.value != nil else { return nil }
            let key = (node.range.first, n)
            if let lower, !(lower < key) { return nil }
            if let upper, !(key < upper) { return nil }
            guard let l = check(node.left, lower: lower, upper: key),
                let r = check(node.right, lower: key, upper: upper)
            else { return nil }
            let lh = l?.height ?? 0
            let rh = r?.height ?? 0
            guard abs(Int(lh) - Int(rh)) <= 1, node.height == max(lh, rh) + 1 else { return nil }
            let maxLast = max(node.range.last, l?.maxLast ?? 0, r?.maxLast ?? 0)
            guard node.maxLast == maxLast else { return nil }
            seen += 1
            return .some((node.height, maxLast))
        }
        guard check(root, lower: nil, upper: nil) != nil else { return "tree order, balance or augmentation broken" }
        guard seen == count else { return "count \(count) but \(seen) reachable entries" }
        guard nodes.count - freeSlots.count == count else { return "slot accounting broken" }
        return nil
    }

    // MARK: Internals

    private func entry(_ slot: Int32) -> Entry {
        let node = nodes[Int(slot)]
        return Entry(id: ID(slot: slot), range: node.range, value: node.value!)
    }

    @discardableResult
    private func visitOverlaps(_ n: Int32, _ range: IOVARange, _ body: (Entry) -> Bool) -> Bool {
        if n == Self.none { return true }
        let node = nodes[Int(n)]
        // Nothing in this subtree ends at or after range.first.
        if node.maxLast < range.first { return true }
        if !visitOverlaps(node.left, range, body) { return false }
        // This node and everything to its right start after the query.
        if node.range.first > range.last { return true }
        if node.range.overlaps(range), !body(entry(n)) { return false }
        return visitOverlaps(node.right, range, body)
    }

    private func height(_ n: Int32) -> Int8 { n == Self.none ? 0 : nodes[Int(n)].height }

    private func key(_ n: Int32) -> (UInt64, Int32) { (nodes[Int(n)].range.first, n) }

    private mutating func update(_ n: Int32) {
        let node = nodes[Int(n)]
        var maxLast = node.range.last
        if node.left != Self.none { maxLast = max(maxLast, nodes[Int(node.left)].maxLast) }
        if node.right != Self.none { maxLast = max(maxLast, nodes[Int(node.right)].maxLast) }
        nodes[Int(n)].maxLast = maxLast
        nodes[Int(n)].height = max(height(node.left), height(node.right)) + 1
    }

    private mutating func rotateLeft(_ n: Int32) -> Int32 {
        let r = nodes[Int(n)].right
        nodes[Int(n)].right = nodes[Int(r)].left
        nodes[Int(r)].left = n
        update(n)
        update(r)
        return r
    }

    private mutating func rotateRight(_ n: Int32) -> Int32 {
        let l = nodes[Int(n)].left
        nodes[Int(n)].left = nodes[Int(l)].right
        nodes[Int(l)].right = n
        update(n)
        update(l)
        return l
    }

    private func balanceFactor(_ n: Int32) -> Int {
        Int(height(nodes[Int(n)].left)) - Int(height(nodes[Int(n)].right))
    }

    private mutating func rebalance(_ n: Int32) -> Int32 {
        update(n)
        let factor = balanceFactor(n)
        if factor > 1 {
            if balanceFactor(nodes[Int(n)].left) < 0 { nodes[Int(n)].left = rotateLeft(nodes[Int(n)].left) }
            return rotateRight(n)
        }
        if factor < -1 {
            if balanceFactor(nodes[Int(n)].right) > 0 { nodes[Int(n)].right = rotateRight(nodes[Int(n)].right) }
            return rotateLeft(n)
        }
        return n
    }

    private mutating func insert(_ slot: Int32, into n: Int32) -> Int32 {
        if n == Self.none { return slot }
        if key(slot) < key(n) {
            nodes[Int(n)].left = insert(slot, into: nodes[Int(n)].left)
        } else {
            nodes[Int(n)].right = insert(slot, into: nodes[Int(n)].right)
        }
        return rebalance(n)
    }

    private mutating func remove(key target: (UInt64, Int32), from n: Int32) -> Int32 {
        precondition(n != Self.none, "interval tree: key not found")
        if target < key(n) {
            nodes[Int(n)].left = remove(key: target, from: nodes[Int(n)].left)
        } else if key(n) < target {
            nodes[Int(n)].right = remove(key: target, from: nodes[Int(n)].right)
        } else {
            let left = nodes[Int(n)].left
            let right = nodes[Int(n)].right
            if left == Self.none { return right }
            if right == Self.none { return left }
            let (rest, successor) = removeMin(right)
            nodes[Int(successor)].left = left
            nodes[Int(successor)].right = rest
            return rebalance(successor)
        }
        return rebalance(n)
    }

    private mutating func removeMin(_ n: Int32) -> (root: Int32, min: Int32) {
        let left = nodes[Int(n)].left
        if left == Self.none { return (nodes[Int(n)].right, n) }
        let (rest, minimum) = removeMin(left)
        nodes[Int(n)].left = rest
        return (rebalance(n), minimum)
    }
}
