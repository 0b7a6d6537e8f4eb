// The round-trip baseline's client: N threads, each with its own connection, each sending one
// 48-byte vfio-user frame (16-byte header + 32-byte payload, the size of a DMA_MAP) and
// reading the 48-byte reply, in a loop, for a fixed time. Every round trip is timed.
//
// Usage: echo_client SOCKET_PATH THREADS SECONDS
// Prints one line of key=value pairs: round_trips, seconds, p50_ns, p99_ns, user_ns and
// system_ns (this process's CPU time over the timed part).
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum { message_size = 48, max_samples = 1 << 22 };

struct worker {
    pthread_t thread;
    int fd;
    uint64_t *samples;
    size_t count;
    uint64_t round_trips;
};

static const char *socket_path;
static double seconds;
static pthread_barrier_t start_line;
static volatile int stop;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

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
        uint64_t elapsed = now_ns() - begin;
        if (w->count < max_samples) w->samples[w->count++] = elapsed;
        w->round_trips++;
    }
    return NULL;
}

static int compare(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t timeval_ns(struct timeval t) { return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_usec * 1000u; }

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s SOCKET_PATH THREADS SECONDS\n", argv[0]);
        return 2;
    }
    socket_path = argv[1];
    int threads = atoi(argv[2]);
    seconds = atof(argv[3]);
    if (threads < 1 || seconds <= 0) return 2;
    struct worker *workers = calloc((size_t)threads, sizeof *workers);
    pthread_barrier_init(&start_line, NULL, (unsigned)threads + 1);
    for (int i = 0; i < threads; i++) {
        workers[i].fd = connect_to(socket_path);
        workers[i].samples = malloc(sizeof(uint64_t) * max_samples);
        pthread_create(&workers[i].thread, NULL, run, &workers[i]);
    }
    pthread_barrier_wait(&start_line);
    struct rusage usage_begin, usage_end;
    uint64_t begin = now_ns();
    getrusage(RUSAGE_SELF, &usage_begin);
    struct timespec nap = {.tv_sec = (time_t)seconds, .tv_nsec = (long)((seconds - (double)(time_t)seconds) * 1e9)};
    while (nanosleep(&nap, &nap) < 0 && errno == EINTR) {}
    stop = 1;
    uint64_t total = 0, end = 0;
    for (int i = 0; i < threads; i++) pthread_join(workers[i].thread, NULL);
    end = now_ns();
    getrusage(RUSAGE_SELF, &usage_end);
    size_t count = 0;
    for (int i = 0; i < threads; i++) {
        total += workers[i].round_trips;
        count += workers[i].count;
    }
    uint64_t *all = malloc(sizeof(uint64_t) * (count ? count : 1));
    size_t at = 0;
    for (int i = 0; i < threads; i++) {
        memcpy(all + at, workers[i].samples, sizeof(uint64_t) * workers[i].count);
        at += workers[i].count;
    }
    qsort(all, count, sizeof *all, compare);
    uint64_t p50 = count ? all[(count - 1) * 50 / 100] : 0;
    uint64_t p99 = count ? all[(count - 1) * 99 / 100] : 0;
    printf("round_trips=%llu seconds=%.6f p50_ns=%llu p99_ns=%llu user_ns=%llu system_ns=%llu\n",
           (unsigned long long)total, (double)(end - begin) / 1e9, (unsigned long long)p50, (unsigned long long)p99,
           (unsigned long long)(timeval_ns(usage_end.ru_utime) - timeval_ns(usage_begin.ru_utime)),
           (unsigned long long)(timeval_ns(usage_end.ru_stime) - timeval_ns(usage_begin.ru_stime)));
    return 0;
}
