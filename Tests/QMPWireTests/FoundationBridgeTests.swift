import Foundation
import QMPWire
import Testing

/// Pins how swift-corelibs-foundation's JSONSerialization represents numbers, which the
/// conversion to QMPValue depends on; a Foundation upgrade that changes it fails here first.
@Suite("Foundation's JSON numbers")
struct FoundationBridgeTests {
    private func member(_ literal: String) throws -> Any {
        let object = try JSONSerialization.jsonObject(with: Data(#"{"v":\#(literal)}"#.utf8)) as? [String: Any]
        return try #require(object?["v"])
    }

    private func objCType(_ literal: String) throws -> String {
        let number = try #require(try member(literal) as? NSNumber)
        return String(cString: number.objCType)
    }

    @Test func integerLiteralsStayExactNSNumbersUpToUInt64Max() throws {
        #expect(try objCType("1") == "i" || objCType("1") == "q")
        #expect(try objCType("9223372036854775807") == "q")
        #expect(try objCType("18446744073709551615") == "Q")
        #expect((try member("18446744073709551615") as? NSNumber)?.uint64Value == UInt64.max)
    }

    @Test func booleansAreTheOnlyNumbersWithObjCTypeC() throws {
        #expect(try objCType("true") == "c")
        #expect(try objCType("false") == "c")
        // Bridging cannot be trusted: the integer 1 converts to Bool.
        #expect(try member("1") as? Bool == true)
    }

    @Test func fractionsAndExponentsAreDoublesThatBridgingWouldTakeAsIntegers() throws {
        #expect(try objCType("1.0") == "d")
        #expect(try objCType("1e3") == "d")
        #expect(try member("1.0") as? UInt64 == 1)  // why the conversion never uses `as?`
    }

    @Test func int64MinAndIntegersBeyondUInt64AreNSDecimalNumbers() throws {
        #expect(try member("-9223372036854775808") is NSDecimalNumber)
        #expect(try member("18446744073709551616") is NSDecimalNumber)
        let below = try #require(try member("-9223372036854775809") as? NSDecimalNumber)
        #expect(below.stringValue == "-9223372036854775809")
        #expect(below.int64Value != Int64.min)  // silently wrong, so the conversion uses stringValue
    }

    @Test func longDecimalsAreNSDecimalNumbersWhoseDoubleValueIsOffByAnUlp() throws {
        let literal = "-4.4715340908167605e+118"
        let decimal = try #require(try member(literal) as? NSDecimalNumber)
        #expect(decimal.doubleValue != Double(literal))
        #expect(QMPValue(jsonObject: decimal) == .double(-4.4715340908167605e+118))
        #expect(QMPValue(jsonObject: try member("-0.001058599157560665")) == .double(-0.001058599157560665))
    }

    @Test func conversionToQMPValueUsesTheExactCase() throws {
        #expect(QMPValue(jsonObject: try member("true")) == .bool(true))
        #expect(QMPValue(jsonObject: try member("1")) == .int(1))
        #expect(QMPValue(jsonObject: try member("-0")) == .int(0))
        #expect(QMPValue(jsonObject: try member("1.0")) == .double(1))
        #expect(QMPValue(jsonObject: try member("9223372036854775808")) == .uint(UInt64(Int64.max) + 1))
        #expect(QMPValue(jsonObject: try member("18446744073709551615")) == .uint(UInt64.max))
        #expect(QMPValue(jsonObject: try member("-9223372036854775808")) == .int(Int64.min))
        #expect(QMPValue(jsonObject: try member("18446744073709551616")) == .double(0x1p64))
        #expect(QMPValue(jsonObject: try member("0.1000000000000000000001")) == .double(0.1))
        #expect(QMPValue(jsonObject: try member("null")) == .null)
        #expect(QMPValue(jsonObject: try member(#""s""#)) == "s")
    }

    @Test func swiftNativeValuesConvertToo() {
        #expect(QMPValue(jsonObject: true) == .bool(true))
        #expect(QMPValue(jsonObject: 5) == .int(5))
        #expect(QMPValue(jsonObject: UInt64.max) == .uint(UInt64.max))
        #expect(QMPValue(jsonObject: 2.5) == .double(2.5))
        #expect(QMPValue(jsonObject: ["b": [1, "x"], "a": NSNull()] as [String: Any]) == ["a": nil, "b": [1, "x"]])
        #expect(QMPValue(jsonObject: Data()) == nil)
        #expect(QMPValue(jsonObject: [Data()]) == nil)
    }
}
