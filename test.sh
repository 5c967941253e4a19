#!/usr/bin/env bash
# The whole test suite, as README.md gives it and .ci/run runs it.
# Formatting and lints first (cheap), then host unit tests, then the QEMU + swtpm end-to-end tests.
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

echo "== workspace tests (unit, swtpm, and QEMU end-to-end)"
cargo test --workspace --exclude kernel --exclude uefi-stub
