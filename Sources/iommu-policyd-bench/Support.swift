import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A failure that ends the benchmark, with what it was doing.
struct BenchFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

// MARK: Time

/// CLOCK_MONOTONIC in nanoseconds (a vDSO call, about 20 ns here).
@inline(__always)
func nowNanoseconds() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
}

func sleep(seconds: Double) {
    guard seconds > 0 else { return }
    var request = timespec(tv_sec: Int(seconds), tv_nsec: Int((seconds - Double(Int(seconds))) * 1e9))
    var remaining = timespec()
    while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
}

/// Sleeps until CLOCK_MONOTONIC reaches `deadline` (ns).
func sleep(untilNanoseconds deadline: UInt64) {
    var time = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
    while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &time, nil) == EINTR {}
}

/// p50 and p99 of samples in nanoseconds, nearest-rank on the sorted samples.
struct Percentiles: Codable {
    var count: Int
    var p50Nanoseconds: UInt64
    var p99Nanoseconds: UInt64

    init(_ samples: [UInt64]) {
        let sorted = samples.sorted()
        count = sorted.count
        p50Nanoseconds = sorted.isEmpty ? 0 : sorted[(sorted.count - 1) * 50 / 100]
        p99Nanoseconds = sorted.isEmpty ? 0 : sorted[(sorted.count - 1) * 99 / 100]
    }

    init(count: Int, p50: UInt64, p99: UInt64) {
        self.count = count
        p50Nanoseconds = p50
        p99Nanoseconds = p99
    }

    var p50Microseconds: Double { Double(p50Nanoseconds) / 1000 }
    var p99Microseconds: Double { Double(p99Nanoseconds) / 1000 }
}

// MARK: CPU affinity

/// sched_getaffinity/sched_setaffinity are declared only under _GNU_SOURCE, which Swift's
/// Glibc module does not see; glibc exports them all the same.
enum Affinity {
    private typealias Call = @convention(c) (pid_t, Int, UnsafeMutableRawPointer) -> Int32
    private static let maskBytes = 128
    private static func resolve(_ name: String) -> Call? {
        dlsym(UnsafeMutableRawPointer(bitPattern: 0), name).map { unsafeBitCast($0, to: Call.self) }
    }

    /// The calling thread's CPU mask (one bit per CPU), or nil when it cannot be read.
    static func current() -> [UInt64]? {
        guard let get = resolve("sched_getaffinity") else { return nil }
        var mask = [UInt64](repeating: 0, count: maskBytes / 8)
        return mask.withUnsafeMutableBytes { get(0, maskBytes, $0.baseAddress!) } == 0 ? mask : nil
    }

    /// Sets the calling thread's mask; threads and processes it starts afterwards inherit it.
    @discardableResult
    static func set(_ mask: [UInt64]) -> Bool {
        guard let set = resolve("sched_setaffinity") else { return false }
        var copy = mask
        return copy.withUnsafeMutableBytes { set(0, maskBytes, $0.baseAddress!) } == 0
    }

    static func only(cpu: Int) -> [UInt64] {
        var mask = [UInt64](repeating: 0, count: maskBytes / 8)
        mask[cpu / 64] = UInt64(1) << UInt64(cpu % 64)
        return mask
    }

    /// Runs `body` with the calling thread pinned to `cpu` (nil: unpinned), then restores its mask.
    static func pinned<T>(to cpu: Int?, _ body: () throws -> T) throws -> T {
        guard let cpu else { return try body() }
        let saved = current()
        guard set(only(cpu: cpu)) else {
            throw BenchFailure("cannot pin to CPU \(cpu): \(String(cString: strerror(errno)))")
        }
        defer { if let saved { set(saved) } }
        return try body()
    }
}

// MARK: /proc

