#!/usr/bin/env bash
# Installs every tool that building basalt images and running its tests needs
# on a Debian bookworm (amd64) machine. Safe to run any number of times.
#
#   sudo scripts/setup.sh            # everything: builder, QEMU, cross toolchain
#
# What it changes on the machine:
#   - adds the arm64 architecture to dpkg (for cross-building and arm64 packages)
#   - adds bookworm-backports (QEMU 10, which has -M raspi4b) and the
#     non-free-firmware component (raspi-firmware) to apt
#   - installs the Debian packages listed below
#   - mounts binfmt_misc and enables qemu-user-static for arm64 chroots
#   - adds the aarch64-unknown-linux-gnu Rust target
#   - runs scripts/fetch-models.sh: the ONNX models basalt-infer is tested
#     on, and a Python venv with onnxruntime for reference outputs, under
#     ${BASALT_CACHE_DIR:-/var/cache/basalt/cache}
set -euo pipefail

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/setup.sh: run as root (it installs Debian packages)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
mirror=${BASALT_SETUP_MIRROR:-http://deb.debian.org/debian}

changed=0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    log "adding dpkg architecture arm64"
    dpkg --add-architecture arm64
    changed=1
fi

src=/etc/apt/sources.list.d/basalt.sources
want=$(cat <<SRC
# Written by basalt scripts/setup.sh
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
)
if [ "$(cat "$src" 2>/dev/null)" != "$want" ]; then
    log "writing $src (bookworm-backports, non-free-firmware)"
    printf '%s\n' "$want" >"$src"
    changed=1
fi

stamp=/var/lib/apt/basalt-setup.stamp
if [ "$changed" = 1 ] || [ ! -e "$stamp" ] || [ -n "$(find "$stamp" -mmin +720 2>/dev/null)" ]; then
    log "apt-get update"
    apt-get update -q
    touch "$stamp"
fi

packages=(
    # root file system assembly
    mmdebstrap arch-test debian-archive-keyring qemu-user-static binfmt-support
    # file system images and partition tables, all in user space
    squashfs-tools erofs-utils e2fsprogs dosfstools mtools fdisk
    zstd xz-utils bmap-tools cpio kmod
    # the Raspberry Pi launcher sets /chosen/bootloader in the device tree
    device-tree-compiler
    # boot loaders and firmware for the image and for QEMU
    systemd-boot-efi ovmf qemu-efi-aarch64
    # cross-compiling the agent for arm64
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    # tests: network namespaces, userspace WireGuard, ISO tools
    iproute2 iputils-ping wireguard-tools wireguard-go xorriso openssh-client
    # inference tests: fetching the models, onnxruntime in a venv for reference outputs
    curl ca-certificates python3 python3-venv
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# QEMU 10 from bookworm-backports: it has -M raspi4b, which bookworm's 7.2 lacks.
qemu_pkgs=(qemu-system-x86 qemu-system-arm qemu-utils)
need_qemu=0
for p in "${qemu_pkgs[@]}"; do
    v=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || true)
    case "$v" in *bpo12*) ;; *) need_qemu=1 ;; esac
done
if [ "$need_qemu" = 1 ]; then
    log "installing ${qemu_pkgs[*]} from bookworm-backports"
    apt-get install -y -q --no-install-recommends -t bookworm-backports "${qemu_pkgs[@]}"
fi

# arm64 chroots run their maintainer scripts under qemu-user.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    log "mounting binfmt_misc"
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    log "enabling qemu-aarch64 binfmt"
    update-binfmts --enable qemu-aarch64 || update-binfmts --import qemu-aarch64
fi

if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
        log "adding Rust target aarch64-unknown-linux-gnu"
        rustup target add aarch64-unknown-linux-gnu
    fi
else
    echo "scripts/setup.sh: rustup not found; install Rust (https://rustup.rs) first" >&2
    exit 1
fi

"$(dirname "$0")/fetch-models.sh"

log "setup complete"
