/// The server's messages, each rendered as compact JSON ending in CRLF (qmp-spec.rst, "Wire
/// protocol"). Members come in the order below, every time.
public enum QMPMessage {
    /// The line terminator the server puts after every message.
    public static let terminator: [UInt8] = [ASCII.carriageReturn, ASCII.lineFeed]

    /// `{"QMP": {"version": {"qemu": {"major": M, "minor": m, "micro": u}, "package": P},
    /// "capabilities": []}}`. The capability list is empty: this server offers no "oob".
    public static func greeting(major: Int, minor: Int, micro: Int, package: String) -> [UInt8] {
        let version: QMPValue = [
            "qemu": ["major": .int(Int64(major)), "minor": .int(Int64(minor)), "micro": .int(Int64(micro))],
            "package": .string(package),
        ]
        return line(["QMP": ["version": version, "capabilities": []]])
    }

    /// `{"return": VALUE, "id": ID}`; `id` only when the request had one. A command with
    /// nothing to return returns `{}`.
    public static func success(_ value: QMPValue, id: QMPValue?) -> [UInt8] {
        var reply: QMPObject = ["return": value]
        reply["id"] = id
        return line(.object(reply))
    }

    /// `{"error": {"class": CLASS, "desc": DESC}, "id": ID}`; `id` only when the request had one.
    public static func error(_ errorClass: QMPErrorClass, _ desc: String, id: QMPValue?) -> [UInt8] {
        var reply: QMPObject = ["error": ["class": .string(errorClass.rawValue), "desc": .string(desc)]]
        reply["id"] = id
        return line(.object(reply))
    }

    /// The error reply for `error`.
    public static func error(_ error: QMPError, id: QMPValue?) -> [UInt8] {
        self.error(error.errorClass, error.desc, id: id)
    }

    /// `{"event": NAME, "data": {...}, "timestamp": {"seconds": S, "microseconds": US}}`;
    /// `data` only when given, as QEMU omits it for events that carry none.
    public static func event(_ name: String, data: QMPObject?, seconds: Int64, microseconds: Int64) -> [UInt8] {
        var event: QMPObject = ["event": .string(name)]
        if let data {
            event["data"] = .object(data)
        }
        event["timestamp"] = ["seconds": .int(seconds), "microseconds": .int(microseconds)]
        return line(.object(event))
    }

    /// `value` rendered and CRLF-ended.
    public static func line(_ value: QMPValue) -> [UInt8] {
        var bytes: [UInt8] = []
        value.render(into: &bytes)
        bytes += terminator
        return bytes
    }
}
