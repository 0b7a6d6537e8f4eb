// The round-trip baseline's server: what a Unix stream socket allows on this machine.
//
// A thread per connection, blocking I/O, as a C server would be written. Each connection reads
// vfio-user frames (16-byte header, u32 msg_size at offset 4) with one recv into a buffer,
// and answers every complete frame with the same bytes, the header turned into a reply
// (flags type 1), all replies of one recv in one send. No policy, no state, no allocation per
// message: the floor the daemon is compared against (docs/PERFORMANCE.md).
//
// Usage: echo_server SOCKET_PATH
// Prints "ready" on stdout once listening; runs until killed.
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum { header_size = 16, max_message = 4096, buffer_size = 65536 };

static uint32_t load_le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int send_all(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t sent = send(fd, p, n, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += sent;
        n -= (size_t)sent;
    }
    return 0;
}

static void *serve(void *arg) {
    int fd = (int)(intptr_t)arg;
    static __thread unsigned char in[buffer_size];
    static __thread unsigned char out[buffer_size];
    size_t have = 0;
    for (;;) {
        ssize_t got = recv(fd, in + have, sizeof in - have, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        have += (size_t)got;
        size_t at = 0, reply = 0;
        while (have - at >= header_size) {
            uint32_t size = load_le32(in + at + 4);
            if (size < header_size || size > max_message) goto done;
            if (have - at < size) break;
            memcpy(out + reply, in + at, size);
            out[reply + 8] = (unsigned char)((out[reply + 8] & ~0xf) | 1);  // flags: type reply
            reply += size;
            at += size;
        }
        if (reply > 0 && send_all(fd, out, reply) < 0) break;
        memmove(in, in + at, have - at);
        have -= at;
    }
done:
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SOCKET_PATH\n", argv[0]);
        return 2;
    }
    int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof address.sun_path) {
        fprintf(stderr, "path too long\n");
        return 2;
    }
    strcpy(address.sun_path, argv[1]);
    unlink(argv[1]);
    if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof address) < 0 || listen(listener, 128) < 0) {
        perror("listen");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    pthread_attr_t attributes;
    pthread_attr_init(&attributes);
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            perror("accept");
            return 1;
        }
        pthread_t thread;
        if (pthread_create(&thread, &attributes, serve, (void *)(intptr_t)fd) != 0) close(fd);
    }
}
