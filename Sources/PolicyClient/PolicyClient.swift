import Foundation
import SystemPackage
import UnixSockets
import VFIOUserWire

/// A refusal or failure reported by the daemon, with the decision detail when the session
/// negotiated it.
public struct PolicyError: Error, CustomStringConvertible, Sendable {
    public var errno: Int32
    public var reason: String?
    public var conflict: Conflict?

    public struct Conflict: Sendable, Hashable {
        public var kind: String
        public var first: UInt64
        public var last: UInt64
        public var source: String
    }

    public var description: String {
        let name = PolicyError.errnoNames[errno] ?? "errno \(errno)"
        return reason.map { "\(name): \($0)" } ?? name
    }

    static let errnoNames: [Int32: String] = [
        1: "EPERM", 2: "ENOENT", 9: "EBADF", 12: "ENOMEM", 16: "EBUSY", 17: "EEXIST", 22: "EINVAL", 28: "ENOSPC",
        38: "ENOSYS", 75: "EOVERFLOW",
    ]
}

/// The client side broke: the connection failed or the daemon's reply made no sense.
public struct PolicyClientFailure: Error, CustomStringConvertible, Sendable {
    public var description: String
}

/// The daemon's decision about one map, as EXPLAIN (and `iommu-policyctl check`) report it.
public struct Explanation: Sendable {
    public var allowed: Bool
    public var errno: Int32
    public var reason: String
    public var conflict: PolicyError.Conflict?
    /// The reply's JSON text, as the daemon sent it.
    public var json: String
}

/// What a session may map, as QUERY_RANGES reports it.
public struct RangesReply: Sendable {
    public struct Region: Sendable, Hashable {
        public var kind: String
        public var first: UInt64
        public var last: UInt64
        public var source: String
    }
    public var aperture: (first: UInt64, last: UInt64)?
    public var pageSizes: UInt64
    public var usable: [(first: UInt64, last: UInt64)]
    public var reserved: [Region]
    public var json: String
}

/// A blocking client for the tenant socket: one request at a time, one reply each.
public final class PolicyClient {
    public let socket: UnixSocket
    private var reader = FrameReader(maximumMessageSize: 1 << 24)
    private var buffer = [UInt8](repeating: 0, count: 65536)
    private var nextMessageID: UInt16 = 0
    /// Fds that arrived with the reply being read.
    private var receivedFDs: [FileDescriptor] = []
    /// The last successful reply's fds, until `requestReturningFDs` takes them.
    private var takenFDs: [FileDescriptor] = []
    /// Reused for every request, so the hot path does not allocate them each time.
    private var messageBuffer: [UInt8] = []
    private var payloadBuffer: [UInt8] = []
    /// The server's VERSION capabilities.
    public private(set) var serverCapabilities: [String: Any] = [:]
    public private(set) var serverVersion: (major: UInt16, minor: UInt16) = (0, 0)

    /// Connects and negotiates VERSION 0.1, asking for error detail unless told not to.
    public init(path: String, errorDetail: Bool = true) throws {
        do {
            socket = try UnixSocket.connect(path: path)
        } catch {
            throw PolicyClientFailure(description: "cannot connect to \(path): \(error)")
        }
        do {
            try negotiate(errorDetail: errorDetail)
        } catch {
            socket.close()
            throw error
        }
    }

    deinit {
        for fd in receivedFDs + takenFDs { try? fd.close() }
        socket.close()
    }

    public func close() { try? socket.shutdown(.both) }

    private func negotiate(errorDetail: Bool) throws {
        let capabilities =
            errorDetail ? #"{"capabilities":{"x-iommu-policyd":{"error_detail":true}}}"# : #"{"capabilities":{}}"#
        var payload: [UInt8] = []
        VersionPayload(major: 0, minor: 1, json: Array(capabilities.utf8)).encode(into: &payload)
        let reply = try request(.version, payload)
        guard reply.count >= 4 else { throw PolicyClientFailure(description: "VERSION reply too short") }
        serverVersion = (UInt16(reply[0]) | UInt16(reply[1]) << 8, UInt16(reply[2]) | UInt16(reply[3]) << 8)
        let json = reply.dropFirst(4).prefix { $0 != 0 }
        if let object = try? JSONSerialization.jsonObject(with: Data(json)) as? [String: Any],
            let capabilities = object["capabilities"] as? [String: Any]
        {
            serverCapabilities = capabilities
        }
    }

