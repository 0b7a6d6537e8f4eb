import CVFIO
import IOMMUBackends
import IOMMUCore
import Testing

@testable import KernelBackends

/// VFIO_IOMMU_GET_INFO answers built byte by byte as vfio_iommu_type1_get_info lays them out:
/// the 24-byte vfio_iommu_type1_info, then the capabilities in the order the kernel adds them
/// (migration, DMA_AVAIL, IOVA_RANGE), each 8-byte aligned, each `next` an offset from the
/// buffer's start.
@Suite("VFIO_IOMMU_GET_INFO capability chain")
struct CapabilityChainTests {
    /// The q35 intel-iommu guest's answer (kernel-semantics.md): two usable ranges around the
    /// MSI window in a 39-bit aperture, 4K|2M|1G pages, 65535 mapping slots.
    static let q35Ranges: [(UInt64, UInt64)] = [(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)]

    static func answer(
        flags: UInt32 = CVFIO_IOMMU_INFO_PGSIZES | CVFIO_IOMMU_INFO_CAPS, pageSizes: UInt64 = 0x4020_1000,
        ranges: [(UInt64, UInt64)] = q35Ranges, avail: UInt32? = 65535, migration: Bool = true
    ) -> KernelBytes {
        var bytes = KernelBytes()
        bytes.u32(0)  // argsz, patched below
        bytes.u32(flags)
        bytes.u64(pageSizes)
        bytes.u32(0)  // cap_offset, patched below
        bytes.pad(to: 8)
        #expect(bytes.count == 24)
        var previousNext: Int?
        func header(_ id: UInt16) {
            let offset = bytes.count
            if let previousNext {
                bytes.set32(at: previousNext, UInt32(offset))
            } else {
                bytes.set32(at: 16, UInt32(offset))
            }
            bytes.u16(id)
            bytes.u16(1)  // version
            previousNext = bytes.count
            bytes.u32(0)  // next, patched by the following capability
        }
        if migration {
            header(UInt16(CVFIO_TYPE1_INFO_CAP_MIGRATION))
            bytes.u32(0)  // flags
            bytes.pad(to: 8)
            bytes.u64(0x1000)  // pgsize_bitmap
            bytes.u64(256 << 20)  // max_dirty_bitmap_size
            bytes.pad(to: 8)
        }
        if let avail {
            header(UInt16(CVFIO_TYPE1_INFO_DMA_AVAIL))
            bytes.u32(avail)
            bytes.pad(to: 8)
        }
        header(UInt16(CVFIO_TYPE1_INFO_CAP_IOVA_RANGE))
        bytes.u32(UInt32(ranges.count))
        bytes.u32(0)  // reserved
        for (start, end) in ranges {
            bytes.u64(start)
            bytes.u64(end)
        }
        bytes.set32(at: 0, UInt32(bytes.count))
        return bytes
    }

    @Test func theQ35AnswerGivesItsTwoUsableRangesPageSizesAndMappingSlots() throws {
        let info = try VFIOType1Info.parse(Self.answer().bytes)
        #expect(info.pageSizes == 0x4020_1000)
        #expect(info.usableRanges == [range(0, 0xfedf_ffff), range(0xfef0_0000, 0x7f_ffff_ffff)])
        #expect(info.dmaAvailable == 65535)
        let group = try info.groupInfo
        #expect(group.aperture == range(0, 0x7f_ffff_ffff))
        #expect(group.usableRanges == info.usableRanges)
        #expect(group.pageSizes == 0x4020_1000)
    }

    @Test func theIOVARangeCapabilityIsFoundFirstInTheChainToo() throws {
        let info = try VFIOType1Info.parse(Self.answer(avail: nil, migration: false).bytes)
        #expect(info.usableRanges?.count == 2)
        #expect(info.dmaAvailable == nil)
    }

    @Test func unknownCapabilitiesAreSkipped() throws {
        // Renumber the migration capability (at offset 24) to an ID no kernel uses.
        var raw = Self.answer(migration: true).bytes
        raw[24] = 0x7f
        let info = try VFIOType1Info.parse(raw)
        #expect(info.usableRanges?.count == 2)
        #expect(info.dmaAvailable == 65535)
    }

