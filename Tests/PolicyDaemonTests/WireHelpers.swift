import VFIOUserWire

enum MessageHeaderBytes {
    static func append(id: UInt16, command: UInt16, size: UInt32, flags: UInt32 = 0, into bytes: inout [UInt8]) {
        MessageHeader(messageID: id, command: command, messageSize: size, flags: flags, error: 0).encode(into: &bytes)
    }
}
