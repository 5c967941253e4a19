#!/usr/bin/env bash
# scripts/bench-vs-llamacpp.sh: our engine (`cloister bench`) against llama.cpp's llama-bench on the same GGUF files
# with the same thread counts, in one invocation; prints tokens/s per model, thread count and phase and the ratio.
# Follows issue 4 ("benchmark script") and docs/ARCHITECTURE.md §6 (llama.cpp from the llama-cpp-python sdist, anchor speeds,
# memory-bandwidth ceiling for decode).
set -euo pipefail

# build_llama_cpp and the pinned llama-cpp-python release (LLAMA_CPP_PYTHON_VERSION_DEFAULT).
# shellcheck source=scripts/llamacpp.sh
source "$(dirname "${BASH_SOURCE[0]}")/llamacpp.sh"

usage() {
    cat <<'EOF'
Usage: scripts/bench-vs-llamacpp.sh [options]

Benchmarks cloister's inference engine (`cloister bench`) against llama.cpp's `llama-bench` on the same GGUF
files and thread counts, and prints a table of tokens/s and the ratio ours / llama.cpp per model, thread count
and phase (prefill = 128-token prompt, decode = 128 generated tokens), plus the decode bandwidth ceiling.

Steps:
  1. Builds llama.cpp's llama-bench once from the llama-cpp-python source release (pip download of the sdist,
     its vendor/llama.cpp, cmake Release, target llama-bench only) into <cache>/llama.cpp/<version>/, where
     <cache> is $CLOISTER_CACHE or <workspace>/.cache. A stamp file marks a finished build, which later runs reuse.
  2. Resolves the models through the runner's cache: cargo run --release -p runner -- fetch-model <models>.
  3. For each model and thread count runs, in --rounds alternating rounds, llama-bench (-p 128 -n 128 -t N -r R
     -fa 0,1 -o json: flash attention off and on, and the better of the two is llama.cpp's figure) and
     cargo run --release -p runner -- bench --json --model M --threads N --runs R. Each engine's figure is its
     best round: on a shared machine a slow phase then lands on both engines alike. Then prints the table with
     the CPU model and the kernel set each engine ran.
  4. Keeps every raw result (llama-bench's JSON, cloister bench's JSON line, every round's figures in
     rounds.txt, the table) in --out.

Options:
  --models LIST        comma-separated model names known to the runner (default: smollm2,gemma3)
  --threads LIST       comma-separated thread counts (default: 1,2)
  --repetitions R      repetitions per test and round, median taken, for both engines (default: 5)
  --rounds N           alternating rounds of the two engines, best round taken (default: 3)
  --out DIR            where the raw results and the table go (default: <cache>/bench/<UTC time>)
  --no-bandwidth       skip the decode ceiling's read test (scripts/membw.c, built with cc, about 10 s per
                       thread count), which runs by default: the ceiling is only meaningful on the machine
                       at hand
  --measure-bandwidth  accepted for older command lines; measuring is the default
  --llama-cpp-python-version V
                       build a different llama-cpp-python release (default: 0.3.36; its sha256 is checked)
  -h, --help           show this help

Environment:
  CLOISTER_CACHE       cache directory (default: <workspace>/.cache)
  CARGO_TARGET_DIR     honoured by the cargo invocations as usual
  BENCH_JOBS           parallel compile jobs for llama.cpp (default: number of CPUs)

Requirements: pip (for the sdist), cmake and a C/C++ compiler (on Debian: apt-get install cmake g++),
python3 (parses llama-bench's JSON), cargo.

The run takes a while: the first llama.cpp build is ~6 minutes on 2 idle cores. Numbers are only meaningful on
an otherwise idle machine; the script prints the load average before measuring.
EOF
}

progress() { printf '==> %s\n' "$*" >&2; }
fail() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# ---- options ---------------------------------------------------------------------------------------------------

