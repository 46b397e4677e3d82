//! What one file holds that its backing file does not yet: the bytes written since the
//! last fsync and the file's length. Reads see the backing file with the overlay on top;
//! [`Overlay::sync`] writes the overlay to the backing file; dropping it is the power cut.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Where a file's synced bytes live (the backing file; a `Vec` in the unit tests).
pub trait Disk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
}

impl Disk for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

/// Fill `buf` from `disk` at `offset`; what lies past the disk's end reads as zeros.
pub fn read_full(disk: &impl Disk, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match disk.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

/// The unsynced state of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// The backing file's length.
    disk_len: u64,
    /// Backing bytes at or past this offset were cut off by a truncate: they read as zeros.
    valid: u64,
    /// The file's length as seen through the mount.
    len: u64,
    /// Written bytes by offset: ranges that neither overlap nor touch, all below `len`.
    dirty: BTreeMap<u64, Vec<u8>>,
}

impl Overlay {
    /// No unsynced state over a backing file of `disk_len` bytes.
    pub fn new(disk_len: u64) -> Overlay {
        Overlay {
            disk_len,
            valid: disk_len,
            len: disk_len,
            dirty: BTreeMap::new(),
        }
    }

    pub fn file_len(&self) -> u64 {
        self.len
    }

    /// Nothing to write back: the backing file is what the mount shows.
    pub fn is_clean(&self) -> bool {
        self.dirty.is_empty() && self.len == self.disk_len && self.valid == self.disk_len
    }

