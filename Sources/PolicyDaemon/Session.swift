import DaemonMetrics
import Foundation
import IOMMUBackends
import IOMMUCore
import Logging
import Synchronization
import SystemPackage
import UnixSockets
import VFIOUserWire

/// What sessions and the admin plane share: the policy, group ownership, the live-session
/// table, the backend, the audit trail and the event bus.
public struct SessionEnvironment: Sendable {
    var store: PolicyStore
    var groups: GroupRegistry
    var sessions: SessionTable
    var backend: any IOMMUBackend
    var audit: Audit
    var daemonUID: UInt32
    var limits: ProtocolLimits
    var stats: DaemonStats
    var events: EventBus
    public var metrics: DaemonMetrics
    var kernelRegions: KernelRegionRegistry

    public init(
        store: PolicyStore, backend: any IOMMUBackend, logger: Logger, daemonUID: UInt32,
        limits: ProtocolLimits = ProtocolLimits(), metrics: DaemonMetrics = DaemonMetrics()
    ) {
        self.store = store
        self.groups = GroupRegistry()
        self.sessions = SessionTable()
        self.backend = backend
        self.audit = Audit(logger: logger)
        self.daemonUID = daemonUID
        self.limits = limits
        self.stats = DaemonStats(metrics: metrics)
        self.events = EventBus(onDrop: { metrics.eventsDropped() })
        self.metrics = metrics
        self.kernelRegions = KernelRegionRegistry()
    }
}

/// Fixed properties of the tenant protocol as this daemon speaks it.
public struct ProtocolLimits: Sendable {
    /// vfio-user major 0, minor 1, as QEMU and libvfio-user speak it.
    public static let major: UInt16 = 0
    public static let minor: UInt16 = 1
    /// The largest message a client may send, header included. Our requests are at most a
    /// VERSION with its capabilities JSON.
    public var maximumMessageSize = 4096
    /// Advertised as `max_data_xfer_size`; no data-transfer command is served.
    public var maximumDataTransfer = 4096
    /// A send to a client that does not read gives up after this long and ends the session.
    public var sendTimeoutMilliseconds: Int32 = 5000

    public init() {}
}

/// One tenant connection, served on its own thread so that a slow, stuck or hostile client
/// never delays another. Requests are handled one at a time, in order; each either completes
/// or leaves the session's state as it was.
///
/// The tenant state (groups, mappings, memfds, the backend context) is also read and changed
/// by the admin plane: listings, revocation, and revalidation after a reload. `lock` guards
/// it; a request holds it from reading the policy snapshot to committing, so a reload that
/// swaps the snapshot and then revalidates each session sees every mapping made under the old
/// snapshot. Replies are sent outside it, so a client that does not read never holds it.
final class Session: @unchecked Sendable {
    let id: SessionID
    let socket: UnixSocket
    let credentials: PeerCredentials
    /// nil when the peer is not a tenant: its first message is answered EPERM and it is closed.
    /// Replaced by a reload that changes the peer's [[tenant]] rule.
    private(set) var tenant: TenantPolicy?
    let refusal: String?
    let env: SessionEnvironment
    let logger: Logger
    let openedAt = Date()
    private let lock = Mutex(())
    /// Why the admin plane or a reload ended the session; no request is served after it.
    private var revocation: String?
    private var state = TenantState()
    private var context: BackendContextID?
    private var negotiated = false
    private var errorDetail = false
    /// The memfds behind mappings, by the handle in each mapping's MemoryReference.
    private var memory: [UInt64: FileDescriptor] = [:]
    private var nextMemoryHandle: UInt64 = 1
    private var reply: [UInt8] = []
    /// Fds to send with the reply (DEVICE_FD).
    private var replyFDs: [FileDescriptor] = []
    /// The map or unmap the request in hand was, for the latency histogram.
    private var lastCommand: String?
    /// The policy snapshot, re-read from the store only after a reload or region change.
    private var snapshots = SnapshotCache()
    /// This session's request counters, so counting takes no lock shared with other sessions.
    private var counters: [CounterKey: RequestCounter] = [:]

    private struct CounterKey: Hashable {
        var command: String
        var reason: String?
    }

    init(
        id: SessionID, socket: UnixSocket, credentials: PeerCredentials, tenant: TenantPolicy?, refusal: String?,
        env: SessionEnvironment
    ) {
        self.id = id
        self.socket = socket
        self.credentials = credentials
        self.tenant = tenant
        self.refusal = refusal
        self.env = env
        var logger = env.audit.logger
        logger[metadataKey: AuditKey.session] = .string(id.description)
        logger[metadataKey: AuditKey.uid] = .string(String(credentials.uid))
        logger[metadataKey: AuditKey.gid] = .string(String(credentials.gid))
        logger[metadataKey: AuditKey.pid] = .string(String(credentials.pid))
        self.logger = logger
        reply.reserveCapacity(256)
    }

