// A C tenant for the round-trip phase: the daemon measured with a client as cheap as the echo
// baseline's, so that the figure shows the server alone (docs/PERFORMANCE.md).
//
// N threads, each with its own session: VERSION, ATTACH_GROUP (GROUP_BASE + thread index), then
// DMA_MAP and DMA_UNMAP of one 4 KiB page of its own in a loop, for a fixed time. Every
// request is timed. Any error reply ends the program (exit 1).
//
// Usage: vfio_user_client SOCKET_PATH THREADS SECONDS [GROUP_BASE]
// Prints the same key=value line as echo_client; round_trips counts requests (2 per pair).
#define _GNU_SOURCE
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "client_driver.h"

enum { header_size = 16 };
enum { cmd_version = 1, cmd_dma_map = 2, cmd_dma_unmap = 3, cmd_attach_group = 0x1001 };

struct worker {
    struct client_timing timing;
    int index;
    uint32_t group;
    int fd;
    uint16_t next_id;
};

static struct worker *workers;

static struct client_timing *timing_of(int index) { return &workers[index].timing; }

static void put16(unsigned char *p, uint16_t v) { p[0] = v; p[1] = v >> 8; }
static void put32(unsigned char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = v >> (8 * i); }
static void put64(unsigned char *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = v >> (8 * i); }
static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void die(struct worker *w, const char *what) {
    fprintf(stderr, "client %d: %s\n", w->index, what);
    exit(1);
}

// One request (header + payload) and its reply; the reply's payload is discarded.
static void exchange(struct worker *w, uint16_t command, const unsigned char *payload, size_t size) {
    unsigned char message[header_size + 256];
    unsigned char reply[4096];
    memset(message, 0, header_size);
    put16(message, ++w->next_id);
    put16(message + 2, command);
    put32(message + 4, (uint32_t)(header_size + size));
    memcpy(message + header_size, payload, size);
    size_t total = header_size + size;
    if (send(w->fd, message, total, MSG_NOSIGNAL) != (ssize_t)total) die(w, "send failed");
    size_t have = 0, want = header_size;
    while (have < want) {
        ssize_t got = recv(w->fd, reply + have, sizeof reply - have, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) die(w, got == 0 ? "the daemon closed the connection" : strerror(errno));
        have += (size_t)got;
        if (have >= header_size) {
            want = get32(reply + 4);
            if (want < header_size || want > sizeof reply) die(w, "bad reply size");
        }
    }
    uint32_t flags = get32(reply + 8);
    if ((flags & 0xf) != 1) die(w, "not a reply");
    if (flags & (1u << 5)) {
        char text[256];
        snprintf(text, sizeof text, "command %u refused: errno %u", command, get32(reply + 12));
        die(w, text);
    }
}

static void *run(void *arg) {
    struct worker *w = arg;
    unsigned char payload[64];
    static const char json[] = "{\"capabilities\":{}}";
    put16(payload, 0);
    put16(payload + 2, 1);
    memcpy(payload + 4, json, sizeof json);
    exchange(w, cmd_version, payload, 4 + sizeof json);
    memset(payload, 0, sizeof payload);
    put32(payload, 16);
    put32(payload + 8, w->group);
    exchange(w, cmd_attach_group, payload, 16);

    uint64_t iova = 0x100000000ull + ((uint64_t)w->index << 24);
    unsigned char map[32] = {0}, unmap[24] = {0};
    put32(map, 32);
    put32(map + 4, 3);  // READ | WRITE
    put64(map + 16, iova);
    put64(map + 24, 0x1000);
    put32(unmap, 24);
    put64(unmap + 8, iova);
    put64(unmap + 16, 0x1000);
    pthread_barrier_wait(&start_line);
    while (!stop) {
        uint64_t begin = now_ns();
        exchange(w, cmd_dma_map, map, sizeof map);
        uint64_t mapped = now_ns();
        exchange(w, cmd_dma_unmap, unmap, sizeof unmap);
        uint64_t end = now_ns();
        struct client_timing *t = &w->timing;
        if (t->count + 2 <= max_samples) {
            t->samples[t->count++] = mapped - begin;
            t->samples[t->count++] = end - mapped;
        }
        t->round_trips += 2;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: %s SOCKET_PATH THREADS SECONDS [GROUP_BASE]\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[2]);
    double seconds = atof(argv[3]);
    uint32_t group_base = argc == 5 ? (uint32_t)strtoul(argv[4], NULL, 0) : 0;
    if (threads < 1 || seconds <= 0) return 2;
    workers = calloc((size_t)threads, sizeof *workers);
    prepare_start_line(threads);
    for (int i = 0; i < threads; i++) {
        workers[i].index = i;
        workers[i].group = group_base + (uint32_t)i;
        workers[i].fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un address = {.sun_family = AF_UNIX};
        strncpy(address.sun_path, argv[1], sizeof address.sun_path - 1);
        if (workers[i].fd < 0 || connect(workers[i].fd, (struct sockaddr *)&address, sizeof address) < 0) {
            perror("connect");
            return 1;
        }
        start_worker(&workers[i].timing, run, &workers[i]);
    }
    drive_and_report(threads, seconds, timing_of);
    return 0;
}
