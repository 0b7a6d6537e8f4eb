// The ioctls behind CVFIO.h. Each wrapper fills the kernel's struct, retries EINTR and turns
// -1/errno into -errno; nothing here keeps state.
#include "CVFIO.h"

#include <errno.h>
#include <linux/ioctl.h>
#include <linux/vfio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

// The numbers CVFIO.h spells out must be the kernel's.
_Static_assert(CVFIO_API_VERSION == VFIO_API_VERSION, "VFIO_API_VERSION");
_Static_assert(CVFIO_TYPE1v2_IOMMU == VFIO_TYPE1v2_IOMMU, "VFIO_TYPE1v2_IOMMU");
_Static_assert(CVFIO_GROUP_FLAGS_VIABLE == VFIO_GROUP_FLAGS_VIABLE, "VFIO_GROUP_FLAGS_VIABLE");
_Static_assert(CVFIO_GROUP_FLAGS_CONTAINER_SET == VFIO_GROUP_FLAGS_CONTAINER_SET, "CONTAINER_SET");
_Static_assert(CVFIO_DMA_MAP_FLAG_READ == VFIO_DMA_MAP_FLAG_READ, "VFIO_DMA_MAP_FLAG_READ");
_Static_assert(CVFIO_DMA_MAP_FLAG_WRITE == VFIO_DMA_MAP_FLAG_WRITE, "VFIO_DMA_MAP_FLAG_WRITE");
_Static_assert(CVFIO_DMA_UNMAP_FLAG_ALL == VFIO_DMA_UNMAP_FLAG_ALL, "VFIO_DMA_UNMAP_FLAG_ALL");
_Static_assert(CVFIO_TYPE1_INFO_CAP_IOVA_RANGE == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, "CAP_IOVA_RANGE");
_Static_assert(CVFIO_TYPE1_INFO_CAP_MIGRATION == VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, "CAP_MIGRATION");
_Static_assert(CVFIO_TYPE1_INFO_DMA_AVAIL == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, "DMA_AVAIL");
_Static_assert(CVFIO_IOMMU_INFO_PGSIZES == VFIO_IOMMU_INFO_PGSIZES, "VFIO_IOMMU_INFO_PGSIZES");
_Static_assert(CVFIO_IOMMU_INFO_CAPS == VFIO_IOMMU_INFO_CAPS, "VFIO_IOMMU_INFO_CAPS");
_Static_assert(CVFIO_PROT_READ == PROT_READ && CVFIO_PROT_WRITE == PROT_WRITE, "PROT_*");

#define IOMMUFD_TYPE (';')
_Static_assert(CVFIO_IOMMU_DESTROY == _IO(IOMMUFD_TYPE, 0x80), "IOMMU_DESTROY");
_Static_assert(CVFIO_IOMMU_IOAS_ALLOC == _IO(IOMMUFD_TYPE, 0x81), "IOMMU_IOAS_ALLOC");
_Static_assert(CVFIO_IOMMU_IOAS_IOVA_RANGES == _IO(IOMMUFD_TYPE, 0x84), "IOMMU_IOAS_IOVA_RANGES");
_Static_assert(CVFIO_IOMMU_IOAS_MAP == _IO(IOMMUFD_TYPE, 0x85), "IOMMU_IOAS_MAP");
_Static_assert(CVFIO_IOMMU_IOAS_UNMAP == _IO(IOMMUFD_TYPE, 0x86), "IOMMU_IOAS_UNMAP");
_Static_assert(CVFIO_VFIO_DEVICE_BIND_IOMMUFD == _IO(VFIO_TYPE, VFIO_BASE + 18), "VFIO_DEVICE_BIND_IOMMUFD");
_Static_assert(CVFIO_VFIO_DEVICE_ATTACH_IOMMUFD_PT == _IO(VFIO_TYPE, VFIO_BASE + 19), "ATTACH_IOMMUFD_PT");
_Static_assert(CVFIO_VFIO_DEVICE_DETACH_IOMMUFD_PT == _IO(VFIO_TYPE, VFIO_BASE + 20), "DETACH_IOMMUFD_PT");
#ifdef VFIO_DEVICE_BIND_IOMMUFD
_Static_assert(CVFIO_VFIO_DEVICE_BIND_IOMMUFD == VFIO_DEVICE_BIND_IOMMUFD, "VFIO_DEVICE_BIND_IOMMUFD");
_Static_assert(CVFIO_VFIO_DEVICE_ATTACH_IOMMUFD_PT == VFIO_DEVICE_ATTACH_IOMMUFD_PT, "ATTACH_IOMMUFD_PT");
_Static_assert(CVFIO_VFIO_DEVICE_DETACH_IOMMUFD_PT == VFIO_DEVICE_DETACH_IOMMUFD_PT, "DETACH_IOMMUFD_PT");
#endif

