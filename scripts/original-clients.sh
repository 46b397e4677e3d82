#!/usr/bin/env bash
# Run the original AgentCom's own Node clients, unmodified, against this hub, the way a
# user of the original would, and check every command and every answer they print or act
# on (issue 10's acceptance: "the original's clients, run unmodified with an admin token,
# pass every check that the original passes").
#
# The original's code is not part of this repository. Point ORIGINAL_CLIENTS_DIR at a copy
# of the original repository's files laid out as upstream (at least sidecar/index.js,
# sidecar/lib/, sidecar/package.json, sidecar/start.sh, sidecar/add-agent.js,
# sidecar/remove-agent.js, sidecar/agentcom-submit.js and scripts/*.js); without it the
# script says so and exits 0. Versions used for docs/COMPATIBILITY.md: sidecar/index.js,
# lib/ and package.json as of upstream 356b8fe (the sidecar of the reference commit
# 85d8e59), add-agent.js as of 8f7c462, the other files in their only stored version.
#
# What it brings itself, outside the repository, in a temporary directory:
# - pm2 (npm, into the work directory) when `pm2` is not on PATH: add-agent.js and
#   remove-agent.js drive pm2;
# - a stand-in `openclaw` on PATH: add-agent.js's pre-flight requires the OpenClaw agent
#   CLI and writes `openclaw agent --message ... --session-id ${TASK_ID}` as the sidecar's
#   wake command. The stand-in answers --version and, woken for a task, writes
#   results/<task>.started and then results/<task>.json {"status":"success",...}, as an
#   agent would;
# - a git repository holding a copy of ORIGINAL_CLIENTS_DIR, set as the hub's default repo
#   (add-agent.js clones it, start.sh pulls from it).
# The hub runs with --open-registration (add-agent.js registers without a token, as the
# original allowed) and, when the original's scripts/ack.js is there, with the admin token
# hard-coded in the original's scripts (ack.js, send_file.js, ping_gcu.js,
# broadcast_review.js post to 127.0.0.1:4000 with it), so those run unmodified too.
#
# Environment: ORIGINAL_CLIENTS_DIR (required), AGENTCOM_BIN (default
# target/debug/agentcom, built with `cargo build -p agentcom` when missing), PORT (default
# 4000; the scripts with a hard-coded address are skipped on another port), KEEP=1 keeps
# the work directory. Exit status: 0 when every check passed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ORIG=${ORIGINAL_CLIENTS_DIR:-}
if [ -z "$ORIG" ] || [ ! -f "$ORIG/sidecar/index.js" ]; then
  echo "original-clients: skipped: ORIGINAL_CLIENTS_DIR is not set to a copy of the original's"
  echo "  client files (sidecar/index.js, sidecar/add-agent.js, ..., scripts/*.js); see the header"
  exit 0
fi
ORIG=$(cd "$ORIG" && pwd)
for tool in node npm git curl; do
  command -v "$tool" >/dev/null || { echo "original-clients: $tool is required" >&2; exit 2; }
done

BIN=${AGENTCOM_BIN:-$ROOT/target/debug/agentcom}
if [ ! -x "$BIN" ]; then
  cargo build -p agentcom || exit 2
fi
PORT=${PORT:-4000}
HUB=http://127.0.0.1:$PORT
if curl -s -o /dev/null "$HUB/health"; then
  echo "original-clients: something already listens on port $PORT; set PORT" >&2
  exit 2
fi

