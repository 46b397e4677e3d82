#!/usr/bin/env bash
# Run every test of AgentCom: unit, actor and black-box tests (the latter start the real
# binary on free loopback ports), then the dashboard's real-browser test (web/test/, Node's
# test runner driving Debian's Chromium through playwright-core against the real binary).
#
# Installs what the tests need on a fresh Debian machine, once: Chromium (apt) when
# /usr/bin/chromium is absent, strace (apt) when absent, fuse3 (apt) when not root and
# fusermount3 is absent, Node.js (apt) when `node` is absent, and web/node_modules
# (`npm ci`, pinned by web/package-lock.json) when it is missing, and Python's venv
# module (apt python3-venv) when absent, for the contract test (scripts/contract.sh,
# schemathesis against GET /api/openapi.json; it installs its pinned schemathesis into
# target/contract-venv itself). Runs every suite and fails if any fails.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
APT_UPDATED=""
apt_install() {
  local log
  log="$(mktemp)"
  echo "==> installing $* (apt)"
  if { [ -n "$APT_UPDATED" ] || $SUDO apt-get update -q >"$log" 2>&1; } &&
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >>"$log" 2>&1; then
    APT_UPDATED=1
    rm -f "$log"
  else
    cat "$log" >&2
    rm -f "$log"
    echo "error: could not install $*" >&2
    exit 1
  fi
}

if [ ! -x /usr/bin/chromium ]; then apt_install chromium; fi
# tests/sync_strace.rs checks every acknowledgement follows a real fsync, under strace.
if ! command -v strace >/dev/null 2>&1; then apt_install strace; fi
# tests/power_loss.rs mounts lossyfs (FUSE, /dev/fuse): root mounts it with mount(2)
# itself; any other user needs the setuid fusermount3 from fuse3.
if [ "$(id -u)" != 0 ] && ! command -v fusermount3 >/dev/null 2>&1; then apt_install fuse3; fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then apt_install nodejs npm; fi
# scripts/contract.sh makes a virtual environment for schemathesis.
if ! command -v python3 >/dev/null 2>&1; then apt_install python3 python3-venv; fi
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then apt_install python3-venv; fi
if [ ! -f web/node_modules/playwright-core/package.json ]; then
  echo "==> npm ci (web/)"
  (cd web && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "==> cargo build -p agentcom -p lossyfs"
cargo build --quiet -p agentcom -p lossyfs

failed=()
echo "==> Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast || failed+=("rust")
else
  cargo test --workspace --no-fail-fast || failed+=("rust")
fi

echo "==> contract test (schemathesis against docs/openapi.yaml: scripts/contract.sh)"
AGENTCOM_BIN="$PWD/target/debug/agentcom" ./scripts/contract.sh || failed+=("contract")

echo "==> dashboard browser test (node --test web/test/)"
AGENTCOM_BIN="$PWD/target/debug/agentcom" node --test web/test/ || failed+=("browser")

if [ "${#failed[@]}" -ne 0 ]; then
  echo "FAILED: ${failed[*]} tests" >&2
  exit 1
fi
echo "all tests passed"
