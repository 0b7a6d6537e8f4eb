/// A DMA map request as the engine sees it, with the wire's raw flag bits so that unknown
/// bits are refused here, in one place.
public struct MapRequest: Hashable, Sendable {
    public static let knownFlags: UInt32 = DMAProtection.readWrite.rawValue

    public var iova: UInt64
    public var size: UInt64
    public var flags: UInt32
    /// The offset into the backing memory; VFIO requires it page-aligned as it does the vaddr.
    public var offset: UInt64

    public init(iova: UInt64, size: UInt64, flags: UInt32 = DMAProtection.readWrite.rawValue, offset: UInt64 = 0) {
        self.iova = iova
        self.size = size
        self.flags = flags
        self.offset = offset
    }
}

public struct UnmapRequest: Hashable, Sendable {
    /// vfio-user and VFIO: DMA_UNMAP flag bit 1 unmaps everything (address and size must be 0).
    public static let unmapAllFlag: UInt32 = 1 << 1
    public static let knownFlags: UInt32 = unmapAllFlag

    public var iova: UInt64
    public var size: UInt64
    public var flags: UInt32

    public init(iova: UInt64, size: UInt64, flags: UInt32 = 0) {
        self.iova = iova
        self.size = size
        self.flags = flags
    }

    public static let all = UnmapRequest(iova: 0, size: 0, flags: unmapAllFlag)
}

/// An allowed map: what to program and commit.
public struct MapPlan: Hashable, Sendable {
    public let range: IOVARange
    public let protection: DMAProtection
    public let bytes: UInt64
}

/// An allowed unmap: the whole mappings it removes, in address order.
public struct UnmapPlan: Sendable {
    public let entries: [IntervalTree<Mapping>.Entry]
    public let bytes: UInt64

    /// A plan for these entries (disjoint mappings, so their sizes cannot overflow the sum).
    public init(entries: [IntervalTree<Mapping>.Entry]) {
        self.entries = entries
        self.bytes = entries.reduce(0) { $0 + $1.range.sizeMinusOne + 1 }
    }
}

public struct AttachPlan: Hashable, Sendable {
    public let group: UInt32
}