W=$(mktemp -d /tmp/original-clients.XXXXXX)
export HOME=$W/home
export PM2_HOME=$HOME/.pm2
mkdir -p "$HOME" "$W/bin" "$W/out"
HUB_PID=""
LISTEN_PID=""
SOLO_PID=""
cleanup() {
  [ -n "$LISTEN_PID" ] && kill "$LISTEN_PID" 2>/dev/null
  [ -n "$SOLO_PID" ] && kill "$SOLO_PID" 2>/dev/null
  if command -v pm2 >/dev/null; then pm2 kill >/dev/null 2>&1; fi
  [ -n "$HUB_PID" ] && kill "$HUB_PID" 2>/dev/null && wait "$HUB_PID" 2>/dev/null
  if [ "${KEEP:-}" = 1 ]; then echo "work directory kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------
# Tools: pm2, the openclaw stand-in
# ---------------------------------------------------------------------------
if ! command -v pm2 >/dev/null; then
  echo "==> installing pm2 (npm) into $W/tools"
  mkdir -p "$W/tools"
  (cd "$W/tools" && npm init -y >/dev/null && npm install --no-audit --no-fund pm2 >/dev/null 2>&1) ||
    { echo "original-clients: could not install pm2" >&2; exit 2; }
  ln -s "$W/tools/node_modules/.bin/pm2" "$W/bin/pm2"
fi
cat >"$W/bin/openclaw" <<'EOF'
#!/bin/sh
# Stand-in for the OpenClaw agent CLI (not installable here): answers --version, and
# when woken for a task writes the files the sidecar watches in ./results.
if [ "${1:-}" = "--version" ]; then echo "openclaw-stand-in 0.0.0"; exit 0; fi
all="$*"
sid=""
while [ $# -gt 0 ]; do
  if [ "$1" = "--session-id" ]; then sid=$2; shift; fi
  shift
done
[ -n "$sid" ] || { echo "openclaw stand-in: no --session-id" >&2; exit 2; }
mkdir -p results
: >"results/$sid.started"
# A task whose description says HOLD is left unfinished the first time (the sidecar is
# then killed with it in hand, to exercise its crash recovery).
case "$all" in *HOLD*)
  [ -e "$HOME/.openclaw-held-$sid" ] || { : >"$HOME/.openclaw-held-$sid"; exit 0; } ;;
esac
(sleep 1; printf '{"status":"success","output":"done by the openclaw stand-in","tokens_used":7}\n' >"results/$sid.json") >/dev/null 2>&1 &
exit 0
EOF
chmod +x "$W/bin/openclaw"
export PATH=$W/bin:$PATH

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
N=0
PASS=0
FAIL=0
SKIP=0
FAILED=()
ok() { N=$((N + 1)); PASS=$((PASS + 1)); printf '  ok    %2d  %s\n' "$N" "$1"; }
bad() { N=$((N + 1)); FAIL=$((FAIL + 1)); FAILED+=("$N $1"); printf '  FAIL  %2d  %s\n' "$N" "$1"; }
skip() { N=$((N + 1)); SKIP=$((SKIP + 1)); printf '  skip  %2d  %s (%s)\n' "$N" "$1" "$2"; }
# check NAME COMMAND...: passes when the command succeeds
check() { local name=$1; shift; if "$@" >/dev/null 2>&1; then ok "$name"; else bad "$name"; fi; }
# has FILE TEXT: the file contains the text
has() { grep -qF -- "$2" "$1"; }
# eventually SECONDS COMMAND...: the command succeeds within the time
eventually() {
  local until=$((SECONDS + $1)); shift
  while ! "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$until" ] && return 1
    sleep 0.5
  done
}
# js EXPR: evaluates EXPR with j = the JSON read from stdin; prints strings bare
js() {
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{let j=null;try{j=JSON.parse(s)}catch{}
    const r=(new Function("j","return ("+process.argv[1]+")"))(j);
    process.stdout.write((typeof r==="string"?r:JSON.stringify(r))+"\n")})' "$1"
}
api() { curl -s -H "Authorization: Bearer $ADMIN" "$@"; }
is_true() { [ "$(cat)" = "true" ]; }
task_field() { api "$HUB/api/tasks/$1" | js "$2"; }
task_completed() { [ "$(task_field "$1" 'j && j.status')" = completed ]; }
log_count() { grep -cF -- "$2" "$1" 2>/dev/null || true; }
# after_line FILE LINE TEXT: TEXT appears in FILE after line number LINE
after_line() { tail -n +"$(($2 + 1))" "$1" 2>/dev/null | grep -qF -- "$3"; }
agent_listed() { curl -s "$HUB/api/agents" | js "j.agents.some(a => a.agent_id === '$1')" | is_true; }
agent_unlisted() { curl -s "$HUB/api/agents" | js "!j.agents.some(a => a.agent_id === '$1')" | is_true; }

