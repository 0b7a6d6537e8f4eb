import CLinuxShim
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// What `UnixSocket.receive(into:maxFDs:)` got from one recvmsg.
///
/// `@unchecked Sendable` because swift-system withholds Sendable from `FileDescriptor` as a
/// matter of policy; the value is an integer, and whoever holds this result owns the fds.
public struct ReceiveResult: Hashable, @unchecked Sendable {
    /// Bytes received; 0 means the peer closed its end (or this end was shut down for reading).
    public var count: Int
    /// Descriptors received with these bytes (close-on-exec). The caller owns them and must
    /// close every one, including those it does not want.
    public var fds: [FileDescriptor]
    /// Fds were lost: the sender attached more than fit in the control buffer (the kernel
    /// dropped the rest) or more than `maxFDs` (the extras were closed here). Those that are in
    /// `fds` are real. A tenant that does this is misbehaving; treat it as a protocol error.
    public var truncated: Bool

    public init(count: Int, fds: [FileDescriptor], truncated: Bool) {
        self.count = count
        self.fds = fds
        self.truncated = truncated
    }
}

/// The credentials a socket's peer had when it connected (SO_PEERCRED).
public struct PeerCredentials: Hashable, Sendable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32

    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }
}

/// A Unix stream socket: a plain value over a `FileDescriptor`, like swift-system's. Copies
/// share the descriptor; whoever owns the socket closes it once, with `close()`.
///
/// Every descriptor made here is close-on-exec, and so is every descriptor received.
///
/// Threads: one thread may block in `receive`, `accept` or `waitReadable` while another calls
/// `shutdown(.read)` (or `.both`) on the same socket to wake it: a blocked receive then returns
/// a count of 0, and a blocked accept on a listening socket throws EINVAL. That is how a
/// session is stopped. Close only after the blocked thread has returned: closing under it
/// does not wake it, and the descriptor number may already belong to something else.
///
/// `@unchecked Sendable` because `FileDescriptor` is not Sendable (a swift-system policy, not a
/// property of the integer); the rules above are the real contract.
public struct UnixSocket: Hashable, @unchecked Sendable {
    public let fd: FileDescriptor

    /// Wraps a descriptor that is already a Unix stream socket, such as one systemd passed.
    public init(fd: FileDescriptor) {
        self.fd = fd
    }

    /// Which direction `shutdown` closes.
    public enum ShutdownHow: Sendable {
        case read
        case write
        case both

        var rawValue: Int32 {
            switch self {
            case .read: Int32(SHUT_RD)
            case .write: Int32(SHUT_WR)
            case .both: Int32(SHUT_RDWR)
            }
        }
    }

    // MARK: - Making sockets

    /// Binds and listens on `path` (SOCK_STREAM, close-on-exec), with the file's mode set to
    /// `mode` before the socket starts listening, so no client connects under umask's mode.
    ///
    /// A socket file at `path` that nobody listens on (a daemon that died) is replaced. A live
    /// one, or anything at `path` that is not a socket, is left alone and the call throws
    /// `bind` EADDRINUSE. The liveness probe and the unlink are not atomic: two daemons started
    /// at the same instant on one stale path can both decide it is stale; systemd socket
    /// activation is the way to rule that out.
    public static func listen(
        path: String, mode: UInt32 = 0o660, backlog: Int32 = 128
    ) throws(SystemCallError) -> UnixSocket {
        let address = try socketAddress(path, call: "bind")
        let socket = try makeStreamSocket()
        do throws(SystemCallError) {
            do {
                try socket.bind(address)
            } catch let error where error.errno == .addressInUse {
                guard isStaleSocketFile(path: path, address: address) else { throw error }
                _ = unlink(path)
                try socket.bind(address)
            }
            do {
                _ = try syscall("chmod") { chmod(path, mode_t(mode)) }
                _ = try syscall("listen") { Glibc.listen(socket.fd.rawValue, backlog) }
            } catch {
                // The file is ours (we just bound it); do not leave a dead socket behind.
                _ = unlink(path)
                throw error
            }
        } catch {
            socket.close()
            throw error
        }
        return socket
    }

    /// Connects to the listening socket at `path`.
    public static func connect(path: String) throws(SystemCallError) -> UnixSocket {
        let address = try socketAddress(path, call: "connect")
        let socket = try makeStreamSocket()
        do {
            try socket.connect(address)
        } catch {
            socket.close()
            throw error
        }
        return socket
    }

    /// Two connected sockets (socketpair), for tests and for talking to a child process.
    public static func pair() throws(SystemCallError) -> (UnixSocket, UnixSocket) {
        var fds: [Int32] = [-1, -1]
        _ = try syscall("socketpair") {
            socketpair(AF_UNIX, streamCloexec, 0, &fds)
        }
        return (UnixSocket(fd: FileDescriptor(rawValue: fds[0])), UnixSocket(fd: FileDescriptor(rawValue: fds[1])))
    }