enum ProcFS {
    static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))
    static let pageSize = UInt64(sysconf(Int32(_SC_PAGESIZE)))

    /// utime + stime of the whole process (every thread), in nanoseconds; 10 ms resolution.
    static func cpuNanoseconds(pid: pid_t) -> UInt64? {
        cpuTimes(pid: pid).map { $0.user + $0.system }
    }

    /// utime and stime of the whole process (every thread), in nanoseconds, from /proc/PID/stat.
    static func cpuTimes(pid: pid_t) -> (user: UInt64, system: UInt64)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return nil }
        // Fields after "(comm)": state is field 3, utime 14, stime 15.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (UInt64(user / ticksPerSecond * 1e9), UInt64(system / ticksPerSecond * 1e9))
    }

    /// Resident bytes (statm's second field times the page size).
    static func residentBytes(pid: pid_t) -> UInt64? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/statm", encoding: .utf8) else { return nil }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = UInt64(fields[1]) else { return nil }
        return pages * pageSize
    }

    /// The fraction of all CPUs' time spent busy over `seconds` (from /proc/stat): whether
    /// something else is running while the bench is not.
    static func busyFraction(over seconds: Double) -> Double {
        func sample() -> (busy: UInt64, total: UInt64)? {
            guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
                let line = text.split(separator: "\n").first, line.hasPrefix("cpu ")
            else { return nil }
            let values = line.split(separator: " ").dropFirst().compactMap { UInt64($0) }
            guard values.count >= 5 else { return nil }
            let idle = values[3] + values[4]  // idle + iowait
            let total = values.prefix(8).reduce(0, +)
            return (total - idle, total)
        }
        guard let before = sample() else { return 0 }
        sleep(seconds: seconds)
        guard let after = sample(), after.total > before.total else { return 0 }
        return Double(after.busy - before.busy) / Double(after.total - before.total)
    }

    /// All CPUs' busy and steal time so far (seconds), from /proc/stat's `cpu` line.
    static func systemCPU() -> (busy: Double, steal: Double) {
        guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
            let line = text.split(separator: "\n").first, line.hasPrefix("cpu ")
        else { return (0, 0) }
        let values = line.split(separator: " ").dropFirst().compactMap { Double($0) }
        guard values.count >= 8 else { return (0, 0) }
        // user nice system idle iowait irq softirq steal
        let busy = values[0] + values[1] + values[2] + values[5] + values[6]
        return (busy / ticksPerSecond, values[7] / ticksPerSecond)
    }

    /// This process's CPU time plus that of its children it has waited for (seconds).
    static func ownCPUWithChildren() -> Double {
        var usage = rusage()
        var children = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        getrusage(RUSAGE_CHILDREN.rawValue, &children)
        func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
        return seconds(usage.ru_utime) + seconds(usage.ru_stime) + seconds(children.ru_utime)
            + seconds(children.ru_stime)
    }

    /// The 1-minute load average.
    static var loadAverage: Double {
        let text = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? ""
        return text.split(separator: " ").first.flatMap { Double($0) } ?? 0
    }

    static var cpuCount: Int { Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) }

    static var cpuModel: String {
        let text = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let line = text.split(separator: "\n").first { $0.hasPrefix("model name") }
        return line.flatMap { $0.split(separator: ":", maxSplits: 1).last }.map {
            $0.trimmingCharacters(in: .whitespaces)
        } ?? "unknown"
    }

    static var kernel: String {
        var name = utsname()
        uname(&name)
        return withUnsafeBytes(of: &name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }
}

// MARK: Processes

/// A child started with posix_spawn from the calling thread, so it inherits that thread's CPU
/// mask (which is how the pinned phases pin the daemon and the C programs).
final class ChildProcess: @unchecked Sendable {
    let pid: pid_t
    let name: String
    private var status: Int32?

    /// `stdout`/`stderr`: a file to write (created), or nil for /dev/null.
    init(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil, stdout: String? = nil,
        stderr: String? = nil
    ) throws {
        name = (executable as NSString).lastPathComponent
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout ?? "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderr ?? "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        let environment = environment ?? ProcessInfo.processInfo.environment
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in envp { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, nil, argv, envp)
        guard result == 0 else {
            throw BenchFailure("cannot start \(executable): \(String(cString: strerror(result)))")
        }
        self.pid = pid
    }

