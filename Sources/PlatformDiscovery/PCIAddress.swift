/// A PCI function's address, `segment:bus:device.function`.
public struct PCIAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var segment: UInt16
    public var bus: UInt8
    public var device: UInt8
    public var function: UInt8

    public init(segment: UInt16, bus: UInt8, device: UInt8, function: UInt8) {
        self.segment = segment
        self.bus = bus
        self.device = device & 0x1f
        self.function = function & 0x7
    }

    /// An AMD IVRS device id: bus in bits 15:8, device in 7:3, function in 2:0.
    public init(segment: UInt16, deviceID: UInt16) {
        self.init(
            segment: segment, bus: UInt8(deviceID >> 8), device: UInt8((deviceID >> 3) & 0x1f),
            function: UInt8(deviceID & 0x7))
    }

    /// Parses `0000:03:00.1` as sysfs names devices.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ":")
        guard parts.count == 3, let segment = UInt16(parts[0], radix: 16), parts[0].count == 4,
            let bus = UInt8(parts[1], radix: 16), parts[1].count == 2
        else { return nil }
        let slot = parts[2].split(separator: ".")
        guard slot.count == 2, let device = UInt8(slot[0], radix: 16), device < 32, slot[0].count == 2,
            let function = UInt8(slot[1], radix: 16), function < 8, slot[1].count == 1
        else { return nil }
        self.init(segment: segment, bus: bus, device: device, function: function)
    }

    public var deviceID: UInt16 { UInt16(bus) << 8 | UInt16(device) << 3 | UInt16(function) }

    public var description: String {
        "\(hex(segment, 4)):\(short)"
    }

    /// `03:00.1`, as firmware tables name a device within its segment.
    public var short: String { "\(hex(bus, 2)):\(hex(device, 2)).\(String(function, radix: 16))" }

    public static func < (lhs: PCIAddress, rhs: PCIAddress) -> Bool {
        (lhs.segment, lhs.bus, lhs.device, lhs.function) < (rhs.segment, rhs.bus, rhs.device, rhs.function)
    }
}

func hex(_ value: some BinaryInteger, _ width: Int) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: max(0, width - digits.count)) + digits
}
