//! Which directory under the data directory holds the live database.
//!
//! A store starts in `db`. Online compaction writes a complete copy beside it, in the next
//! generation `db.<n>`, and switches to it by writing the name into [`CURRENT`]: a synced
//! temporary file renamed over it, then the data directory synced. That rename is the one
//! moment of the switch, so after a crash at any point exactly one database is live: the
//! old one (the copy is not named yet) or the new one (the old one is no longer named).
//! Every other generation directory is an interrupted copy or a database already replaced,
//! and is removed once the live one is open ([`remove_stale`]).
//!
//! Without `CURRENT` the live database is `db` (every store before compaction existed, and
//! every store since restored from a backup). A `CURRENT` that names a missing directory is
//! refused rather than replaced with an empty store, and so is a missing `CURRENT` when
//! `db` is gone but later generations are there: a fresh store would be opened over them,
//! and they would be removed as stale.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::sync_dir;

/// The file naming the live database directory.
pub const CURRENT: &str = "CURRENT";
/// The first generation, and the live one when there is no [`CURRENT`].
pub const FIRST: &str = "db";

/// The generation number of a database directory name: `db` is 0, `db.<n>` is `n`; any
/// other name (`db.replaced-…`, `backups`) is not a generation.
pub fn generation(name: &str) -> Option<u64> {
    if name == FIRST {
        return Some(0);
    }
    let n = name.strip_prefix("db.")?;
    if n.is_empty() || n.len() > 19 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The name of the live database directory (not checked to exist).
pub fn live_name(data_dir: &Path) -> io::Result<String> {
    match std::fs::read_to_string(data_dir.join(CURRENT)) {
        Ok(raw) => {
            let name = raw.trim_end_matches('\n');
            if generation(name).is_none() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{CURRENT} names {name:?}, which is not a database directory"),
                ));
            }
            Ok(name.to_string())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(FIRST.to_string()),
        Err(e) => Err(e),
    }
}

/// The path of the live database directory, refusing a [`CURRENT`] that names one missing.
pub fn live_path(data_dir: &Path) -> io::Result<PathBuf> {
    let name = live_name(data_dir)?;
    let path = data_dir.join(&name);
    if name != FIRST && !path.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{CURRENT} names {name}, which is missing: the database was moved or deleted"),
        ));
    }
    if name == FIRST && !path.exists() {
        let mut later = generations(data_dir)?;
        later.sort_by_key(|n| generation(n));
        if !later.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "there is no {CURRENT} and no {FIRST}, but there is {}: {CURRENT}, which \
                     names the live one, was lost; write the newest complete one's name \
                     into {CURRENT} to open it",
                    later.join(", ")
                ),
            ));
        }
    }
    Ok(path)
}

/// The generation directories after the first (`db.<n>`) in the data directory.
fn generations(data_dir: &Path) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if generation(&name).is_some_and(|g| g > 0) && entry.file_type()?.is_dir() {
            found.push(name);
        }
    }
    Ok(found)
}

/// The directory for the next generation after `live`.
pub fn next_name(live: &str) -> String {
    format!("db.{}", generation(live).unwrap_or(0) + 1)
}

/// Make `name` the live database, durably: once this returns, a crash opens `name`.
pub fn switch_to(data_dir: &Path, name: &str) -> io::Result<()> {
    let tmp = data_dir.join(format!("{CURRENT}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{name}\n").as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, data_dir.join(CURRENT))?;
    sync_dir(data_dir)
}

/// Forget [`CURRENT`], durably, so that `db` is live again (a restore does this before it
/// moves the restored database into `db`).
pub fn reset(data_dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(data_dir.join(CURRENT)) {
        Ok(()) => sync_dir(data_dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Remove every generation directory but the live one (interrupted copies, replaced
/// databases), and a temporary `CURRENT` left by a crash. Only called with the live
/// database open, so no other process is using the data directory. Returns what it removed.
pub fn remove_stale(data_dir: &Path, live: &str) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale_generation = name != live && generation(&name).is_some();
        if stale_generation && entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
            removed.push(entry.path());
        } else if name == format!("{CURRENT}.tmp") {
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    if !removed.is_empty() {
        sync_dir(data_dir)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_db_and_db_dot_number_only() {
        assert_eq!(generation("db"), Some(0));
        assert_eq!(generation("db.7"), Some(7));
        for other in [
            "db.",
            "db.x",
            "db.replaced-1",
            "db.-1",
            "backups",
            "dbx",
            "db.1/2",
        ] {
            assert_eq!(generation(other), None, "{other}");
        }
        assert_eq!(next_name("db"), "db.1");
        assert_eq!(next_name("db.41"), "db.42");
    }

    #[test]
    fn current_switches_and_resets() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(live_name(dir.path()).unwrap(), "db");
        std::fs::create_dir(dir.path().join("db.1")).unwrap();
        switch_to(dir.path(), "db.1").unwrap();
        assert_eq!(live_name(dir.path()).unwrap(), "db.1");
        assert_eq!(live_path(dir.path()).unwrap(), dir.path().join("db.1"));
        reset(dir.path()).unwrap();
        assert_eq!(live_name(dir.path()).unwrap(), "db");
    }

    #[test]
    fn a_current_naming_a_missing_or_foreign_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CURRENT), "db.3\n").unwrap();
        assert!(live_path(dir.path()).is_err());
        std::fs::write(dir.path().join(CURRENT), "../elsewhere\n").unwrap();
        assert!(live_name(dir.path()).is_err());
    }

    #[test]
    fn a_lost_current_is_refused_when_db_is_gone_but_later_generations_are_there() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            live_path(dir.path()).unwrap(),
            dir.path().join("db"),
            "a new store"
        );
        std::fs::create_dir(dir.path().join("db.2")).unwrap();
        std::fs::create_dir(dir.path().join("db.1")).unwrap();
        let e = live_path(dir.path()).unwrap_err();
        assert!(e.to_string().contains("but there is db.1, db.2"), "{e}");
        // With `db` there, the later ones are an interrupted compaction's copy.
        std::fs::create_dir(dir.path().join("db")).unwrap();
        assert_eq!(live_path(dir.path()).unwrap(), dir.path().join("db"));
    }

    #[test]
    fn stale_generations_go_and_everything_else_stays() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["db", "db.1", "db.2", "db.replaced-20260101", "backups"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("CURRENT.tmp"), "db.2").unwrap();
        let mut removed = remove_stale(dir.path(), "db.1").unwrap();
        removed.sort();
        assert_eq!(
            removed,
            vec![
                dir.path().join("CURRENT.tmp"),
                dir.path().join("db"),
                dir.path().join("db.2")
            ]
        );
        for kept in ["db.1", "db.replaced-20260101", "backups"] {
            assert!(dir.path().join(kept).is_dir(), "{kept}");
        }
    }
}
