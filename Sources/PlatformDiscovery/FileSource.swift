import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Read-only access to a machine's files below a root, so discovery can run against the real
/// `/` or a fixture tree. Paths are relative to the root (`sys/kernel/iommu_groups`).
public protocol FileSource: Sendable {
    /// The display root, prefixed to paths in diagnostics when it is not `/`.
    var root: String { get }
    /// The file's bytes, or nil when it does not exist or cannot be read.
    func read(_ path: String) -> [UInt8]?
    /// The names in a directory (without `.` and `..`), or nil when it is not one.
    func list(_ path: String) -> [String]?
    /// A symbolic link's target, or nil when it is not one.
    func readLink(_ path: String) -> String?
}

/// The real file system, below `root`.
public struct DiskFileSource: FileSource {
    public let root: String
    /// sysfs and ACPI files are small; anything bigger than this is not what we expect.
    public static let maximumFileSize = 16 << 20

    public init(root: String = "/") {
        self.root = root
    }

    private func absolute(_ path: String) -> FilePath {
        FilePath(root).appending(path)
    }

    public func read(_ path: String) -> [UInt8]? {
        Self.readFile(absolute(path))
    }

    /// Reads a whole file (up to `maximumFileSize`); nil when it cannot be opened or read.
    public static func readFile(_ path: FilePath) -> [UInt8]? {
        guard let fd = try? FileDescriptor.open(path, .readOnly, options: [.closeOnExec]) else {
            return nil
        }
        defer { try? fd.close() }
        var bytes: [UInt8] = []
        // sysfs files are at most a page; bigger files take more rounds.
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < maximumFileSize {
            // sysfs files report a size of 4096 whatever they hold, so read until EOF.
            guard let count = try? chunk.withUnsafeMutableBytes({ try fd.read(into: $0, retryOnInterrupt: true) })
            else { return nil }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[..<count])
        }
        return bytes
    }

    public func list(_ path: String) -> [String]? {
        guard let dir = opendir(absolute(path).string) else { return nil }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    public func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink(absolute(path).string, &buffer, buffer.count - 1)
        guard count >= 0 else { return nil }
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension FileSource {
    /// The file as text, or nil.
    func text(_ path: String) -> String? {
        read(path).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The display name of a path for diagnostics and sources.
    func display(_ path: String) -> String {
        root == "/" ? "/" + path : FilePath(root).appending(path).string
    }
}
