import SystemPackage
import UnixSockets

#if canImport(Glibc)
    import Glibc
#endif

struct GuestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

// MARK: Files

func readText(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var result: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = read(fd, &chunk, chunk.count)
        if count < 0 && errno == EINTR { continue }
        guard count > 0 else { break }
        result += chunk[..<count]
    }
    return String(decoding: result, as: UTF8.self)
}

func writeText(_ path: String, _ text: String, mode: mode_t = 0o644) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
    guard fd >= 0 else { throw KernelError(call: "open \(path)", errno: errno) }
    defer { close(fd) }
    let bytes = Array(text.utf8)
    guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == bytes.count else {
        throw KernelError(call: "write \(path)", errno: errno)
    }
}

func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

// MARK: PCI devices in sysfs

/// A PCI function found by vendor and device ID.
struct PCIDevice {
    var address: String
    var group: UInt32
    /// BAR0 as sysfs `resource` lists it: [start, end], inclusive.
    var bar0: (first: UInt64, last: UInt64)?

    static let devices = "/sys/bus/pci/devices"

    /// The first function whose `vendor` and `device` match `id` ("1234:11e8").
    static func find(_ id: String) throws -> PCIDevice {
        let parts = id.split(separator: ":").map { "0x" + $0 }
        guard let dir = opendir(devices) else { throw GuestFailure("cannot read \(devices)") }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            names.append(
                withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) })
        }
        for name in names.sorted() where !name.hasPrefix(".") {
            let vendor = readText("\(devices)/\(name)/vendor")?.trimmed
            let device = readText("\(devices)/\(name)/device")?.trimmed
            guard [vendor, device] == parts.map(Optional.some) else { continue }
            var target = [CChar](repeating: 0, count: 4096)
            let length = readlink("\(devices)/\(name)/iommu_group", &target, target.count - 1)
            guard length > 0 else { throw GuestFailure("\(name) has no IOMMU group (is the IOMMU on?)") }
            let link = String(decoding: target[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            guard let group = link.split(separator: "/").last.flatMap({ UInt32($0) }) else {
                throw GuestFailure("\(name): unreadable iommu_group link \(link)")
            }
            var bar0: (UInt64, UInt64)?
            if let first = readText("\(devices)/\(name)/resource")?.split(separator: "\n").first {
                let fields = first.split(separator: " ").compactMap { UInt64($0.dropFirst(2), radix: 16) }
                if fields.count >= 2, fields[1] > fields[0] { bar0 = (fields[0], fields[1]) }
            }
            return PCIDevice(address: name, group: group, bar0: bar0)
        }
        throw GuestFailure("no PCI device \(id)")
    }

    /// The device's VFIO cdev (/dev/vfio/devices/vfioN), on kernels with VFIO_DEVICE_CDEV.
    var cdev: String? {
        guard let dir = opendir("\(Self.devices)/\(address)/vfio-dev") else { return nil }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name.hasPrefix("vfio") { return "/dev/vfio/devices/\(name)" }
        }
        return nil
    }

    var driver: String? {
        var target = [CChar](repeating: 0, count: 4096)
        let length = readlink("\(Self.devices)/\(address)/driver", &target, target.count - 1)
        guard length > 0 else { return nil }
        let link = String(decoding: target[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return link.split(separator: "/").last.map(String.init)
    }

    /// Binds the function to vfio-pci (driver_override, then drivers_probe) and waits for its
    /// group's /dev/vfio node.
    func bindToVFIO() throws {
        if driver != "vfio-pci" {
            try writeText("\(Self.devices)/\(address)/driver_override", "vfio-pci")
            if driver != nil { try writeText("\(Self.devices)/\(address)/driver/unbind", address) }
            try writeText("/sys/bus/pci/drivers_probe", address)
        }
        for _ in 0..<200 where !exists("/dev/vfio/\(group)") { usleep(10_000) }
        guard driver == "vfio-pci", exists("/dev/vfio/\(group)") else {
            throw GuestFailure("\(address) did not bind to vfio-pci (driver: \(driver ?? "none"))")
        }
    }
}

extension StringProtocol {
    var trimmed: String {
        String(self.drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}

// MARK: Memory the tenant maps

/// A memfd of `size` bytes, also mapped into this process (MAP_SHARED) for direct VFIO maps.
final class SharedMemory {
    let fd: FileDescriptor
    let size: UInt64
    let address: UnsafeMutableRawPointer

    init(name: String, size: UInt64) throws {
        self.size = size
        fd = try Memfd.create(name: name, size: size)
        guard let mapped = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue, 0),
            mapped != MAP_FAILED
        else {
            try? fd.close()
            throw KernelError(call: "mmap memfd \(name)", errno: errno)
        }
        address = mapped
    }

    deinit {
        munmap(address, Int(size))
        try? fd.close()
    }

    var vaddr: UInt64 { UInt64(UInt(bitPattern: address)) }

    /// Writes through the file, not the mapping: what the daemon or the device sees is the
    /// file's pages either way.
    func fill(_ bytes: [UInt8]) throws {
        precondition(UInt64(bytes.count) <= size)
        guard bytes.withUnsafeBytes({ pwrite(fd.rawValue, $0.baseAddress, $0.count, 0) }) == bytes.count else {
            throw KernelError(call: "pwrite memfd", errno: errno)
        }
    }

    func contents(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        guard bytes.withUnsafeMutableBytes({ pread(fd.rawValue, $0.baseAddress, count, 0) }) == count else {
            throw KernelError(call: "pread memfd", errno: errno)
        }
        return bytes
    }
}

/// A recognisable 4 KiB pattern: `tag` in every byte's high nibble mix, never all one value.
func pattern(_ tag: UInt8, count: Int = 4096) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ Int(tag) &* 17 &+ ($0 >> 8)) ^ tag }
}

