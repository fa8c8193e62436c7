#!/usr/bin/env bash
# Power cuts during a signed update, as many as wanted: QEMU is killed at a
# random moment while `update stage` writes the inactive slot, while `update
# apply` arms the boot loader and during the first boot of the new version,
# in turn (three cuts per freshly flashed VM), and every restart must come up
# on a good slot. Run as root on a machine set up by scripts/setup.sh.
#
#   scripts/power-cut.sh            # 3 cuts, as in scripts/test.sh
#   scripts/power-cut.sh 30         # 30 cuts: 10 VMs, about 5 minutes each under TCG
#   BASALT_POWER_CUT_SEED=123 scripts/power-cut.sh 3   # replay a run (each run prints its seed)
set -euo pipefail
cd "$(dirname "$0")/.."

cuts="${1:-3}"
case "$cuts" in
    '' | *[!0-9]* | 0)
        echo "usage: scripts/power-cut.sh [N]   (N: number of power cuts, at least 1)" >&2
        exit 2
        ;;
esac
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/power-cut.sh: run as root (image builds run mmdebstrap and keep file owners)" >&2
    exit 1
fi

echo "==> building basalt-agent for x86_64" >&2
cargo build --release --locked -p basalt-agent --target x86_64-unknown-linux-gnu
echo "==> $cuts power cut(s)" >&2
BASALT_POWER_CUTS="$cuts" exec cargo test --locked -p qemu-tests --test images \
    power_cut::x86_64_power_cuts_during_update -- --exact --nocapture
