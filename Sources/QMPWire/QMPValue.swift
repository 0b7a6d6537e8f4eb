/// A JSON value as QMP sends it. It renders itself, rather than going through
/// `JSONSerialization`, so that object members keep the order they were given (replies read
/// the same every time, and tests can compare bytes) and 64-bit integers print exactly.
///
/// Integers have two cases so that the whole of `UInt64` and `Int64` is representable; values
/// converted from parsed JSON use `.int` whenever the number fits in `Int64` and `.uint` only
/// above `Int64.max`. The accessors on `QMPArguments` accept either.
public enum QMPValue: Hashable, Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    case uint(UInt64)
    /// Rendered with Swift's shortest round-tripping form; a NaN or an infinity, which JSON
    /// cannot spell, renders as `null`.
    case double(Double)
    case string(String)
    case array([QMPValue])
    case object(QMPObject)

    /// The value as compact JSON text.
    public var jsonText: String { String(decoding: jsonBytes, as: UTF8.self) }

    /// The value as compact JSON, UTF-8.
    public var jsonBytes: [UInt8] {
        var bytes: [UInt8] = []
        render(into: &bytes)
        return bytes
    }

    /// Appends the value as compact JSON (no spaces), UTF-8.
    public func render(into bytes: inout [UInt8]) {
        switch self {
        case .null:
            bytes += "null".utf8
        case .bool(let value):
            bytes += (value ? "true" : "false").utf8
        case .int(let value):
            bytes += String(value).utf8
        case .uint(let value):
            bytes += String(value).utf8
        case .double(let value):
            // Swift's description of a finite Double ("1.0", "1e-05", "1e+300") is valid JSON.
            bytes += (value.isFinite ? value.description : "null").utf8
        case .string(let value):
            Self.renderString(value, into: &bytes)
        case .array(let elements):
            bytes.append(ASCII.openBracket)
            for (index, element) in elements.enumerated() {
                if index > 0 {
                    bytes.append(UInt8(ascii: ","))
                }
                element.render(into: &bytes)
            }
            bytes.append(ASCII.closeBracket)
        case .object(let object):
            bytes.append(ASCII.openBrace)
            for (index, member) in object.members.enumerated() {
                if index > 0 {
                    bytes.append(UInt8(ascii: ","))
                }
                Self.renderString(member.key, into: &bytes)
                bytes.append(UInt8(ascii: ":"))
                member.value.render(into: &bytes)
            }
            bytes.append(ASCII.closeBrace)
        }
    }

    /// RFC 8259, section 7: the quote, the backslash and U+0000...U+001F must be escaped.
    /// Everything else is written as UTF-8; a Swift `String` cannot hold a lone surrogate, so
    /// the output is always valid UTF-8.
    static func renderString(_ string: String, into bytes: inout [UInt8]) {
        let hexDigits = Array("0123456789abcdef".utf8)
        bytes.append(ASCII.quote)
        for byte in string.utf8 {
            switch byte {
            case ASCII.quote:
                bytes += #"\""#.utf8
            case ASCII.backslash:
                bytes += #"\\"#.utf8
            case ASCII.lineFeed:
                bytes += #"\n"#.utf8
            case ASCII.carriageReturn:
                bytes += #"\r"#.utf8
            case ASCII.tab:
                bytes += #"\t"#.utf8
            case 0x08:
                bytes += #"\b"#.utf8
            case 0x0C:
                bytes += #"\f"#.utf8
            case 0x00..<0x20:
                bytes += #"\u00"#.utf8
                bytes.append(hexDigits[Int(byte >> 4)])
                bytes.append(hexDigits[Int(byte & 0x0F)])
            default:
                bytes.append(byte)
            }
        }
        bytes.append(ASCII.quote)
    }
}

/// A JSON object whose members keep their order. Setting an existing key replaces its value
/// in place, so keys stay unique.
public struct QMPObject: Hashable, Sendable {
    /// One key and its value.
    public struct Member: Hashable, Sendable {
        public var key: String
        public var value: QMPValue

        public init(key: String, value: QMPValue) {
            self.key = key
            self.value = value
        }
    }

    /// The members in rendering order.
    public private(set) var members: [Member]

    /// An empty object.
    public init() {
        members = []
    }

    /// The members in the given order; a repeated key keeps its first position and last value.
    public init(_ pairs: some Sequence<(String, QMPValue)>) {
        members = []
        for (key, value) in pairs {
            self[key] = value
        }
    }

    /// The keys in rendering order.
    public var keys: [String] { members.map(\.key) }

    public var isEmpty: Bool { members.isEmpty }

    /// The value for `key`; setting nil removes the member, setting a new key appends it.
    /// Lookup is linear: QMP objects have a handful of members.
    public subscript(key: String) -> QMPValue? {
        get { members.first { $0.key == key }?.value }
        set {
            let index = members.firstIndex { $0.key == key }
            switch (index, newValue) {
            case (let index?, let value?): members[index].value = value
            case (let index?, nil): members.remove(at: index)
            case (nil, let value?): members.append(Member(key: key, value: value))
            case (nil, nil): break
            }
        }
    }
}

extension QMPObject: ExpressibleByDictionaryLiteral {
    public init(dictionaryLiteral elements: (String, QMPValue)...) {
        self.init(elements)
    }
}

extension QMPValue: ExpressibleByNilLiteral {
    public init(nilLiteral: ()) { self = .null }
}

extension QMPValue: ExpressibleByBooleanLiteral {
    public init(booleanLiteral value: Bool) { self = .bool(value) }
}

extension QMPValue: ExpressibleByIntegerLiteral {
    public init(integerLiteral value: Int64) { self = .int(value) }
}

extension QMPValue: ExpressibleByFloatLiteral {
    public init(floatLiteral value: Double) { self = .double(value) }
}

extension QMPValue: ExpressibleByStringLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
}

extension QMPValue: ExpressibleByArrayLiteral {
    public init(arrayLiteral elements: QMPValue...) { self = .array(elements) }
}

extension QMPValue: ExpressibleByDictionaryLiteral {
    public init(dictionaryLiteral elements: (String, QMPValue)...) { self = .object(QMPObject(elements)) }
}

extension QMPValue: CustomStringConvertible {
    /// The compact JSON text.
    public var description: String { jsonText }
}