func describe(_ bytes: [UInt8]) -> String {
    if let first = bytes.first, bytes.allSatisfy({ $0 == first }) { return "all \(hex(UInt64(first)))" }
    return bytes.prefix(8).map { String($0, radix: 16) }.joined(separator: " ") + " …"
}

// MARK: Privileges

/// Becomes `uid`:`gid` with no supplementary groups, for good: the tenant is not root.
func dropPrivileges(uid: UInt32, gid: UInt32) throws {
    guard setgroups(0, nil) == 0 else { throw KernelError(call: "setgroups", errno: errno) }
    guard setgid(gid) == 0 else { throw KernelError(call: "setgid", errno: errno) }
    guard setuid(uid) == 0 else { throw KernelError(call: "setuid", errno: errno) }
    guard getuid() == uid, geteuid() == uid, getgid() == gid, setuid(0) != 0 else {
        throw GuestFailure("privileges were not dropped")
    }
}

// MARK: The kernel log

/// /dev/kmsg, opened as root and positioned at its end, read later as the tenant: the open is
/// what dmesg_restrict checks.
final class KernelLog {
    let fd: Int32

    init() throws {
        fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw KernelError(call: "open /dev/kmsg", errno: errno) }
        lseek(fd, 0, SEEK_END)
    }

    deinit { close(fd) }

    /// The messages logged since the last call (each record's text after its `prio,seq,...;`).
    func newMessages() -> [String] {
        var messages: [String] = []
        var record = [UInt8](repeating: 0, count: 8192)
        while true {
            let count = read(fd, &record, record.count)
            if count < 0 && errno == EINTR { continue }
            if count < 0 && errno == EPIPE { continue }  // overwritten records: go on with the next
            guard count > 0 else { break }
            let text = String(decoding: record[..<count], as: UTF8.self)
            let message = text.split(separator: ";", maxSplits: 1).last.map { $0.split(separator: "\n").first ?? "" }
            messages.append(String(message ?? ""))
        }
        return messages
    }
}

// MARK: Child processes

/// Starts this executable again with `arguments`; the child's stdout is a pipe the caller reads.
func spawnSelf(_ arguments: [String]) throws -> (pid: pid_t, stdout: Int32) {
    var pipeFDs: [Int32] = [-1, -1]
    guard pipe(&pipeFDs) == 0 else { throw KernelError(call: "pipe", errno: errno) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
    posix_spawn_file_actions_addclose(&actions, pipeFDs[0])
    let argv = (["/proc/self/exe"] + arguments).map { strdup($0) } + [nil]
    defer { for argument in argv { free(argument) } }
    var pid: pid_t = 0
    let result = posix_spawn(&pid, "/proc/self/exe", &actions, nil, argv, environ)
    close(pipeFDs[1])
    guard result == 0 else {
        close(pipeFDs[0])
        throw KernelError(call: "posix_spawn", errno: result)
    }
    return (pid, pipeFDs[0])
}

/// Reads one line from `fd` (blocking), or nil at end of file.
func readLine(_ fd: Int32) -> String? {
    var line: [UInt8] = []
    var byte: UInt8 = 0
    while true {
        let count = read(fd, &byte, 1)
        if count < 0 && errno == EINTR { continue }
        guard count == 1 else { return line.isEmpty ? nil : String(decoding: line, as: UTF8.self) }
        if byte == UInt8(ascii: "\n") { return String(decoding: line, as: UTF8.self) }
        line.append(byte)
    }
}
