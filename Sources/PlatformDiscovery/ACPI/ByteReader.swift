import IOMMUCore

/// Bounds-checked little-endian reads over a byte array.
///
/// Firmware tables are untrusted input, so no read may trap: every read returns nil when any
/// byte it needs lies outside `0..<end`, whatever the offset (negative and huge ones included).
struct ByteReader {
    let bytes: [UInt8]
    /// One past the last readable byte; never more than `bytes.count`, never negative.
    let end: Int

    init(_ bytes: [UInt8], end: Int? = nil) {
        self.bytes = bytes
        self.end = Swift.min(Swift.max(end ?? bytes.count, 0), bytes.count)
    }

    /// True when all `count` bytes starting at `offset` lie inside `0..<end`.
    func contains(offset: Int, count: Int) -> Bool {
        // `end - offset` cannot overflow: both are non-negative here.
        offset >= 0 && count >= 0 && offset <= end && count <= end - offset
    }

    /// The same bytes, readable only below `newEnd` (which can shrink the window, never grow it).
    func limited(to newEnd: Int) -> ByteReader {
        ByteReader(bytes, end: Swift.min(newEnd, end))
    }

    func u8(at offset: Int) -> UInt8? {
        contains(offset: offset, count: 1) ? bytes[offset] : nil
    }

    func u16(at offset: Int) -> UInt16? {
        littleEndian(at: offset, width: 2).map { UInt16(truncatingIfNeeded: $0) }
    }

    func u32(at offset: Int) -> UInt32? {
        littleEndian(at: offset, width: 4).map { UInt32(truncatingIfNeeded: $0) }
    }

    func u64(at offset: Int) -> UInt64? {
        littleEndian(at: offset, width: 8)
    }

    private func littleEndian(at offset: Int, width: Int) -> UInt64? {
        guard contains(offset: offset, count: width) else { return nil }
        var value: UInt64 = 0
        for i in 0..<width {
            value |= UInt64(bytes[offset + i]) << UInt64(8 * i)
        }
        return value
    }
}

/// The framing both DMAR and IVRS share: the 36-byte standard ACPI header (ACPI 6.5, 5.2.6),
/// whose u32 at offset 4 is the length of the whole table, followed by 12 table-specific bytes.
enum ACPITableFrame {
    static let standardHeaderSize = 36
    /// DMAR and IVRS both begin their structure lists at offset 48.
    static let headerSize = 48

    /// Checks the signature and the length field and returns a reader limited to the table.
    ///
    /// The length field is believed when it is no larger than the bytes present; when it claims
    /// more (a "lying" length), only what is present is readable. Returns nil, with an error,
    /// when the bytes are not a `signature` table at all.
    static func open(
        _ bytes: [UInt8],
        signature: String,
        file: String,
        diagnostics: inout [Diagnostic]
    ) -> ByteReader? {
        let expected = Array(signature.utf8)
        guard bytes.count >= expected.count, Array(bytes.prefix(expected.count)) == expected else {
            let found = bytes.isEmpty ? "an empty file" : "signature \"\(printable(bytes.prefix(4)))\""
            diagnostics.append(.atOffset(.error, file: file, 0, "not a \(signature) table: found \(found)"))
            return nil
        }
        guard let declared = ByteReader(bytes).u32(at: 4) else {
            diagnostics.append(
                .atOffset(
                    .error, file: file, bytes.count,
                    "table cut short at \(bytes.count) bytes, before its length field at offset 0x4"))
            return nil
        }
        // A u32 always fits an Int on the 64-bit platforms this package supports; saturate anyway.
        let length = Int(exactly: declared) ?? Int.max
        if length > bytes.count {
            diagnostics.append(
                .atOffset(
                    .error, file: file, 4,
                    "header length \(length) exceeds the \(bytes.count) bytes present: the table is cut short at "
                        + "offset \(Hex(UInt64(bytes.count))); parsing only what is present"))
        } else if length < bytes.count {
            diagnostics.append(
                .atOffset(
                    .warning, file: file, 4,
                    "header length \(length) is less than the \(bytes.count) bytes present; "
                        + "ignoring the \(bytes.count - length) trailing bytes"))
        }
        if length < headerSize {
            diagnostics.append(
                .atOffset(
                    .error, file: file, 4,
                    "header length \(length) is below the \(headerSize) bytes a \(signature) header needs; "
                        + "the table holds no structures"))
        }
        // The checksum covers exactly `length` bytes, so it means something only when all are present.
        if length >= standardHeaderSize && length <= bytes.count {
            var sum: UInt8 = 0
            for byte in bytes[0..<length] { sum &+= byte }
            if sum != 0 {
                diagnostics.append(
                    .atOffset(
                        .warning, file: file, 9,
                        "checksum mismatch: the table's bytes sum to \(Hex(UInt64(sum))) (mod 256), not 0; "
                            + "the table may be corrupt"))
            }
        }
        return ByteReader(bytes, end: length)
    }

    /// Renders untrusted bytes as ASCII, escaping anything unprintable as `\xNN`.
    static func printable(_ bytes: ArraySlice<UInt8>) -> String {
        var text = ""
        for byte in bytes {
            if byte >= 0x20 && byte < 0x7f && byte != UInt8(ascii: "\\") && byte != UInt8(ascii: "\"") {
                text.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                let hex = String(byte, radix: 16)
                text += "\\x" + (hex.count < 2 ? "0" + hex : hex)
            }
        }
        return text
    }
}

/// One structure of a DMAR or IVRS body, once its length has been checked.
struct ACPIStructure {
    var type: UInt16
    var offset: Int
    var length: Int
    /// The table, limited to the end of this structure.
    var bytes: ByteReader
}

extension ACPITableFrame {
    /// Walks the structures that follow the 48-byte header back to back, each starting with a
    /// type (a u16 in DMAR, a u8 in IVRS) and a u16 length at +2. As in the kernel's
    /// dmar_walk_remapping_entries, a bad length ends the walk (the next structure's position
    /// depends on it) with an error naming the offset; everything before it is kept.
    static func structures(
        _ table: ByteReader, typeWidth: Int, file: String, diagnostics: inout [Diagnostic],
        describe: (UInt16) -> (name: String, minimumLength: Int)
    ) -> [ACPIStructure] {
        var found: [ACPIStructure] = []
        var offset = headerSize
        func stop(_ message: String) {
            diagnostics.append(.atOffset(.error, file: file, offset, message))
        }
        while offset < table.end {
            let type = typeWidth == 1 ? table.u8(at: offset).map(UInt16.init) : table.u16(at: offset)
            guard let type, let rawLength = table.u16(at: offset + 2) else {
                stop("structure header cut short: \(table.end - offset) bytes left, 4 needed; stopping here")
                return found
            }
            let (name, minimumLength) = describe(type)
            let length = Int(rawLength)
            if length == 0 {
                stop("\(name) has length 0; stopping here, as the walk could not advance")
                return found
            }
            if length < minimumLength {
                stop("\(name) length \(length) is below its minimum of \(minimumLength) bytes; stopping here")
                return found
            }
            guard table.contains(offset: offset, count: length) else {
                stop(
                    "\(name) of \(length) bytes runs past the end of the table at \(Hex(UInt64(table.end))); "
                        + "stopping here")
                return found
            }
            found.append(
                ACPIStructure(type: type, offset: offset, length: length, bytes: table.limited(to: offset + length)))
            offset += length
        }
        return found
    }
}
