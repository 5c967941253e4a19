#!/usr/bin/env bash
# The whole test suite, as README.md gives it and .ci/run runs it.
# Formatting and lints first (cheap), then host unit tests, then the QEMU + swtpm end-to-end tests, then the engine
# against llama.cpp on a subset of the differential harness's prompts.
set -euo pipefail
cd "$(dirname "$0")"

echo "== cargo fmt --check"
cargo fmt --all --check

# The kernel is checked in its own invocation: in one invocation with the std crates, cargo's
# feature unification would hand its dependencies std (docs/ARCHITECTURE.md §2).
echo "== clippy (host crates)"
cargo clippy --workspace --exclude kernel --exclude uefi-stub --all-targets -- -D warnings
echo "== clippy (EFI stub, kernel)"
cargo clippy -p uefi-stub --all-targets -- -D warnings
cargo clippy -p kernel --all-targets -- -D warnings
cargo clippy -p kernel --all-targets --features debug-console -- -D warnings

echo "== kernel and EFI stub library tests (host)"
cargo test -p kernel --lib
cargo test -p uefi-stub --lib

# The engine against llama.cpp (scripts/differential.sh; README.md, "Engine outputs against llama.cpp"): 20 of the
# library's 200 prompts per model, spread over it (prompts up to 1,150 tokens, past Gemma 3's 512-token window), 64
# greedy steps each: the CPU's best kernel set prefilled in 32-token chunks on one thread (as the appliance serves)
# and in one batch on two, held to llama.cpp built for this CPU, and the AVX2 set forced, held to llama.cpp built
# for AVX2 without AVX-512. Then the portable kernels (what the appliance runs under TCG), held to llama.cpp built
# for SSE4.2 without AVX, on 4 prompts per model (they are slow on long prompts), in 32-token chunks on two threads
# as the appliance serves with its default two vCPUs. It fails on a prompt the two tokenize differently and on a
# greedy choice that differs where llama.cpp's top-2 margin is 0.05 or more. The first run downloads llama.cpp and
# builds its llama library once (native) and its ggml libraries for each of native, AVX2 and SSE4.2 into
# .cache/llama.cpp (pip, cmake and a C/C++ compiler; about 1.5 minutes, then 30 s per flavor), later runs reuse them. It runs before the workspace tests because model/tests/llamacpp_vocabs.rs
# reads the vocabularies in that download.
echo "== the engine against llama.cpp (scripts/differential.sh, 20 prompts per model, native and AVX2 kernels)"
scripts/differential.sh --prompts 20 --steps 64 --configs native:1:32,native:2:0,avx2:1:32
# On a CPU with AVX-512 VNNI, the same 4 prompts also run the AVX-512 set as on a CPU without VNNI (Intel's
# Skylake-SP Xeons), chunks on one thread, held to llama.cpp built for this CPU. On a CPU without VNNI that set is
# the native one, checked above; on one without AVX-512 it cannot run.
configs=portable:2:32
if grep -qw avx512_vnni /proc/cpuinfo; then
    configs+=,avx512-novnni:1:32
fi
echo "== the portable kernels against llama.cpp (scripts/differential.sh, 4 prompts per model: $configs)"
scripts/differential.sh --prompts 4 --steps 64 --configs "$configs"

echo "== workspace tests (unit, swtpm, and QEMU end-to-end)"
cargo test --workspace --exclude kernel --exclude uefi-stub
