import DaemonMetrics
import Foundation
import IOMMUBackends
import IOMMUCore
import Logging
import PlatformDiscovery
import Synchronization

/// A reserved region added at run time through the admin plane.
public struct RuntimeRegion: Sendable, Hashable {
    public var id: UInt64
    public var region: ReservedRegion
    public var comment: String?
    /// Kept in the state file across restarts; otherwise held by the admin connection that
    /// added it and removed when that connection closes.
    public var persistent: Bool
}

/// What a reload or a region change did.
public struct PolicyChange: Sendable {
    public var revoked: [Revocation] = []
    /// Sessions ended as a whole, with why.
    public var endedSessions: [(SessionID, Denial)] = []
    /// Backend unmaps that failed while revoking: those mappings stay, and are reported.
    public var failures: [String] = []
    public var regionsChanged = false
    public var diagnostics: [Diagnostic] = []
}

/// Failures of admin operations, each a sentence for the operator.
public struct ControlError: Error, Sendable, CustomStringConvertible {
    public var description: String
    /// Every problem, for a reload whose config is invalid.
    public var diagnostics: [Diagnostic]

    public init(_ description: String, diagnostics: [Diagnostic] = []) {
        self.description = description
        self.diagnostics = diagnostics
    }
}

/// The admin plane's operations on the running daemon: reload with revalidation, runtime
/// regions, revocation and the listings. Changes are serialised; each builds a whole new
/// snapshot, swaps it into the store, then revalidates every session against it, so requests
/// in flight see the old snapshot or the new one, never a mix.
public final class DaemonControl: Sendable {
    public typealias Loader = @Sendable () -> Result<LoadedPlatform, ConfigError>

    let env: SessionEnvironment
    private let loader: Loader
    private let logger: Logger
    /// Where persistent runtime regions are kept; nil when the daemon has no state directory.
    public let stateFile: String?

    private struct State: Sendable {
        /// The last successful load: discovery plus config, without runtime regions.
        var base: LoadedPlatform
        var runtime: [RuntimeRegion] = []
        var nextRegionID: UInt64 = 1
        var reloads = 0
        var lastReload: Date?
    }

    private let state: Mutex<State>

    public init(
        environment: SessionEnvironment, initial: LoadedPlatform, loader: @escaping Loader, stateFile: String?,
        logger: Logger
    ) {
        self.env = environment
        self.loader = loader
        self.stateFile = stateFile
        self.logger = logger
        self.state = Mutex(State(base: initial))
    }

    public var environment: SessionEnvironment { env }
    private var audit: Audit { env.audit }

    // MARK: Start-up

    /// Reads the persistent runtime regions from the state file and applies them. A missing
    /// file is an empty list; a damaged one is reported and left alone (not overwritten).
    public func loadPersistentRegions() -> [String] {
        guard let stateFile, FileManager.default.fileExists(atPath: stateFile) else { return [] }
        let entries: [(region: ReservedRegion, comment: String?)]
        do {
            entries = try RuntimeRegionRecord.decodeFile(Data(contentsOf: URL(fileURLWithPath: stateFile))).map {
                (try $0.region, $0.comment)
            }
        } catch {
            return ["\(stateFile): \(error); its regions are not applied"]
        }
        var problems: [String] = []
        state.withLock { state in
            for entry in entries {
                var region = entry.region
                region.owner = .persistent
                region.source = "admin (persistent, \(stateFile))"
                state.runtime.append(
                    RuntimeRegion(id: state.nextRegionID, region: region, comment: entry.comment, persistent: true))
                state.nextRegionID += 1
            }
            let (snapshot, diagnostics) = compose(state)
            problems = diagnostics.map(\.description)
            env.store.replace(with: snapshot)
        }
        return problems
    }

    // MARK: Reload

