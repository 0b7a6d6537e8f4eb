/// A command's `arguments` object, with typed accessors whose errors name the argument in
/// QEMU's words ("Parameter 'size' is missing", "Invalid parameter type for 'size', expected:
/// integer") followed by what was found, so the client sees which rule fired.
///
/// Integers are exact. A JSON integer is accepted in the whole range of the target type,
/// UInt64.max included (Foundation hands those over exactly; see FoundationBridge.swift). A
/// JSON number written with a fraction or an exponent is not an integer, even `1.0` or `1e3`:
/// QEMU's QMP refuses those too, and a Double past 2^53 may already have lost digits. A string
/// is accepted as well, in decimal or with a `0x` prefix in hex, with underscores between
/// digits (`"0xfee0_0000"`); a decimal string may not start with a zero, which C's strtoull
/// (and so QEMU's command line) would read as octal. A signed target also takes a leading `-`.
/// `null` is a type error, not an absent argument.
public struct QMPArguments: Hashable, Sendable {
    /// The members, in the order parsed (sorted by key) or given.
    public var object: QMPObject

    public init(_ object: QMPObject = [:]) {
        self.object = object
    }

    /// The raw value of an argument.
    public subscript(name: String) -> QMPValue? {
        get { object[name] }
        set { object[name] = newValue }
    }

    /// The argument names present.
    public var names: [String] { object.keys }

    /// Refuses an argument whose name is not in `allowed`: "Parameter 'x' is unexpected".
    public func rejectUnknown(allowing allowed: some Sequence<String>) throws(QMPError) {
        let allowed = Set(allowed)
        for name in object.keys where !allowed.contains(name) {
            throw .generic("Parameter '\(name)' is unexpected")
        }
    }

    // MARK: Strings and booleans

    /// A string argument.
    public func string(_ name: String) throws(QMPError) -> String {
        try Self.string(try required(name), name)
    }

    /// A string argument, nil when absent.
    public func optionalString(_ name: String) throws(QMPError) -> String? {
        guard let value = object[name] else { return nil }
        return try Self.string(value, name)
    }

    /// A boolean argument; only JSON true and false, never 0 or 1.
    public func bool(_ name: String) throws(QMPError) -> Bool {
        try Self.bool(try required(name), name)
    }

    /// A boolean argument, nil when absent.
    public func optionalBool(_ name: String) throws(QMPError) -> Bool? {
        guard let value = object[name] else { return nil }
        return try Self.bool(value, name)
    }

    // MARK: Integers

    /// An unsigned 64-bit argument: a JSON integer in 0...UInt64.max, or a decimal or 0x-hex
    /// string.
    public func uint64(_ name: String) throws(QMPError) -> UInt64 {
        try Self.unsigned(try required(name), name, UInt64.self, typeName: "uint64")
    }

    /// An unsigned 64-bit argument, nil when absent.
    public func optionalUInt64(_ name: String) throws(QMPError) -> UInt64? {
        guard let value = object[name] else { return nil }
        return try Self.unsigned(value, name, UInt64.self, typeName: "uint64")
    }

    /// An unsigned 32-bit argument, accepted in the same forms as `uint64`.
    public func uint32(_ name: String) throws(QMPError) -> UInt32 {
        try Self.unsigned(try required(name), name, UInt32.self, typeName: "uint32")
    }

    /// An unsigned 32-bit argument, nil when absent.
    public func optionalUInt32(_ name: String) throws(QMPError) -> UInt32? {
        guard let value = object[name] else { return nil }
        return try Self.unsigned(value, name, UInt32.self, typeName: "uint32")
    }

    /// A signed argument: a JSON integer in Int's range, or a string as for `uint64` with an
    /// optional leading `-`.
    public func int(_ name: String) throws(QMPError) -> Int {
        try Self.signed(try required(name), name)
    }

    /// A signed argument, nil when absent.
    public func optionalInt(_ name: String) throws(QMPError) -> Int? {
        guard let value = object[name] else { return nil }
        return try Self.signed(value, name)
    }

    /// An array of unsigned 32-bit integers; an element's error names it as `name[index]`.
    public func uint32Array(_ name: String) throws(QMPError) -> [UInt32] {
        try Self.uint32Array(try required(name), name)
    }

    /// An array of unsigned 32-bit integers, nil when absent.
    public func optionalUInt32Array(_ name: String) throws(QMPError) -> [UInt32]? {
        guard let value = object[name] else { return nil }
        return try Self.uint32Array(value, name)
    }

    // MARK: Conversions

    private func required(_ name: String) throws(QMPError) -> QMPValue {
        guard let value = object[name] else {
            throw .generic("Parameter '\(name)' is missing")
        }
        return value
    }

    private static func typeError(_ name: String, expected: String, got value: QMPValue) -> QMPError {
        .generic("Invalid parameter type for '\(name)', expected: \(expected), got \(summary(value))")
    }

    /// What a value is, short enough for a desc.
    static func summary(_ value: QMPValue) -> String {
        switch value {
        case .array: return "an array"
        case .object: return "an object"
        case .string(let string):
            let shown = string.count > 40 ? String(string.prefix(40)) + "..." : string
            return QMPValue.string(shown).jsonText
        default: return value.jsonText
        }
    }

