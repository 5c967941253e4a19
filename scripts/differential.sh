#!/usr/bin/env bash
# scripts/differential.sh: holds the engine to llama.cpp on the project's prompt library (issue 15).
#
# For each model and prompt, llama.cpp (built from the pinned llama-cpp-python sdist, scripts/llamacpp.sh; probe in
# scripts/differential/probe.c) tokenizes the prompt, prefills it in one batch and generates --steps tokens
# greedily on one thread, writing every step's full logits. The engine (model/examples/differential) then runs the
# same ids under each configuration asked for (kernel set x threads x prefill chunk), feeding llama.cpp's chosen
# token at every step, and reports per prompt: whether the prompt ids are identical, the first step where its greedy
# choice differs and llama.cpp's top-2 margin there (below 0.05 is a near-tie, the only tolerated divergence), and
# the largest logit difference per step. The summary table goes to stdout, every result line to OUT/results.jsonl.
#
# Exit status: 0 when every prompt tokenizes identically and every divergence is a near-tie; 1 otherwise; 2 on
# bad usage.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/differential.sh [options]

  --models LIST     models known to `cloister fetch-model` (default: smollm2,gemma3)
  --prompts N       run every (200/N)-th prompt of the 200 in the library, N of them (default: all 200)
  --skip N          leave out the first N of the prompts selected (to resume a long run where it stopped:
                    the progress lines number the prompts; default: 0)
  --steps N         generated steps per prompt (default: 64)
  --configs LIST    engine configurations, KERNELS:THREADS:CHUNK each, KERNELS native (the CPU's best set),
                    portable, avx2, avx512 (forced; the CPU must have it) or avx512-novnni (the
                    AVX-512 set as on a CPU without AVX512_VNNI, such as Intel's Skylake-SP), CHUNK 32 (as the appliance
                    prefills) or 0 (one batch). avx2 is held to llama.cpp built for AVX2 without
                    AVX-512, portable to llama.cpp built for SSE4.2 without AVX (the TCG vCPU's set;
                    each a build of its own, made on first use), the others to llama.cpp built for
                    this CPU
                    (default: native:1:32,native:1:0,native:2:32,avx2:1:32,portable:1:32,portable:2:0)
  --out DIR         where results.jsonl and the prompts go (default: a new directory under /tmp)
  --amx-reference   on a CPU with Intel AMX, hold the CPU's best set to llama.cpp built for this CPU with AMX
                    (its default there), whose AMX kernels the engine does not mirror, instead of the same
                    build without AMX (to measure that gap)
  --allow-divergences   report, but exit 0, when divergences that are not near-ties remain
USAGE
}

# Progress lines carry the seconds since the script started, so a log shows what each stage cost.
progress() { printf '[%4ds] %s\n' "$SECONDS" "$*" >&2; }
fail() {
    printf 'differential: %s\n' "$*" >&2
    exit 1
}

models_list=smollm2,gemma3
prompt_count=all
skip=0
steps=64
configs_list=native:1:32,native:1:0,native:2:32,avx2:1:32,portable:1:32,portable:2:0
out=""
allow=0
amx_reference=0
while [ $# -gt 0 ]; do
    case "$1" in
    --models) models_list="$2"; shift 2 ;;
    --prompts) prompt_count="$2"; shift 2 ;;
    --skip) skip="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --configs) configs_list="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --allow-divergences) allow=1; shift ;;
    --amx-reference) amx_reference=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
done
[[ "$steps" =~ ^[1-9][0-9]*$ ]] || { echo "bad --steps '$steps'" >&2; exit 2; }
[[ "$skip" =~ ^[0-9]+$ ]] || { echo "bad --skip '$skip'" >&2; exit 2; }
[[ "$prompt_count" = all || "$prompt_count" =~ ^[1-9][0-9]*$ ]] || { echo "bad --prompts '$prompt_count'" >&2; exit 2; }
IFS=',' read -r -a models <<<"$models_list"
IFS=',' read -r -a configs <<<"$configs_list"
for config in "${configs[@]}"; do
    [[ "$config" =~ ^(native|portable|avx2|avx512|avx512-novnni):[1-9][0-9]*:[0-9]+$ ]] || { echo "bad configuration '$config'" >&2; exit 2; }
