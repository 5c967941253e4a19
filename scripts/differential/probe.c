// scripts/differential/probe.c: llama.cpp's side of the differential harness (scripts/differential.sh).
//
//   probe MODEL.gguf PROMPT.txt STEPS THREADS OUT.bin
//
// Tokenizes the prompt file's text as llama.cpp's tools do for a raw prompt (BOS added as the vocabulary says,
// control-token text parsed), evaluates it in one batch, then generates STEPS tokens greedily, one decode each,
// with flash attention off. For each step it writes the full logits it chose from, so the engine can be held to
// every one of them. With CLOISTER_PROBE_NO_REPACK set in the environment, llama.cpp keeps the weights in the file's
// layout (no extra buffer types): what it runs on a CPU for which it has no repacked kernel of the type. OUT.bin, all
// little-endian:
//   "CLDF", u32 version (1), u32 n_vocab, u32 n_prompt, u32 n_steps,
//   i32 prompt ids[n_prompt],
//   per step: i32 chosen id (the argmax), f32 top-2 margin, f32 logits[n_vocab].
#include "llama.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const char * what) {
    fprintf(stderr, "probe: %s\n", what);
    exit(1);
}

static void put_u32(FILE * out, uint32_t value) {
    if (fwrite(&value, sizeof value, 1, out) != 1) die("cannot write the output file");
}

static void quiet_log(enum ggml_log_level level, const char * text, void * data) {
    (void) data;
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static bool no_progress(float progress, void * data) {
    (void) progress;
    (void) data;
    return true;
}

int main(int argc, char ** argv) {
    if (argc != 6) die("usage: probe MODEL.gguf PROMPT.txt STEPS THREADS OUT.bin");
    const int steps = atoi(argv[3]);
    const int threads = atoi(argv[4]);
    if (steps < 1 || threads < 1) die("STEPS and THREADS must be positive");

    llama_log_set(quiet_log, NULL);
    llama_backend_init();
    struct llama_model_params model_params = llama_model_default_params();
    model_params.progress_callback = no_progress;
    if (getenv("CLOISTER_PROBE_NO_REPACK")) model_params.use_extra_bufts = false;
    struct llama_model * model = llama_model_load_from_file(argv[1], model_params);
    if (!model) die("cannot load the model");
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    FILE * prompt_file = fopen(argv[2], "rb");
    if (!prompt_file) die("cannot open the prompt file");
    static char text[1 << 20];
    const size_t length = fread(text, 1, sizeof text - 1, prompt_file);
    fclose(prompt_file);
    text[length] = 0;

    const int max_tokens = 8192;
    llama_token * ids = malloc(sizeof(llama_token) * max_tokens);
    const int n_prompt = llama_tokenize(vocab, text, (int32_t) length, ids, max_tokens, true, true);
    if (n_prompt <= 0) die("the prompt does not tokenize (empty, or longer than 8192 tokens)");

    struct llama_context_params context_params = llama_context_default_params();
    context_params.n_ctx = (uint32_t) (n_prompt + steps + 16);
    context_params.n_batch = (uint32_t) n_prompt;
    context_params.n_ubatch = (uint32_t) n_prompt;
    context_params.n_threads = threads;
    context_params.n_threads_batch = threads;
    context_params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    struct llama_context * context = llama_init_from_model(model, context_params);
    if (!context) die("cannot create a context");

    FILE * out = fopen(argv[5], "wb");
    if (!out) die("cannot create the output file");
    if (fwrite("CLDF", 1, 4, out) != 4) die("cannot write the output file");
    put_u32(out, 1);
    put_u32(out, (uint32_t) n_vocab);
    put_u32(out, (uint32_t) n_prompt);
    put_u32(out, (uint32_t) steps);
    if (fwrite(ids, sizeof(llama_token), (size_t) n_prompt, out) != (size_t) n_prompt) die("write failed");

    if (llama_decode(context, llama_batch_get_one(ids, n_prompt)) != 0) die("prefill failed");
    for (int step = 0; step < steps; step++) {
        const float * logits = llama_get_logits_ith(context, -1);
        int best = 0;
        for (int i = 1; i < n_vocab; i++) if (logits[i] > logits[best]) best = i;
        int second = best == 0 ? 1 : 0;
        for (int i = 0; i < n_vocab; i++) if (i != best && logits[i] > logits[second]) second = i;
        const float margin = logits[best] - logits[second];
        const int32_t chosen = best;
        if (fwrite(&chosen, sizeof chosen, 1, out) != 1 || fwrite(&margin, sizeof margin, 1, out) != 1 ||
            fwrite(logits, sizeof(float), (size_t) n_vocab, out) != (size_t) n_vocab) {
            die("cannot write the output file");
        }
        llama_token next = best;
        if (llama_decode(context, llama_batch_get_one(&next, 1)) != 0) die("decode failed");
    }
    fclose(out);
    llama_free(context);
    llama_model_free(model);
    llama_backend_free();
    free(ids);
    return 0;
}
