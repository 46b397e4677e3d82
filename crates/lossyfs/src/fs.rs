//! The FUSE file system: a passthrough to a backing directory in which file data stays in
//! the daemon's memory ([`Overlay`]) until the file is fsynced.
//!
//! - **Data** (write, truncate) is held per file until `fsync`/`fdatasync` of that file
//!   (any descriptor of it), then written to the backing file. Reads through the mount see
//!   it at once. Killing the daemon loses it: that is the power cut.
//! - **New names** (create, mkdir) are made in the backing directory at once, but stay
//!   *unsynced* until their parent directory is fsynced (`fsyncdir`); fsyncing the file
//!   itself is not enough. They are listed in a journal beside the backing directory,
//!   `<backing>.lossyfs-unsynced`, and [`power_on`] (run by the next mount) removes
//!   them, with everything under them: after a power cut, a file or directory whose
//!   parent was never fsynced is gone. A rename carries the unsynced mark to the new
//!   name. A rename is atomic, as POSIX has it: when an unsynced name replaces a durable
//!   file, that file is kept aside (a hard link in `<backing>.lossyfs-replaced`) until the
//!   directory is fsynced, and [`power_on`] puts it back, so that after a power cut the
//!   name holds the old file or the new one, never nothing.
//! - **Other metadata** (unlink, rmdir, chmod, a rename of a synced name) is applied at
//!   once and is durable at once: a removal never comes back, a synced file never
//!   reappears under its old name.
//! - A clean unmount (`umount`, FUSE destroy) writes everything back, like an orderly
//!   shutdown. While [`IGNORE_FSYNC`] is set, fsync is answered without writing anything
//!   back (a disk that lies about its flushes): the control that shows a drill can lose
//!   acknowledged writes.
//! - The kernel's writeback cache is off (FUSE's default: fuser does not ask for
//!   `FUSE_WRITEBACK_CACHE`), so every `write` reaches the daemon before it returns.
//!   `sync_file_range` never reaches a FUSE file system, nor `syncfs`/`sync` this one
//!   (fuser 0.16 has no FUSE_SYNCFS): only fsync and fdatasync count.
//! - Locks (`flock`, `fcntl`) are left to the kernel, which keeps them per mount: enough for
//!   sled's lock on its `db` file, as long as one mount is used by one machine.
//! - Inode numbers are the daemon's own, never reused; `forget` is ignored (a test mount
//!   lives for seconds).

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

use crate::overlay::{read_full, Overlay};

/// How long the kernel may cache names and attributes. Every change goes through this
/// mount, so the kernel's cache never goes stale.
const TTL: Duration = Duration::from_secs(1);
const ROOT: u64 = fuser::FUSE_ROOT_ID;

/// Answer fsync without writing anything back. Set by `--ignore-fsync`, or at any time by
/// SIGUSR1 (so an application can start on an honest disk, then lose what follows).
pub static IGNORE_FSYNC: AtomicBool = AtomicBool::new(false);

struct Node {
    parent: u64,
    name: OsString,
    /// The backing file, opened read-write while the file is open or has unsynced data.
    file: Option<File>,
    /// Unsynced data; `None` when there is none.
    overlay: Option<Overlay>,
    opens: u32,
}

pub struct LossyFs {
    root: PathBuf,
    nodes: HashMap<u64, Node>,
    /// (parent inode, name) → inode, for every name looked up or created.
    children: HashMap<(u64, OsString), u64>,
    next_ino: u64,
    /// Open directory handles: the listing taken at opendir.
    dirs: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    next_fh: u64,
    /// Names created since their parent directory was last fsynced: parent → names.
    unsynced: HashMap<u64, BTreeSet<OsString>>,
    /// Durable files that a rename of an unsynced name replaced, kept aside (in `stash`)
    /// until their directory is fsynced: (parent, name) → the file kept.
    replaced: HashMap<(u64, OsString), PathBuf>,
    /// Kept files no longer needed, removed once the journal no longer lists them (a
    /// power cut in between must not leave the journal naming a file that is gone).
    discarded: Vec<PathBuf>,
    next_stash: u64,
    /// Where the unsynced names are listed, for [`power_on`] to remove.
    journal: PathBuf,
}

