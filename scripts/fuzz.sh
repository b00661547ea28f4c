#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for a while (FUZZ_SECONDS each, default 60) with
# cargo-fuzz on the nightly toolchain, installing cargo-fuzz if it is missing.
#
#   scripts/fuzz.sh                  # every target
#   scripts/fuzz.sh base64_field     # one
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo/fuzz"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
for t in "${targets[@]}"; do
    echo "== fuzzing $t for $seconds s" >&2
    cargo +nightly fuzz run "$t" -- -max_total_time="$seconds" -rss_limit_mb=2048
done
