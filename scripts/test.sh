#!/usr/bin/env bash
# Runs every basalt test on a fresh Debian bookworm machine: installs what the
# tests need (scripts/setup.sh), builds the agent for both architectures, then
# runs the unit, integration and QEMU tests. Run as root.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -p basalt       # extra arguments go to `cargo test`
#
# The QEMU tests build real images (mmdebstrap downloads Debian packages) and
# boot them with software emulation; the first run takes about 15 minutes.
# Setting BASALT_SKIP_QEMU=1 skips the tests that boot a VM, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: run as root (image builds run mmdebstrap and keep file owners)" >&2
    exit 1
fi
scripts/setup.sh

# One invocation for both: build scripts and proc macros are built once.
echo "==> building basalt-agent for x86_64 and aarch64" >&2
cargo build --release --locked -p basalt-agent \
    --target x86_64-unknown-linux-gnu --target aarch64-unknown-linux-gnu
echo "==> cargo test" >&2
cargo test --workspace --locked "$@"
