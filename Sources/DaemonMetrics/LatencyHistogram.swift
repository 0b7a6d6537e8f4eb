/// A log-linear histogram of nanosecond values, after HdrHistogram: each power of two is split
/// into 32 equal buckets.
///
/// Values below 64 get a bucket each, so they are exact. Above, a bucket is 1/32 as wide as its
/// lower bound, and a percentile is reported as its bucket's midpoint, within 1/64 (1.6 %) of
/// the value actually recorded at that rank. 1,920 buckets cover all of `UInt64`: recording is
/// O(1) and memory is a fixed 15 KiB.
struct LatencyHistogram: Sendable {
    static let subBucketBits = 5
    static let subBucketCount = 1 << subBucketBits
    /// 32 exact buckets for 0..<32, then 32 for each exponent from 5 to 63.
    static let bucketCount = (64 - subBucketBits + 1) * subBucketCount

    private(set) var counts = [UInt64](repeating: 0, count: bucketCount)
    private(set) var count: UInt64 = 0
    private(set) var min: UInt64 = .max
    private(set) var max: UInt64 = 0

    mutating func record(_ value: UInt64) {
        counts[Self.bucket(of: value)] += 1
        count += 1
        min = Swift.min(min, value)
        max = Swift.max(max, value)
    }

    /// The estimate for the value at rank ⌈q·count⌉ (the nearest-rank definition); 0 when empty.
    func percentile(_ q: Double) -> UInt64 {
        guard count > 0 else { return 0 }
        let rank = Swift.min(count, Swift.max(1, UInt64((q * Double(count)).rounded(.up))))
        var seen: UInt64 = 0
        for (bucket, n) in counts.enumerated() {
            seen += n
            if seen >= rank {
                // The recorded extremes are exact, so never report past them.
                return Swift.min(Swift.max(Self.midpoint(of: bucket), min), max)
            }
        }
        return max
    }

    /// Keeps the value's top six significant bits: the leading 1 picks the power of two (through
    /// the shift) and the next five the sub-bucket. Values below 64 need no shift and are their own
    /// index.
    static func bucket(of value: UInt64) -> Int {
        let shift = Swift.max(0, 64 - (subBucketBits + 1) - value.leadingZeroBitCount)
        return shift * subBucketCount + Int(value >> shift)
    }

    /// The smallest value that lands in `bucket`, and how many consecutive values do.
    static func range(of bucket: Int) -> (lowerBound: UInt64, width: UInt64) {
        let shift = Swift.max(0, bucket / subBucketCount - 1)
        return (UInt64(bucket - shift * subBucketCount) << shift, 1 << shift)
    }

    static func midpoint(of bucket: Int) -> UInt64 {
        let (lowerBound, width) = range(of: bucket)
        return lowerBound + (width - 1) / 2
    }
}
