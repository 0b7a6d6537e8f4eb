import Testing

@testable import QMPWire

/// A stream with the kinds of value a QMP client sends, back to back with varied separators.
let sampleValues = [
    #"{"execute":"qmp_capabilities"}"#,
    #"{"execute":"query-regions","arguments":{"device":"0000:03:00.0"},"id":7}"#,
    #"[1,[2,[3]],{"a":[]}]"#,
    #"{"s":"}]{[ \"quoted\" \\ \\\" \u007b","t":"\\","u":"\\\\\""}"#,
    #"{"utf8":"é ✓ 😀 \u00e9","name":"日本語{}"}"#,
    #"{}"#,
]
let sampleStream = bytes(sampleValues.joined(separator: " \r\n\t") + "\r\n")

@Suite("QMPStreamSplitter")
struct StreamSplitterTests {
    @Test func aNewSplitterHasNothingBufferedAndNoValue() {
        var splitter = QMPStreamSplitter()
        #expect(splitter.next() == nil)
        #expect(splitter.bufferedByteCount == 0)
        #expect(splitter.maximumValueBytes == 1 << 20)
        #expect(splitter.nextAtEndOfInput() == nil)
    }

    @Test func severalValuesInOneAppendComeOutInOrder() {
        #expect(split([sampleStream]) == sampleValues.map(value))
    }

    @Test func aValueSplitAcrossManyAppendsComesOutWhole() {
        let chunks = sampleStream.map { [$0] }
        var splitter = QMPStreamSplitter()
        var results: [SplitResult] = []
        var ends: [Int] = []
        for (index, chunk) in chunks.enumerated() {
            splitter.append(chunk)
            let got = drain(&splitter)
            if !got.isEmpty { ends.append(index) }
            results += got
        }
        #expect(results == sampleValues.map(value))
        // Each value comes out exactly when its closer arrives, not when the separator does.
        var expectedEnds: [Int] = []
        var offset = 0
        for sample in sampleValues {
            expectedEnds.append(offset + sample.utf8.count - 1)
            offset += sample.utf8.count + 4
        }
        #expect(ends == expectedEnds)
    }

    @Test func everySplitPointGivesTheSameValues() {
        let expected = sampleValues.map(value)
        for cut in 0...sampleStream.count {
            let chunks = [Array(sampleStream[..<cut]), Array(sampleStream[cut...])]
            #expect(split(chunks) == expected, "cut at \(cut)")
        }
    }

    @Test func everyPairOfSplitPointsInAnEscapeHeavyValueGivesTheSameValue() {
        let tricky = #"{"a":"\\\"}\\","b":["\"[", "é😀"],"c":"\\\\"}"#
        let stream = bytes(tricky + " " + tricky)
        for first in 0...stream.count {
            for second in first...stream.count {
                let chunks = [Array(stream[..<first]), Array(stream[first..<second]), Array(stream[second...])]
                #expect(split(chunks) == [value(tricky), value(tricky)], "cuts at \(first) and \(second)")
            }
        }
    }

    @Test func valuesWithNothingBetweenThemAreSeparated() {
        #expect(split(#"{}[]{"a":{}}[[]]"#) == [value("{}"), value("[]"), value(#"{"a":{}}"#), value("[[]]")])
    }

    @Test func whitespaceBetweenValuesIsSkipped() {
        #expect(split(" \t\r\n {} \n\n\r\n\t [] \r\n") == [value("{}"), value("[]")])
    }

