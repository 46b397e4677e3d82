//! The real daemon on a real mount: file operations sled needs work through it, fsynced
//! data and names survive a power cut (SIGKILL of the daemon), unsynced ones do not.
//! Needs /dev/fuse and root, as the machines that run the tests have.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

struct Mount {
    backing: PathBuf,
    mountpoint: PathBuf,
    daemon: Option<Child>,
}

impl Mount {
    fn new(backing: &Path, mountpoint: &Path, ignore_fsync: bool) -> Mount {
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: lossyfs needs the FUSE device (and root) to mount"
        );
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lossyfs"));
        if ignore_fsync {
            cmd.arg("--ignore-fsync");
        }
        let mut daemon = cmd
            .arg(backing)
            .arg(mountpoint)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start lossyfs");
        let mut line = String::new();
        BufReader::new(daemon.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("lossyfs: mounted"),
            "lossyfs said {line:?}"
        );
        Mount {
            backing: backing.to_path_buf(),
            mountpoint: mountpoint.to_path_buf(),
            daemon: Some(daemon),
        }
    }

    /// SIGKILL the daemon, detach the dead mount, and bring the backing directory to what
    /// the next mount starts from (the unsynced names removed).
    fn power_cut(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.kill().unwrap();
            daemon.wait().unwrap();
            umount(&self.mountpoint, libc::MNT_DETACH);
            lossyfs::fs::power_on(&self.backing).unwrap();
        }
    }

    /// `umount`: the daemon writes everything back and exits.
    fn unmount(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            umount(&self.mountpoint, 0);
            assert!(daemon.wait().unwrap().success());
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.power_cut();
    }
}

fn umount(path: &Path, flags: i32) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        return;
    }
    let err = std::io::Error::last_os_error();
    // Not root: the setuid helper from Debian's fuse3.
    let helper = if flags & libc::MNT_DETACH != 0 {
        "-uz"
    } else {
        "-u"
    };
    let status = Command::new("fusermount3").arg(helper).arg(path).status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "umount {}: {err}",
        path.display()
    );
}

fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let backing = tmp.path().join("backing");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    (tmp, backing, mnt)
}

fn fsync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn read(path: &Path) -> Vec<u8> {
    let mut buf = Vec::new();
    File::open(path).unwrap().read_to_end(&mut buf).unwrap();
    buf
}

#[test]
fn fsynced_data_survives_a_power_cut_and_unsynced_data_does_not() {
    let (_tmp, backing, mnt) = dirs();
    let mut m = Mount::new(&backing, &mnt, false);
    fs::create_dir(mnt.join("dir")).unwrap();
    fsync_dir(&mnt);
    let synced = mnt.join("dir/synced");
    let unsynced = mnt.join("dir/unsynced");

    let f = File::create(&synced).unwrap();
    f.write_all_at(b"0123456789", 0).unwrap();
    f.write_all_at(b"ab", 20).unwrap(); // extends with a hole
    f.sync_data().unwrap();
    f.write_all_at(b"LOST", 0).unwrap(); // after the sync
    assert_eq!(read(&synced), b"LOST456789\0\0\0\0\0\0\0\0\0\0ab");
    assert_eq!(fs::metadata(&synced).unwrap().len(), 22);
    let mut g = File::create(&unsynced).unwrap();
    g.write_all(b"never synced").unwrap();
    assert_eq!(read(&unsynced), b"never synced");
    fsync_dir(&mnt.join("dir"));
    // Nothing unsynced is in the backing directory; the synced bytes are.
    assert_eq!(
        read(&backing.join("dir/synced")),
        b"0123456789\0\0\0\0\0\0\0\0\0\0ab"
    );
    assert_eq!(read(&backing.join("dir/unsynced")), b"");

    m.power_cut();
    let _m = Mount::new(&backing, &mnt, false);
    assert_eq!(read(&synced), b"0123456789\0\0\0\0\0\0\0\0\0\0ab");
    // Its name was synced (the directory was), its data was not.
    assert_eq!(read(&unsynced), b"");
}