    private var audit: Audit { Audit(logger: logger) }

    // MARK: The receive loop

    /// Serves the connection until the peer closes it, breaks the framing, times out, or the
    /// daemon shuts down; then releases everything the session held.
    func run() {
        defer { finish() }
        let snapshot = env.store.current
        let defaults = snapshot.config.defaults
        let handshakeDeadline = deadline(after: defaults.handshakeTimeout)
        var reader = FrameReader(maximumMessageSize: env.limits.maximumMessageSize)
        var buffer = [UInt8](repeating: 0, count: 65536)
        // Fds arrive with the first byte of the sendmsg that carried them; each batch is given
        // to the first frame that starts at or after the stream offset where it arrived.
        var pendingFDs: [(offset: UInt64, fds: [FileDescriptor])] = []
        var received: UInt64 = 0
        var consumed: UInt64 = 0
        var tooManyFDs = false
        defer {
            for batch in pendingFDs {
                for fd in batch.fds { try? fd.close() }
            }
        }
        try? socket.setSendTimeout(milliseconds: Int(env.limits.sendTimeoutMilliseconds))

        while true {
            let timeout: Double?
            if reader.bufferedByteCount > 0 {
                timeout = defaults.messageTimeout > 0 ? defaults.messageTimeout : nil
            } else if !negotiated {
                timeout = handshakeDeadline.map { max(0, $0 - now()) }
            } else {
                timeout = defaults.idleTimeout > 0 ? defaults.idleTimeout : nil
            }
            do {
                if let timeout {
                    let milliseconds = Int32(clamping: Int((timeout * 1000).rounded(.up)))
                    guard try socket.waitReadable(timeoutMilliseconds: milliseconds) else {
                        let what =
                            reader.bufferedByteCount > 0
                            ? "the rest of a message" : negotiated ? "a request" : "VERSION"
                        audit.record(.protocolError, "timed out waiting for \(what); closing", level: .notice)
                        return
                    }
                }
                let result = try buffer.withUnsafeMutableBytes { try socket.receive(into: $0, maxFDs: 4) }
                if result.count == 0 {
                    for fd in result.fds { try? fd.close() }
                    if reader.bufferedByteCount > 0 {
                        audit.record(.protocolError, "peer disconnected in the middle of a message", level: .notice)
                    }
                    return
                }
                if result.truncated { tooManyFDs = true }
                if !result.fds.isEmpty { pendingFDs.append((received, result.fds)) }
                received += UInt64(result.count)
                buffer.withUnsafeBytes { reader.append(UnsafeRawBufferPointer(rebasing: $0[..<result.count])) }
            } catch {
                audit.record(.protocolError, "connection error: \(error)", level: .notice)
                return
            }

            while let next = reader.nextFrame() {
                switch next {
                case .failure(let error):
                    // The stream cannot be resynchronised: answer and close.
                    fail(error.header, errno: error.errno, reason: "\(error.reason); closing", event: .protocolError)
                    try? socket.sendAll(reply)
                    return
                case .success(let frame):
                    let start = consumed
                    consumed += UInt64(frame.header.messageSize)
                    var fds: [FileDescriptor] = []
                    while let batch = pendingFDs.first, batch.offset <= start {
                        fds += batch.fds
                        pendingFDs.removeFirst()
                    }
                    let truncated = tooManyFDs
                    tooManyFDs = false
                    let keepGoing = serve(frame, fds: fds, fdsTruncated: truncated)
                    if !keepGoing { return }
                }
            }
        }
    }

    /// Answers one frame; false ends the session.
    private func serve(_ frame: Frame, fds: [FileDescriptor], fdsTruncated: Bool) -> Bool {
        reply.removeAll(keepingCapacity: true)
        let started = ContinuousClock.now
        let outcome = lock.withLock { _ -> (keepGoing: Bool, tookFD: Bool) in
            guard revocation == nil else { return (false, false) }
            return answer(frame, fds: fds, fdsTruncated: fdsTruncated)
        }
        if let command = lastCommand {
            lastCommand = nil
            let elapsed = (ContinuousClock.now - started).components
            let nanoseconds =
                UInt64(max(0, elapsed.seconds)) &* 1_000_000_000 &+ UInt64(max(0, elapsed.attoseconds / 1_000_000_000))
            env.metrics.decisionLatency(nanoseconds: nanoseconds, command: command)
        }
        // Fds the request did not take are closed before the reply goes out, so a client that
        // sees the reply sees its fds gone too.
        if !outcome.tookFD {
            for fd in fds { try? fd.close() }
        }
        return flush() && outcome.keepGoing
    }

