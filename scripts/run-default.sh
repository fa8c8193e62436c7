#!/usr/bin/env bash
# Builds the default basalt appliance image for x86_64 UEFI and boots it under
# QEMU, on a fresh Debian bookworm machine. Run as root.
#
#   scripts/run-default.sh              # serial console on this terminal; leave with Ctrl-A X
#   scripts/run-default.sh --until-ready
#                                       # exit once the agent reports ready
#
# The image lands in out/; `basalt run` never modifies it (the VM writes to an overlay).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/run-default.sh: run as root (mmdebstrap needs it)" >&2
    exit 1
fi
scripts/setup.sh

echo "==> building basalt and basalt-agent" >&2
cargo build --release --locked -p basalt
cargo build --release --locked -p basalt-agent --target x86_64-unknown-linux-gnu
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
basalt="$target_dir/release/basalt"

"$basalt" build --out out
image=out/basalt-appliance-0.1.0-x86_64-uefi.img
exec "$basalt" run "$image" --disk-size 4GiB "$@"