#[test]
fn ignore_fsync_loses_even_fsynced_data() {
    let (_tmp, backing, mnt) = dirs();
    let mut m = Mount::new(&backing, &mnt, true);
    let mut f = File::create(mnt.join("f")).unwrap();
    f.write_all(b"acknowledged").unwrap();
    f.sync_all().unwrap();
    fsync_dir(&mnt);
    assert_eq!(read(&mnt.join("f")), b"acknowledged");
    m.power_cut();
    // Neither its data nor its name (the directory fsync was ignored too) survive.
    assert_eq!(names(&backing), Vec::<String>::new());
}

#[test]
fn sigusr1_starts_ignoring_fsync() {
    let (_tmp, backing, mnt) = dirs();
    let mut m = Mount::new(&backing, &mnt, false);
    let mut f = File::create(mnt.join("f")).unwrap();
    f.write_all(b"kept").unwrap();
    f.sync_data().unwrap();
    fsync_dir(&mnt);
    let pid = m.daemon.as_ref().unwrap().id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    f.write_all(b", lost").unwrap();
    f.sync_data().unwrap();
    assert_eq!(read(&mnt.join("f")), b"kept, lost");
    m.power_cut();
    assert_eq!(read(&backing.join("f")), b"kept");
}

#[test]
fn a_clean_unmount_writes_everything_back() {
    let (_tmp, backing, mnt) = dirs();
    let mut m = Mount::new(&backing, &mnt, false);
    fs::create_dir(mnt.join("d")).unwrap();
    fs::write(mnt.join("d/f"), b"kept").unwrap();
    m.unmount();
    assert_eq!(read(&backing.join("d/f")), b"kept");
    assert!(!lossyfs::fs::journal_path(&backing).exists());
}

/// A name made by create or mkdir is durable once its parent directory is fsynced, not
/// before (fsyncing the file is not enough); a rename carries that state along.
#[test]
fn new_names_are_durable_only_once_their_directory_is_fsynced() {
    let (_tmp, backing, mnt) = dirs();
    let mut m = Mount::new(&backing, &mnt, false);
    let d = mnt.join("d");
    fs::create_dir(&d).unwrap();
    fsync_dir(&mnt);
    fs::write(d.join("y"), b"data never synced").unwrap();
    let mut t = File::create(d.join("t")).unwrap();
    t.write_all(b"synced").unwrap();
    t.sync_data().unwrap();
    fsync_dir(&d); // y and t are durable names from here
    fs::rename(d.join("t"), d.join("u")).unwrap(); // a synced name: durable at once
    let mut x = File::create(d.join("x")).unwrap();
    x.write_all(b"synced data, unsynced name").unwrap();
    x.sync_all().unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    let mut z = File::create(d.join("sub/z")).unwrap();
    z.write_all(b"z").unwrap();
    z.sync_all().unwrap();
    fsync_dir(&d.join("sub")); // z is durable in sub, but sub is not in d
    fs::write(d.join("w"), b"").unwrap();
    fs::rename(d.join("w"), d.join("w2")).unwrap(); // still unsynced
    assert_eq!(names(&d), ["sub", "u", "w2", "x", "y"]);

    m.power_cut();
    let _m = Mount::new(&backing, &mnt, false);
    assert_eq!(names(&d), ["u", "y"]);
    assert_eq!(read(&d.join("u")), b"synced");
    assert_eq!(read(&d.join("y")), b"");
}

