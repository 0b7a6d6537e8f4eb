// CLinuxShim: the few Linux calls Swift cannot make directly. The cmsg macros (CMSG_FIRSTHDR,
// CMSG_DATA, CMSG_SPACE, CMSG_LEN) do not import into Swift, and `struct ucred`, memfd_create
// and accept4 are declared only under _GNU_SOURCE. _GNU_SOURCE is defined in shim.c, never
// here: defining it in a header that Swift imports breaks Swift's own Glibc module.
//
// Every function returns -1 and sets errno on failure, like the system call it wraps, so the
// Swift side can route it through its one syscall funnel (which retries EINTR).
#ifndef IOMMU_CLINUXSHIM_H
#define IOMMU_CLINUXSHIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Room in iommu_shim_recvmsg's control buffer: at most this many fds arrive in one call.
/// The kernel drops (closes) any further fds of that message and sets MSG_CTRUNC.
#define IOMMU_SHIM_RECV_MAX_FDS 16

/// The most fds iommu_shim_sendmsg sends in one call (the kernel's SCM_MAX_FD is 253).
#define IOMMU_SHIM_SEND_MAX_FDS 253

/// One sendmsg(MSG_NOSIGNAL) of `len` bytes; when nfds > 0 the fds travel as one SCM_RIGHTS
/// cmsg with these bytes. Fds need at least one byte to travel with (EINVAL when len == 0),
/// and nfds must be in 0...IOMMU_SHIM_SEND_MAX_FDS (EINVAL otherwise).
/// Returns the bytes sent; a short count means the fds went with the bytes that were sent.
ssize_t iommu_shim_sendmsg(int sock, const void *buf, size_t len, const int *fds, int nfds);

/// One recvmsg(MSG_CMSG_CLOEXEC). Every fd received (from every SCM_RIGHTS cmsg) is stored in
/// `fds`, up to `maxfds`; `*nfds` is how many were stored. Fds beyond `maxfds` are closed
/// here, so nothing leaks. `*truncated` is 1 when the kernel dropped fds that did not fit the
/// control buffer (MSG_CTRUNC) or when fds were closed for lack of room in `fds`, else 0.
/// Returns the byte count (0: the peer closed its end), or -1 with errno set.
ssize_t iommu_shim_recvmsg(
    int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int *truncated);

/// SO_PEERCRED: the credentials the peer had when it connected (or created the socket pair).
int iommu_shim_peercred(int sock, int32_t *pid, uint32_t *uid, uint32_t *gid);

/// memfd_create(2).
int iommu_shim_memfd_create(const char *name, unsigned int flags);

/// memfd_create flags, as values Swift can read.
unsigned int iommu_shim_mfd_cloexec(void);
unsigned int iommu_shim_mfd_allow_sealing(void);

/// accept4(sock, NULL, NULL, SOCK_CLOEXEC).
int iommu_shim_accept(int sock);

#ifdef __cplusplus
}
#endif

#endif
