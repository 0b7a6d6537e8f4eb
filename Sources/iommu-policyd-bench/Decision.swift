import Foundation
import IOMMUCore

#if canImport(Glibc)
    import Glibc
#endif

struct DecisionSize: Codable {
    var mappings: Int
    var map: Percentiles
    var unmap: Percentiles
    /// Wall time of a batch of calls without per-call timers, divided by the count.
    var mapMeanNanoseconds: Double
    var unmapMeanNanoseconds: Double
}

struct DecisionResult: Codable {
    var reservedRegions: Int
    var samplesPerSize: Int
    /// What a back-to-back pair of clock reads costs; every per-call figure includes it once.
    var timerOverheadNanoseconds: UInt64
    var sizes: [DecisionSize]
    /// p50 at the largest size over p50 at the smallest, for map and unmap.
    var mapRatio: Double
    var unmapRatio: Double
    /// log(largest) / log(smallest): where an O(log n) ratio should sit.
    var logRatio: Double
    /// The bench process's RSS growth per mapping while TenantState grew (in-process, no daemon).
    var tenantStateBytesPerMapping: Double?
    var targetP50Microseconds: Double
    var targetRatio: Double
    var mapMet: Bool
    var unmapMet: Bool
}

/// PolicyEngine.decideMap and decideUnmap in-process, against a TenantState of 1k, 100k and 1M
/// mappings and a PlatformDatabase with 10k reserved regions interleaved with them.
///
/// The layout: 8 KiB slots from 4 GiB up. Every 101st slot (for the first 10k of them) holds a
/// 4 KiB reserved region; every other slot holds a 4 KiB mapping in its lower half, so the upper
/// half of each mapped slot is free: a map there is allowed after searching both trees, and an
/// unmap of a slot's mapping removes exactly one mapping.
struct DecisionBenchmark {
    var sizes: [Int]
    var samples: Int
    var reservedRegions = 10_000

    static let base: UInt64 = 0x1_0000_0000
    static let slot: UInt64 = 0x2000
    static let regionEvery = 101

