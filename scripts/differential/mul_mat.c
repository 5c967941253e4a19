// scripts/differential/mul_mat.c: one ggml matrix product on the CPU backend, for scripts/differential/kernels.sh.
//
//   mul_mat TYPE ROWS COLS TOKENS SEED OUT.bin [--repack]
//
// Fills a ROWS x COLS weight matrix of ggml type TYPE (its numeric code) with seeded random bytes, sets each
// block's f16 scales to small finite values (Q4_0, Q5_1, Q2_K, Q3_K, Q5_K), fills TOKENS x COLS f32 activations (a
// few large outliers, as real activations have), and multiplies them with ggml_mul_mat on one thread, weights in the
// file's layout (no repacking) or, with --repack, in the CPU backend's repack buffer (`CPU_REPACK`, as llama.cpp
// loads a model's weights: where the type and shape qualify, ggml-cpu/repack.cpp interleaves them and multiplies
// them with its own gemm/gemv; otherwise the product is the plain one). OUT.bin, all little-endian: u32 rows,
// cols, tokens; the weight bytes in the file's layout; the f32 activations; the f32 result, token-major.
// model/examples/mul_mat_compare.rs holds the engine's kernels to it.
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t state;

static uint64_t next(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

// The CPU backend's repack buffer type (`CPU_REPACK`), or NULL where the build has none.
static ggml_backend_buffer_type_t repack_buffer_type(void) {
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    ggml_backend_dev_get_extra_bufts_t extra_bufts = (ggml_backend_dev_get_extra_bufts_t)
        ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(cpu), "ggml_backend_dev_get_extra_bufts");
    for (ggml_backend_buffer_type_t * t = extra_bufts ? extra_bufts(cpu) : NULL; t && *t; t++) {
        if (strcmp(ggml_backend_buft_name(*t), "CPU_REPACK") == 0) return *t;
    }
    return NULL;
}

// A ROWS x COLS weight tensor of TYPE in a new buffer of type BUFT (NULL if BUFT is NULL or allocation fails).
static struct ggml_tensor * weights(int type, int rows, int cols, ggml_backend_buffer_type_t buft) {
    if (!buft) return NULL;
    struct ggml_init_params params = { ggml_tensor_overhead(), NULL, true };
    struct ggml_context * ctx = ggml_init(params);
    struct ggml_tensor * a = ggml_new_tensor_2d(ctx, (enum ggml_type) type, cols, rows);
    return ggml_backend_alloc_ctx_tensors_from_buft(ctx, buft) ? a : NULL;
}

int main(int argc, char ** argv) {
    const int repack = argc == 8 && strcmp(argv[7], "--repack") == 0;
    if (argc != 7 && !repack) {
        fprintf(stderr, "usage: mul_mat TYPE ROWS COLS TOKENS SEED OUT.bin [--repack]\n");
        return 2;
    }
    const int type = atoi(argv[1]), rows = atoi(argv[2]), cols = atoi(argv[3]), tokens = atoi(argv[4]);
    state = strtoull(argv[5], NULL, 10) * 0x9E3779B97F4A7C15ull | 1;
    struct ggml_init_params params = { (size_t) 256 << 20, NULL, false };
    struct ggml_context * ctx = ggml_init(params);
    struct ggml_tensor * a = NULL;
    if (repack) {
        a = weights(type, rows, cols, repack_buffer_type());
        if (a && !a->extra) {
            // init_tensor found no repacked layout for this type and shape on this CPU (its `extra` is the
            // layout's traits): llama.cpp would keep such a matrix in a plain buffer.
            fprintf(stderr, "mul_mat: llama.cpp does not repack type %d, %d rows here; plain product\n", type, rows);
            a = NULL;
        }
    }
    if (!a) a = weights(type, rows, cols, ggml_backend_cpu_buffer_type());
    if (!a) {
        fprintf(stderr, "mul_mat: cannot allocate the weights\n");
        return 1;
    }
    struct ggml_tensor * b = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, cols, tokens);
    const size_t bytes = ggml_nbytes(a), block = ggml_type_size((enum ggml_type) type);
    uint8_t * w = malloc(bytes);
    if (!w) return 1;
    for (size_t i = 0; i < bytes; i++) w[i] = (uint8_t) (next() >> 33);
    // f16 0.01 (0x211f) for d, 0.005 (0x1d1f) for dmin, -0.01 (0xa11f) for Q5_1's m.
    for (uint8_t * p = w; p < w + bytes; p += block) {
        switch (type) {
        case GGML_TYPE_Q4_0: p[0] = 0x1f; p[1] = 0x21; break;
        case GGML_TYPE_Q5_1: p[0] = 0x1f; p[1] = 0x21; p[2] = 0x1f; p[3] = 0xa1; break;
        case GGML_TYPE_Q2_K: p[block - 4] = 0x1f; p[block - 3] = 0x21; p[block - 2] = 0x1f; p[block - 1] = 0x1d; break;
        case GGML_TYPE_Q3_K: p[block - 2] = 0x1f; p[block - 1] = 0x21; break;
        case GGML_TYPE_Q5_K: p[0] = 0x1f; p[1] = 0x21; p[2] = 0x1f; p[3] = 0x1d; break;
        default: fprintf(stderr, "mul_mat: type %d is not one this check fills\n", type); return 2;
        }
    }
    // Into the repack buffer, this is where the weights are interleaved (ggml-cpu/repack.cpp's set_tensor).
    ggml_backend_tensor_set(a, w, 0, bytes);
    float * x = b->data;
    for (int i = 0; i < cols * tokens; i++) {
        const float v = (float) ((double) (next() >> 40) / (double) (1 << 24)) * 2.0f - 1.0f;
        x[i] = i % 97 == 0 ? v * 40.0f : v;
    }
    struct ggml_tensor * c = ggml_mul_mat(ctx, a, b);
    struct ggml_cgraph * graph = ggml_new_graph(ctx);
    ggml_build_forward_expand(graph, c);
    if (ggml_graph_compute_with_ctx(ctx, graph, 1) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "mul_mat: the graph did not compute\n");
        return 1;
    }
    FILE * out = fopen(argv[6], "wb");
    if (!out) return 1;
    const uint32_t header[3] = { (uint32_t) rows, (uint32_t) cols, (uint32_t) tokens };
    fwrite(header, 4, 3, out);
    fwrite(w, 1, bytes, out);
    fwrite(x, 4, (size_t) cols * tokens, out);
    fwrite(c->data, 4, (size_t) rows * tokens, out);
    return fclose(out) != 0;
}
