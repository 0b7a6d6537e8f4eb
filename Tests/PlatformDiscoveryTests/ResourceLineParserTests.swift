import TestSupport
import Testing

@testable import PlatformDiscovery

/// The byte parser of `resource` lines agrees with the String parser it replaced.
@Suite struct ResourceLineParserTests {
    static func reference(_ line: String) -> (UInt64, UInt64, UInt64)? {
        let fields = line.split(separator: " ")
        guard fields.count == 3, let a = NumberParser.hex(fields[0]), let b = NumberParser.hex(fields[1]),
            let c = NumberParser.hex(fields[2])
        else { return nil }
        return (a, b, c)
    }

    static func parse(_ line: String) -> (UInt64, UInt64, UInt64)? {
        SysfsDiscovery.hexTriple(ArraySlice(Array(line.utf8)))
    }

    @Test(arguments: [
        "0x00000000fe000000 0x00000000fe003fff 0x0000000000140204", "0 0 0", "0X1 0xA ff", "0x 0x1 0x2",
        "0x1 0x2", "0x1 0x2 0x3 0x4", "0x1  0x2 0x3", " 0x1 0x2 0x3 ", "0xffffffffffffffff 0x1 0x2",
        "0x10000000000000000 0x1 0x2", "0x0000000000000000001 0x1 0x2", "0xg 0x1 0x2", "-1 0x1 0x2", "",
    ])
    func knownLinesParseAsBefore(line: String) {
        let expected = Self.reference(line)
        let actual = Self.parse(line)
        #expect(expected.map { [$0.0, $0.1, $0.2] } == actual.map { [$0.0, $0.1, $0.2] }, "\(line)")
    }

    @Test func randomLinesParseAsBefore() {
        var random = SplitMix64(state: 0x7e5_0a7ce)
        let alphabet = Array("0123456789abcdefABCDEFxX g-")
        for _ in 0..<20_000 {
            let length = Int(random.next() % 40)
            let line = String((0..<length).map { _ in alphabet[Int(random.next() % UInt64(alphabet.count))] })
            let expected = Self.reference(line)
            let actual = Self.parse(line)
            #expect(expected.map { [$0.0, $0.1, $0.2] } == actual.map { [$0.0, $0.1, $0.2] }, "\(line)")
        }
    }
}
