import QMPWire
@_exported import TestSupport
import Testing

typealias SplitResult = QMPStreamSplitter.SplitResult

/// Every result currently available.
func drain(_ splitter: inout QMPStreamSplitter) -> [SplitResult] {
    var results: [SplitResult] = []
    while let result = splitter.next() {
        results.append(result)
    }
    return results
}

/// Everything the splitter makes of `chunks`, fed one after another, end of input included.
func split(_ chunks: [[UInt8]], maximum: Int = QMPStreamSplitter.defaultMaximumValueBytes) -> [SplitResult] {
    var splitter = QMPStreamSplitter(maximumValueBytes: maximum)
    var results: [SplitResult] = []
    for chunk in chunks {
        splitter.append(chunk)
        results += drain(&splitter)
    }
    while let result = splitter.nextAtEndOfInput() {
        results.append(result)
    }
    return results
}

func split(_ text: String, maximum: Int = QMPStreamSplitter.defaultMaximumValueBytes) -> [SplitResult] {
    split([Array(text.utf8)], maximum: maximum)
}

func value(_ text: String) -> SplitResult {
    .value(Array(text.utf8))
}

func token(_ text: String) -> SplitResult {
    .error(.unexpectedToken(prefix: Array(text.utf8), byteCount: text.utf8.count))
}

func bytes(_ text: String) -> [UInt8] {
    Array(text.utf8)
}

func text(_ bytes: [UInt8]) -> String {
    String(decoding: bytes, as: UTF8.self)
}

/// Parses a request that must be valid.
func request(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> QMPRequest {
    do {
        return try QMPRequest(parsing: Array(text.utf8))
    } catch {
        Issue.record("refused: \(error)", sourceLocation: sourceLocation)
        throw error
    }
}

/// The error a request must be refused with.
func refusal(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> QMPRequestError? {
    refusal(Array(text.utf8), sourceLocation: sourceLocation)
}

func refusal(_ input: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) -> QMPRequestError? {
    do {
        let accepted = try QMPRequest(parsing: input)
        Issue.record("accepted: \(accepted)", sourceLocation: sourceLocation)
        return nil
    } catch {
        return error
    }
}

/// The arguments of `{"execute":"x","arguments":ARGUMENTS}` as the parser delivers them.
func arguments(_ json: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> QMPArguments {
    try request(#"{"execute":"x","arguments":\#(json)}"#, sourceLocation: sourceLocation).arguments
}

/// The QMPError an accessor throws.
func accessorError<T>(_ body: () throws(QMPError) -> T, sourceLocation: SourceLocation = #_sourceLocation) -> String? {
    do {
        let value = try body()
        Issue.record("accepted: \(value)", sourceLocation: sourceLocation)
        return nil
    } catch {
        #expect(error.errorClass == .genericError, sourceLocation: sourceLocation)
        return error.desc
    }
}

extension RandomNumberGenerator {
    /// A random QMPValue as parsing would deliver it: object keys sorted, `.uint` only above
    /// Int64.max, finite doubles.
    mutating func qmpValue(depth: Int = 0) -> QMPValue {
        let kinds = depth >= 3 ? 6 : 8
        switch Int.random(in: 0..<kinds, using: &self) {
        case 0: return .null
        case 1: return .bool(Bool.random(using: &self))
        case 2:
            switch Int.random(in: 0..<4, using: &self) {
            case 0: return .int(Int64.min)
            case 1: return .int(Int64.max)
            case 2: return .int(Int64.random(in: -1000...1000, using: &self))
            default: return .int(Int64.random(in: Int64.min...Int64.max, using: &self))
            }
        case 3: return .uint(UInt64.random(in: (UInt64(Int64.max) + 1)...UInt64.max, using: &self))
        case 4:
            var double: Double
            repeat {
                double = Double(bitPattern: UInt64.random(in: 0...UInt64.max, using: &self))
            } while !double.isFinite
            return .double(double)
        case 5: return .string(qmpString())
        case 6:
            return .array((0..<Int.random(in: 0...4, using: &self)).map { _ in qmpValue(depth: depth + 1) })
        default:
            var object = QMPObject()
            for _ in 0..<Int.random(in: 0...4, using: &self) {
                object[qmpString()] = qmpValue(depth: depth + 1)
            }
            return .object(QMPObject(object.members.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }))
        }
    }

    /// A short string mixing ASCII, JSON's structural and escaped characters, control
    /// characters and multi-byte scalars.
    mutating func qmpString() -> String {
        let alphabet: [Unicode.Scalar] = [
            "a", "Z", "0", " ", "{", "}", "[", "]", "\"", "\\", "/", ",", ":", "\u{0}", "\u{1}", "\u{8}", "\t", "\n",
            "\u{c}", "\r", "\u{1f}", "\u{7f}", "\u{e9}", "\u{2028}", "\u{fffd}", "\u{1f600}", "\u{10ffff}",
        ]
        var string = ""
        for _ in 0..<Int.random(in: 0...8, using: &self) {
            string.unicodeScalars.append(alphabet[Int.random(in: 0..<alphabet.count, using: &self)])
        }
        return string
    }
}