    @Test func aLoneSpaceCarryingAnFdProducesNothingAndLeavesNothingBuffered() {
        // qemu.qmp's send_fd_scm() sends one space byte alongside SCM_RIGHTS.
        var splitter = QMPStreamSplitter()
        splitter.append(bytes(" "))
        #expect(splitter.next() == nil)
        #expect(splitter.bufferedByteCount == 0)
        splitter.append(bytes(#"{"execute":"getfd","arguments":{"fdname":"x"}}"#))
        #expect(drain(&splitter) == [value(#"{"execute":"getfd","arguments":{"fdname":"x"}}"#)])
    }

    @Test func whitespaceInsideAValueIsKept() {
        #expect(split("{ \"a\" :\r\n [ 1 , 2 ] }") == [value("{ \"a\" :\r\n [ 1 , 2 ] }")])
    }

    @Test func bracesAndBracketsInsideStringsDoNotCount() {
        let values = [
            #"{"a":"}"}"#, #"{"a":"]]]]"}"#, #"["{{{{"]"#, #"{"a":"[","b":"{"}"#, #"{"}":"{"}"#,
        ]
        #expect(split(values.joined()) == values.map(value))
    }

    @Test func escapedQuotesAndBackslashesInsideStringsAreFollowed() {
        let values = [
            #"{"a":"\""}"#,  // an escaped quote does not end the string
            #"{"a":"\\"}"#,  // an escaped backslash does not escape the quote after it
            #"{"a":"\\\""}"#,  // backslash, then escaped quote
            #"{"a":"\\\\"}"#,
            #"{"a":"\"}\""}"#,
            #"{"a":"\u0022}"}"#,  // \u0022 is a quote to JSON but not to the splitter's escape rule
        ]
        #expect(split(values.joined(separator: " ")) == values.map(value))
    }

    @Test func multibyteUTF8InsideStringsPassesThroughAtEverySplitPoint() {
        // U+207D (⁽) and U+FF5B (｛) are brace-like, but all their bytes are 0x80 or above.
        let sample = #"{"k":"é⁽｛😀日本","😀":["｝"]}"#
        let stream = bytes(sample)
        for cut in 0...stream.count {
            #expect(split([Array(stream[..<cut]), Array(stream[cut...])]) == [value(sample)])
        }
    }

    @Test func deeplyNestedValuesComeOutWhole() {
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect(split(deep + deep) == [value(deep), value(deep)])
    }

    @Test func topLevelScalarsAreErrorsAndTheStreamResynchronises() {
        let results = split(#"42 "x" foo null true -1.5e3 {"execute":"a"}"#)
        #expect(
            results == [
                token("42"), token(#""x""#), token("foo"), token("null"), token("true"), token("-1.5e3"),
                value(#"{"execute":"a"}"#),
            ])
    }

    @Test func aBadTokenEndsAtAnOpenerWhichStartsTheNextValue() {
        #expect(split(#"foo{"a":1}bar[2]"#) == [token("foo"), value(#"{"a":1}"#), token("bar"), value("[2]")])
    }

    @Test func aBadTokenSwallowsClosersAndQuotesUpToWhitespace() {
        // The brief's rule: a bad token runs to whitespace, `{` or `[`, whatever it contains.
        #expect(split(#"ab}"c] {}"#) == [token(#"ab}"c]"#), value("{}")])
    }

    @Test func aBadTokenOfRawBytesIsReportedByItsBytes() {
        let raw: [UInt8] = [0x00, 0xff, 0xc3, 0x01]
        #expect(
            split([raw + bytes(" {}")]) == [
                .error(.unexpectedToken(prefix: raw, byteCount: 4)), value("{}"),
            ])
    }

    @Test func aBadTokenIsReportedOnlyWhenItEnds() {
        var splitter = QMPStreamSplitter()
        splitter.append(bytes("fo"))
        #expect(splitter.next() == nil)
        splitter.append(bytes("o"))
        #expect(splitter.next() == nil)
        splitter.append(bytes("\n"))
        #expect(drain(&splitter) == [token("foo")])
    }

    @Test func aBadTokenQuotesAtMostItsFirst32Bytes() {
        let long = String(repeating: "x", count: 100)
        let results = split(long + " {}")
        #expect(
            results == [
                .error(.unexpectedToken(prefix: bytes(String(repeating: "x", count: 32)), byteCount: 100)),
                value("{}"),
            ])
        if case .error(let error) = results.first {
            #expect(error.description.contains("'\(String(repeating: "x", count: 32))...' (100 bytes)"))
        }
    }

    @Test func aBadTokenLongerThanTheMaximumIsReportedOnceAsItPassesItAndSkipped() {
        var splitter = QMPStreamSplitter(maximumValueBytes: 64)
        var results: [SplitResult] = []
        for _ in 0..<1000 {
            splitter.append(bytes("garbage"))
            results += drain(&splitter)
            #expect(splitter.storageByteCount <= 64)
        }
        splitter.append(bytes(" {}"))
        results += drain(&splitter)
        #expect(
            results == [
                .error(
                    .unexpectedToken(
                        prefix: Array(bytes(String(repeating: "garbage", count: 10)).prefix(32)), byteCount: 65)),
                value("{}"),
            ])
    }

    @Test func strayClosersAtTopLevelAreErrorsOneByteEach() {
        #expect(
            split(#"}] ]{"execute":"a"}}"#) == [
                .error(.unexpectedCloser(UInt8(ascii: "}"))), .error(.unexpectedCloser(UInt8(ascii: "]"))),
                .error(.unexpectedCloser(UInt8(ascii: "]"))), value(#"{"execute":"a"}"#),
                .error(.unexpectedCloser(UInt8(ascii: "}"))),
            ])
    }

    @Test func aMismatchedCloserStillEndsTheValueByDepth() {
        // The splitter counts depth only; the JSON parser refuses `{"a":1]`.
        #expect(split(#"{"a":1] {"b":[}] {}"#) == [value(#"{"a":1]"#), value(#"{"b":[}]"#), value("{}")])
    }

    @Test func aValueOfExactlyTheMaximumIsAcceptedAndOneByteMoreIsNot() {
        let exact = "[" + String(repeating: "0", count: 62) + "]"
        let over = "[" + String(repeating: "0", count: 63) + "]"
        #expect(exact.utf8.count == 64)
        #expect(
            split(exact + over + exact, maximum: 64) == [
                value(exact), .error(.valueTooLarge(maximum: 64)), value(exact),
            ])
    }

