import Foundation
import SystemPackage
import Testing
import UnixSockets

#if canImport(Glibc)
    import Glibc
#endif

/// A fresh directory under /tmp, removed with everything in it when the value goes away.
/// Socket paths must fit in 108 bytes, so this stays short.
final class TemporaryDirectory {
    let path: String

    init() {
        var template = Array("/tmp/unixsockets-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "mkdtemp failed")
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func file(_ name: String) -> String { path + "/" + name }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// Runs `body` on its own thread (not the test's), so a test can block one side of a socket
/// while it drives the other.
final class Background<T: Sendable>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var value: T?

    init(_ body: @escaping @Sendable () -> T) {
        let thread = Thread { [self] in
            let result = body()
            lock.withLock { value = result }
            done.signal()
        }
        thread.start()
    }

    /// The result, or nil when the body has not finished within `seconds`.
    func result(within seconds: Double) -> T? {
        guard done.wait(timeout: .now() + seconds) == .success else { return nil }
        return lock.withLock { value }
    }

    /// Whether the body has finished, without waiting.
    var finished: Bool { lock.withLock { value != nil } }
}

extension UnixSocket {
    func sendText(_ text: String, fds: [FileDescriptor] = []) throws {
        try sendAll(Array(text.utf8), fds: fds)
    }

    /// One receive of up to `capacity` bytes, as text and fds.
    func receiveText(capacity: Int = 4096, maxFDs: Int = 8) throws -> (
        text: String, fds: [FileDescriptor], truncated: Bool
    ) {
        var buffer = [UInt8](repeating: 0, count: capacity)
        let result = try buffer.withUnsafeMutableBytes { try receive(into: $0, maxFDs: maxFDs) }
        return (String(decoding: buffer[..<result.count], as: UTF8.self), result.fds, result.truncated)
    }

    /// Receives until `count` bytes have arrived (or EOF), returning them and every fd.
    func receiveExactly(_ count: Int) throws -> (bytes: [UInt8], fds: [FileDescriptor]) {
        var bytes: [UInt8] = []
        var fds: [FileDescriptor] = []
        var buffer = [UInt8](repeating: 0, count: count)
        while bytes.count < count {
            let want = count - bytes.count
            let result = try buffer.withUnsafeMutableBytes {
                try receive(into: UnsafeMutableRawBufferPointer(rebasing: $0[..<want]))
            }
            fds += result.fds
            if result.count == 0 { break }
            bytes += buffer[..<result.count]
        }
        return (bytes, fds)
    }
}

/// The SystemCallError `body` throws, or nil when it does not throw one.
func systemCallError(_ body: () throws -> Void) -> SystemCallError? {
    do {
        try body()
        return nil
    } catch let error as SystemCallError {
        return error
    } catch {
        return nil
    }
}

/// How many of this process's fds point at a memfd called `name`.
func openMemfds(named name: String) -> Int {
    FDCount.current { $0 == "/memfd:\(name) (deleted)" }
}

/// A memfd name no other test uses, so fd counts by name are immune to parallel tests.
func uniqueName(_ stem: String) -> String {
    "\(stem)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
}

/// Writes `text` at offset 0 of `fd` and reads back `count` bytes from offset 0.
func readBack(_ fd: FileDescriptor, count: Int) throws -> String {
    var buffer = [UInt8](repeating: 0, count: count)
    let read = try buffer.withUnsafeMutableBytes { try fd.read(fromAbsoluteOffset: 0, into: $0) }
    return String(decoding: buffer[..<read], as: UTF8.self)
}

func milliseconds(since start: ContinuousClock.Instant) -> Int {
    let elapsed = ContinuousClock.now - start
    return Int(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)
}