    /// Decides one frame and builds its reply in `reply`.
    private func answer(
        _ frame: Frame, fds: [FileDescriptor], fdsTruncated: Bool
    ) -> (keepGoing: Bool, tookFD: Bool) {
        if let refusal {
            // Honour a VERSION's request for error detail, so the refusal says why.
            if case .success(.version(let payload)) = RequestDecoder.decode(
                header: frame.header, payload: frame.payload, fdCount: fds.count),
                case .success(let capabilities) = ClientCapabilities.parse(payload.json)
            {
                errorDetail = capabilities.errorDetail
            }
            fail(frame.header, errno: WireErrno.EPERM, reason: refusal, event: .sessionRefused)
            return (false, false)
        }
        if fdsTruncated {
            fail(
                frame.header, errno: WireErrno.EINVAL, reason: "more fds than a message may carry",
                event: .protocolError)
            return (true, false)
        }
        let request: Request
        // The non-generic entry point: the decoder is specialised for frames inside its module.
        switch RequestDecoder.decode(frame, fdCount: fds.count) {
        case .failure(let error):
            fail(frame.header, errno: error.errno, reason: error.reason, event: .protocolError)
            return (true, false)
        case .success(let decoded):
            request = decoded
        }
        guard negotiated || isVersion(request) else {
            fail(
                frame.header, errno: WireErrno.EINVAL, reason: "the first message must be VERSION",
                event: .protocolError)
            return (true, false)
        }
        switch request {
        case .version(let payload):
            negotiate(frame.header, payload)
        case .dmaMap(let payload):
            // The fd, if any, now belongs to the mapping, or `map` has closed it.
            map(frame.header, payload, fd: fds.first)
            return (true, true)
        case .dmaUnmap(let payload):
            unmap(frame.header, payload)
        case .deviceGetInfo:
            // Answered as a device with no regions and no interrupts, so that clients which ask
            // before mapping can go on.
            DeviceInfoPayload(argsz: UInt32(DeviceInfoPayload.size), flags: 0, numRegions: 0, numIRQs: 0)
                .encodeReply(to: frame.header, into: &reply)
        case .attachGroup(let payload):
            attach(frame.header, group: payload.group)
        case .queryRanges:
            queryRanges(frame.header)
        case .explain(let payload):
            explain(frame.header, payload)
        case .deviceFD(let payload):
            deviceFD(frame.header, payload)
        }
        return (true, false)
    }

    private func isVersion(_ request: Request) -> Bool {
        if case .version = request { return true }
        return false
    }

    /// Sends the reply built in `reply` (empty when none is due); false when the peer is gone.
    @discardableResult
    private func flush() -> Bool {
        guard !reply.isEmpty else { return true }
        // A reply's fds are the daemon's copies: sent, then closed here either way.
        let fds = replyFDs
        replyFDs = []
        defer { for fd in fds { try? fd.close() } }
        do {
            try socket.sendAll(reply, fds: fds)
            return true
        } catch {
            audit.record(.protocolError, "cannot send a reply: \(error); closing", level: .notice)
            return false
        }
    }

    // MARK: Requests

    private func negotiate(_ header: MessageHeader, _ payload: VersionPayload) {
        guard !negotiated else {
            fail(header, errno: WireErrno.EINVAL, reason: "VERSION was already negotiated", event: .protocolError)
            return
        }
        guard payload.major == ProtocolLimits.major else {
            fail(
                header, errno: WireErrno.EINVAL,
                reason: "unsupported major version \(payload.major) (this server speaks \(ProtocolLimits.major))",
                event: .protocolError)
            return
        }
        let capabilities: ClientCapabilities
        switch ClientCapabilities.parse(payload.json) {
        case .success(let parsed): capabilities = parsed
        case .failure(let error):
            fail(header, errno: WireErrno.EINVAL, reason: error.reason, event: .protocolError)
            return
        }
        errorDetail = capabilities.errorDetail
        negotiated = true
        guard let tenant else { return }
        let snapshot = snapshots.current(env.store)
        let offer = ServerCapabilities(
            maxDMAMaps: tenant.maxMappings, pageSizes: pageSizes(snapshot.database, tenant),
            maxDataTransfer: env.limits.maximumDataTransfer, errorDetail: capabilities.errorDetail)
        let reply = VersionPayload(
            major: ProtocolLimits.major, minor: min(payload.minor, ProtocolLimits.minor), json: Array(offer.json.utf8))
        var bytes: [UInt8] = []
        reply.encode(into: &bytes)
        ReplyEncoder.success(to: header, payload: bytes, into: &self.reply)
        audit.record(
            .versionNegotiated, "negotiated vfio-user \(reply.major).\(reply.minor)", level: .debug,
            metadata: ["vfio_user.error_detail": .stringConvertible(capabilities.errorDetail)])
    }

