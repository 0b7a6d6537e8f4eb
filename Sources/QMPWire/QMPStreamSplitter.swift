// qmp-spec.rst, "Wire protocol": the server ends every message with CRLF, but a client may send
// JSON with no line ending at all, and qemu.qmp's send_fd_scm() sends a lone space to carry a
// file descriptor. So the input is cut into successive JSON values, never into lines, and
// whitespace between values is skipped.

/// Why bytes from the stream were not a QMP value. After each of these the splitter has
/// already skipped the offending bytes, so the next value on the stream still comes out whole.
public enum QMPFramingError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A top-level token that does not open an object or array, such as `42`, `"x"` or `foo`.
    /// `prefix` holds its first bytes (at most `QMPStreamSplitter.reportedTokenPrefix`), and
    /// `byteCount` how many bytes it had when reported: at its end (whitespace, `{` or `[`), or
    /// as soon as it grew past the maximum value size, after which the rest is skipped silently.
    case unexpectedToken(prefix: [UInt8], byteCount: Int)
    /// A `}` or `]` with nothing open.
    case unexpectedCloser(UInt8)
    /// A value grew past `maximum` bytes. Reported once, as soon as it passes the limit; the
    /// rest of it is skipped up to its matching closer.
    case valueTooLarge(maximum: Int)
    /// The input ended inside a value that had `byteCount` bytes so far.
    case truncated(byteCount: Int)

    /// One line fit for a GenericError's desc.
    public var description: String {
        switch self {
        case .unexpectedToken(let prefix, let byteCount):
            let shown = String(decoding: prefix, as: UTF8.self) + (byteCount > prefix.count ? "..." : "")
            return "JSON parse error: unexpected token '\(shown)' (\(byteCount) bytes); QMP input must be a JSON object"
        case .unexpectedCloser(let byte):
            return "JSON parse error: unexpected '\(String(UnicodeScalar(byte)))' with no object or array open"
        case .valueTooLarge(let maximum):
            return "JSON parse error: value exceeds the maximum of \(maximum) bytes"
        case .truncated(let byteCount):
            return "JSON parse error: input ended inside a value after \(byteCount) bytes"
        }
    }
}

/// Cuts a QMP byte stream into complete top-level JSON values without parsing them: it tracks
/// only the nesting depth of `{}` and `[]` and whether it is inside a string (and after a
/// backslash there), which is enough to find where a value ends. Every structural byte is
/// ASCII and every byte of a multi-byte UTF-8 sequence is 0x80 or above, so UTF-8 text needs no
/// decoding here. Whether the value is valid JSON is `QMPRequest`'s business.
///
/// Each byte is examined once. Consumed bytes are dropped when more arrive, and only once they
/// are at least half the buffer, so the cost stays linear in the input however the caller
/// interleaves `append` and `next`. A caller that drains `next()` after every append holds at
/// most one partial value (at most `maximumValueBytes`) plus the consumed bytes not yet
/// dropped (no more than that again) plus the last append: oversize values and bad tokens are
/// skipped byte by byte rather than kept.
public struct QMPStreamSplitter: Sendable {
    /// What `next()` found.
    public enum SplitResult: Hashable, Sendable {
        /// The bytes of one complete top-level object or array, from its opener to its closer.
        case value([UInt8])
        /// Bytes that could not be a value; they are already skipped.
        case error(QMPFramingError)
    }

    /// One MiB, the default largest value.
    public static let defaultMaximumValueBytes = 1 << 20
    /// How many bytes of a bad token an `unexpectedToken` error quotes.
    public static let reportedTokenPrefix = 32

    /// The largest value, in bytes from opener to closer, that `next()` returns.
    public let maximumValueBytes: Int

    private enum Mode: Sendable {
        /// Between values: whitespace is skipped.
        case between
        /// Inside a value that started at `start`.
        case value
        /// Inside a value already reported as too large; skipped up to its end.
        case oversize
        /// Inside a bad top-level token; skipped up to whitespace, `{` or `[`.
        case garbage
    }

    private var storage: [UInt8] = []
    /// The first byte not yet consumed; in `.value` mode, the value's opener.
    private var start = 0
    /// The next byte to examine. Invariant: `start <= scan <= storage.count`.
    private var scan = 0
    private var mode = Mode.between
    private var depth = 0
    private var inString = false
    private var escaped = false
    private var garbagePrefix: [UInt8] = []
    private var garbageCount = 0
    private var garbageReported = false

    /// A splitter that returns values of at most `maximumValueBytes` bytes (at least 2, the
    /// size of `{}`).
    public init(maximumValueBytes: Int = defaultMaximumValueBytes) {
        precondition(maximumValueBytes >= 2, "a QMP value needs at least 2 bytes")
        self.maximumValueBytes = maximumValueBytes
    }

    /// Bytes appended and not yet consumed: a partial value, or complete ones `next()` has not
    /// returned yet.
    public var bufferedByteCount: Int { storage.count - start }

    /// The bytes held, consumed ones included; for tests of the memory bound.
    var storageByteCount: Int { storage.count }

    /// Appends received bytes.
    public mutating func append(_ bytes: some Sequence<UInt8>) {
        compact()
        storage.append(contentsOf: bytes)
    }

