// What the two C benchmark clients (echo_client.c, vfio_user_client.c) share: the clock, the
// start line, and the driver that runs the worker threads for a fixed time and prints the
// key=value line the bench reads (round_trips, seconds, p50_ns, p99_ns, user_ns, system_ns).
#ifndef CLIENT_DRIVER_H
#define CLIENT_DRIVER_H

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

enum { max_samples = 1 << 22 };

// Each worker thread's own counts; the clients embed it in their worker struct.
struct client_timing {
    pthread_t thread;
    uint64_t *samples;
    size_t count;
    uint64_t round_trips;
};

static pthread_barrier_t start_line;
static volatile int stop;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

// Records one timed request in the worker's samples (while there is room) and counts it.
static inline void record_sample(struct client_timing *timing, uint64_t elapsed) {
    if (timing->count < max_samples) timing->samples[timing->count++] = elapsed;
    timing->round_trips++;
}

static int compare_samples(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t timeval_ns(struct timeval t) { return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_usec * 1000u; }

// Prepares the start line for `threads` workers and the driver; call before starting them.
static void prepare_start_line(int threads) { pthread_barrier_init(&start_line, NULL, (unsigned)threads + 1); }

// Starts a worker thread running `run(worker)`, with room for its samples.
static void start_worker(struct client_timing *timing, void *(*run)(void *), void *worker) {
    timing->samples = malloc(sizeof(uint64_t) * max_samples);
    pthread_create(&timing->thread, NULL, run, worker);
}

// Releases the workers, lets them run for `seconds`, stops and joins them, and prints the line.
// `timing(i)` is worker i's counts.
static void drive_and_report(int threads, double seconds, struct client_timing *(*timing)(int)) {
    pthread_barrier_wait(&start_line);
    struct rusage usage_begin, usage_end;
    uint64_t begin = now_ns();
    getrusage(RUSAGE_SELF, &usage_begin);
    struct timespec nap = {.tv_sec = (time_t)seconds, .tv_nsec = (long)((seconds - (double)(time_t)seconds) * 1e9)};
    while (nanosleep(&nap, &nap) < 0 && errno == EINTR) {}
    stop = 1;
    for (int i = 0; i < threads; i++) pthread_join(timing(i)->thread, NULL);
    uint64_t end = now_ns();
    getrusage(RUSAGE_SELF, &usage_end);
    uint64_t total = 0;
    size_t count = 0;
    for (int i = 0; i < threads; i++) {
        total += timing(i)->round_trips;
        count += timing(i)->count;
    }
    uint64_t *all = malloc(sizeof(uint64_t) * (count ? count : 1));
    size_t at = 0;
    for (int i = 0; i < threads; i++) {
        memcpy(all + at, timing(i)->samples, sizeof(uint64_t) * timing(i)->count);
        at += timing(i)->count;
    }
    qsort(all, count, sizeof *all, compare_samples);
    uint64_t p50 = count ? all[(count - 1) * 50 / 100] : 0;
    uint64_t p99 = count ? all[(count - 1) * 99 / 100] : 0;
    printf("round_trips=%llu seconds=%.6f p50_ns=%llu p99_ns=%llu user_ns=%llu system_ns=%llu\n",
           (unsigned long long)total, (double)(end - begin) / 1e9, (unsigned long long)p50, (unsigned long long)p99,
           (unsigned long long)(timeval_ns(usage_end.ru_utime) - timeval_ns(usage_begin.ru_utime)),
           (unsigned long long)(timeval_ns(usage_end.ru_stime) - timeval_ns(usage_begin.ru_stime)));
}

#endif
