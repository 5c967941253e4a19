// scripts/differential/requantize.c: llama.cpp's quantizer as `llama-quantize --allow-requantize` runs it, for
// scripts/differential/requantize.sh (the pinned build makes llama-bench only, not llama-quantize).
//
//   requantize IN.gguf OUT.gguf FTYPE
//
// FTYPE is llama.cpp's `enum llama_ftype` code (17 = Q5_K_M, 12 = Q3_K_M, 10 = Q2_K, 9 = Q5_1, 2 = Q4_0, 32 = BF16). With
// CLOISTER_REQUANTIZE_PURE set in the environment every tensor gets the type's base type where its rows allow
// (`llama-quantize --pure`), no mix.
#include "llama.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char ** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: requantize IN.gguf OUT.gguf FTYPE\n");
        return 2;
    }
    llama_backend_init();
    llama_model_quantize_params params = llama_model_quantize_default_params();
    params.ftype = (enum llama_ftype) atoi(argv[3]);
    params.allow_requantize = true;
    params.pure = getenv("CLOISTER_REQUANTIZE_PURE") != NULL;
    const uint32_t status = llama_model_quantize(argv[1], argv[2], &params);
    llama_backend_free();
    if (status != 0) fprintf(stderr, "requantize: llama_model_quantize failed (%u)\n", status);
    return status != 0;
}
