import IOMMUCore

/// The parts of the ACPI IVRS table (AMD IOMMU spec 48882) that bear on reserved IOVA
/// ranges: IVinfo and the IVMD memory definitions. IVHD blocks are stepped over.
///
/// `parse` never traps and never throws. Whatever it cannot use becomes a `Diagnostic`, and
/// everything read in full before a fault is kept.
public struct IVRSTable: Sendable, Hashable {
    /// The u32 at offset 36; nil when the table is too short to hold it.
    public var ivinfo: UInt32?
    /// The virtual address size in bits, IVinfo bits 21:15 (VAsize), when present and non-zero.
    ///
    /// The kernel's drivers/iommu/amd only reads IVinfo bits 0 (EFRSup) and 1 (DMA remap), so the
    /// field position follows the AMD IOMMU spec as AMD's own firmware encodes it
    /// (`IVINFO_VASIZE_MASK 0x003F8000`, beside PAsize in bits 14:8 and GVAsize in bits 7:5).
    public var virtualAddressBits: Int?
    public var ivmds: [IVMD]
    public var diagnostics: [Diagnostic]

    public init(ivinfo: UInt32? = nil, ivmds: [IVMD] = [], diagnostics: [Diagnostic] = []) {
        self.ivinfo = ivinfo
        self.virtualAddressBits = ivinfo.flatMap(Self.virtualAddressBits(ivinfo:))
        self.ivmds = ivmds
        self.diagnostics = diagnostics
    }

    static func virtualAddressBits(ivinfo: UInt32) -> Int? {
        let bits = Int((ivinfo >> 15) & 0x7f)
        return bits == 0 ? nil : bits
    }

    /// An I/O virtualization memory definition: a range that devices need unity-mapped, or that
    /// is excluded from translation.
    public struct IVMD: Sendable, Hashable {
        /// 0x20 all devices, 0x21 one device (`deviceID`), 0x22 the devices `deviceID...auxData`.
        public var type: UInt8
        /// 0x01 unity, 0x02 IR, 0x04 IW, 0x08 exclusion range.
        public var flags: UInt8
        public var deviceID: UInt16
        /// The last device id of the range for type 0x22; reserved otherwise.
        public var auxData: UInt16
        public var segment: UInt16
        public var start: UInt64
        public var length: UInt64
        /// Byte offset of the entry in the table.
        public var offset: Int

        public init(
            type: UInt8,
            flags: UInt8,
            deviceID: UInt16,
            auxData: UInt16,
            segment: UInt16,
            start: UInt64,
            length: UInt64,
            offset: Int
        ) {
            self.type = type
            self.flags = flags
            self.deviceID = deviceID
            self.auxData = auxData
            self.segment = segment
            self.start = start
            self.length = length
            self.offset = offset
        }

        public var isUnity: Bool { flags & 0x01 != 0 }
        public var isExclusion: Bool { flags & 0x08 != 0 }

        /// `[start, start + length - 1]`, or nil when `length` is 0 or the end wraps past 2^64-1.
        public var range: IOVARange? { IOVARange(start: start, size: length) }
    }

    public static func parse(_ bytes: [UInt8], file: String) -> IVRSTable {
        var parser = IVRSParser(file: file)
        return parser.parse(bytes)
    }
}

/// Entry types and their minimum lengths (AMD IOMMU spec 48882, IVHD and IVMD): a length below the
/// minimum means the fixed fields are not all there, so nothing after it can be trusted either.
private enum IVRSEntryKind {
    case ivhd(UInt8)
    case ivmd(UInt8)
    case unknown(UInt8)

    init(_ type: UInt8) {
        switch type {
        case 0x10, 0x11, 0x40: self = .ivhd(type)
        case 0x20, 0x21, 0x22: self = .ivmd(type)
        default: self = .unknown(type)
        }
    }

    var name: String {
        switch self {
        case .ivhd(let type): "IVHD type \(Hex(UInt64(type)))"
        case .ivmd(let type): "IVMD type \(Hex(UInt64(type)))"
        case .unknown(let type): "entry of unknown type \(Hex(UInt64(type)))"
        }
    }

