#!/usr/bin/env bash
# scripts/differential/requantize.sh: rewrites a GGUF model in another llama.cpp quantization mix with the pinned
# llama.cpp build, for real-weight checks of tensor types no downloaded model has (issue 16):
#
#   requantize.sh IN.gguf OUT.gguf TYPE      TYPE: Q5_K_M, Q3_K_M, Q2_K, Q5_1, Q4_0 or BF16
#
# The differential probe and model's differential example (`differential compare`, as scripts/differential.sh runs
# them) then hold the engine to llama.cpp on it. Row lengths that are not a multiple of 256 (SmolLM2's 576, Gemma 3 270M's 640) cannot be K-quants: llama.cpp
# falls back to Q5_0/Q5_1/Q8_0 for those tensors, so a K-quant mix of such a model holds the K-quant types only in
# its wider matrices (ffn_down). A mix can leave its named type out altogether (SmolLM2's Q2_K mix is Q3_K in
# ffn_down, Q4_0 elsewhere); with CLOISTER_REQUANTIZE_PURE=1 in the environment every tensor whose rows allow it
# gets the base type (`llama-quantize --pure`: Q2_K for Q2_K, Q3_K for Q3_K_M).
set -euo pipefail

progress() { printf '%s\n' "$*" >&2; }
fail() {
    printf 'requantize: %s\n' "$*" >&2
    exit 1
}
[ $# -eq 3 ] || fail "usage: requantize.sh IN.gguf OUT.gguf TYPE (Q5_K_M, Q3_K_M, Q2_K, Q5_1, Q4_0 or BF16)"
case $3 in
Q5_K_M) ftype=17 ;;
Q3_K_M) ftype=12 ;;
Q2_K) ftype=10 ;;
Q5_1) ftype=9 ;;
Q4_0) ftype=2 ;;
BF16) ftype=32 ;;
*) fail "unknown TYPE $3" ;;
esac
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
link_against_llama_cpp "$script_dir/differential/requantize.c" "$work/requantize"
progress "requantize: $1 -> $2 ($3)"
"$work/requantize" "$1" "$2" "$ftype" 2>"$work/log" || { tail -n 20 "$work/log" >&2; fail "llama.cpp failed"; }
grep -E 'quant size|fallback' "$work/log" >&2 || true
