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

echo "== cargo test --workspace"
cargo test --workspace --all-targets
cargo test --workspace --doc

echo "== fuzz targets build (cargo check)"
(cd fuzz && cargo check --quiet --bins)

echo "== done: all tests passed"
