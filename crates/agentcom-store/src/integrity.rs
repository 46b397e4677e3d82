//! Checks that make damage to the store's files visible when the store is opened, where
//! sled 0.34.7 alone lets it pass.
//!
//! sled checks a CRC on every log message, but its recovery treats the first message that
//! fails it (or a blob file that cannot be read) as the torn tail of an interrupted write:
//! it stops there, overwrites the rest of the segment and opens with every later write
//! gone. A flipped byte in the middle of the log, a truncated log or a damaged blob of the
//! last run therefore open "successfully", minus acknowledged writes. A missing blob file is
//! skipped (its page is dropped) and other damage makes sled panic. These checks close it:
//!
//! - the **commit watermark**: every applied batch takes the next commit number and writes
//!   it with the counters of the tables it touches (in the batch's transaction), and
//!   [`Watermark`], a small file beside sled's, records a commit number known to be
//!   durable: it is written only after the log sync that covers it. A store whose greatest
//!   commit number is below the file's lost acknowledged writes;
//! - the **full scan**: every record of every table is read at open (sled checks the CRC of
//!   every page it reads) and counted against the per-table counters kept with the writes;
//! - [`catch_panic`]: a panic inside sled while opening becomes an error.
//!
//! sled's recovery also *rewrites* the log after the point where it stopped (it fills the
//! rest of the segment and clears later segments), so what it could not read is gone even
//! if the cause is fixed. [`check_files_readable`] therefore runs before sled: a file that cannot
//! be opened (permissions, a directory in its place) refuses the store while nothing has
//! been touched, and making the file readable again brings the whole store back.

use std::cell::{Cell, RefCell};
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::Once;

/// Remove the snapshot files sled was writing when it stopped (`snap.<lsn>.generating`).
///
/// sled writes a snapshot under that name, syncs it and renames it into place, removing
/// older snapshots only after the rename; a file still named so was interrupted, and the
/// snapshot before it is still there. But sled 0.34.7 reads the highest-named `snap.*`
/// file, the interrupted one included, and refuses to open when it is incomplete: a crash
/// at the wrong moment of an open would read as damage. Without the file, sled advances
/// from the previous snapshot (or the log) and writes the snapshot again.
pub(crate) fn remove_interrupted_snapshots(dir: &Path) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut removed = false;
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            fs::remove_file(dir.join(&*name))?;
            removed = true;
        }
    }
    if removed {
        crate::sync_dir(dir)?;
    }
    Ok(())
}

/// Check, before sled opens `dir`, that every file in it (and in `dir/blobs`) can be
/// opened the way sled opens it: sled's recovery would take an unreadable blob for the end
/// of the log and discard everything written after it.
pub(crate) fn check_files_readable(dir: &Path) -> Result<(), String> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    };
    let unreadable = |path: &Path, e: std::io::Error| {
        format!(
            "cannot read {}: {e}. If the file is intact, make it readable by the hub's user \
             and start again (nothing has been changed); otherwise restore a backup",
            path.display()
        )
    };
    for entry in entries {
        let path = entry.map_err(|e| unreadable(dir, e))?.path();
        if path.file_name() == Some("blobs".as_ref()) {
            for blob in fs::read_dir(&path).map_err(|e| unreadable(&path, e))? {
                let blob = blob.map_err(|e| unreadable(&path, e))?.path();
                open_file(&blob, false).map_err(|e| unreadable(&blob, e))?;
            }
        } else {
            // sled opens its log for writing too.
            let log = path.file_name() == Some("db".as_ref());
            open_file(&path, log).map_err(|e| unreadable(&path, e))?;
        }
    }
    Ok(())
}

fn open_file(path: &Path, write: bool) -> std::io::Result<()> {
    let file = fs::OpenOptions::new().read(true).write(write).open(path)?;
    if file.metadata()?.is_file() {
        Ok(())
    } else {
        Err(std::io::Error::other("not a regular file"))
    }
}

/// The watermark's file name, in sled's directory (so that it moves with the store when
/// `agentcom restore` puts a damaged store aside). sled ignores files it did not name.
pub(crate) const WATERMARK_FILE: &str = "agentcom.watermark";
const WATERMARK_TMP: &str = "agentcom.watermark.tmp";
const MAGIC: [u8; 4] = *b"ACWM";
/// Magic, the counter (u64 BE), the CRC32 of both (BE).
const WATERMARK_LEN: usize = 16;

/// The commit watermark file: the highest commit counter known to be durable in the log.
///
/// It is rewritten in place (one `pwrite` of 16 bytes, within one disk sector) after every
/// flush, but synced only when it is created (at open) and when the engine is dropped: the
/// kernel writes it back within its dirty-page expiry otherwise. Because every value is
/// written after the log sync that made it durable, the file never claims more than the
/// log holds, even after a power cut; it may lag behind, which only weakens the check.
pub(crate) struct Watermark {
    file: File,
}

