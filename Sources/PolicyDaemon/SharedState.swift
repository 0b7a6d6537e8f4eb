import DaemonMetrics
import IOMMUCore
import PlatformDiscovery
import Synchronization
import UnixSockets

/// What every session decides against: the platform database and the policy config. Swapped
/// whole (a reload builds a new one), so a request sees either the old one or the new one.
public struct PolicySnapshot: Sendable {
    public var database: PlatformDatabase
    public var config: PolicyConfig

    public init(database: PlatformDatabase, config: PolicyConfig) {
        self.database = database
        self.config = config
    }
}

public final class PolicyStore: Sendable {
    private let state: Mutex<PolicySnapshot>
    /// Bumped by every `replace`, after the new snapshot is in: a reader whose copy has the
    /// current generation need not take the lock (see `SnapshotCache`).
    private let generationCounter = Atomic<UInt64>(0)

    public init(_ snapshot: PolicySnapshot) {
        state = Mutex(snapshot)
    }

    /// A consistent copy; the database and config are copy-on-write, so this is cheap.
    public var current: PolicySnapshot { state.withLock { $0 } }

    public var generation: UInt64 { generationCounter.load(ordering: .acquiring) }

    /// The snapshot and the generation it belongs to, read together.
    func currentWithGeneration() -> (PolicySnapshot, UInt64) {
        state.withLock { ($0, generationCounter.load(ordering: .relaxed)) }
    }

    public func replace(with snapshot: PolicySnapshot) {
        state.withLock {
            $0 = snapshot
            generationCounter.wrappingAdd(1, ordering: .releasing)
        }
    }
}

/// One session's copy of the store's snapshot, refreshed only when the generation moved: the
/// request path reads one atomic instead of taking the lock every session shares. (On a
/// single CPU, a lock that every request takes makes a convoy of the tenants' threads.)
struct SnapshotCache {
    private var snapshot: PolicySnapshot?
    private var generation: UInt64 = 0

    mutating func current(_ store: PolicyStore) -> PolicySnapshot {
        if let snapshot, store.generation == generation { return snapshot }
        let (fresh, freshGeneration) = store.currentWithGeneration()
        snapshot = fresh
        generation = freshGeneration
        return fresh
    }
}

/// Regions learned from the kernel at attach (reconciliation), by group, and which groups'
/// disagreements were already reported. A reload keeps them: DaemonControl composes them into
/// every new snapshot, under the same lock that adopts new ones, so none is lost in between.
public final class KernelRegionRegistry: Sendable {
    private struct State {
        var regions: [UInt32: [ReservedRegion]] = [:]
        var reported: Set<UInt32> = []
    }

    private let state = Mutex(State())

    public init() {}

    /// Adds `regions` for `group` to the registry and to the live snapshot. True the first time
    /// `group` is seen, when its disagreements should be logged.
    func adopt(_ regions: [ReservedRegion], group: UInt32, store: PolicyStore) -> Bool {
        state.withLock { state in
            let first = state.reported.insert(group).inserted
            let known = Set(state.regions[group] ?? [])
            let fresh = regions.filter { !known.contains($0) }
            guard !fresh.isEmpty else { return first }
            state.regions[group, default: []] += fresh
            var snapshot = store.current
            for region in fresh { try? snapshot.database.addRegion(region) }
            store.replace(with: snapshot)
            return first
        }
    }

    /// Runs `body` with every learned region, holding the registry's lock so that no region is
    /// adopted in between (for composing and swapping in a new snapshot).
    func withRegions<T>(_ body: ([ReservedRegion]) -> T) -> T {
        state.withLock { state in body(state.regions.values.flatMap { $0 }) }
    }
}

public struct SessionID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static func < (lhs: SessionID, rhs: SessionID) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { String(rawValue) }
}

/// Which session holds each IOMMU group: a group belongs to one session at a time, as a VFIO
/// group belongs to one container.
final class GroupRegistry: Sendable {
    private let holders = Mutex<[UInt32: SessionID]>([:])

    /// Claims `group` for `session`; returns the other holder when it is taken.
    func claim(_ group: UInt32, for session: SessionID) -> SessionID? {
        holders.withLock { holders in
            if let holder = holders[group], holder != session { return holder }
            holders[group] = session
            return nil
        }
    }