    /// The exit status once it has exited (nil while running).
    func poll() -> Int32? {
        if let status { return status }
        var raw: Int32 = 0
        if waitpid(pid, &raw, WNOHANG) == pid { status = raw }
        return status
    }

    var isRunning: Bool { poll() == nil }

    @discardableResult
    func wait() -> Int32 {
        if let status { return status }
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
        status = raw
        return raw
    }

    /// SIGTERM, up to `grace` seconds to exit, then SIGKILL.
    func stop(grace: Double = 5) {
        guard isRunning else { return }
        kill(pid, SIGTERM)
        let deadline = nowNanoseconds() + UInt64(grace * 1e9)
        while isRunning && nowNanoseconds() < deadline { usleep(5000) }
        if isRunning {
            kill(pid, SIGKILL)
            wait()
        }
    }

    deinit { stop(grace: 1) }
}

/// A fresh directory, removed when the value goes away unless `keep`.
final class ScratchDirectory: @unchecked Sendable {
    let path: String
    var keep = false

    /// tmpfs when there is one: the generated sysfs tree then lives in memory, as sysfs does,
    /// and writing its 20,000 files takes a fraction of a second rather than seconds on a busy disk.
    static var defaultBase: String {
        if access("/dev/shm", W_OK | X_OK) == 0 { return "/dev/shm" }
        return ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
    }

    init(prefix: String, base: String = ScratchDirectory.defaultBase) throws {
        var template = Array("\(base)/\(prefix)-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw BenchFailure("mkdtemp in \(base): \(String(cString: strerror(errno)))")
        }
        path = String(cString: made)
    }

    deinit {
        if !keep { try? FileManager.default.removeItem(atPath: path) }
    }
}

// MARK: systemd readiness

/// The NOTIFY_SOCKET end the bench owns: an AF_UNIX datagram socket that receives the
/// daemon's sd_notify messages (READY=1, STATUS=...).
final class NotifyListener: @unchecked Sendable {
    let path: String
    private let fd: Int32

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw BenchFailure("socket(AF_UNIX, SOCK_DGRAM): \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw BenchFailure("notify socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        unlink(path)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0 else { throw BenchFailure("bind \(path): \(String(cString: strerror(errno)))") }
    }

    deinit {
        close(fd)
        unlink(path)
    }

    /// Waits for a datagram containing READY=1 and returns the CLOCK_MONOTONIC time (ns) at
    /// which it was received; nil on timeout or when `alive` turns false.
    func waitForReady(timeout: Double, alive: () -> Bool) -> UInt64? {
        let deadline = nowNanoseconds() + UInt64(timeout * 1e9)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while nowNanoseconds() < deadline {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&poller, 1, 20) > 0 {
                let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                let received = nowNanoseconds()
                if count > 0, String(decoding: buffer[..<count], as: UTF8.self).contains("READY=1") {
                    return received
                }
                continue
            }
            if !alive() { return nil }
        }
        return nil
    }
}

// MARK: Threads

/// A flag threads poll without locks.
final class Phase: Sendable {
    static let warmUp = 0
    static let measure = 1
    static let stop = 2
    private let value = Atomic<Int>(0)
    func set(_ phase: Int) { value.store(phase, ordering: .releasing) }
    var current: Int { value.load(ordering: .acquiring) }
}

/// Starts `count` threads running `body(index)` and returns a function that waits for them all.
func startThreads(_ count: Int, name: String, _ body: @escaping @Sendable (Int) -> Void) -> () -> Void {
    let done = DispatchGroup()
    for index in 0..<count {
        done.enter()
        let thread = Thread {
            body(index)
            done.leave()
        }
        thread.name = "\(name)-\(index)"
        thread.start()
    }
    return { done.wait() }
}

// MARK: Formatting

func format(_ value: Double, _ digits: Int = 1) -> String {
    String(format: "%.\(digits)f", value)
}

func formatCount(_ value: Double) -> String {
    if value >= 10_000 { return String(format: "%.0fk", value / 1000) }
    return String(format: "%.0f", value)
}
