#!/usr/bin/env bash
# scripts/differential/kernels.sh: holds the engine's Q4_0, Q5_K, Q5_1, Q3_K and Q2_K kernels to llama.cpp's, bit for
# bit, one matrix product at a time (issue 16: each new tensor type in llama.cpp's summation order; Q4_0 for the
# repacked order llama.cpp gives it on every AVX2 CPU).
#
# For each type, several shapes (1 to 34 tokens, so both llama.cpp's single-row and its tiled K-quant kernels) and
# seeds, scripts/differential/mul_mat.c multiplies random weights and activations with ggml (the pinned llama.cpp
# build, one thread), once with the weights in the file's layout and once in the CPU backend's repack buffer as
# llama.cpp loads a model (Q4_0 repacked on AVX2 CPUs, Q2_K on AVX-512 ones, the others left as they are), and
# model's mul_mat_compare example recomputes every output: the plain product with the CPU's best kernels (without
# their repacked orders), the repack buffer's with the CPU's best kernels. The portable kernels are held to the same
# product computed by llama.cpp built for SSE4.2 without AVX (scripts/llamacpp.sh, flavor sse42), whose orders they
# mirror (no repacking, no tiled kernels there). Exits 1 if any output differs in a single bit.
set -euo pipefail

progress() { printf '%s\n' "$*" >&2; }
fail() {
    printf 'kernels: %s\n' "$*" >&2
    exit 1
}
script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
workspace="$(cd "$script_dir/.." && pwd)"
cache="${CLOISTER_CACHE:-$workspace/.cache}"
jobs="$(nproc 2>/dev/null || echo 2)"
# shellcheck source=scripts/llamacpp.sh
source "$script_dir/llamacpp.sh"
llama_cpp_python_version="$LLAMA_CPP_PYTHON_VERSION_DEFAULT"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
build_llama_cpp
link_against_llama_cpp "$script_dir/differential/mul_mat.c" "$work/mul_mat"
# The portable kernels' reference: the sse42 build (only its ggml libraries, with the native build's llama library).
llama_cpp_flavor=sse42
build_llama_cpp_libraries
link_against_llama_cpp "$script_dir/differential/mul_mat.c" "$work/mul_mat_sse42"
(cd "$workspace" && cargo build --quiet --release -p model --example mul_mat_compare) ||
    fail "cannot build the mul_mat_compare example"
compare="$workspace/target/release/examples/mul_mat_compare"

status=0
# ggml type codes: Q4_0 2, Q5_1 7, Q2_K 10, Q3_K 11, Q5_K 13.
for type in 2 7 10 11 13; do
    for shape in "128 256 1" "64 512 3" "256 256 8" "128 512 34"; do
        read -r rows cols tokens <<<"$shape"
        for seed in 1 2 3; do
            "$work/mul_mat" "$type" "$rows" "$cols" "$tokens" "$seed" "$work/out.bin" ||
                fail "ggml failed on type $type, $shape"
            # The weights in the file's layout: the engine's products without their repacked orders.
            "$compare" "$type" "$work/out.bin" --no-repack || status=1
            "$work/mul_mat_sse42" "$type" "$rows" "$cols" "$tokens" "$seed" "$work/out.bin" ||
                fail "ggml (sse42 build) failed on type $type, $shape"
            "$compare" "$type" "$work/out.bin" --scalar || status=1
            "$work/mul_mat" "$type" "$rows" "$cols" "$tokens" "$seed" "$work/out.bin" --repack 2>/dev/null ||
                fail "ggml failed on type $type, $shape, repacked"
            "$compare" "$type" "$work/out.bin" || status=1
        done
    done
done
exit $status