models_list="smollm2,gemma3"
threads_list="1,2"
repetitions=5
rounds=3
out_dir=""
measure_bandwidth=1
llama_cpp_python_version="$LLAMA_CPP_PYTHON_VERSION_DEFAULT"

while [ $# -gt 0 ]; do
    case "$1" in
    --models)
        [ $# -ge 2 ] || fail "--models needs a value (e.g. --models smollm2,gemma3)"
        models_list="$2"
        shift 2
        ;;
    --models=*)
        models_list="${1#*=}"
        shift
        ;;
    --threads)
        [ $# -ge 2 ] || fail "--threads needs a value (e.g. --threads 1,2)"
        threads_list="$2"
        shift 2
        ;;
    --threads=*)
        threads_list="${1#*=}"
        shift
        ;;
    --repetitions)
        [ $# -ge 2 ] || fail "--repetitions needs a value"
        repetitions="$2"
        shift 2
        ;;
    --repetitions=*)
        repetitions="${1#*=}"
        shift
        ;;
    --rounds)
        [ $# -ge 2 ] || fail "--rounds needs a value"
        rounds="$2"
        shift 2
        ;;
    --rounds=*)
        rounds="${1#*=}"
        shift
        ;;
    --out)
        [ $# -ge 2 ] || fail "--out needs a directory"
        out_dir="$2"
        shift 2
        ;;
    --out=*)
        out_dir="${1#*=}"
        shift
        ;;
    --measure-bandwidth)
        measure_bandwidth=1
        shift
        ;;
    --no-bandwidth)
        measure_bandwidth=0
        shift
        ;;
    --llama-cpp-python-version)
        [ $# -ge 2 ] || fail "--llama-cpp-python-version needs a value"
        llama_cpp_python_version="$2"
        shift 2
        ;;
    --llama-cpp-python-version=*)
        llama_cpp_python_version="${1#*=}"
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        fail "unknown argument '$1' (see --help)"
        ;;
    esac
done

