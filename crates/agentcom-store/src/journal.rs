//! The journal of the live database: every batch is appended here and synced before sled's
//! trees see it, so sled's own log needs syncing only at a checkpoint.
//!
//! Why: sled 0.34 hands its log buffer to an I/O thread (a wake-up, a `pwrite`, a
//! `sync_file_range`) at every transaction and at every flush. With the store applying a
//! round of about ten writes at a time, that came to two buffer writes, a sync and two
//! directory listings per round, about a third of the hub's CPU in the task lifecycle. A
//! journaled batch costs one `pwrite` and one `fdatasync` on the store's writer thread;
//! sled's trees take it with plain inserts, which sled writes out when its buffer fills.
//!
//! Recovery (see `SledDb::replay`): after a crash, sled holds the state of the last
//! checkpoint (its files were synced then) plus any part of the batches applied since, as
//! far as sled wrote them out, in no order we control. Every one of those batches is in the
//! journal, synced before it was applied, with the absolute values it wrote, the table
//! counters included. Replaying them in order restores exactly the state after the last
//! durable batch. A torn last record (a crash during its append) was never acknowledged.
//!
//! The file grows 1 MiB at a time, zeros written out with the record that needs the room,
//! and is reused, not emptied, at each checkpoint: its header is rewritten and records
//! overwrite the old ones from the start. Overwriting blocks already written needs no
//! metadata update, so most syncs are one data write and a cache flush (a sync of a
//! growing file also commits the file system's own journal). The records of a generation
//! are numbered on from its header's commit, so a stale record (numbered at or below it)
//! or the zeros past the end read as the end of the journal, like a torn record.
//!
//! Format, integers big-endian:
//! - header: `ACJ1`, the checkpoint's commit number (u64), CRC-32 of both (u32);
//! - records: body length (u32), CRC-32 of commit and body (u32), commit number (u64),
//!   body: operations, each `1` (put) or `2` (delete), the tree's number (u8), the key's
//!   length (u32) and the key, and for a put the value's length (u32) and the value.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The journal's file name inside a sled database directory.
pub(crate) const JOURNAL_FILE: &str = "journal";

const MAGIC: [u8; 4] = *b"ACJ1";
const HEADER_LEN: usize = 16;
const RECORD_HEAD: usize = 16;
const PUT: u8 = 1;
const DELETE: u8 = 2;

/// One write of a journaled batch, on a tree by number (a table's index, or the counters).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub tree: usize,
    pub key: Vec<u8>,
    /// `None` for a delete.
    pub value: Option<Vec<u8>>,
}

/// A batch being encoded as one record.
pub(crate) struct RecordWriter {
    buf: Vec<u8>,
}

impl RecordWriter {
    pub fn new(commit: u64) -> RecordWriter {
        let mut buf = Vec::with_capacity(1024);
        buf.extend_from_slice(&[0; 8]);
        buf.extend_from_slice(&commit.to_be_bytes());
        RecordWriter { buf }
    }

    pub fn put(&mut self, tree: usize, key: &[u8], value: &[u8]) {
        self.op(PUT, tree, key);
        self.bytes(value);
    }

    pub fn delete(&mut self, tree: usize, key: &[u8]) {
        self.op(DELETE, tree, key);
    }

    fn op(&mut self, kind: u8, tree: usize, key: &[u8]) {
        self.buf.push(kind);
        self.buf
            .push(u8::try_from(tree).expect("fewer than 256 trees"));
        self.bytes(key);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).expect("records are far below 4 GiB");
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(bytes);
    }

    /// The finished record.
    pub fn finish(mut self) -> Vec<u8> {
        let body_len = u32::try_from(self.buf.len() - RECORD_HEAD).expect("below 4 GiB");
        let crc = crc32fast::hash(&self.buf[8..]);
        self.buf[..4].copy_from_slice(&body_len.to_be_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_be_bytes());
        self.buf
    }
}

/// What a journal file holds.
#[derive(Debug, Default)]
pub(crate) struct Contents {
    /// The commit number of the checkpoint it follows (`None`: no complete header).
    pub base: Option<u64>,
    /// The records, in order, up to the first that is incomplete, fails its checksum or is
    /// not numbered next (a stale record of an earlier generation).
    pub records: Vec<(u64, Vec<Entry>)>,
}