    /// Re-runs discovery and re-reads the config. An invalid config changes nothing and
    /// returns every error; otherwise the new snapshot goes in and every session is revalidated.
    public func reload(trigger: String) -> Result<PolicyChange, ControlError> {
        let outcome = state.withLock { state -> Result<PolicyChange, ControlError> in
            let loaded: LoadedPlatform
            switch loader() {
            case .failure(let error):
                return .failure(
                    ControlError(
                        "the reload failed; nothing changed: \(error.diagnostics.map(\.description).joined(separator: "; "))",
                        diagnostics: error.diagnostics))
            case .success(let value): loaded = value
            }
            let before = env.store.current.database.allRegions
            state.base = loaded
            state.reloads += 1
            state.lastReload = Date()
            var change = apply(state)
            change.regionsChanged = before != env.store.current.database.allRegions
            change.diagnostics = loaded.diagnostics + change.diagnostics
            return .success(change)
        }
        env.metrics.reload(succeeded: (try? outcome.get()) != nil)
        switch outcome {
        case .success(let change):
            audit.record(
                .policyReloaded,
                "reloaded (\(trigger)): \(change.revoked.count) mapping(s) revoked, \(change.endedSessions.count) session(s) ended",
                level: .notice, metadata: ["reload.trigger": .string(trigger)])
            for diagnostic in change.diagnostics { logger.warning("reload: \(diagnostic)") }
            publish(change, cause: "reload")
            env.events.publish(
                AdminEvent(
                    "POLICY_RELOADED",
                    [
                        ("trigger", .string(trigger)), ("revoked", .int(Int64(change.revoked.count))),
                        ("sessions-ended", .int(Int64(change.endedSessions.count))),
                        ("diagnostics", .strings(change.diagnostics.map(\.description))),
                    ]))
        case .failure(let error):
            audit.record(
                .reloadFailed, error.description, level: .error, metadata: ["reload.trigger": .string(trigger)])
        }
        return outcome
    }

    // MARK: Runtime regions

    /// Adds a region for `group` (nil: every group). Mappings it overlaps are revoked.
    public func addRegion(
        kind: RegionKind, range: IOVARange, group: UInt32?, comment: String?, persistent: Bool, connection: UInt64
    ) -> Result<(RuntimeRegion, PolicyChange), ControlError> {
        let outcome = state.withLock { state -> Result<(RuntimeRegion, PolicyChange), ControlError> in
            if let group, env.store.current.database.groups[group] == nil {
                return .failure(ControlError("no IOMMU group \(group)"))
            }
            let id = state.nextRegionID
            let source =
                persistent
                ? "admin (persistent, \(stateFile ?? "no state file"))" : "admin connection \(connection)"
            let region = ReservedRegion(
                kind: kind, range: range, owner: persistent ? .persistent : .admin(connection: connection),
                source: comment.map { "\(source): \($0)" } ?? source, group: group)
            let added = RuntimeRegion(id: id, region: region, comment: comment, persistent: persistent)
            var trial = state
            trial.runtime.append(added)
            trial.nextRegionID += 1
            if persistent, let problem = save(trial.runtime) { return .failure(problem) }
            state = trial
            var change = apply(state)
            change.regionsChanged = true
            return .success((added, change))
        }
        if case .success(let (added, change)) = outcome {
            audit.record(
                .regionAdded, "added \(added.region) (id \(added.id))", level: .notice,
                metadata: regionMetadata(added.region))
            publish(change, cause: "add-reserved-region \(added.id)")
        }
        return outcome
    }

    /// Removes a runtime region by id.
    public func removeRegion(id: UInt64) -> Result<RuntimeRegion, ControlError> {
        let outcome = state.withLock { state -> Result<RuntimeRegion, ControlError> in
            guard let index = state.runtime.firstIndex(where: { $0.id == id }) else {
                return .failure(ControlError("no runtime region with id \(id)"))
            }
            var trial = state
            let removed = trial.runtime.remove(at: index)
            if removed.persistent, let problem = save(trial.runtime) { return .failure(problem) }
            state = trial
            _ = apply(state)
            return .success(removed)
        }
        if case .success(let removed) = outcome {
            audit.record(
                .regionRemoved, "removed \(removed.region) (id \(removed.id))", level: .notice,
                metadata: regionMetadata(removed.region))
            publishRegionsChanged(cause: "remove-reserved-region \(id)")
        }
        return outcome
    }