    // MARK: Requests

    public func attach(group: UInt32) throws {
        var payload: [UInt8] = []
        AttachGroupPayload(argsz: UInt32(AttachGroupPayload.size), flags: 0, group: group, pad: 0).encode(
            into: &payload)
        _ = try request(.attachGroup, payload)
    }

    /// Maps `[iova, iova + size)`, backed by `memory` at `offset` when given (passed by SCM_RIGHTS).
    public func map(
        iova: UInt64, size: UInt64, flags: UInt32 = 3, memory: FileDescriptor? = nil, offset: UInt64 = 0
    ) throws {
        payloadBuffer.removeAll(keepingCapacity: true)
        DMAMapPayload(argsz: UInt32(DMAMapPayload.size), flags: flags, offset: offset, address: iova, size: size)
            .encode(into: &payloadBuffer)
        try exchange(.dmaMap, payloadBuffer, fds: memory.map { [$0] } ?? []) { _ in }
    }

    public func unmap(iova: UInt64, size: UInt64, flags: UInt32 = 0) throws {
        payloadBuffer.removeAll(keepingCapacity: true)
        DMAUnmapPayload(argsz: UInt32(DMAUnmapPayload.size), flags: flags, address: iova, size: size).encode(
            into: &payloadBuffer)
        try exchange(.dmaUnmap, payloadBuffer) { _ in }
    }

    /// VFIO's UNMAP_ALL (flag bit 1, address and size 0).
    public func unmapAll() throws {
        try unmap(iova: 0, size: 0, flags: 1 << 1)
    }

    public func deviceInfo() throws -> [UInt8] {
        var payload: [UInt8] = []
        DeviceInfoPayload(argsz: UInt32(DeviceInfoPayload.size), flags: 0, numRegions: 0, numIRQs: 0).encode(
            into: &payload)
        return try request(.deviceGetInfo, payload)
    }

