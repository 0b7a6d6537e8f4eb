import Foundation

// How swift-corelibs-foundation's JSONSerialization hands numbers over (checked on Linux with
// Swift 6.3; Darwin's is alike for the cases used here):
// - true and false: the two NSNumber singletons, objCType "c". Nothing else it returns has
//   "c" (on Linux even NSNumber(value: Int8) reports "i"), and `as? Bool` cannot tell them
//   apart from the integers 0 and 1, which it happily converts.
// - an integer literal in Int64: NSNumber "q" or "i"; from Int64.max + 1 up to UInt64.max:
//   NSNumber "Q" holding the exact value.
// - Int64.min and any integer beyond UInt64.max: NSDecimalNumber (objCType "d"), whose
//   `int64Value` is silently wrong past Int64 (-9223372036854775809 comes back as ...807); its
//   `stringValue` is exact (up to Decimal's 38 digits).
// - a number with more significant digits than a Double holds, 17-digit round-trip forms
//   included (-0.001058599157560665): NSDecimalNumber too, and its `doubleValue` is often an
//   ulp or more off, so it is converted from `stringValue` by Swift's correctly rounded parser.
// - anything with a fraction or exponent: objCType "d", even 1.0 and 1e3, which `as? UInt64`
//   and `as? Int` accept; an exponent past Double's range (1E400) fails the whole parse.
// So the conversion below dispatches on the concrete class and objCType, never on `as?`.

extension QMPValue {
    /// Converts what `JSONSerialization.jsonObject` returns (NSNull, NSNumber, String, arrays
    /// and `[String: Any]`; Swift's own Bool, integers and Double work too), or nil for anything
    /// else. Object keys are sorted, since Foundation's dictionaries keep no order. Integers
    /// keep every bit; an integer beyond UInt64 becomes a Double, as QEMU's own parser does.
    public init?(jsonObject: Any) {
        switch jsonObject {
        case is NSNull:
            self = .null
        case let string as String:
            self = .string(string)
        case let number as NSNumber:
            self = Self.convert(number)
        case let array as [Any]:
            var elements: [QMPValue] = []
            elements.reserveCapacity(array.count)
            for element in array {
                guard let value = QMPValue(jsonObject: element) else { return nil }
                elements.append(value)
            }
            self = .array(elements)
        case let dictionary as [String: Any]:
            var object = QMPObject()
            for key in dictionary.keys.sorted() {
                guard let element = dictionary[key], let value = QMPValue(jsonObject: element) else { return nil }
                object[key] = value
            }
            self = .object(object)
        default:
            return nil
        }
    }

    private static func convert(_ number: NSNumber) -> QMPValue {
        if let decimal = number as? NSDecimalNumber {
            let text = decimal.stringValue
            if let exact = Int64(text) {
                return .int(exact)
            }
            if let exact = UInt64(text) {
                return .uint(exact)
            }
            // NSDecimalNumber.doubleValue is off by an ulp or more for many 17-digit values
            // (-4.4715340908167605e+118 comes back as ...676e+118); Swift's parser of the exact
            // decimal text rounds correctly.
            return .double(Double(text) ?? decimal.doubleValue)
        }
        switch UInt8(bitPattern: number.objCType.pointee) {
        case UInt8(ascii: "c"), UInt8(ascii: "B"):
            return .bool(number.boolValue)
        case UInt8(ascii: "d"), UInt8(ascii: "f"):
            return .double(number.doubleValue)
        case UInt8(ascii: "Q"), UInt8(ascii: "L"), UInt8(ascii: "I"), UInt8(ascii: "S"), UInt8(ascii: "C"):
            let value = number.uint64Value
            if let small = Int64(exactly: value) {
                return .int(small)
            }
            return .uint(value)
        default:
            return .int(number.int64Value)
        }
    }

    /// Parses one JSON text with `JSONSerialization` (no fragments, so it must be an object or
    /// an array). A NUL byte is refused before Foundation sees it: valid JSON never holds one
    /// raw, and Foundation takes leading NULs as a sign of UTF-16 or UTF-32 and decodes
    /// `{\0}\0` as `{}`. Errors are GenericErrors whose desc starts "JSON parse error: ".
    public init(parsing bytes: some Collection<UInt8>) throws(QMPError) {
        if bytes.contains(0) {
            throw .generic("JSON parse error: NUL byte in input")
        }
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(bytes), options: [])
        } catch {
            let nsError = error as NSError
            let reason = nsError.userInfo[NSDebugDescriptionErrorKey] as? String ?? nsError.localizedDescription
            throw .generic("JSON parse error: \(reason)")
        }
        guard let value = QMPValue(jsonObject: object) else {
            throw .generic("JSON parse error: unsupported value \(type(of: object))")
        }
        self = value
    }
}
