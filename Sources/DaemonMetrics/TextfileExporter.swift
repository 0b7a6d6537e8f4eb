import Dispatch
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Writing the metrics textfile failed: which file, which call, and the errno it left.
///
/// Its description reads `cannot write metrics textfile /var/lib/node_exporter/iommu.prom:
/// open: No such file or directory (errno 2)`.
public struct TextfileExportError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The destination path the caller asked for (not the temporary file beside it).
    public var path: String
    /// The call that failed, as the man page spells it: `open`, `write`, `fsync`, `close`, `rename`.
    public var call: String
    public var errno: Int32

    public init(path: String, call: String, errno: Int32) {
        self.path = path
        self.call = call
        self.errno = errno
    }

    public var description: String {
        "cannot write metrics textfile \(path): \(call): \(String(cString: strerror(errno))) (errno \(errno))"
    }
}

/// Writes `DaemonMetrics` for node_exporter's textfile collector, once or periodically.
///
/// The collector may read the file at any moment, so it must never see a half-written one: the
/// text goes to `<path>.tmp.<pid>` in the same directory (which the collector ignores, as it
/// reads only `*.prom`), is fsynced, and is renamed over `path`.
public final class TextfileExporter: Sendable {
    private let metrics: DaemonMetrics
    private let queue = DispatchQueue(label: "iommu-policyd.metrics-textfile")
    /// Serialises writes: the timer and a direct `write(to:)` share one temporary name.
    private let writing = Mutex(())
    private let running = Mutex<Running?>(nil)

    private struct Running {
        let timer: any DispatchSourceTimer
        let path: String
    }

    public init(metrics: DaemonMetrics) {
        self.metrics = metrics
    }

    deinit {
        running.withLock { $0?.timer.cancel() }
    }

    /// Atomically replaces `path` with the current metrics.
    public func write(to path: String) throws(TextfileExportError) {
        try writing.withLock { _ throws(TextfileExportError) in
            try replaceFile(path, with: metrics.prometheusText())
        }
    }

    /// Writes `path` now and then every `period` until `stop()`.
    ///
    /// A failure of the first write is thrown and nothing is started, so a misconfigured path
    /// shows at start-up. Later failures go to `onError`: a full disk must not stop the daemon.
    /// `onError` runs on the exporter's queue and must not call `stop()`, which waits for it.
    /// Starting again replaces the running schedule. Use one exporter per path: exporters do not
    /// share the lock that keeps their temporary files apart.
    public func start(
        every period: Duration = .seconds(10),
        path: String,
        onError: @escaping @Sendable (TextfileExportError) -> Void = { _ in }
    ) throws(TextfileExportError) {
        precondition(period > .zero, "the export period must be positive")
        try write(to: path)

        // Dispatch counts nanoseconds in an Int; an absurd period is clamped to 68 years.
        let interval = DispatchTimeInterval.nanoseconds(
            Int((Swift.min(period, .seconds(Int32.max)) / .nanoseconds(1)).rounded()))
        // The timer is made inside the lock: Dispatch's sources are not Sendable, so it must be
        // created in the region of the state that keeps it.
        running.withLock { running in
            running?.timer.cancel()
            let timer = DispatchSource.makeTimerSource(queue: queue)
            timer.schedule(deadline: .now() + interval, repeating: interval)
            timer.setEventHandler { [weak self] in
                do throws(TextfileExportError) {
                    try self?.write(to: path)
                } catch {
                    onError(error)
                }
            }
            timer.activate()
            running = Running(timer: timer, path: path)
        }
    }

    /// Stops the periodic writer and writes the file a last time; does nothing if not started.
    public func stop() throws(TextfileExportError) {
        let path = running.withLock { running -> String? in
            defer { running = nil }
            running?.timer.cancel()
            return running?.path
        }
        guard let path else { return }
        // Wait out a tick already writing, so that the final write is the last one.
        queue.sync {}
        try write(to: path)
    }
}

/// Replaces `path` with `text` through a temporary file beside it (written, fsynced, renamed;
/// removed on failure), so readers see the old file or the new one, never a part. The metrics
/// textfile and the daemon's state file both go through it.
public func replaceFile(_ path: String, with text: String) throws(TextfileExportError) {
    let temporary = "\(path).tmp.\(getpid())"
    let descriptor = try systemCall("open", path) {
        open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    }
    do throws(TextfileExportError) {
        do throws(TextfileExportError) {
            let bytes = Array(text.utf8)
            var offset = 0
            while offset < bytes.count {
                offset += try systemCall("write", path) {
                    bytes.withUnsafeBytes { write(descriptor, $0.baseAddress! + offset, $0.count - offset) }
                }
            }
            _ = try systemCall("fsync", path) { fsync(descriptor) }
        } catch {
            close(descriptor)
            throw error
        }
        // Not through `systemCall`: Linux releases the descriptor even when close fails, so a
        // retry could close one another thread has just been given.
        if close(descriptor) != 0 {
            throw TextfileExportError(path: path, call: "close", errno: errno)
        }
        _ = try systemCall("rename", path) { rename(temporary, path) }
    } catch {
        unlink(temporary)
        throw error
    }
}

/// The one funnel for this file's system calls: retries EINTR and throws any other errno as a
/// `TextfileExportError` naming `call` and `path`.
private func systemCall<T: FixedWidthInteger & SignedInteger>(
    _ call: String, _ path: String, _ body: () -> T
) throws(TextfileExportError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        if errno == EINTR { continue }
        throw TextfileExportError(path: path, call: call, errno: errno)
    }
}
