import Foundation
import QMPWire
import Testing

@Suite("Rendering QMP messages")
struct RenderingTests {
    @Test func theGreetingIsQEMUsShapeWithNoCapabilities() {
        #expect(
            text(QMPMessage.greeting(major: 9, minor: 2, micro: 0, package: "iommu-policyd 0.1"))
                == #"{"QMP":{"version":{"qemu":{"major":9,"minor":2,"micro":0},"package":"iommu-policyd 0.1"},"#
                + #""capabilities":[]}}"# + "\r\n")
    }

    @Test func aSuccessReplyCarriesTheIdOnlyWhenGiven() {
        #expect(text(QMPMessage.success([:], id: nil)) == "{\"return\":{}}\r\n")
        #expect(text(QMPMessage.success(["a": 1], id: "x")) == "{\"return\":{\"a\":1},\"id\":\"x\"}\r\n")
        #expect(text(QMPMessage.success([1, "two"], id: .null)) == "{\"return\":[1,\"two\"],\"id\":null}\r\n")
    }

    @Test func anErrorReplyCarriesClassDescAndTheIdOnlyWhenGiven() {
        #expect(
            text(QMPMessage.error(.genericError, "bad", id: nil))
                == "{\"error\":{\"class\":\"GenericError\",\"desc\":\"bad\"}}\r\n")
        #expect(
            text(QMPMessage.error(.commandNotFound("frob"), id: 7))
                == "{\"error\":{\"class\":\"CommandNotFound\",\"desc\":\"The command frob has not been found\"},\"id\":7}\r\n"
        )
    }

    @Test func anEventHasNameDataAndTimestampInThatOrder() {
        #expect(
            text(QMPMessage.event("REGION_CHANGED", data: ["z": 1, "a": 2], seconds: 1_700_000_000, microseconds: 5))
                == #"{"event":"REGION_CHANGED","data":{"z":1,"a":2},"timestamp":{"seconds":1700000000,"#
                + #""microseconds":5}}"# + "\r\n")
        #expect(
            text(QMPMessage.event("SHUTDOWN", data: nil, seconds: 0, microseconds: 999_999))
                == #"{"event":"SHUTDOWN","timestamp":{"seconds":0,"microseconds":999999}}"# + "\r\n")
    }

    @Test func everyMessageEndsInExactlyOneCRLFAndHasNoOtherLineBreak() {
        let messages = [
            QMPMessage.greeting(major: 1, minor: 2, micro: 3, package: "line\nbreak"),
            QMPMessage.success(["text": "a\r\nb"], id: "\r\n"),
            QMPMessage.error(.genericError, "multi\nline\r\n", id: nil),
            QMPMessage.event("E", data: ["k": "\n"], seconds: 1, microseconds: 2),
        ]
        for message in messages {
            #expect(message.suffix(2) == [0x0D, 0x0A])
            #expect(!message.dropLast(2).contains(0x0A) && !message.dropLast(2).contains(0x0D))
        }
    }

    @Test func stringsEscapeQuotesBackslashesAndEveryControlCharacter() throws {
        #expect(QMPValue.string("\"\\/").jsonText == #""\"\\/""#)
        #expect(QMPValue.string("\n\r\t\u{8}\u{c}").jsonText == #""\n\r\t\b\f""#)
        #expect(QMPValue.string("\u{0}\u{1}\u{1b}\u{1f}").jsonText == #""\u0000\u0001\u001b\u001f""#)
        #expect(QMPValue.string("\u{7f}é😀\u{2028}").jsonText == "\"\u{7f}é😀\u{2028}\"")
        // All 32 control characters, and a few neighbours, survive Foundation's parser.
        var all = ""
        for scalar in 0...0x21 {
            all.unicodeScalars.append(Unicode.Scalar(UInt8(scalar)))
        }
        let rendered = QMPValue.array([.string(all)]).jsonBytes
        #expect(!rendered.contains { $0 < 0x20 })
        let parsed = try JSONSerialization.jsonObject(with: Data(rendered)) as? [String]
        #expect(parsed == [all])
    }

    @Test func integersRenderExactlyAtTheEdges() {
        #expect(QMPValue.uint(UInt64.max).jsonText == "18446744073709551615")
        #expect(QMPValue.int(Int64.min).jsonText == "-9223372036854775808")
        #expect(QMPValue.int(0).jsonText == "0")
    }

    @Test func doublesRenderAsValidJSONAndNonFiniteOnesAsNull() throws {
        let cases: [(Double, String)] = [
            (1, "1.0"), (0.1, "0.1"), (-0.0, "-0.0"), (1e300, "1e+300"), (1e-5, "1e-05"),
            (.leastNonzeroMagnitude, "5e-324"),
            (.infinity, "null"), (-.infinity, "null"), (.nan, "null"),
        ]
        for (double, expected) in cases {
            #expect(QMPValue.double(double).jsonText == expected)
            let back = try JSONSerialization.jsonObject(with: Data("[\(expected)]".utf8)) as? [Any]
            #expect(back?.count == 1)
        }
    }

    @Test func objectMembersKeepTheirGivenOrder() {
        var object: QMPObject = ["z": 1, "a": 2, "m": 3]
        object["a"] = 20
        object["b"] = 4
        object["z"] = nil
        #expect(QMPValue.object(object).jsonText == #"{"a":20,"m":3,"b":4}"#)
        #expect(QMPObject([("k", 1), ("j", 2), ("k", 3)]).keys == ["k", "j"])
        #expect(QMPObject([("k", 1), ("j", 2), ("k", 3)])["k"] == 3)
    }

    @Test func randomValuesRoundTripThroughRenderingAndFoundationExactly() throws {
        var rng = SplitMix64(state: 0x0b1e_c7)
        for _ in 0..<3_000 {
            let original: QMPValue = .array([rng.qmpValue()])
            let rendered = original.jsonBytes
            let parsed = try QMPValue(parsing: rendered)
            #expect(parsed == original, "\(text(rendered))")
            #expect(parsed.jsonBytes == rendered)
        }
    }

    @Test func aRenderedReplyIsOneValueToTheSplitter() throws {
        var rng = SplitMix64(state: 0x5917)
        var stream: [UInt8] = []
        var expected: [QMPStreamSplitter.SplitResult] = []
        for index in 0..<200 {
            let payload = rng.qmpValue()
            let message = QMPMessage.success(payload, id: .int(Int64(index)))
            stream += message
            expected.append(.value(Array(message.dropLast(2))))
        }
        #expect(split([stream]) == expected)
    }
}