# ---------------------------------------------------------------------------
# The origin repository (add-agent.js clones it; start.sh pulls from it)
# ---------------------------------------------------------------------------
mkdir -p "$W/origin"
(cd "$ORIG" && tar cf - --exclude=node_modules --exclude=.git --exclude=config.json \
  --exclude=queue.json --exclude=results --exclude=logs --exclude=sidecar.log .) |
  (cd "$W/origin" && tar xf -)
(cd "$W/origin" && git init -q -b main && git add -A &&
  git -c user.name=original -c user.email=original@localhost commit -qm "original clients") ||
  { echo "original-clients: could not make the origin repository" >&2; exit 2; }

# ---------------------------------------------------------------------------
# The hub
# ---------------------------------------------------------------------------
ADMIN=""
if [ -f "$ORIG/scripts/ack.js" ]; then
  ADMIN=$(grep -o "[0-9a-f]\{64\}" "$ORIG/scripts/ack.js" | head -1)
fi
[ -n "$ADMIN" ] || ADMIN=$(openssl rand -hex 32)
"$BIN" serve --bind "127.0.0.1:$PORT" --data-dir "$W/data" --open-registration \
  --admin-token "$ADMIN" >"$W/out/hub.log" 2>&1 &
HUB_PID=$!
echo "original clients: $ORIG"
echo "hub: $BIN on $HUB (work directory $W)"
echo
echo "hub"
check "hub answers GET /health" eventually 30 curl -sf "$HUB/health"
api -X PUT -H 'Content-Type: application/json' -d "{\"url\":\"file://$W/origin\"}" \
  "$HUB/api/config/default-repo" >/dev/null

# ---------------------------------------------------------------------------
# add-agent.js: onboarding, sidecar under pm2, test task
# ---------------------------------------------------------------------------
A1=orig-sidecar-1
SC1=$HOME/.agentcom/$A1/repo/sidecar
LOG1=$SC1/sidecar.log
echo
echo "add-agent.js --hub $HUB --name $A1"
(cd "$ORIG/sidecar" && node add-agent.js --hub "$HUB" --name "$A1") >"$W/out/add-agent-1.out" 2>&1
rc=$?
O=$W/out/add-agent-1.out
check "add-agent.js exits 0" test "$rc" = 0
check "[1/7] pre-flight checks done (GET /health)" has "$O" "[1/7] Pre-flight checks... done"
check "[2/7] registration done (POST /api/onboard/register 201)" has "$O" "[2/7] Registering agent \"$A1\"... done"
check "[3/7] clone of the hub's default_repo done" has "$O" "[3/7] Cloning repository... done"
check "[4/7] sidecar config written with the hub's ws url and token" \
  bash -c "grep -qF '\"hub_url\": \"ws://127.0.0.1:$PORT/ws\"' '$SC1/config.json' &&
           grep -q '\"token\": \"[0-9a-f]\{64\}\"' '$SC1/config.json'"
check "[5/7] npm install done" has "$O" "[5/7] Installing dependencies... done"
check "[6/7] pm2 process started" has "$O" "[6/7] Starting pm2 process \"agentcom-$A1\"... done"
check "[7/7] urgent test task submitted and polled to completed" has "$O" "[7/7] Verifying with test task... polling task task-"
check "add-agent.js prints \"is online!\"" has "$O" "Agent \"$A1\" is online!"
T0=$(grep -o 'polling task task-[0-9a-f]*' "$O" | awk '{print $3}')

echo
echo "the sidecar (index.js under pm2)"
check "sidecar identified (identify with token, client_type sidecar)" has "$LOG1" '"event":"identified"'
check "GET /api/agents lists the agent, idle, capabilities [\"code\"]" bash -c \
  "curl -s '$HUB/api/agents' | node -e 'let s=\"\";process.stdin.on(\"data\",d=>s+=d).on(\"end\",()=>{const a=JSON.parse(s).agents.find(a=>a.agent_id===\"$A1\");process.exit(a&&a.fsm_state===\"idle\"&&JSON.stringify(a.capabilities)===JSON.stringify([\"code\"])?0:1)})'"
