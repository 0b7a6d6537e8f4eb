/// The errno values that travel in vfio-user replies. The module imports no C library, so the
/// Linux numbers (asm-generic/errno-base.h and errno.h) are spelled out here. vfio-user.rst,
/// "Header": the reply's Error field is "a UNIX errno value", and our peers are Linux processes.
public enum WireErrno {
    public static let EPERM: Int32 = 1
    public static let ENOENT: Int32 = 2
    public static let EIO: Int32 = 5
    public static let EBADF: Int32 = 9
    public static let ENOMEM: Int32 = 12
    public static let EBUSY: Int32 = 16
    public static let EEXIST: Int32 = 17
    public static let EINVAL: Int32 = 22
    public static let ENOSPC: Int32 = 28
    public static let ENOSYS: Int32 = 38
    public static let EPROTO: Int32 = 71
    public static let EOVERFLOW: Int32 = 75
    public static let EMSGSIZE: Int32 = 90

    /// The symbolic name of a number listed above, or the number itself, so that log lines and
    /// error descriptions read like the kernel's.
    public static func name(of errno: Int32) -> String {
        switch errno {
        case EPERM: "EPERM"
        case ENOENT: "ENOENT"
        case EIO: "EIO"
        case EBADF: "EBADF"
        case ENOMEM: "ENOMEM"
        case EBUSY: "EBUSY"
        case EEXIST: "EEXIST"
        case EINVAL: "EINVAL"
        case ENOSPC: "ENOSPC"
        case ENOSYS: "ENOSYS"
        case EPROTO: "EPROTO"
        case EOVERFLOW: "EOVERFLOW"
        case EMSGSIZE: "EMSGSIZE"
        default: "errno \(errno)"
        }
    }
}

/// Why a message was refused: the errno the peer receives and one line for the log. Every
/// validation rule has its own reason, so a log line tells which rule fired without rereading
/// the bytes.
public struct WireError: Error, Hashable, Sendable, CustomStringConvertible {
    public var errno: Int32
    public var reason: String

    public init(errno: Int32, reason: String) {
        self.errno = errno
        self.reason = reason
    }

    /// For example "EINVAL (22): DMA_MAP argsz 31, expected 32", in the form
    /// `iommu-policyctl check` prints its denials.
    public var description: String { "\(WireErrno.name(of: errno)) (\(errno)): \(reason)" }
}

/// Lower-case hex with a `0x` prefix, as the reasons print flag words and command numbers.
func hex(_ value: some BinaryInteger) -> String {
    "0x" + String(value, radix: 16)
}
