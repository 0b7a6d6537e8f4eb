/// The error classes this server sends (qmp-spec.rst, "Error": QEMU uses GenericError for
/// nearly everything; the other historical classes are kept only for compatibility).
public enum QMPErrorClass: String, Hashable, Sendable {
    /// Every failure except an unknown command.
    case genericError = "GenericError"
    /// The `execute` name is not a command.
    case commandNotFound = "CommandNotFound"
}

/// A failure as a QMP error reply carries it: a class and one human-readable line. Every
/// rejection has its own desc, naming the member or argument at fault, so the reply, the log
/// line and the audit record all tell which rule fired.
public struct QMPError: Error, Hashable, Sendable, CustomStringConvertible {
    public var errorClass: QMPErrorClass
    /// The reply's `desc`.
    public var desc: String

    public init(_ errorClass: QMPErrorClass, _ desc: String) {
        self.errorClass = errorClass
        self.desc = desc
    }

    /// A GenericError.
    public static func generic(_ desc: String) -> QMPError {
        QMPError(.genericError, desc)
    }

    /// QEMU's words for an unknown command: "The command NAME has not been found".
    public static func commandNotFound(_ command: String) -> QMPError {
        QMPError(.commandNotFound, "The command \(command) has not been found")
    }

    /// For example "GenericError: Parameter 'iova' is missing".
    public var description: String { "\(errorClass.rawValue): \(desc)" }
}
