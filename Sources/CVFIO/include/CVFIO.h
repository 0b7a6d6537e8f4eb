// CVFIO: the VFIO type1 and iommufd ioctls as plain C functions, so Swift never makes a
// variadic ioctl call or lays out a kernel struct itself.
//
// Every function returns 0 (or a non-negative result it documents) on success and -errno on
// failure; errno itself is left as the kernel set it. EINTR is retried inside.
//
// This header includes no <linux/...> header: Debian 12's <linux/vfio.h> (6.1) lacks the
// iommufd device ioctls and there is no <linux/iommufd.h> at all, while a newer system has
// both, so the structs carried here use a `cvfio_` prefix and can never collide. vfio.c
// includes <linux/vfio.h> and checks, with static asserts, that every number here that it
// defines agrees. Layouts follow include/uapi/linux/iommufd.h and vfio.h as of 6.6, the first
// kernel with VFIO_DEVICE_BIND_IOMMUFD; later kernels only appended fields, which are optional
// because the kernel takes the size from the first u32 (argsz or size).
#ifndef CVFIO_H
#define CVFIO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// MARK: - VFIO container and group (linux/vfio.h)

/// VFIO_API_VERSION: what VFIO_GET_API_VERSION must return.
#define CVFIO_API_VERSION 0
/// VFIO_TYPE1v2_IOMMU, for VFIO_CHECK_EXTENSION and VFIO_SET_IOMMU.
#define CVFIO_TYPE1v2_IOMMU 3u
/// VFIO_GROUP_FLAGS_VIABLE: every device of the group is bound to a VFIO driver or to none.
#define CVFIO_GROUP_FLAGS_VIABLE 1u
#define CVFIO_GROUP_FLAGS_CONTAINER_SET 2u
/// VFIO_DMA_MAP_FLAG_READ and _WRITE: the device may read, or write, the mapping.
#define CVFIO_DMA_MAP_FLAG_READ 1u
#define CVFIO_DMA_MAP_FLAG_WRITE 2u
/// VFIO_DMA_UNMAP_FLAG_ALL (5.12+): unmap everything; iova and size must be 0.
#define CVFIO_DMA_UNMAP_FLAG_ALL 2u
/// Capability IDs in VFIO_IOMMU_GET_INFO's chain.
#define CVFIO_TYPE1_INFO_CAP_IOVA_RANGE 1u
#define CVFIO_TYPE1_INFO_CAP_MIGRATION 2u
#define CVFIO_TYPE1_INFO_DMA_AVAIL 3u
/// vfio_iommu_type1_info.flags.
#define CVFIO_IOMMU_INFO_PGSIZES 1u
#define CVFIO_IOMMU_INFO_CAPS 2u

/// One usable IOVA range, [start, last] inclusive (vfio_iova_range.end and
/// iommu_iova_range.last are both inclusive).
struct cvfio_iova_range {
    uint64_t start;
    uint64_t last;
};

/// What VFIO_IOMMU_GET_INFO reports, with its capability chain parsed.
struct cvfio_type1_info {
    /// vfio_iommu_type1_info.flags (CVFIO_IOMMU_INFO_*).
    uint32_t flags;
    /// 1 when the chain had an IOVA_RANGE capability (kernels since 5.4 always add one).
    uint32_t has_iova_ranges;
    /// Supported page sizes, bit n meaning 2^n bytes.
    uint64_t iova_pgsizes;
    /// How many ranges the IOVA_RANGE capability lists; the caller's buffer got
    /// min(nr_iova_ranges, capacity) of them.
    uint32_t nr_iova_ranges;
    /// 1 when the chain had a DMA_AVAIL capability (5.10+).
    uint32_t has_dma_avail;
    /// Mappings the container may still create (DMA_AVAIL.avail).
    uint32_t dma_avail;
    uint32_t reserved;
};

/// VFIO_GET_API_VERSION on a container fd: the version (>= 0) or -errno.
int cvfio_get_api_version(int container_fd);

/// VFIO_CHECK_EXTENSION: > 0 when supported, 0 when not, or -errno.
int cvfio_check_extension(int container_fd, uint32_t extension);

/// VFIO_GROUP_GET_STATUS: the group's flags (CVFIO_GROUP_FLAGS_*).
int cvfio_group_get_status(int group_fd, uint32_t *flags);

/// VFIO_GROUP_SET_CONTAINER.
int cvfio_group_set_container(int group_fd, int container_fd);

/// VFIO_GROUP_UNSET_CONTAINER. When the group was the container's last, the container loses
/// its IOMMU and with it every mapping.
int cvfio_group_unset_container(int group_fd);

/// VFIO_SET_IOMMU, once a group is in the container.
int cvfio_set_iommu(int container_fd, uint32_t type);

