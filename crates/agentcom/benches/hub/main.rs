//! One harness for issue 11's headline figures: every scenario drives the real hub binary
//! (release, as `cargo bench` builds it) over its public protocol, on a free loopback port
//! with a temporary data directory, and prints one JSON line with each figure, the
//! baseline it is compared with (measured in the same run where there is one to measure,
//! the issue's target otherwise) and the ratio.
//!
//! ```sh
//! cargo bench -p agentcom --bench hub                   # every scenario
//! cargo bench -p agentcom --bench hub -- lifecycle      # one (or several) by name
//! ```
//!
//! Scenarios: `lifecycle`, `latency`, `routes`, `fanout`, `idle`, `registration`,
//! `backup`, `restart`. Each takes well under a minute with its defaults; the variables
//! named in each module scale it up. `BENCH_JSON=<file>` also appends every JSON line to
//! that file. Without `--bench` (as under `cargo test --benches`) every scenario runs at
//! a smoke size.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

#[path = "../support/mod.rs"]
mod support;

mod agent;
mod bare;
mod client;

mod backup;
mod fanout;
mod idle;
mod latency;
mod lifecycle;
mod registration;
mod restart;
mod routes;

/// Every scenario, in the order `all` runs them.
const SCENARIOS: [&str; 8] = [
    "lifecycle",
    "latency",
    "routes",
    "fanout",
    "idle",
    "registration",
    "backup",
    "restart",
];

/// Sizes scale down to a smoke when the binary is not run by `cargo bench`.
#[derive(Clone, Copy)]
pub struct Mode {
    pub full: bool,
}

impl Mode {
    /// `name` from the environment, else `full` or `smoke` by mode.
    pub fn size(self, name: &str, full: usize, smoke: usize) -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if self.full { full } else { smoke })
    }

    /// A duration in seconds, `name` from the environment (fractions allowed).
    pub fn secs(self, name: &str, full: f64, smoke: f64) -> Duration {
        let s = std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if self.full { full } else { smoke });
        Duration::from_secs_f64(s)
    }
}

/// Print one scenario's JSON line, and append it to `$BENCH_JSON` when set.
pub fn emit(line: Value) {
    let text = line.to_string();
    println!("{text}");
    if let Ok(path) = std::env::var("BENCH_JSON") {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
        writeln!(file, "{text}").expect("append the JSON line");
    }
}

/// The `q` quantile (0..=1) of `values`, in the unit they are in; 0 when empty.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// CPU seconds (user + system) that process `pid` has used so far; `None` is this one.
/// Beside a rate, the hub's and the harness's shares tell whether the load generator,
/// on the same two cores, held the hub back.
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = pid.map_or("/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).expect("proc stat");
    // Fields after the command (which may hold spaces) start at the third: utime is the
    // 14th of the line, stime the 15th.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf only reads a configuration value.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Rounded for the JSON line: two decimals are more than these figures resolve.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = Mode {
        full: args.iter().any(|a| a == "--bench"),
    };
    let asked: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    for name in &asked {
        assert!(
            *name == "all" || SCENARIOS.contains(name),
            "no scenario {name:?}; scenarios: {}",
            SCENARIOS.join(", ")
        );
    }
    let run_all = asked.is_empty() || asked.contains(&"all");
    for name in SCENARIOS {
        if !run_all && !asked.contains(&name) {
            continue;
        }
        // A runtime per scenario: nothing one leaves behind slows the next.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let line = rt.block_on(async move {
            match name {
                "lifecycle" => lifecycle::run(mode).await,
                "latency" => latency::run(mode).await,
                "routes" => routes::run(mode).await,
                "fanout" => fanout::run(mode).await,
                "idle" => idle::run(mode).await,
                "registration" => registration::run(mode).await,
                "backup" => backup::run(mode).await,
                "restart" => restart::run(mode).await,
                _ => unreachable!(),
            }
        });
        rt.shutdown_timeout(Duration::from_secs(1));
        emit(line);
    }
}