// The layouts the parser and cvfio_iova_range rely on.
_Static_assert(sizeof(struct vfio_iommu_type1_info) == 24, "vfio_iommu_type1_info");
_Static_assert(offsetof(struct vfio_iommu_type1_info, cap_offset) == 16, "cap_offset");
_Static_assert(sizeof(struct vfio_info_cap_header) == 8, "vfio_info_cap_header");
_Static_assert(sizeof(struct vfio_iommu_type1_info_cap_iova_range) == 16, "cap_iova_range");
_Static_assert(sizeof(struct vfio_iova_range) == 16, "vfio_iova_range");
_Static_assert(offsetof(struct vfio_iommu_type1_info_dma_avail, avail) == 8, "dma_avail");
_Static_assert(sizeof(struct cvfio_iova_range) == sizeof(struct vfio_iova_range), "cvfio_iova_range");
_Static_assert(sizeof(struct vfio_iommu_type1_dma_map) == 32, "vfio_iommu_type1_dma_map");
_Static_assert(sizeof(struct vfio_iommu_type1_dma_unmap) == 24, "vfio_iommu_type1_dma_unmap");

/// ioctl with EINTR retried; -errno on failure, else the ioctl's own result.
static int call(int fd, unsigned long request, void *arg) {
    int result;
    do {
        result = ioctl(fd, request, arg);
    } while (result < 0 && errno == EINTR);
    return result < 0 ? -errno : result;
}

/// ioctl with an integer argument (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU, SET_CONTAINER).
static int call_value(int fd, unsigned long request, unsigned long value) {
    int result;
    do {
        result = ioctl(fd, request, value);
    } while (result < 0 && errno == EINTR);
    return result < 0 ? -errno : result;
}

// MARK: - VFIO container and group

int cvfio_get_api_version(int container_fd) { return call_value(container_fd, VFIO_GET_API_VERSION, 0); }

int cvfio_check_extension(int container_fd, uint32_t extension) {
    return call_value(container_fd, VFIO_CHECK_EXTENSION, extension);
}

int cvfio_group_get_status(int group_fd, uint32_t *flags) {
    struct vfio_group_status status = {.argsz = sizeof(status)};
    int result = call(group_fd, VFIO_GROUP_GET_STATUS, &status);
    if (result < 0) return result;
    *flags = status.flags;
    return 0;
}

int cvfio_group_set_container(int group_fd, int container_fd) {
    // The argument is a pointer to the container fd, not the fd itself.
    int32_t fd = container_fd;
    int result = call(group_fd, VFIO_GROUP_SET_CONTAINER, &fd);
    return result < 0 ? result : 0;
}

int cvfio_group_unset_container(int group_fd) {
    int result = call_value(group_fd, VFIO_GROUP_UNSET_CONTAINER, 0);
    return result < 0 ? result : 0;
}

int cvfio_set_iommu(int container_fd, uint32_t type) {
    int result = call_value(container_fd, VFIO_SET_IOMMU, type);
    return result < 0 ? result : 0;
}

/// Reads a `T` at `offset` of the buffer, which need not be aligned.
#define READ_AT(T, buffer, offset) \
    ({ \
        T value_; \
        memcpy(&value_, (const uint8_t *)(buffer) + (offset), sizeof(T)); \
        value_; \
    })

