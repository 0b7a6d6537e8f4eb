// The payload structs are layouts only: decoding reads exactly `size` bytes (and fails if there
// are fewer), encoding appends exactly `size` bytes. Which values are acceptable is decided in
// one place, `RequestDecoder`, so that the structs serve the client and the server alike.

/// VFIO_USER_DMA_MAP's request (vfio-user.rst, "VFIO_USER_DMA_MAP"). EXPLAIN carries the same
/// struct, since it asks "what would this map do?".
public struct DMAMapPayload: Hashable, Sendable {
    public static let size = 32
    /// The spec's flag bits. The policy engine owns their meaning (and VFIO's order of checks),
    /// so the wire layer passes flags through without judging them.
    public static let readFlag: UInt32 = 1 << 0
    public static let writeFlag: UInt32 = 1 << 1

    /// The size of this struct: DMA_MAP has no reply payload, so unlike other commands argsz
    /// is not a reply limit.
    public var argsz: UInt32
    public var flags: UInt32
    /// The offset into the fd that came with the message, or 0 without one.
    public var offset: UInt64
    /// The IOVA.
    public var address: UInt64
    public var size: UInt64

    public init(argsz: UInt32 = UInt32(Self.size), flags: UInt32, offset: UInt64, address: UInt64, size: UInt64) {
        self.argsz = argsz
        self.flags = flags
        self.offset = offset
        self.address = address
        self.size = size
    }

    public init?(decoding bytes: some Collection<UInt8>) {
        var reader = LittleEndianReader(bytes.makeIterator())
        guard let argsz = reader.read(UInt32.self),
            let flags = reader.read(UInt32.self),
            let offset = reader.read(UInt64.self),
            let address = reader.read(UInt64.self),
            let size = reader.read(UInt64.self)
        else { return nil }
        self.init(argsz: argsz, flags: flags, offset: offset, address: address, size: size)
    }

    public func encode(into buffer: inout [UInt8]) {
        buffer.appendLittleEndian(argsz)
        buffer.appendLittleEndian(flags)
        buffer.appendLittleEndian(offset)
        buffer.appendLittleEndian(address)
        buffer.appendLittleEndian(size)
    }
}

/// VFIO_USER_DMA_UNMAP's request, and its reply, which echoes the request
/// (vfio-user.rst, "VFIO_USER_DMA_UNMAP").
public struct DMAUnmapPayload: Hashable, Sendable {
    public static let size = 24
    /// VFIO type1's UNMAP_ALL, which QEMU sends with address and size 0 to drop everything.
    /// Checked by the policy engine, not here.
    public static let unmapAllFlag: UInt32 = 1 << 1

    /// The largest reply payload the client accepts.
    public var argsz: UInt32
    public var flags: UInt32
    public var address: UInt64
    public var size: UInt64

    public init(argsz: UInt32 = UInt32(Self.size), flags: UInt32, address: UInt64, size: UInt64) {
        self.argsz = argsz
        self.flags = flags
        self.address = address
        self.size = size
    }

    public init?(decoding bytes: some Collection<UInt8>) {
        var reader = LittleEndianReader(bytes.makeIterator())
        guard let argsz = reader.read(UInt32.self),
            let flags = reader.read(UInt32.self),
            let address = reader.read(UInt64.self),
            let size = reader.read(UInt64.self)
        else { return nil }
        self.init(argsz: argsz, flags: flags, address: address, size: size)
    }

    public func encode(into buffer: inout [UInt8]) {
        buffer.appendLittleEndian(argsz)
        buffer.appendLittleEndian(flags)
        buffer.appendLittleEndian(address)
        buffer.appendLittleEndian(size)
    }
}

/// VFIO_USER_DEVICE_GET_INFO's request and reply (vfio-user.rst, "VFIO_USER_DEVICE_GET_INFO").
/// In the request argsz is the largest reply the client accepts and every other field is zero.
public struct DeviceInfoPayload: Hashable, Sendable {
    public static let size = 16
    /// Reply flag bits: the device supports DEVICE_RESET; the device is PCI.
    public static let resetFlag: UInt32 = 1 << 0
    public static let pciFlag: UInt32 = 1 << 1

