@_exported import TestSupport
import VFIOUserWire

extension RandomNumberGenerator {
    /// Random values biased towards the edges, where wire bugs live.
    mutating func edgy<T: FixedWidthInteger & UnsignedInteger>(_: T.Type = T.self) -> T {
        switch UInt8.random(in: 0..<6, using: &self) {
        case 0: 0
        case 1: T.max
        case 2: T(truncatingIfNeeded: UInt8.random(in: 0...40, using: &self))
        case 3: T.max - T(truncatingIfNeeded: UInt8.random(in: 0...3, using: &self))
        default: T.random(in: T.min...T.max, using: &self)
        }
    }

    /// JSON-ish bytes without a NUL, possibly empty.
    mutating func jsonWithoutNUL(maximumCount: Int = 60) -> [UInt8] {
        (0..<Int.random(in: 0...maximumCount, using: &self)).map { _ in UInt8.random(in: 1...255, using: &self) }
    }

    /// A request that `RequestDecoder` accepts.
    mutating func validRequest() -> Request {
        switch Int.random(in: 0..<7, using: &self) {
        case 0:
            return .version(VersionPayload(major: edgy(), minor: edgy(), json: jsonWithoutNUL()))
        case 1:
            return .dmaMap(DMAMapPayload(flags: edgy(), offset: edgy(), address: edgy(), size: edgy()))
        case 2:
            return .dmaUnmap(DMAUnmapPayload(flags: edgy(), address: edgy(), size: edgy()))
        case 3:
            return .deviceGetInfo(DeviceInfoPayload(argsz: UInt32.random(in: 16...UInt32.max, using: &self)))
        case 4:
            return .attachGroup(AttachGroupPayload(group: edgy()))
        case 5:
            return .queryRanges(QueryRangesPayload())
        default:
            return .explain(DMAMapPayload(flags: edgy(), offset: edgy(), address: edgy(), size: edgy()))
        }
    }
}

/// A command message built field by field, so tests can set what the encoders never would.
func message(
    id: UInt16 = 7, command: UInt16, flags: UInt32 = MessageHeader.typeCommand, error: UInt32 = 0,
    payload: [UInt8], messageSize: UInt32? = nil
) -> [UInt8] {
    var bytes: [UInt8] = []
    MessageHeader(
        messageID: id, command: command, messageSize: messageSize ?? UInt32(16 + payload.count), flags: flags,
        error: error
    ).encode(into: &bytes)
    return bytes + payload
}

/// Decodes one message given as bytes, as the daemon would after framing it.
func decode(_ bytes: [UInt8], fds: Int = 0) -> Result<Request, WireError> {
    let header = MessageHeader(decoding: bytes)!
    return RequestDecoder.decode(header: header, payload: bytes.dropFirst(16), fdCount: fds)
}

/// Decodes a command with a correct header and the given payload.
func decode(command: Command, payload: [UInt8], fds: Int = 0) -> Result<Request, WireError> {
    decode(message(command: command.rawValue, payload: payload), fds: fds)
}

/// The payload bytes of a value, little-endian.
func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.littleEndian) { Array($0) }
}

extension Result {
    var failure: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }

    var success: Success? {
        if case .success(let value) = self { return value }
        return nil
    }
}

let einval = WireErrno.EINVAL