    /// The page sizes the tenant's groups all support, for VERSION's `pgsizes`.
    private func pageSizes(_ database: PlatformDatabase, _ tenant: TenantPolicy) -> UInt64 {
        let groups = database.groupIDs.filter { tenant.groups.permits($0) }
        let common = groups.reduce(UInt64.max) { $0 & (database.groups[$1]?.pageSizes ?? PageSizes.x86) }
        return groups.isEmpty || common == 0 ? 4096 : common
    }

    private func attach(_ header: MessageHeader, group: UInt32) {
        guard let tenant else { return }
        if let denial = attachGroup(group, tenant: tenant, snapshot: snapshots.current(env.store)) {
            fail(header, denial: denial, event: .attachDenied, metadata: [AuditKey.group: "\(group)"])
            return
        }
        succeed(header)
    }

    /// Attaches `group`: policy, then ownership, then the backend; all or nothing.
    private func attachGroup(_ group: UInt32, tenant: TenantPolicy, snapshot: PolicySnapshot) -> Denial? {
        let plan: AttachPlan
        switch PolicyEngine.decideAttach(group: group, platform: snapshot.database, tenant: tenant, state: state) {
        case .failure(let denial): return denial
        case .success(let decided): plan = decided
        }
        if let holder = env.groups.claim(group, for: id) {
            return Denial(.groupBusy, .EBUSY, "group \(group) is held by another session (\(holder))")
        }
        do throws(BackendError) {
            let context: BackendContextID
            if let existing = self.context {
                context = existing
            } else {
                context = try env.backend.createContext()
                self.context = context
            }
            let info = try env.backend.attach(group: group, to: context)
            reconcile(info, attaching: group, snapshot: snapshot, relaxable: tenant.relaxable)
        } catch {
            env.groups.release(group, from: id)
            return Denial(.backendFailure, error.errno, "\(error)")
        }
        state.commit(plan)
        count("attach", denial: nil)
        audit.record(.attachAllowed, "attached group \(group)", metadata: [AuditKey.group: "\(group)"])
        return nil
    }

    /// Compares what the backend says the context can map with the database. Ranges only the
    /// kernel refuses become regions of the group, so the daemon refuses them itself, with a
    /// reason, and reports them in QUERY_RANGES; every disagreement is logged once per group.
    private func reconcile(
        _ info: BackendGroupInfo, attaching group: UInt32, snapshot: PolicySnapshot, relaxable: RelaxablePolicy
    ) {
        let groups = state.groups + [group]
        let result = Reconciliation.compare(
            kernelUsable: info.usableRanges,
            databaseUsable: snapshot.database.usableRanges(groups: groups, relaxable: relaxable))
        let source = "\(env.backend.name) backend: the kernel's IOVA ranges for group \(group)"
        let first = env.kernelRegions.adopt(
            result.kernelRegions(group: group, source: source), group: group, store: env.store)
        guard first, !result.agrees else { return }
        let metadata: Logger.Metadata = [
            AuditKey.group: "\(group)",
            "kernel.usable": .string(info.usableRanges.map(\.description).joined(separator: ",")),
            "database.usable": .string(
                snapshot.database.usableRanges(groups: groups, relaxable: relaxable).map(\.description)
                    .joined(separator: ",")),
        ]
        if !result.kernelOnly.isEmpty {
            logger.warning(
                "\(env.backend.name) refuses ranges discovery did not find for group \(group): \(result.kernelOnly.map(\.description).joined(separator: ", ")); adopted as regions",
                metadata: metadata)
        }
        if !result.databaseOnly.isEmpty {
            logger.warning(
                "the daemon refuses ranges \(env.backend.name) would map for group \(group): \(result.databaseOnly.map(\.description).joined(separator: ", ")) (peer BARs, bridge windows, policy)",
                metadata: metadata)
        }
    }

