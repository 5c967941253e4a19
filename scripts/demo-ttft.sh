#!/usr/bin/env bash
# scripts/demo-ttft.sh: how fast the development loop answers (issue 13): boots the appliance with `cloister up`
# (SmolLM2, the demo prompt) once per vCPU count and run, and prints the demo's first-token time and the appliance's
# prefill and decode rates as `cloister up` reports them, with the load average before each run (TCG shares the
# host's cores with whatever else runs, so a loaded machine gives slower figures).
#
# Usage: scripts/demo-ttft.sh [--boot direct|uefi] [--cpus "1 2 4"] [--runs N]
# Needs what `cloister up` needs (QEMU, swtpm, OVMF for UEFI); builds the release `cloister` first.
set -euo pipefail

boot=direct
cpus_list="1 2 4"
runs=1
while [ $# -gt 0 ]; do
    case "$1" in
    --boot) boot="$2"; shift 2 ;;
    --cpus) cpus_list="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    -h | --help) sed -n 2,8p "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
cargo build -q --release -p runner
cloister=target/release/cloister
log="$(mktemp /tmp/demo-ttft.XXXXXX)"
trap 'pkill -f "cloister up --boot $boot" 2>/dev/null || true; rm -f "$log"' EXIT

printf '%-5s %-4s %-7s %-14s %s\n' vCPUs run boot "load before" "cloister up's summary"
for cpus in $cpus_list; do
    for run in $(seq 1 "$runs"); do
        load="$(cut -d ' ' -f 1-3 /proc/loadavg)"
        "$cloister" up --boot "$boot" --cpus "$cpus" --port 8470 >"$log" 2>&1 &
        pid=$!
        summary=""
        for _ in $(seq 1 600); do
            summary="$(grep -m 1 'first token after' "$log" || true)"
            [ -n "$summary" ] && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        [ -n "$summary" ] || { echo "no summary from cloister up; its output:" >&2; cat "$log" >&2; exit 1; }
        printf '%-5s %-4s %-7s %-14s %s\n' "$cpus" "$run" "$boot" "$load" "$summary"
    done
done