check "test task: task_assign received, task_accepted acked" \
  bash -c "grep -qF '\"event\":\"task_received\",\"agent_id\":\"$A1\",\"task_id\":\"$T0\"' '$LOG1' && grep -qF '\"event\":\"task_ack\"' '$LOG1'"
check "test task: wake command run, .started confirmed" \
  bash -c "grep -qF '\"event\":\"wake_success\"' '$LOG1' && grep -qF '\"event\":\"confirmation_received\"' '$LOG1'"
check "test task: the result file is reported as task_complete" has "$LOG1" "\"event\":\"task_complete\",\"agent_id\":\"$A1\",\"task_id\":\"$T0\""
check "test task completed in the hub (priority 0, result, tokens_used 7)" bash -c \
  "api() { curl -s -H 'Authorization: Bearer $ADMIN' \"\$@\"; }; api '$HUB/api/tasks/$T0' | node -e 'let s=\"\";process.stdin.on(\"data\",d=>s+=d).on(\"end\",()=>{const t=JSON.parse(s);process.exit(t.status===\"completed\"&&t.priority===0&&t.tokens_used===7&&t.metadata.onboarding_test===true&&t.result.status===\"success\"?0:1)})'"
check "no error frame from the hub in the sidecar log" bash -c "! grep -qF '\"event\":\"hub_error\"' '$LOG1'"

# ---------------------------------------------------------------------------
# agentcom-submit.js with the admin token
# ---------------------------------------------------------------------------
echo
echo "agentcom-submit.js --token <admin>"
submit() { # NAME ARGS...: runs the client; output in $W/out/submit-NAME.out, exit code in .rc
  local name=$1; shift
  (cd "$ORIG/sidecar" && node agentcom-submit.js --hub "$HUB" "$@") >"$W/out/submit-$name.out" 2>&1
  echo $? >"$W/out/submit-$name.rc"
}
tid() { grep -o 'Task ID:   task-[0-9a-f]*' "$W/out/submit-$1.out" | awk '{print $3}'; }
submitted() { # NAME PRIORITY: exit 0, success line, the priority, status queued
  local o=$W/out/submit-$1.out
  [ "$(cat "$W/out/submit-$1.rc")" = 0 ] && has "$o" "Task submitted successfully." &&
    has "$o" "Priority:  $2" && has "$o" "Status:    queued" && [ -n "$(tid "$1")" ]
}
submit low --description "orig: low task" --token "$ADMIN" --priority low
submit normal --description "orig: normal task" --token "$ADMIN"
submit urgent --description "orig: urgent task" --token "$ADMIN" --priority urgent
submit critical --description "orig: critical task" --token "$ADMIN" --priority critical
submit target --description "orig: targeted task" --token "$ADMIN" --target "$A1" --metadata '{"issue": 42}'
check "--priority low: 201, Priority 3, Status queued" submitted low 3
check "default priority normal: 201, Priority 2" submitted normal 2
check "--priority urgent: 201, Priority 0" submitted urgent 0
check "--priority critical: 201, Priority 0 (urgent)" submitted critical 0
check "--target/--metadata: 201, metadata {issue:42, target_agent}" bash -c \
  "curl -s -H 'Authorization: Bearer $ADMIN' '$HUB/api/tasks/$(tid target)' | grep -q '\"target_agent\":\"$A1\"' &&
   curl -s -H 'Authorization: Bearer $ADMIN' '$HUB/api/tasks/$(tid target)' | grep -q '\"issue\":42'"
for p in low normal urgent critical target; do
  check "the $p task is completed by the sidecar" eventually 90 task_completed "$(tid $p)"