    private func map(_ header: MessageHeader, _ payload: DMAMapPayload, fd: FileDescriptor?) {
        guard let tenant else {
            try? fd?.close()
            return
        }
        let snapshot = snapshots.current(env.store)
        // Built only when a record is written: the groups are the session's at that moment.
        func metadata() -> Logger.Metadata {
            var fields: Logger.Metadata = [
                AuditKey.iova: .string(Hex(payload.address).description),
                AuditKey.size: .string(Hex(payload.size).description),
                AuditKey.flags: .string(String(payload.flags)),
            ]
            if !state.groups.isEmpty {
                fields[AuditKey.group] = .string(state.groups.map(String.init).joined(separator: ","))
            }
            return fields
        }
        func deny(_ denial: Denial) {
            try? fd?.close()
            fail(header, denial: denial, event: .mapDenied, metadata: metadata())
        }
        if state.groups.isEmpty, let sole = tenant.soleGroup(in: snapshot.database) {
            if let denial = attachGroup(sole, tenant: tenant, snapshot: snapshot) { return deny(denial) }
        }
        let request = MapRequest(
            iova: payload.address, size: payload.size, flags: payload.flags, offset: payload.offset)
        let plan: MapPlan
        switch PolicyEngine.decideMap(request, platform: snapshot.database, tenant: tenant, state: state) {
        case .failure(let denial): return deny(denial)
        case .success(let decided): plan = decided
        }
        var reference = MemoryReference(handle: 0, offset: payload.offset)
        if let fd {
            if let problem = checkBacking(fd, offset: payload.offset, size: payload.size) { return deny(problem) }
            reference.handle = nextMemoryHandle
        }
        guard let context else { return deny(Denial(.noGroupAttached, .EINVAL, "no IOMMU group is attached")) }
        do {
            try env.backend.map(
                plan.range, memory: reference, backing: fd.map { BackingFile(fd: $0.rawValue) },
                protection: plan.protection, in: context)
        } catch {
            return deny(Denial(.backendFailure, error.errno, "\(error)"))
        }
        if let fd {
            memory[reference.handle] = fd
            nextMemoryHandle += 1
        }
        state.commit(plan, memory: reference)
        env.stats.mapped(bytes: plan.bytes)
        count("map", denial: nil)
        audit.record(
            .mapAllowed, "mapped \(plan.range)", metadata: metadata().merging(Audit.decisionMetadata(nil)) { $1 })
        succeed(header)
    }

    /// The fd must be a regular file (a memfd is) holding `[offset, offset + size)`.
    private func checkBacking(_ fd: FileDescriptor, offset: UInt64, size: UInt64) -> Denial? {
        let info: (size: UInt64, isRegular: Bool)
        do {
            info = try FileInfo.stat(fd)
        } catch {
            return Denial(.badBacking, .EINVAL, "cannot stat the passed fd: \(error)")
        }
        guard info.isRegular else {
            return Denial(.badBacking, .EINVAL, "the passed fd is not a regular file or memfd")
        }
        let (end, overflow) = offset.addingReportingOverflow(size)
        guard !overflow, end <= info.size else {
            return Denial(
                .badBacking, .EINVAL,
                "the passed fd holds \(Hex(info.size)) bytes; offset \(Hex(offset)) + size \(Hex(size)) does not fit")
        }
        return nil
    }

    private func unmap(_ header: MessageHeader, _ payload: DMAUnmapPayload) {
        guard tenant != nil else { return }
        let snapshot = snapshots.current(env.store)
        let groups = state.groups
        func metadata() -> Logger.Metadata {
            [
                AuditKey.iova: .string(Hex(payload.address).description),
                AuditKey.size: .string(Hex(payload.size).description),
                AuditKey.flags: .string(String(payload.flags)),
                AuditKey.group: .string(groups.map(String.init).joined(separator: ",")),
            ]
        }
        let request = UnmapRequest(iova: payload.address, size: payload.size, flags: payload.flags)
        let plan: UnmapPlan
        switch PolicyEngine.decideUnmap(request, platform: snapshot.database, state: state) {
        case .failure(let denial):
            fail(header, denial: denial, event: .unmapDenied, metadata: metadata())
            return
        case .success(let decided): plan = decided
        }
        if let failure = release(plan) {
            fail(header, denial: failure, event: .unmapDenied, metadata: metadata())
            return
        }
        count("unmap", denial: nil)
        audit.record(
            .unmapAllowed, "unmapped \(plan.entries.count) mapping(s)",
            metadata: metadata().merging(Audit.decisionMetadata(nil)) { $1 }.merging([
                AuditKey.bytes: .string(Hex(plan.bytes).description)
            ]) { $1 })
        // vfio-user: the reply carries the request's DMA entry back.
        var bytes: [UInt8] = []
        payload.encode(into: &bytes)
        ReplyEncoder.success(to: header, payload: bytes, into: &reply)
    }