    public func ranges() throws -> RangesReply {
        var payload: [UInt8] = []
        QueryRangesPayload(argsz: UInt32(QueryRangesPayload.size), flags: 0).encode(into: &payload)
        let text = Self.nulTerminatedString(try request(.queryRanges, payload))
        guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
            throw PolicyClientFailure(description: "QUERY_RANGES reply is not JSON")
        }
        let aperture = (object["aperture"] as? [NSNumber]).flatMap {
            $0.count == 2 ? ($0[0].uint64Value, $0[1].uint64Value) : nil
        }
        let usable = (object["usable"] as? [[NSNumber]] ?? []).compactMap { pair in
            pair.count == 2 ? (first: pair[0].uint64Value, last: pair[1].uint64Value) : nil
        }
        let reserved = (object["reserved"] as? [[String: Any]] ?? []).compactMap(Self.region)
        return RangesReply(
            aperture: aperture, pageSizes: (object["pgsizes"] as? NSNumber)?.uint64Value ?? 0, usable: usable,
            reserved: reserved, json: text)
    }

    /// Asks how the daemon would decide a map, changing nothing.
    public func explain(iova: UInt64, size: UInt64, flags: UInt32 = 3, offset: UInt64 = 0) throws -> Explanation {
        var payload: [UInt8] = []
        DMAMapPayload(argsz: UInt32(DMAMapPayload.size), flags: flags, offset: offset, address: iova, size: size)
            .encode(into: &payload)
        let text = Self.nulTerminatedString(try request(.explain, payload))
        guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
            throw PolicyClientFailure(description: "EXPLAIN reply is not JSON")
        }
        return Explanation(
            allowed: object["decision"] as? String == "allow", errno: (object["errno"] as? NSNumber)?.int32Value ?? -1,
            reason: object["reason"] as? String ?? "",
            conflict: (object["conflict"] as? [String: Any]).flatMap(Self.conflict),
            json: text)
    }

    // MARK: The exchange

    /// A file descriptor for `device` (a PCI address) of an attached group (DEVICE_FD). The
    /// caller owns it.
    public func deviceFD(group: UInt32, device: String) throws -> FileDescriptor {
        var payload: [UInt8] = []
        DeviceFDPayload(group: group, device: device).encode(into: &payload)
        let (_, fds) = try requestReturningFDs(.deviceFD, payload)
        guard let fd = fds.first else { throw PolicyClientFailure(description: "DEVICE_FD reply carried no fd") }
        for extra in fds.dropFirst() { try? extra.close() }
        return fd
    }

    /// Sends one command and returns its reply's payload, or throws the daemon's error.
    public func request(_ command: Command, _ payload: [UInt8], fds: [FileDescriptor] = []) throws -> [UInt8] {
        let (reply, received) = try requestReturningFDs(command, payload, fds: fds)
        for fd in received { try? fd.close() }
        return reply
    }

    /// `request`, also returning the fds that came with the reply (the caller owns them).
    public func requestReturningFDs(
        _ command: Command, _ payload: [UInt8], fds: [FileDescriptor] = []
    ) throws -> ([UInt8], [FileDescriptor]) {
        var result: ([UInt8], [FileDescriptor]) = ([], [])
        try exchange(command, payload, fds: fds) { frame in
            result.0 = Array(frame.payload)
        }
        result.1 = takenFDs
        takenFDs = []
        return result
    }

    /// Sends one command and hands its successful reply frame to `body` before the next read
    /// reuses the buffers; the reply's fds are left in `takenFDs`. Map and unmap, the hot path,
    /// copy nothing out of the reply.
    private func exchange(
        _ command: Command, _ payload: [UInt8], fds: [FileDescriptor] = [], _ body: (Frame) -> Void
    ) throws {
        nextMessageID &+= 1
        let id = nextMessageID
        messageBuffer.removeAll(keepingCapacity: true)
        MessageHeader(
            messageID: id, command: command.rawValue, messageSize: UInt32(MessageHeader.size + payload.count),
            flags: MessageHeader.typeCommand, error: 0
        ).encode(into: &messageBuffer)
        messageBuffer += payload
        try send(messageBuffer, fds: fds)
        let reply = try receiveFrame()
        let received = receivedFDs
        receivedFDs = []
        guard reply.header.messageID == id, reply.header.command == command.rawValue, reply.header.isReply else {
            for fd in received { try? fd.close() }
            throw PolicyClientFailure(description: "reply does not match the request (id \(reply.header.messageID))")
        }
        if reply.header.isError {
            for fd in received { try? fd.close() }
            var error = PolicyError(errno: Int32(bitPattern: reply.header.error))
            let text = Self.nulTerminatedString(Array(reply.payload))
            if let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] {
                error.reason = object["reason"] as? String
                error.conflict = (object["conflict"] as? [String: Any]).flatMap(Self.conflict)
            }
            throw error
        }
        body(reply)
        for fd in takenFDs { try? fd.close() }
        takenFDs = received
    }

    /// Sends raw bytes (tests use this for malformed frames).
    public func send(_ bytes: [UInt8], fds: [FileDescriptor] = []) throws {
        do {
            try socket.sendAll(bytes, fds: fds)
        } catch {
            throw PolicyClientFailure(description: "send: \(error)")
        }
    }

    /// The next frame from the daemon.
    public func receiveFrame() throws -> Frame {
        while true {
            if let next = reader.nextFrame() {
                switch next {
                case .success(let frame): return frame
                case .failure(let error): throw PolicyClientFailure(description: "bad reply frame: \(error.reason)")
                }
            }
            let result: ReceiveResult
            do {
                result = try buffer.withUnsafeMutableBytes { try socket.receive(into: $0, maxFDs: 4) }
            } catch {
                throw PolicyClientFailure(description: "receive: \(error)")
            }
            receivedFDs += result.fds
            guard result.count > 0 else { throw PolicyClientFailure(description: "the daemon closed the connection") }
            buffer.withUnsafeBytes { reader.append(UnsafeRawBufferPointer(rebasing: $0[..<result.count])) }
        }
    }

    // MARK: JSON helpers

    static func nulTerminatedString(_ bytes: [UInt8]) -> String {
        String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
    }

    static func conflict(_ object: [String: Any]) -> PolicyError.Conflict? {
        guard let kind = object["kind"] as? String, let first = object["first"] as? NSNumber,
            let last = object["last"] as? NSNumber, let source = object["source"] as? String
        else { return nil }
        return PolicyError.Conflict(kind: kind, first: first.uint64Value, last: last.uint64Value, source: source)
    }

    static func region(_ object: [String: Any]) -> RangesReply.Region? {
        conflict(object).map { RangesReply.Region(kind: $0.kind, first: $0.first, last: $0.last, source: $0.source) }
    }
}
