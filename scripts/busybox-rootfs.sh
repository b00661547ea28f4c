#!/usr/bin/env bash
# Writes a root filesystem tarball built from Debian's busybox-static to stdout:
# /bin/busybox, a link per applet, and a minimal /etc.
#
#   scripts/busybox-rootfs.sh > busybox.tar
set -euo pipefail
bb="${BUSYBOX:-/bin/busybox}"
[ -x "$bb" ] || { echo "busybox-static is not installed (apt-get install busybox-static)" >&2; exit 1; }
if ldd "$bb" 2>&1 | grep -q '=>'; then
    echo "$bb is not static: install busybox-static" >&2
    exit 1
fi
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,proc,sys,dev,var}
chmod 1777 "$stage/tmp"
install -m 0755 "$bb" "$stage/bin/busybox"
for applet in $("$bb" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$stage/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$stage/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$stage/etc/group"
tar --numeric-owner --owner=0 --group=0 -C "$stage" -cf - .
