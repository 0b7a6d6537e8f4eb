import Metrics
import Synchronization

import class Prometheus.PrometheusCollectorRegistry
import struct Prometheus.PrometheusMetricsFactory

/// The daemon's counters, gauges and decision-latency histograms.
///
/// Each instance owns its own `PrometheusCollectorRegistry` and creates its swift-metrics
/// handles through a factory bound to it, never through `MetricsSystem`, so tests and several
/// instances in one process never see each other's numbers.
///
/// Series, one `# TYPE` each:
/// - `iommu_policyd_requests_total{command, result="allowed|denied", reason}` (counter). An
///   allowed request carries `reason=""`: every series of the family has the same label names,
///   as Prometheus client libraries require, and Prometheus treats an empty label as absent.
/// - `iommu_policyd_decision_duration_seconds{command}` (histogram, 1 µs to 100 ms).
/// - `iommu_policyd_mappings`, `iommu_policyd_mapped_bytes`, `iommu_policyd_sessions` (gauges).
/// - `iommu_policyd_sessions_opened_total`, `iommu_policyd_events_dropped_total` (counters).
/// - `iommu_policyd_revocations_total{reason}`, `iommu_policyd_reloads_total{result="ok|failed"}`.
///
/// Label values must come from closed sets (command names, reason codes), never from tenant
/// input. As a backstop each labelled family holds at most `maxSeriesPerFamily` series; past
/// that, new values are counted under `other`, so a stray value cannot grow memory unboundedly.
public final class DaemonMetrics: Sendable {
    /// How a tenant request ended.
    public enum Result: Hashable, Sendable {
        case allowed
        /// Refused. `reason` is a stable code: `overlaps-reserved`, `outside-aperture`, `quota`,
        /// `backend-failure`, …
        case denied(reason: String)
    }

    /// The metric names, as scraped.
    public enum Name {
        public static let requests = "iommu_policyd_requests_total"
        public static let decisionDuration = "iommu_policyd_decision_duration_seconds"
        public static let mappings = "iommu_policyd_mappings"
        public static let mappedBytes = "iommu_policyd_mapped_bytes"
        public static let sessions = "iommu_policyd_sessions"
        public static let sessionsTotal = "iommu_policyd_sessions_opened_total"
        public static let revocations = "iommu_policyd_revocations_total"
        public static let eventsDropped = "iommu_policyd_events_dropped_total"
        public static let reloads = "iommu_policyd_reloads_total"
    }

    /// The label value that stands in for values past a family's series limit.
    public static let overflowLabel = "other"

    /// Upper bounds of the decision-latency buckets: 1-2.5-5 steps from 1 µs to 100 ms.
    public static let decisionDurationBuckets: [Duration] = [
        .microseconds(1), .nanoseconds(2500), .microseconds(5),
        .microseconds(10), .microseconds(25), .microseconds(50),
        .microseconds(100), .microseconds(250), .microseconds(500),
        .milliseconds(1), .microseconds(2500), .milliseconds(5),
        .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100),
    ]

    private let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory

    // Creating a swift-metrics handle looks its series up under the registry's lock, so the
    // hot path creates each one once and then finds it in these tables.
    private let requests: Mutex<SeriesTable<RequestKey, RequestCounter>>
    private let latency: Mutex<LatencyState>
    private let revocations: Mutex<SeriesTable<String, Counter>>

    private let mappings: Gauge
    private let mappedBytes: Gauge
    private let sessions: Gauge
    private let sessionsTotal: Counter
    private let eventsDropped: Counter
    private let reloadsOK: Counter
    private let reloadsFailed: Counter

    public init(maxSeriesPerFamily: Int = 256) {
        precondition(maxSeriesPerFamily > 0, "a family needs room for at least one series")
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets[Name.decisionDuration] = Self.decisionDurationBuckets
        self.factory = factory

        requests = Mutex(SeriesTable(limit: maxSeriesPerFamily))
        latency = Mutex(LatencyState(timers: SeriesTable(limit: maxSeriesPerFamily)))
        revocations = Mutex(SeriesTable(limit: maxSeriesPerFamily))

        mappings = Gauge(label: Name.mappings, factory: factory)
        mappedBytes = Gauge(label: Name.mappedBytes, factory: factory)
        sessions = Gauge(label: Name.sessions, factory: factory)
        sessionsTotal = Counter(label: Name.sessionsTotal, factory: factory)
        eventsDropped = Counter(label: Name.eventsDropped, factory: factory)
        reloadsOK = Counter(label: Name.reloads, dimensions: [("result", "ok")], factory: factory)
        reloadsFailed = Counter(label: Name.reloads, dimensions: [("result", "failed")], factory: factory)
    }

    // MARK: Hot path

    /// Counts one tenant request and its outcome.
    public func request(command: String, result: Result) {
        requestCounter(command: command, result: result).increment()
    }

    /// The counter of one (command, result) series, for a caller to keep and increment without
    /// looking it up again: a session counts its requests with no lock shared with others.
    public func requestCounter(command: String, result: Result) -> RequestCounter {
        let key = RequestKey(command: command, result: result)
        return requests.withLock { table in
            table.update(key, overflow: key.overflow) { key in
                RequestCounter(
                    counter: Counter(label: Name.requests, dimensions: key.dimensions, factory: self.factory))
            } body: {
                $0
            }
        }
    }

    /// Records how long the policy engine took to decide one request.
    public func decisionLatency(nanoseconds: UInt64, command: String) {
        let timer = latency.withLock { state in
            state.histogram.record(nanoseconds)
            return state.timers.update(command, overflow: Self.overflowLabel) { command in
                Timer(label: Name.decisionDuration, dimensions: [("command", command)], factory: self.factory)
            } body: {
                $0
            }
        }
        timer.recordNanoseconds(nanoseconds)
    }

    // MARK: Gauges and rare events

    public func setMappings(_ count: Int) { mappings.record(count) }

    /// Gauges are doubles: above 2^53 bytes (8 PiB) the value is rounded.
    public func setMappedBytes(_ bytes: UInt64) { mappedBytes.record(Double(bytes)) }

    public func setSessions(_ count: Int) { sessions.record(count) }

    /// A tenant session was opened.
    public func sessionStarted() { sessionsTotal.increment() }

    /// A mapping was revoked, for example because a reload reserved its range.
    public func revocation(reason: String) {
        let counter = revocations.withLock { table in
            table.update(reason, overflow: Self.overflowLabel) { reason in
                Counter(label: Name.revocations, dimensions: [("reason", reason)], factory: self.factory)
            } body: {
                $0
            }
        }
        counter.increment()
    }

    /// Admin events were dropped because a subscriber fell behind.
    public func eventsDropped(_ count: Int = 1) { eventsDropped.increment(by: count) }

    /// A configuration or platform reload finished.
    public func reload(succeeded: Bool) { (succeeded ? reloadsOK : reloadsFailed).increment() }

    // MARK: Reading

    /// Every series in the Prometheus text exposition format (version 0.0.4).
    ///
    /// swift-prometheus emits families in hash order, which changes from process to process.
    public func prometheusText() -> String {
        registry.emitToString()
    }

    /// The in-process summary behind the admin `query-stats` command.
    public func snapshot() -> StatsSnapshot {
        var snapshot = requests.withLock { table in
            var snapshot = StatsSnapshot()
            for (key, tally) in table.handles {
                let count = tally.count
                snapshot.requests += count
                switch key.result {
                case .allowed: snapshot.allowed += count
                case .denied(let reason): snapshot.deniedByReason[reason, default: 0] += count
                }
            }
            return snapshot
        }
        // Copy the 15 KiB of buckets out and walk them after releasing the lock.
        let histogram = latency.withLock { $0.histogram }
        snapshot.latency = LatencyPercentiles(histogram)
        return snapshot
    }
}

