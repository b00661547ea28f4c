#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for SECONDS each (default $FUZZ_SECONDS, else 60) with
# cargo-fuzz on the nightly toolchain, installing cargo-fuzz if it is missing. Each
# target starts from its committed seeds (fuzz/seeds/TARGET) and its local corpus
# (fuzz/corpus/TARGET, not committed), and a line per target (executions, corpus size,
# crashes) is appended to $FUZZ_LOG (default fuzz/fuzz.log) and printed.
#
#   scripts/fuzz.sh                   # every target, 60 s each
#   scripts/fuzz.sh 600               # every target, 10 minutes each
#   scripts/fuzz.sh 30 http_api       # one
#
# Exits non-zero when a target crashed (its input is in fuzz/artifacts/TARGET).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo/fuzz"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
seconds="${FUZZ_SECONDS:-60}"
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi
log="${FUZZ_LOG:-$repo/fuzz/fuzz.log}"
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
cargo +nightly fuzz build >&2
commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
crashed=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | wc -l)
    out=$(mktemp)
    echo "== fuzzing $t for $seconds s" >&2
    rc=0
    cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$out" 2>&1 || rc=$?
    grep -E '^(#[0-9]+ *DONE|==[0-9]+==|SUMMARY|thread .* panicked)' "$out" >&2 || true
    status=ok
    [ "$rc" -eq 0 ] || status="crash (exit $rc)"
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -1)
    crashes=$(($(find "artifacts/$t" -type f | wc -l) - before))
    [ "$crashes" -eq 0 ] || status="crash"
    if [ "$status" != ok ]; then
        crashed=1
        tail -40 "$out" >&2
    fi
    line=$(printf '%s  %-8s %-18s %5ss  execs %-10s corpus %-6s crashes %s  %s' \
        "$(date -u +%FT%TZ)" "$commit" "$t" "$seconds" "${execs:-?}" \
        "$(find "corpus/$t" -type f | wc -l)" "$crashes" "$status")
    echo "$line" | tee -a "$log"
    rm -f "$out"
done
exit "$crashed"