    @Test func moreRangesThanTheFirstBufferHoldsAreAllReturned() throws {
        let many = (0..<40).map { (UInt64($0) << 32, UInt64($0) << 32 | 0xffff_f000 | 0xfff) }
        let info = try VFIOType1Info.parse(Self.answer(ranges: many).bytes)
        #expect(info.usableRanges?.count == 40)
        #expect(info.usableRanges?.last == range(39 << 32, 39 << 32 | 0xffff_ffff))
    }

    @Test func anAnswerWithoutCapabilitiesReportsTheWholeSpace() throws {
        var bytes = KernelBytes()
        bytes.u32(24)
        bytes.u32(CVFIO_IOMMU_INFO_PGSIZES)
        bytes.u64(0x1000)
        bytes.u32(0)
        bytes.pad(to: 8)
        let info = try VFIOType1Info.parse(bytes.bytes)
        #expect(info.usableRanges == nil)
        #expect(try info.groupInfo == BackendGroupInfo(aperture: .all, pageSizes: 0x1000, usableRanges: [.all]))
    }

    @Test func aCapabilityFlagWithAZeroOffsetMeansTheBufferWasTooSmallForTheChain() throws {
        // What the kernel writes when argsz was too small: CAPS set, cap_offset 0.
        var bytes = KernelBytes()
        bytes.u32(24)
        bytes.u32(CVFIO_IOMMU_INFO_PGSIZES | CVFIO_IOMMU_INFO_CAPS)
        bytes.u64(0x4020_1000)
        bytes.u32(0)
        bytes.pad(to: 8)
        let info = try VFIOType1Info.parse(bytes.bytes)
        #expect(info.usableRanges == nil)
        #expect(info.pageSizes == 0x4020_1000)
    }

    @Test func rangesThatRunPastTheBufferAreRefusedAsMalformed() throws {
        let full = Self.answer().bytes
        let error = backendError { try VFIOType1Info.parse(Array(full.dropLast(8))) }
        #expect(error?.errno == .EINVAL)
        #expect(error?.description.hasPrefix("kernel VFIO_IOMMU_GET_INFO: EINVAL: ") == true)
    }

    @Test func aChainThatPointsBackwardsIsRefusedInsteadOfLoopingForever() throws {
        var bytes = Self.answer(avail: nil, migration: false)
        // The only capability sits at 24; make its `next` point at itself.
        bytes.set32(at: 24 + 4, 24)
        #expect(backendError { try VFIOType1Info.parse(bytes.bytes) }?.errno == .EINVAL)
        bytes.set32(at: 24 + 4, 0)
        bytes.set32(at: 16, 8)  // first capability inside the fixed part
        #expect(backendError { try VFIOType1Info.parse(bytes.bytes) }?.errno == .EINVAL)
    }

    @Test func aCapabilityOffsetPastTheEndIsRefused() throws {
        var bytes = Self.answer(avail: nil, migration: false)
        bytes.set32(at: 16, UInt32(bytes.count))
        #expect(backendError { try VFIOType1Info.parse(bytes.bytes) }?.errno == .EINVAL)
    }

    @Test func aBufferShorterThanTheFixedPartIsRefused() throws {
        #expect(backendError { try VFIOType1Info.parse([UInt8](repeating: 0, count: 15)) }?.errno == .EINVAL)
    }

    @Test func anInvertedRangeFromTheKernelIsAnErrorNotACrash() throws {
        let error = backendError { try VFIOType1Info.parse(Self.answer(ranges: [(0x2000, 0x1000)]).bytes) }
        #expect(error?.errno == .EINVAL)
        #expect(error?.detail.contains("inverted") == true)
    }

    @Test func anEmptyRangeListCannotDescribeAContext() throws {
        let info = try VFIOType1Info.parse(Self.answer(ranges: []).bytes)
        #expect(info.usableRanges == [])
        #expect(backendError { try info.groupInfo }?.detail == "the kernel reports no usable IOVA range")
    }
}
