import IOMMUCore

/// The parts of the ACPI DMAR table (Intel VT-d spec, chapter 8) that bear on reserved IOVA
/// ranges: the host address width, the remapping units, and the RMRRs with their device scopes.
///
/// `parse` never traps and never throws. Whatever it cannot use becomes a `Diagnostic`, and
/// everything read in full before a fault is kept.
public struct DMARTable: Sendable, Hashable {
    /// Byte 36 plus one; nil when the table is too short to hold it.
    public var hostAddressWidth: Int?
    /// Byte 37 (bit 0 INTR_REMAP, bit 1 X2APIC_OPT_OUT, bit 2 DMA_CTRL_PLATFORM_OPT_IN).
    public var flags: UInt8?
    public var drhds: [DRHD]
    public var rmrrs: [RMRR]
    public var diagnostics: [Diagnostic]

    public init(
        hostAddressWidth: Int? = nil,
        flags: UInt8? = nil,
        drhds: [DRHD] = [],
        rmrrs: [RMRR] = [],
        diagnostics: [Diagnostic] = []
    ) {
        self.hostAddressWidth = hostAddressWidth
        self.flags = flags
        self.drhds = drhds
        self.rmrrs = rmrrs
        self.diagnostics = diagnostics
    }

    /// A DMA remapping hardware unit definition (structure type 0), recorded minimally.
    public struct DRHD: Sendable, Hashable {
        public var flags: UInt8
        public var segment: UInt16
        public var registerBase: UInt64
        public var scopes: [DeviceScope]
        /// Byte offset of the structure in the table.
        public var offset: Int

        public init(flags: UInt8, segment: UInt16, registerBase: UInt64, scopes: [DeviceScope], offset: Int) {
            self.flags = flags
            self.segment = segment
            self.registerBase = registerBase
            self.scopes = scopes
            self.offset = offset
        }

        /// Flags bit 0, INCLUDE_PCI_ALL: the unit covers every device in its segment not claimed
        /// by another unit, and its scopes list only IOAPICs and HPETs.
        public var includesAllPCIDevices: Bool { flags & 0x01 != 0 }
    }

    /// A reserved memory region reporting structure (type 1): memory the listed devices may DMA
    /// to at any time, so it must stay identity-mapped for them.
    public struct RMRR: Sendable, Hashable {
        /// 0-based ordinal among the table's RMRRs.
        public var index: Int
        public var segment: UInt16
        public var base: UInt64
        /// Inclusive.
        public var limit: UInt64
        public var scopes: [DeviceScope]
        /// Byte offset of the structure in the table.
        public var offset: Int

        public init(index: Int, segment: UInt16, base: UInt64, limit: UInt64, scopes: [DeviceScope], offset: Int) {
            self.index = index
            self.segment = segment
            self.base = base
            self.limit = limit
            self.scopes = scopes
            self.offset = offset
        }

        /// `[base, limit]`, or nil when `limit < base` and no range can be formed.
        public var range: IOVARange? { IOVARange(first: base, last: limit) }
    }

    /// A device scope: a start bus and a path of (device, function) hops through bridges.
    public struct DeviceScope: Sendable, Hashable {
        /// 1 PCI endpoint, 2 PCI sub-hierarchy (bridge), 3 IOAPIC, 4 HPET, 5 ACPI namespace device.
        public var type: UInt8
        public var enumerationID: UInt8
        public var startBus: UInt8
        public var path: [PathElement]

        public init(type: UInt8, enumerationID: UInt8, startBus: UInt8, path: [PathElement]) {
            self.type = type
            self.enumerationID = enumerationID
            self.startBus = startBus
            self.path = path
        }
    }

    public struct PathElement: Sendable, Hashable {
        public var device: UInt8
        public var function: UInt8

        public init(device: UInt8, function: UInt8) {
            self.device = device
            self.function = function
        }
    }

    public static func parse(_ bytes: [UInt8], file: String) -> DMARTable {
        var parser = DMARParser(file: file)
        return parser.parse(bytes)
    }
}

