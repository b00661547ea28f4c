#!/usr/bin/env bash
# Build the guest agent as a static binary and pack it as /init of an initramfs.
#
#   guest-agent/build-initrd.sh     # prints the path of the initramfs
#
# Output: $HYPERD_CACHE/initrd.img (newc cpio, uncompressed: the kernel has no
# decompressors and unpacking is cheaper than inflating).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
cache="${HYPERD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hyperd}"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
mkdir -p "$cache"

(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release \
    -p hyperd-agent --target x86_64-unknown-linux-gnu --target-dir "$target_dir/guest")
agent="$target_dir/guest/x86_64-unknown-linux-gnu/release/hyper-agent"
if ldd "$agent" 2>&1 | grep -q '=>'; then
    echo "hyper-agent is not static" >&2
    exit 1
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{dev,proc,sys,run,tmp,etc}
install -m 0755 "$agent" "$stage/init"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) > "$cache/initrd.img.tmp"
mv "$cache/initrd.img.tmp" "$cache/initrd.img"
echo "$cache/initrd.img"
