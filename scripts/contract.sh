#!/usr/bin/env bash
# Contract tests: schemathesis checks the real hub against its own description
# (docs/openapi.yaml, as served at GET /api/openapi.json).
#
# Starts target/debug/agentcom (or $AGENTCOM_BIN) on a free loopback port with a fresh
# temporary data directory, mints an admin token for the run, runs schemathesis with the
# conformance checks below, and stops the hub. Installs schemathesis (pinned in
# scripts/contract-requirements.txt) into target/contract-venv when it is missing.
#
# The hub runs with its rate limits off (--rate-limit-per-sec 0
# --anonymous-rate-limit-per-sec 0): the run sends hundreds of requests a second from one
# caller, and the 429s of a throttled run would test the limiter, not the contract.
#
# Two passes. The first tests every operation but these:
#   POST /api/admin/reset                  restarts every actor: requests running beside
#                                          it may get 503 actor_unavailable
#   POST /api/admin/actors/{name}/restart  the same, one actor at a time
#   POST /api/admin/actors/{name}/crash    a test hook (the hub runs without --test-hooks,
#                                          so it answers 404); a crashed actor is
#                                          unavailable for its restart backoff
#   POST /api/dashboard/push-subscribe     keeps generated https endpoints, to which the
#                                          hub would send Web Push alerts (off the machine)
# The second pass then tests reset and restart alone, one request at a time, with the
# actor names read from GET /api/admin/actors. tests/openapi.rs checks that every route
# is described; black-box tests cover crash and push-subscribe (tests/durability.rs,
# tests/push.rs).
#
# One worker: schemathesis's workers are threads, and hypothesis describing its
# strategies from two threads at once trips a CPython 3.11 parser race ("AST constructor
# recursion depth mismatch") now and then. The run takes about a minute on 2 cores; each
# pass is cut off at 10.
#
# Settings (environment): CONTRACT_MAX_EXAMPLES (default 100) cases per operation and
# phase in the first pass; CONTRACT_SEED (default 1, so that a run repeats; "random" for
# a new one); CONTRACT_CHECKS (default the five conformance checks below); CONTRACT_REPORT
# (default junit; e.g. har to see every request, in target/contract-report/);
# CONTRACT_ST_ARGS (more `st run` flags).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/contract-venv
REQUIREMENTS=scripts/contract-requirements.txt
if ! "$VENV/bin/st" --version >/dev/null 2>&1 ||
  ! cmp -s "$REQUIREMENTS" "$VENV/.requirements.txt"; then
  echo "==> installing schemathesis into $VENV (pip)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  cp "$REQUIREMENTS" "$VENV/.requirements.txt"
fi

BIN="${AGENTCOM_BIN:-$PWD/target/debug/agentcom}"
if [ -z "${AGENTCOM_BIN:-}" ]; then
  cargo build --quiet -p agentcom
fi

WORK="$(mktemp -d)"
HUB_PID=""
cleanup() {
  if [ -n "$HUB_PID" ]; then
    kill "$HUB_PID" 2>/dev/null || true
    wait "$HUB_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

ADMIN="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
AGENTCOM_LOG=warn "$BIN" serve \
  --bind 127.0.0.1:0 \
  --data-dir "$WORK/data" \
  --admin-token "$ADMIN" \
  --rate-limit-per-sec 0 \
  --anonymous-rate-limit-per-sec 0 \
  >"$WORK/hub.out" 2>"$WORK/hub.err" </dev/null &
HUB_PID=$!

ADDR=""
for _ in $(seq 1 300); do
  ADDR="$(sed -n 's#^AgentCom listening on http://##p' "$WORK/hub.out" | head -n1)"
  [ -n "$ADDR" ] && break
  if ! kill -0 "$HUB_PID" 2>/dev/null; then break; fi
  sleep 0.1
done
if [ -z "$ADDR" ]; then
  echo "error: the hub did not start" >&2
  cat "$WORK/hub.err" >&2
  exit 1
fi
BASE="http://$ADDR"
echo "==> hub on $BASE (data in $WORK/data)"

# The run's own admin token, under an agent id no generated request will name (the
# description lets schemathesis revoke any agent's tokens, the bootstrap `admin` included).
RUNNER="contract-runner-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
TOKEN="$(
  "$VENV/bin/python" - "$BASE" "$ADMIN" "$RUNNER" <<'PY'
import json, sys, urllib.request
base, admin, runner = sys.argv[1:]
req = urllib.request.Request(
    base + "/admin/tokens",
    data=json.dumps({"agent_id": runner, "role": "admin"}).encode(),
    headers={"Authorization": "Bearer " + admin, "Content-Type": "application/json"},
)
print(json.load(urllib.request.urlopen(req))["token"])
PY
)"

# The description as the hub serves it. Read from a file: given the URL, schemathesis
# leaves out the operation that serves the description.
"$VENV/bin/python" - "$BASE" "$WORK/openapi.json" <<'PY'
import sys, urllib.request
base, out = sys.argv[1:]
with urllib.request.urlopen(base + "/api/openapi.json") as r, open(out, "wb") as f:
    f.write(r.read())
PY

SEED="${CONTRACT_SEED:-1}"
SEED_ARGS=(--seed "$SEED")
if [ "$SEED" = random ]; then SEED_ARGS=(); fi

CHECKS="${CONTRACT_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance}"
# st run with the settings common to both passes, then the pass's own flags.
st_run() {
  timeout 600 "$VENV/bin/st" --config-file scripts/contract.toml run "$WORK/openapi.json" \
    --url "$BASE" \
    --header "Authorization: Bearer $TOKEN" \
    --checks "$CHECKS" \
    "${SEED_ARGS[@]}" \
    --workers 1 \
    --request-timeout 30 \
    --generation-database none \
    --no-color ${CONTRACT_ST_ARGS:-} \
    "$@"
}

status=0
echo "==> schemathesis $("$VENV/bin/st" --version | awk '{print $NF}'): every operation but the disruptive ones"
st_run \
  --exclude-operation-id reset \
  --exclude-operation-id restartActor \
  --exclude-operation-id crashActor \
  --exclude-operation-id pushSubscribe \
  --max-examples "${CONTRACT_MAX_EXAMPLES:-100}" \
  --report "${CONTRACT_REPORT:-junit}" --report-dir target/contract-report \
  || status=$?
if [ "$status" = 124 ]; then echo "error: schemathesis ran out of its 10 minutes" >&2; fi

echo "==> schemathesis: reset and actor restarts, alone"
st_run \
  --include-operation-id reset \
  --include-operation-id restartActor \
  --include-operation-id listActors \
  --max-examples 10 \
  || status=$?

# A run whose own token stopped working tested little but 401s after that point.
if ! "$VENV/bin/python" - "$BASE" "$TOKEN" <<'PY'; then
import sys, urllib.request
base, token = sys.argv[1:]
req = urllib.request.Request(base + "/api/dashboard/whoami", headers={"Authorization": "Bearer " + token})
urllib.request.urlopen(req)
PY
  echo "error: the run's admin token no longer works at the end of the run" >&2
  status=1
fi
if ! kill -0 "$HUB_PID" 2>/dev/null; then
  echo "error: the hub exited during the run" >&2
  cat "$WORK/hub.err" >&2
  status=1
fi
exit "$status"