/// A rename is atomic: an unsynced name renamed over a durable file leaves, after a power
/// cut, the old file under that name (not nothing); once the directory is fsynced, the
/// new one. A second rename over the same name before the fsync keeps the durable one.
#[test]
fn a_rename_over_a_durable_file_leaves_the_old_file_or_the_new_one() {
    let (_tmp, backing, mnt) = dirs();
    let write_synced = |path: &Path, data: &[u8]| {
        let mut f = File::create(path).unwrap();
        f.write_all(data).unwrap();
        f.sync_all().unwrap();
    };
    let mut m = Mount::new(&backing, &mnt, false);
    write_synced(&mnt.join("CURRENT"), b"db.1");
    write_synced(&mnt.join("OTHER"), b"old other");
    fsync_dir(&mnt);
    write_synced(&mnt.join("CURRENT.tmp"), b"db.2");
    fs::rename(mnt.join("CURRENT.tmp"), mnt.join("CURRENT")).unwrap();
    write_synced(&mnt.join("CURRENT.tmp"), b"db.3");
    fs::rename(mnt.join("CURRENT.tmp"), mnt.join("CURRENT")).unwrap();
    assert_eq!(read(&mnt.join("CURRENT")), b"db.3");
    write_synced(&mnt.join("OTHER.tmp"), b"new other");
    fs::rename(mnt.join("OTHER.tmp"), mnt.join("OTHER")).unwrap();
    fs::remove_file(mnt.join("OTHER")).unwrap(); // a removal is durable at once
    m.power_cut();

    let mut m = Mount::new(&backing, &mnt, false);
    assert_eq!(names(&mnt), ["CURRENT"]);
    assert_eq!(read(&mnt.join("CURRENT")), b"db.1");
    write_synced(&mnt.join("CURRENT.tmp"), b"db.4");
    fs::rename(mnt.join("CURRENT.tmp"), mnt.join("CURRENT")).unwrap();
    fsync_dir(&mnt);
    m.power_cut();

    let mut m = Mount::new(&backing, &mnt, false);
    assert_eq!(read(&mnt.join("CURRENT")), b"db.4");
    assert!(
        !lossyfs::fs::stash_path(&backing).exists(),
        "nothing kept aside"
    );

    // A rename over a durable file in a directory that is itself not durable: the whole
    // directory goes, and nothing is put back.
    fs::create_dir(mnt.join("new")).unwrap();
    write_synced(&mnt.join("new/conf"), b"old conf");
    fsync_dir(&mnt.join("new"));
    write_synced(&mnt.join("new/conf.tmp"), b"new conf");
    fs::rename(mnt.join("new/conf.tmp"), mnt.join("new/conf")).unwrap();
    m.power_cut();
    let _m = Mount::new(&backing, &mnt, false);
    assert_eq!(names(&mnt), ["CURRENT"]);
    assert!(!lossyfs::fs::stash_path(&backing).exists());
}

/// What sled does with its files: pwrite at offsets, truncate, read back, rename over an
/// existing file, list a directory, lock with flock, statfs.
#[test]
fn the_operations_sled_uses_work() {
    let (_tmp, backing, mnt) = dirs();
    let _m = Mount::new(&backing, &mnt, false);
    let path = mnt.join("db");
    let f = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .unwrap();
    f.write_all_at(&[7u8; 10_000], 4096).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    let mut buf = vec![0; 10];
    f.read_exact_at(&mut buf, 4094).unwrap();
    assert_eq!(buf, [0, 0, 7, 7, 7, 7, 7, 7, 7, 7]);
    assert_eq!(f.metadata().unwrap().len(), 14_096);
    f.set_len(5000).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 5000);
    f.set_len(6000).unwrap();
    let mut buf = vec![1; 2000];
    f.read_exact_at(&mut buf, 4000).unwrap();
    // 4000..4096 a hole, 4096..5000 kept, 5000..6000 zeros after the cut and extension.
    assert!(buf[..96].iter().all(|b| *b == 0));
    assert!(buf[96..1000].iter().all(|b| *b == 7));
    assert!(buf[1000..].iter().all(|b| *b == 0));

    // flock: exclusive within the mount, as sled's lock on `db` needs.
    let lock =
        |file: &File| unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(lock(&f), 0);
    let other = File::open(&path).unwrap();
    assert_eq!(lock(&other), -1, "a second exclusive flock must fail");

    // Snapshot-style replace: write a new file, sync it, rename it over the old one.
    fs::write(mnt.join("snap"), b"old").unwrap();
    let mut tmp = File::create(mnt.join("snap.generating")).unwrap();
    tmp.write_all(b"new snapshot").unwrap();
    tmp.sync_all().unwrap();
    fs::rename(mnt.join("snap.generating"), mnt.join("snap")).unwrap();
    assert_eq!(read(&mnt.join("snap")), b"new snapshot");
    assert_eq!(read(&backing.join("snap")), b"new snapshot");
    File::open(&mnt).unwrap().sync_all().unwrap(); // fsyncdir

    fs::create_dir(mnt.join("blobs")).unwrap();
    fs::write(mnt.join("blobs/1"), b"blob").unwrap();
    let mut names: Vec<String> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["blobs", "db", "snap"]);
    fs::remove_file(mnt.join("blobs/1")).unwrap();
    fs::remove_dir(mnt.join("blobs")).unwrap();
    assert!(!backing.join("blobs").exists());

    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(mnt.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert!(st.f_blocks > 0 && st.f_bsize > 0);
}
