import Dispatch
import Foundation
import Glibc
import IOMMUCore
import Logging
import QMPWire
import Synchronization
import SystemPackage
import UnixSockets

/// Serves the trusted admin socket: QMP, for root and the policy's `[admin]` uids and gids.
/// Each connection has a thread, as tenants do; a connection waits on its socket and on its
/// event queue together, so events reach it while it is idle.
public final class AdminServer: Sendable {
    public typealias Version = (major: Int, minor: Int, micro: Int)

    private let listener: UnixSocket
    let control: DaemonControl
    let tenants: TenantServer
    let logger: Logger
    let version: Version
    private let stopping = Atomic<Bool>(false)
    private let started = DispatchSemaphore(value: 0)
    private let finished = DispatchGroup()
    private let connections = Mutex<[UInt64: UnixSocket]>([:])
    private let nextConnection = Atomic<UInt64>(1)

    public init(listener: UnixSocket, control: DaemonControl, tenants: TenantServer, logger: Logger, version: Version) {
        self.listener = listener
        self.control = control
        self.tenants = tenants
        self.logger = logger
        self.version = version
    }

    /// Starts accepting; returns once the accept loop runs.
    public func start() {
        finished.enter()
        let thread = Thread { [self] in acceptLoop() }
        thread.name = "admin-accept"
        thread.start()
        started.wait()
    }

    /// Stops accepting, closes every connection and waits for their threads.
    public func stop() {
        guard !stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        try? listener.shutdown(.both)
        for socket in connections.withLock({ Array($0.values) }) { try? socket.shutdown(.both) }
        finished.wait()
    }

    private func acceptLoop() {
        defer {
            listener.close()
            finished.leave()
        }
        started.signal()
        while !stopping.load(ordering: .acquiring) {
            let client: UnixSocket
            do {
                client = try listener.accept()
            } catch {
                if stopping.load(ordering: .acquiring) { return }
                switch error.errno {
                case .connectionAbort, .interrupted: continue
                default:
                    logger.warning("admin accept: \(error)")
                    usleep(100_000)
                    continue
                }
            }
            admit(client)
        }
    }

    private func admit(_ client: UnixSocket) {
        let credentials: PeerCredentials
        do {
            credentials = try client.peerCredentials()
        } catch {
            logger.warning("admin SO_PEERCRED failed: \(error); closing the connection")
            client.close()
            return
        }
        let metadata: Logger.Metadata = [
            AuditKey.uid: .string(String(credentials.uid)), AuditKey.gid: .string(String(credentials.gid)),
            AuditKey.pid: .string(String(credentials.pid)),
        ]
        let admin = control.environment.store.current.config.admin
        guard admin.permits(uid: credentials.uid, gid: credentials.gid) else {
            let reason =
                "uid \(credentials.uid) (gid \(credentials.gid)) may not administer: only root and the [admin] uids and gids may"
            control.environment.audit.record(
                .adminRefused, reason, level: .warning,
                metadata: metadata.merging([AuditKey.reason: .string(reason)]) { $1 })
            client.close()
            return
        }
        let id = nextConnection.add(1, ordering: .relaxed).oldValue
        let accepted = connections.withLock { connections -> Bool in
            guard !stopping.load(ordering: .acquiring) else { return false }
            connections[id] = client
            return true
        }
        guard accepted else {
            client.close()
            return
        }
        control.environment.audit.record(
            .adminOpened, "admin connection \(id) opened",
            metadata: metadata.merging(["admin.connection": .string(String(id))]) { $1 })
        finished.enter()
        let connection = AdminConnection(id: id, socket: client, credentials: credentials, server: self)
        let thread = Thread { [self] in
            connection.run()
            connections.withLock { _ = $0.removeValue(forKey: id) }
            control.connectionClosed(id)
            control.environment.audit.record(
                .adminClosed, "admin connection \(id) closed",
                metadata: metadata.merging(["admin.connection": .string(String(id))]) { $1 })
            client.close()
            finished.leave()
        }
        thread.name = "admin-\(id)"
        thread.start()
    }
}

/// One admin connection, confined to its thread.
final class AdminConnection: @unchecked Sendable {
    /// The most fds queued (unnamed) or named at once per connection.
    static let maximumFDs = 64

    let id: UInt64
    let socket: UnixSocket
    let credentials: PeerCredentials
    unowned let server: AdminServer
    private var negotiated = false
    private var subscription: EventSubscription?
    private var splitter = QMPStreamSplitter()
    /// Fds received and not yet named by `getfd`, oldest first.
    private var queuedFDs: [FileDescriptor] = []
    var namedFDs: [String: FileDescriptor] = [:]

    init(id: UInt64, socket: UnixSocket, credentials: PeerCredentials, server: AdminServer) {
        self.id = id
        self.socket = socket
        self.credentials = credentials
        self.server = server
    }

    var control: DaemonControl { server.control }