/// The admin `query-stats` summary: request totals and decision-latency percentiles.
public struct StatsSnapshot: Hashable, Sendable {
    public var requests: UInt64 = 0
    public var allowed: UInt64 = 0
    /// Denied requests by reason code, over all commands.
    public var deniedByReason: [String: UInt64] = [:]
    public var latency = LatencyPercentiles()

    public var denied: UInt64 { deniedByReason.values.reduce(0, +) }

    public init() {}
}

/// Decision-latency percentiles in nanoseconds, each within 1/64 (1.6 %) of the recorded value
/// at that rank; `max` is exact. All zero when nothing was recorded.
public struct LatencyPercentiles: Hashable, Sendable {
    public var count: UInt64 = 0
    public var p50: UInt64 = 0
    public var p90: UInt64 = 0
    public var p99: UInt64 = 0
    public var max: UInt64 = 0

    public init() {}

    init(_ histogram: LatencyHistogram) {
        count = histogram.count
        p50 = histogram.percentile(0.50)
        p90 = histogram.percentile(0.90)
        p99 = histogram.percentile(0.99)
        max = histogram.max
    }
}

private struct RequestKey: Hashable {
    var command: String
    var result: DaemonMetrics.Result

    var dimensions: [(String, String)] {
        switch result {
        case .allowed: [("command", command), ("result", "allowed"), ("reason", "")]
        case .denied(let reason): [("command", command), ("result", "denied"), ("reason", reason)]
        }
    }

    /// Where this request is counted once the family is full: the outcome survives, the
    /// free-form labels do not.
    var overflow: RequestKey {
        let other = DaemonMetrics.overflowLabel
        return switch result {
        case .allowed: RequestKey(command: other, result: .allowed)
        case .denied: RequestKey(command: other, result: .denied(reason: other))
        }
    }
}

/// One series of `iommu_policyd_requests_total`: the swift-metrics counter and the same number
/// kept readable for `query-stats` (swift-metrics handles cannot be read). Both are atomic.
public final class RequestCounter: Sendable {
    let counter: Counter
    private let tally = Atomic<UInt64>(0)

    init(counter: Counter) {
        self.counter = counter
    }

    public func increment() {
        tally.wrappingAdd(1, ordering: .relaxed)
        counter.increment()
    }

    var count: UInt64 { tally.load(ordering: .relaxed) }
}

private struct LatencyState {
    var timers: SeriesTable<String, Timer>
    var histogram = LatencyHistogram()
}

/// The handles of one labelled family, created on first use, at most `limit` of them.
private struct SeriesTable<Key: Hashable, Handle> {
    let limit: Int
    var handles: [Key: Handle] = [:]

    init(limit: Int) { self.limit = limit }

    /// Runs `body` on `key`'s handle, made by `make` if new. When the table is full a new key
    /// is replaced by `overflow`, which is admitted even then.
    mutating func update<R>(
        _ key: Key, overflow: Key, make: (Key) -> Handle, body: (inout Handle) -> R
    ) -> R {
        let key = handles.count < limit || handles[key] != nil ? key : overflow
        return body(&handles[key, default: make(key)])
    }
}
