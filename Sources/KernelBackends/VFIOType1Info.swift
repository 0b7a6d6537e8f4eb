import CVFIO
import IOMMUBackends
import IOMMUCore

#if canImport(Glibc)
    import Glibc
#endif

/// What `VFIO_IOMMU_GET_INFO` reports for a type1 container, with its capability chain parsed.
public struct VFIOType1Info: Hashable, Sendable {
    /// `vfio_iommu_type1_info.flags`: bit 0 page sizes valid, bit 1 capabilities present.
    public var flags: UInt32
    /// Supported page sizes, bit n meaning 2^n bytes.
    public var pageSizes: UInt64
    /// The IOVA_RANGE capability's ranges (the aperture minus every reserved region of every
    /// group in the container), sorted; nil when the chain had no IOVA_RANGE (before 5.4).
    public var usableRanges: [IOVARange]?
    /// The DMA_AVAIL capability: mappings the container may still create; nil before 5.10.
    public var dmaAvailable: UInt32?

    public init(flags: UInt32, pageSizes: UInt64, usableRanges: [IOVARange]?, dmaAvailable: UInt32?) {
        self.flags = flags
        self.pageSizes = pageSizes
        self.usableRanges = usableRanges
        self.dmaAvailable = dmaAvailable
    }

    /// Parses the buffer `VFIO_IOMMU_GET_INFO` filled: `struct vfio_iommu_type1_info` and the
    /// chained `vfio_info_cap_header` entries behind it (each `next` an offset from the buffer's
    /// start, 0 ending the chain). EINVAL when a capability does not fit or the chain does not
    /// move forward.
    public static func parse(_ bytes: [UInt8]) throws(BackendError) -> VFIOType1Info {
        try read("VFIO_IOMMU_GET_INFO") { info, ranges, capacity in
            bytes.withUnsafeBytes { raw in
                cvfio_type1_info_parse(raw.baseAddress, raw.count, &info, ranges, capacity)
            }
        }
    }

    /// Asks the kernel for a container's info (the container must have its IOMMU set).
    static func query(container fd: Int32) throws(BackendError) -> VFIOType1Info {
        try read("VFIO_IOMMU_GET_INFO") { info, ranges, capacity in
            cvfio_iommu_get_info(fd, &info, ranges, capacity)
        }
    }

    /// Calls `fill` with room for 16 ranges, and again with room for all when it said
    /// -EMSGSIZE.
    private static func read(
        _ ioctl: String,
        _ fill: (inout cvfio_type1_info, UnsafeMutablePointer<cvfio_iova_range>, UInt32) -> Int32
    ) throws(BackendError) -> VFIOType1Info {
        var capacity: UInt32 = 16
        while true {
            var info = cvfio_type1_info()
            var ranges = [cvfio_iova_range](repeating: cvfio_iova_range(), count: Int(capacity))
            let result = ranges.withUnsafeMutableBufferPointer { fill(&info, $0.baseAddress!, capacity) }
            if result == -EMSGSIZE && info.nr_iova_ranges > capacity {
                capacity = info.nr_iova_ranges
                continue
            }
            try kernelCall(result, ioctl, "cannot read the container's IOMMU info and capability chain")
            var usable: [IOVARange]?
            if info.has_iova_ranges != 0 {
                var list: [IOVARange] = []
                for range in ranges.prefix(Int(info.nr_iova_ranges)) {
                    guard let checked = IOVARange(first: range.start, last: range.last) else {
                        throw BackendError(
                            .EINVAL, operation: "kernel \(ioctl)",
                            detail: "IOVA_RANGE lists an inverted range \(Hex(range.start))-\(Hex(range.last))")
                    }
                    list.append(checked)
                }
                usable = list.sorted()
            }
            return VFIOType1Info(
                flags: info.flags, pageSizes: info.iova_pgsizes, usableRanges: usable,
                dmaAvailable: info.has_dma_avail != 0 ? info.dma_avail : nil)
        }
    }

    /// The context's shape for `attach`: the aperture is the hull of the usable ranges. Without
    /// an IOVA_RANGE capability (kernels before 5.4) the kernel says nothing about reserved
    /// ranges, so the whole space is reported and the daemon's database alone decides.
    public var groupInfo: BackendGroupInfo {
        get throws(BackendError) {
            guard let usableRanges else {
                return BackendGroupInfo(aperture: .all, pageSizes: pageSizes, usableRanges: [.all])
            }
            return try KernelBackends.groupInfo(
                ranges: usableRanges.map { cvfio_iova_range(start: $0.first, last: $0.last) }, pageSizes: pageSizes,
                ioctl: "VFIO_IOMMU_GET_INFO")
        }
    }
}
