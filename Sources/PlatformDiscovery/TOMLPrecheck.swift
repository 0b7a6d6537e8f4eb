/// Checks the lexical rules of TOML 1.0 that toml++ 3 (inside TOMLKit) asserts on instead of
/// reporting, aborting the process: control characters other than tab, LF and CR are never
/// allowed; non-ASCII characters only inside strings and comments; and a table header's first
/// key must start with a bare-key character or a quote (`[=a]` aborts toml++). A config is operator input, but a typo must
/// give a diagnostic, never abort the daemon, so the text is checked before it reaches the parser.
enum TOMLPrecheck {
    static func firstProblem(in text: String) -> (line: Int, message: String)? {
        enum Context { case code, comment, basic, literal, multilineBasic, multilineLiteral }
        let bytes = Array(text.utf8)
        var context = Context.code
        var line = 1
        var i = 0
        var atLineStart = true
        func at(_ offset: Int, _ byte: UInt8) -> Bool { i + offset < bytes.count && bytes[i + offset] == byte }
        while i < bytes.count {
            let byte = bytes[i]
            if byte == 0x0a {
                line += 1
                atLineStart = true
                if context == .comment { context = .code }
                // A single-line string cannot span lines; the parser reports that itself.
                if context == .basic || context == .literal { context = .code }
                i += 1
                continue
            }
            if (byte < 0x20 && byte != 0x09 && byte != 0x0d) || byte == 0x7f {
                return (line, "control character 0x\(String(byte, radix: 16)) is not allowed in TOML")
            }
            let startsLine = atLineStart
            if byte != 0x20 && byte != 0x09 { atLineStart = false }
            switch context {
            case .code:
                if byte >= 0x80 { return (line, "non-ASCII character outside a string or comment") }
                if startsLine && byte == UInt8(ascii: "[") {
                    var next = i + 1
                    if next < bytes.count && bytes[next] == UInt8(ascii: "[") { next += 1 }
                    while next < bytes.count && (bytes[next] == 0x20 || bytes[next] == 0x09) { next += 1 }
                    guard next < bytes.count, isKeyStart(bytes[next]) else {
                        return (line, "a table header must start with a key")
                    }
                }
                if byte == UInt8(ascii: "#") {
                    context = .comment
                } else if byte == UInt8(ascii: "\"") {
                    if at(1, byte) && at(2, byte) {
                        context = .multilineBasic
                        i += 2
                    } else {
                        context = .basic
                    }
                } else if byte == UInt8(ascii: "'") {
                    if at(1, byte) && at(2, byte) {
                        context = .multilineLiteral
                        i += 2
                    } else {
                        context = .literal
                    }
                }
            case .comment:
                break
            case .basic, .multilineBasic:
                if byte == UInt8(ascii: "\\") {
                    // Skip the escaped character, unless it is a newline (line-ending backslash).
                    if i + 1 < bytes.count && bytes[i + 1] != 0x0a { i += 1 }
                } else if byte == UInt8(ascii: "\"") {
                    if context == .basic {
                        context = .code
                    } else if at(1, byte) && at(2, byte) {
                        context = .code
                        i += 2
                    }
                }
            case .literal, .multilineLiteral:
                if byte == UInt8(ascii: "'") {
                    if context == .literal {
                        context = .code
                    } else if at(1, byte) && at(2, byte) {
                        context = .code
                        i += 2
                    }
                }
            }
            i += 1
        }
        return nil
    }

    /// A bare-key character (A-Z a-z 0-9 _ -) or a quote.
    private static func isKeyStart(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "-"), UInt8(ascii: "\""),
            UInt8(ascii: "'"):
            true
        default: false
        }
    }
}
