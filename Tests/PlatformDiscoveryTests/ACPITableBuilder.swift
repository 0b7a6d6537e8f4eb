import PlatformDiscovery
import TestSupport

// Builders that write DMAR and IVRS tables byte by byte, so tests can describe a table as values
// and then break exactly one thing about it (a length, a field, the checksum).

extension Array where Element == UInt8 {
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        for i in 0..<(T.bitWidth / 8) {
            append(UInt8(truncatingIfNeeded: value >> (8 * i)))
        }
    }

    mutating func appendASCII(_ text: String, paddedTo width: Int) {
        let ascii = Array(text.utf8.prefix(width))
        append(contentsOf: ascii)
        append(contentsOf: [UInt8](repeating: 0x20, count: width - ascii.count))
    }

    /// Writes `value` little-endian over the bytes at `offset`.
    mutating func storeLittleEndian<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        for i in 0..<(T.bitWidth / 8) {
            self[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i))
        }
    }
}

/// The 36-byte standard ACPI header plus the 12 table-specific bytes DMAR and IVRS both have.
enum ACPIHeaderWriter {
    /// `headerLength` nil writes the true length; anything else is written as given, so a test
    /// can make the table lie about its size. The checksum is fixed up over the bytes the header
    /// claims (or all of them, when it claims more than there are) unless `fixChecksum` is false.
    static func table(
        signature: String,
        revision: UInt8,
        specific: [UInt8],
        body: [UInt8],
        headerLength: UInt32?,
        fixChecksum: Bool
    ) -> [UInt8] {
        precondition(specific.count == 12)
        var bytes: [UInt8] = []
        bytes.appendASCII(signature, paddedTo: 4)
        bytes.appendLittleEndian(UInt32(0))  // length, stored below
        bytes.append(revision)
        bytes.append(0)  // checksum, stored below
        bytes.appendASCII("IPOLD", paddedTo: 6)  // OEM id
        bytes.appendASCII("TESTTBL", paddedTo: 8)  // OEM table id
        bytes.appendLittleEndian(UInt32(1))  // OEM revision
        bytes.appendASCII("SWFT", paddedTo: 4)  // creator id
        bytes.appendLittleEndian(UInt32(0x2026_0101))  // creator revision
        bytes.append(contentsOf: specific)
        bytes.append(contentsOf: body)
        bytes.storeLittleEndian(headerLength ?? UInt32(bytes.count), at: 4)
        if fixChecksum {
            let covered = Swift.min(Int(headerLength ?? UInt32(bytes.count)), bytes.count)
            var sum: UInt8 = 0
            for byte in bytes[0..<covered] { sum &+= byte }
            bytes[9] = 0 &- sum
        }
        return bytes
    }
}

struct DMARBuilder {
    struct Scope {
        var type: UInt8 = 1
        var enumerationID: UInt8 = 0
        var startBus: UInt8 = 0
        var path: [DMARTable.PathElement]
        /// Written instead of the true length when set.
        var lengthOverride: UInt8? = nil

        var parsed: DMARTable.DeviceScope {
            DMARTable.DeviceScope(type: type, enumerationID: enumerationID, startBus: startBus, path: path)
        }

        func bytes() -> [UInt8] {
            var bytes: [UInt8] = [type, lengthOverride ?? UInt8(6 + 2 * path.count), 0, 0, enumerationID, startBus]
            for hop in path { bytes += [hop.device, hop.function] }
            return bytes
        }
    }

    struct DRHD {
        var flags: UInt8 = 0x01
        var segment: UInt16 = 0
        var registerBase: UInt64 = 0xfed9_0000
        var scopes: [Scope] = []

        func bytes() -> [UInt8] {
            let scopeBytes = scopes.flatMap { $0.bytes() }
            var bytes: [UInt8] = []
            bytes.appendLittleEndian(UInt16(0))
            bytes.appendLittleEndian(UInt16(16 + scopeBytes.count))
            bytes += [flags, 0]
            bytes.appendLittleEndian(segment)
            bytes.appendLittleEndian(registerBase)
            return bytes + scopeBytes
        }
    }

    struct RMRR {
        var segment: UInt16 = 0
        var base: UInt64
        var limit: UInt64
        var scopes: [Scope] = []
        /// Written instead of the true length when set.
        var lengthOverride: UInt16? = nil

        func bytes() -> [UInt8] {
            let scopeBytes = scopes.flatMap { $0.bytes() }
            var bytes: [UInt8] = []
            bytes.appendLittleEndian(UInt16(1))
            bytes.appendLittleEndian(lengthOverride ?? UInt16(24 + scopeBytes.count))
            bytes.appendLittleEndian(UInt16(0))
            bytes.appendLittleEndian(segment)
            bytes.appendLittleEndian(base)
            bytes.appendLittleEndian(limit)
            return bytes + scopeBytes
        }
    }

    enum Structure {
        case drhd(DRHD)
        case rmrr(RMRR)
        /// Any bytes at all, for structures the builder has no type for or deliberately broken ones.
        case raw([UInt8])

