#!/usr/bin/env bash
# Run every test of AgentCom: unit, actor and black-box tests (the latter start the real
# binary on free loopback ports). Installs what the tests need on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
