/// One client command that passed `RequestDecoder`: its payload is well-formed and its reserved
/// fields are zero. What the values mean (flags, alignment, quotas) is the policy engine's job.
public enum Request: Sendable, Hashable {
    case version(VersionPayload)
    case dmaMap(DMAMapPayload)
    case dmaUnmap(DMAUnmapPayload)
    case deviceGetInfo(DeviceInfoPayload)
    case attachGroup(AttachGroupPayload)
    case queryRanges(QueryRangesPayload)
    case explain(DMAMapPayload)
    case deviceFD(DeviceFDPayload)

    public var command: Command {
        switch self {
        case .version: .version
        case .dmaMap: .dmaMap
        case .dmaUnmap: .dmaUnmap
        case .deviceGetInfo: .deviceGetInfo
        case .attachGroup: .attachGroup
        case .queryRanges: .queryRanges
        case .explain: .explain
        case .deviceFD: .deviceFD
        }
    }

    /// Appends the payload bytes (no header).
    public func encodePayload(into buffer: inout [UInt8]) {
        switch self {
        case .version(let payload): payload.encode(into: &buffer)
        case .dmaMap(let payload): payload.encode(into: &buffer)
        case .dmaUnmap(let payload): payload.encode(into: &buffer)
        case .deviceGetInfo(let payload): payload.encode(into: &buffer)
        case .attachGroup(let payload): payload.encode(into: &buffer)
        case .queryRanges(let payload): payload.encode(into: &buffer)
        case .explain(let payload): payload.encode(into: &buffer)
        case .deviceFD(let payload): payload.encode(into: &buffer)
        }
    }
}

/// The daemon's validate-and-translate layer (the iommufd pattern): it knows each command's
/// payload size and refuses unknown commands, wrong sizes, stray fds and non-zero reserved
/// fields, so nothing behind it ever sees a malformed wire struct. It decides; it does no I/O.
public enum RequestDecoder {
    /// Validates and translates one complete client message. `fdCount` is how many fds arrived
    /// with it (SCM_RIGHTS). The checks run in this order, and the first that fails is returned:
    /// header, command number, fd count, payload size, argsz, reserved fields.
    public static func decode(header: MessageHeader, payload: some Collection<UInt8>, fdCount: Int)
        -> Result<Request, WireError>
    {
        let payloadCount = payload.count
        if let error = checkHeader(header, payloadCount: payloadCount) { return .failure(error) }
        guard let command = Command(rawValue: header.command) else {
            return .failure(WireError(errno: WireErrno.ENOSYS, reason: "unknown command \(hex(header.command))"))
        }
        if let error = checkFDCount(fdCount, for: command) { return .failure(error) }

        switch command {
        case .version:
            return decodeVersion(payload).map(Request.version)
        case .dmaMap, .explain:
            if let error = exactSize(command, payloadCount, DMAMapPayload.size) { return .failure(error) }
            let map = DMAMapPayload(decoding: payload)!
            if let error = exactArgsz(command, map.argsz, DMAMapPayload.size) { return .failure(error) }
            return .success(command == .dmaMap ? .dmaMap(map) : .explain(map))
        case .dmaUnmap:
            if let error = exactSize(command, payloadCount, DMAUnmapPayload.size) { return .failure(error) }
            let unmap = DMAUnmapPayload(decoding: payload)!
            // argsz is the reply limit, and the reply echoes these 24 bytes. A larger struct
            // would only matter with a dirty bitmap, which the daemon does not offer;
            // libvfio-user likewise refuses an argsz that is too short or too large.
            if let error = exactArgsz(command, unmap.argsz, DMAUnmapPayload.size) { return .failure(error) }
            return .success(.dmaUnmap(unmap))
        case .deviceGetInfo:
            if let error = exactSize(command, payloadCount, DeviceInfoPayload.size) { return .failure(error) }
            let info = DeviceInfoPayload(decoding: payload)!
            // argsz is the largest reply the client accepts; the reply is 16 bytes.
            guard info.argsz >= DeviceInfoPayload.size else {
                return .failure(
                    invalid("\(command) argsz \(info.argsz), below the \(DeviceInfoPayload.size)-byte reply"))
            }
            // vfio-user.rst, "VFIO_USER_DEVICE_GET_INFO": all other fields must be zero.
            let reserved = [("flags", info.flags), ("num_regions", info.numRegions), ("num_irqs", info.numIRQs)]
            for (field, value) in reserved {
                if let error = mustBeZero(command, field, value) { return .failure(error) }
            }
            return .success(.deviceGetInfo(info))
        case .attachGroup:
            if let error = exactSize(command, payloadCount, AttachGroupPayload.size) { return .failure(error) }
            let attach = AttachGroupPayload(decoding: payload)!
            if let error = exactArgsz(command, attach.argsz, AttachGroupPayload.size)
                ?? mustBeZero(command, "flags", attach.flags) ?? mustBeZero(command, "pad", attach.pad)
            {
                return .failure(error)
            }
            return .success(.attachGroup(attach))
        case .queryRanges:
            if let error = exactSize(command, payloadCount, QueryRangesPayload.size) { return .failure(error) }
            let query = QueryRangesPayload(decoding: payload)!
            if let error = exactArgsz(command, query.argsz, QueryRangesPayload.size)
                ?? mustBeZero(command, "flags", query.flags)
            {
                return .failure(error)
            }
            return .success(.queryRanges(query))
        case .deviceFD:
            if let error = exactSize(command, payloadCount, DeviceFDPayload.size) { return .failure(error) }
            let request = DeviceFDPayload(decoding: payload)!
            if let error = exactArgsz(command, request.argsz, DeviceFDPayload.size)
                ?? mustBeZero(command, "flags", request.flags) ?? mustBeZero(command, "pad", request.pad)
            {
                return .failure(error)
            }
            guard request.device != nil else {
                return .failure(
                    invalid("\(command) device must be a NUL-terminated PCI address in printable ASCII, NUL-padded"))
            }
            return .success(.deviceFD(request))
        }
    }

