#!/usr/bin/env bash
# Runs every test pinion has: unit, property, doc and integration tests of the
# whole workspace, the real-peer interop tests (pynng / NNG 1.11), and a build
# check of the fuzz targets. Installs what it needs first (idempotent; needs
# root or sudo for apt-get on a fresh Debian 12 machine).
#
#   scripts/test.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

bash scripts/setup-test-env.sh

# The hostile-input suite (crates/pinion-cli/tests/hostile) measures the
# legitimate traffic's latency against a live hub: it runs against the
# release build, the one users run (a debug hub spends 5-10x the CPU per
# message, which turns every flood into a latency figure about the build).
echo "== cargo build --release (the hub the hostile-input suite attacks)"
cargo build --release -p pinion-cli --bin pinion
export PINION_HOSTILE_BIN="$REPO/target/release/pinion"

echo "== cargo test --workspace"
cargo test --workspace --all-targets
cargo test --workspace --doc

echo "== the hub's tests again with the other fan-out send path (writev; the default is io_uring)"
PINION_FANOUT_SEND=writev cargo test -p pinion-hub

echo "== fuzz targets build (cargo check)"
(cd fuzz && cargo check --quiet --bins)

echo "== done: all tests passed"
