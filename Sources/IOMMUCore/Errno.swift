/// The errno values the policy engine answers with. The core imports no C library, so the
/// Linux numbers are spelled out here (asm-generic/errno-base.h and errno.h).
public struct ErrnoCode: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public let name: String

    private init(_ rawValue: Int32, _ name: String) {
        self.rawValue = rawValue
        self.name = name
    }

    public static let EPERM = ErrnoCode(1, "EPERM")
    public static let ENOENT = ErrnoCode(2, "ENOENT")
    public static let ENOMEM = ErrnoCode(12, "ENOMEM")
    public static let EBUSY = ErrnoCode(16, "EBUSY")
    public static let EEXIST = ErrnoCode(17, "EEXIST")
    public static let EINVAL = ErrnoCode(22, "EINVAL")
    public static let ENOSPC = ErrnoCode(28, "ENOSPC")
    public static let ENOSYS = ErrnoCode(38, "ENOSYS")
    public static let EOVERFLOW = ErrnoCode(75, "EOVERFLOW")
    public static let EIO = ErrnoCode(5, "EIO")
    public static let EFAULT = ErrnoCode(14, "EFAULT")
    public static let ENODEV = ErrnoCode(19, "ENODEV")
    public static let EOPNOTSUPP = ErrnoCode(95, "EOPNOTSUPP")

    /// An errno a kernel call returned: its usual Linux name when it is a common one.
    public init(kernel rawValue: Int32) {
        let names: [Int32: String] = [
            1: "EPERM", 2: "ENOENT", 4: "EINTR", 5: "EIO", 6: "ENXIO", 9: "EBADF", 11: "EAGAIN", 12: "ENOMEM",
            13: "EACCES", 14: "EFAULT", 16: "EBUSY", 17: "EEXIST", 19: "ENODEV", 22: "EINVAL", 24: "EMFILE",
            25: "ENOTTY", 28: "ENOSPC", 34: "ERANGE", 38: "ENOSYS", 75: "EOVERFLOW", 95: "EOPNOTSUPP",
        ]
        self.init(rawValue, names[rawValue] ?? "errno \(rawValue)")
    }

    public var description: String { name }
}