    /// Accepts one connection (accept4 with SOCK_CLOEXEC).
    public func accept() throws(SystemCallError) -> UnixSocket {
        let raw = try syscall("accept4") { iommu_shim_accept(fd.rawValue) }
        return UnixSocket(fd: FileDescriptor(rawValue: raw))
    }

    // MARK: - Identity

    /// The peer's pid, uid and gid as they were when it connected (SO_PEERCRED). For a socket
    /// pair, those of the process that created the pair.
    public func peerCredentials() throws(SystemCallError) -> PeerCredentials {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
        _ = try syscall("getsockopt(SO_PEERCRED)") { iommu_shim_peercred(fd.rawValue, &pid, &uid, &gid) }
        return PeerCredentials(pid: pid, uid: uid, gid: gid)
    }

    // MARK: - Sending

    /// One sendmsg (MSG_NOSIGNAL: a closed peer throws EPIPE rather than raising SIGPIPE);
    /// returns the bytes sent, which may be fewer than `bytes.count`.
    ///
    /// `fds` travel as SCM_RIGHTS with the first byte sent, so they need at least one byte
    /// (EINVAL otherwise), and at most 253 of them fit in one message. The caller still owns
    /// its copies and closes them when it likes: the receiver gets duplicates.
    public func send(_ bytes: UnsafeRawBufferPointer, fds: [FileDescriptor] = []) throws(SystemCallError) -> Int {
        let raw = fds.map(\.rawValue)
        let sent = try syscall("sendmsg") {
            raw.withUnsafeBufferPointer { fdBuffer in
                iommu_shim_sendmsg(
                    fd.rawValue, bytes.baseAddress, bytes.count, fdBuffer.baseAddress, Int32(fdBuffer.count))
            }
        }
        return Int(sent)
    }

    /// Sends all of `bytes`, looping over short writes; `fds` go with the first chunk only.
    ///
    /// When it throws, an unknown prefix of `bytes` has been sent and the stream is out of
    /// step: close the connection. A send timeout (`setSendTimeout`) surfaces as EAGAIN.
    public func sendAll(_ bytes: some Collection<UInt8>, fds: [FileDescriptor] = []) throws(SystemCallError) {
        let sent = bytes.withContiguousStorageIfAvailable { buffer in
            Result { () throws(SystemCallError) in try sendAll(UnsafeRawBufferPointer(buffer), fds: fds) }
        }
        if let sent {
            try sent.get()
            return
        }
        let copy = Array(bytes)
        try copy.withUnsafeBytes { raw in
            Result { () throws(SystemCallError) in try sendAll(raw, fds: fds) }
        }.get()
    }

    /// Sends all of `bytes`, looping over short writes; `fds` go with the first chunk only.
    public func sendAll(_ bytes: UnsafeRawBufferPointer, fds: [FileDescriptor] = []) throws(SystemCallError) {
        if bytes.isEmpty && fds.isEmpty { return }
        var offset = try send(bytes, fds: fds)
        while offset < bytes.count {
            offset += try send(UnsafeRawBufferPointer(rebasing: bytes[offset...]))
        }
    }

    // MARK: - Receiving

    /// One recvmsg (MSG_CMSG_CLOEXEC) into `buffer`, which must not be empty.
    ///
    /// A count of 0 means the peer closed its end (or this end was shut down for reading).
    /// Received fds arrive with the recvmsg that returns the first byte they were sent with.
    /// That call may also return earlier bytes sent without fds, but never bytes sent after
    /// them, so fds can be tied to the message they came with.
    ///
    /// At most `maxFDs` fds (and at most 16, the control buffer's room) are returned; any
    /// others were closed and `truncated` is set.
    public func receive(
        into buffer: UnsafeMutableRawBufferPointer, maxFDs: Int = 8
    ) throws(SystemCallError) -> ReceiveResult {
        precondition(!buffer.isEmpty, "an empty buffer would make every read look like EOF")
        precondition(maxFDs >= 0)
        var raw = [Int32](repeating: -1, count: min(maxFDs, Int(IOMMU_SHIM_RECV_MAX_FDS)))
        var received: Int32 = 0
        var truncated: Int32 = 0
        let count = try syscall("recvmsg") {
            raw.withUnsafeMutableBufferPointer { fdBuffer in
                iommu_shim_recvmsg(
                    fd.rawValue, buffer.baseAddress, buffer.count, fdBuffer.baseAddress, Int32(fdBuffer.count),
                    &received, &truncated)
            }
        }
        return ReceiveResult(
            count: Int(count),
            fds: raw.prefix(Int(received)).map { FileDescriptor(rawValue: $0) },
            truncated: truncated != 0)
    }