/// VFIO_IOMMU_GET_INFO, growing the buffer as long as the kernel asks for more (argsz), then
/// parsing the chain with cvfio_type1_info_parse. Ranges go to `ranges`, up to `capacity`;
/// returns -EMSGSIZE, with `info` filled in, when the kernel listed more than `capacity`.
int cvfio_iommu_get_info(
    int container_fd, struct cvfio_type1_info *info, struct cvfio_iova_range *ranges, uint32_t capacity);

/// Parses a VFIO_IOMMU_GET_INFO answer: a struct vfio_iommu_type1_info (24 bytes on LP64)
/// followed by capabilities, each a struct vfio_info_cap_header whose `next` is an offset from
/// the start of the buffer (0 ends the chain). Unknown capabilities are skipped. Returns
/// -EINVAL when the buffer is shorter than the fixed part or a capability or its ranges do not
/// fit, or when an offset does not move forward (so a malformed chain cannot loop), and
/// -EMSGSIZE as cvfio_iommu_get_info does. Pure: no system call.
int cvfio_type1_info_parse(
    const void *buffer, size_t length, struct cvfio_type1_info *info, struct cvfio_iova_range *ranges,
    uint32_t capacity);

/// VFIO_IOMMU_MAP_DMA of `size` bytes at `vaddr` (this process) to `iova`.
int cvfio_iommu_map_dma(int container_fd, uint64_t vaddr, uint64_t iova, uint64_t size, uint32_t flags);

/// VFIO_IOMMU_UNMAP_DMA; `*unmapped` gets the bytes the kernel unmapped.
int cvfio_iommu_unmap_dma(int container_fd, uint64_t iova, uint64_t size, uint32_t flags, uint64_t *unmapped);

/// VFIO_GROUP_GET_DEVICE_FD for `name` (a PCI address such as 0000:00:03.0): the new fd (>= 0)
/// or -errno.
int cvfio_group_get_device_fd(int group_fd, const char *name);

/// VFIO_DEVICE_GET_REGION_INFO for region `index` (BAR0 is 0, config space 7 on vfio-pci),
/// without capabilities: its size, its offset in the device fd and its flags.
int cvfio_device_get_region_info(int device_fd, uint32_t index, uint64_t *size, uint64_t *offset, uint32_t *flags);

// MARK: - iommufd (linux/iommufd.h), carried

/// _IO(';', 0x80 + n) and _IO(';', VFIO_BASE + n).
#define CVFIO_IOMMU_DESTROY 0x3b80u
#define CVFIO_IOMMU_IOAS_ALLOC 0x3b81u
#define CVFIO_IOMMU_IOAS_IOVA_RANGES 0x3b84u
#define CVFIO_IOMMU_IOAS_MAP 0x3b85u
#define CVFIO_IOMMU_IOAS_UNMAP 0x3b86u
#define CVFIO_VFIO_DEVICE_BIND_IOMMUFD 0x3b76u
#define CVFIO_VFIO_DEVICE_ATTACH_IOMMUFD_PT 0x3b77u
#define CVFIO_VFIO_DEVICE_DETACH_IOMMUFD_PT 0x3b78u

/// enum iommufd_ioas_map_flags.
#define CVFIO_IOAS_MAP_FIXED_IOVA 1u
#define CVFIO_IOAS_MAP_WRITEABLE 2u
#define CVFIO_IOAS_MAP_READABLE 4u

#define CVFIO_ALIGNED_U64 uint64_t __attribute__((aligned(8)))

struct cvfio_iommu_destroy {
    uint32_t size;
    uint32_t id;
};

struct cvfio_iommu_ioas_alloc {
    uint32_t size;
    uint32_t flags;
    uint32_t out_ioas_id;
};

struct cvfio_iommu_iova_range {
    CVFIO_ALIGNED_U64 start;
    CVFIO_ALIGNED_U64 last;
};

struct cvfio_iommu_ioas_iova_ranges {
    uint32_t size;
    uint32_t ioas_id;
    uint32_t num_iovas;
    uint32_t reserved;
    CVFIO_ALIGNED_U64 allowed_iovas;
    CVFIO_ALIGNED_U64 out_iova_alignment;
};

struct cvfio_iommu_ioas_map {
    uint32_t size;
    uint32_t flags;
    uint32_t ioas_id;
    uint32_t reserved;
    CVFIO_ALIGNED_U64 user_va;
    CVFIO_ALIGNED_U64 length;
    CVFIO_ALIGNED_U64 iova;
};

struct cvfio_iommu_ioas_unmap {
    uint32_t size;
    uint32_t ioas_id;
    CVFIO_ALIGNED_U64 iova;
    CVFIO_ALIGNED_U64 length;
};

/// 6.6's layout; 6.17 appended token_uuid_ptr, which only a VF with a token needs.
struct cvfio_vfio_device_bind_iommufd {
    uint32_t argsz;
    uint32_t flags;
    int32_t iommufd;
    uint32_t out_devid;
};

