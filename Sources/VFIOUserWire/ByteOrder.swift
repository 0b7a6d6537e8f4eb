// vfio-user.rst, "Protocol Specification": all data is in the host's byte order. The daemon
// runs on x86-64 and arm64 Linux, both little-endian, so this module reads and writes
// little-endian explicitly. A big-endian build would silently speak the wrong order; refuse it.
#if _endian(big)
    #error("VFIOUserWire encodes little-endian; vfio-user uses host order, so a big-endian host needs a port")
#endif

/// Reads little-endian integers from any byte sequence, one element at a time, so that slices,
/// arrays and raw buffers decode alike without index arithmetic (an `ArraySlice` from
/// `FrameReader` does not start at index 0).
struct LittleEndianReader<Base: IteratorProtocol<UInt8>> {
    var base: Base

    init(_ base: Base) {
        self.base = base
    }

    /// The next integer, or nil when the bytes run out part-way.
    mutating func read<T: FixedWidthInteger & UnsignedInteger>(_: T.Type = T.self) -> T? {
        var value: T = 0
        for shift in stride(from: 0, to: T.bitWidth, by: 8) {
            guard let byte = base.next() else { return nil }
            value |= T(byte) << shift
        }
        return value
    }
}

extension Array where Element == UInt8 {
    /// Appends `value` little-endian. Byte by byte, so it needs no temporary buffer.
    mutating func appendLittleEndian<T: FixedWidthInteger & UnsignedInteger>(_ value: T) {
        for shift in stride(from: 0, to: T.bitWidth, by: 8) {
            append(UInt8(truncatingIfNeeded: value >> shift))
        }
    }
}
