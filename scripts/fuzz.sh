#!/usr/bin/env bash
# Coverage-guided fuzzing of the model's GGUF reader, loader and tokenizer builder with cargo-fuzz (libFuzzer).
#
#   scripts/fuzz.sh [TARGET|all] [SECONDS]      (defaults: all, 60 seconds per target)
#
# Targets (model/fuzz/fuzz_targets/): gguf_parse, model_load, gguf_mutate. They run one after another, one
# libFuzzer process each (its default; -jobs=N would fork N workers logging to fuzz-N.log), as the CPU is shared.
# cargo-fuzz wants nightly; stable rustc accepts its -Z flags under RUSTC_BOOTSTRAP=1, and the stable toolchain
# ships the AddressSanitizer runtime, so ASan is the default. FUZZ_SANITIZER=none turns it off (plain libFuzzer,
# still coverage-guided; gguf_parse ran ~8x faster without ASan here).
#
# Cost on the 2-core development machine: `cargo install cargo-fuzz` ~2 min, first build of the targets with ASan
# ~4 min (~40 s after a change to model/), then the requested seconds per target.
#
# Limits: -rss_limit_mb=512 (an allocation sized by an unchecked field shows up as an OOM) and -timeout=5 (a hang).
# Crashes, OOMs and timeouts land in model/fuzz/artifacts/TARGET/{crash,oom,timeout}-<sha1>. To keep one as a
# regression fixture (model/tests/fuzz_regressions.rs replays every file in model/tests/fixtures/fuzz/):
#   - gguf_parse / model_load: the artifact is the GGUF bytes; minimise it and copy it:
#       (cd model && RUSTC_BOOTSTRAP=1 cargo fuzz tmin TARGET fuzz/artifacts/TARGET/crash-...)
#       cp model/fuzz/artifacts/TARGET/minimized-from-... model/tests/fixtures/fuzz/TARGET-<what-it-hits>
#   - gguf_mutate: the artifact is a recipe; write the GGUF file it builds:
#       cargo run --manifest-path model/fuzz/Cargo.toml --bin fuzz_seeds -- \
#           recipe model/fuzz/artifacts/gguf_mutate/crash-... model/tests/fixtures/fuzz/gguf_mutate-<what-it-hits>
# then fix the code until `cargo test -p model --test fuzz_regressions` passes.
set -euo pipefail

target=${1:-all}
seconds=${2:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
fuzz_dir=$root/model/fuzz
sanitizer=${FUZZ_SANITIZER:-address}

export RUSTC_BOOTSTRAP=1
# The fuzz crate is its own workspace with its own target dir (model/fuzz/target, git-ignored) unless
# FUZZ_TARGET_DIR names another; a CARGO_TARGET_DIR from the caller's shell is not used.
target_dir=${FUZZ_TARGET_DIR:-$fuzz_dir/target}
unset CARGO_TARGET_DIR

case $target in
    all) targets=(gguf_parse model_load gguf_mutate) ;;
    gguf_parse | model_load | gguf_mutate) targets=("$target") ;;
    *)
        echo "unknown target '$target' (gguf_parse, model_load, gguf_mutate or all)" >&2
        exit 2
        ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# Seeds for the raw-byte targets: every regression fixture (header cuts of the tiny models, hand-written headers,
# two ~25 KB whole models, inputs the fuzzers kept). `cargo run --manifest-path model/fuzz/Cargo.toml --bin
# fuzz_seeds -- model/fuzz/corpus` adds the full-size tiny models and more cuts (it compiles the crate once more).
for t in gguf_parse model_load; do
    mkdir -p "$fuzz_dir/corpus/$t"
    cp "$root"/model/tests/fixtures/fuzz/* "$fuzz_dir/corpus/$t/" 2>/dev/null || true
done
mkdir -p "$fuzz_dir/corpus/gguf_mutate"

status=0
for t in "${targets[@]}"; do
    # Raw targets need room for a whole tiny model (~200 KB). Recipes are small, but libFuzzer's slow length ramp
    # would keep them to a few edits for minutes, so gguf_mutate gets its full length at once.
    case $t in
        gguf_mutate) length=(-max_len=4096 -len_control=0) ;;
        *) length=(-max_len=262144) ;;
    esac
    echo "== $t: ${seconds}s, sanitizer $sanitizer, artifacts in model/fuzz/artifacts/$t/"
    if ! (cd "$root/model" && cargo fuzz run -s "$sanitizer" --target-dir "$target_dir" "$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=512 -timeout=5 "${length[@]}" -print_final_stats=1); then
        echo "!! $t found a failing input: see model/fuzz/artifacts/$t/ and the comment at the top of this script" >&2
        status=1
    fi
done
exit $status