done
# The low task went at once to the idle sidecar; the others waited for it, and the
# priority-0 ones (urgent, critical) must go before the normal one submitted before them.
check "queued critical and urgent tasks run before an older normal one" bash -c \
  "t() { curl -s -H 'Authorization: Bearer $ADMIN' '$HUB/api/tasks/'\$1 | node -e 'let s=\"\";process.stdin.on(\"data\",d=>s+=d).on(\"end\",()=>console.log(JSON.parse(s).history.find(h=>h.event===\"assigned\").timestamp))'; };
   [ \$(t $(tid critical)) -le \$(t $(tid normal)) ] && [ \$(t $(tid urgent)) -le \$(t $(tid normal)) ]"
TRACK=$(grep -o 'Track: curl .*' "$W/out/submit-critical.out" | sed 's/^Track: //')
check "the printed Track: curl command shows the task completed" bash -c "$TRACK | grep -q '\"status\":\"completed\"'"
submit bogus --description x --token "$ADMIN" --priority bogus
check "--priority bogus refused by the client (exit 1)" bash -c \
  "[ \$(cat '$W/out/submit-bogus.rc') = 1 ] && grep -qF 'must be one of' '$W/out/submit-bogus.out'"
submit badtoken --description x --token "$(printf 0%.0s {1..64})"
check "a bad token: \"Error submitting task (HTTP 401)\", exit 1" bash -c \
  "[ \$(cat '$W/out/submit-badtoken.rc') = 1 ] && grep -qF '(HTTP 401)' '$W/out/submit-badtoken.out'"

