/// Builds the daemon's replies. vfio-user.rst, "Header": a reply repeats the command's msg_id
/// and command, has type reply, and on failure sets the error flag with the errno in `error`.
public enum ReplyEncoder {
    /// A success reply: type reply, the request's msg_id and command, error 0, msg_size
    /// 16 + payload.
    public static func success(to request: MessageHeader, payload: some Collection<UInt8>, into buffer: inout [UInt8]) {
        let count = payload.count
        header(to: request, flags: MessageHeader.typeReply, error: 0, payloadCount: count).encode(into: &buffer)
        buffer.append(contentsOf: payload)
    }

    /// An error reply. vfio-user: "If an error occurs, the reply message must only include the
    /// reply header", so by default it is 16 bytes with the error flag and `errno`. When the
    /// client negotiated the x-iommu-policyd `error_detail` extension, pass `detail` (the
    /// denial's reason, typically): it follows the header and msg_size covers it.
    public static func error(to request: MessageHeader, errno: Int32, detail: [UInt8]?, into buffer: inout [UInt8]) {
        let detailCount = detail?.count ?? 0
        header(
            to: request, flags: MessageHeader.typeReply | MessageHeader.errorFlag,
            error: UInt32(bitPattern: errno), payloadCount: detailCount
        ).encode(into: &buffer)
        if let detail { buffer.append(contentsOf: detail) }
    }

    private static func header(to request: MessageHeader, flags: UInt32, error: UInt32, payloadCount: Int)
        -> MessageHeader
    {
        MessageHeader(
            messageID: request.messageID, command: request.command,
            messageSize: UInt32(MessageHeader.size + payloadCount), flags: flags, error: error)
    }
}

/// Checks the daemon's replies on the client side.
public enum ReplyDecoder {
    /// What a reply said: its payload, or the errno with any detail bytes (empty unless the
    /// error_detail extension was negotiated).
    public enum Outcome: Hashable, Sendable {
        case success(payload: ArraySlice<UInt8>)
        /// `errno` is passed through as sent; vfio-user allows 0 with the error flag set.
        case failure(errno: Int32, detail: ArraySlice<UInt8>)
    }

    /// Checks that `reply` answers `request` (type reply, same msg_id and command) and that its
    /// flags are ones a reply can carry. A mismatch is EPROTO: the stream is out of step or
    /// the server is not the daemon, and the client should not trust anything after it.
    public static func decode(_ reply: Frame, for request: MessageHeader) -> Result<Outcome, WireError> {
        let header = reply.header
        func proto(_ reason: String) -> Result<Outcome, WireError> {
            .failure(WireError(errno: WireErrno.EPROTO, reason: reason))
        }
        guard header.isReply else {
            return proto("message type \(header.flags & MessageHeader.typeMask) is not a reply")
        }
        guard header.messageID == request.messageID else {
            return proto("reply msg_id \(header.messageID) does not match request msg_id \(request.messageID)")
        }
        guard header.command == request.command else {
            return proto("reply command \(hex(header.command)) does not match request command \(hex(request.command))")
        }
        let allowed = MessageHeader.typeMask | MessageHeader.errorFlag
        guard header.flags & ~allowed == 0 else {
            return proto("reply flags \(hex(header.flags)) set bits a reply does not use")
        }
        guard UInt64(header.messageSize) == UInt64(MessageHeader.size) + UInt64(reply.payload.count) else {
            return proto("reply msg_size \(header.messageSize) does not match its \(reply.payload.count)-byte payload")
        }
        if header.isError {
            return .success(.failure(errno: Int32(bitPattern: header.error), detail: reply.payload))
        }
        guard header.error == 0 else {
            return proto("reply has error \(header.error) but no error flag")
        }
        return .success(.success(payload: reply.payload))
    }
}
