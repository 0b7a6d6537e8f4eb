import Foundation
import Testing

@testable import DaemonMetrics

/// A seeded generator, so a failing distribution can be replayed.
private struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The nearest-rank percentile of sorted values, the definition the histogram estimates.
private func exactPercentile(_ sorted: [UInt64], _ q: Double) -> UInt64 {
    let rank = max(1, Int((q * Double(sorted.count)).rounded(.up)))
    return sorted[rank - 1]
}

private func expectWithin(
    _ estimate: UInt64, of exact: UInt64, relativeError: Double, sourceLocation: SourceLocation = #_sourceLocation
) {
    let error = abs(Double(estimate) - Double(exact)) / Double(exact)
    #expect(error <= relativeError, "\(estimate) vs \(exact)", sourceLocation: sourceLocation)
}

@Suite struct LatencyHistogramTests {
    @Test func bucketsTileTheWholeRangeEachAtMostOneThirtySecondOfItsLowerBoundWide() {
        var next: UInt64 = 0
        for bucket in 0..<LatencyHistogram.bucketCount {
            let (lowerBound, width) = LatencyHistogram.range(of: bucket)
            #expect(lowerBound == next, "bucket \(bucket) leaves a gap or overlaps")
            #expect(LatencyHistogram.bucket(of: lowerBound) == bucket)
            #expect(LatencyHistogram.bucket(of: lowerBound + (width - 1)) == bucket)
            if lowerBound >= 64 {
                #expect(width * 32 <= lowerBound)
            } else {
                #expect(width == 1)
            }
            next = lowerBound &+ width
        }
        // The last bucket ends at UInt64.max: the count wrapped to zero exactly once.
        #expect(next == 0)
        #expect(LatencyHistogram.bucket(of: .max) == LatencyHistogram.bucketCount - 1)
    }

    @Test func percentilesOfOneToOneHundredThousandAreWithinOneSixtyFourth() {
        var histogram = LatencyHistogram()
        for value in 1...100_000 as ClosedRange<UInt64> { histogram.record(value) }

        expectWithin(histogram.percentile(0.50), of: 50_000, relativeError: 1.0 / 64)
        expectWithin(histogram.percentile(0.90), of: 90_000, relativeError: 1.0 / 64)
        expectWithin(histogram.percentile(0.99), of: 99_000, relativeError: 1.0 / 64)
        #expect(histogram.max == 100_000)
        #expect(histogram.count == 100_000)
        #expect(histogram.counts.count == LatencyHistogram.bucketCount)
    }

    @Test func percentilesOfALogUniformSpreadFromNanosecondsToMillisecondsAreWithinOneSixtyFourth() {
        var random = SplitMix64(state: 0x1005)
        var histogram = LatencyHistogram()
        var values: [UInt64] = []
        for _ in 0..<200_000 {
            // 100 ns to 10 ms, evenly spread over the exponent.
            let value = UInt64(100 * pow(10, Double.random(in: 0..<5, using: &random)))
            values.append(value)
            histogram.record(value)
        }
        values.sort()
        for q in [0.01, 0.25, 0.50, 0.90, 0.99, 0.999] {
            expectWithin(histogram.percentile(q), of: exactPercentile(values, q), relativeError: 1.0 / 64)
        }
        #expect(histogram.max == values.last)
    }

    @Test func extremeValuesAreRecordedWithoutOverflow() {
        var histogram = LatencyHistogram()
        histogram.record(0)
        histogram.record(.max)
        #expect(histogram.percentile(0.50) == 0)
        expectWithin(histogram.percentile(0.99), of: .max, relativeError: 1.0 / 64)
        #expect(histogram.max == .max)
    }

    @Test func anEmptyHistogramReportsZero() {
        let percentiles = LatencyPercentiles(LatencyHistogram())
        #expect(percentiles == LatencyPercentiles())
        #expect(percentiles.p99 == 0)
    }
}
