#!/usr/bin/env bash
# Installs what hyperd needs on a Debian machine (only what is missing), then builds the
# guest kernel, the guest agent's initramfs and the hyperd/hyperctl binaries.
#
#   scripts/setup.sh            # release binaries in target/release
#   PROFILE=debug scripts/setup.sh
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

packages=(linux-source-6.1 qemu-system-x86 passt busybox-static erofs-utils e2fsprogs iproute2
          docker-registry skopeo apache2-utils
          flex bison bc cpio xz-utils libelf-dev make gcc curl python3-venv
          libseccomp-dev libcap-ng-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The docker CLI (a client of hyperd's Docker API, used by the tests): Debian's docker.io
# when no docker is installed.
command -v docker >/dev/null 2>&1 || missing+=(docker.io)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# docker-py (PyPI `docker`), a client the tests drive, in a venv of its own.
cache="${HYPERD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hyperd}"
venv="$cache/pyvenv"
if ! "$venv/bin/python" -c 'import docker' 2>/dev/null; then
    echo "installing docker-py into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'docker>=7,<8' >&2
fi

# virtiofsd (volumes: host directories shared with VMs over virtio-fs): the Rust
# virtiofsd from crates.io, pinned, into ~/.cargo/bin (hyperd also looks there).
virtiofsd_version=1.14.0
if ! { command -v virtiofsd || ls "$HOME/.cargo/bin/virtiofsd"; } >/dev/null 2>&1 \
    || ! "$(command -v virtiofsd || echo "$HOME/.cargo/bin/virtiofsd")" --version 2>/dev/null | grep -q "$virtiofsd_version"; then
    echo "installing virtiofsd $virtiofsd_version (cargo install, about 2 minutes)" >&2
    cargo install -q --locked --version "$virtiofsd_version" virtiofsd >&2
fi

echo "guest kernel: $(kernel-config/build.sh)" >&2
echo "guest initramfs: $(guest-agent/build-initrd.sh)" >&2
if [ "${PROFILE:-release}" = release ]; then
    cargo build -q --release --workspace --bins
else
    cargo build -q --workspace --bins
fi
