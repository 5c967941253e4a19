#!/usr/bin/env bash
# scripts/differential/kernels.sh: holds the engine's Q5_K, Q5_1, Q3_K and Q2_K kernels to llama.cpp's, bit for bit,
# one matrix product at a time (issue 16: each new tensor type in llama.cpp's summation order).
#
# For each type, several shapes (1 to 34 tokens, so both llama.cpp's single-row and its tiled K-quant kernels) and
# seeds, scripts/differential/mul_mat.c multiplies random weights and activations with ggml (the pinned llama.cpp
# build, one thread, weights in the file's layout) and model's mul_mat_compare example recomputes every output with
# the CPU's best kernels and with the portable ones. Exits 1 if any output differs in a single bit.
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
build_llama_cpp

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
link_against_llama_cpp "$script_dir/differential/mul_mat.c" "$work/mul_mat"
(cd "$workspace" && cargo build --quiet --release -p model --example mul_mat_compare) ||
    fail "cannot build the mul_mat_compare example"
compare="$workspace/target/release/examples/mul_mat_compare"

status=0
# ggml type codes: Q5_1 7, Q2_K 10, Q3_K 11, Q5_K 13.
for type in 7 10 11 13; do
    for shape in "128 256 1" "64 512 3" "256 256 8" "128 512 34"; do
        read -r rows cols tokens <<<"$shape"
        for seed in 1 2 3; do
            "$work/mul_mat" "$type" "$rows" "$cols" "$tokens" "$seed" "$work/out.bin" ||
                fail "ggml failed on type $type, $shape"
            # mul_mat.c keeps the weights in the file's layout, so the engine's product is taken without the
            # repacked Q2_K order its AVX-512 level otherwise uses (llama.cpp repacks there).
            for flags in --no-repack --scalar; do
                # shellcheck disable=SC2086 # flags is one word or none
                "$compare" "$type" "$work/out.bin" $flags || status=1
            done
        done
    done
done
exit $status