/// Structure types and the minimum length of each (VT-d spec chapter 8): a length below the
/// minimum means the fixed fields are not all there, so nothing after it can be trusted either.
private enum DMARStructureKind {
    case drhd, rmrr, atsr, rhsa, andd, satc
    case unknown(UInt16)

    init(_ type: UInt16) {
        switch type {
        case 0: self = .drhd
        case 1: self = .rmrr
        case 2: self = .atsr
        case 3: self = .rhsa
        case 4: self = .andd
        case 5: self = .satc
        default: self = .unknown(type)
        }
    }

    var name: String {
        switch self {
        case .drhd: "DRHD"
        case .rmrr: "RMRR"
        case .atsr: "ATSR"
        case .rhsa: "RHSA"
        case .andd: "ANDD"
        case .satc: "SATC"
        case .unknown(let type): "structure of unknown type \(type)"
        }
    }

    var minimumLength: Int {
        switch self {
        case .drhd: 16
        case .rmrr: 24
        case .atsr: 8
        case .rhsa: 20
        case .andd: 8
        case .satc: 8
        case .unknown: 4
        }
    }
}

private struct DMARParser {
    let file: String
    var diagnostics: [Diagnostic] = []

    init(file: String) { self.file = file }

    mutating func parse(_ bytes: [UInt8]) -> DMARTable {
        guard let table = ACPITableFrame.open(bytes, signature: "DMAR", file: file, diagnostics: &diagnostics) else {
            return DMARTable(diagnostics: diagnostics)
        }
        var result = DMARTable()
        result.hostAddressWidth = table.u8(at: 36).map { Int($0) + 1 }
        result.flags = table.u8(at: 37)

        // VT-d 8.1: remapping structures follow the 48-byte header back to back, each starting
        // with u16 type, u16 length.
        let structures = ACPITableFrame.structures(
            table, typeWidth: 2, file: file, diagnostics: &diagnostics,
            describe: { type in
                let kind = DMARStructureKind(type)
                return (kind.name, kind.minimumLength)
            })
        for entry in structures {
            let (kind, offset, length, structure) = (
                DMARStructureKind(entry.type), entry.offset, entry.length, entry.bytes
            )
            switch kind {
            case .drhd:
                if let drhd = parseDRHD(structure, at: offset) { result.drhds.append(drhd) }
            case .rmrr:
                if let rmrr = parseRMRR(structure, at: offset, index: result.rmrrs.count) {
                    result.rmrrs.append(rmrr)
                }
            case .atsr, .rhsa, .andd, .satc:
                break
            case .unknown:
                warning(offset, "skipped \(kind.name) (\(length) bytes)")
            }
        }
        result.diagnostics = diagnostics
        return result
    }

    /// VT-d 8.3: u8 flags at +4, u16 segment at +6, u64 register base at +8, scopes from +16.
    private mutating func parseDRHD(_ structure: ByteReader, at offset: Int) -> DMARTable.DRHD? {
        guard let flags = structure.u8(at: offset + 4),
            let segment = structure.u16(at: offset + 6),
            let registerBase = structure.u64(at: offset + 8)
        else {
            error(offset, "DRHD fixed fields are unreadable")
            return nil
        }
        let scopes = parseScopes(structure, from: offset + 16, owner: "DRHD", allowedTypes: 1...5)
        return DMARTable.DRHD(
            flags: flags, segment: segment, registerBase: registerBase, scopes: scopes, offset: offset)
    }