        func bytes() -> [UInt8] {
            switch self {
            case .drhd(let drhd): drhd.bytes()
            case .rmrr(let rmrr): rmrr.bytes()
            case .raw(let bytes): bytes
            }
        }
    }

    var hostAddressWidth: Int = 39
    var flags: UInt8 = 0x01
    var structures: [Structure] = []
    var headerLength: UInt32? = nil
    var fixChecksum = true

    func bytes() -> [UInt8] {
        var specific = [UInt8(truncatingIfNeeded: hostAddressWidth - 1), flags]
        specific += [UInt8](repeating: 0, count: 10)
        return ACPIHeaderWriter.table(
            signature: "DMAR", revision: 1, specific: specific, body: structures.flatMap { $0.bytes() },
            headerLength: headerLength, fixChecksum: fixChecksum)
    }

    /// Where each structure sits in `bytes()`, in order.
    func layout() -> [Range<Int>] {
        var offset = 48
        return structures.map { structure in
            let length = structure.bytes().count
            defer { offset += length }
            return offset..<(offset + length)
        }
    }

    /// What the parser should return for each well-formed RMRR, paired with where it ends.
    func expectedRMRRs() -> [(rmrr: DMARTable.RMRR, end: Int)] {
        var result: [(rmrr: DMARTable.RMRR, end: Int)] = []
        for (structure, place) in zip(structures, layout()) {
            guard case .rmrr(let rmrr) = structure else { continue }
            let parsed = DMARTable.RMRR(
                index: result.count, segment: rmrr.segment, base: rmrr.base, limit: rmrr.limit,
                scopes: rmrr.scopes.map(\.parsed), offset: place.lowerBound)
            result.append((parsed, place.upperBound))
        }
        return result
    }

    func expectedDRHDs() -> [(drhd: DMARTable.DRHD, end: Int)] {
        zip(structures, layout()).compactMap { structure, place in
            guard case .drhd(let drhd) = structure else { return nil }
            let parsed = DMARTable.DRHD(
                flags: drhd.flags, segment: drhd.segment, registerBase: drhd.registerBase,
                scopes: drhd.scopes.map(\.parsed), offset: place.lowerBound)
            return (parsed, place.upperBound)
        }
    }

    /// A plausible client platform: one INCLUDE_PCI_ALL unit and three RMRRs, the last for a
    /// device behind a root port (a two-hop path) plus that port's whole sub-hierarchy.
    static func sample(hostAddressWidth: Int = 39) -> DMARBuilder {
        let p = DMARTable.PathElement.init(device:function:)
        return DMARBuilder(
            hostAddressWidth: hostAddressWidth,
            structures: [
                .drhd(DRHD(scopes: [Scope(type: 3, enumerationID: 2, startBus: 0xf0, path: [p(0x1f, 0)])])),
                // USB controller 00:14.0
                .rmrr(RMRR(base: 0x3e2e_0000, limit: 0x3e2f_ffff, scopes: [Scope(path: [p(0x14, 0)])])),
                // Integrated graphics 00:02.0
                .rmrr(RMRR(base: 0x7b80_0000, limit: 0x7fff_ffff, scopes: [Scope(path: [p(0x02, 0)])])),
                // Device 00.0 below root port 00:1c.0, and everything below root port 00:1c.4
                .rmrr(
                    RMRR(
                        base: 0x7a00_0000, limit: 0x7a0f_ffff,
                        scopes: [
                            Scope(type: 1, path: [p(0x1c, 0), p(0x00, 0)]),
                            Scope(type: 2, path: [p(0x1c, 4)]),
                        ])),
            ])
    }
}

struct IVRSBuilder {
    struct IVHD {
        /// 0x10 (24-byte header), 0x11 or 0x40 (40-byte header).
        var type: UInt8 = 0x10
        var flags: UInt8 = 0xb0
        var deviceID: UInt16 = 0x0002
        var capabilityOffset: UInt16 = 0x40
        var baseAddress: UInt64 = 0xfd20_0000
        var segment: UInt16 = 0
        /// Device entries; the default is one 4-byte "all devices" entry.
        var deviceEntries: [UInt8] = [0x01, 0x00, 0x00, 0x00]
        var lengthOverride: UInt16? = nil

        func bytes() -> [UInt8] {
            let headerSize = type == 0x10 ? 24 : 40
            var bytes: [UInt8] = [type, flags]
            bytes.appendLittleEndian(lengthOverride ?? UInt16(headerSize + deviceEntries.count))
            bytes.appendLittleEndian(deviceID)
            bytes.appendLittleEndian(capabilityOffset)
            bytes.appendLittleEndian(baseAddress)
            bytes.appendLittleEndian(segment)
            bytes.appendLittleEndian(UInt16(0))  // IOMMU info
            bytes.appendLittleEndian(UInt32(0x8004_8f6e))  // feature reporting
            if headerSize == 40 {
                bytes.appendLittleEndian(UInt64(0x0000_0000_5a2f_a2f7))  // EFR image
                bytes.appendLittleEndian(UInt64(0))
            }
            return bytes + deviceEntries
        }
    }

