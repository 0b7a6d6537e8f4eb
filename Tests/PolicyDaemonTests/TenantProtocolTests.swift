import Foundation
import PolicyClient
import SystemPackage
import Testing
import UnixSockets
import VFIOUserWire

/// A raw connection for sending exactly the bytes a test wants.
final class RawConnection {
    let socket: UnixSocket
    /// Kept across calls: one read may carry several replies.
    private var reader = FrameReader(maximumMessageSize: 1 << 20)
    private var buffer = [UInt8](repeating: 0, count: 65536)

    init(_ path: String) throws {
        socket = try UnixSocket.connect(path: path)
    }

    static func frame(id: UInt16 = 7, command: UInt16, flags: UInt32 = 0, payload: [UInt8], size: UInt32? = nil)
        -> [UInt8]
    {
        var bytes: [UInt8] = []
        MessageHeader(
            messageID: id, command: command, messageSize: size ?? UInt32(16 + payload.count), flags: flags, error: 0
        ).encode(into: &bytes)
        return bytes + payload
    }

    static func version(major: UInt16 = 0, minor: UInt16 = 1, json: String? = "{\"capabilities\":{}}", nul: Bool = true)
        -> [UInt8]
    {
        var payload: [UInt8] = [UInt8(major & 0xff), UInt8(major >> 8), UInt8(minor & 0xff), UInt8(minor >> 8)]
        if let json { payload += Array(json.utf8) + (nul ? [0] : []) }
        return frame(command: Command.version.rawValue, payload: payload)
    }

    func send(_ bytes: [UInt8], fds: [FileDescriptor] = []) throws {
        try socket.sendAll(bytes, fds: fds)
    }

    /// The next reply's header and payload, or nil when the daemon closed the connection.
    func receive() throws -> (header: MessageHeader, payload: [UInt8])? {
        while true {
            if let next = reader.nextFrame(), case .success(let frame) = next {
                return (frame.header, Array(frame.payload))
            }
            guard try socket.waitReadable(timeoutMilliseconds: 5000) else { throw DaemonFailure("no reply in 5 s") }
            let result = try buffer.withUnsafeMutableBytes { try socket.receive(into: $0) }
            guard result.count > 0 else { return nil }
            buffer.withUnsafeBytes { reader.append(UnsafeRawBufferPointer(rebasing: $0[..<result.count])) }
        }
    }

    /// Sends one frame and returns the errno of its reply (0 for success).
    func errno(for bytes: [UInt8], fds: [FileDescriptor] = []) throws -> UInt32? {
        try send(bytes, fds: fds)
        guard let reply = try receive() else { return nil }
        return reply.header.isError ? reply.header.error : 0
    }

    /// True once the daemon has closed its end.
    func isClosedByPeer() throws -> Bool {
        var byte: [UInt8] = [0]
        guard try socket.waitReadable(timeoutMilliseconds: 5000) else { return false }
        let result = try byte.withUnsafeMutableBytes { try socket.receive(into: $0) }
        return result.count == 0
    }

    func close() { socket.close() }
}

func mapPayload(iova: UInt64, size: UInt64, flags: UInt32 = 3, offset: UInt64 = 0, argsz: UInt32 = 32) -> [UInt8] {
    var bytes: [UInt8] = []
    DMAMapPayload(argsz: argsz, flags: flags, offset: offset, address: iova, size: size).encode(into: &bytes)
    return bytes
}

@Suite(.serialized) struct TenantProtocolTests {
    @Test func versionRepliesWithOneFdTheMappingQuotaAndPageSizes() throws {
        let daemon = try DaemonProcess(config: "[defaults]\nmax_mappings = 123\n")
        let client = try daemon.client()
        #expect(client.serverVersion.major == 0)
        #expect(client.serverVersion.minor == 1)
        #expect((client.serverCapabilities["max_msg_fds"] as? NSNumber)?.intValue == 1)
        #expect((client.serverCapabilities["max_dma_maps"] as? NSNumber)?.intValue == 123)
        #expect((client.serverCapabilities["pgsizes"] as? NSNumber)?.uint64Value == 0x4020_1000)
        #expect((client.serverCapabilities["max_data_xfer_size"] as? NSNumber) != nil)
    }

