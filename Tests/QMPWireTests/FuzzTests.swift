import Testing

@testable import QMPWire

extension RandomNumberGenerator {
    /// Bytes biased towards what the splitter reacts to, so that random input forms values,
    /// strings and escapes often enough to reach every state.
    mutating func splitterBytes(count: Int) -> [UInt8] {
        let interesting = Array(#"{}[]"\ :,a1é"#.utf8) + [0x00, 0x0A, 0x0D, 0x09, 0xFF]
        return (0..<count).map { _ in
            Int.random(in: 0..<4, using: &self) == 0
                ? UInt8.random(in: 0...255, using: &self)
                : interesting[Int.random(in: 0..<interesting.count, using: &self)]
        }
    }

    /// `bytes` cut into random chunks, some empty.
    mutating func chunks(of bytes: [UInt8]) -> [[UInt8]] {
        var chunks: [[UInt8]] = []
        var offset = 0
        while offset < bytes.count {
            let end = min(bytes.count, offset + Int.random(in: 0...24, using: &self))
            chunks.append(Array(bytes[offset..<end]))
            offset = end
        }
        return chunks
    }
}

@Suite("Fuzzing the splitter and the request parser")
struct FuzzTests {
    /// Random bytes never crash the splitter, and the results do not depend on how the bytes
    /// were cut into appends: each byte's fate is decided once, when it is scanned.
    @Test func randomBytesGiveTheSameResultsHoweverTheyAreChunked() {
        var rng = SplitMix64(state: 0x51ee_d001)
        for round in 0..<400 {
            let maximum = Int.random(in: 2...64, using: &rng)
            let stream = rng.splitterBytes(count: Int.random(in: 0...400, using: &rng))
            let whole = split([stream], maximum: maximum)
            let chunked = split(rng.chunks(of: stream), maximum: maximum)
            let byteByByte = split(stream.map { [$0] }, maximum: maximum)
            #expect(whole == chunked, "round \(round)")
            #expect(whole == byteByByte, "round \(round)")
        }
    }

    /// Progress: every byte is accounted for by a value, an error or skipped whitespace, the
    /// splitter holds at most one partial value after a drain, values are well-bracketed and
    /// within the maximum, and the end of input leaves nothing behind.
    @Test func randomBytesAlwaysMakeProgressAndKeepMemoryBounded() {
        var rng = SplitMix64(state: 0xfa55_c0de)
        for _ in 0..<300 {
            let maximum = Int.random(in: 2...48, using: &rng)
            var splitter = QMPStreamSplitter(maximumValueBytes: maximum)
            for chunk in rng.chunks(of: rng.splitterBytes(count: Int.random(in: 0...600, using: &rng))) {
                splitter.append(chunk)
                for result in drain(&splitter) {
                    if case .value(let valueBytes) = result {
                        #expect(valueBytes.count <= maximum)
                        #expect(valueBytes.first == UInt8(ascii: "{") || valueBytes.first == UInt8(ascii: "["))
                        #expect(valueBytes.last == UInt8(ascii: "}") || valueBytes.last == UInt8(ascii: "]"))
                    }
                }
                #expect(splitter.bufferedByteCount <= maximum)
                #expect(splitter.storageByteCount <= 2 * maximum + 24)
            }
            var endResults = 0
            while splitter.nextAtEndOfInput() != nil {
                endResults += 1
            }
            #expect(endResults <= 1)
            #expect(splitter.bufferedByteCount == 0)
        }
    }

    /// Valid QMP values with whitespace and garbage between them: every value comes out
    /// unchanged, in order, between the errors the garbage causes.
    @Test func valuesSurroundedByRandomWhitespaceAndGarbageAllComeOut() throws {
        var rng = SplitMix64(state: 0xabad_1dea)
        let separators = [" ", "\r\n", "\t", "  \n", ""]
        let garbage = ["42", "foo", #""str""#, "}", "]", "nul", "-1e5", "\u{1F600}"]
        for _ in 0..<150 {
            var stream: [UInt8] = []
            var values: [[UInt8]] = []
            for _ in 0..<Int.random(in: 1...8, using: &rng) {
                if Bool.random(using: &rng) {
                    stream += bytes(garbage[Int.random(in: 0..<garbage.count, using: &rng)]) + bytes(" ")
                }
                let value = QMPValue.object(["execute": "x", "arguments": ["v": rng.qmpValue()]]).jsonBytes
                values.append(value)
                stream += value + bytes(separators[Int.random(in: 0..<separators.count, using: &rng)])
            }
            let got = split(rng.chunks(of: stream)).compactMap { result -> [UInt8]? in
                if case .value(let valueBytes) = result { return valueBytes }
                return nil
            }
            #expect(got == values)
            for valueBytes in got {
                #expect(try QMPRequest(parsing: valueBytes).command == "x")
            }
        }
    }

    /// Whatever the splitter cuts from random input, the request parser accepts or refuses
    /// without crashing, and every refusal renders as one CRLF-ended reply.
    @Test func everyCutValueParsesOrIsRefusedWithAReply() {
        var rng = SplitMix64(state: 0x0dd_ba11)
        var outcomes = (accepted: 0, refused: 0)
        for _ in 0..<300 {
            var stream = rng.splitterBytes(count: Int.random(in: 0...300, using: &rng))
            // Some valid requests, lightly mutated, so that parsing gets past JSON syntax.
            let good = bytes(#"{"execute":"q","arguments":{"a":[1,"x"]},"id":1}"#)
            var mutated = good
            for _ in 0..<Int.random(in: 0...2, using: &rng) {
                mutated[Int.random(in: 0..<mutated.count, using: &rng)] = rng.splitterBytes(count: 1)[0]
            }
            stream.insert(
                contentsOf: bytes(" ") + mutated + bytes(" "), at: Int.random(in: 0...stream.count, using: &rng))
            for case .value(let valueBytes) in split([stream], maximum: 256) {
                do {
                    let parsed = try QMPRequest(parsing: valueBytes)
                    #expect(parsed.successReply().suffix(2) == [0x0D, 0x0A])
                    outcomes.accepted += 1
                } catch {
                    #expect(error.reply.suffix(2) == [0x0D, 0x0A])
                    outcomes.refused += 1
                }
            }
        }
        #expect(outcomes.accepted > 0)
        #expect(outcomes.refused > 0)
    }
}
