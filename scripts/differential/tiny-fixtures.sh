#!/usr/bin/env bash
# scripts/differential/tiny-fixtures.sh: writes model/tests/fixtures/tiny_llamacpp/<arch>.json, llama.cpp's answers
# for the generated tiny models of every architecture the engine runs (issue 16: proof without downloading
# gigabytes), which model/tests/tiny_llamacpp.rs holds the engine to.
#
# For each of tiny-llama, tiny-llama3, tiny-gemma3, tiny-qwen2 and tiny-qwen3 and each prompt below, llama.cpp's probe
# (scripts/differential/probe.c, one thread) records the prompt ids and 16 greedy steps; the fixture keeps the ids,
# each step's chosen id and top-2 margin, and step 0's full logits. The tiny vocabularies are a few hundred tokens,
# so a fixture is small. The tiny models' weights are random, their logits small: llama.cpp's CPU-dependent
# summation order moves them far less than the test's 1e-3 bound, so the fixtures hold on other CPUs too.
# TINY_ARCHS="llama3 qwen2" limits the run to those architectures (default: all five).
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
build_llama_cpp
build_probe

out_dir="$workspace/model/tests/fixtures/tiny_llamacpp"
mkdir -p "$out_dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for arch in ${TINY_ARCHS:-llama llama3 gemma3 qwen2 qwen3}; do
    model="$(cd "$workspace" && cargo run --quiet --release -p runner -- fetch-model "tiny-$arch")"
    case $arch in
    gemma3) chat=$'<start_of_turn>user\nthe sea<end_of_turn>\n<start_of_turn>model\n' ;;
    llama3) chat=$'<|start_header_id|>user<|end_header_id|>\n\nthe sea<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n' ;;
    *) chat=$'<|im_start|>user\nthe sea<|im_end|>\n<|im_start|>assistant\n' ;;
    esac
    prompts=(
        "the theme of the sea is 12345 and 67!"
        "$chat"
        $' leading space, \'tis OK  \t tabs\r\n\n end'
    )
    for index in "${!prompts[@]}"; do
        printf '%s' "${prompts[$index]}" >"$work/prompt-$index.txt"
        "$PROBE" "$model" "$work/prompt-$index.txt" 16 1 "$work/out-$index.bin" ||
            fail "the probe failed on tiny-$arch prompt $index"
    done
    python3 - "$work" "${#prompts[@]}" "$out_dir/$arch.json" "$(sed -n 2p "$LLAMA_CPP_ROOT/build.stamp")" <<'PY'
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
    progress "wrote $out_dir/$arch.json"
done