    public var argsz: UInt32
    public var flags: UInt32
    public var numRegions: UInt32
    public var numIRQs: UInt32

    public init(argsz: UInt32 = UInt32(Self.size), flags: UInt32 = 0, numRegions: UInt32 = 0, numIRQs: UInt32 = 0) {
        self.argsz = argsz
        self.flags = flags
        self.numRegions = numRegions
        self.numIRQs = numIRQs
    }

    public init?(decoding bytes: some Collection<UInt8>) {
        var reader = LittleEndianReader(bytes.makeIterator())
        guard let argsz = reader.read(UInt32.self),
            let flags = reader.read(UInt32.self),
            let numRegions = reader.read(UInt32.self),
            let numIRQs = reader.read(UInt32.self)
        else { return nil }
        self.init(argsz: argsz, flags: flags, numRegions: numRegions, numIRQs: numIRQs)
    }

    public func encode(into buffer: inout [UInt8]) {
        buffer.appendLittleEndian(argsz)
        buffer.appendLittleEndian(flags)
        buffer.appendLittleEndian(numRegions)
        buffer.appendLittleEndian(numIRQs)
    }
}

/// x-iommu-policyd ATTACH_GROUP: the IOMMU group to attach to the session. `flags` and `pad`
/// are reserved and must be zero, so that they can be given a meaning later without an old
/// daemon silently ignoring it (the iommufd rule for reserved fields).
public struct AttachGroupPayload: Hashable, Sendable {
    public static let size = 16

    public var argsz: UInt32
    public var flags: UInt32
    public var group: UInt32
    public var pad: UInt32

    public init(argsz: UInt32 = UInt32(Self.size), flags: UInt32 = 0, group: UInt32, pad: UInt32 = 0) {
        self.argsz = argsz
        self.flags = flags
        self.group = group
        self.pad = pad
    }

    public init?(decoding bytes: some Collection<UInt8>) {
        var reader = LittleEndianReader(bytes.makeIterator())
        guard let argsz = reader.read(UInt32.self),
            let flags = reader.read(UInt32.self),
            let group = reader.read(UInt32.self),
            let pad = reader.read(UInt32.self)
        else { return nil }
        self.init(argsz: argsz, flags: flags, group: group, pad: pad)
    }

    public func encode(into buffer: inout [UInt8]) {
        buffer.appendLittleEndian(argsz)
        buffer.appendLittleEndian(flags)
        buffer.appendLittleEndian(group)
        buffer.appendLittleEndian(pad)
    }
}

/// x-iommu-policyd QUERY_RANGES: asks for the ranges the session may map. `flags` is reserved
/// and must be zero.
public struct QueryRangesPayload: Hashable, Sendable {
    public static let size = 8

    public var argsz: UInt32
    public var flags: UInt32

    public init(argsz: UInt32 = UInt32(Self.size), flags: UInt32 = 0) {
        self.argsz = argsz
        self.flags = flags
    }

    public init?(decoding bytes: some Collection<UInt8>) {
        var reader = LittleEndianReader(bytes.makeIterator())
        guard let argsz = reader.read(UInt32.self),
            let flags = reader.read(UInt32.self)
        else { return nil }
        self.init(argsz: argsz, flags: flags)
    }

    public func encode(into buffer: inout [UInt8]) {
        buffer.appendLittleEndian(argsz)
        buffer.appendLittleEndian(flags)
    }
}

/// DEVICE_FD (x-iommu-policyd): `u32 argsz (32), u32 flags (0), u32 group, u32 pad (0),
/// char device[16]`, the device's PCI address (`0000:00:03.0`), NUL-padded. The reply has no
/// payload and carries the device's fd.
public struct DeviceFDPayload: Hashable, Sendable {
    public static let size = 32
    public static let deviceFieldSize = 16

    public var argsz: UInt32
    public var flags: UInt32
    public var group: UInt32
    public var pad: UInt32
    /// The 16 bytes of the device field as sent.
    public var deviceField: [UInt8]

    public init(argsz: UInt32 = UInt32(Self.size), flags: UInt32 = 0, group: UInt32, pad: UInt32 = 0, device: String) {
        self.argsz = argsz
        self.flags = flags
        self.group = group
        self.pad = pad
        let bytes = Array(device.utf8.prefix(Self.deviceFieldSize))
        deviceField = bytes + [UInt8](repeating: 0, count: Self.deviceFieldSize - bytes.count)
    }