/// Where the durable files replaced by renames of unsynced names are kept.
pub fn stash_path(root: &Path) -> PathBuf {
    let mut name = root.as_os_str().to_os_string();
    name.push(".lossyfs-replaced");
    PathBuf::from(name)
}

/// In the journal, a name that replaced a durable file is followed by this byte and the
/// path of the file kept aside.
const REPLACED: u8 = 1;

/// The journal of unsynced names of the backing directory `root`.
pub fn journal_path(root: &Path) -> PathBuf {
    let mut name = root.as_os_str().to_os_string();
    name.push(".lossyfs-unsynced");
    PathBuf::from(name)
}

/// Bring the backing directory `root` back after a power cut: remove every name created
/// through the last mount whose parent directory was never fsynced. Returns them.
pub fn power_on(root: &Path) -> io::Result<Vec<PathBuf>> {
    let journal = journal_path(root);
    let listed = match fs::read(&journal) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in listed.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let mut parts = entry.splitn(2, |b| *b == REPLACED);
        let rel = parts.next().unwrap_or_default();
        let kept = parts.next().map(|k| PathBuf::from(OsStr::from_bytes(k)));
        let path = root.join(OsStr::from_bytes(rel));
        let gone = match fs::symlink_metadata(&path) {
            Ok(md) if md.is_dir() => fs::remove_dir_all(&path),
            Ok(_) => fs::remove_file(&path),
            // Under a directory removed already.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        gone?;
        // Put back the durable file the name replaced, unless its directory is gone too
        // (itself a name that did not survive).
        if let Some(kept) = kept.filter(|_| path.parent().is_some_and(Path::is_dir)) {
            fs::rename(kept, &path)?;
        }
        removed.push(PathBuf::from(OsStr::from_bytes(rel)));
    }
    fs::remove_file(&journal)?;
    remove_stash(root)?;
    Ok(removed)
}