IFS=',' read -r -a models <<<"$models_list"
IFS=',' read -r -a threads <<<"$threads_list"
[ ${#models[@]} -gt 0 ] || fail "--models is empty"
[ ${#threads[@]} -gt 0 ] || fail "--threads is empty"
for model in "${models[@]}"; do
    [[ "$model" =~ ^[A-Za-z0-9._-]+$ ]] || fail "bad model name '$model' in --models"
done
for count in "${threads[@]}"; do
    [[ "$count" =~ ^[1-9][0-9]*$ ]] || fail "bad thread count '$count' in --threads (positive integers)"
done
[[ "$repetitions" =~ ^[1-9][0-9]*$ ]] || fail "bad --repetitions '$repetitions' (a positive integer)"
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || fail "bad --rounds '$rounds' (a positive integer)"
[[ "$llama_cpp_python_version" =~ ^[0-9A-Za-z.+-]+$ ]] ||
    fail "bad --llama-cpp-python-version '$llama_cpp_python_version'"

# ---- locations -------------------------------------------------------------------------------------------------

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
workspace="$(cd "$script_dir/.." && pwd)"
if [ ! -f "$workspace/Cargo.toml" ] || [ ! -d "$workspace/runner" ]; then
    fail "cannot find the cloister workspace above $script_dir"
fi
if [ -n "${CLOISTER_CACHE:-}" ]; then
    cache="$CLOISTER_CACHE"
else
    cache="$workspace/.cache"
fi
mkdir -p "$cache" || fail "cannot create the cache directory $cache"
cache="$(cd "$cache" && pwd)"
jobs="${BENCH_JOBS:-$(nproc 2>/dev/null || echo 2)}"
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || fail "bad BENCH_JOBS '$jobs'"

for tool in cargo python3; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is not installed (needed by this script)"
done

work_dir="$(mktemp -d)"
trap 'rm -rf "$work_dir"' EXIT
[ -n "$out_dir" ] || out_dir="$cache/bench/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out_dir" || fail "cannot create the output directory $out_dir"
out_dir="$(cd "$out_dir" && pwd)"
cpu_model="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
cpu_flags="$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512bw|avx512vl|avx512_vnni|avx512_bf16|amx_tile)$' | tr '\n' ' ')"

# ---- 1. llama.cpp ----------------------------------------------------------------------------------------------

# ---- 2. models -------------------------------------------------------------------------------------------------

declare -A model_path=()

resolve_models() {
    progress "models: cargo run --release -p runner -- fetch-model ${models[*]}"
    local output
    output="$(cd "$workspace" && cargo run --quiet --release -p runner -- fetch-model "${models[@]}")" ||
        fail "cloister fetch-model ${models[*]} failed"
    local -a paths
    mapfile -t paths <<<"$output"
    [ ${#paths[@]} -eq ${#models[@]} ] ||
        fail "cloister fetch-model printed ${#paths[@]} paths for ${#models[@]} models: $output"
    local index
    for index in "${!models[@]}"; do
        [ -f "${paths[$index]}" ] || fail "cloister fetch-model gave ${paths[$index]}, which is not a file"
        model_path["${models[$index]}"]="${paths[$index]}"
        progress "models: ${models[$index]} = ${paths[$index]} ($(stat -c %s "${paths[$index]}") bytes)"
    done
}

# ---- 3. bandwidth ----------------------------------------------------------------------------------------------

declare -A bandwidth=()
bandwidth_source=""

measure_or_assume_bandwidth() {
    local count
    if [ "$measure_bandwidth" -eq 1 ]; then
        command -v cc >/dev/null 2>&1 || fail "the bandwidth test needs a C compiler (cc); --no-bandwidth skips it"
        cc -O3 -march=native -pthread -o "$work_dir/membw" "$script_dir/membw.c" || fail "cannot build $script_dir/membw.c"
        for count in "${threads[@]}"; do
            progress "bandwidth: read test with $count thread(s)"
            bandwidth["$count"]="$("$work_dir/membw" "$count")" || fail "the bandwidth test failed"
        done
        bandwidth_source="measured now with scripts/membw.c (256 MiB per thread on 2 MiB pages read as 1, 2, 4 and 8 streams, the best stream count's median of 5 rounds)"
    else
        for count in "${threads[@]}"; do
            bandwidth["$count"]=""
        done
        bandwidth_source="not measured (--no-bandwidth)"
    fi
}

# ---- 4. measurements -------------------------------------------------------------------------------------------

# results["model/threads/phase/engine"] = tokens per second
declare -A results=()
ours_kernels="?"

# Keeps the better of results[key] and a new figure (a round's); returns 0 when the new one is better.
keep_best() {
    local key="$1" value="$2"
    [ -z "${results["$key"]:-}" ] || python3 -c 'import sys; sys.exit(0 if float(sys.argv[2]) > float(sys.argv[1]) else 1)' \
        "${results["$key"]}" "$value" || return 1
    results["$key"]="$value"
}

run_llama_bench() {
    local model="$1" count="$2" round="$3"
    local json="$out_dir/llama-bench-$model-$count-round$round.json"
    local log="$out_dir/llama-bench-$model-$count-round$round.log"
    progress "llama-bench: $model, $count thread(s), round $round of $rounds, -p 128 -n 128 -r $repetitions -fa 0,1"
    "$LLAMA_BENCH" -m "${model_path[$model]}" -p 128 -n 128 -t "$count" -r "$repetitions" -fa 0,1 -o json \
        >"$json" 2>"$log" ||
        fail "llama-bench failed on $model with $count threads: $(tail -n 5 "$log")"
    local parsed
    parsed="$(python3 - "$json" <<'PY'
import json, statistics, sys
with open(sys.argv[1]) as f:
    rows = json.load(f)
def speed(row):
    # The median of the repetitions, the statistic cloister bench reports; the mean when samples are absent.
    samples = row.get("samples_ts") or []
    return statistics.median(samples) if samples else row["avg_ts"]
# With flash attention off and on (-fa 0,1), llama.cpp's figure for a phase is the better of the two.
best = {}
for row in rows:
    if row.get("n_prompt") == 128 and row.get("n_gen") == 0:
        phase = "prefill"
    elif row.get("n_prompt") == 0 and row.get("n_gen") == 128:
        phase = "decode"
    else:
        continue
    fa = int(bool(row.get("flash_attn")))
    if phase not in best or speed(row) > best[phase][0]:
        best[phase] = (speed(row), fa)
if "prefill" not in best or "decode" not in best:
    sys.exit("llama-bench JSON lacks the pp128 or tg128 row")
print(f"{best['prefill'][0]:.3f} {best['decode'][0]:.3f} {best['prefill'][1]} {best['decode'][1]}")
PY
)" || fail "cannot parse llama-bench's JSON output ($json)"
    local prefill decode prefill_fa decode_fa
    read -r prefill decode prefill_fa decode_fa <<<"$parsed"
    if keep_best "$model/$count/prefill/llama" "$prefill"; then results["$model/$count/prefill/fa"]="$prefill_fa"; fi
    if keep_best "$model/$count/decode/llama" "$decode"; then results["$model/$count/decode/fa"]="$decode_fa"; fi
    printf '%s %s %s llama.cpp %s %s\n' "$model" "$count" "$round" "$prefill" "$decode" >>"$out_dir/rounds.txt"
    progress "    llama-bench: prefill $prefill tok/s (fa $prefill_fa), decode $decode tok/s (fa $decode_fa) (median of $repetitions, better of -fa 0/1)"
}

run_ours() {
    local model="$1" count="$2" round="$3"
    progress "cloister bench: $model, $count thread(s), round $round of $rounds, --runs $repetitions"
    local output
    # `bench --json` prints one JSON object: model, threads, kernels, layout, prefill_tok_s, decode_tok_s, ...
    output="$(cd "$workspace" &&
        cargo run --quiet --release -p runner -- bench --json --model "${model_path[$model]}" --threads "$count" \
            --runs "$repetitions")" ||
        fail "cloister bench failed on $model with $count threads"
    printf '    %s\n' "$output" >&2
    printf '%s\n' "$output" >"$out_dir/cloister-bench-$model-$count-round$round.json"
    local parsed
    parsed="$(python3 -c '
import json, sys
line = json.loads(sys.argv[1])
# The kernel set and the weight layout (interleaved where the host rearranged Q4_1/Q5_0 matrices) as one word.
print("%.3f %.3f %s/%s" % (line["prefill_tok_s"], line["decode_tok_s"], line.get("kernels", "?"), line.get("layout", "file")))
' "$output")" || fail "cannot parse cloister bench --json output: $output"
    local prefill decode kernels
    read -r prefill decode kernels <<<"$parsed"
    keep_best "$model/$count/prefill/ours" "$prefill" || true
    keep_best "$model/$count/decode/ours" "$decode" || true
    printf '%s %s %s ours %s %s\n' "$model" "$count" "$round" "$prefill" "$decode" >>"$out_dir/rounds.txt"
    ours_kernels="$kernels"
}

# ---- main ------------------------------------------------------------------------------------------------------

LLAMA_BENCH=""
build_llama_cpp
resolve_models
progress "cloister: building the release binary (cargo build --release -p runner)"
(cd "$workspace" && cargo build --quiet --release -p runner) || fail "cargo build --release -p runner failed"
measure_or_assume_bandwidth

load_before="$(cut -d ' ' -f 1-3 /proc/loadavg)"
progress "load average before measuring: $load_before on $(nproc) CPUs"
if python3 -c 'import os, sys; sys.exit(0 if os.getloadavg()[0] > 0.5 * os.cpu_count() else 1)'; then
    # Other processes on the cores distort both engines, llama.cpp's spinning thread barriers most of all.
    progress "WARNING: the machine is busy; the numbers below will be low and noisy (2-thread runs especially)"
fi
for model in "${models[@]}"; do
    for count in "${threads[@]}"; do
        # Rounds alternate the two engines, so that a slow phase of a shared machine (a neighbour on the other
        # hyperthread, say) lands on both; each engine's figure is its best round.
        for round in $(seq 1 "$rounds"); do
            run_llama_bench "$model" "$count" "$round"
            run_ours "$model" "$count" "$round"
        done
    done
done
load_after="$(cut -d ' ' -f 1-3 /proc/loadavg)"

# The table goes to stdout and to $out_dir/table.txt.
exec > >(tee "$out_dir/table.txt")
printf '\nCPU: %s (%s); our kernel set/weight layout: %s; llama.cpp built with GGML_NATIVE for this CPU.\n' \
    "$cpu_model" "$cpu_flags" "$ours_kernels"
printf '%-10s %7s %-8s %14s %4s %14s %10s\n' model threads phase "llama.cpp t/s" fa "ours t/s" "ours/llama"
printf '%-10s %7s %-8s %14s %4s %14s %10s\n' ---------- ------- -------- -------------- ---- -------------- ----------
for model in "${models[@]}"; do
    for count in "${threads[@]}"; do
        for phase in prefill decode; do
            theirs="${results["$model/$count/$phase/llama"]}"
            ours="${results["$model/$count/$phase/ours"]}"
            ratio="$(python3 -c 'import sys; print(f"{float(sys.argv[2]) / float(sys.argv[1]):.2f}")' "$theirs" "$ours")"
            printf '%-10s %7s %-8s %14.1f %4s %14.1f %10s\n' "$model" "$count" "$phase" "$theirs" \
                "${results["$model/$count/$phase/fa"]}" "$ours" "$ratio"
        done
    done
done

printf '\nDecode ceiling = memory bandwidth / model file bytes (every weight byte read once per token);\n'
printf 'bandwidth: %s.\n' "$bandwidth_source"
printf '%-10s %7s %12s %10s %14s %12s %12s\n' model threads "model MB" "GB/s" "ceiling t/s" "llama.cpp %" "ours %"
printf '%-10s %7s %12s %10s %14s %12s %12s\n' ---------- ------- ------------ ---------- -------------- ------------ ------------
for model in "${models[@]}"; do
    bytes="$(stat -c %s "${model_path[$model]}")"
    for count in "${threads[@]}"; do
        gbs="${bandwidth["$count"]}"
        if [ -z "$gbs" ]; then
            printf '%-10s %7s %12.1f %10s %14s %12s %12s\n' "$model" "$count" "$(python3 -c "print($bytes / 1e6)")" \
                n/a n/a n/a n/a
            continue
        fi
        python3 - "$model" "$count" "$bytes" "$gbs" "${results["$model/$count/decode/llama"]}" \
            "${results["$model/$count/decode/ours"]}" <<'PY'
import sys
model, count, size, gbs, theirs, ours = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
ceiling = gbs * 1e9 / size
print(f"{model:<10} {count:>7} {size / 1e6:>12.1f} {gbs:>10.1f} {ceiling:>14.1f} {100 * theirs / ceiling:>11.0f}% {100 * ours / ceiling:>11.0f}%")
PY
    done
done
printf '\nllama.cpp: %s (llama-bench -p 128 -n 128 -r %s -fa 0,1, median, the better flash-attention setting: fa);\n' \
    "$(sed -n 2p "$cache/llama.cpp/$llama_cpp_python_version/build.stamp")" "$repetitions"
printf 'ours: cloister bench --runs %s (median). Each figure is the best of %s rounds that alternate the two engines\n' \
    "$repetitions" "$rounds"
printf '(every round in rounds.txt). Raw results: %s\n' "$out_dir"
printf 'Load average before / after measuring: %s / %s on %s CPUs (numbers from a busy machine are low and noisy).\n' \
    "$load_before" "$load_after" "$(nproc)"
