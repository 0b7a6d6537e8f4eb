/// One command from the client (qmp-spec.rst, "Issuing Commands"):
/// `{"execute": NAME, "arguments": {...}, "id": ANY}`, where `arguments` and `id` are optional.
public struct QMPRequest: Hashable, Sendable {
    /// The `execute` member: the command's name.
    public var command: String
    /// The `arguments` member, empty when absent.
    public var arguments: QMPArguments
    /// The `id` member, any JSON value, echoed in the reply exactly as parsed; nil when absent,
    /// in which case the reply carries no `id`.
    public var id: QMPValue?

    public init(command: String, arguments: QMPArguments = QMPArguments(), id: QMPValue? = nil) {
        self.command = command
        self.arguments = arguments
        self.id = id
    }

    /// Parses the bytes of one value, as `QMPStreamSplitter` cuts them. The checks follow
    /// QEMU's qmp_dispatch_check_obj(), with its descs; unknown members are reported in
    /// sorted order, so the same input always gets the same reply. When the input is an
    /// object with an `id`, the error carries it, so the error reply echoes it even though
    /// the request was refused.
    public init(parsing bytes: some Collection<UInt8>) throws(QMPRequestError) {
        let value: QMPValue
        do {
            value = try QMPValue(parsing: bytes)
        } catch {
            throw QMPRequestError(error: error, id: nil)
        }
        guard case .object(let object) = value else {
            throw QMPRequestError(error: .generic("QMP input must be a JSON object"), id: nil)
        }
        let id = object["id"]
        func refuse(_ desc: String) -> QMPRequestError {
            QMPRequestError(error: .generic(desc), id: id)
        }
        for key in object.keys.sorted() {
            switch key {
            case "execute", "arguments", "id":
                continue
            case "exec-oob":
                // qmp-spec.rst, "Out-of-band execution": only offered when the greeting lists
                // the "oob" capability, which this server never does.
                throw refuse("QMP input member 'exec-oob' is unexpected: out-of-band execution is not supported")
            default:
                throw refuse("QMP input member '\(key)' is unexpected")
            }
        }
        guard let execute = object["execute"] else {
            throw refuse("QMP input lacks member 'execute'")
        }
        guard case .string(let command) = execute else {
            throw refuse("QMP input member 'execute' must be a string")
        }
        var arguments = QMPArguments()
        switch object["arguments"] {
        case nil:
            break
        case .object(let members)?:
            arguments = QMPArguments(members)
        case _?:
            throw refuse("QMP input member 'arguments' must be an object")
        }
        self.init(command: command, arguments: arguments, id: id)
    }

    /// The success reply to this request, `{"return": VALUE, "id": ...}`, CRLF-ended.
    public func successReply(_ value: QMPValue = [:]) -> [UInt8] {
        QMPMessage.success(value, id: id)
    }

    /// The error reply to this request, `{"error": {...}, "id": ...}`, CRLF-ended.
    public func errorReply(_ error: QMPError) -> [UInt8] {
        QMPMessage.error(error, id: id)
    }
}

/// A request refused before dispatch: why, and the request's `id` when it had a readable one.
public struct QMPRequestError: Error, Hashable, Sendable, CustomStringConvertible {
    public var error: QMPError
    /// The `id` to echo; nil when the input had none or was not a JSON object.
    public var id: QMPValue?

    public init(error: QMPError, id: QMPValue?) {
        self.error = error
        self.id = id
    }

    /// The error reply, CRLF-ended.
    public var reply: [UInt8] { QMPMessage.error(error, id: id) }

    public var description: String { error.description }
}
