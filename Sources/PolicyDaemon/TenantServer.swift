import Dispatch
import Foundation
import IOMMUBackends
import IOMMUCore
import Logging
import ServiceLifecycle
import Synchronization
import SystemdSupport
import UnixSockets

/// Serves tenants on a Unix stream socket: accepts on a thread of its own, identifies each
/// peer by SO_PEERCRED, and gives each connection a thread (blocking I/O on a thread per
/// session is what a C server does, and keeps one stuck client from delaying another).
///
/// On graceful shutdown it stops accepting, lets every session finish the request in hand,
/// releases every session's mappings and groups, and returns.
///
/// It tells systemd READY=1 once its accept loop runs, and sends WATCHDOG=1 and STATUS= from
/// that loop: a wedged server stops pinging, and systemd restarts it.
public final class TenantServer: Service, Sendable {
    /// Refused peers (not tenants, or over their session limit) get a session that answers
    /// their first message with EPERM; at most this many at once, beyond which they are closed.
    static let maximumRefusedSessions = 32

    private let listener: UnixSocket
    let env: SessionEnvironment
    private let logger: Logger
    private let sessionsDone = DispatchGroup()
    private let stopping = Atomic<Bool>(false)
    private let refusedInFlight = Atomic<Int>(0)
    private let notifier: SystemdNotifier
    private let started = DispatchSemaphore(value: 0)

    public init(
        listener: UnixSocket, environment: SessionEnvironment, logger: Logger,
        notifier: SystemdNotifier = SystemdNotifier()
    ) {
        self.listener = listener
        self.logger = logger
        self.notifier = notifier
        self.env = environment
    }

    public var sessionCount: Int { env.sessions.count }

    /// One line for systemd's STATUS=: "3 tenants, 1204 mappings, 2 groups held".
    public var statusLine: String {
        let tenants = env.sessions.count
        let mappings = env.stats.mappingCount
        let groups = env.groups.count
        return "\(tenants) tenant\(tenants == 1 ? "" : "s"), \(mappings) mapping\(mappings == 1 ? "" : "s"), "
            + "\(groups) group\(groups == 1 ? "" : "s") held"
    }

