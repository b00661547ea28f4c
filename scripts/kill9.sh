#!/usr/bin/env bash
# The kill -9 durability test (tests/kill9.rs) for ROUNDS kills (default 100); CI runs
# 4. Prints each round and a last line to record in docs/security.md. HYPERD_KILL_SEED
# replays a run.
#
#   scripts/kill9.sh            # 100 kills
#   scripts/kill9.sh 20
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
cargo build --workspace --bins
HYPERD_KILL_ROUNDS="${1:-100}" cargo test --test kill9 -- --nocapture 2>&1 | grep -E '^(kill9|test result)'
