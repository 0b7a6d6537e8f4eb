/// An inclusive range of IO virtual addresses, `[first, last]`.
///
/// Inclusive bounds are used throughout (as iommufd does) so that the top page of the
/// 64-bit space, `[2^64-4096, 2^64-1]`, and even the whole space are representable. Every
/// initialiser that derives `last` from a size uses overflow-checked arithmetic and fails
/// instead of wrapping.
public struct IOVARange: Hashable, Sendable {
    public let first: UInt64
    public let last: UInt64

    /// The whole 64-bit IOVA space.
    public static let all = IOVARange(unchecked: 0, UInt64.max)

    /// Fails when `last < first`.
    public init?(first: UInt64, last: UInt64) {
        guard first <= last else { return nil }
        self.first = first
        self.last = last
    }

    /// `[start, start + size - 1]`. Fails when `size` is 0 or the end wraps past 2^64-1.
    public init?(start: UInt64, size: UInt64) {
        guard size > 0 else { return nil }
        let (last, overflow) = start.addingReportingOverflow(size - 1)
        guard !overflow else { return nil }
        self.first = start
        self.last = last
    }

    /// For callers that have already established `first <= last`.
    init(unchecked first: UInt64, _ last: UInt64) {
        assert(first <= last)
        self.first = first
        self.last = last
    }

    /// The number of bytes, or nil for the whole 64-bit space (2^64 does not fit a UInt64).
    public var size: UInt64? {
        let (size, overflow) = (last - first).addingReportingOverflow(1)
        return overflow ? nil : size
    }

    /// `size - 1`, which always fits.
    public var sizeMinusOne: UInt64 { last - first }

    public func contains(_ address: UInt64) -> Bool { first <= address && address <= last }
    public func contains(_ other: IOVARange) -> Bool { first <= other.first && other.last <= last }
    public func overlaps(_ other: IOVARange) -> Bool { first <= other.last && other.first <= last }

    /// True when the two ranges overlap or touch, so their union is one range.
    public func isAdjacentOrOverlapping(_ other: IOVARange) -> Bool {
        if overlaps(other) { return true }
        if last < other.first { return last &+ 1 == other.first }
        return other.last &+ 1 == first
    }

    public func intersection(_ other: IOVARange) -> IOVARange? {
        IOVARange(first: max(first, other.first), last: min(last, other.last))
    }

    /// What is left of `self` once `other` is taken out: zero, one or two ranges, in order.
    public func subtracting(_ other: IOVARange) -> [IOVARange] {
        guard overlaps(other) else { return [self] }
        var parts: [IOVARange] = []
        if other.first > first { parts.append(IOVARange(unchecked: first, other.first - 1)) }
        if other.last < last { parts.append(IOVARange(unchecked: other.last + 1, last)) }
        return parts
    }

    /// True when both ends are aligned to `alignment` (a power of two): `first` is a multiple
    /// of it and `last + 1` is too (or `last` is the top of the space).
    public func isAligned(to alignment: UInt64) -> Bool {
        precondition(alignment != 0 && alignment & (alignment - 1) == 0, "alignment must be a power of two")
        let mask = alignment - 1
        return first & mask == 0 && last & mask == mask
    }
}

extension IOVARange: Comparable {
    public static func < (lhs: IOVARange, rhs: IOVARange) -> Bool {
        (lhs.first, lhs.last) < (rhs.first, rhs.last)
    }
}

extension IOVARange: CustomStringConvertible {
    /// `0xfee00000-0xfeefffff`: the form every reason and listing uses.
    public var description: String { "\(Hex(first))-\(Hex(last))" }
}

/// Renders a number as lower-case `0x…` hex.
public struct Hex: CustomStringConvertible, Sendable {
    public let value: UInt64
    public init(_ value: UInt64) { self.value = value }
    public init(_ value: UInt32) { self.value = UInt64(value) }
    public var description: String { "0x" + String(value, radix: 16) }
}

extension Array where Element == IOVARange {
    /// Sorts and merges overlapping or touching ranges into the fewest disjoint ranges.
    public func normalized() -> [IOVARange] {
        var merged: [IOVARange] = []
        for range in self.sorted() {
            if let tail = merged.last, tail.isAdjacentOrOverlapping(range) {
                merged[merged.count - 1] = IOVARange(unchecked: tail.first, Swift.max(tail.last, range.last))
            } else {
                merged.append(range)
            }
        }
        return merged
    }

    /// The ranges of `self` minus every range in `holes`, in one sweep over both sorted lists.
    public func subtracting(_ holes: [IOVARange]) -> [IOVARange] {
        let holes = holes.normalized()
        var result: [IOVARange] = []
        var h = 0
        for range in self.normalized() {
            while h < holes.count && holes[h].last < range.first { h += 1 }
            // `cursor` is the first byte of `range` not yet known to be covered; nil once a hole
            // reaches the top of the space.
            var cursor: UInt64? = range.first
            var k = h
            while let start = cursor, k < holes.count, holes[k].first <= range.last {
                if holes[k].first > start { result.append(IOVARange(unchecked: start, holes[k].first - 1)) }
                cursor = holes[k].last == UInt64.max ? nil : Swift.max(start, holes[k].last + 1)
                k += 1
            }
            if let start = cursor, start <= range.last { result.append(IOVARange(unchecked: start, range.last)) }
        }
        return result
    }

    /// The ranges covered by both `self` and `other`.
    public func intersecting(_ other: [IOVARange]) -> [IOVARange] {
        let lhs = self.normalized()
        let rhs = other.normalized()
        var result: [IOVARange] = []
        var i = 0
        var j = 0
        while i < lhs.count && j < rhs.count {
            if let both = lhs[i].intersection(rhs[j]) { result.append(both) }
            if lhs[i].last < rhs[j].last { i += 1 } else { j += 1 }
        }
        return result
    }
}
