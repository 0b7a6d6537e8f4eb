/// The 16-byte header that starts every vfio-user message, command or reply
/// (vfio-user.rst, "Header"). Decoding it checks nothing: whether a header is acceptable depends
/// on who sent it, so `RequestDecoder` and `ReplyDecoder` judge it.
public struct MessageHeader: Hashable, Sendable {
    /// vfio-user.rst, "Header": u16 msg_id, u16 command, u32 msg_size, u32 flags, u32 error.
    public static let size = 16

    /// Chosen by the sender and echoed in the reply; the receiver must not assume it is unique.
    public var messageID: UInt16
    public var command: UInt16
    /// The whole message, header included.
    public var messageSize: UInt32
    public var flags: UInt32
    /// An errno in a reply with the error flag; reserved (zero) in a command.
    public var error: UInt32

    public init(messageID: UInt16, command: UInt16, messageSize: UInt32, flags: UInt32, error: UInt32) {
        self.messageID = messageID
        self.command = command
        self.messageSize = messageSize
        self.flags = flags
        self.error = error
    }

    /// Flags bits 0-3 hold the message type.
    public static let typeMask: UInt32 = 0xf
    public static let typeCommand: UInt32 = 0
    public static let typeReply: UInt32 = 1
    /// Bit 4: the sender of a command wants no reply.
    public static let noReplyFlag: UInt32 = 1 << 4
    /// Bit 5: a reply reports failure; `error` then holds the errno (and may still be zero).
    public static let errorFlag: UInt32 = 1 << 5
    /// Every flag bit the spec defines. The rest are unassigned, and a strict decoder refuses
    /// them rather than guess what a future sender meant by them.
    public static let knownFlags: UInt32 = typeMask | noReplyFlag | errorFlag

    public var isCommand: Bool { flags & Self.typeMask == Self.typeCommand }
    public var isReply: Bool { flags & Self.typeMask == Self.typeReply }
    /// A command expects a reply unless it sets no_reply.
    public var wantsReply: Bool { flags & Self.noReplyFlag == 0 }
    public var isError: Bool { flags & Self.errorFlag != 0 }

    /// Reads the first 16 bytes; nil when there are fewer. Bytes after the header are ignored.
    public init?(decoding bytes: some Collection<UInt8>) {
        var reader = LittleEndianReader(bytes.makeIterator())
        guard let messageID = reader.read(UInt16.self),
            let command = reader.read(UInt16.self),
            let messageSize = reader.read(UInt32.self),
            let flags = reader.read(UInt32.self),
            let error = reader.read(UInt32.self)
        else { return nil }
        self.init(messageID: messageID, command: command, messageSize: messageSize, flags: flags, error: error)
    }

    /// Appends the 16 header bytes.
    public func encode(into buffer: inout [UInt8]) {
        buffer.appendLittleEndian(messageID)
        buffer.appendLittleEndian(command)
        buffer.appendLittleEndian(messageSize)
        buffer.appendLittleEndian(flags)
        buffer.appendLittleEndian(error)
    }
}

/// The commands this daemon answers. vfio-user.rst, "Commands", numbers the standard ones 1-18;
/// the daemon implements only the first four, and refuses the rest with ENOSYS like any number
/// it does not know. Its own extensions start at 0x1000, far from the standard range (which
/// stays below 32), so a future standard command cannot collide with them.
public enum Command: UInt16, Sendable, CaseIterable, CustomStringConvertible {
    case version = 1
    case dmaMap = 2
    case dmaUnmap = 3
    case deviceGetInfo = 4
    /// x-iommu-policyd: attach an IOMMU group to the session.
    case attachGroup = 0x1001
    /// x-iommu-policyd: list the ranges the session may map.
    case queryRanges = 0x1002
    /// x-iommu-policyd: decide a DMA_MAP without performing it, and say why.
    case explain = 0x1003
    /// x-iommu-policyd: a file descriptor for a device of an attached group.
    case deviceFD = 0x1004

    /// The spec's name without the `VFIO_USER_` prefix, as the reasons and logs print it.
    public var description: String {
        switch self {
        case .version: "VERSION"
        case .dmaMap: "DMA_MAP"
        case .dmaUnmap: "DMA_UNMAP"
        case .deviceGetInfo: "DEVICE_GET_INFO"
        case .attachGroup: "ATTACH_GROUP"
        case .queryRanges: "QUERY_RANGES"
        case .explain: "EXPLAIN"
        case .deviceFD: "DEVICE_FD"
        }
    }
}