done

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
workspace="$(cd "$script_dir/.." && pwd)"
cache="${CLOISTER_CACHE:-$workspace/.cache}"
mkdir -p "$cache"
jobs="$(nproc 2>/dev/null || echo 2)"
[ -n "$out" ] || out="$(mktemp -d /tmp/differential.XXXXXX)"
mkdir -p "$out"

# ---- llama.cpp and its probe -------------------------------------------------------------------------------------
# shellcheck source=scripts/llamacpp.sh
source "$script_dir/llamacpp.sh"
llama_cpp_python_version="$LLAMA_CPP_PYTHON_VERSION_DEFAULT"
# The probe needs only the llama library (and the ggml libraries it links), not llama-bench and its common library.
# Each configuration is held to the llama.cpp build whose code paths its kernels mirror: the AVX2 set (forced) to
# llama.cpp built for AVX2 without AVX-512 (scripts/llamacpp.sh, flavor avx2); the portable kernels, which keep the
# orders of llama.cpp's SSE paths on any CPU, to llama.cpp built for SSE4.2 without AVX (flavor sse42, what the
# appliance's vCPU under TCG has); the CPU's best set and a forced AVX-512 set, with or without VNNI, to llama.cpp
# built for this CPU (VNNI changes only how the exact integer sums of the quantized products are formed).
#
# On a CPU with Intel AMX, llama.cpp built for it puts Q4_0, Q4_1, Q8_0, Q4_K, Q5_K and Q6_K weights in its AMX buffer
# type (ggml-cpu/amx/amx.cpp, first among the extra buffer types) and multiplies them in ggml-cpu/amx/mmq.cpp: AVX-512
# VNNI for one token, AMX tiles for batches, each block's whole integer sum then one FMA per block, not the
# ggml_vec_dot orders the engine mirrors. The engine has no such kernels, so there the CPU's best set is held to
# llama.cpp built for this CPU without AMX (flavor native-noamx, the same build otherwise), and the script says so;
# --amx-reference holds it to the AMX build instead.
native_reference=native
if grep -qw amx_int8 /proc/cpuinfo; then
    if [ "$amx_reference" -eq 1 ]; then
        progress "this CPU has AMX: the CPU's best set is held to llama.cpp with its AMX kernels (--amx-reference), whose orders the engine does not mirror"
    else
        native_reference=native-noamx
        progress "this CPU has AMX: the CPU's best set is held to llama.cpp built for it without AMX (native-noamx); the engine does not mirror llama.cpp's AMX kernels (--amx-reference compares with them)"
    fi
fi
reference_of() {
    case "${1%%:*}" in
    avx2) echo avx2 ;;
    portable) echo sse42 ;;
    *) echo "$native_reference" ;;
    esac
}
declare -A probes=()
for config in "${configs[@]}"; do
    flavor="$(reference_of "$config")"
    [ -n "${probes[$flavor]:-}" ] && continue
    llama_cpp_flavor="$flavor"
    build_llama_cpp_libraries
    build_probe
    probes[$flavor]="$PROBE"
done

# ---- the engine's side -------------------------------------------------------------------------------------------
progress "engine: cargo build --release -p model --features std --example differential"
(cd "$workspace" && cargo build --quiet --release -p model --features std --example differential) ||
    fail "the differential example does not build"