    public func run() async throws {
        let acceptor = Thread { [self] in acceptLoop() }
        acceptor.name = "tenant-accept"
        sessionsDone.enter()
        acceptor.start()
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async { [started] in
                started.wait()
                continuation.resume()
            }
        }
        // The socket was listening already; now the loop that serves it runs too.
        notifier.ready(status: statusLine)
        // Runs until SIGTERM/SIGINT (or the group is cancelled).
        try? await gracefulShutdown()
        notifier.stopping()
        stop()
        await withCheckedContinuation { continuation in
            sessionsDone.notify(queue: .global()) { continuation.resume() }
        }
        logger.notice("tenant server stopped")
    }

    /// Stops accepting and wakes every session.
    func stop() {
        guard !stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        // On Linux, shutting a listening socket down makes a blocked accept() return.
        try? listener.shutdown(.both)
        env.sessions.closeAll()
    }

    private func acceptLoop() {
        defer {
            listener.close()
            sessionsDone.leave()
        }
        // Non-blocking, so that a connection that vanishes between poll and accept cannot wedge
        // the loop that also feeds the watchdog.
        let flags = fcntl(listener.fd.rawValue, F_GETFL)
        _ = fcntl(listener.fd.rawValue, F_SETFL, flags | O_NONBLOCK)
        let watchdog = notifier.watchdogInterval
        // Half the watchdog interval, as sd_watchdog_enabled(3) advises; STATUS= at most once a second.
        let pingEvery = watchdog.map { $0 / 2 } ?? .seconds(3600)
        let clock = ContinuousClock()
        var lastPing = clock.now
        var lastStatus = clock.now
        var reported = ""
        started.signal()
        while !stopping.load(ordering: .acquiring) {
            let now = clock.now
            if watchdog != nil, now - lastPing >= pingEvery {
                notifier.watchdog()
                lastPing = now
            }
            if now - lastStatus >= .seconds(1) {
                lastStatus = now
                let line = statusLine
                if line != reported {
                    reported = line
                    notifier.status(line)
                }
            }
            let wait = min(pingEvery - (clock.now - lastPing), .seconds(1))
            do {
                guard try listener.waitReadable(timeoutMilliseconds: Self.milliseconds(wait)) else { continue }
            } catch {
                if stopping.load(ordering: .acquiring) { return }
                logger.warning("poll on the tenant socket: \(error)")
                usleep(100_000)
                continue
            }
            let client: UnixSocket
            do {
                client = try listener.accept()
            } catch {
                if stopping.load(ordering: .acquiring) { return }
                switch error.errno {
                case .wouldBlock, .connectionAbort:
                    continue
                case .tooManyOpenFiles, .tooManyOpenFilesInSystem, .noBufferSpace, .noMemory:
                    // Out of fds or memory: back off rather than spin; sessions ending will free some.
                    logger.error("accept: \(error); retrying in 100 ms")
                    usleep(100_000)
                default:
                    logger.warning("accept: \(error)")
                }
                continue
            }
            // Linux does not pass O_NONBLOCK on to accepted sockets: sessions block, with timeouts.
            admit(client)
        }
    }

    /// Serves a connected socket the admin plane handed over (`add-client`) as a tenant
    /// connection; nil when the server is stopping or the peer has no credentials.
    func adopt(_ client: UnixSocket) -> SessionID? {
        guard !stopping.load(ordering: .acquiring) else {
            client.close()
            return nil
        }
        return admit(client)
    }

    @discardableResult
    private func admit(_ client: UnixSocket) -> SessionID? {
        let credentials: PeerCredentials
        do {
            credentials = try client.peerCredentials()
        } catch {
            logger.warning("SO_PEERCRED failed: \(error); closing the connection")
            client.close()
            return nil
        }
        let snapshot = env.store.current
        let tenant = snapshot.config.policy(uid: credentials.uid, gid: credentials.gid, daemonUID: env.daemonUID)
        var refusal: String?
        if tenant == nil {
            refusal =
                "uid \(credentials.uid) (gid \(credentials.gid)) is not a tenant: no [[tenant]] rule in \(snapshot.config.path) matches"
        }
        let limit = tenant?.maxSessions ?? 0
        var id: SessionID?
        if refusal == nil {
            switch env.sessions.admit(credentials, socket: client, limit: limit) {
            case .admitted(let admitted): id = admitted
            case .overLimit(let current):
                refusal = "uid \(credentials.uid) already has \(current) session(s), the most max_sessions allows"
            case .closing:
                client.close()
                return nil
            }
        }
        if refusal != nil {
            guard refusedInFlight.add(1, ordering: .relaxed).newValue <= Self.maximumRefusedSessions else {
                refusedInFlight.subtract(1, ordering: .relaxed)
                Audit(logger: logger).record(
                    .sessionRefused, "\(refusal!); too many refused connections, closing at once", level: .warning,
                    metadata: peerMetadata(credentials))
                client.close()
                return nil
            }
            switch env.sessions.admit(credentials, socket: client, limit: nil) {
            case .admitted(let admitted): id = admitted
            default:
                refusedInFlight.subtract(1, ordering: .relaxed)
                client.close()
                return nil
            }
        }
        guard let id else { return nil }
        let session = Session(
            id: id, socket: client, credentials: credentials, tenant: refusal == nil ? tenant : nil, refusal: refusal,
            env: env)
        if let refusal {
            Audit(logger: logger).record(
                .sessionRefused, refusal, level: .warning,
                metadata: peerMetadata(credentials).merging([AuditKey.session: .string(id.description)]) { $1 })
        } else {
            Audit(logger: logger).record(
                .sessionOpened, "session opened (\(tenant?.origin ?? ""))",
                metadata: peerMetadata(credentials).merging([AuditKey.session: .string(id.description)]) { $1 })
        }
        env.sessions.register(session)
        if refusal == nil {
            env.stats.sessionsTotal.add(1, ordering: .relaxed)
            env.metrics.sessionStarted()
            env.metrics.setSessions(env.sessions.tenantSessions.count)
            env.events.publish(
                AdminEvent(
                    "TENANT_CONNECTED",
                    [
                        ("session", .uint(id.rawValue)), ("uid", .uint(UInt64(credentials.uid))),
                        ("gid", .uint(UInt64(credentials.gid))), ("pid", .int(Int64(credentials.pid))),
                        ("rule", .string(tenant?.origin ?? "")),
                    ]))
        }
        sessionsDone.enter()
        let refused = refusal != nil
        let thread = Thread { [self] in
            session.run()
            if !refused { env.metrics.setSessions(env.sessions.tenantSessions.count) }
            if refused { refusedInFlight.subtract(1, ordering: .relaxed) }
            sessionsDone.leave()
        }
        thread.name = "tenant-\(id)"
        thread.start()
        return id
    }

    static func milliseconds(_ duration: Duration) -> Int32 {
        let (seconds, attoseconds) = duration.components
        return Int32(clamping: max(1, seconds * 1000 + attoseconds / 1_000_000_000_000_000))
    }

    private func peerMetadata(_ credentials: PeerCredentials) -> Logger.Metadata {
        [
            AuditKey.uid: .string(String(credentials.uid)), AuditKey.gid: .string(String(credentials.gid)),
            AuditKey.pid: .string(String(credentials.pid)),
        ]
    }
}