    struct IVMD {
        var type: UInt8 = 0x21
        var flags: UInt8 = 0x07
        var deviceID: UInt16 = 0
        var auxData: UInt16 = 0
        var segment: UInt16 = 0
        var start: UInt64
        var length: UInt64
        var lengthOverride: UInt16? = nil
        /// Bytes written after the 32 defined ones (the length covers them).
        var trailing: [UInt8] = []

        func bytes() -> [UInt8] {
            var bytes: [UInt8] = [type, flags]
            bytes.appendLittleEndian(lengthOverride ?? UInt16(32 + trailing.count))
            bytes.appendLittleEndian(deviceID)
            bytes.appendLittleEndian(auxData)
            bytes.appendLittleEndian(segment)
            bytes += [UInt8](repeating: 0, count: 6)
            bytes.appendLittleEndian(start)
            bytes.appendLittleEndian(length)
            return bytes + trailing
        }
    }

    enum Entry {
        case ivhd(IVHD)
        case ivmd(IVMD)
        case raw([UInt8])

        func bytes() -> [UInt8] {
            switch self {
            case .ivhd(let ivhd): ivhd.bytes()
            case .ivmd(let ivmd): ivmd.bytes()
            case .raw(let bytes): bytes
            }
        }
    }

    /// Real IVinfo from a Zen system: VAsize 64, PAsize 48, GVAsize 48-bit, EFRSup.
    var ivinfo: UInt32 = 0x0020_3041
    var entries: [Entry] = []
    var headerLength: UInt32? = nil
    var fixChecksum = true

    func bytes() -> [UInt8] {
        var specific: [UInt8] = []
        specific.appendLittleEndian(ivinfo)
        specific += [UInt8](repeating: 0, count: 8)
        return ACPIHeaderWriter.table(
            signature: "IVRS", revision: 2, specific: specific, body: entries.flatMap { $0.bytes() },
            headerLength: headerLength, fixChecksum: fixChecksum)
    }

    func layout() -> [Range<Int>] {
        var offset = 48
        return entries.map { entry in
            let length = entry.bytes().count
            defer { offset += length }
            return offset..<(offset + length)
        }
    }

    /// What the parser should return for each IVMD, paired with where it ends.
    func expectedIVMDs() -> [(ivmd: IVRSTable.IVMD, end: Int)] {
        zip(entries, layout()).compactMap { entry, place in
            guard case .ivmd(let ivmd) = entry else { return nil }
            let parsed = IVRSTable.IVMD(
                type: ivmd.type, flags: ivmd.flags, deviceID: ivmd.deviceID, auxData: ivmd.auxData,
                segment: ivmd.segment, start: ivmd.start, length: ivmd.length, offset: place.lowerBound)
            return (parsed, place.upperBound)
        }
    }

    /// Three IOMMU blocks of each header size, then one IVMD of each type.
    static func sample() -> IVRSBuilder {
        IVRSBuilder(entries: [
            .ivhd(IVHD(type: 0x10)),
            .ivhd(IVHD(type: 0x11)),
            .ivhd(IVHD(type: 0x40, deviceEntries: [0x02, 0x08, 0x00, 0x00, 0x03, 0x10, 0x00, 0x00])),
            // Unity-mapped (read and write) for every device.
            .ivmd(IVMD(type: 0x20, flags: 0x07, start: 0x9d00_0000, length: 0x10_0000)),
            // An exclusion range for device 00:14.0.
            .ivmd(IVMD(type: 0x21, flags: 0x08, deviceID: 0x00a0, start: 0xcd00_0000, length: 0x1000)),
            // Unity-mapped for bus 1 of segment 1.
            .ivmd(
                IVMD(
                    type: 0x22, flags: 0x07, deviceID: 0x0100, auxData: 0x01ff, segment: 1,
                    start: 0x8_0000_0000, length: 0x20_0000)),
        ])
    }
}

extension SplitMix64 {

    /// `table` with up to `maximumEdits` random byte changes and, sometimes, cut short or extended.
    mutating func mutate(_ table: [UInt8], maximumEdits: Int) -> [UInt8] {
        var bytes = table
        for _ in 0..<Int.random(in: 1...maximumEdits, using: &self) where !bytes.isEmpty {
            let at = Int.random(in: 0..<bytes.count, using: &self)
            switch Int.random(in: 0..<4, using: &self) {
            case 0: bytes[at] = UInt8.random(in: 0...255, using: &self)
            case 1: bytes[at] ^= UInt8(1) << UInt8.random(in: 0..<8, using: &self)
            case 2: bytes[at] = [0x00, 0x01, 0x05, 0x06, 0x18, 0x20, 0x7f, 0x80, 0xff].randomElement(using: &self)!
            default: bytes[at] = 0
            }
        }
        switch Int.random(in: 0..<8, using: &self) {
        case 0: bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &self)))
        case 1: bytes += self.bytes(count: Int.random(in: 1...64, using: &self))
        default: break
        }
        return bytes
    }
}