    /// An admin connection closed: the regions it held go.
    public func connectionClosed(_ connection: UInt64) {
        let owner = RegionOwner.admin(connection: connection)
        let removed = state.withLock { state -> Int in
            let before = state.runtime.count
            state.runtime.removeAll { $0.region.owner == owner }
            guard state.runtime.count != before else { return 0 }
            _ = apply(state)
            return before - state.runtime.count
        }
        if removed > 0 {
            logger.notice("admin connection \(connection) closed: its \(removed) runtime region(s) removed")
            publishRegionsChanged(cause: "admin connection \(connection) closed")
        }
    }

    public var runtimeRegions: [RuntimeRegion] { state.withLock { $0.runtime } }

    // MARK: Tenants

    /// Unmaps everything of a session and closes it.
    public func revokeTenant(_ id: SessionID, reason: String) -> Result<Int, ControlError> {
        guard let session = env.sessions.session(id), session.refusal == nil else {
            return .failure(ControlError("no tenant session \(id)"))
        }
        let (revoked, failure) = session.revoke(reason: reason)
        var change = PolicyChange()
        change.revoked = revoked
        change.endedSessions = [(id, Denial(.revoked, .EPERM, reason))]
        if let failure { change.failures = [failure] }
        publish(change, cause: reason)
        return .success(revoked.count)
    }

    public var sessions: [SessionSummary] { env.sessions.tenantSessions.map { $0.summary() } }

    func session(_ id: SessionID) -> Session? { env.sessions.session(id) }

    public var sources: (sources: [String], diagnostics: [Diagnostic], reloads: Int, lastReload: Date?) {
        state.withLock { ($0.base.sources, $0.base.diagnostics, $0.reloads, $0.lastReload) }
    }

    // MARK: Applying a change

    /// The base database plus the runtime regions. A runtime region for a group that vanished
    /// is kept (it applies again if the group returns) and reported.
    private func compose(_ state: State) -> (PolicySnapshot, [Diagnostic]) {
        var database = state.base.database
        var diagnostics: [Diagnostic] = []
        for runtime in state.runtime {
            do {
                try database.addRegion(runtime.region)
            } catch {
                diagnostics.append(
                    Diagnostic(.warning, file: "runtime region \(runtime.id)", "\(error); not applied"))
            }
        }
        return (PolicySnapshot(database: database, config: state.base.config), diagnostics)
    }

    /// Swaps in the composed snapshot and revalidates every session. Called with the state
    /// lock held, so changes apply one at a time.
    private func apply(_ state: State) -> PolicyChange {
        let (snapshot, diagnostics) = env.kernelRegions.withRegions { learned in
            var (snapshot, diagnostics) = compose(state)
            for region in learned { try? snapshot.database.addRegion(region) }
            env.store.replace(with: snapshot)
            return (snapshot, diagnostics)
        }
        env.backend.platformChanged(snapshot.database)
        var change = PolicyChange()
        change.diagnostics = diagnostics
        for session in env.sessions.tenantSessions {
            let result = session.revalidate(against: snapshot)
            change.revoked += result.revoked
            change.failures += result.failures
            if let ended = result.ended { change.endedSessions.append((session.id, ended)) }
        }
        return change
    }

