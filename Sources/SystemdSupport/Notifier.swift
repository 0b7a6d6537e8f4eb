import CSystemd
import Glibc

/// Readiness, status and watchdog messages to the service manager, through libsystemd's
/// sd_notify. Without NOTIFY_SOCKET every call does nothing, so the daemon runs the same way
/// outside systemd.
public struct SystemdNotifier: Sendable {
    public init() {}

    /// True when a service manager listens (NOTIFY_SOCKET is set).
    public var isActive: Bool { getenv("NOTIFY_SOCKET") != nil }

    @discardableResult
    public func send(_ state: String) -> Bool {
        sd_notify(0, state) > 0
    }

    public func ready(status: String) { send("READY=1\nSTATUS=\(Self.oneLine(status))") }
    public func status(_ status: String) { send("STATUS=\(Self.oneLine(status))") }
    public func stopping() { send("STOPPING=1") }
    public func watchdog() { send("WATCHDOG=1") }

    /// RELOADING=1 with the monotonic time newer systemd versions (Type=notify-reload) expect.
    public func reloading() {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let microseconds = UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
        send("RELOADING=1\nMONOTONIC_USEC=\(microseconds)")
    }

    /// The watchdog interval the manager asked for (WATCHDOG_USEC), if any.
    public var watchdogInterval: Duration? {
        var microseconds: UInt64 = 0
        guard sd_watchdog_enabled(0, &microseconds) > 0, microseconds > 0 else { return nil }
        return .microseconds(Int64(clamping: microseconds))
    }

    /// STATUS= is one line.
    static func oneLine(_ text: String) -> String {
        String(text.map { $0 == "\n" ? " " : $0 })
    }
}

/// Sockets handed over by socket activation.
public enum SocketActivation {
    public struct PassedSocket: Sendable, Hashable {
        /// The unit's FileDescriptorName=, or "unknown" when it set none.
        public var name: String
        public var fd: Int32
    }

    /// The listening sockets systemd (or systemd-socket-activate) passed, by name; empty when
    /// the daemon was started directly. Clears LISTEN_* so children do not inherit them.
    public static func passedSockets() -> [PassedSocket] {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let count = sd_listen_fds_with_names(1, &names)
        guard count > 0 else { return [] }
        defer { free(names) }
        var sockets: [PassedSocket] = []
        for index in 0..<Int(count) {
            let name = names?[index].map { String(cString: $0) } ?? "unknown"
            free(names?[index])
            sockets.append(PassedSocket(name: name, fd: SD_LISTEN_FDS_START + Int32(index)))
        }
        return sockets
    }

    /// Whether `fd` is a listening AF_UNIX stream socket, as the tenant and admin sockets must be.
    public static func isListeningUnixStream(_ fd: Int32) -> Bool {
        sd_is_socket_unix(fd, Int32(SOCK_STREAM.rawValue), 1, nil, 0) > 0
    }
}