    /// Unmaps the plan's mappings from the backend one by one and commits those that went;
    /// on a backend failure the rest stay mapped and the failure is returned.
    private func release(_ plan: UnmapPlan) -> Denial? {
        var done: [IntervalTree<Mapping>.Entry] = []
        var failure: Denial?
        for entry in plan.entries {
            guard let context else { break }
            do {
                _ = try env.backend.unmap(entry.range, in: context)
                done.append(entry)
            } catch {
                failure = Denial(.backendFailure, error.errno, "\(error)")
                break
            }
        }
        let released = UnmapPlan(entries: done)
        env.stats.unmapped(count: done.count, bytes: released.bytes)
        for (_, mapping) in state.commit(released) {
            if let handle = mapping.memory?.handle, let fd = memory.removeValue(forKey: handle) { try? fd.close() }
        }
        return failure
    }

    private func queryRanges(_ header: MessageHeader) {
        guard let tenant else { return }
        let snapshot = snapshots.current(env.store)
        var groups = state.groups
        if groups.isEmpty, let sole = tenant.soleGroup(in: snapshot.database) { groups = [sole] }
        let report = RangesReport.json(groups: groups, database: snapshot.database, relaxable: tenant.relaxable)
        ReplyEncoder.success(to: header, payload: Array(report.rendered.utf8) + [0], into: &reply)
    }

    private func explain(_ header: MessageHeader, _ payload: DMAMapPayload) {
        guard let tenant else { return }
        let snapshot = snapshots.current(env.store)
        var trial = state
        var denial: Denial?
        if trial.groups.isEmpty, let sole = tenant.soleGroup(in: snapshot.database) {
            switch PolicyEngine.decideAttach(group: sole, platform: snapshot.database, tenant: tenant, state: trial) {
            case .success(let plan): trial.commit(plan)
            case .failure(let refused): denial = refused
            }
        }
        if denial == nil {
            let request = MapRequest(
                iova: payload.address, size: payload.size, flags: payload.flags, offset: payload.offset)
            if case .failure(let refused) = PolicyEngine.decideMap(
                request, platform: snapshot.database, tenant: tenant, state: trial)
            {
                denial = refused
            }
        }
        audit.record(
            .explained, "explained a map",
            metadata: Audit.decisionMetadata(denial).merging([
                AuditKey.iova: .string(Hex(payload.address).description),
                AuditKey.size: .string(Hex(payload.size).description),
            ]) { $1 })
        ReplyEncoder.success(to: header, payload: Array(DecisionReport.json(denial).rendered.utf8) + [0], into: &reply)
    }

    /// Counts a decided request in the metrics, and marks map and unmap for the latency histogram.
    private func count(_ command: String, denial: Denial?) {
        let reason = denial?.code.rawValue
        let key = CounterKey(command: command, reason: reason)
        if let counter = counters[key] {
            counter.increment()
        } else {
            let counter = env.metrics.requestCounter(
                command: command, result: reason.map { .denied(reason: $0) } ?? .allowed)
            counters[key] = counter
            counter.increment()
        }
        if command != "attach" { lastCommand = command }
    }

    /// Gives the tenant an fd for a device of a group it has attached, so it can drive the
    /// device (regions, config space, interrupts) while the daemon keeps the IOMMU.
    private func deviceFD(_ header: MessageHeader, _ payload: DeviceFDPayload) {
        guard tenant != nil, let device = payload.device else { return }
        let metadata: Logger.Metadata = [AuditKey.group: "\(payload.group)", "pci.device": .string(device)]
        let snapshot = snapshots.current(env.store)
        guard state.groups.contains(payload.group), let context else {
            return fail(
                header,
                denial: Denial(.groupNotAttached, .EPERM, "group \(payload.group) is not attached to this session"),
                event: .deviceDenied, metadata: metadata)
        }
        guard snapshot.database.groups[payload.group]?.devices.contains(device) == true else {
            return fail(
                header, denial: Denial(.unknownDevice, .ENOENT, "group \(payload.group) has no device \(device)"),
                event: .deviceDenied, metadata: metadata)
        }
        let fd: Int32
        do {
            fd = try env.backend.deviceFD(device, group: payload.group, in: context)
        } catch {
            return fail(
                header, denial: Denial(.backendFailure, error.errno, "\(error)"), event: .deviceDenied,
                metadata: metadata)
        }
        replyFDs = [FileDescriptor(rawValue: fd)]
        audit.record(.deviceGiven, "gave the tenant device \(device) of group \(payload.group)", metadata: metadata)
        // Answered even when no reply was asked for: the reply is what carries the fd.
        ReplyEncoder.success(to: header, payload: EmptyCollection<UInt8>(), into: &reply)
    }

    // MARK: Replies