/// Read the journal at `path` (`Ok(None)` if there is none). A record cut short, failing
/// its checksum or not numbered next ends it: the torn tail of an append that was never
/// acknowledged, or what is left of an earlier generation. A record
/// that passes its checksum but cannot be parsed is damage, an error.
pub(crate) fn read(path: &Path, trees: usize) -> Result<Option<Contents>, String> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read the journal {}: {e}", path.display()))?,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open the journal {}: {e}", path.display())),
    };
    let mut contents = Contents::default();
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Ok(Some(contents));
    };
    if header.iter().all(|&b| b == 0) {
        // A restart's header not yet written out when the machine stopped.
        return Ok(Some(contents));
    }
    if header[..4] != MAGIC || crc32fast::hash(&header[..12]) != be32(&header[12..]) {
        // A header is written alone, then synced, before any record: a damaged one is not
        // a torn append.
        return Err(format!(
            "the journal {} has a damaged header",
            path.display()
        ));
    }
    let base = be64(&header[4..12]);
    contents.base = Some(base);
    let mut next = base + 1;
    let mut at = HEADER_LEN;
    while let Some(head) = bytes.get(at..at + RECORD_HEAD) {
        let body_len = be32(&head[..4]) as usize;
        let Some(body) = bytes.get(at + RECORD_HEAD..at + RECORD_HEAD + body_len) else {
            break;
        };
        if crc32fast::hash(&bytes[at + 8..at + RECORD_HEAD + body_len]) != be32(&head[4..8]) {
            break;
        }
        let commit = be64(&head[8..16]);
        if commit != next {
            break;
        }
        next += 1;
        let entries = parse_body(body, trees).ok_or_else(|| {
            format!(
                "the journal {} holds a record (commit {commit}) that passes its checksum but \
                 cannot be read",
                path.display()
            )
        })?;
        contents.records.push((commit, entries));
        at += RECORD_HEAD + body_len;
    }
    Ok(Some(contents))
}

fn parse_body(mut body: &[u8], trees: usize) -> Option<Vec<Entry>> {
    fn take<'a>(body: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (body.get(..n)?, body.get(n..)?);
        *body = rest;
        Some(head)
    }
    fn sized(body: &mut &[u8]) -> Option<Vec<u8>> {
        let len = be32(take(body, 4)?) as usize;
        take(body, len).map(<[u8]>::to_vec)
    }
    let mut entries = Vec::new();
    while !body.is_empty() {
        let head = take(&mut body, 2)?;
        let tree = usize::from(head[1]);
        if tree >= trees {
            return None;
        }
        let key = sized(&mut body)?;
        let value = match head[0] {
            PUT => Some(sized(&mut body)?),
            DELETE => None,
            _ => return None,
        };
        entries.push(Entry { tree, key, value });
    }
    Some(entries)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// The file is extended this much at a time, with zeros written out, so that the records'
/// syncs overwrite blocks already allocated and written.
const EXTEND: u64 = 1 << 20;

/// The journal open for appending.
pub(crate) struct Journal {
    file: File,
    len: u64,
    /// The file's size: written (zeros or old records) up to here.
    allocated: u64,
    /// Set when a sync failed: what the kernel kept of the file is unknown (a failed
    /// `fdatasync` may leave pages marked clean that never reached the disk), so no later
    /// write may be acknowledged until the hub restarts and replays what is there.
    broken: Option<String>,
}

