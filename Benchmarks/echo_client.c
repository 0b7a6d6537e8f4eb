// The round-trip baseline's client: N threads, each with its own connection, each sending one
// 48-byte vfio-user frame (16-byte header + 32-byte payload, the size of a DMA_MAP) and
// reading the 48-byte reply, in a loop, for a fixed time. Every round trip is timed.
//
// Usage: echo_client SOCKET_PATH THREADS SECONDS
// Prints one line of key=value pairs: round_trips, seconds, p50_ns, p99_ns, user_ns and
// system_ns (this process's CPU time over the timed part).
#define _GNU_SOURCE
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "client_driver.h"

enum { message_size = 48 };

struct worker {
    struct client_timing timing;
    int fd;
};

static const char *socket_path;
static struct worker *workers;

static struct client_timing *timing_of(int index) { return &workers[index].timing; }

static int connect_to(const char *path) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    strncpy(address.sun_path, path, sizeof address.sun_path - 1);
    if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) < 0) {
        perror("connect");
        exit(1);
    }
    return fd;
}

static void *run(void *arg) {
    struct worker *w = arg;
    unsigned char request[message_size] = {0}, reply[message_size];
    request[2] = 2;                    // command: DMA_MAP
    request[4] = message_size;         // msg_size
    request[16] = 32;                  // argsz
    request[20] = 3;                   // flags: READ | WRITE
    pthread_barrier_wait(&start_line);
    uint16_t id = 0;
    while (!stop) {
        ++id;
        memcpy(request, &id, sizeof id);
        uint64_t begin = now_ns();
        if (send(w->fd, request, sizeof request, MSG_NOSIGNAL) != (ssize_t)sizeof request) {
            perror("send");
            exit(1);
        }
        size_t have = 0;
        while (have < sizeof reply) {
            ssize_t got = recv(w->fd, reply + have, sizeof reply - have, 0);
            if (got <= 0) {
                if (got < 0 && errno == EINTR) continue;
                fprintf(stderr, "recv: %s\n", got == 0 ? "closed" : strerror(errno));
                exit(1);
            }
            have += (size_t)got;
        }
        record_sample(&w->timing, now_ns() - begin);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s SOCKET_PATH THREADS SECONDS\n", argv[0]);
        return 2;
    }
    socket_path = argv[1];
    int threads = atoi(argv[2]);
    double seconds = atof(argv[3]);
    if (threads < 1 || seconds <= 0) return 2;
    workers = calloc((size_t)threads, sizeof *workers);
    prepare_start_line(threads);
    for (int i = 0; i < threads; i++) {
        workers[i].fd = connect_to(socket_path);
        start_worker(&workers[i].timing, run, &workers[i]);
    }
    drive_and_report(threads, seconds, timing_of);
    return 0;
}