int cvfio_type1_info_parse(
    const void *buffer, size_t length, struct cvfio_type1_info *info, struct cvfio_iova_range *ranges,
    uint32_t capacity) {
    memset(info, 0, sizeof(*info));
    // The kernel fills at least up to iova_pgsizes (its minsz); cap_offset follows.
    if (length < offsetof(struct vfio_iommu_type1_info, cap_offset)) return -EINVAL;
    info->flags = READ_AT(uint32_t, buffer, offsetof(struct vfio_iommu_type1_info, flags));
    info->iova_pgsizes = READ_AT(uint64_t, buffer, offsetof(struct vfio_iommu_type1_info, iova_pgsizes));
    if (!(info->flags & VFIO_IOMMU_INFO_CAPS)) return 0;
    const size_t fixed = offsetof(struct vfio_iommu_type1_info, cap_offset) + sizeof(uint32_t);
    if (length < fixed) return 0;
    // Capabilities sit after the fixed part; each `next` must move forward, so the walk ends.
    uint64_t offset = READ_AT(uint32_t, buffer, offsetof(struct vfio_iommu_type1_info, cap_offset));
    uint64_t floor = fixed;
    int too_many = 0;
    while (offset != 0) {
        if (offset < floor || offset + sizeof(struct vfio_info_cap_header) > length) return -EINVAL;
        struct vfio_info_cap_header header = READ_AT(struct vfio_info_cap_header, buffer, offset);
        if (header.id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE && !info->has_iova_ranges) {
            const size_t head = sizeof(struct vfio_iommu_type1_info_cap_iova_range);
            if (offset + head > length) return -EINVAL;
            uint32_t count = READ_AT(
                uint32_t, buffer, offset + offsetof(struct vfio_iommu_type1_info_cap_iova_range, nr_iovas));
            uint64_t end = offset + head + (uint64_t)count * sizeof(struct vfio_iova_range);
            if (end > length) return -EINVAL;
            info->has_iova_ranges = 1;
            info->nr_iova_ranges = count;
            for (uint32_t i = 0; i < count && i < capacity; i++) {
                struct vfio_iova_range range =
                    READ_AT(struct vfio_iova_range, buffer, offset + head + (uint64_t)i * sizeof(range));
                ranges[i].start = range.start;
                ranges[i].last = range.end;
            }
            too_many = count > capacity;
        } else if (header.id == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL && !info->has_dma_avail) {
            if (offset + sizeof(struct vfio_iommu_type1_info_dma_avail) > length) return -EINVAL;
            info->has_dma_avail = 1;
            info->dma_avail =
                READ_AT(uint32_t, buffer, offset + offsetof(struct vfio_iommu_type1_info_dma_avail, avail));
        }
        floor = offset + sizeof(struct vfio_info_cap_header);
        offset = header.next;
    }
    return too_many ? -EMSGSIZE : 0;
}

int cvfio_iommu_get_info(
    int container_fd, struct cvfio_type1_info *info, struct cvfio_iova_range *ranges, uint32_t capacity) {
    // The kernel says how big the answer is by raising argsz; it may grow between calls (a
    // group attached meanwhile), so ask until it fits, a bounded number of times.
    uint32_t size = sizeof(struct vfio_iommu_type1_info);
    for (int attempt = 0; attempt < 8; attempt++) {
        uint8_t *buffer = calloc(1, size);
        if (buffer == NULL) return -ENOMEM;
        struct vfio_iommu_type1_info *fixed = (struct vfio_iommu_type1_info *)buffer;
        fixed->argsz = size;
        int result = call(container_fd, VFIO_IOMMU_GET_INFO, buffer);
        if (result < 0) {
            free(buffer);
            return result;
        }
        if (fixed->argsz > size) {
            // More than 1 MiB of capabilities is not an answer any kernel gives.
            if (fixed->argsz > (1u << 20)) {
                free(buffer);
                return -EOVERFLOW;
            }
            size = fixed->argsz;
            free(buffer);
            continue;
        }
        result = cvfio_type1_info_parse(buffer, size, info, ranges, capacity);
        free(buffer);
        return result;
    }
    return -EAGAIN;
}

int cvfio_iommu_map_dma(int container_fd, uint64_t vaddr, uint64_t iova, uint64_t size, uint32_t flags) {
    struct vfio_iommu_type1_dma_map map = {
        .argsz = sizeof(map), .flags = flags, .vaddr = vaddr, .iova = iova, .size = size};
    int result = call(container_fd, VFIO_IOMMU_MAP_DMA, &map);
    return result < 0 ? result : 0;
}

int cvfio_iommu_unmap_dma(int container_fd, uint64_t iova, uint64_t size, uint32_t flags, uint64_t *unmapped) {
    struct vfio_iommu_type1_dma_unmap unmap = {.argsz = sizeof(unmap), .flags = flags, .iova = iova, .size = size};
    int result = call(container_fd, VFIO_IOMMU_UNMAP_DMA, &unmap);
    if (result < 0) return result;
    *unmapped = unmap.size;
    return 0;
}

int cvfio_group_get_device_fd(int group_fd, const char *name) {
    int result;
    do {
        result = ioctl(group_fd, VFIO_GROUP_GET_DEVICE_FD, name);
    } while (result < 0 && errno == EINTR);
    return result < 0 ? -errno : result;
}

int cvfio_device_get_region_info(int device_fd, uint32_t index, uint64_t *size, uint64_t *offset, uint32_t *flags) {
    struct vfio_region_info region = {.argsz = sizeof(region), .index = index};
    int result = call(device_fd, VFIO_DEVICE_GET_REGION_INFO, &region);
    if (result < 0) return result;
    *size = region.size;
    *offset = region.offset;
    *flags = region.flags;
    return 0;
}

// MARK: - iommufd

int cvfio_iommufd_ioas_alloc(int iommufd, uint32_t *ioas_id) {
    struct cvfio_iommu_ioas_alloc alloc = {.size = sizeof(alloc)};
    int result = call(iommufd, CVFIO_IOMMU_IOAS_ALLOC, &alloc);
    if (result < 0) return result;
    *ioas_id = alloc.out_ioas_id;
    return 0;
}

