import CVFIO
import Testing

@testable import KernelBackends

/// The iommufd structs CVFIO carries (Debian 12 has no <linux/iommufd.h>) must have the
/// kernel's layout as Swift sees it too; vfio.c checks the same against <linux/vfio.h>.
@Suite("Carried iommufd layouts and ioctl numbers")
struct LayoutTests {
    /// _IO(type, nr): no size or direction bits, as VFIO and iommufd both use.
    static func io(_ type: Character, _ nr: UInt32) -> UInt32 {
        UInt32(type.asciiValue!) << 8 | nr
    }

    @Test func structSizesMatchTheKernelUAPI() {
        #expect(MemoryLayout<cvfio_iommu_destroy>.size == 8)
        #expect(MemoryLayout<cvfio_iommu_ioas_alloc>.size == 12)
        #expect(MemoryLayout<cvfio_iommu_iova_range>.size == 16)
        #expect(MemoryLayout<cvfio_iommu_ioas_iova_ranges>.size == 32)
        #expect(MemoryLayout<cvfio_iommu_ioas_map>.size == 40)
        #expect(MemoryLayout<cvfio_iommu_ioas_unmap>.size == 24)
        #expect(MemoryLayout<cvfio_vfio_device_bind_iommufd>.size == 16)
        #expect(MemoryLayout<cvfio_vfio_device_attach_iommufd_pt>.size == 12)
        #expect(MemoryLayout<cvfio_vfio_device_detach_iommufd_pt>.size == 8)
        #expect(MemoryLayout<cvfio_iova_range>.size == 16)
    }

    @Test func sixtyFourBitFieldsSitWhereTheKernelReadsThem() {
        #expect(MemoryLayout<cvfio_iommu_ioas_map>.offset(of: \.user_va) == 16)
        #expect(MemoryLayout<cvfio_iommu_ioas_map>.offset(of: \.length) == 24)
        #expect(MemoryLayout<cvfio_iommu_ioas_map>.offset(of: \.iova) == 32)
        #expect(MemoryLayout<cvfio_iommu_ioas_unmap>.offset(of: \.iova) == 8)
        #expect(MemoryLayout<cvfio_iommu_ioas_unmap>.offset(of: \.length) == 16)
        #expect(MemoryLayout<cvfio_iommu_ioas_iova_ranges>.offset(of: \.allowed_iovas) == 16)
        #expect(MemoryLayout<cvfio_iommu_ioas_iova_ranges>.offset(of: \.out_iova_alignment) == 24)
        #expect(MemoryLayout<cvfio_vfio_device_bind_iommufd>.offset(of: \.out_devid) == 12)
        #expect(MemoryLayout<cvfio_vfio_device_attach_iommufd_pt>.offset(of: \.pt_id) == 8)
    }

    @Test func ioctlNumbersAreIOOfSemicolonAndTheCommand() {
        // iommufd commands start at 0x80 (IOMMUFD_CMD_BASE); VFIO's at VFIO_BASE 100.
        #expect(CVFIO_IOMMU_DESTROY == Self.io(";", 0x80))
        #expect(CVFIO_IOMMU_IOAS_ALLOC == Self.io(";", 0x81))
        #expect(CVFIO_IOMMU_IOAS_IOVA_RANGES == Self.io(";", 0x84))
        #expect(CVFIO_IOMMU_IOAS_MAP == Self.io(";", 0x85))
        #expect(CVFIO_IOMMU_IOAS_UNMAP == Self.io(";", 0x86))
        #expect(CVFIO_VFIO_DEVICE_BIND_IOMMUFD == Self.io(";", 100 + 18))
        #expect(CVFIO_VFIO_DEVICE_ATTACH_IOMMUFD_PT == Self.io(";", 100 + 19))
        #expect(CVFIO_VFIO_DEVICE_DETACH_IOMMUFD_PT == Self.io(";", 100 + 20))
    }

    @Test func mapFlagsAreTheKernelsBits() {
        #expect(CVFIO_IOAS_MAP_FIXED_IOVA == 1)
        #expect(CVFIO_IOAS_MAP_WRITEABLE == 2)
        #expect(CVFIO_IOAS_MAP_READABLE == 4)
        #expect(CVFIO_DMA_MAP_FLAG_READ == 1)
        #expect(CVFIO_DMA_MAP_FLAG_WRITE == 2)
        #expect(CVFIO_TYPE1v2_IOMMU == 3)
    }

    @Test func iommufdPageSizeIsItsIOVAAlignmentButAtLeastFourKiB() {
        #expect(IOMMUFDBackend.pageSizes(alignment: 0) == 0x1000)
        #expect(IOMMUFDBackend.pageSizes(alignment: 1) == 0x1000)
        #expect(IOMMUFDBackend.pageSizes(alignment: 0x1000) == 0x1000)
        #expect(IOMMUFDBackend.pageSizes(alignment: 0x1_0000) == 0x1_0000)
        #expect(IOMMUFDBackend.pageSizes(alignment: 0x3000) == 0x1000)
    }

    @Test func theKernelsRangesBecomeSortedDisjointRangesWithTheirHullAsAperture() throws {
        let info = try groupInfo(
            ranges: [
                cvfio_iova_range(start: 0xfef0_0000, last: 0x7f_ffff_ffff),
                cvfio_iova_range(start: 0, last: 0xfedf_ffff),
            ], pageSizes: 0x1000, ioctl: "IOMMU_IOAS_IOVA_RANGES")
        #expect(info.aperture == range(0, 0x7f_ffff_ffff))
        #expect(info.usableRanges == [range(0, 0xfedf_ffff), range(0xfef0_0000, 0x7f_ffff_ffff)])
    }
}
