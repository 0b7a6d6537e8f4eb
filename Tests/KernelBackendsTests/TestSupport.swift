import Foundation
import IOMMUBackends
import IOMMUCore
import TestSupport
import Testing

/// A little-endian byte buffer laid out field by field, the way the kernel fills an ioctl's
/// answer on x86_64.
struct KernelBytes {
    private(set) var bytes: [UInt8] = []

    var count: Int { bytes.count }

    mutating func u16(_ value: UInt16) { append(value) }
    mutating func u32(_ value: UInt32) { append(value) }
    mutating func u64(_ value: UInt64) { append(value) }

    /// Zero bytes up to a multiple of `alignment`, as vfio_info_cap_add aligns each capability.
    mutating func pad(to alignment: Int) {
        while bytes.count % alignment != 0 { bytes.append(0) }
    }

    mutating func set32(at offset: Int, _ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { raw in
            for (index, byte) in raw.enumerated() { bytes[offset + index] = byte }
        }
    }

    private mutating func append<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }
}

/// The BackendError a throwing call threw, or nil when it returned (or threw something else,
/// which is recorded as an issue).
func backendError<T>(_ body: () throws -> T) -> BackendError? {
    do {
        _ = try body()
        return nil
    } catch let error as BackendError {
        return error
    } catch {
        Issue.record("expected a BackendError, got \(error)")
        return nil
    }
}

func range(_ first: UInt64, _ last: UInt64) -> IOVARange {
    IOVARange(first: first, last: last)!
}

/// Open descriptors of this process whose /proc link target is `path`.
func openDescriptors(to path: String) -> Int {
    let directory = "/proc/self/fd"
    let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
    return names.filter { (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\($0)")) == path }
        .count
}

/// Lines of /proc/self/maps that map `path`.
func daemonMappings(of path: String) -> [String] {
    // One read of a /proc file stops at a page; FileHandle reads to the end.
    let data = (try? FileHandle(forReadingAtPath: "/proc/self/maps")?.readToEnd()) ?? nil
    let maps = String(decoding: data ?? Data(), as: UTF8.self)
    return maps.split(separator: "\n").map(String.init).filter { $0.hasSuffix(" " + path) }
}

extension TemporaryDirectory {
    func makeDirectory(_ relative: String) throws {
        try FileManager.default.createDirectory(
            atPath: path + "/" + relative, withIntermediateDirectories: true)
    }

    func link(_ relative: String, to target: String) throws {
        let url = URL(fileURLWithPath: path).appendingPathComponent(relative)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: url.path, withDestinationPath: target)
    }
}
