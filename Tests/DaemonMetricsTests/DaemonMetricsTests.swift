import Dispatch
import Testing

@testable import DaemonMetrics

/// The samples of a text exposition keyed by series exactly as printed (`name{labels}`), with
/// their values as printed. Records a test failure for any line that is neither a comment nor a
/// `series value` pair.
func samples(_ text: String) -> [String: String] {
    var samples: [String: String] = [:]
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        guard let space = line.lastIndex(of: " ") else {
            Issue.record("not a sample: \(line)")
            continue
        }
        let series = String(line[..<space])
        #expect(samples[series] == nil, "series printed twice: \(series)")
        samples[series] = String(line[line.index(after: space)...])
    }
    return samples
}

/// The `# TYPE` of each family, checking that no family is typed twice.
func types(_ text: String) -> [String: String] {
    var types: [String: String] = [:]
    for line in text.split(separator: "\n") where line.hasPrefix("# TYPE ") {
        let words = line.split(separator: " ")
        #expect(words.count == 4, "malformed: \(line)")
        #expect(types[String(words[2])] == nil, "typed twice: \(line)")
        types[String(words[2])] = String(words[3])
    }
    return types
}

@Suite struct DaemonMetricsTests {
    @Test func requestsAreCountedPerCommandResultAndReasonWithAnEmptyReasonWhenAllowed() {
        let metrics = DaemonMetrics()
        for _ in 0..<3 { metrics.request(command: "map", result: .allowed) }
        metrics.request(command: "map", result: .denied(reason: "overlaps-reserved"))
        metrics.request(command: "map", result: .denied(reason: "quota"))
        metrics.request(command: "map", result: .denied(reason: "quota"))
        metrics.request(command: "unmap", result: .allowed)
        metrics.request(command: "attach", result: .denied(reason: "backend-failure"))

        let text = metrics.prometheusText()
        let requests = samples(text).filter { $0.key.hasPrefix("iommu_policyd_requests_total") }
        #expect(
            requests == [
                #"iommu_policyd_requests_total{command="map",result="allowed",reason=""}"#: "3",
                #"iommu_policyd_requests_total{command="map",result="denied",reason="overlaps-reserved"}"#: "1",
                #"iommu_policyd_requests_total{command="map",result="denied",reason="quota"}"#: "2",
                #"iommu_policyd_requests_total{command="unmap",result="allowed",reason=""}"#: "1",
                #"iommu_policyd_requests_total{command="attach",result="denied",reason="backend-failure"}"#: "1",
            ])
        #expect(types(text)["iommu_policyd_requests_total"] == "counter")
    }

    @Test func decisionLatencyFillsCumulativeBucketsFromOneMicrosecondToOneHundredMilliseconds() {
        let metrics = DaemonMetrics()
        for nanoseconds: UInt64 in [500, 1000, 3000, 2_000_000, 1_000_000_000] {
            metrics.decisionLatency(nanoseconds: nanoseconds, command: "map")
        }
        metrics.decisionLatency(nanoseconds: 7000, command: "unmap")

        let upperBounds = [
            "0.000001", "0.0000025", "0.000005", "0.00001", "0.000025", "0.00005", "0.0001", "0.00025",
            "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "+Inf",
        ]
        // 1 µs is inclusive (`le`); 1 s lands in +Inf only.
        let mapCounts = [2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 5]
        let unmapCounts = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
        let name = "iommu_policyd_decision_duration_seconds"
        var expected: [String: String] = [:]
        for (le, (map, unmap)) in zip(upperBounds, zip(mapCounts, unmapCounts)) {
            expected[#"\#(name)_bucket{command="map",le="\#(le)"}"#] = "\(map)"
            expected[#"\#(name)_bucket{command="unmap",le="\#(le)"}"#] = "\(unmap)"
        }
        expected[#"\#(name)_sum{command="map"}"#] = "1.0020045"
        expected[#"\#(name)_count{command="map"}"#] = "5"
        expected[#"\#(name)_sum{command="unmap"}"#] = "0.000007"
        expected[#"\#(name)_count{command="unmap"}"#] = "1"

        let text = metrics.prometheusText()
        #expect(samples(text).filter { $0.key.hasPrefix(name) } == expected)
        #expect(types(text)[name] == "histogram")
    }

    @Test func gaugesAndEventCountersReadAsSetAndStartAtZero() {
        let metrics = DaemonMetrics()
        let before = samples(metrics.prometheusText())
        #expect(before["iommu_policyd_mappings"] == "0.0")
        #expect(before["iommu_policyd_sessions_opened_total"] == "0")
        #expect(before[#"iommu_policyd_reloads_total{result="failed"}"#] == "0")

        metrics.setMappings(3)
        metrics.setMappedBytes(1 << 30)
        metrics.setSessions(2)
        metrics.sessionStarted()
        metrics.sessionStarted()
        metrics.eventsDropped(5)
        metrics.eventsDropped()
        metrics.reload(succeeded: true)
        metrics.reload(succeeded: false)
        metrics.reload(succeeded: false)
        metrics.revocation(reason: "reserved-by-reload")
        metrics.revocation(reason: "reserved-by-reload")
        metrics.revocation(reason: "device-removed")

        let text = metrics.prometheusText()
        #expect(
            samples(text) == [
                "iommu_policyd_mappings": "3.0",
                "iommu_policyd_mapped_bytes": "1073741824.0",
                "iommu_policyd_sessions": "2.0",
                "iommu_policyd_sessions_opened_total": "2",
                "iommu_policyd_events_dropped_total": "6",
                #"iommu_policyd_reloads_total{result="ok"}"#: "1",
                #"iommu_policyd_reloads_total{result="failed"}"#: "2",
                #"iommu_policyd_revocations_total{reason="reserved-by-reload"}"#: "2",
                #"iommu_policyd_revocations_total{reason="device-removed"}"#: "1",
            ])
        #expect(
            types(text) == [
                "iommu_policyd_mappings": "gauge",
                "iommu_policyd_mapped_bytes": "gauge",
                "iommu_policyd_sessions": "gauge",
                "iommu_policyd_sessions_opened_total": "counter",
                "iommu_policyd_events_dropped_total": "counter",
                "iommu_policyd_reloads_total": "counter",
                "iommu_policyd_revocations_total": "counter",
            ])
    }

    @Test func instancesKeepSeparateRegistries() {
        let first = DaemonMetrics()
        let second = DaemonMetrics()
        first.request(command: "map", result: .allowed)
        first.setSessions(4)

        let allowedMap = #"iommu_policyd_requests_total{command="map",result="allowed",reason=""}"#
        #expect(samples(first.prometheusText())[allowedMap] == "1")
        #expect(samples(second.prometheusText())[allowedMap] == nil)
        #expect(samples(second.prometheusText())["iommu_policyd_sessions"] == "0.0")
        #expect(second.snapshot() == StatsSnapshot())
    }

    @Test func snapshotTotalsRequestsAndDenialsByReasonAcrossCommands() {
        let metrics = DaemonMetrics()
        metrics.request(command: "map", result: .allowed)
        metrics.request(command: "unmap", result: .allowed)
        metrics.request(command: "map", result: .denied(reason: "quota"))
        metrics.request(command: "attach", result: .denied(reason: "quota"))
        metrics.request(command: "map", result: .denied(reason: "outside-aperture"))
        for nanoseconds in 1...10 as ClosedRange<UInt64> {
            metrics.decisionLatency(nanoseconds: nanoseconds, command: "map")
        }

        let snapshot = metrics.snapshot()
        #expect(snapshot.requests == 5)
        #expect(snapshot.allowed == 2)
        #expect(snapshot.denied == 3)
        #expect(snapshot.deniedByReason == ["quota": 2, "outside-aperture": 1])
        // Values below 64 ns are counted exactly.
        #expect(snapshot.latency.count == 10)
        #expect(snapshot.latency.p50 == 5)
        #expect(snapshot.latency.p90 == 9)
        #expect(snapshot.latency.p99 == 10)
        #expect(snapshot.latency.max == 10)
    }

    @Test func concurrentRecordingLosesNoCounts() {
        let metrics = DaemonMetrics()
        let threads = 8
        let perThread = 20_000
        let reasons = ["quota", "overlaps-reserved", "outside-aperture"]
        DispatchQueue.concurrentPerform(iterations: threads) { thread in
            for i in 0..<perThread {
                let command = i.isMultiple(of: 2) ? "map" : "unmap"
                let result: DaemonMetrics.Result = i % 5 == 0 ? .denied(reason: reasons[thread % 3]) : .allowed
                metrics.request(command: command, result: result)
                metrics.decisionLatency(nanoseconds: UInt64(i), command: command)
            }
        }

        var deniedByReason: [String: UInt64] = [:]
        for thread in 0..<threads { deniedByReason[reasons[thread % 3], default: 0] += UInt64(perThread / 5) }
        let snapshot = metrics.snapshot()
        #expect(snapshot.requests == UInt64(threads * perThread))
        #expect(snapshot.allowed == UInt64(threads * perThread * 4 / 5))
        #expect(snapshot.deniedByReason == deniedByReason)
        #expect(snapshot.latency.count == UInt64(threads * perThread))
        #expect(snapshot.latency.max == UInt64(perThread - 1))

        let exposed = samples(metrics.prometheusText())
        let requests = exposed.filter { $0.key.hasPrefix("iommu_policyd_requests_total") }.values.map { Int($0)! }
        #expect(requests.reduce(0, +) == threads * perThread)
        let mapCount = exposed[#"iommu_policyd_decision_duration_seconds_count{command="map"}"#]
        #expect(mapCount == "\(threads * perThread / 2)")
    }

    @Test func labelValuesPastTheSeriesLimitAreCountedAsOther() {
        let metrics = DaemonMetrics(maxSeriesPerFamily: 3)
        for i in 0..<10 {
            metrics.request(command: "command-\(i)", result: .allowed)
            metrics.request(command: "command-\(i)", result: .denied(reason: "reason-\(i)"))
            metrics.decisionLatency(nanoseconds: 1000, command: "command-\(i)")
            metrics.revocation(reason: "reason-\(i)")
        }

        let exposed = samples(metrics.prometheusText())
        let requests = exposed.filter { $0.key.hasPrefix("iommu_policyd_requests_total") }
        // Admitted: command-0 allowed and denied, command-1 allowed; then one overflow series per
        // outcome, and the denied one is admitted past the limit.
        #expect(requests.count == 5)
        #expect(requests[#"iommu_policyd_requests_total{command="other",result="allowed",reason=""}"#] == "8")
        #expect(requests[#"iommu_policyd_requests_total{command="other",result="denied",reason="other"}"#] == "9")
        #expect(requests.values.map { Int($0)! }.reduce(0, +) == 20)
        #expect(exposed[#"iommu_policyd_decision_duration_seconds_count{command="other"}"#] == "7")
        #expect(exposed[#"iommu_policyd_revocations_total{reason="other"}"#] == "7")
        #expect(metrics.snapshot().requests == 20)
    }
}