    func run() {
        defer {
            if let subscription { control.environment.events.unsubscribe(subscription) }
            for fd in queuedFDs + Array(namedFDs.values) { try? fd.close() }
        }
        // A reader that stops reading for this long is cut off rather than hold a thread forever.
        try? socket.setSendTimeout(milliseconds: 10_000)
        let version = server.version
        guard
            send(
                QMPMessage.greeting(
                    major: version.major, minor: version.minor, micro: version.micro,
                    package: "iommu-policyd \(version.major).\(version.minor).\(version.micro)"))
        else { return }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            var polls = [pollfd(fd: socket.fd.rawValue, events: Int16(POLLIN), revents: 0)]
            if let subscription { polls.append(pollfd(fd: subscription.wakeFD, events: Int16(POLLIN), revents: 0)) }
            let ready = poll(&polls, nfds_t(polls.count), -1)
            if ready < 0 {
                if errno == EINTR { continue }
                return
            }
            if polls.count > 1, polls[1].revents != 0 {
                guard sendQueuedEvents() else { return }
            }
            guard polls[0].revents != 0 else { continue }
            let received: ReceiveResult
            do {
                received = try buffer.withUnsafeMutableBytes { try socket.receive(into: $0, maxFDs: 8) }
            } catch {
                return
            }
            if received.count == 0 {
                for fd in received.fds { try? fd.close() }
                return
            }
            for fd in received.fds {
                if queuedFDs.count + namedFDs.count < Self.maximumFDs {
                    queuedFDs.append(fd)
                } else {
                    try? fd.close()
                }
            }
            buffer.withUnsafeBytes { splitter.append(UnsafeRawBufferPointer(rebasing: $0[..<received.count])) }
            while let next = splitter.next() {
                let reply: [UInt8]
                switch next {
                case .error(let framing):
                    reply = QMPMessage.error(.genericError, "\(framing)", id: nil)
                case .value(let bytes):
                    reply = handle(bytes)
                }
                // Events a command caused (a reload's MAPPING_REVOKED) go out before its reply.
                guard sendQueuedEvents(), send(reply) else { return }
            }
        }
    }

    private func sendQueuedEvents() -> Bool {
        guard let subscription else { return true }
        for event in subscription.drain() {
            guard send(Self.render(event)) else { return false }
        }
        return true
    }

    private func send(_ bytes: [UInt8]) -> Bool {
        do {
            try socket.sendAll(bytes)
            return true
        } catch {
            return false
        }
    }

    private func handle(_ bytes: [UInt8]) -> [UInt8] {
        let request: QMPRequest
        do {
            request = try QMPRequest(parsing: bytes)
        } catch {
            return error.reply
        }
        if request.command == "qmp_capabilities" {
            guard !negotiated else {
                return request.errorReply(.commandNotFound("qmp_capabilities"))
            }
            do throws(QMPError) {
                try request.arguments.rejectUnknown(allowing: ["enable"])
                // The greeting offers no capabilities, so none can be enabled (as QEMU answers).
                if case .array(let wanted)? = request.arguments["enable"], let first = wanted.first {
                    let name: String
                    if case .string(let text) = first { name = text } else { name = first.jsonText }
                    throw QMPError.generic("Capability '\(name)' not available")
                }
            } catch {
                return request.errorReply(error)
            }
            negotiated = true
            subscription = try? control.environment.events.subscribe()
            return request.successReply()
        }
        guard negotiated else {
            return request.errorReply(
                QMPError(.commandNotFound, "Expecting capabilities negotiation with 'qmp_capabilities'"))
        }
        guard let command = AdminCommands.table[request.command] else {
            return request.errorReply(.commandNotFound(request.command))
        }
        do {
            try request.arguments.rejectUnknown(allowing: command.arguments)
            return request.successReply(try command.run(self, request.arguments))
        } catch let error as QMPError {
            return request.errorReply(error)
        } catch {
            return request.errorReply(.generic("\(error)"))
        }
    }

    /// Takes the oldest fd the client sent and not yet named.
    func takeQueuedFD() -> FileDescriptor? {
        queuedFDs.isEmpty ? nil : queuedFDs.removeFirst()
    }

    static func render(_ event: AdminEvent) -> [UInt8] {
        var data = QMPObject()
        for (key, value) in event.data { data[key] = QMPValue(value) }
        return QMPMessage.event(event.name, data: data, seconds: event.seconds, microseconds: event.microseconds)
    }
}

extension QMPValue {
    init(_ field: EventField) {
        switch field {
        case .string(let value): self = .string(value)
        case .int(let value): self = .int(value)
        case .uint(let value): self = .uint(value)
        case .bool(let value): self = .bool(value)
        case .groups(let groups): self = .array(groups.map { .uint(UInt64($0)) })
        case .strings(let strings): self = .array(strings.map { .string($0) })
        }
    }

    /// The core's JSON values (reports shared with the tenant protocol and the CLI).
    init(_ json: JSONValue) {
        switch json {
        case .null: self = .null
        case .bool(let value): self = .bool(value)
        case .int(let value): self = .int(value)
        case .uint(let value): self = .uint(value)
        case .string(let value): self = .string(value)
        case .array(let values): self = .array(values.map(QMPValue.init))
        case .object(let members): self = .object(QMPObject(members.map { ($0.0, QMPValue($0.1)) }))
        }
    }
}