impl Watermark {
    /// The watermark recorded under `dir`, `None` if there is no file (a new store, or one
    /// last opened by a build without the watermark).
    pub(crate) fn read(dir: &Path) -> Result<Option<u64>, String> {
        let path = dir.join(WATERMARK_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "cannot read the commit watermark {}: {e}",
                    path.display()
                ))
            }
        };
        decode(&bytes).map(Some).ok_or_else(|| {
            format!(
                "the commit watermark {} is damaged ({} bytes, expected {WATERMARK_LEN} with a valid checksum)",
                path.display(),
                bytes.len()
            )
        })
    }

    /// Write `value` as the watermark under `dir`, replacing any previous file atomically
    /// (temporary file, sync, rename, directory sync).
    pub(crate) fn create(dir: &Path, value: u64) -> std::io::Result<Watermark> {
        let tmp = dir.join(WATERMARK_TMP);
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(&encode(value))?;
        file.sync_data()?;
        fs::rename(&tmp, dir.join(WATERMARK_FILE))?;
        crate::sync_dir(dir)?;
        Ok(Watermark { file })
    }

    /// Record `value`; call only once the log covering it is synced.
    pub(crate) fn store(&self, value: u64) -> std::io::Result<()> {
        self.file.write_all_at(&encode(value), 0)
    }

    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

fn encode(value: u64) -> [u8; WATERMARK_LEN] {
    let mut out = [0u8; WATERMARK_LEN];
    out[..4].copy_from_slice(&MAGIC);
    out[4..12].copy_from_slice(&value.to_be_bytes());
    let crc = crc32(&out[..12]);
    out[12..].copy_from_slice(&crc.to_be_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != WATERMARK_LEN || bytes[..4] != MAGIC {
        return None;
    }
    let crc = u32::from_be_bytes(bytes[12..].try_into().ok()?);
    (crc32(&bytes[..12]) == crc).then(|| u64::from_be_bytes(bytes[4..12].try_into().unwrap()))
}

/// CRC-32 (IEEE), bitwise: it runs on 12 bytes per flush and per open.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

thread_local! {
    /// Set while [`catch_panic`] runs on this thread: its panics are recorded, not printed.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Run `f`, turning a panic into `Err` with the panic's message and location. The panic is
/// not printed (no "thread 'main' panicked" on the operator's terminal): the caller
/// reports it. Panics on other threads are printed as before.
pub(crate) fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let at = info
                    .location()
                    .map(|l| format!(" (at {}:{})", l.file(), l.line()))
                    .unwrap_or_default();
                let message = panic_message(info.payload());
                CAUGHT.with(|c| *c.borrow_mut() = Some(format!("{message}{at}")));
            } else {
                previous(info);
            }
        }));
    });
    let was_quiet = QUIET.with(|q| q.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was_quiet));
    result.map_err(|payload| {
        CAUGHT
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| panic_message(payload.as_ref()))
    })
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn watermark_round_trips_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Watermark::read(dir.path()).unwrap(), None);
        let w = Watermark::create(dir.path(), 7).unwrap();
        assert_eq!(Watermark::read(dir.path()).unwrap(), Some(7));
        w.store(1234).unwrap();
        assert_eq!(Watermark::read(dir.path()).unwrap(), Some(1234));
        assert!(!dir.path().join(WATERMARK_TMP).exists());

        let path = dir.path().join(WATERMARK_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[6] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(Watermark::read(dir.path()).unwrap_err().contains("damaged"));
        fs::write(&path, b"").unwrap();
        assert!(Watermark::read(dir.path()).unwrap_err().contains("damaged"));
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        assert!(Watermark::read(dir.path()).is_err());
    }

    #[test]
    fn only_interrupted_snapshots_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "snap.00000000000045D3",
            "snap.0000000000004800.generating",
            "db",
        ] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        remove_interrupted_snapshots(dir.path()).unwrap();
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["db", "snap.00000000000045D3"]);
        remove_interrupted_snapshots(&dir.path().join("missing")).unwrap();
    }

    #[test]
    fn unreadable_files_are_named_before_sled_opens() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_files_readable(&dir.path().join("missing")).is_ok());
        fs::create_dir(dir.path().join("blobs")).unwrap();
        fs::write(dir.path().join("db"), b"log").unwrap();
        fs::write(dir.path().join("blobs/123"), b"blob").unwrap();
        assert!(check_files_readable(dir.path()).is_ok());
        fs::remove_file(dir.path().join("blobs/123")).unwrap();
        fs::create_dir(dir.path().join("blobs/123")).unwrap();
        let err = check_files_readable(dir.path()).unwrap_err();
        assert!(
            err.contains("blobs/123") && err.contains("not a regular file"),
            "{err}"
        );
    }

    #[test]
    fn a_caught_panic_becomes_its_message() {
        let err = catch_panic(|| -> u32 { panic!("boom {}", 42) }).unwrap_err();
        assert!(err.contains("boom 42"), "{err}");
        assert_eq!(catch_panic(|| 5).unwrap(), 5);
        assert!(!QUIET.with(Cell::get));
    }
}