    /// Audit records and events for what a change revoked.
    private func publish(_ change: PolicyChange, cause: String) {
        for revocation in change.revoked {
            let metadata: Logger.Metadata = [
                AuditKey.session: .string(revocation.session.description),
                AuditKey.uid: .string(String(revocation.credentials.uid)),
                AuditKey.gid: .string(String(revocation.credentials.gid)),
                AuditKey.pid: .string(String(revocation.credentials.pid)),
                AuditKey.group: .string(revocation.groups.map(String.init).joined(separator: ",")),
                AuditKey.iova: .string(Hex(revocation.range.first).description),
                AuditKey.size: .string(Hex(revocation.range.sizeMinusOne &+ 1).description),
                AuditKey.flags: .string(String(revocation.protection.rawValue)),
                "revoke.cause": .string(cause),
            ].merging(Audit.decisionMetadata(revocation.denial)) { $1 }
            audit.record(
                .mappingRevoked, "revoked \(revocation.range): \(revocation.denial.reason)", level: .warning,
                metadata: metadata)
            env.events.publish(AdminEvent("MAPPING_REVOKED", Audit.eventData(metadata)))
            env.metrics.revocation(reason: revocation.denial.code.rawValue)
        }
        for failure in change.failures {
            logger.error("revocation: the backend refused an unmap, the mapping stays: \(failure)")
        }
        for (id, denial) in change.endedSessions {
            logger.warning("session \(id) ended by the admin plane: \(denial.reason)")
        }
        if change.regionsChanged { publishRegionsChanged(cause: cause) }
    }

    private func publishRegionsChanged(cause: String) {
        env.events.publish(
            AdminEvent(
                "REGIONS_CHANGED",
                [
                    ("cause", .string(cause)),
                    ("regions", .int(Int64(env.store.current.database.allRegions.count))),
                ]))
    }

    private func regionMetadata(_ region: ReservedRegion) -> Logger.Metadata {
        [
            AuditKey.regionKind: .string(region.kind.rawValue), AuditKey.regionSource: .string(region.source),
            AuditKey.iova: .string(Hex(region.range.first).description),
            AuditKey.size: .string(Hex(region.range.sizeMinusOne &+ 1).description),
            AuditKey.group: .string(region.group.map(String.init) ?? "all"),
        ]
    }

    /// Writes the persistent regions atomically (`replaceFile`: a temporary file, then rename).
    private func save(_ runtime: [RuntimeRegion]) -> ControlError? {
        guard let stateFile else {
            return ControlError("persist needs a state directory ($STATE_DIRECTORY or --state-directory)")
        }
        let records = runtime.filter(\.persistent).map { RuntimeRegionRecord(region: $0.region, comment: $0.comment) }
        do {
            let data = try RuntimeRegionRecord.encodeFile(records)
            try replaceFile(stateFile, with: String(decoding: data, as: UTF8.self))
        } catch {
            return ControlError("cannot write \(stateFile): \(error)")
        }
        return nil
    }
}

/// One persistent region as the state file keeps it.
struct RuntimeRegionRecord: Codable {
    var kind: String
    var first: String
    var last: String
    var group: UInt32?
    var comment: String?

    init(region: ReservedRegion, comment: String?) {
        kind = region.kind.rawValue
        first = Hex(region.range.first).description
        last = Hex(region.range.last).description
        group = region.group
        self.comment = comment
    }

    var region: ReservedRegion {
        get throws {
            guard let kind = RegionKind(rawValue: kind) else { throw ControlError("unknown region kind \"\(kind)\"") }
            guard let first = NumberParser.uint64(first), let last = NumberParser.uint64(last),
                let range = IOVARange(first: first, last: last)
            else { throw ControlError("bad range \(first)-\(last)") }
            return ReservedRegion(kind: kind, range: range, owner: .persistent, source: "", group: group)
        }
    }

    private struct File: Codable {
        var version: Int
        var regions: [RuntimeRegionRecord]
    }

    static func encodeFile(_ records: [RuntimeRegionRecord]) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(File(version: 1, regions: records))
    }

    static func decodeFile(_ data: Data) throws -> [RuntimeRegionRecord] {
        let file = try JSONDecoder().decode(File.self, from: data)
        guard file.version == 1 else { throw ControlError("unknown state file version \(file.version)") }
        return file.regions
    }
}
