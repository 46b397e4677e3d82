# Recipes for those who have `just`; each is one plain command from the README.

# Start the hub (sled in ./data, listening on 127.0.0.1:4000).
run:
    cargo run --release -p agentcom -- serve

# Run every test.
test:
    ./scripts/test.sh

# Formatting and lints, as CI expects them.
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings

# Issue 11's headline figures: the real hub driven through every scenario, one JSON line
# each (benches/hub; results go to docs/BENCHMARKS.md by hand). `just bench lifecycle`
# runs one scenario; the names are in docs/BENCHMARKS.md, as are the variables that scale
# them up. BENCH_JSON=<file> also appends the lines to a file.
bench *scenarios:
    cargo bench -p agentcom --bench hub -- {{scenarios}}

# The component benchmarks of earlier rounds: group commit, the live backup of 1 GiB
# inside one process, online compaction (task throughput and memory per idle connection
# are the harness's `lifecycle` and `idle` scenarios: `just bench lifecycle idle`).
bench-parts:
    cargo bench -p agentcom-hub --bench ack_writes
    cargo bench -p agentcom-hub --bench backup
    cargo bench -p agentcom-hub --bench compaction

# Crash drill soak: 200 kill -9 trials under mixed load (tests/crash_drill.rs; 20 by default).
soak:
    CRASH_DRILL_TRIALS=200 cargo nextest run -p agentcom --test crash_drill --no-capture

# Property-based fuzzing of every HTTP route and websocket frame type against the real hub
# (tests/fuzz.rs; 500 cases per test in the test command). FUZZ_SEED=<n> replays a run.
fuzz cases="5000":
    FUZZ_CASES={{cases}} cargo nextest run -p agentcom --test fuzz --no-capture

# Adversarial soak: every abuse pattern of issue 9 at once while a normal agent works
# (tests/adversarial_soak.rs; 25 s in the test command; here a release build, three
# minutes). SOAK_PATTERNS=a,b runs a subset.
abuse-soak secs="180":
    SOAK_SECS={{secs}} cargo nextest run --release -p agentcom --test adversarial_soak --no-capture

# Contract test alone: schemathesis against docs/openapi.yaml (also part of `just test`).
contract:
    ./scripts/contract.sh