engine="$workspace/target/release/examples/differential"
# fetch-model with the dev profile, which `cargo test` and .ci/run have built already (the release profile's thin LTO
# would recompile the runner for minutes).
progress "models: cloister fetch-model ${models[*]}"
mapfile -t model_paths < <(cd "$workspace" && cargo run --quiet -p runner -- fetch-model "${models[@]}")
[ ${#model_paths[@]} -eq ${#models[@]} ] || fail "fetch-model did not resolve ${models[*]}"

results="$out/results.jsonl"
: >"$results"
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
progress "CPU: $cpu; results in $results"
for index in "${!models[@]}"; do
    name="${models[$index]}"
    path="${model_paths[$index]}"
    prompts="$out/$name/prompts"
    rm -rf "$prompts"
    "$engine" prompts "$path" "$prompts"
    mapfile -t files < <(find "$prompts" -name '*.txt' | sort)
    if [ "$prompt_count" != all ]; then
        stride=$(( ${#files[@]} / prompt_count ))
        [ "$stride" -ge 1 ] || stride=1
        selected=()
        for ((i = 0; i < ${#files[@]} && ${#selected[@]} < prompt_count; i += stride)); do
            selected+=("${files[$i]}")
        done
        files=("${selected[@]}")
    fi
    count=0
    for prompt in "${files[@]}"; do
        count=$((count + 1))
        [ "$count" -gt "$skip" ] || continue
        progress "$name: [$count/${#files[@]}] $(basename "$prompt" .txt)"
        for flavor in "${!probes[@]}"; do
            "${probes[$flavor]}" "$path" "$prompt" "$steps" 1 "$out/$name/llama-$flavor.bin" ||
                fail "llama.cpp's probe ($flavor build) failed on $prompt"
        done
        for config in "${configs[@]}"; do
            reference="$out/$name/llama-$(reference_of "$config").bin"
            IFS=':' read -r kernels threads chunk <<<"$config"
            flags=(--threads "$threads" --chunk "$chunk")
            case "$kernels" in
            portable) flags+=(--scalar) ;;
            avx2 | avx512 | avx512-novnni) flags+=(--kernels "$kernels") ;;
            esac
            line="$("$engine" compare "$path" "$prompt" "$reference" "${flags[@]}")" ||
                fail "the engine failed on $prompt ($config)"
            printf '{"model":"%s","llama_cpp":"%s",%s\n' "$name" "$(reference_of "$config")" "${line#\{}" >>"$results"
        done
        rm -f "$out/$name"/llama-*.bin
    done
done

# ---- summary -----------------------------------------------------------------------------------------------------
python3 - "$results" "$cpu" "$allow" <<'PY'
import json, sys
from collections import defaultdict
path, cpu, allow = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
rows = [json.loads(line) for line in open(path)]
groups = defaultdict(list)
for row in rows:
    groups[(row["model"], row["kernels"], row["threads"], row["chunk"], row.get("llama_cpp", "native"))].append(row)
print(f"CPU: {cpu}")
print("| model | kernels | threads | chunk | llama.cpp build | prompts | ids differ | divergences | near-ties | max logit diff | median of per-prompt max |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
bad = []
for key in sorted(groups):
    group = groups[key]
    differ = [r for r in group if not r["ids_equal"]]
    real = [r for r in group if r["divergence"] and not r["divergence"]["near_tie"]]
    ties = [r for r in group if r["divergence"] and r["divergence"]["near_tie"]]
    maxima = sorted(r["max_logit_difference"] for r in group)
    chunk = "one batch" if key[3] == 0 else key[3]
    print(f"| {key[0]} | {key[1]} | {key[2]} | {chunk} | {key[4]} | {len(group)} | {len(differ)} | {len(real)} | {len(ties)} | "
          f"{maxima[-1]:.4f} | {maxima[len(maxima) // 2]:.4f} |")
    bad += differ + real
for row in bad:
    d = row["divergence"]
    what = (f"prompt ids differ at {row['first_id_difference']}" if not row["ids_equal"]
            else f"step {d['step']}: engine {d['engine']}, llama.cpp {d['llama_cpp']}, margin {d['margin']:.3f}")
    print(f"  {row['model']} {row['prompt']} ({row['kernels']}, {row['threads']} threads, chunk {row['chunk']}): {what}")
if bad and not allow:
    sys.exit(1)
PY
