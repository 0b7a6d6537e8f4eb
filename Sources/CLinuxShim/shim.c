// _GNU_SOURCE must come before any system header, and only here (see CLinuxShim.h).
#define _GNU_SOURCE
#include "CLinuxShim.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

ssize_t iommu_shim_sendmsg(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    if (nfds < 0 || nfds > IOMMU_SHIM_SEND_MAX_FDS || (nfds > 0 && (len == 0 || fds == NULL))) {
        errno = EINVAL;
        return -1;
    }
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;

    // The union gives the control buffer struct cmsghdr's alignment.
    union {
        char bytes[CMSG_SPACE(sizeof(int) * IOMMU_SHIM_SEND_MAX_FDS)];
        struct cmsghdr align;
    } control;
    if (nfds > 0) {
        size_t payload = sizeof(int) * (size_t)nfds;
        memset(control.bytes, 0, CMSG_SPACE(payload));
        msg.msg_control = control.bytes;
        msg.msg_controllen = CMSG_SPACE(payload);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(payload);
        memcpy(CMSG_DATA(cmsg), fds, payload);
    }
    // MSG_NOSIGNAL: a peer that closed gives EPIPE, not a SIGPIPE that kills the daemon.
    return sendmsg(sock, &msg, MSG_NOSIGNAL);
}

ssize_t iommu_shim_recvmsg(
    int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int *truncated) {
    *nfds = 0;
    *truncated = 0;
    if (maxfds < 0 || (maxfds > 0 && fds == NULL)) {
        errno = EINVAL;
        return -1;
    }
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    union {
        char bytes[CMSG_SPACE(sizeof(int) * IOMMU_SHIM_RECV_MAX_FDS)];
        struct cmsghdr align;
    } control;
    memset(control.bytes, 0, sizeof control.bytes);
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.bytes;
    msg.msg_controllen = sizeof control.bytes;

    // MSG_CMSG_CLOEXEC: a received fd must never leak into a process the daemon spawns.
    ssize_t count = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (count < 0) {
        return -1;
    }
    if (msg.msg_flags & MSG_CTRUNC) {
        *truncated = 1;
    }
    // A sender may attach several SCM_RIGHTS cmsgs to one message; collect them all.
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS ||
            cmsg->cmsg_len < CMSG_LEN(0)) {
            continue;
        }
        size_t payload = cmsg->cmsg_len - CMSG_LEN(0);
        size_t n = payload / sizeof(int);
        const unsigned char *data = CMSG_DATA(cmsg);
        for (size_t i = 0; i < n; i++) {
            int fd;
            // CMSG_DATA need not be int-aligned for every i; copy rather than dereference.
            memcpy(&fd, data + i * sizeof(int), sizeof fd);
            if (*nfds < maxfds) {
                fds[(*nfds)++] = fd;
            } else {
                // No room to hand it back: close it so the caller cannot leak it.
                close(fd);
                *truncated = 1;
            }
        }
    }
    return count;
}

int iommu_shim_peercred(int sock, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct ucred cred;
    socklen_t size = sizeof cred;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &size) != 0) {
        return -1;
    }
    *pid = (int32_t)cred.pid;
    *uid = (uint32_t)cred.uid;
    *gid = (uint32_t)cred.gid;
    return 0;
}

int iommu_shim_memfd_create(const char *name, unsigned int flags) {
    return memfd_create(name, flags);
}

unsigned int iommu_shim_mfd_cloexec(void) {
    return MFD_CLOEXEC;
}

unsigned int iommu_shim_mfd_allow_sealing(void) {
    return MFD_ALLOW_SEALING;
}

int iommu_shim_accept(int sock) {
    return accept4(sock, NULL, NULL, SOCK_CLOEXEC);
}