    func run(log: (String) -> Void) throws -> DecisionResult {
        var platform = PlatformDatabase()
        platform.addGroup(
            IOMMUGroup(id: 0, aperture: PageSizes.aperture(bits: 48)!, apertureSource: "bench 48-bit aperture"))
        try platform.addRegion(
            ReservedRegion(
                kind: .msi, range: IOVARange(first: 0xfee0_0000, last: 0xfeef_ffff)!, owner: .profile,
                source: "bench MSI window", group: nil))
        for index in 0..<reservedRegions {
            let start = Self.base + UInt64(index * Self.regionEvery) * Self.slot
            try platform.addRegion(
                ReservedRegion(
                    kind: .peerMMIO, range: IOVARange(start: start, size: 0x1000)!, owner: .sysfs,
                    source: "BAR0 of bench device \(index)", group: 0))
        }
        let tenant = TenantPolicy(maxMappings: 1 << 30, maxBytes: .max, origin: "bench")
        var state = TenantState()
        guard
            case .success(let attach) = PolicyEngine.decideAttach(
                group: 0, platform: platform, tenant: tenant, state: state)
        else { throw BenchFailure("cannot attach the bench group") }
        state.commit(attach)

        // Written in full before the RSS baseline, so that the RSS growth is TenantState's alone.
        var mapped = [UInt64](repeating: 1, count: sizes.max() ?? 0)
        var mappedCount = 0
        var slot = 0
        var results: [DecisionSize] = []
        let overhead = timerOverhead()
        let rssBefore = ProcFS.residentBytes(pid: getpid())
        var rssAfter: UInt64?
        for size in sizes {
            while mappedCount < size {
                defer { slot += 1 }
                if slot % Self.regionEvery == 0 && slot / Self.regionEvery < reservedRegions { continue }
                let start = Self.base + UInt64(slot) * Self.slot
                switch PolicyEngine.decideMap(
                    MapRequest(iova: start, size: 0x1000), platform: platform, tenant: tenant, state: state)
                {
                case .success(let plan): state.commit(plan)
                case .failure(let denial): throw BenchFailure("filling the tenant state: \(denial.reason)")
                }
                mapped[mappedCount] = start
                mappedCount += 1
            }
            if size == sizes.max() { rssAfter = ProcFS.residentBytes(pid: getpid()) }
            var random = SplitMix(seed: UInt64(size))
            let picks = (0..<samples).map { _ in mapped[Int(random.next() % UInt64(mappedCount))] }
            var sink: UInt64 = 0

            var mapTimes = [UInt64](repeating: 0, count: samples)
            for (index, start) in picks.enumerated() {
                let request = MapRequest(iova: start + 0x1000, size: 0x1000)
                let begin = nowNanoseconds()
                let decision = PolicyEngine.decideMap(request, platform: platform, tenant: tenant, state: state)
                let end = nowNanoseconds()
                mapTimes[index] = end - begin
                if case .success(let plan) = decision { sink &+= plan.bytes } else { sink &+= 1 << 40 }
            }
            var unmapTimes = [UInt64](repeating: 0, count: samples)
            for (index, start) in picks.enumerated() {
                let request = UnmapRequest(iova: start, size: 0x1000)
                let begin = nowNanoseconds()
                let decision = PolicyEngine.decideUnmap(request, platform: platform, state: state)
                let end = nowNanoseconds()
                unmapTimes[index] = end - begin
                if case .success(let plan) = decision { sink &+= plan.bytes } else { sink &+= 1 << 40 }
            }
            // Batches without per-call clock reads, as a check on the per-call figures.
            var begin = nowNanoseconds()
            for start in picks {
                if case .success(let plan) = PolicyEngine.decideMap(
                    MapRequest(iova: start + 0x1000, size: 0x1000), platform: platform, tenant: tenant, state: state)
                {
                    sink &+= plan.bytes
                }
            }
            let mapMean = Double(nowNanoseconds() - begin) / Double(samples)
            begin = nowNanoseconds()
            for start in picks {
                if case .success(let plan) = PolicyEngine.decideUnmap(
                    UnmapRequest(iova: start, size: 0x1000), platform: platform, state: state)
                {
                    sink &+= plan.bytes
                }
            }
            let unmapMean = Double(nowNanoseconds() - begin) / Double(samples)
            // Every decision must have been allowed: 4 samples per pick, 4 KiB each.
            guard sink == UInt64(samples) * 4 * 0x1000 else {
                throw BenchFailure("a benchmark decision was refused (sink \(sink))")
            }
            let figures = DecisionSize(
                mappings: size, map: Percentiles(mapTimes), unmap: Percentiles(unmapTimes), mapMeanNanoseconds: mapMean,
                unmapMeanNanoseconds: unmapMean)
            log(
                "decision: \(size) mappings: map p50 \(figures.map.p50Nanoseconds) ns, unmap p50 \(figures.unmap.p50Nanoseconds) ns"
            )
            results.append(figures)
        }
        let first = results.first!
        let last = results.last!
        let mapRatio = Double(last.map.p50Nanoseconds) / Double(max(1, first.map.p50Nanoseconds))
        let unmapRatio = Double(last.unmap.p50Nanoseconds) / Double(max(1, first.unmap.p50Nanoseconds))
        let targetP50 = 2.0
        let targetRatio = 3.0
        var perMapping: Double?
        if let rssBefore, let rssAfter, let largest = sizes.max(), largest > 0 {
            perMapping = Double(Int64(rssAfter) - Int64(rssBefore)) / Double(largest)
        }
        return DecisionResult(
            reservedRegions: reservedRegions, samplesPerSize: samples, timerOverheadNanoseconds: overhead,
            sizes: results, mapRatio: mapRatio, unmapRatio: unmapRatio,
            logRatio: log2(Double(last.mappings)) / log2(Double(first.mappings)),
            tenantStateBytesPerMapping: perMapping, targetP50Microseconds: targetP50, targetRatio: targetRatio,
            mapMet: last.map.p50Microseconds < targetP50 && mapRatio <= targetRatio,
            unmapMet: last.unmap.p50Microseconds < targetP50 && unmapRatio <= targetRatio)
    }

    /// The p50 of two back-to-back clock reads.
    private func timerOverhead() -> UInt64 {
        var samples = [UInt64](repeating: 0, count: 10_000)
        for index in samples.indices {
            let begin = nowNanoseconds()
            samples[index] = nowNanoseconds() - begin
        }
        return Percentiles(samples).p50Nanoseconds
    }
}

/// A small seeded generator, so every run picks the same mappings.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
