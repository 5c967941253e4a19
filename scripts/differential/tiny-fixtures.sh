#!/usr/bin/env bash
# scripts/differential/tiny-fixtures.sh: writes model/tests/fixtures/tiny_llamacpp/<arch>.json, llama.cpp's answers
# for the generated tiny models of every architecture the engine runs (issue 16: proof without downloading
# gigabytes), which model/tests/tiny_llamacpp.rs holds the engine to.
#
# For each of tiny-llama, tiny-llama3, tiny-gemma3, tiny-qwen2 and tiny-qwen3, and for the tiny llama models whose matrices all
# have one of the tensor types Q5_K, Q5_1, BF16, Q3_K, Q2_K and Q4_0 (`TinySpec::llama_typed`, written by model's
# `tiny_typed` example; fixtures llama-q5_k.json and so on), and each prompt below, llama.cpp's probe
# (scripts/differential/probe.c, one thread) records the prompt ids and 16 greedy steps; the fixture keeps the ids,
# each step's chosen id and top-2 margin, and step 0's full logits. On an AVX-512 CPU the typed models are recorded
# a second time as llama.cpp's default build runs them there, into model/tests/fixtures/tiny_llamacpp_avx512/ (the
# engine's AVX-512 level is held to those). Every model, of every architecture and type, is also recorded as
# llama.cpp built for SSE4.2 without AVX runs it (scripts/llamacpp.sh, flavor sse42: the appliance's vCPU under
# TCG; generic quantized products, no tinyBLAS, no repacking) into model/tests/fixtures/tiny_llamacpp_sse42/, which
# the engine's portable kernels are held to. Arguments, if any, name the fixtures to write
# (`llama`, `llama-q5_k`, ...); by default all are written. The tiny vocabularies are a few hundred tokens,
# so a fixture is small. The tiny models' weights are random, their logits small: llama.cpp's CPU-dependent
# summation order moves them far less than the test's 1e-3 bound, so the fixtures hold on other CPUs too.
set -euo pipefail

progress() { printf '%s\n' "$*" >&2; }
fail() {
    printf 'tiny-fixtures: %s\n' "$*" >&2
    exit 1
}
script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
workspace="$(cd "$script_dir/.." && pwd)"
cache="${CLOISTER_CACHE:-$workspace/.cache}"
jobs="$(nproc 2>/dev/null || echo 2)"
# shellcheck source=scripts/llamacpp.sh
source "$script_dir/llamacpp.sh"
llama_cpp_python_version="$LLAMA_CPP_PYTHON_VERSION_DEFAULT"
# The sse42 build first (its probe needs only its ggml libraries and the native build's llama library), then the
# default one, whose PROBE and LLAMA_CPP_BUILD stay set for the default fixtures.
llama_cpp_flavor=sse42
build_llama_cpp_libraries
build_probe
sse42_probe="$PROBE"
sse42_provenance="$(sed -n 2p "$LLAMA_CPP_BUILD.stamp"), flavor sse42"
llama_cpp_flavor=native
build_llama_cpp
build_probe
native_provenance="$(sed -n 2p "$LLAMA_CPP_BUILD.stamp")"
sse42_dir="$workspace/model/tests/fixtures/tiny_llamacpp_sse42"