/// 6.6's layout; 6.13 appended a pasid, used only with VFIO_DEVICE_ATTACH_PASID.
struct cvfio_vfio_device_attach_iommufd_pt {
    uint32_t argsz;
    uint32_t flags;
    uint32_t pt_id;
};

struct cvfio_vfio_device_detach_iommufd_pt {
    uint32_t argsz;
    uint32_t flags;
};

_Static_assert(sizeof(struct cvfio_iommu_destroy) == 8, "iommu_destroy");
_Static_assert(sizeof(struct cvfio_iommu_ioas_alloc) == 12, "iommu_ioas_alloc");
_Static_assert(sizeof(struct cvfio_iommu_iova_range) == 16, "iommu_iova_range");
_Static_assert(sizeof(struct cvfio_iommu_ioas_iova_ranges) == 32, "iommu_ioas_iova_ranges");
_Static_assert(sizeof(struct cvfio_iommu_ioas_map) == 40, "iommu_ioas_map");
_Static_assert(sizeof(struct cvfio_iommu_ioas_unmap) == 24, "iommu_ioas_unmap");
_Static_assert(sizeof(struct cvfio_vfio_device_bind_iommufd) == 16, "vfio_device_bind_iommufd");
_Static_assert(sizeof(struct cvfio_vfio_device_attach_iommufd_pt) == 12, "vfio_device_attach_iommufd_pt");
_Static_assert(sizeof(struct cvfio_vfio_device_detach_iommufd_pt) == 8, "vfio_device_detach_iommufd_pt");
_Static_assert(offsetof(struct cvfio_iommu_ioas_map, user_va) == 16, "iommu_ioas_map.user_va");
_Static_assert(offsetof(struct cvfio_iommu_ioas_unmap, iova) == 8, "iommu_ioas_unmap.iova");
_Static_assert(offsetof(struct cvfio_iommu_ioas_iova_ranges, allowed_iovas) == 16, "allowed_iovas");

/// IOMMU_IOAS_ALLOC: a new, empty IOAS.
int cvfio_iommufd_ioas_alloc(int iommufd, uint32_t *ioas_id);

/// IOMMU_DESTROY of any object (an IOAS).
int cvfio_iommufd_destroy(int iommufd, uint32_t id);

/// IOMMU_IOAS_IOVA_RANGES: asks for the count, then for the ranges (again, while the count
/// grew in between). Ranges go to `ranges`, up to `capacity`; `*count` is how many there are
/// and `*alignment` the IOVA alignment maps need (out_iova_alignment). -EMSGSIZE when more
/// than `capacity`.
int cvfio_iommufd_ioas_iova_ranges(
    int iommufd, uint32_t ioas_id, struct cvfio_iova_range *ranges, uint32_t capacity, uint32_t *count,
    uint64_t *alignment);

/// IOMMU_IOAS_MAP of `length` bytes at `user_va` to `iova`; `flags` are CVFIO_IOAS_MAP_*
/// (FIXED_IOVA is the caller's to pass).
int cvfio_iommufd_ioas_map(
    int iommufd, uint32_t ioas_id, uint64_t user_va, uint64_t length, uint64_t iova, uint32_t flags);

/// IOMMU_IOAS_UNMAP; `*unmapped` gets the bytes unmapped. iova 0 with length UINT64_MAX unmaps
/// everything. A range that cuts a mapping, or covers none, fails with -ENOENT.
int cvfio_iommufd_ioas_unmap(int iommufd, uint32_t ioas_id, uint64_t iova, uint64_t length, uint64_t *unmapped);

/// VFIO_DEVICE_BIND_IOMMUFD on a /dev/vfio/devices/vfioN fd; `*devid` is the iommufd device ID.
int cvfio_device_bind_iommufd(int device_fd, int iommufd, uint32_t *devid);

/// VFIO_DEVICE_ATTACH_IOMMUFD_PT to an IOAS (or HWPT); `*attached_pt_id` is the page table the
/// kernel attached (for an IOAS, the automatically created HWPT).
int cvfio_device_attach_iommufd_pt(int device_fd, uint32_t pt_id, uint32_t *attached_pt_id);

/// VFIO_DEVICE_DETACH_IOMMUFD_PT: the device blocks DMA until attached again.
int cvfio_device_detach_iommufd_pt(int device_fd);

// MARK: - Memory

#define CVFIO_PROT_READ 1
#define CVFIO_PROT_WRITE 2

/// mmap(NULL, length, prot, MAP_SHARED, fd, offset); `*address` gets the mapping's address.
/// `prot` is a combination of CVFIO_PROT_* (the same bits as PROT_*).
int cvfio_mmap_shared(int fd, uint64_t offset, uint64_t length, int prot, uint64_t *address);

/// munmap(address, length).
int cvfio_munmap(uint64_t address, uint64_t length);

#ifdef __cplusplus
}
#endif

#endif
