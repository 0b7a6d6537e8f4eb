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

    public var description: String { name }
}