impl Journal {
    /// Start the journal afresh after a checkpoint at commit `base`: its header written and
    /// synced (and the directory synced, should the file be new). The file keeps its
    /// blocks unless it grew past `keep` bytes (a batch of large values).
    pub fn restart(dir: &Path, base: u64, keep: u64) -> std::io::Result<Journal> {
        let path = dir.join(JOURNAL_FILE);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut allocated = file.metadata()?.len();
        if allocated > keep {
            file.set_len(0)?;
            allocated = 0;
        }
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&MAGIC);
        header[4..12].copy_from_slice(&base.to_be_bytes());
        let crc = crc32fast::hash(&header[..12]);
        header[12..].copy_from_slice(&crc.to_be_bytes());
        file.write_all_at(&header, 0)?;
        file.sync_data()?;
        if !existed {
            crate::sync_dir(dir)?;
        }
        Ok(Journal {
            file,
            len: HEADER_LEN as u64,
            allocated: allocated.max(HEADER_LEN as u64),
            broken: None,
        })
    }

    /// Append a record and sync it: on `Ok` it is durable.
    pub fn append(&mut self, record: &[u8]) -> Result<(), String> {
        if let Some(why) = &self.broken {
            return Err(why.clone());
        }
        // A failed write leaves at most a partial record after the last good one, which
        // the next append overwrites (and which reads as a torn tail meanwhile).
        let end = self.len + record.len() as u64;
        if end > self.allocated {
            // Zeros read as the end of the journal (no record is numbered 0).
            let to = end.div_ceil(EXTEND) * EXTEND;
            let zeros = vec![0u8; (to - end) as usize];
            self.file
                .write_all_at(&zeros, end)
                .map_err(|e| format!("cannot extend the journal: {e}"))?;
            self.allocated = to;
        }
        self.file
            .write_all_at(record, self.len)
            .map_err(|e| format!("cannot write to the journal: {e}"))?;
        if let Err(e) = self.file.sync_data() {
            let why = format!(
                "the journal could not be synced ({e}); no write is accepted until the hub \
                 restarts"
            );
            self.broken = Some(why.clone());
            return Err(why);
        }
        self.len += record.len() as u64;
        Ok(())
    }

    /// Where the next record goes: the bytes of the current generation, header included.
    pub fn len(&self) -> u64 {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(commit: u64, key: &[u8]) -> Vec<u8> {
        let mut w = RecordWriter::new(commit);
        w.put(0, key, b"value");
        w.delete(3, b"gone");
        w.finish()
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_ends_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        assert!(read(&path, 4).unwrap().is_none());
        let mut j = Journal::restart(dir.path(), 7, 1 << 20).unwrap();
        j.append(&record(8, b"a")).unwrap();
        j.append(&record(9, b"b")).unwrap();
        let contents = read(&path, 4).unwrap().unwrap();
        assert_eq!(contents.base, Some(7));
        assert_eq!(contents.records.len(), 2);
        assert_eq!(
            contents.records[1],
            (
                9,
                vec![
                    Entry {
                        tree: 0,
                        key: b"b".to_vec(),
                        value: Some(b"value".to_vec())
                    },
                    Entry {
                        tree: 3,
                        key: b"gone".to_vec(),
                        value: None
                    }
                ]
            )
        );
        // A third record cut short, then one flipped byte in the second.
        let third = record(10, b"c");
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&third[..third.len() - 1], j.len()).unwrap();
        assert_eq!(read(&path, 4).unwrap().unwrap().records.len(), 2);
        let mut bytes = std::fs::read(&path).unwrap();
        let second = HEADER_LEN + record(8, b"a").len();
        bytes[second + RECORD_HEAD + 3] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(read(&path, 4).unwrap().unwrap().records.len(), 1);
        // A restart begins a generation: the old records are stale, and new ones overwrite
        // them from the start.
        let mut j = Journal::restart(dir.path(), 9, 1 << 20).unwrap();
        assert_eq!(j.len(), HEADER_LEN as u64);
        let contents = read(&path, 4).unwrap().unwrap();
        assert_eq!((contents.base, contents.records.len()), (Some(9), 0));
        j.append(&record(10, b"new")).unwrap();
        let contents = read(&path, 4).unwrap().unwrap();
        assert_eq!(contents.records.len(), 1);
        assert_eq!(contents.records[0].1[0].key, b"new");
        // A record not numbered next ends the journal.
        j.append(&record(12, b"skipped")).unwrap();
        assert_eq!(read(&path, 4).unwrap().unwrap().records.len(), 1);
        // A file grown past what is kept is emptied at a restart.
        let j = Journal::restart(dir.path(), 12, 20).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), j.len());
    }

    #[test]
    fn a_damaged_header_or_an_unknown_tree_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let mut j = Journal::restart(dir.path(), 1, 1 << 20).unwrap();
        j.append(&record(2, b"a")).unwrap();
        assert!(read(&path, 3).unwrap_err().contains("cannot be read"));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[5] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(read(&path, 4).unwrap_err().contains("damaged header"));
        // A header cut short (a crash right after the file was emptied) is an empty journal.
        std::fs::write(&path, &bytes[..10]).unwrap();
        let contents = read(&path, 4).unwrap().unwrap();
        assert_eq!((contents.base, contents.records.len()), (None, 0));
        // So is a header of zeros (emptied and extended, the header not yet written out).
        std::fs::write(&path, [0u8; 40]).unwrap();
        let contents = read(&path, 4).unwrap().unwrap();
        assert_eq!((contents.base, contents.records.len()), (None, 0));
    }
}