    /// `decode(header:payload:fdCount:)` for a frame from `FrameReader`.
    public static func decode(_ frame: Frame, fdCount: Int) -> Result<Request, WireError> {
        decode(header: frame.header, payload: frame.payload, fdCount: fdCount)
    }

    private static func invalid(_ reason: String) -> WireError {
        WireError(errno: WireErrno.EINVAL, reason: reason)
    }

    /// vfio-user.rst, "Header": a client sends commands; the error flag belongs to replies and
    /// the error field is reserved in a command. Unassigned flag bits are refused too, as iommufd
    /// refuses unknown flags: accepting them would let clients depend on them being ignored.
    private static func checkHeader(_ header: MessageHeader, payloadCount: Int) -> WireError? {
        let type = header.flags & MessageHeader.typeMask
        if type == MessageHeader.typeReply {
            return invalid("message type 1 is a reply, expected a command")
        }
        if type != MessageHeader.typeCommand {
            return invalid("message type \(type) is undefined, expected a command")
        }
        if header.isError {
            return invalid("error flag set on a command")
        }
        if header.error != 0 {
            return invalid("error field \(header.error) must be 0 in a command")
        }
        let unknownFlags = header.flags & ~MessageHeader.knownFlags
        if unknownFlags != 0 {
            return invalid("header flags \(hex(header.flags)) set undefined bits \(hex(unknownFlags))")
        }
        // FrameReader guarantees this; a caller that assembled header and payload itself might not.
        if UInt64(header.messageSize) != UInt64(MessageHeader.size) + UInt64(payloadCount) {
            return invalid(
                "msg_size \(header.messageSize) does not match the 16-byte header and \(payloadCount)-byte payload")
        }
        return nil
    }

    /// Only DMA_MAP takes an fd (the memory backing the mapping, vfio-user.rst,
    /// "VFIO_USER_DMA_MAP"), and at most one. An fd anywhere else would be a descriptor the
    /// daemon holds for no reason; libvfio-user likewise refuses a VERSION that carries fds.
    private static func checkFDCount(_ fdCount: Int, for command: Command) -> WireError? {
        if fdCount < 0 { return invalid("fd count \(fdCount) is negative") }
        switch command {
        case .dmaMap:
            return fdCount <= 1 ? nil : invalid("DMA_MAP carries at most one fd, got \(fdCount)")
        default:
            return fdCount == 0 ? nil : invalid("\(command) carries no fds, got \(fdCount)")
        }
    }

    /// The fixed-size commands have no optional tail, so any other size is a client that
    /// disagrees with us about the layout; guessing which fields it meant would be worse.
    private static func exactSize(_ command: Command, _ count: Int, _ expected: Int) -> WireError? {
        count == expected ? nil : invalid("\(command) payload \(count) bytes, expected \(expected)")
    }

    private static func exactArgsz(_ command: Command, _ argsz: UInt32, _ expected: Int) -> WireError? {
        argsz == expected ? nil : invalid("\(command) argsz \(argsz), expected \(expected)")
    }

    private static func mustBeZero(_ command: Command, _ field: String, _ value: UInt32) -> WireError? {
        value == 0 ? nil : invalid("\(command) \(field) \(hex(value)) must be 0")
    }

    private static func decodeVersion(_ payload: some Collection<UInt8>) -> Result<VersionPayload, WireError> {
        VersionPayload.parse(payload).mapError { problem in
            switch problem {
            case .tooShort(let count):
                invalid("VERSION payload \(count) bytes, expected at least \(VersionPayload.minimumSize)")
            case .notTerminated:
                invalid("version data is not NUL-terminated")
            case .embeddedNUL(let offset):
                invalid("version data has a NUL at payload offset \(offset) before its end")
            }
        }
    }
}

/// Builds command messages: the client library's half of the wire, and the tests' source of
/// well-formed input.
public enum RequestEncoder {
    /// Appends a command message: header (type command, error 0, msg_size covering the
    /// payload) and payload. With `noReply` the server sends no reply (vfio-user.rst, "Header").
    public static func encode(
        messageID: UInt16, command: Command, payload: some Collection<UInt8>, noReply: Bool = false,
        into buffer: inout [UInt8]
    ) {
        let header = MessageHeader(
            messageID: messageID, command: command.rawValue,
            messageSize: UInt32(MessageHeader.size + payload.count),
            flags: MessageHeader.typeCommand | (noReply ? MessageHeader.noReplyFlag : 0), error: 0)
        header.encode(into: &buffer)
        buffer.append(contentsOf: payload)
    }

    /// Appends `request` as a command message, writing the payload in place.
    public static func encode(messageID: UInt16, request: Request, noReply: Bool = false, into buffer: inout [UInt8]) {
        let start = buffer.count
        MessageHeader(
            messageID: messageID, command: request.command.rawValue, messageSize: 0,
            flags: MessageHeader.typeCommand | (noReply ? MessageHeader.noReplyFlag : 0), error: 0
        ).encode(into: &buffer)
        request.encodePayload(into: &buffer)
        // msg_size sits at header offset 4; it is known only once the payload is written.
        let size = UInt32(buffer.count - start)
        for index in 0..<4 {
            buffer[start + 4 + index] = UInt8(truncatingIfNeeded: size >> (8 * index))
        }
    }
}
