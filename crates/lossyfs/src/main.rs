//! `lossyfs [--ignore-fsync] BACKING MOUNTPOINT`: mount, print one line
//! `lossyfs: mounted MOUNTPOINT`, then serve until unmounted.
//!
//! `--ignore-fsync` (or SIGUSR1, from then on): answer fsync without writing anything back.
//!
//! Power cut: `kill -9` the daemon (unsynced data is lost with its memory), then
//! `umount -l MOUNTPOINT` (or `fusermount3 -uz`); the next mount removes the names created
//! in directories that were never fsynced. Clean stop: `umount MOUNTPOINT`, which writes
//! everything back first. Needs /dev/fuse and root (it mounts with mount(2) itself,
//! no fusermount or libfuse needed).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::atomic::Ordering;

use fuser::MountOption;
use lossyfs::fs::{LossyFs, IGNORE_FSYNC};

extern "C" fn ignore_fsync_from_now(_signal: libc::c_int) {
    IGNORE_FSYNC.store(true, Ordering::Relaxed);
}

fn main() -> ExitCode {
    let mut ignore_fsync = false;
    let mut paths = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.to_str() {
            Some("--ignore-fsync") => ignore_fsync = true,
            Some(s) if s.starts_with('-') => return usage(&format!("unknown option {s}")),
            _ => paths.push(PathBuf::from(arg)),
        }
    }
    let [backing, mountpoint] = paths.as_slice() else {
        return usage("expected BACKING and MOUNTPOINT");
    };
    let backing = match backing.canonicalize() {
        Ok(p) if p.is_dir() => p,
        _ => return usage(&format!("{} is not a directory", backing.display())),
    };
    // After a power cut: drop the names created but never made durable.
    match lossyfs::fs::power_on(&backing) {
        Ok(removed) if removed.is_empty() => {}
        Ok(removed) => eprintln!(
            "lossyfs: removed {} name(s) whose directory was never fsynced: {removed:?}",
            removed.len()
        ),
        Err(e) => {
            eprintln!("lossyfs: cannot apply the journal of unsynced names: {e}");
            return ExitCode::FAILURE;
        }
    }
    IGNORE_FSYNC.store(ignore_fsync, Ordering::Relaxed);
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    let handler: extern "C" fn(libc::c_int) = ignore_fsync_from_now;
    unsafe { libc::signal(libc::SIGUSR1, handler as libc::sighandler_t) };
    let options = [
        MountOption::FSName("lossyfs".to_string()),
        MountOption::RW,
        MountOption::NoAtime,
    ];
    let mut session = match fuser::Session::new(LossyFs::new(backing), mountpoint, &options) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lossyfs: cannot mount {}: {e}", mountpoint.display());
            return ExitCode::FAILURE;
        }
    };
    println!("lossyfs: mounted {}", mountpoint.display());
    let _ = std::io::stdout().flush();
    match session.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lossyfs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("lossyfs: {problem}\nusage: lossyfs [--ignore-fsync] BACKING MOUNTPOINT");
    ExitCode::from(2)
}