# ---------------------------------------------------------------------------
# scripts/: connect, send, poll, ack and the hard-coded ones
# ---------------------------------------------------------------------------
echo
echo "scripts/"
mint() { api -X POST -H 'Content-Type: application/json' -d "{\"agent_id\":\"$1\"}" "$HUB/admin/tokens" | js j.token; }
TL=$(mint loash)
TG=$(mint gcu-conditions-permitting)
TF=$(mint flere-imsaho)
# connect.js needs the ws package, which the original's repository root does not install
# (its users had it around); it comes from npm into the work directory, via NODE_PATH.
mkdir -p "$W/scriptdeps"
(cd "$W/scriptdeps" && npm init -y >/dev/null && npm install --no-audit --no-fund ws@8 >/dev/null 2>&1)
C=$W/out/connect-loash.out
(cd "$ORIG" && NODE_PATH=$W/scriptdeps/node_modules AGENT_ID=loash AGENT_TOKEN=$TL HUB_URL=ws://127.0.0.1:$PORT/ws exec node scripts/connect.js) >"$C" 2>&1 &
LISTEN_PID=$!
check "connect.js: [connected] and ✓ Identified as loash" eventually 10 bash -c "grep -qF '[connected]' '$C' && grep -qF '✓ Identified as loash' '$C'"
sendjs() { # FROM TOKEN ARGS...
  local from=$1 tok=$2; shift 2
  (cd "$ORIG" && AGENT_ID=$from AGENT_TOKEN=$tok HUB_URL=$HUB node scripts/send.js "$@") 2>&1
}
sendjs gcu-conditions-permitting "$TG" loash "hello loash from gcu" >"$W/out/send-direct.out"
check "send.js <to>: ✓ Sent: { status: 'sent', id }" bash -c "grep -qF \"✓ Sent: {\" '$W/out/send-direct.out' && grep -qF \"status: 'sent'\" '$W/out/send-direct.out' && grep -qF \"id: '\" '$W/out/send-direct.out'"
check "connect.js receives the direct message (📨 gcu-conditions-permitting: ...)" eventually 10 has "$C" "📨 gcu-conditions-permitting: hello loash from gcu"
sendjs gcu-conditions-permitting "$TG" --broadcast "hello everyone" >"$W/out/send-broadcast.out"
check "send.js --broadcast: ✓ Sent" has "$W/out/send-broadcast.out" "status: 'sent'"
check "connect.js receives the broadcast" eventually 10 has "$C" "📨 gcu-conditions-permitting: hello everyone"
sendjs loash "$TL" gcu-conditions-permitting "mail for gcu" >"$W/out/send-offline.out"
check "send.js to an offline agent: ✓ Sent" has "$W/out/send-offline.out" "status: 'sent'"
polljs() { # AGENT TOKEN ARGS...
  local who=$1 tok=$2; shift 2
  (cd "$ORIG" && AGENT_ID=$who AGENT_TOKEN=$tok HUB_URL=$HUB node scripts/poll.js "$@") 2>&1
}
polljs gcu-conditions-permitting "$TG" >"$W/out/poll-1.out"
check "poll.js: Mailbox: 1 message(s), last_seq: N" grep -qE '^Mailbox: 1 message\(s\), last_seq: [0-9]+$' "$W/out/poll-1.out"
check "poll.js: [seq:N] loash: mail for gcu" grep -qE '^\[seq:[0-9]+\] loash: mail for gcu$' "$W/out/poll-1.out"
polljs gcu-conditions-permitting "$TG" --ack >"$W/out/poll-ack.out"
check "poll.js --ack: ✓ Acked through seq N" grep -qE 'Acked through seq [0-9]+' "$W/out/poll-ack.out"
polljs gcu-conditions-permitting "$TG" >"$W/out/poll-2.out"
check "poll.js after the ack: Mailbox: 0 message(s)" has "$W/out/poll-2.out" "Mailbox: 0 message(s)"
if [ "$PORT" = 4000 ] && [ -f "$ORIG/scripts/ping_gcu.js" ]; then
  (cd "$ORIG" && node scripts/ping_gcu.js) >"$W/out/ping_gcu.out" 2>&1
  check "ping_gcu.js (hard-coded hub and token): Status pings sent to GCU and Loash" has "$W/out/ping_gcu.out" "Status pings sent to GCU and Loash"
  check "connect.js receives ping_gcu.js's message to loash" eventually 10 has "$C" ": Loash — status check."
  polljs gcu-conditions-permitting "$TG" >"$W/out/poll-3.out"
  check "poll.js shows ping_gcu.js's message to gcu" has "$W/out/poll-3.out" "GCU — status check."
  (cd "$ORIG" && node scripts/broadcast_review.js) >"$W/out/broadcast_review.out" 2>&1
  check "broadcast_review.js: Review policy broadcast sent" has "$W/out/broadcast_review.out" "Review policy broadcast sent"
  check "connect.js receives the review-policy broadcast" eventually 10 has "$C" "All Minds — policy update"
  echo "a note from a file" >"$W/out/note.txt"
  (cd "$ORIG" && node scripts/send_file.js flere-imsaho "$W/out/note.txt") >"$W/out/send_file.out" 2>&1
  check "send_file.js: {\"status\":\"sent\",\"id\":...}" grep -qE '"status":"sent"' "$W/out/send_file.out"
  polljs flere-imsaho "$TF" >"$W/out/poll-f.out"
  SEQF=$(sed -n 's/^Mailbox: .*last_seq: \([0-9]*\)$/\1/p' "$W/out/poll-f.out")
  check "poll.js as flere-imsaho shows send_file.js's note" has "$W/out/poll-f.out" ": a note from a file"
  (cd "$ORIG" && node scripts/ack.js "$SEQF") >"$W/out/ack.out" 2>&1
  check "ack.js <seq> (hard-coded): {\"status\":\"acked\",\"up_to\":seq}" has "$W/out/ack.out" "\"up_to\":$SEQF"
  polljs flere-imsaho "$TF" >"$W/out/poll-f2.out"
  check "poll.js after ack.js: Mailbox: 0 message(s)" has "$W/out/poll-f2.out" "Mailbox: 0 message(s)"
else
  for c in ping_gcu.js broadcast_review.js send_file.js ack.js; do
    skip "$c" "hard-coded to 127.0.0.1:4000; PORT=$PORT"
  done
fi

# The listener is an idle agent without capabilities: the scheduler would offer it tasks
# it never accepts. It leaves before the task checks below.
kill "$LISTEN_PID" 2>/dev/null
wait "$LISTEN_PID" 2>/dev/null
LISTEN_PID=""

# ---------------------------------------------------------------------------
# Restart and SIGTERM: the sidecar closes with 1000 and must read 1000 back
# ---------------------------------------------------------------------------
echo
echo "shutdown and restart"
closes_1000_after() { # LOG LINE: after LINE, a shutdown then ws_close with code 1000
  tail -n +"$(($2 + 1))" "$1" | grep -F '"event":"ws_close"' | head -1 | grep -qF '"code":1000'
}
L=$(wc -l <"$LOG1")
IDS=$(log_count "$LOG1" '"event":"identified"')
pm2 restart "agentcom-$A1" >/dev/null 2>&1
check "pm2 restart: the sidecar reads close code 1000 (the hub answers the close handshake)" eventually 15 closes_1000_after "$LOG1" "$L"
check "pm2 restart: the sidecar identifies again" eventually 30 bash -c "[ \$(grep -cF '\"event\":\"identified\"' '$LOG1') -gt $IDS ]"
L=$(wc -l <"$LOG1")
IDS=$(log_count "$LOG1" '"event":"identified"')
PID1=$(pm2 pid "agentcom-$A1" 2>/dev/null | tail -1)
[ -n "$PID1" ] && [ "$PID1" != 0 ] && kill -TERM "$PID1"
check "SIGTERM: shutdown logged with signal SIGTERM" eventually 10 after_line "$LOG1" "$L" '"event":"shutdown","agent_id":"'"$A1"'","signal":"SIGTERM"'
check "SIGTERM: the sidecar reads close code 1000" eventually 10 closes_1000_after "$LOG1" "$L"
check "after SIGTERM pm2 restarts it and it identifies again" eventually 30 bash -c "[ \$(grep -cF '\"event\":\"identified\"' '$LOG1') -gt $IDS ]"
submit after --description "orig: task after restart" --token "$ADMIN" --priority critical
check "a critical task after the restarts is completed" eventually 60 task_completed "$(tid after)"

# Crash recovery: kill -9 with a task in hand; the restarted sidecar reports it
# (task_recovering) and acts on the hub's task_continue or task_reassign.
submit hold --description "orig: HOLD task (crash recovery)" --token "$ADMIN" --priority critical
TH=$(tid hold)
check "crash recovery: the sidecar holds the task (.started confirmed)" eventually 30 has "$LOG1" "\"event\":\"confirmation_received\",\"agent_id\":\"$A1\",\"task_id\":\"$TH\""
L=$(wc -l <"$LOG1")
PID1=$(pm2 pid "agentcom-$A1" 2>/dev/null | tail -1)
[ -n "$PID1" ] && [ "$PID1" != 0 ] && kill -KILL "$PID1"
check "crash recovery: after kill -9 the restarted sidecar finds the task and reports task_recovering" \
  eventually 30 bash -c "tail -n +$((L + 1)) '$LOG1' | grep -qF '\"event\":\"recovery_found\",\"agent_id\":\"$A1\",\"task_id\":\"$TH\"' &&
    tail -n +$((L + 1)) '$LOG1' | grep -qF '\"event\":\"recovery_reported\"'"
check "crash recovery: the hub answers task_continue or task_reassign" eventually 10 bash -c \
  "tail -n +$((L + 1)) '$LOG1' | grep -qE '\"event\":\"recovery_(continued|reassigned)\"'"
check "crash recovery: the task is completed in the end" eventually 60 task_completed "$TH"
check "no error frame from the hub in the sidecar log, all along" bash -c "! grep -qF '\"event\":\"hub_error\"' '$LOG1'"
cp "$LOG1" "$W/out/sidecar-1.log"

# A sidecar run by hand (README way: config.json from the example), no pm2.
A2=orig-sidecar-2
git clone -q "$W/origin" "$W/solo"
(cd "$W/solo/sidecar" && npm install --production --no-audit --no-fund >/dev/null 2>&1)
T2=$(curl -s -X POST -H 'Content-Type: application/json' -d "{\"agent_id\":\"$A2\"}" "$HUB/api/onboard/register" | js j.token)
node -e 'const fs=require("fs");const c=JSON.parse(fs.readFileSync(process.argv[1]));
  Object.assign(c,{agent_id:process.argv[2],token:process.argv[3],hub_url:process.argv[4],capabilities:["solo"],wake_command:"openclaw agent --session-id ${TASK_ID}"});
  fs.writeFileSync(process.argv[5],JSON.stringify(c,null,2))' \
  "$W/solo/sidecar/config.json.example" "$A2" "$T2" "ws://127.0.0.1:$PORT/ws" "$W/solo/sidecar/config.json"
S=$W/out/solo.out
(cd "$W/solo/sidecar" && exec node index.js) >"$S" 2>&1 &
SOLO_PID=$!
check "hand-run sidecar (node index.js) identifies" eventually 15 has "$S" "] identified { agent_id: '$A2' }"
curl -s -H "Authorization: Bearer $T2" -H 'Content-Type: application/json' \
  -d '{"description":"solo task","needed_capabilities":["solo"]}' "$HUB/api/tasks" >"$W/out/solo-task.json"
TS=$(js j.task_id <"$W/out/solo-task.json")
check "hand-run sidecar completes a task needing its capability" eventually 30 task_completed "$TS"
kill -TERM "$SOLO_PID"
wait "$SOLO_PID"
src=$?
SOLO_PID=""
check "SIGTERM to the hand-run sidecar: ws_close { code: 1000, reason: 'shutdown' }, exit 0" \
  bash -c "grep -qF \"ws_close { code: 1000, reason: 'shutdown' }\" '$S' && [ $src = 0 ]"
check "the hub drops the hand-run sidecar from GET /api/agents" eventually 10 agent_unlisted "$A2"

# ---------------------------------------------------------------------------
# remove-agent.js
# ---------------------------------------------------------------------------
echo
echo "remove-agent.js"
A3=orig-sidecar-3
(cd "$ORIG/sidecar" && node add-agent.js --hub "$HUB" --name "$A3") >"$W/out/add-agent-3.out" 2>&1
check "a second add-agent.js run onboards $A3 (test task completed)" has "$W/out/add-agent-3.out" "Agent \"$A3\" is online!"
(cd "$ORIG/sidecar" && node remove-agent.js --name "$A1" --hub "$HUB" --token "$ADMIN") >"$W/out/remove-1.out" 2>&1
rc=$?
R=$W/out/remove-1.out
check "remove-agent.js --token <admin> exits 0" test "$rc" = 0
check "[1/3] pm2 process stopped and deleted" bash -c "grep -A1 -F '[1/3]' '$R' | grep -qF 'done' && ! pm2 pid agentcom-$A1 2>/dev/null | grep -q '[1-9]'"
check "[2/3] hub token revoked (DELETE /admin/tokens/<name> 200)" bash -c "grep -A1 -F '[2/3]' '$R' | grep -qF 'done'"
check "the revoked agent has no token left (GET /admin/tokens)" bash -c \
  "! curl -s -H 'Authorization: Bearer $ADMIN' '$HUB/admin/tokens' | grep -qF '\"agent_id\":\"$A1\"'"
check "[3/3] agent directory removed" bash -c "grep -A1 -F '[3/3]' '$R' | grep -qF 'done' && [ ! -d '$HOME/.agentcom/$A1' ]"
check "the removed agent leaves GET /api/agents" eventually 10 agent_unlisted "$A1"
(cd "$ORIG/sidecar" && node remove-agent.js --name "$A3" --hub "$HUB") >"$W/out/remove-3.out" 2>&1
rc=$?
R=$W/out/remove-3.out
check "remove-agent.js without --token reads the agent's own token and revokes it (exit 0, [2/3] done)" \
  bash -c "[ $rc = 0 ] && grep -qF '(Read token from' '$R' && grep -A1 -F '[2/3]' '$R' | grep -qF 'done'"
check "the agent's own revocation removes $A3 from GET /api/agents" eventually 10 agent_unlisted "$A3"

echo
echo "$PASS passed, $FAIL failed, $SKIP skipped ($N checks)"
for f in "${FAILED[@]}"; do echo "  failed: $f"; done
[ "$FAIL" = 0 ]
