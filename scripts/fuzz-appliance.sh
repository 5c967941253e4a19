#!/usr/bin/env bash
# Coverage-guided fuzzing of what an unauthenticated party can send: the frames and TLS bytes a client sends to the
# appliance, and the TPM responses, quotes, signatures, public areas, event logs and EK certificates the verifier
# reads (issue 12, item 9). The model's GGUF targets are scripts/fuzz.sh.
#
#   scripts/fuzz-appliance.sh [TARGET|all] [SECONDS]      (defaults: all, 60 seconds per target)
#
# Targets (bodies in fuzz/src/, libFuzzer wrappers in fuzz/libfuzzer/fuzz_targets/): frames, tls_server,
# tpm_responses, quote, event_logs, ek_chain. Each runs over its corpus fuzz/corpus/TARGET/ (seeds from
# `cargo run -p fuzz-cases --example seeds`, plus what earlier runs kept), one libFuzzer process at a time.
# New inputs go to fuzz/libfuzzer/corpus/TARGET/ (git-ignored); `--merge` at the end folds them, minimised
# (libFuzzer -merge=1), into fuzz/corpus/TARGET/, which `cargo test -p fuzz-cases` replays in CI.
#
# cargo-fuzz wants nightly; stable rustc accepts its -Z flags under RUSTC_BOOTSTRAP=1, and the stable toolchain
# ships the AddressSanitizer runtime, so ASan is the default; FUZZ_SANITIZER=none turns it off.
#
# Crashes, OOMs and timeouts land in fuzz/libfuzzer/artifacts/TARGET/. Fix the code, then copy the input into
# fuzz/corpus/TARGET/ so the regression test keeps it.
set -euo pipefail

target=${1:-all}
seconds=${2:-60}
merge=${3:-}
root=$(cd "$(dirname "$0")/.." && pwd)
fuzz_dir=$root/fuzz/libfuzzer
sanitizer=${FUZZ_SANITIZER:-address}
all=(frames tls_server tpm_responses quote event_logs ek_chain)

export RUSTC_BOOTSTRAP=1
unset CARGO_TARGET_DIR

case $target in
    all) targets=("${all[@]}") ;;
    frames | tls_server | tpm_responses | quote | event_logs | ek_chain) targets=("$target") ;;
    *)
        echo "unknown target '$target' (${all[*]} or all)" >&2
        exit 2
        ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

status=0
for t in "${targets[@]}"; do
    mkdir -p "$fuzz_dir/corpus/$t"
    # net's crypto_provider leaks one 16-byte allocation per TlsServer by design (rustls needs the X25519 group
    # as &'static; the appliance builds one server per boot), and this target builds one server per input.
    # ASan's own exit-time leak report is turned off for it too.
    extra=()
    asan_options=${ASAN_OPTIONS:-}
    if [ "$t" = tls_server ]; then
        extra=(-detect_leaks=0)
        asan_options=detect_leaks=0
    fi
    echo "== $t: ${seconds}s, sanitizer $sanitizer, artifacts in fuzz/libfuzzer/artifacts/$t/"
    if ! (cd "$root" && ASAN_OPTIONS=$asan_options cargo fuzz run --fuzz-dir "$fuzz_dir" -s "$sanitizer" "$t" \
        "$fuzz_dir/corpus/$t" "$root/fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 -max_len=16384 -print_final_stats=1 "${extra[@]}"); then
        echo "!! $t found a failing input: see fuzz/libfuzzer/artifacts/$t/" >&2
        status=1
    fi
    if [ "$merge" = "--merge" ]; then
        # Keep only inputs that add coverage to what fuzz/corpus/TARGET already holds.
        (cd "$root" && ASAN_OPTIONS=$asan_options cargo fuzz run --fuzz-dir "$fuzz_dir" -s "$sanitizer" "$t" \
            "$root/fuzz/corpus/$t" "$fuzz_dir/corpus/$t" -- -merge=1 -max_len=16384 "${extra[@]}" 2>&1 | tail -2)
    fi
done
exit $status