    var minimumLength: Int {
        switch self {
        case .ivhd(0x10): 24
        case .ivhd: 40
        case .ivmd: IVRSParser.ivmdLength
        case .unknown: 4
        }
    }
}

private struct IVRSParser {
    static let ivmdLength = 32

    let file: String
    var diagnostics: [Diagnostic] = []

    init(file: String) { self.file = file }

    mutating func parse(_ bytes: [UInt8]) -> IVRSTable {
        guard let table = ACPITableFrame.open(bytes, signature: "IVRS", file: file, diagnostics: &diagnostics) else {
            return IVRSTable(diagnostics: diagnostics)
        }
        var result = IVRSTable(ivinfo: table.u32(at: 36))

        // Entries follow the 48-byte header back to back, each starting with u8 type, u8 flags,
        // u16 length.
        let entries = ACPITableFrame.structures(
            table, typeWidth: 1, file: file, diagnostics: &diagnostics,
            describe: { type in
                let kind = IVRSEntryKind(UInt8(truncatingIfNeeded: type))
                return (kind.name, kind.minimumLength)
            })
        for entry in entries {
            let (kind, offset, length) = (
                IVRSEntryKind(UInt8(truncatingIfNeeded: entry.type)), entry.offset, entry.length
            )
            switch kind {
            case .ivhd:
                break
            case .ivmd:
                if let ivmd = parseIVMD(entry.bytes, at: offset, length: length) {
                    result.ivmds.append(ivmd)
                }
            case .unknown:
                warning(offset, "skipped \(kind.name) (\(length) bytes)")
            }
        }
        result.diagnostics = diagnostics
        return result
    }

    /// u8 type, u8 flags, u16 length, u16 devid at +4, u16 aux at +6, u16 segment at +8,
    /// u64 start at +16, u64 length at +24.
    private mutating func parseIVMD(_ entry: ByteReader, at offset: Int, length: Int) -> IVRSTable.IVMD? {
        guard let type = entry.u8(at: offset), let flags = entry.u8(at: offset + 1),
            let deviceID = entry.u16(at: offset + 4), let auxData = entry.u16(at: offset + 6),
            let segment = entry.u16(at: offset + 8), let start = entry.u64(at: offset + 16),
            let rangeLength = entry.u64(at: offset + 24)
        else {
            error(offset, "IVMD fixed fields are unreadable")
            return nil
        }
        let ivmd = IVRSTable.IVMD(
            type: type, flags: flags, deviceID: deviceID, auxData: auxData, segment: segment,
            start: start, length: rangeLength, offset: offset)
        let name = "IVMD type \(Hex(UInt64(type))) start \(Hex(start)) length \(Hex(rangeLength))"
        if length > Self.ivmdLength {
            warning(offset, "\(name) is \(length) bytes long, not \(Self.ivmdLength); ignoring the extra bytes")
        }
        if rangeLength == 0 {
            warning(offset, "\(name) is empty, so it reserves nothing")
        } else if ivmd.range == nil {
            error(
                offset,
                "\(name) runs past the top of the 64-bit address space, so it forms no range and cannot be reserved")
        } else if start & 0xfff != 0 || rangeLength & 0xfff != 0 {
            warning(offset, "\(name) is not 4 KiB aligned")
        }
        // The kernel's init_memory_definitions acts only on IVMDs with one of these two flags.
        if !ivmd.isUnity && !ivmd.isExclusion {
            warning(offset, "\(name) has neither the unity nor the exclusion flag, so the kernel ignores it")
        }
        if type == 0x22 && auxData < deviceID {
            warning(
                offset,
                "\(name) has its last device id \(Hex(UInt64(auxData))) below its first \(Hex(UInt64(deviceID)))")
        }
        return ivmd
    }

    private mutating func error(_ offset: Int, _ message: String) {
        diagnostics.append(.atOffset(.error, file: file, offset, message))
    }

    private mutating func warning(_ offset: Int, _ message: String) {
        diagnostics.append(.atOffset(.warning, file: file, offset, message))
    }
}