    func release(_ group: UInt32, from session: SessionID) {
        holders.withLock { holders in
            if holders[group] == session { holders[group] = nil }
        }
    }

    var heldGroups: [UInt32: SessionID] { holders.withLock { $0 } }

    var count: Int { holders.withLock { $0.count } }
}

/// The live sessions: per-uid counts for the connection limit, and their sockets so that
/// shutdown can wake each session's reader.
final class SessionTable: Sendable {
    struct Entry: Sendable {
        var credentials: PeerCredentials
        var socket: UnixSocket
        /// Refused peers' sessions do not count toward their uid's limit.
        var counted: Bool
        /// Set once the session is made, right after admission.
        var session: Session?
    }

    private struct State {
        var entries: [SessionID: Entry] = [:]
        var perUID: [UInt32: Int] = [:]
        var nextID: UInt64 = 1
        var closing = false
    }

    private let state = Mutex(State())

    enum Admission {
        case admitted(SessionID)
        case overLimit(current: Int)
        case closing
    }

    /// Admits a session counted toward its uid's `limit`, or, with a nil limit, one that is
    /// not counted (a refused peer's, which only lives to answer EPERM).
    func admit(_ credentials: PeerCredentials, socket: UnixSocket, limit: Int?) -> Admission {
        state.withLock { state in
            guard !state.closing else { return .closing }
            let current = state.perUID[credentials.uid, default: 0]
            if let limit {
                guard current < limit else { return .overLimit(current: current) }
                state.perUID[credentials.uid] = current + 1
            }
            let id = SessionID(rawValue: state.nextID)
            state.nextID += 1
            state.entries[id] = Entry(credentials: credentials, socket: socket, counted: limit != nil, session: nil)
            return .admitted(id)
        }
    }

    func register(_ session: Session) {
        state.withLock { $0.entries[session.id]?.session = session }
    }

    /// The live sessions of tenants (not refused peers), by id.
    var tenantSessions: [Session] {
        state.withLock { state in
            state.entries.values.compactMap { $0.counted ? $0.session : nil }.sorted { $0.id < $1.id }
        }
    }

    func session(_ id: SessionID) -> Session? {
        state.withLock { $0.entries[id]?.session }
    }

    func remove(_ id: SessionID) {
        state.withLock { state in
            guard let entry = state.entries.removeValue(forKey: id), entry.counted else { return }
            let remaining = state.perUID[entry.credentials.uid, default: 1] - 1
            state.perUID[entry.credentials.uid] = remaining > 0 ? remaining : nil
        }
    }

    /// Refuses new sessions and wakes every session's reader, which then finishes the request
    /// in hand, sees end-of-file and cleans up.
    func closeAll() {
        let sockets = state.withLock { state in
            state.closing = true
            return state.entries.values.map(\.socket)
        }
        for socket in sockets { try? socket.shutdown(.read) }
    }

    var count: Int { state.withLock { $0.entries.count } }
}

/// Counters every session updates and the status line reads; the mapping gauges of the
/// metrics follow them.
public final class DaemonStats: Sendable {
    let mappings = Atomic<Int>(0)
    let mappedBytes = Atomic<UInt64>(0)
    /// Tenant sessions opened since start.
    let sessionsTotal = Atomic<UInt64>(0)
    private let metrics: DaemonMetrics?

    public init(metrics: DaemonMetrics? = nil) {
        self.metrics = metrics
    }

    func mapped(bytes: UInt64) {
        let count = mappings.wrappingAdd(1, ordering: .relaxed).newValue
        let total = mappedBytes.wrappingAdd(bytes, ordering: .relaxed).newValue
        metrics?.setMappings(count)
        metrics?.setMappedBytes(total)
    }

    func unmapped(count: Int, bytes: UInt64) {
        guard count > 0 || bytes > 0 else { return }
        let remaining = mappings.wrappingSubtract(count, ordering: .relaxed).newValue
        let total = mappedBytes.wrappingSubtract(bytes, ordering: .relaxed).newValue
        metrics?.setMappings(remaining)
        metrics?.setMappedBytes(total)
    }

    public var mappingCount: Int { mappings.load(ordering: .relaxed) }
}