    /// Unsynced bytes held in memory.
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty.values().map(|d| d.len() as u64).sum()
    }

    /// `pwrite(data, offset)`: merged with the ranges it overlaps or touches.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        // Ranges are sorted and disjoint, so their ends grow with their starts: walking
        // back from the last range starting at or before `end`, stop at the first that
        // ends before `offset`.
        let touching: Vec<u64> = self
            .dirty
            .range(..=end)
            .rev()
            .take_while(|(start, bytes)| *start + bytes.len() as u64 >= offset)
            .map(|(start, _)| *start)
            .collect();
        let (start, mut merged) = match touching.last() {
            // The first touching range begins at or before the write: grow it in place
            // (the common case of an append).
            Some(&first) if first <= offset => (first, self.dirty.remove(&first).unwrap()),
            _ => (offset, Vec::new()),
        };
        for other in touching.iter().filter(|s| **s != start) {
            let bytes = self.dirty.remove(other).unwrap();
            let at = (other - start) as usize;
            if merged.len() < at + bytes.len() {
                merged.resize(at + bytes.len(), 0);
            }
            merged[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        let at = (offset - start) as usize;
        if merged.len() < at + data.len() {
            merged.resize(at + data.len(), 0);
        }
        merged[at..at + data.len()].copy_from_slice(data);
        self.dirty.insert(start, merged);
        self.len = self.len.max(end);
    }

    /// `ftruncate(len)`: shorten (dropping written bytes past `len`) or extend with zeros.
    pub fn truncate(&mut self, len: u64) {
        self.valid = self.valid.min(len);
        let past: Vec<u64> = self.dirty.range(len..).map(|(s, _)| *s).collect();
        for start in past {
            self.dirty.remove(&start);
        }
        if let Some((start, bytes)) = self.dirty.range_mut(..len).next_back() {
            if start + bytes.len() as u64 > len {
                bytes.truncate((len - start) as usize);
            }
        }
        self.len = len;
    }

    /// `pread(size, offset)` through the mount: backing bytes, zeros where a truncate cut
    /// them off, written bytes on top; short at the end of the file.
    pub fn read(&self, disk: &impl Disk, offset: u64, size: u64) -> io::Result<Vec<u8>> {
        if offset >= self.len {
            return Ok(Vec::new());
        }
        let end = self.len.min(offset + size);
        let mut buf = vec![0; (end - offset) as usize];
        let disk_end = end.min(self.valid);
        if offset < disk_end {
            read_full(disk, &mut buf[..(disk_end - offset) as usize], offset)?;
        }
        for (start, bytes) in self.dirty.range(..end).rev() {
            let range_end = start + bytes.len() as u64;
            if range_end <= offset {
                break;
            }
            let from = offset.max(*start);
            let to = end.min(range_end);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&bytes[(from - start) as usize..(to - start) as usize]);
        }
        Ok(buf)
    }

    /// fsync: write everything to the backing file, which then holds what the mount shows.
    pub fn sync(&mut self, disk: &impl Disk) -> io::Result<()> {
        let mut disk_len = self.disk_len;
        if self.valid < disk_len {
            disk.set_len(self.valid)?;
            disk_len = self.valid;
        }
        for (start, bytes) in &self.dirty {
            disk.write_all_at(bytes, *start)?;
            disk_len = disk_len.max(start + bytes.len() as u64);
        }
        if disk_len != self.len {
            disk.set_len(self.len)?;
        }
        *self = Overlay::new(self.len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// An in-memory backing file.
    #[derive(Default)]
    struct Mem(RefCell<Vec<u8>>);

    impl Disk for Mem {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let data = self.0.borrow();
            let offset = (offset as usize).min(data.len());
            let n = buf.len().min(data.len() - offset);
            buf[..n].copy_from_slice(&data[offset..offset + n]);
            Ok(n)
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            let mut data = self.0.borrow_mut();
            let end = offset as usize + buf.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[offset as usize..end].copy_from_slice(buf);
            Ok(())
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.0.borrow_mut().resize(len as usize, 0);
            Ok(())
        }
    }

    fn mem(bytes: &[u8]) -> Mem {
        Mem(RefCell::new(bytes.to_vec()))
    }

    fn all(o: &Overlay, disk: &Mem) -> Vec<u8> {
        o.read(disk, 0, u64::MAX / 2).unwrap()
    }

    #[test]
    fn writes_are_read_back_but_reach_the_disk_only_at_sync() {
        let disk = mem(b"hello world");
        let mut o = Overlay::new(11);
        assert!(o.is_clean());
        o.write(6, b"WORLD");
        o.write(11, b"!!");
        assert_eq!(all(&o, &disk), b"hello WORLD!!");
        assert_eq!(o.read(&disk, 4, 4).unwrap(), b"o WO");
        assert_eq!(o.read(&disk, 12, 10).unwrap(), b"!");
        assert_eq!(o.read(&disk, 13, 10).unwrap(), b"");
        assert_eq!(disk.0.borrow().as_slice(), b"hello world");
        assert!(!o.is_clean());
        assert_eq!(o.dirty_bytes(), 7);
        o.sync(&disk).unwrap();
        assert_eq!(disk.0.borrow().as_slice(), b"hello WORLD!!");
        assert!(o.is_clean());
        assert_eq!(o, Overlay::new(13));
    }

    #[test]
    fn overlapping_and_touching_writes_merge() {
        let disk = mem(b"");
        let mut o = Overlay::new(0);
        o.write(10, b"cccc"); // 10..14
        o.write(0, b"aaaa"); // 0..4
        o.write(4, b"bb"); // touches 0..4
        o.write(20, b"ee"); // separate
        o.write(12, b"DDDDDDDDD"); // 12..21: overlaps 10..14 and 20..22
        assert_eq!(o.dirty.len(), 2, "{:?}", o.dirty);
        assert_eq!(o.dirty[&0], b"aaaabb");
        assert_eq!(o.dirty[&10], b"ccDDDDDDDDDe");
        o.write(3, b"XXXXXXXXXX"); // 3..13 bridges both ranges
        assert_eq!(o.dirty.len(), 1);
        let mut want = b"aaaXXXXXXXXXXDDDDDDDDe".to_vec();
        assert_eq!(all(&o, &disk), want);
        o.write(1, b"y"); // inside a range
        want[1] = b'y';
        assert_eq!(all(&o, &disk), want);
        assert_eq!(o.file_len(), 22);
        o.sync(&disk).unwrap();
        assert_eq!(*disk.0.borrow(), want);
    }

    #[test]
    fn a_write_past_the_end_leaves_a_hole_of_zeros() {
        let disk = mem(b"abc");
        let mut o = Overlay::new(3);
        o.write(6, b"z");
        assert_eq!(all(&o, &disk), b"abc\0\0\0z");
        o.sync(&disk).unwrap();
        assert_eq!(disk.0.borrow().as_slice(), b"abc\0\0\0z");
    }

    #[test]
    fn truncate_cuts_disk_and_written_bytes_and_extending_reads_zeros() {
        let disk = mem(b"0123456789");
        let mut o = Overlay::new(10);
        o.write(2, b"ab");
        o.write(6, b"cd");
        o.truncate(3);
        assert_eq!(all(&o, &disk), b"01a");
        // Extending again must not bring back the old backing bytes or the dropped write.
        o.truncate(8);
        assert_eq!(all(&o, &disk), b"01a\0\0\0\0\0");
        o.write(5, b"Q");
        assert_eq!(all(&o, &disk), b"01a\0\0Q\0\0");
        assert_eq!(disk.0.borrow().as_slice(), b"0123456789");
        o.sync(&disk).unwrap();
        assert_eq!(disk.0.borrow().as_slice(), b"01a\0\0Q\0\0");
        assert!(o.is_clean());
    }

    #[test]
    fn truncate_alone_is_unsynced_state() {
        let disk = mem(b"0123456789");
        let mut o = Overlay::new(10);
        o.truncate(4);
        assert!(!o.is_clean());
        assert_eq!(all(&o, &disk), b"0123");
        o.sync(&disk).unwrap();
        assert_eq!(disk.0.borrow().as_slice(), b"0123");
        let mut o = Overlay::new(4);
        o.truncate(6);
        assert_eq!(all(&o, &disk), b"0123\0\0");
        o.sync(&disk).unwrap();
        assert_eq!(disk.0.borrow().as_slice(), b"0123\0\0");
    }

    #[test]
    fn many_appends_grow_one_range() {
        let disk = mem(b"");
        let mut o = Overlay::new(0);
        let mut want = Vec::new();
        for i in 0..1000u32 {
            let chunk = i.to_le_bytes();
            o.write(want.len() as u64, &chunk);
            want.extend_from_slice(&chunk);
        }
        assert_eq!(o.dirty.len(), 1);
        assert_eq!(all(&o, &disk), want);
        assert_eq!(o.read(&disk, 1001, 7).unwrap(), want[1001..1008]);
    }

    /// Random writes, truncates, reads and syncs against a plain `Vec` model.
    #[test]
    fn matches_a_model_under_random_operations() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let disk = mem(b"initial bytes on the disk");
            let mut model = disk.0.borrow().clone();
            let mut o = Overlay::new(model.len() as u64);
            for _ in 0..40 {
                match next(10) {
                    0..=4 => {
                        let offset = next(60);
                        let len = 1 + next(20) as usize;
                        let data: Vec<u8> = (0..len).map(|_| b'a' + next(26) as u8).collect();
                        o.write(offset, &data);
                        let end = offset as usize + len;
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[offset as usize..end].copy_from_slice(&data);
                    }
                    5 | 6 => {
                        let len = next(70);
                        o.truncate(len);
                        model.resize(len as usize, 0);
                    }
                    7 | 8 => {
                        let offset = next(80);
                        let size = next(30);
                        let from = (offset as usize).min(model.len());
                        let to = (offset + size).min(model.len() as u64) as usize;
                        assert_eq!(o.read(&disk, offset, size).unwrap(), model[from..to]);
                    }
                    _ => {
                        o.sync(&disk).unwrap();
                        assert_eq!(*disk.0.borrow(), model);
                    }
                }
                assert_eq!(all(&o, &disk), model);
                assert_eq!(o.file_len(), model.len() as u64);
                let mut last_end = None;
                for (start, bytes) in &o.dirty {
                    assert!(!bytes.is_empty());
                    assert!(last_end.is_none_or(|e| e < *start), "{:?}", o.dirty);
                    assert!(start + bytes.len() as u64 <= o.len);
                    last_end = Some(start + bytes.len() as u64);
                }
            }
        }
    }
}