    private static func string(_ value: QMPValue, _ name: String) throws(QMPError) -> String {
        guard case .string(let string) = value else {
            throw typeError(name, expected: "string", got: value)
        }
        return string
    }

    private static func bool(_ value: QMPValue, _ name: String) throws(QMPError) -> Bool {
        guard case .bool(let bool) = value else {
            throw typeError(name, expected: "boolean", got: value)
        }
        return bool
    }

    private static func uint32Array(_ value: QMPValue, _ name: String) throws(QMPError) -> [UInt32] {
        guard case .array(let elements) = value else {
            throw typeError(name, expected: "array", got: value)
        }
        var result: [UInt32] = []
        result.reserveCapacity(elements.count)
        for (index, element) in elements.enumerated() {
            result.append(try unsigned(element, "\(name)[\(index)]", UInt32.self, typeName: "uint32"))
        }
        return result
    }

    private static func unsigned<T: FixedWidthInteger & UnsignedInteger>(
        _ value: QMPValue, _ name: String, _: T.Type, typeName: String
    ) throws(QMPError) -> T {
        let (negative, magnitude) = try integer(value, name)
        if negative && magnitude != 0 {
            throw .generic("Parameter '\(name)' expects a \(typeName), got negative \(summary(value))")
        }
        guard let result = T(exactly: magnitude) else {
            throw .generic("Parameter '\(name)' is out of range for \(typeName): \(summary(value))")
        }
        return result
    }

    private static func signed(_ value: QMPValue, _ name: String) throws(QMPError) -> Int {
        let (negative, magnitude) = try integer(value, name)
        // -Int.min's magnitude is one more than Int.max: negate in the unsigned domain.
        let result: Int? =
            negative
            ? (magnitude <= UInt64(Int.max) + 1 ? Int(truncatingIfNeeded: 0 &- magnitude) : nil)
            : Int(exactly: magnitude)
        guard let result else {
            throw .generic("Parameter '\(name)' is out of range for int: \(summary(value))")
        }
        return result
    }

    /// Sign and magnitude of an integer argument in any accepted form.
    private static func integer(_ value: QMPValue, _ name: String) throws(QMPError) -> (Bool, UInt64) {
        switch value {
        case .int(let int):
            return (int < 0, int.magnitude)
        case .uint(let uint):
            return (false, uint)
        case .double(let double):
            // Foundation turns an integer literal beyond UInt64 into a Double (as QEMU does);
            // say "out of range" for those rather than "not an integer".
            if double.isFinite && double.rounded() == double && (double >= 0x1p64 || double <= -0x1p63) {
                throw .generic("Parameter '\(name)' is out of range: \(summary(value))")
            }
            throw typeError(name, expected: "integer", got: value)
        case .string(let text):
            switch parseInteger(text) {
            case .success(let parsed):
                return parsed
            case .failure(let reason):
                throw .generic("Parameter '\(name)' expects an integer: \(summary(value)) \(reason.text)")
            }
        default:
            throw typeError(name, expected: "integer", got: value)
        }
    }

    /// Why a string is not an integer; the text completes "'xyz' ...".
    struct IntegerSyntaxError: Error, Hashable {
        var text: String
    }

    /// Parses `-`?, then `0x`/`0X` and hex digits or decimal digits, with underscores between
    /// digits; ASCII only (Character.hexDigitValue would take fullwidth digits); overflow-checked.
    static func parseInteger(_ text: String) -> Result<(Bool, UInt64), IntegerSyntaxError> {
        var digits = Substring(text).unicodeScalars[...]
        let negative = digits.first == "-"
        if negative {
            digits = digits.dropFirst()
        }
        var radix: UInt64 = 10
        if digits.starts(with: "0x".unicodeScalars) || digits.starts(with: "0X".unicodeScalars) {
            radix = 16
            digits = digits.dropFirst(2)
        } else if digits.first == "0", let next = digits.dropFirst().first, next == "_" || ("0"..."9").contains(next) {
            return .failure(IntegerSyntaxError(text: "has a leading zero, which could be read as octal"))
        }
        guard let first = digits.first, let last = digits.last else {
            return .failure(IntegerSyntaxError(text: "has no digits"))
        }
        if first == "_" || last == "_" {
            return .failure(IntegerSyntaxError(text: "has an underscore that does not separate digits"))
        }
        var magnitude: UInt64 = 0
        for scalar in digits where scalar != "_" {
            guard let digit = hexDigitValue(scalar), digit < radix else {
                return .failure(IntegerSyntaxError(text: "has an invalid digit '\(scalar)'"))
            }
            let (shifted, multiplyOverflow) = magnitude.multipliedReportingOverflow(by: radix)
            let (sum, addOverflow) = shifted.addingReportingOverflow(digit)
            if multiplyOverflow || addOverflow {
                return .failure(IntegerSyntaxError(text: "does not fit in 64 bits"))
            }
            magnitude = sum
        }
        return .success((negative, magnitude))
    }

    private static func hexDigitValue(_ scalar: Unicode.Scalar) -> UInt64? {
        switch scalar {
        case "0"..."9": UInt64(scalar.value - ("0" as Unicode.Scalar).value)
        case "a"..."f": UInt64(scalar.value - ("a" as Unicode.Scalar).value + 10)
        case "A"..."F": UInt64(scalar.value - ("A" as Unicode.Scalar).value + 10)
        default: nil
        }
    }
}