    private func succeed(_ header: MessageHeader) {
        guard header.wantsReply else { return }
        ReplyEncoder.success(to: header, payload: EmptyCollection<UInt8>(), into: &reply)
    }

    private func fail(_ header: MessageHeader, denial: Denial, event: AuditEvent, metadata: Logger.Metadata) {
        switch event {
        case .mapDenied: count("map", denial: denial)
        case .unmapDenied: count("unmap", denial: denial)
        case .attachDenied: count("attach", denial: denial)
        default: break
        }
        audit.record(
            event, denial.reason, level: .warning, metadata: metadata.merging(Audit.decisionMetadata(denial)) { $1 })
        if event == .mapDenied, env.events.hasSubscribers {
            let fields = metadata.merging(Audit.decisionMetadata(denial)) { $1 }
            env.events.publish(
                AdminEvent("DMA_MAP_DENIED", Audit.eventData(logger.handler.metadata.merging(fields) { $1 })))
        }
        reply.removeAll(keepingCapacity: true)
        // Errors are answered even when the command asked for no reply, so that none is lost.
        ReplyEncoder.error(
            to: header, errno: denial.errno.rawValue,
            detail: errorDetail ? Array(DecisionReport.json(denial).rendered.utf8) + [0] : nil, into: &reply)
    }

    private func fail(_ header: MessageHeader, errno: Int32, reason: String, event: AuditEvent) {
        audit.record(
            event, reason, level: .warning,
            metadata: [
                AuditKey.decision: "deny", AuditKey.errno: .string(String(errno)), AuditKey.reason: .string(reason),
                AuditKey.command: .string(String(header.command)),
            ])
        reply.removeAll(keepingCapacity: true)
        ReplyEncoder.error(
            to: header, errno: errno, detail: errorDetail ? detailJSON(errno: errno, reason: reason) : nil, into: &reply
        )
    }

    private func detailJSON(errno: Int32, reason: String) -> [UInt8] {
        let value = JSONValue.object([
            ("decision", .string("deny")), ("errno", .int(Int64(errno))), ("reason", .string(reason)),
            ("conflict", .null),
        ])
        return Array(value.rendered.utf8) + [0]
    }

    // MARK: End of session

    /// Unmaps everything from the backend, releases the groups and the memfds, and forgets
    /// the session. Runs however the session ended.
    private func finish() {
        lock.withLock { _ in finishLocked() }
    }

    private func finishLocked() {
        let mappings = state.mappingCount
        let bytes = state.mappedBytes
        env.stats.unmapped(count: mappings, bytes: bytes)
        if let context {
            env.backend.destroyContext(context)
        }
        for group in state.groups {
            env.groups.release(group, from: id)
        }
        for fd in memory.values { try? fd.close() }
        memory.removeAll()
        env.sessions.remove(id)
        socket.close()
        audit.record(
            .sessionClosed, "session closed; released \(mappings) mapping(s) and \(state.groups.count) group(s)",
            metadata: [
                AuditKey.group: .string(state.groups.map(String.init).joined(separator: ",")),
                AuditKey.bytes: .string(Hex(bytes).description),
            ])
        if refusal == nil {
            env.events.publish(
                AdminEvent(
                    "TENANT_DISCONNECTED",
                    [
                        ("session", .uint(id.rawValue)), ("uid", .uint(UInt64(credentials.uid))),
                        ("pid", .int(Int64(credentials.pid))), ("mappings", .int(Int64(mappings))),
                        ("bytes", .uint(bytes)), ("reason", .string(revocation ?? "disconnected")),
                    ]))
        }
        state = TenantState()
    }

    private func now() -> Double { Date.timeIntervalSinceReferenceDate }

    private func deadline(after seconds: Double) -> Double? {
        seconds > 0 ? now() + seconds : nil
    }
}

/// A session as the admin plane lists it.
public struct SessionSummary: Sendable {
    public var id: SessionID
    public var credentials: PeerCredentials
    /// The [[tenant]] rule that admitted it; nil for a refused peer.
    public var origin: String?
    public var groups: [UInt32]
    public var mappingCount: Int
    public var mappedBytes: UInt64
    public var openedAt: Date
}

/// One mapping as the admin plane lists it.
public struct MappingSummary: Sendable {
    public var session: SessionID
    public var range: IOVARange
    public var protection: DMAProtection
    public var backed: Bool
}

/// A mapping the admin plane or a reload took away, with why.
public struct Revocation: Sendable {
    public var session: SessionID
    public var credentials: PeerCredentials
    public var groups: [UInt32]
    public var range: IOVARange
    public var protection: DMAProtection
    public var denial: Denial
}

