#!/usr/bin/env bash
# Build hyperd's guest kernel: Debian's linux-source-6.1 + tinyconfig + hyperd.config
# + patches/*.patch, into an uncompressed ELF vmlinux cached by a hash of its inputs.
#
#   kernel-config/build.sh          # prints the path of the cached vmlinux
#
# Output: $HYPERD_CACHE/kernel/<hash>/vmlinux and the link $HYPERD_CACHE/vmlinux.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${HYPERD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hyperd}"
src_tar="${LINUX_SOURCE_TAR:-$(ls /usr/src/linux-source-6.1.tar.* 2>/dev/null | head -n1)}"
[ -f "$src_tar" ] || { echo "linux-source-6.1 is not installed (apt-get install linux-source-6.1)" >&2; exit 1; }

src_version="$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || stat -c %s "$src_tar")"
hash="$( { echo "$src_version"; cat "$here/hyperd.config" "$here/build.sh"; cat "$here"/patches/*.patch 2>/dev/null || true; } | sha256sum | cut -c1-16)"
out="$cache/kernel/$hash"

if [ ! -f "$out/vmlinux" ]; then
    work="$cache/kernel/build-$hash"
    rm -rf "$work"
    mkdir -p "$work"
    echo "building guest kernel $hash in $work" >&2
    tar -C "$work" -xf "$src_tar"
    tree="$(echo "$work"/linux-source-*)"
    for p in "$here"/patches/*.patch; do
        [ -f "$p" ] || continue
        patch -d "$tree" -p1 --forward < "$p" >&2
    done
    make -C "$tree" -s tinyconfig >&2
    KCONFIG_CONFIG="$tree/.config" "$tree/scripts/kconfig/merge_config.sh" -m -O "$tree" "$tree/.config" "$here/hyperd.config" > "$work/merge.log"
    make -C "$tree" -s olddefconfig >&2
    # Report fragment lines that Kconfig dropped (typos, unmet dependencies).
    missing=0
    while IFS= read -r line; do
        case "$line" in CONFIG_*=y) grep -qx "$line" "$tree/.config" || { echo "warning: $line not set" >&2; missing=1; } ;; esac
    done < "$here/hyperd.config"
    [ "$missing" = 0 ] || { echo "hyperd.config asks for options Kconfig did not take" >&2; exit 1; }
    make -C "$tree" -s -j"$(nproc)" vmlinux >&2
    mkdir -p "$out"
    cp "$tree/.config" "$out/config"
    cp "$tree/vmlinux" "$out/vmlinux.tmp"
    strip --strip-debug "$out/vmlinux.tmp" 2>/dev/null || true
    mv "$out/vmlinux.tmp" "$out/vmlinux"
    rm -rf "$work"
fi
ln -sfn "$out/vmlinux" "$cache/vmlinux.tmp" && mv -T "$cache/vmlinux.tmp" "$cache/vmlinux"
echo "$out/vmlinux"