    /// Appends received bytes from a raw buffer (a concrete overload, so the copy is a memcpy
    /// even though callers in other modules cannot specialise the generic one).
    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        compact()
        storage.append(contentsOf: bytes)
    }

    /// The next complete value or framing error, or nil when more bytes are needed.
    public mutating func next() -> SplitResult? {
        while scan < storage.count {
            let byte = storage[scan]
            switch mode {
            case .between:
                scan += 1
                switch byte {
                case ASCII.space, ASCII.tab, ASCII.lineFeed, ASCII.carriageReturn:
                    start = scan
                case ASCII.openBrace, ASCII.openBracket:
                    mode = .value
                    depth = 1
                    inString = false
                    escaped = false
                case ASCII.closeBrace, ASCII.closeBracket:
                    start = scan
                    return .error(.unexpectedCloser(byte))
                default:
                    start = scan
                    mode = .garbage
                    garbagePrefix = [byte]
                    garbageCount = 1
                    garbageReported = false
                }
            case .value:
                scan += 1
                let ended = track(byte)
                if scan - start > maximumValueBytes {
                    start = scan
                    mode = ended ? .between : .oversize
                    return .error(.valueTooLarge(maximum: maximumValueBytes))
                }
                if ended {
                    let value = Array(storage[start..<scan])
                    start = scan
                    mode = .between
                    return .value(value)
                }
            case .oversize:
                scan += 1
                start = scan
                if track(byte) {
                    mode = .between
                }
            case .garbage:
                if ASCII.endsToken(byte) {
                    // The delimiter is left for `.between`, which may start a value with it.
                    mode = .between
                    if !garbageReported {
                        garbageReported = true
                        return .error(.unexpectedToken(prefix: garbagePrefix, byteCount: garbageCount))
                    }
                    continue
                }
                scan += 1
                start = scan
                garbageCount += 1
                if garbagePrefix.count < Self.reportedTokenPrefix {
                    garbagePrefix.append(byte)
                }
                if !garbageReported && garbageCount > maximumValueBytes {
                    garbageReported = true
                    return .error(.unexpectedToken(prefix: garbagePrefix, byteCount: garbageCount))
                }
            }
        }
        return nil
    }

    /// For when the peer has closed: returns what `next()` would, then, once, the error for a
    /// value or token the input ended inside, then nil; the splitter is then empty and ready
    /// for a new stream. Call it until it returns nil.
    public mutating func nextAtEndOfInput() -> SplitResult? {
        if let result = next() {
            return result
        }
        let leftover: SplitResult?
        switch mode {
        case .between, .oversize:
            leftover = nil
        case .value:
            leftover = .error(.truncated(byteCount: scan - start))
        case .garbage:
            leftover =
                garbageReported ? nil : .error(.unexpectedToken(prefix: garbagePrefix, byteCount: garbageCount))
        }
        storage.removeAll(keepingCapacity: true)
        start = 0
        scan = 0
        mode = .between
        garbagePrefix = []
        garbageReported = false
        return leftover
    }

    /// Follows one byte inside a value; true when it closes the value.
    private mutating func track(_ byte: UInt8) -> Bool {
        if inString {
            if escaped {
                escaped = false
            } else if byte == ASCII.backslash {
                escaped = true
            } else if byte == ASCII.quote {
                inString = false
            }
            return false
        }
        switch byte {
        case ASCII.quote:
            inString = true
        case ASCII.openBrace, ASCII.openBracket:
            depth += 1
        case ASCII.closeBrace, ASCII.closeBracket:
            // A mismatched closer (`{]`) still counts: the value ends where the count says and
            // the JSON parser rejects it, which resynchronises as well as anything could.
            depth -= 1
            return depth == 0
        default:
            break
        }
        return false
    }

    /// Drops consumed bytes once they are at least half the buffer, so each byte is moved at
    /// most as many times as bytes before it were consumed, halving each time: linear overall.
    private mutating func compact() {
        guard start > 0 else { return }
        if start == storage.count {
            storage.removeAll(keepingCapacity: true)
        } else if start >= storage.count - start {
            storage.removeSubrange(0..<start)
        } else {
            return
        }
        scan -= start
        start = 0
    }
}

/// The bytes JSON's structure is made of (RFC 8259, section 2).
enum ASCII {
    static let space = UInt8(ascii: " ")
    static let tab = UInt8(ascii: "\t")
    static let lineFeed = UInt8(ascii: "\n")
    static let carriageReturn = UInt8(ascii: "\r")
    static let quote = UInt8(ascii: "\"")
    static let backslash = UInt8(ascii: "\\")
    static let openBrace = UInt8(ascii: "{")
    static let closeBrace = UInt8(ascii: "}")
    static let openBracket = UInt8(ascii: "[")
    static let closeBracket = UInt8(ascii: "]")

    /// RFC 8259's four whitespace bytes, and the openers a value may start with right after a
    /// bad token.
    static func endsToken(_ byte: UInt8) -> Bool {
        switch byte {
        case space, tab, lineFeed, carriageReturn, openBrace, openBracket: true
        default: false
        }
    }
}