    /// Waits until a read would not block: data, fds, the peer's hangup, an error, or a
    /// connection to accept. Hangup and error count as readable because the next read reports
    /// them (as a count of 0 or a thrown error). Returns false when `timeoutMilliseconds`
    /// passes first; nil waits for ever. A signal does not restart the full timeout.
    public func waitReadable(timeoutMilliseconds: Int32?) throws(SystemCallError) -> Bool {
        var entry = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
        let deadline = timeoutMilliseconds.map { monotonicMilliseconds() + Int64(max($0, 0)) }
        let ready = try syscall("poll") { () -> Int32 in
            // Evaluated again on each EINTR retry, so the wait shrinks to what is left.
            let timeout = deadline.map { Int32(clamping: max($0 - monotonicMilliseconds(), 0)) } ?? -1
            return poll(&entry, 1, timeout)
        }
        if ready == 0 { return false }
        if Int32(entry.revents) & POLLNVAL != 0 {
            throw SystemCallError(call: "poll", errno: .badFileDescriptor)
        }
        return Int32(entry.revents) & (POLLIN | POLLHUP | POLLERR) != 0
    }

    // MARK: - Options and teardown

    /// SO_RCVTIMEO: a receive that waits longer throws EAGAIN. 0 waits for ever (the default).
    public func setReceiveTimeout(milliseconds: Int) throws(SystemCallError) {
        try setTimeout(SO_RCVTIMEO, milliseconds: milliseconds, call: "setsockopt(SO_RCVTIMEO)")
    }

    /// SO_SNDTIMEO: a send that waits longer for buffer space (a peer that does not read)
    /// sends what fitted, or throws EAGAIN if nothing did. 0 waits for ever (the default).
    public func setSendTimeout(milliseconds: Int) throws(SystemCallError) {
        try setTimeout(SO_SNDTIMEO, milliseconds: milliseconds, call: "setsockopt(SO_SNDTIMEO)")
    }

    /// Shuts down one or both directions; safe to call from another thread to wake a reader.
    /// ENOTCONN (the peer is gone, or it was never connected) is not an error here.
    public func shutdown(_ how: ShutdownHow) throws(SystemCallError) {
        do {
            _ = try syscall("shutdown") { Glibc.shutdown(fd.rawValue, how.rawValue) }
        } catch let error where error.errno == .socketNotConnected {
            return
        }
    }

    /// Closes the descriptor. Errors are ignored: Linux releases the descriptor even when
    /// close reports one (EINTR included), so there is nothing to retry, and retrying could
    /// close a descriptor another thread has just been given.
    public func close() {
        _ = Glibc.close(fd.rawValue)
    }

    // MARK: - Internals

    private static var streamCloexec: Int32 {
        Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
    }

    private static func makeStreamSocket() throws(SystemCallError) -> UnixSocket {
        let raw = try syscall("socket") { socket(AF_UNIX, streamCloexec, 0) }
        return UnixSocket(fd: FileDescriptor(rawValue: raw))
    }

    /// A sockaddr_un for `path`. The kernel would truncate or reject a path that does not fit
    /// sun_path with its NUL; name the problem instead. An empty path would autobind in the
    /// abstract namespace, which is never what a caller of these functions means.
    private static func socketAddress(_ path: String, call: String) throws(SystemCallError) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        if bytes.isEmpty || bytes.contains(0) {
            throw SystemCallError(call: call, errno: .invalidArgument)
        }
        if bytes.count >= capacity {
            throw SystemCallError(call: call, errno: .fileNameTooLong)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        return address
    }

    private func bind(_ address: sockaddr_un) throws(SystemCallError) {
        _ = try syscall("bind") {
            withUnsafePointer(to: address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.bind(fd.rawValue, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
        }
    }

    private func connect(_ address: sockaddr_un) throws(SystemCallError) {
        // An AF_UNIX connect interrupted while waiting for backlog room leaves the socket
        // unconnected, so the funnel's retry is safe.
        _ = try syscall("connect") {
            withUnsafePointer(to: address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd.rawValue, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
        }
    }

    /// True when `path` is a socket file that refuses connections: its listener is gone.
    /// The probe does not block (a live listener with a full backlog answers EAGAIN, which
    /// counts as live), and anything that is not a socket is never called stale.
    private static func isStaleSocketFile(path: String, address: sockaddr_un) -> Bool {
        var info = Glibc.stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFSOCK else { return false }
        guard let probe = try? syscall("socket", { socket(AF_UNIX, streamCloexec | Int32(SOCK_NONBLOCK.rawValue), 0) })
        else { return false }
        defer { Glibc.close(probe) }
        do {
            try UnixSocket(fd: FileDescriptor(rawValue: probe)).connect(address)
            return false
        } catch {
            return error.errno == .connectionRefused
        }
    }

    private func setTimeout(_ option: Int32, milliseconds: Int, call: String) throws(SystemCallError) {
        precondition(milliseconds >= 0)
        var value = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
        _ = try syscall(call) {
            setsockopt(fd.rawValue, SOL_SOCKET, option, &value, socklen_t(MemoryLayout<timeval>.size))
        }
    }
}

/// CLOCK_MONOTONIC in milliseconds.
func monotonicMilliseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
}