    public init?(decoding bytes: some Collection<UInt8>) {
        var reader = LittleEndianReader(bytes.makeIterator())
        guard let argsz = reader.read(UInt32.self),
            let flags = reader.read(UInt32.self),
            let group = reader.read(UInt32.self),
            let pad = reader.read(UInt32.self)
        else { return nil }
        let field = Array(bytes.dropFirst(16).prefix(Self.deviceFieldSize))
        guard field.count == Self.deviceFieldSize else { return nil }
        self.argsz = argsz
        self.flags = flags
        self.group = group
        self.pad = pad
        self.deviceField = field
    }

    /// The device name: the bytes before the first NUL, when they are printable ASCII and a
    /// NUL follows them; nil otherwise.
    public var device: String? {
        guard let end = deviceField.firstIndex(of: 0), end > 0 else { return nil }
        let name = deviceField[..<end]
        guard name.allSatisfy({ $0 > 0x20 && $0 < 0x7f }), deviceField[end...].allSatisfy({ $0 == 0 }) else {
            return nil
        }
        return String(decoding: name, as: UTF8.self)
    }

    public func encode(into buffer: inout [UInt8]) {
        buffer.appendLittleEndian(argsz)
        buffer.appendLittleEndian(flags)
        buffer.appendLittleEndian(group)
        buffer.appendLittleEndian(pad)
        buffer += deviceField
    }
}

/// VFIO_USER_VERSION's request and reply (vfio-user.rst, "VFIO_USER_VERSION"): u16 major,
/// u16 minor, then optional version data, a NUL-terminated UTF-8 JSON object. The JSON is kept
/// as bytes: the daemon parses it with a real JSON parser, and this module stays free of one.
public struct VersionPayload: Hashable, Sendable {
    /// major and minor; the version data after them is optional.
    public static let minimumSize = 4

    public var major: UInt16
    public var minor: UInt16
    /// The JSON text without its terminating NUL; empty when the message had no version data.
    /// It must not contain a NUL, since the receiver takes the first NUL as the end.
    public var json: [UInt8]

    public init(major: UInt16, minor: UInt16, json: [UInt8]) {
        self.major = major
        self.minor = minor
        self.json = json
    }

    /// Nil when there are fewer than 4 bytes, or when version data is present but is not
    /// exactly one NUL-terminated string (see `RequestDecoder` for the individual reasons).
    public init?(decoding bytes: some Collection<UInt8>) {
        guard case .success(let payload) = Self.parse(bytes) else { return nil }
        self = payload
    }

    /// Appends major, minor and, when `json` is not empty, the JSON and its NUL. Empty JSON is
    /// sent as no version data at all rather than a lone NUL: the spec makes the data optional,
    /// and an empty string is not JSON, which a strict peer would refuse.
    public func encode(into buffer: inout [UInt8]) {
        buffer.appendLittleEndian(major)
        buffer.appendLittleEndian(minor)
        if !json.isEmpty {
            buffer.append(contentsOf: json)
            buffer.append(0)
        }
    }

    enum Problem: Error, Equatable {
        case tooShort(count: Int)
        case notTerminated
        /// The offset of the first NUL, counted from the start of the payload.
        case embeddedNUL(offset: Int)
    }

    static func parse(_ bytes: some Collection<UInt8>) -> Result<VersionPayload, Problem> {
        var reader = LittleEndianReader(bytes.makeIterator())
        guard let major = reader.read(UInt16.self), let minor = reader.read(UInt16.self) else {
            return .failure(.tooShort(count: bytes.count))
        }
        var data = Array(bytes.dropFirst(minimumSize))
        guard let last = data.last else { return .success(VersionPayload(major: major, minor: minor, json: [])) }
        guard last == 0 else { return .failure(.notTerminated) }
        data.removeLast()
        if let nul = data.firstIndex(of: 0) { return .failure(.embeddedNUL(offset: minimumSize + nul)) }
        return .success(VersionPayload(major: major, minor: minor, json: data))
    }
}