    @Test func aFirstMessageThatIsNotVersionIsEINVALAndVersionMayFollow() throws {
        let daemon = try DaemonProcess()
        let raw = try RawConnection(daemon.socketPath)
        #expect(
            try raw.errno(for: RawConnection.frame(command: 2, payload: mapPayload(iova: 0x1000, size: 0x1000))) == 22)
        #expect(try raw.errno(for: RawConnection.version()) == 0)
    }

    @Test(arguments: [
        ("wrong major", RawConnection.version(major: 1)),
        ("malformed JSON", RawConnection.version(json: "{\"capabilities\":")),
        ("JSON that is not an object", RawConnection.version(json: "[1,2]")),
        ("JSON without its NUL", RawConnection.version(nul: false)),
        ("a reply instead of a command", RawConnection.frame(command: 1, flags: 1, payload: [0, 0, 1, 0])),
        ("a payload shorter than major and minor", RawConnection.frame(command: 1, payload: [0, 0])),
    ])
    func aBadVersionIsEINVAL(_ name: String, _ frame: [UInt8]) throws {
        let daemon = try DaemonProcess()
        let raw = try RawConnection(daemon.socketPath)
        #expect(try raw.errno(for: frame) == 22, "\(name)")
        #expect(try raw.errno(for: RawConnection.version()) == 0, "the connection stays usable after \(name)")
    }

    @Test func aMessageSizeBelowTheHeaderGetsAnErrorReplyAndTheConnectionIsClosed() throws {
        let daemon = try DaemonProcess()
        let raw = try RawConnection(daemon.socketPath)
        try raw.send(RawConnection.frame(command: 1, payload: [], size: 8))
        let reply = try #require(try raw.receive())
        #expect(reply.header.isError)
        #expect(reply.header.error == 22)
        #expect(try raw.isClosedByPeer())
    }

    @Test func aMessageSizeAboveTheMaximumGetsEMSGSIZEAndTheConnectionIsClosed() throws {
        let daemon = try DaemonProcess()
        let raw = try RawConnection(daemon.socketPath)
        #expect(try raw.errno(for: RawConnection.version()) == 0)
        try raw.send(RawConnection.frame(command: 2, payload: [], size: 1 << 20))
        let reply = try #require(try raw.receive())
        #expect(reply.header.error == 90)
        #expect(try raw.isClosedByPeer())
    }

    @Test func wrongArgszUnknownFlagsAndUnknownCommandsAreRefused() throws {
        let daemon = try DaemonProcess()
        let raw = try RawConnection(daemon.socketPath)
        #expect(try raw.errno(for: RawConnection.version()) == 0)
        #expect(
            try raw.errno(
                for: RawConnection.frame(command: 2, payload: mapPayload(iova: 0x1000, size: 0x1000, argsz: 31))) == 22)
        #expect(
            try raw.errno(
                for: RawConnection.frame(command: 2, payload: mapPayload(iova: 0x1000, size: 0x1000, flags: 0x10)))
                == 22)
        #expect(try raw.errno(for: RawConnection.frame(command: 3, payload: Array(repeating: 0, count: 24))) == 22)
        #expect(try raw.errno(for: RawConnection.frame(command: 9, payload: [])) == 38)
        #expect(try raw.errno(for: RawConnection.frame(command: 0x1007, payload: [])) == 38)
        #expect(
            try raw.errno(for: RawConnection.frame(command: 2, payload: mapPayload(iova: 0x1000, size: 0x1000))) == 0)
    }

    @Test func fdsWhereNoneBelongOrMoreThanOneAreEINVALAndAllAreClosed() throws {
        let daemon = try DaemonProcess()
        let raw = try RawConnection(daemon.socketPath)
        #expect(try raw.errno(for: RawConnection.version()) == 0)
        let baseline = daemon.fdCount
        let a = try Memfd.create(name: "a", size: 0x1000)
        let b = try Memfd.create(name: "b", size: 0x1000)
        defer {
            try? a.close()
            try? b.close()
        }
        var info: [UInt8] = []
        DeviceInfoPayload(argsz: 16, flags: 0, numRegions: 0, numIRQs: 0).encode(into: &info)
        #expect(try raw.errno(for: RawConnection.frame(command: 4, payload: info), fds: [a]) == 22)
        #expect(
            try raw.errno(
                for: RawConnection.frame(command: 2, payload: mapPayload(iova: 0x1000, size: 0x1000)), fds: [a, b])
                == 22)
        #expect(daemon.fdCount == baseline)
        #expect(try raw.errno(for: RawConnection.frame(command: 4, payload: info)) == 0)
    }

    @Test func aPeerThatDisconnectsMidMessageLeavesTheDaemonServing() throws {
        let daemon = try DaemonProcess()
        let raw = try RawConnection(daemon.socketPath)
        #expect(try raw.errno(for: RawConnection.version()) == 0)
        try raw.send(Array(RawConnection.frame(command: 2, payload: mapPayload(iova: 0x1000, size: 0x1000)).prefix(20)))
        raw.close()
        let client = try daemon.client()
        try client.map(iova: 0x1000, size: 0x1000)
        try daemon.eventually("the audit record of the cut message") {
            daemon.log.contains("disconnected in the middle of a message")
        }
    }

    @Test func deviceInfoIsADeviceWithNoRegionsAndNoInterrupts() throws {
        let daemon = try DaemonProcess()
        let reply = try daemon.client().deviceInfo()
        #expect(reply.count == 16)
        #expect(reply[0] == 16)
        #expect(reply[8..<16].allSatisfy { $0 == 0 })
    }
}