/// What revalidating one session did.
struct SessionRevalidation: Sendable {
    var revoked: [Revocation] = []
    /// Set when the session as a whole was ended.
    var ended: Denial?
    var failures: [String] = []
}

// MARK: The admin plane's view of a session

extension Session {
    func summary() -> SessionSummary {
        lock.withLock { _ in
            SessionSummary(
                id: id, credentials: credentials, origin: tenant?.origin, groups: state.groups,
                mappingCount: state.mappingCount, mappedBytes: state.mappedBytes, openedAt: openedAt)
        }
    }

    /// Mappings in address order, `limit` of them after skipping `offset`, and how many there are.
    func mappings(offset: Int, limit: Int) -> (total: Int, page: [MappingSummary]) {
        lock.withLock { _ in
            var page: [MappingSummary] = []
            var index = 0
            if limit > 0, offset < state.mappingCount {
                state.mappings.forEachOverlap(.all) { entry in
                    defer { index += 1 }
                    guard index >= offset else { return true }
                    page.append(
                        MappingSummary(
                            session: id, range: entry.range, protection: entry.value.protection,
                            backed: entry.value.memory?.handle ?? 0 != 0))
                    return page.count < limit
                }
            }
            return (state.mappingCount, page)
        }
    }

    /// Checks the session against a new snapshot (already in the store) and unmaps what it no
    /// longer allows. A session whose tenant rule or group is gone is revoked as a whole.
    func revalidate(against snapshot: PolicySnapshot) -> SessionRevalidation {
        let outcome = lock.withLock { _ -> SessionRevalidation in
            var outcome = SessionRevalidation()
            guard refusal == nil, revocation == nil else { return outcome }
            let newTenant = snapshot.config.policy(uid: credentials.uid, gid: credentials.gid, daemonUID: env.daemonUID)
            let result = PolicyEngine.revalidate(platform: snapshot.database, tenant: newTenant, state: state)
            if let denial = result.sessionDenial {
                outcome.ended = denial
                let all = state.mappings.entries
                outcome.revoked = all.map { revocation(of: $0, denial) }
                if let failure = release(UnmapPlan(entries: all)) { outcome.failures.append(failure.reason) }
                revocation = denial.reason
                return outcome
            }
            tenant = newTenant
            guard !result.revoked.isEmpty else { return outcome }
            let plan = UnmapPlan(entries: result.revoked.map(\.entry))
            if let failure = release(plan) { outcome.failures.append(failure.reason) }
            // Only what is really gone from the state counts as revoked.
            outcome.revoked = result.revoked.filter { !state.mappings.contains($0.entry.id) }.map {
                revocation(of: $0.entry, $0.denial)
            }
            return outcome
        }
        if outcome.ended != nil { try? socket.shutdown(.both) }
        return outcome
    }

    /// Unmaps everything and ends the session; its thread then releases the rest.
    func revoke(reason: String) -> (revoked: [Revocation], failure: String?) {
        let outcome = lock.withLock { _ -> (revoked: [Revocation], failure: String?) in
            guard revocation == nil else { return ([], nil) }
            let denial = Denial(.revoked, .EPERM, reason)
            let all = state.mappings.entries
            let failure = release(UnmapPlan(entries: all))
            revocation = reason
            return (
                all.filter { !state.mappings.contains($0.id) }.map { revocation(of: $0, denial) }, failure?.reason
            )
        }
        try? socket.shutdown(.both)
        return outcome
    }

    private func revocation(of entry: IntervalTree<Mapping>.Entry, _ denial: Denial) -> Revocation {
        Revocation(
            session: id, credentials: credentials, groups: state.groups, range: entry.range,
            protection: entry.value.protection, denial: denial)
    }
}

extension Denial.Code {
    /// Another session holds the group.
    static let groupBusy = Denial.Code("group-busy")
    /// The backend (the simulated IOMMU or the kernel) refused what policy allowed.
    static let backendFailure = Denial.Code("backend-failure")
    /// The fd passed with DMA_MAP cannot back the mapping.
    static let badBacking = Denial.Code("bad-backing")
    /// The admin plane revoked the session.
    static let revoked = Denial.Code("revoked")
    /// DEVICE_FD for a group the session has not attached.
    static let groupNotAttached = Denial.Code("group-not-attached")
    /// DEVICE_FD for a device the group does not have.
    static let unknownDevice = Denial.Code("unknown-device")
}

extension DeviceInfoPayload {
    func encodeReply(to header: MessageHeader, into reply: inout [UInt8]) {
        var bytes: [UInt8] = []
        encode(into: &bytes)
        ReplyEncoder.success(to: header, payload: bytes, into: &reply)
    }
}