fn remove_stash(root: &Path) -> io::Result<()> {
    match fs::remove_dir_all(stash_path(root)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn kind(t: fs::FileType) -> FileType {
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_fifo() {
        FileType::NamedPipe
    } else if t.is_socket() {
        FileType::Socket
    } else if t.is_char_device() {
        FileType::CharDevice
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else {
        FileType::RegularFile
    }
}

impl LossyFs {
    /// Serve `root`; run [`power_on`] on it first.
    pub fn new(root: PathBuf) -> LossyFs {
        let journal = journal_path(&root);
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                parent: ROOT,
                name: OsString::new(),
                file: None,
                overlay: None,
                opens: 0,
            },
        );
        LossyFs {
            root,
            nodes,
            children: HashMap::new(),
            next_ino: ROOT + 1,
            dirs: HashMap::new(),
            next_fh: 1,
            unsynced: HashMap::new(),
            replaced: HashMap::new(),
            discarded: Vec::new(),
            next_stash: 0,
            journal,
        }
    }

    /// Mark or unmark `name` in `parent` as unsynced, and rewrite the journal.
    fn set_unsynced(&mut self, parent: u64, name: &OsStr, unsynced: bool) -> io::Result<()> {
        let names = self.unsynced.entry(parent).or_default();
        let changed = if unsynced {
            names.insert(name.to_os_string())
        } else {
            names.remove(name)
        };
        if names.is_empty() {
            self.unsynced.remove(&parent);
        }
        // A name made durable, or removed (durably at once), drops what it replaced.
        let dropped = !unsynced && self.forget_replaced(parent, name);
        if changed || dropped {
            self.write_journal()?;
        }
        Ok(())
    }

    /// The journal lists every unsynced name, relative to the root, NUL-separated. It is
    /// replaced by a rename, so a power cut leaves the old list or the new one.
    fn write_journal(&mut self) -> io::Result<()> {
        self.write_list()?;
        for kept in self.discarded.drain(..) {
            let _ = fs::remove_file(kept);
        }
        if self.replaced.is_empty() {
            let _ = fs::remove_dir(stash_path(&self.root));
        }
        Ok(())
    }

    fn write_list(&self) -> io::Result<()> {
        if self.unsynced.is_empty() {
            return match fs::remove_file(&self.journal) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let mut list = Vec::new();
        for (parent, names) in &self.unsynced {
            let dir = self.path(*parent)?;
            let dir = dir.strip_prefix(&self.root).expect("under the root");
            for name in names {
                list.extend_from_slice(dir.join(name).as_os_str().as_bytes());
                if let Some(kept) = self.replaced.get(&(*parent, name.clone())) {
                    list.push(REPLACED);
                    list.extend_from_slice(kept.as_os_str().as_bytes());
                }
                list.push(0);
            }
        }
        let mut tmp = self.journal.clone().into_os_string();
        tmp.push(".tmp");
        fs::write(&tmp, &list)?;
        fs::rename(&tmp, &self.journal)
    }

    /// Keep the durable file at `to` aside, for [`power_on`] to put back should the
    /// unsynced name about to replace it not survive.
    fn keep_replaced(&mut self, parent: u64, name: &OsStr, to: &Path) -> io::Result<()> {
        let stash = stash_path(&self.root);
        fs::create_dir_all(&stash)?;
        let kept = stash.join(self.next_stash.to_string());
        self.next_stash += 1;
        fs::hard_link(to, &kept)?;
        self.replaced.insert((parent, name.to_os_string()), kept);
        Ok(())
    }

    /// Forget the file a name replaced (its replacement is durable, or the name is gone
    /// durably); it is removed at the next [`Self::write_journal`]. Answers whether there
    /// was one.
    fn forget_replaced(&mut self, parent: u64, name: &OsStr) -> bool {
        match self.replaced.remove(&(parent, name.to_os_string())) {
            Some(kept) => {
                self.discarded.push(kept);
                true
            }
            None => false,
        }
    }

    fn path(&self, ino: u64) -> io::Result<PathBuf> {
        if ino == ROOT {
            return Ok(self.root.clone());
        }
        let node = self
            .nodes
            .get(&ino)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        Ok(self.path(node.parent)?.join(&node.name))
    }

    /// The inode of `name` in `parent`, numbered on first sight.
    fn child(&mut self, parent: u64, name: &OsStr) -> u64 {
        let key = (parent, name.to_os_string());
        if let Some(ino) = self.children.get(&key) {
            return *ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                parent,
                name: name.to_os_string(),
                file: None,
                overlay: None,
                opens: 0,
            },
        );
        self.children.insert(key, ino);
        ino
    }

    /// Forget the name `(parent, name)` after an unlink, rmdir or a rename over it. The
    /// inode lives on while it is open (its data is reachable through the open file).
    fn drop_name(&mut self, parent: u64, name: &OsStr) {
        if let Some(ino) = self.children.remove(&(parent, name.to_os_string())) {
            if self.nodes.get(&ino).is_some_and(|n| n.opens == 0) {
                self.nodes.remove(&ino);
            }
        }
    }

    fn attr(&self, ino: u64) -> io::Result<FileAttr> {
        let node = self
            .nodes
            .get(&ino)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let md = match &node.file {
            Some(f) => f.metadata()?,
            None => fs::symlink_metadata(self.path(ino)?)?,
        };
        let size = node.overlay.as_ref().map_or(md.len(), Overlay::file_len);
        let time = |secs: i64, nsecs: i64| {
            UNIX_EPOCH + Duration::new(secs.max(0) as u64, nsecs.clamp(0, 999_999_999) as u32)
        };
        Ok(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: time(md.atime(), md.atime_nsec()),
            mtime: time(md.mtime(), md.mtime_nsec()),
            ctime: time(md.ctime(), md.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind(md.file_type()),
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: 4096,
            flags: 0,
        })
    }

    /// The node's backing file, opened if need be.
    fn open_backing(&mut self, ino: u64) -> io::Result<&mut Node> {
        let path = self.path(ino)?;
        let node = self.nodes.get_mut(&ino).expect("path() found it");
        if node.file.is_none() {
            node.file = Some(OpenOptions::new().read(true).write(true).open(path)?);
        }
        Ok(node)
    }

    /// The node's backing file and its overlay, created if need be.
    fn overlay(&mut self, ino: u64) -> io::Result<(&File, &mut Overlay)> {
        let node = self.open_backing(ino)?;
        let file = node.file.as_ref().expect("opened");
        if node.overlay.is_none() {
            node.overlay = Some(Overlay::new(file.metadata()?.len()));
        }
        Ok((file, node.overlay.as_mut().expect("created")))
    }

    /// Write a node's unsynced data to its backing file.
    fn sync(&mut self, ino: u64) -> io::Result<()> {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return Ok(());
        };
        if let (Some(file), Some(overlay)) = (node.file.as_ref(), node.overlay.as_mut()) {
            overlay.sync(file)?;
            node.overlay = None;
            if node.opens == 0 {
                node.file = None;
            }
        }
        Ok(())
    }

    fn entry(&mut self, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let ino = self.child(parent, name);
        match self.attr(ino) {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => {
                self.drop_name(parent, name);
                reply.error(errno(&e))
            }
        }
    }
}