    /// VT-d 8.4: u16 reserved at +4, u16 segment at +6, u64 base at +8, u64 inclusive limit at
    /// +16, device scopes from +24 to the end of the structure.
    private mutating func parseRMRR(_ structure: ByteReader, at offset: Int, index: Int) -> DMARTable.RMRR? {
        guard let segment = structure.u16(at: offset + 6),
            let base = structure.u64(at: offset + 8),
            let limit = structure.u64(at: offset + 16)
        else {
            error(offset, "RMRR fixed fields are unreadable")
            return nil
        }
        let name = "RMRR #\(index) [\(Hex(base))-\(Hex(limit))]"
        if limit < base {
            error(
                offset,
                "Your BIOS is broken; bad \(name): its limit is below its base, so it forms no range "
                    + "and cannot be reserved")
        } else {
            // The kernel's dmar_parse_one_rmrr warns about these and still uses the RMRR.
            var faults: [String] = []
            if base & 0xfff != 0 { faults.append("base is not 4 KiB aligned") }
            // For a limit of 2^64-1 the end wraps to 0, which is aligned.
            if (limit &+ 1) & 0xfff != 0 { faults.append("limit + 1 is not 4 KiB aligned") }
            if limit == base { faults.append("limit equals base") }
            if !faults.isEmpty {
                warning(
                    offset,
                    "Your BIOS is broken; bad \(name): " + faults.joined(separator: ", ")
                        + " (the kernel warns and still uses it)")
            }
        }
        // RMRRs may only name PCI endpoints and bridges (VT-d 8.4).
        let scopes = parseScopes(structure, from: offset + 24, owner: name, allowedTypes: 1...2)
        if structure.end - offset <= 24 {
            warning(offset, "\(name) has no device scope, so no device is tied to it")
        }
        return DMARTable.RMRR(index: index, segment: segment, base: base, limit: limit, scopes: scopes, offset: offset)
    }

    /// VT-d 8.3.1: u8 type, u8 length, u16 reserved, u8 enumeration id, u8 start bus, then
    /// (device, function) pairs up to `length`. A bad scope length ends the owner's scope list,
    /// as the next scope's position depends on it; the owner itself is kept.
    private mutating func parseScopes(
        _ structure: ByteReader,
        from start: Int,
        owner: String,
        allowedTypes: ClosedRange<UInt8>
    ) -> [DMARTable.DeviceScope] {
        var scopes: [DMARTable.DeviceScope] = []
        var offset = start
        while offset < structure.end {
            let left = structure.end - offset
            guard left >= 6, let type = structure.u8(at: offset), let rawLength = structure.u8(at: offset + 1),
                let enumerationID = structure.u8(at: offset + 4), let startBus = structure.u8(at: offset + 5)
            else {
                error(
                    offset,
                    "device scope cut short: \(left) bytes left in \(owner), a scope needs 6; "
                        + "ignoring the rest of its scopes")
                break
            }
            let length = Int(rawLength)
            if length < 6 {
                error(
                    offset,
                    "device scope length \(length) in \(owner) is below the minimum of 6; "
                        + "ignoring the rest of its scopes")
                break
            }
            guard structure.contains(offset: offset, count: length) else {
                error(
                    offset,
                    "device scope of \(length) bytes runs past the end of \(owner) at "
                        + "\(Hex(UInt64(structure.end))); ignoring the rest of its scopes")
                break
            }
            if !allowedTypes.contains(type) {
                warning(offset, "device scope type \(type) is not valid in \(owner)")
            }
            var path: [DMARTable.PathElement] = []
            var hop = offset + 6
            while hop + 2 <= offset + length, let device = structure.u8(at: hop),
                let function = structure.u8(at: hop + 1)
            {
                path.append(DMARTable.PathElement(device: device, function: function))
                hop += 2
            }
            if (length - 6) % 2 != 0 {
                warning(offset, "device scope in \(owner) has an odd path length; ignoring its last byte")
            }
            if path.isEmpty {
                warning(offset, "device scope in \(owner) has an empty path, so it names no device")
            }
            scopes.append(
                DMARTable.DeviceScope(type: type, enumerationID: enumerationID, startBus: startBus, path: path))
            offset += length
        }
        return scopes
    }

    private mutating func error(_ offset: Int, _ message: String) {
        diagnostics.append(.atOffset(.error, file: file, offset, message))
    }

    private mutating func warning(_ offset: Int, _ message: String) {
        diagnostics.append(.atOffset(.warning, file: file, offset, message))
    }
}
