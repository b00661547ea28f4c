#!/usr/bin/env bash
# Installs and builds what the tests need (scripts/setup.sh), then runs every test of the
# workspace: unit tests, and end-to-end tests that boot real micro-VMs.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
PROFILE=debug scripts/setup.sh
cargo test --workspace "$@"
