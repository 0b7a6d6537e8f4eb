import CLinuxShim
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Anonymous memory files: what a vfio-user client hands over for DMA regions.
public enum Memfd {
    /// memfd_create(name, MFD_CLOEXEC), then ftruncate to `size` bytes. `name` shows up only
    /// in /proc (as `/memfd:NAME (deleted)`) and must be at most 249 bytes.
    /// The caller owns the descriptor.
    public static func create(name: String, size: UInt64) throws(SystemCallError) -> FileDescriptor {
        guard let length = Int64(exactly: size) else {
            throw SystemCallError(call: "ftruncate", errno: .fileTooLarge)
        }
        let raw = try syscall("memfd_create") {
            name.withCString { iommu_shim_memfd_create($0, iommu_shim_mfd_cloexec()) }
        }
        do {
            _ = try syscall("ftruncate") { ftruncate(raw, off_t(length)) }
        } catch {
            _ = Glibc.close(raw)
            throw error
        }
        return FileDescriptor(rawValue: raw)
    }
}

/// What fstat says about a descriptor.
public enum FileInfo {
    /// fstat: the size in bytes and whether it is a regular file (memfds are; sockets, pipes
    /// and devices are not). A received region fd that is not regular cannot be sized.
    public static func stat(_ fd: FileDescriptor) throws(SystemCallError) -> (size: UInt64, isRegular: Bool) {
        var info = Glibc.stat()
        _ = try syscall("fstat") { fstat(fd.rawValue, &info) }
        return (UInt64(clamping: info.st_size), info.st_mode & S_IFMT == S_IFREG)
    }
}

/// Counts open descriptors, for leak tests and for watching a tenant.
public enum FDCount {
    /// Open descriptors of this process (from /proc/self/fd, not counting the one used to
    /// read it). Without /proc, probes each descriptor number below the soft limit (capped).
    public static func current() -> Int {
        count(directory: "/proc/self/fd", skipOwnDescriptor: true, where: nil) ?? probeEachDescriptor()
    }

    /// Open descriptors of this process whose /proc link target satisfies `predicate`,
    /// such as `/memfd:NAME (deleted)` or `socket:[INODE]`. Unlike `current()`, a test that
    /// counts only its own memfds is not thrown off by other tests running in parallel.
    public static func current(where predicate: (String) -> Bool) -> Int {
        withoutActuallyEscaping(predicate) {
            count(directory: "/proc/self/fd", skipOwnDescriptor: true, where: $0) ?? 0
        }
    }

    /// Open descriptors of process `pid`, or nil when its /proc/PID/fd cannot be read
    /// (no such process, or not ours to look at).
    public static func of(pid: Int32) -> Int? {
        count(directory: "/proc/\(pid)/fd", skipOwnDescriptor: pid == getpid(), where: nil)
    }

    private static func count(
        directory: String, skipOwnDescriptor: Bool, where predicate: ((String) -> Bool)?
    ) -> Int? {
        guard let dir = opendir(directory) else { return nil }
        defer { closedir(dir) }
        let own = String(dirfd(dir))
        var total = 0
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name == "." || name == ".." || (skipOwnDescriptor && name == own) { continue }
            if let predicate {
                guard let target = linkTarget(directory + "/" + name), predicate(target) else { continue }
            }
            total += 1
        }
        return total
    }

    private static func linkTarget(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink(path, &buffer, buffer.count - 1)
        guard count >= 0 else { return nil }
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func probeEachDescriptor() -> Int {
        var limit = rlimit()
        var top: Int32 = 1024
        if getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 {
            top = Int32(clamping: limit.rlim_cur)
        }
        return (0..<min(top, 1 << 16)).filter { fcntl($0, F_GETFD) != -1 }.count
    }
}
