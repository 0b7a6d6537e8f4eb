/// Parses the numbers people and sysfs write: `0x…` hex or decimal, with `_` separators.
public enum NumberParser {
    public static func uint64(_ text: some StringProtocol) -> UInt64? {
        let trimmed = String(text.filter { $0 != "_" })
        guard !trimmed.isEmpty else { return nil }
        if trimmed.hasPrefix("0x") || trimmed.hasPrefix("0X") {
            let digits = trimmed.dropFirst(2)
            return digits.isEmpty ? nil : UInt64(digits, radix: 16)
        }
        return UInt64(trimmed, radix: 10)
    }

    /// Bare hex as sysfs and /proc print it, with or without `0x`.
    public static func hex(_ text: some StringProtocol) -> UInt64? {
        let text = Substring(text)
        let digits = text.hasPrefix("0x") || text.hasPrefix("0X") ? text.dropFirst(2) : text
        return digits.isEmpty ? nil : UInt64(digits, radix: 16)
    }

    /// A byte count with an optional binary suffix: `4096`, `0x1000`, `64G`, `512M`, `2T`, `8K`.
    public static func byteSize(_ text: some StringProtocol) -> UInt64? {
        guard let unit = text.last, let shift = ["K": 10, "M": 20, "G": 30, "T": 40, "P": 50][unit.uppercased()] else {
            return uint64(text)
        }
        guard let base = uint64(text.dropLast()) else { return nil }
        let (value, overflow) = base.multipliedReportingOverflow(by: UInt64(1) << UInt64(shift))
        return overflow ? nil : value
    }
}
