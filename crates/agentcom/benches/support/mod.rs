//! What the `agentcom` benchmarks share: the real hub binary (release, as `cargo bench`
//! builds it) started on a free loopback port with a temporary data directory.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

/// The admin token every benchmark hub is started with.
pub const ADMIN: &str = "abababababababababababababababababababababababababababababababab";

/// Start `agentcom serve` over `data` with long timers (nothing idles out, no backup runs
/// during a benchmark); logs only errors. Answers the process (killed when dropped) and
/// the address it listens on.
pub async fn start_hub(data: &std::path::Path) -> (tokio::process::Child, String) {
    start_hub_with(data, &[]).await
}

/// [`start_hub`] with more `serve` flags (`extra`; not one [`start_hub`] already passes,
/// which the command line would refuse as given twice).
pub async fn start_hub_with(
    data: &std::path::Path,
    extra: &[&str],
) -> (tokio::process::Child, String) {
    let mut hub = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentcom"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--admin-token",
            ADMIN,
            "--ws-idle-timeout",
            "1h",
            "--presence-ttl",
            "1h",
            "--backup-interval",
            "24h",
        ])
        .args(extra)
        .arg("--data-dir")
        .arg(data)
        .env("AGENTCOM_LOG", "error")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the hub");
    let mut lines = BufReader::new(hub.stdout.take().expect("stdout")).lines();
    let mut addr = String::new();
    while let Some(line) = lines.next_line().await.expect("read the hub's output") {
        if let Some(a) = line.strip_prefix("AgentCom listening on http://") {
            addr = a.to_string();
            break;
        }
    }
    assert!(!addr.is_empty(), "the hub printed no address");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (hub, addr)
}
