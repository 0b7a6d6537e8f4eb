import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// A system call that failed: which call, and the errno it left.
///
/// Its description reads `recvmsg: Connection reset by peer (ECONNRESET)`, so a log line or an
/// audit record says what failed without a lookup table.
public struct SystemCallError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The call's name as the man page spells it (`recvmsg`, `bind`, `memfd_create`).
    public var call: String
    public var errno: Errno

    public init(call: String, errno: Errno) {
        self.call = call
        self.errno = errno
    }

    public var description: String {
        "\(call): \(errno) (\(Self.symbolicName(errno)))"
    }

    /// The C name of an errno value (`ECONNRESET`), or `errno N` for one not listed here.
    /// Errno's own description is strerror's sentence, which does not name the constant.
    public static func symbolicName(_ errno: Errno) -> String {
        symbolicNames[errno.rawValue] ?? "errno \(errno.rawValue)"
    }

    private static let symbolicNames: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", ESRCH: "ESRCH", EINTR: "EINTR", EIO: "EIO", ENXIO: "ENXIO",
        E2BIG: "E2BIG", EBADF: "EBADF", ECHILD: "ECHILD", EAGAIN: "EAGAIN", ENOMEM: "ENOMEM",
        EACCES: "EACCES", EFAULT: "EFAULT", EBUSY: "EBUSY", EEXIST: "EEXIST", EXDEV: "EXDEV",
        ENODEV: "ENODEV", ENOTDIR: "ENOTDIR", EISDIR: "EISDIR", EINVAL: "EINVAL", ENFILE: "ENFILE",
        EMFILE: "EMFILE", ENOTTY: "ENOTTY", EFBIG: "EFBIG", ENOSPC: "ENOSPC", ESPIPE: "ESPIPE",
        EROFS: "EROFS", EPIPE: "EPIPE", ERANGE: "ERANGE", ENAMETOOLONG: "ENAMETOOLONG", ENOSYS: "ENOSYS",
        ENOTEMPTY: "ENOTEMPTY", ELOOP: "ELOOP", EOVERFLOW: "EOVERFLOW", ENOTSOCK: "ENOTSOCK",
        EDESTADDRREQ: "EDESTADDRREQ", EMSGSIZE: "EMSGSIZE", EPROTOTYPE: "EPROTOTYPE",
        ENOPROTOOPT: "ENOPROTOOPT", EPROTONOSUPPORT: "EPROTONOSUPPORT", EOPNOTSUPP: "EOPNOTSUPP",
        EAFNOSUPPORT: "EAFNOSUPPORT", EADDRINUSE: "EADDRINUSE", EADDRNOTAVAIL: "EADDRNOTAVAIL",
        ENETDOWN: "ENETDOWN", ECONNABORTED: "ECONNABORTED", ECONNRESET: "ECONNRESET", ENOBUFS: "ENOBUFS",
        EISCONN: "EISCONN", ENOTCONN: "ENOTCONN", ESHUTDOWN: "ESHUTDOWN", ETOOMANYREFS: "ETOOMANYREFS",
        ETIMEDOUT: "ETIMEDOUT", ECONNREFUSED: "ECONNREFUSED", EALREADY: "EALREADY",
        EINPROGRESS: "EINPROGRESS", ECANCELED: "ECANCELED",
    ]
}

/// The one funnel every system call in this module goes through.
///
/// `body` makes the call and returns its result; -1 means failure with the reason in errno.
/// EINTR is retried, because a signal delivered to a session thread is never a reason to fail
/// its I/O. Any other errno is thrown as a `SystemCallError` named `name`.
///
/// Not for `close`: Linux releases the descriptor even when close reports EINTR, so retrying
/// it could close a descriptor another thread has just been given. `UnixSocket.close()` calls
/// it directly.
public func syscall<T: FixedWidthInteger & SignedInteger>(
    _ name: String, _ body: () -> T
) throws(SystemCallError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = Glibc.errno
        if code == EINTR { continue }
        throw SystemCallError(call: name, errno: Errno(rawValue: code))
    }
}
