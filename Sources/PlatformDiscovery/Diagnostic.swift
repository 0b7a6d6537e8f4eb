/// A problem found while reading the platform or the config: it names the file and the place
/// in it, so an operator can go and look. Discovery collects these and carries on, so that one
/// bad file never hides the good ones.
public struct Diagnostic: Hashable, Sendable, CustomStringConvertible {
    public enum Severity: String, Sendable, Hashable {
        /// The input was unusable or partly unusable; something may be missing.
        case error
        /// The input was used, but something about it is suspect.
        case warning
    }

    public var severity: Severity
    /// The file as the operator would name it, for example `sys/firmware/acpi/tables/DMAR`.
    public var file: String
    /// Where in the file: `offset 0x30`, `line 3`; nil for the file as a whole.
    public var location: String?
    public var message: String

    public init(_ severity: Severity, file: String, location: String? = nil, _ message: String) {
        self.severity = severity
        self.file = file
        self.location = location
        self.message = message
    }

    public static func atOffset(_ severity: Severity, file: String, _ offset: Int, _ message: String) -> Diagnostic {
        Diagnostic(severity, file: file, location: "offset 0x" + String(offset, radix: 16), message)
    }

    public static func atLine(_ severity: Severity, file: String, _ line: Int, _ message: String) -> Diagnostic {
        Diagnostic(severity, file: file, location: "line \(line)", message)
    }

    public var description: String {
        "\(severity.rawValue): \(file)\(location.map { " " + $0 } ?? ""): \(message)"
    }
}