out_dir="$workspace/model/tests/fixtures/tiny_llamacpp"
mkdir -p "$out_dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# record NAME MODEL CHAT: runs $probe (default: the default build's) on MODEL for each prompt and writes
# $out_dir/NAME.json, naming the build by $provenance.
record() {
    local name=$1 model=$2 chat=$3
    local probe=${probe:-$PROBE} provenance=${provenance:-$native_provenance}
    mkdir -p "$out_dir"
    local prompts=(
        "the theme of the sea is 12345 and 67!"
        "$chat"
        $' leading space, \'tis OK  \t tabs\r\n\n end'
    )
    for index in "${!prompts[@]}"; do
        printf '%s' "${prompts[$index]}" >"$work/prompt-$index.txt"
        "$probe" "$model" "$work/prompt-$index.txt" 16 1 "$work/out-$index.bin" ||
            fail "the probe failed on $name prompt $index"
    done
    python3 - "$work" "${#prompts[@]}" "$out_dir/$name.json" "$provenance" <<'PY'
import json, struct, sys
work, count, out, provenance = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
cases = []
for index in range(count):
    text = open(f"{work}/prompt-{index}.txt", encoding="utf-8", newline="").read()
    data = open(f"{work}/out-{index}.bin", "rb").read()
    assert data[:4] == b"CLDF"
    version, vocab, n_prompt, steps = struct.unpack_from("<4I", data, 4)
    at = 20
    ids = list(struct.unpack_from(f"<{n_prompt}i", data, at))
    at += 4 * n_prompt
    chosen, margins, step0 = [], [], None
    for step in range(steps):
        token, margin = struct.unpack_from("<if", data, at)
        at += 8
        logits = struct.unpack_from(f"<{vocab}f", data, at)
        at += 4 * vocab
        chosen.append(token)
        margins.append(round(margin, 6))
        if step == 0:
            step0 = [round(v, 6) for v in logits]
    cases.append({"prompt": text, "prompt_ids": ids, "generated_ids": chosen, "step_top2_margin": margins,
                  "step0_logits": step0})
json.dump({"llama_cpp": provenance, "cases": cases}, open(out, "w"), indent=1)
PY
    progress "wrote $out_dir/$name.json"
}
# record_sse42 NAME MODEL CHAT: record with the sse42 build into tiny_llamacpp_sse42/.
record_sse42() {
    out_dir="$sse42_dir" probe="$sse42_probe" provenance="$sse42_provenance" record "$@"
}

wanted() { [ ${#selected[@]} -eq 0 ] || printf '%s\n' "${selected[@]}" | grep -qx -- "$1"; }
selected=("$@")
chatml=$'<|im_start|>user\nthe sea<|im_end|>\n<|im_start|>assistant\n'
for arch in llama llama3 gemma3 qwen2 qwen3; do
    wanted "$arch" || continue
    model="$(cd "$workspace" && cargo run --quiet --release -p runner -- fetch-model "tiny-$arch")"
    case $arch in
    gemma3) chat=$'<start_of_turn>user\nthe sea<end_of_turn>\n<start_of_turn>model\n' ;;
    llama3) chat=$'<|start_header_id|>user<|end_header_id|>\n\nthe sea<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n' ;;
    *) chat=$chatml ;;
    esac
    record "$arch" "$model" "$chat"
    record_sse42 "$arch" "$model" "$chat"
done
for type in Q5_K Q5_1 BF16 Q3_K Q2_K Q4_0; do
    name="llama-$(printf '%s' "$type" | tr '[:upper:]' '[:lower:]')"
    wanted "$name" || continue
    (cd "$workspace" && cargo run --quiet --release -p model --example tiny_typed -- "$type" "$work/$name.gguf") ||
        fail "cannot write the tiny $type model"
    # llama.cpp repacks Q2_K weights only on AVX-512 CPUs (q2_K_8x8); the engine's AVX2 level follows its AVX2
    # kernels, so that fixture is recorded as llama.cpp runs on an AVX2 CPU: weights in the file's layout (probe.c).
    # Q4_0 is repacked (q4_0_8x8) on AVX2 and AVX-512 CPUs alike, so both of its fixtures are.
    if [ "$type" = Q2_K ]; then export CLOISTER_PROBE_NO_REPACK=1; else unset CLOISTER_PROBE_NO_REPACK; fi
    record "$name" "$work/$name.gguf" "$chatml"
    unset CLOISTER_PROBE_NO_REPACK
    # The same model as llama.cpp's default build runs it on an AVX-512 CPU (Q2_K and Q4_0 repacked, BF16 through
    # AVX512-BF16 where the CPU has it), for the engine's AVX-512 level: fixtures in tiny_llamacpp_avx512/.
    if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
        out_dir="$workspace/model/tests/fixtures/tiny_llamacpp_avx512" record "$name" "$work/$name.gguf" "$chatml"
    else
        progress "this CPU has no AVX-512: $name's AVX-512 fixture is not recorded"
    fi
    # Nothing is repacked in the sse42 build (repacking needs AVX2), so no CLOISTER_PROBE_NO_REPACK is needed.
    record_sse42 "$name" "$work/$name.gguf" "$chatml"
done