int cvfio_iommufd_destroy(int iommufd, uint32_t id) {
    struct cvfio_iommu_destroy destroy = {.size = sizeof(destroy), .id = id};
    int result = call(iommufd, CVFIO_IOMMU_DESTROY, &destroy);
    return result < 0 ? result : 0;
}

int cvfio_iommufd_ioas_iova_ranges(
    int iommufd, uint32_t ioas_id, struct cvfio_iova_range *ranges, uint32_t capacity, uint32_t *count,
    uint64_t *alignment) {
    // First call with room for none: the kernel answers -EMSGSIZE with the count (or 0 with a
    // count of 0). Then call with that much room, again while an attach raced and it grew.
    uint32_t room = 0;
    struct cvfio_iommu_iova_range *buffer = NULL;
    for (int attempt = 0; attempt < 8; attempt++) {
        struct cvfio_iommu_ioas_iova_ranges query = {
            .size = sizeof(query), .ioas_id = ioas_id, .num_iovas = room, .allowed_iovas = (uintptr_t)buffer};
        int result = call(iommufd, CVFIO_IOMMU_IOAS_IOVA_RANGES, &query);
        if (result == -EMSGSIZE && query.num_iovas > room) {
            free(buffer);
            room = query.num_iovas;
            buffer = calloc(room, sizeof(*buffer));
            if (buffer == NULL) return -ENOMEM;
            continue;
        }
        if (result < 0) {
            free(buffer);
            return result;
        }
        *count = query.num_iovas;
        *alignment = query.out_iova_alignment;
        for (uint32_t i = 0; i < query.num_iovas && i < capacity; i++) {
            ranges[i].start = buffer[i].start;
            ranges[i].last = buffer[i].last;
        }
        free(buffer);
        return query.num_iovas > capacity ? -EMSGSIZE : 0;
    }
    free(buffer);
    return -EAGAIN;
}

int cvfio_iommufd_ioas_map(
    int iommufd, uint32_t ioas_id, uint64_t user_va, uint64_t length, uint64_t iova, uint32_t flags) {
    struct cvfio_iommu_ioas_map map = {
        .size = sizeof(map), .flags = flags, .ioas_id = ioas_id, .user_va = user_va, .length = length, .iova = iova};
    int result = call(iommufd, CVFIO_IOMMU_IOAS_MAP, &map);
    return result < 0 ? result : 0;
}

int cvfio_iommufd_ioas_unmap(int iommufd, uint32_t ioas_id, uint64_t iova, uint64_t length, uint64_t *unmapped) {
    struct cvfio_iommu_ioas_unmap unmap = {.size = sizeof(unmap), .ioas_id = ioas_id, .iova = iova, .length = length};
    int result = call(iommufd, CVFIO_IOMMU_IOAS_UNMAP, &unmap);
    if (result < 0) return result;
    *unmapped = unmap.length;
    return 0;
}

int cvfio_device_bind_iommufd(int device_fd, int iommufd, uint32_t *devid) {
    struct cvfio_vfio_device_bind_iommufd bind = {.argsz = sizeof(bind), .iommufd = iommufd};
    int result = call(device_fd, CVFIO_VFIO_DEVICE_BIND_IOMMUFD, &bind);
    if (result < 0) return result;
    *devid = bind.out_devid;
    return 0;
}

int cvfio_device_attach_iommufd_pt(int device_fd, uint32_t pt_id, uint32_t *attached_pt_id) {
    struct cvfio_vfio_device_attach_iommufd_pt attach = {.argsz = sizeof(attach), .pt_id = pt_id};
    int result = call(device_fd, CVFIO_VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach);
    if (result < 0) return result;
    *attached_pt_id = attach.pt_id;
    return 0;
}

int cvfio_device_detach_iommufd_pt(int device_fd) {
    struct cvfio_vfio_device_detach_iommufd_pt detach = {.argsz = sizeof(detach)};
    int result = call(device_fd, CVFIO_VFIO_DEVICE_DETACH_IOMMUFD_PT, &detach);
    return result < 0 ? result : 0;
}

// MARK: - Memory

int cvfio_mmap_shared(int fd, uint64_t offset, uint64_t length, int prot, uint64_t *address) {
    if (length == 0 || length > (uint64_t)SIZE_MAX || offset > (uint64_t)INT64_MAX) return -EINVAL;
    void *mapped = mmap(NULL, (size_t)length, prot, MAP_SHARED, fd, (off_t)offset);
    if (mapped == MAP_FAILED) return -errno;
    *address = (uint64_t)(uintptr_t)mapped;
    return 0;
}

int cvfio_munmap(uint64_t address, uint64_t length) {
    if (munmap((void *)(uintptr_t)address, (size_t)length) < 0) return -errno;
    return 0;
}
