// scripts/membw.c: a quick memory-bandwidth estimate for scripts/bench-vs-llamacpp.sh (decode ceiling, DESIGN §6).
// Each of N threads streams through its own 256 MiB buffer (far larger than any cache) summing 64-bit words, which is
// the access pattern of decode (every weight byte read once per token). Prints the best-of-5 aggregate read bandwidth
// in GB/s (1e9 bytes) on stdout; a memcpy figure (read + write bytes, the STREAM "copy" convention) goes to stderr.
// The buffers are 2 MiB-aligned and advised MADV_HUGEPAGE, as the engine's model buffer is (runner/src/engine/blob.rs):
// on 4 KiB pages the hardware prefetchers stop at every page boundary and the figure is that of a slower memory
// system than the one the engine reads its weights from (on the AMD EPYC README's figures come from, ~22-24 GB/s on
// 4 KiB pages against ~31-34 GB/s on 2 MiB pages, one thread).
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

enum { BUFFER_BYTES = 256u << 20, ROUNDS = 5 };

struct worker {
    pthread_t thread;
    uint64_t *source;
    uint64_t *destination;
    int copy;               // 0: read test, 1: memcpy test
    uint64_t sum;           // keeps the reads observable
    pthread_barrier_t *barrier;
};

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void *run(void *argument) {
    struct worker *w = argument;
    pthread_barrier_wait(w->barrier);
    if (w->copy) {
        memcpy(w->destination, w->source, BUFFER_BYTES);
        w->sum += w->destination[BUFFER_BYTES / 16];
    } else {
        // Four independent accumulators so the adds are not the bottleneck.
        uint64_t a = 0, b = 0, c = 0, d = 0;
        const size_t words = BUFFER_BYTES / sizeof(uint64_t);
        for (size_t i = 0; i < words; i += 4) {
            a += w->source[i];
            b += w->source[i + 1];
            c += w->source[i + 2];
            d += w->source[i + 3];
        }
        w->sum += a + b + c + d;
    }
    pthread_barrier_wait(w->barrier);
    return NULL;
}

// Runs one round of the test on all workers; returns the elapsed seconds between the two barriers.
static double round_seconds(struct worker *workers, int count, int copy, pthread_barrier_t *barrier) {
    for (int i = 0; i < count; i++) {
        workers[i].copy = copy;
        if (pthread_create(&workers[i].thread, NULL, run, &workers[i]) != 0) {
            fprintf(stderr, "membw: cannot start a thread\n");
            exit(1);
        }
    }
    pthread_barrier_wait(barrier);
    double start = now_seconds();
    pthread_barrier_wait(barrier);
    double elapsed = now_seconds() - start;
    for (int i = 0; i < count; i++) pthread_join(workers[i].thread, NULL);
    return elapsed;
}

// A 2 MiB-aligned buffer of BUFFER_BYTES, advised to be backed by 2 MiB pages (where the kernel's transparent huge
// pages are "always" or "madvise"; with "never" it stays on 4 KiB pages, as the engine's buffer does then too).
static uint64_t *huge_buffer(void) {
    void *p = NULL;
    if (posix_memalign(&p, 2u << 20, BUFFER_BYTES) != 0) return NULL;
    madvise(p, BUFFER_BYTES, MADV_HUGEPAGE);
    return p;
}

int main(int argc, char **argv) {
    int count = argc > 1 ? atoi(argv[1]) : 1;
    if (argc > 2 || count < 1 || count > 256) {
        fprintf(stderr, "usage: membw [THREADS]   (1..256)\n");
        return 2;
    }
    struct worker *workers = calloc((size_t)count, sizeof *workers);
    pthread_barrier_t barrier;
    if (!workers || pthread_barrier_init(&barrier, NULL, (unsigned)count + 1) != 0) {
        fprintf(stderr, "membw: out of memory\n");
        return 1;
    }
    for (int i = 0; i < count; i++) {
        workers[i].source = huge_buffer();
        workers[i].destination = huge_buffer();
        workers[i].barrier = &barrier;
        if (!workers[i].source || !workers[i].destination) {
            fprintf(stderr, "membw: cannot allocate 2 x 256 MiB for thread %d\n", i);
            return 1;
        }
        // Touch every page so the timing does not include page faults. Every word differs, so that no page equals
        // another (a hypervisor that merges equal pages would otherwise serve the reads from a few cached pages).
        for (size_t j = 0; j < BUFFER_BYTES / sizeof(uint64_t); j++)
            workers[i].source[j] = (j + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)i;
        memset(workers[i].destination, 0, BUFFER_BYTES);
    }
    double best_read = 1e30, best_copy = 1e30;
    for (int r = 0; r < ROUNDS; r++) {
        double t = round_seconds(workers, count, 0, &barrier);
        if (t < best_read) best_read = t;
        t = round_seconds(workers, count, 1, &barrier);
        if (t < best_copy) best_copy = t;
    }
    uint64_t sum = 0;
    for (int i = 0; i < count; i++) sum += workers[i].sum;
    double bytes = (double)BUFFER_BYTES * count;
    fprintf(stderr, "membw: %d thread(s): read %.1f GB/s, memcpy %.1f GB/s (read+write) [%llx]\n", count,
            bytes / best_read / 1e9, 2 * bytes / best_copy / 1e9, (unsigned long long)(sum & 0xf));
    printf("%.1f\n", bytes / best_read / 1e9);
    return 0;
}
