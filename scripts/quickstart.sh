#!/usr/bin/env bash
# From a fresh Debian machine to a first pod: installs and builds what is missing, starts
# hyperd on /var/run/hyper.sock (state in /var/lib/hyper, log in /var/log/hyperd.log),
# imports a busybox image built from busybox-static, and runs a pod in a micro-VM.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
scripts/setup.sh
bin="$repo/target/release"
sock="${HYPERD_HOST:-/var/run/hyper.sock}"
sock="${sock#unix://}"
if ! curl -sf --unix-socket "$sock" http://hyperd/_ping >/dev/null 2>&1; then
    echo "starting hyperd on $sock (log: /var/log/hyperd.log)" >&2
    nohup "$bin/hyperd" --host "$sock" >>/var/log/hyperd.log 2>&1 &
    for _ in $(seq 100); do
        curl -sf --unix-socket "$sock" http://hyperd/_ping >/dev/null 2>&1 && break
        sleep 0.1
    done
fi
export HYPERD_HOST="$sock"
if ! "$bin/hyperctl" images | grep -q '^busybox '; then
    scripts/busybox-rootfs.sh | "$bin/hyperctl" import - busybox >/dev/null
fi
"$bin/hyperctl" run --rm busybox sh -c 'echo "hello from $(hostname), a pod in a micro-VM running Linux $(uname -r)"'
