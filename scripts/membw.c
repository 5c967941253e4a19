// scripts/membw.c: a quick memory-bandwidth estimate for scripts/bench-vs-llamacpp.sh (decode ceiling, DESIGN §6).
// Each of N threads streams through its own 256 MiB buffer (far larger than any cache) summing 64-bit words, which is
// the access pattern of decode (every weight byte read once per token). Prints the aggregate read bandwidth in GB/s
// (1e9 bytes) on stdout; a memcpy figure (read + write bytes, the STREAM "copy" convention) goes to stderr.
// The buffers are 2 MiB-aligned and advised MADV_HUGEPAGE, as the engine's model buffer is (runner/src/engine/blob.rs):
// on 4 KiB pages the hardware prefetchers stop at every page boundary and the figure is that of a slower memory
// system than the one the engine reads its weights from (on the AMD EPYC README's figures come from, ~22-24 GB/s on
// 4 KiB pages against ~31-34 GB/s on 2 MiB pages, one thread).
// Each thread reads its buffer as 1, 2, 4 and 8 streams side by side (equal slices walked together), 5 rounds each,
// and the figure is the best stream count's median round. A decode kernel reads several weight rows at once (the
// engine's one-token tiles read 4), and on that AMD EPYC one thread reads ~35 GB/s as one stream but 37-40 GB/s as 4
// or 8, so a one-stream test sat below what the engine's own Q8_0 kernel streams (36-37 GB/s) and was no ceiling.
// Medians, not the best round: on a shared host a single round can come out far too fast (once 47 GB/s among 34-37).
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

enum { BUFFER_BYTES = 256u << 20, ROUNDS = 5, MAX_STREAMS = 8, STREAM_COUNTS = 4 };

struct worker {
    pthread_t thread;
    uint64_t *source;
    uint64_t *destination;
    int copy;               // 0: read test, 1: memcpy test
    int streams;            // read test: slices of the buffer read side by side (1, 2, 4 or MAX_STREAMS)
    uint64_t sum;           // keeps the reads observable
    pthread_barrier_t *barrier;
};

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

// Sums `streams` equal slices of the buffer, walked together one cache line (8 words) at a time, one accumulator
// per slice so the adds are not the bottleneck. Inlined with `streams` a constant, so the inner loop unrolls.
static inline __attribute__((always_inline)) uint64_t read_streams(const uint64_t *source, int streams) {
    const size_t slice = BUFFER_BYTES / sizeof(uint64_t) / (size_t)streams;
    uint64_t acc[MAX_STREAMS] = {0};
    for (size_t i = 0; i < slice; i += 8) {
        for (int s = 0; s < streams; s++) {
            const uint64_t *p = source + (size_t)s * slice + i;
            acc[s] += p[0] + p[1] + p[2] + p[3] + p[4] + p[5] + p[6] + p[7];
        }
    }
    uint64_t total = 0;
    for (int s = 0; s < streams; s++) total += acc[s];
    return total;
}

static void *run(void *argument) {
    struct worker *w = argument;
    pthread_barrier_wait(w->barrier);
    if (w->copy) {
        memcpy(w->destination, w->source, BUFFER_BYTES);
        w->sum += w->destination[BUFFER_BYTES / 16];
    } else {
        switch (w->streams) {
        case 1: w->sum += read_streams(w->source, 1); break;
        case 2: w->sum += read_streams(w->source, 2); break;
        case 4: w->sum += read_streams(w->source, 4); break;
        default: w->sum += read_streams(w->source, MAX_STREAMS); break;
        }
    }
    pthread_barrier_wait(w->barrier);
    return NULL;
}

// Runs one round of the test on all workers; returns the elapsed seconds between the two barriers.
static double round_seconds(struct worker *workers, int count, int copy, int streams, pthread_barrier_t *barrier) {
    for (int i = 0; i < count; i++) {
        workers[i].copy = copy;
        workers[i].streams = streams;
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

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
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
    // Read: each stream count's median round, then the best stream count. Copy: the best round.
    double read_times[STREAM_COUNTS][ROUNDS], best_copy = 1e30;
    for (int r = 0; r < ROUNDS; r++) {
        for (int k = 0; k < STREAM_COUNTS; k++) read_times[k][r] = round_seconds(workers, count, 0, 1 << k, &barrier);
        double t = round_seconds(workers, count, 1, 1, &barrier);
        if (t < best_copy) best_copy = t;
    }
    double best_read = 1e30;
    int best_streams = 1;
    for (int k = 0; k < STREAM_COUNTS; k++) {
        qsort(read_times[k], ROUNDS, sizeof(double), compare_doubles);
        if (read_times[k][ROUNDS / 2] < best_read) {
            best_read = read_times[k][ROUNDS / 2];
            best_streams = 1 << k;
        }
    }
    uint64_t sum = 0;
    for (int i = 0; i < count; i++) sum += workers[i].sum;
    double bytes = (double)BUFFER_BYTES * count;
    fprintf(stderr, "membw: %d thread(s): read %.1f GB/s (%d stream(s) per thread), memcpy %.1f GB/s (read+write) [%llx]\n",
            count, bytes / best_read / 1e9, best_streams, 2 * bytes / best_copy / 1e9, (unsigned long long)(sum & 0xf));
    printf("%.1f\n", bytes / best_read / 1e9);
    return 0;
}