impl Filesystem for LossyFs {
    /// A clean unmount writes everything back, like an orderly shutdown.
    fn destroy(&mut self) {
        let dirty: Vec<u64> = self.nodes.keys().copied().collect();
        for ino in dirty {
            if let Err(e) = self.sync(ino) {
                eprintln!("lossyfs: writing back inode {ino} at unmount: {e}");
            }
        }
        self.unsynced.clear();
        self.replaced.clear();
        if let Err(e) = self.write_journal().and_then(|()| remove_stash(&self.root)) {
            eprintln!("lossyfs: clearing the journal at unmount: {e}");
        }
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        self.entry(parent, name, reply);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let result = (|| {
            if let Some(mode) = mode {
                fs::set_permissions(self.path(ino)?, fs::Permissions::from_mode(mode))?;
            }
            if let Some(size) = size {
                self.overlay(ino)?.1.truncate(size);
            }
            // Owners and times are not kept (the hub never sets them).
            self.attr(ino)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self.path(parent).and_then(|p| {
            fs::DirBuilder::new()
                .mode(mode & !umask)
                .create(p.join(name))
        });
        match result.and_then(|()| self.set_unsynced(parent, name, true)) {
            Ok(()) => self.entry(parent, name, reply),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self
            .path(parent)
            .and_then(|p| fs::remove_file(p.join(name)))
        {
            Ok(()) => {
                self.drop_name(parent, name);
                match self.set_unsynced(parent, name, false) {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(errno(&e)),
                }
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.path(parent).and_then(|p| fs::remove_dir(p.join(name))) {
            Ok(()) => {
                self.drop_name(parent, name);
                match self.set_unsynced(parent, name, false) {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(errno(&e)),
                }
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        // The new name is unsynced if and only if the old one was.
        let was_unsynced = self.unsynced.get(&parent).is_some_and(|n| n.contains(name));
        let result = (|| {
            let from = self.path(parent)?.join(name);
            let to = self.path(newparent)?.join(newname);
            if flags & !libc::RENAME_NOREPLACE != 0 {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            let target = fs::symlink_metadata(&to);
            if flags & libc::RENAME_NOREPLACE != 0 && target.is_ok() {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            let target_durable = !self
                .unsynced
                .get(&newparent)
                .is_some_and(|n| n.contains(newname));
            if was_unsynced && target.is_ok_and(|md| md.is_file()) && target_durable {
                self.keep_replaced(newparent, newname, &to)?;
            }
            fs::rename(&from, &to)
        })();
        if let Err(e) = result {
            return reply.error(errno(&e));
        }
        self.drop_name(newparent, newname);
        if let Some(ino) = self.children.remove(&(parent, name.to_os_string())) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.parent = newparent;
                node.name = newname.to_os_string();
            }
            self.children
                .insert((newparent, newname.to_os_string()), ino);
        }
        let marked = self
            .set_unsynced(parent, name, false)
            .and_then(|()| self.set_unsynced(newparent, newname, was_unsynced));
        match marked {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        // O_TRUNC arrives as a setattr; O_APPEND offsets are the kernel's.
        match self.open_backing(ino) {
            Ok(node) => {
                node.opens += 1;
                reply.opened(0, 0)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let result = self.open_backing(ino).and_then(|node| {
            let file = node.file.as_ref().expect("opened");
            match &node.overlay {
                Some(overlay) => overlay.read(file, offset as u64, size as u64),
                None => {
                    let len = file.metadata()?.len();
                    let end = len.min(offset as u64 + size as u64);
                    let mut buf = vec![0; end.saturating_sub(offset as u64) as usize];
                    read_full(file, &mut buf, offset as u64)?;
                    Ok(buf)
                }
            }
        });
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        match self.overlay(ino) {
            Ok((_, overlay)) => {
                overlay.write(offset as u64, data);
                reply.written(data.len() as u32)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _owner: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.opens = node.opens.saturating_sub(1);
            // Keep the backing file while there is unsynced data: a later open may fsync it.
            if node.opens == 0 && node.overlay.is_none() {
                node.file = None;
            }
        }
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _data: bool, reply: ReplyEmpty) {
        if IGNORE_FSYNC.load(Ordering::Relaxed) {
            return reply.ok();
        }
        match self.sync(ino) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let listing = (|| {
            let path = self.path(ino)?;
            let parent = self.nodes.get(&ino).map_or(ROOT, |n| n.parent);
            let mut entries = vec![
                (ino, FileType::Directory, OsString::from(".")),
                (parent, FileType::Directory, OsString::from("..")),
            ];
            for entry in fs::read_dir(path)? {
                let entry = entry?;
                let name = entry.file_name();
                let child = self.child(ino, &name);
                entries.push((child, kind(entry.file_type()?), name));
            }
            io::Result::Ok(entries)
        })();
        match listing {
            Ok(entries) => {
                let fh = self.next_fh;
                self.next_fh += 1;
                self.dirs.insert(fh, entries);
                reply.opened(fh, 0)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = self.dirs.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, i as i64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        self.dirs.remove(&fh);
        reply.ok();
    }

    /// The names created in the directory since its last fsync become durable.
    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _data: bool, reply: ReplyEmpty) {
        if IGNORE_FSYNC.load(Ordering::Relaxed) || self.unsynced.remove(&ino).is_none() {
            return reply.ok();
        }
        // Its names are durable now: what they replaced is no longer kept.
        let made_durable = self.replaced.extract_if(|(parent, _), _| *parent == ino);
        self.discarded.extend(made_durable.map(|(_, kept)| kept));
        match self.write_journal() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let path = CString::new(self.root.as_os_str().as_bytes()).expect("no NUL in a path");
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is NUL-terminated and `st` is a valid statvfs to fill.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return reply.error(errno(&io::Error::last_os_error()));
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = (|| {
            let path = self.path(parent)?.join(name);
            let created = fs::symlink_metadata(&path).is_err();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .create_new(flags & libc::O_EXCL != 0)
                .mode(mode & !umask)
                .open(path)?;
            let ino = self.child(parent, name);
            if created {
                self.set_unsynced(parent, name, true)?;
            }
            let node = self.nodes.get_mut(&ino).expect("child() made it");
            node.file.get_or_insert(file);
            node.opens += 1;
            if flags & libc::O_TRUNC != 0 {
                self.overlay(ino)?.1.truncate(0);
            }
            self.attr(ino)
        })();
        match result {
            Ok(attr) => reply.created(&TTL, &attr, 0, 0, 0),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