    @Test func anOversizeValueIsReportedOnceAndTheNextValueComesOutWhole() {
        // Braces and brackets inside the oversize value's strings must not end it early.
        let big = #"{"a":""# + String(repeating: #"}]\"{["#, count: 100) + #"","b":[[{}]]}"#
        let good = #"{"execute":"after"}"#
        #expect(split(big + " " + good, maximum: 128) == [.error(.valueTooLarge(maximum: 128)), value(good)])
        // And byte at a time, with memory staying bounded.
        var splitter = QMPStreamSplitter(maximumValueBytes: 128)
        var results: [SplitResult] = []
        for byte in bytes(big + good) {
            splitter.append(CollectionOfOne(byte))
            results += drain(&splitter)
            #expect(splitter.storageByteCount <= 129)
        }
        #expect(results == [.error(.valueTooLarge(maximum: 128)), value(good)])
    }

    @Test func anOversizeValueIsReportedAsSoonAsItPassesTheLimitBeforeItEnds() {
        var splitter = QMPStreamSplitter(maximumValueBytes: 16)
        splitter.append(bytes("[" + String(repeating: "1,", count: 7)))
        #expect(splitter.next() == nil)
        splitter.append(bytes("1,"))
        #expect(splitter.next() == .error(.valueTooLarge(maximum: 16)))
        splitter.append(bytes(String(repeating: "[1],", count: 1000)))
        #expect(splitter.next() == nil)
        splitter.append(bytes("2]{}"))
        #expect(drain(&splitter) == [value("{}")])
    }

    @Test func endOfInputInsideAValueIsReportedAsTruncated() {
        var splitter = QMPStreamSplitter()
        splitter.append(bytes(#"{"a":1} {"execute":"#))
        #expect(splitter.nextAtEndOfInput() == value(#"{"a":1}"#))
        #expect(splitter.nextAtEndOfInput() == .error(.truncated(byteCount: 11)))
        #expect(splitter.nextAtEndOfInput() == nil)
        #expect(splitter.bufferedByteCount == 0)
        // The splitter starts afresh: a quote left open before does not swallow this value.
        splitter.append(bytes(#"{"ok":"yes"}"#))
        #expect(drain(&splitter) == [value(#"{"ok":"yes"}"#)])
    }

    @Test func endOfInputReportsAPendingBadTokenButNotAnAlreadyReportedOversizeValue() {
        #expect(split("{} foo") == [value("{}"), token("foo")])
        #expect(split("[" + String(repeating: "1,", count: 50), maximum: 16) == [.error(.valueTooLarge(maximum: 16))])
        #expect(split("{}  \r\n ") == [value("{}")])
    }

    @Test func consumedBytesAreCompactedSoStorageStaysSmall() {
        var splitter = QMPStreamSplitter()
        let message = bytes(#"{"execute":"query-status","id":12345} "#)
        for _ in 0..<10_000 {
            splitter.append(message)
            #expect(drain(&splitter).count == 1)
        }
        #expect(splitter.storageByteCount <= message.count)
        #expect(splitter.bufferedByteCount == 0)
    }

    @Test func storageStaysBoundedWhenValuesAreTakenOneAtATimeBetweenAppends() {
        // A caller that takes one value per read, leaving the rest buffered.
        var splitter = QMPStreamSplitter()
        var taken = 0
        for _ in 0..<5_000 {
            splitter.append(bytes("{}{}"))
            if splitter.next() != nil { taken += 1 }
            #expect(splitter.storageByteCount <= 2 * splitter.bufferedByteCount + 4)
        }
        taken += drain(&splitter).count
        #expect(taken == 10_000)
    }

    @Test func aLargeValueInSmallChunksComesOutWhole() {
        let payload = #"{"data":""# + String(repeating: "a{[\\\"", count: 40_000) + #""}"#
        let stream = bytes(payload)
        var splitter = QMPStreamSplitter()
        var results: [SplitResult] = []
        var offset = 0
        while offset < stream.count {
            let end = min(offset + 7, stream.count)
            splitter.append(stream[offset..<end])
            results += drain(&splitter)
            offset = end
        }
        #expect(results == [.value(stream)])
    }

    @Test func errorDescriptionsAreGenericErrorReady() {
        #expect(
            QMPFramingError.unexpectedToken(prefix: bytes("foo"), byteCount: 3).description
                == "JSON parse error: unexpected token 'foo' (3 bytes); QMP input must be a JSON object")
        #expect(
            QMPFramingError.unexpectedCloser(UInt8(ascii: "]")).description
                == "JSON parse error: unexpected ']' with no object or array open")
        #expect(
            QMPFramingError.valueTooLarge(maximum: 1024).description
                == "JSON parse error: value exceeds the maximum of 1024 bytes")
        #expect(
            QMPFramingError.truncated(byteCount: 5).description
                == "JSON parse error: input ended inside a value after 5 bytes")
    }
}
