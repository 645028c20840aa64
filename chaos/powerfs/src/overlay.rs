//! One file's unsynced state: what a page cache holds and a power cut loses.
//!
//! The backing file holds exactly what is durable. An [`Overlay`] holds the writes and
//! truncations made since the file's last `fsync`/`fdatasync`; a read sees the backing file
//! with the overlay on top, and only [`Overlay::sync`] moves the overlay into the backing file
//! (then syncs it). A power cut is dropping every overlay: the backing file is then the file.

use std::collections::BTreeMap;
use std::io;

/// What the overlay needs of the durable file: positioned reads and writes, a length, a sync.
/// Implemented by `std::fs::File`, and by a byte vector in the tests.
pub trait Backing {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn write_all_at(&mut self, data: &[u8], offset: u64) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// `fdatasync` (`data_only`) or `fsync`.
    fn sync(&mut self, data_only: bool) -> io::Result<()>;
}

impl Backing for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        // Bounded: each round reads at least one byte or stops.
        while done < buf.len() {
            match FileExt::read_at(self, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(read) => done += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(done)
    }

    fn write_all_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, data, offset)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }

    fn sync(&mut self, data_only: bool) -> io::Result<()> {
        if data_only {
            self.sync_data()
        } else {
            self.sync_all()
        }
    }
}

/// The unsynced writes and truncations of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// The length the file's writers see.
    len: u64,
    /// The backing file's length (only [`Overlay::sync`] changes the backing file).
    backing_len: u64,
    /// Backing bytes at and above this were truncated away since the last sync: they read as
    /// zeros (where no newer write covers them), as after a real truncate and extend.
    backing_kept: u64,
    /// Unsynced writes, by offset; never overlapping, all below `len`.
    extents: BTreeMap<u64, Vec<u8>>,
}

impl Overlay {
    /// A clean overlay over a backing file of `backing_len` bytes.
    pub fn new(backing_len: u64) -> Overlay {
        Overlay {
            len: backing_len,
            backing_len,
            backing_kept: backing_len,
            extents: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Bytes held in memory (what counts towards the filesystem's pending cap).
    pub fn pending_bytes(&self) -> u64 {
        self.extents.values().map(|data| data.len() as u64).sum()
    }

    /// Whether a sync would change nothing in the backing file.
    pub fn is_clean(&self) -> bool {
        self.extents.is_empty() && self.len == self.backing_len && self.backing_kept == self.len
    }

    /// Removes every extent byte at or above `from`, and in `[from, to)` when `to` is given,
    /// keeping the parts outside.
    fn cut_range(&mut self, from: u64, to: Option<u64>) {
        let end = to.unwrap_or(u64::MAX);
        if from >= end {
            return;
        }
        let mut touched = Vec::new();
        if let Some((&start, data)) = self.extents.range(..from).next_back() {
            if start + data.len() as u64 > from {
                touched.push(start);
            }
        }
        touched.extend(self.extents.range(from..end).map(|(&start, _)| start));
        for start in touched {
            let data = self.extents.remove(&start).expect("a listed extent exists");
            let data_end = start + data.len() as u64;
            if start < from {
                self.extents
                    .insert(start, data[..(from - start) as usize].to_vec());
            }
            if data_end > end {
                self.extents
                    .insert(end, data[(end - start) as usize..].to_vec());
            }
        }
    }

    /// A write of `data` at `offset`: visible to reads at once, durable only after a sync.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        self.cut_range(offset, Some(end));
        // A write right after an extent (a log's appends) extends it: fewer, larger extents.
        let before = self
            .extents
            .range_mut(..offset)
            .next_back()
            .filter(|(start, previous)| **start + previous.len() as u64 == offset);
        match before {
            Some((_, previous)) => previous.extend_from_slice(data),
            None => {
                self.extents.insert(offset, data.to_vec());
            }
        }
        self.len = self.len.max(end);
    }

    /// `truncate`/`ftruncate` to `len` (shorter or longer).
    pub fn truncate(&mut self, len: u64) {
        self.cut_range(len, None);
        self.backing_kept = self.backing_kept.min(len);
        self.len = len;
    }

    /// Up to `size` bytes at `offset` as the writers see them: the backing file's kept bytes,
    /// zeros where the file was extended, and the unsynced writes on top.
    pub fn read(&self, backing: &impl Backing, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        if offset >= self.len {
            return Ok(Vec::new());
        }
        let end = self.len.min(offset.saturating_add(u64::from(size)));
        let mut buf = vec![0u8; (end - offset) as usize];
        let kept_end = end.min(self.backing_kept);
        if offset < kept_end {
            // A shorter read (the backing file changed under us) leaves zeros.
            backing.read_at(&mut buf[..(kept_end - offset) as usize], offset)?;
        }
        let first = self
            .extents
            .range(..offset)
            .next_back()
            .map(|(start, _)| *start)
            .unwrap_or(offset);
        for (&start, data) in self.extents.range(first..end) {
            let data_end = start + data.len() as u64;
            let from = start.max(offset);
            let to = data_end.min(end);
            if from < to {
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&data[(from - start) as usize..(to - start) as usize]);
            }
        }
        Ok(buf)
    }

    /// `fsync`/`fdatasync`: writes the overlay into the backing file and syncs it; from then
    /// on the overlay is clean. On an error the overlay is kept (nothing claimed durable).
    pub fn sync(&mut self, backing: &mut impl Backing, data_only: bool) -> io::Result<()> {
        if self.backing_kept < self.backing_len {
            backing.set_len(self.backing_kept)?;
        }
        for (&start, data) in &self.extents {
            backing.write_all_at(data, start)?;
        }
        // The backing file is now `backing_kept` long, or up to the last extent's end.
        if self.len != self.backing_kept.max(self.extent_end()) {
            backing.set_len(self.len)?;
        }
        backing.sync(data_only)?;
        *self = Overlay::new(self.len);
        Ok(())
    }

    fn extent_end(&self) -> u64 {
        self.extents
            .iter()
            .next_back()
            .map(|(start, data)| start + data.len() as u64)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A durable file in memory.
    #[derive(Default, Debug)]
    struct Disk {
        bytes: Vec<u8>,
        syncs: u32,
    }

    impl Backing for Disk {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let offset = offset as usize;
            if offset >= self.bytes.len() {
                return Ok(0);
            }
            let count = buf.len().min(self.bytes.len() - offset);
            buf[..count].copy_from_slice(&self.bytes[offset..offset + count]);
            Ok(count)
        }

        fn write_all_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
            let end = offset as usize + data.len();
            if self.bytes.len() < end {
                self.bytes.resize(end, 0);
            }
            self.bytes[offset as usize..end].copy_from_slice(data);
            Ok(())
        }

        fn set_len(&mut self, len: u64) -> io::Result<()> {
            self.bytes.resize(len as usize, 0);
            Ok(())
        }

        fn sync(&mut self, _data_only: bool) -> io::Result<()> {
            self.syncs += 1;
            Ok(())
        }
    }

    fn disk(bytes: &[u8]) -> Disk {
        Disk {
            bytes: bytes.to_vec(),
            syncs: 0,
        }
    }

    fn whole(overlay: &Overlay, disk: &Disk) -> Vec<u8> {
        overlay.read(disk, 0, u32::MAX).unwrap()
    }

    /// What the file is after a power cut: the backing file alone.
    fn after_cut(disk: &Disk) -> Vec<u8> {
        whole(&Overlay::new(disk.bytes.len() as u64), disk)
    }

    #[test]
    fn a_pending_write_is_read_back_but_lost_on_a_cut() {
        let disk = disk(b"hello world");
        let mut overlay = Overlay::new(11);
        overlay.write(6, b"cairn!");
        assert_eq!(whole(&overlay, &disk), b"hello cairn!");
        assert_eq!(overlay.len(), 12);
        assert_eq!(overlay.pending_bytes(), 6);
        assert_eq!(overlay.read(&disk, 4, 4).unwrap(), b"o ca");
        assert_eq!(overlay.read(&disk, 12, 4).unwrap(), b"");
        assert_eq!(disk.bytes, b"hello world", "nothing reached the disk");
        assert_eq!(after_cut(&disk), b"hello world");
    }

    #[test]
    fn a_synced_write_survives_a_cut() {
        let mut disk = disk(b"");
        let mut overlay = Overlay::new(0);
        overlay.write(0, b"abc");
        overlay.write(3, b"def");
        overlay.sync(&mut disk, true).unwrap();
        assert_eq!(disk.syncs, 1);
        assert!(overlay.is_clean());
        overlay.write(6, b"lost");
        assert_eq!(whole(&overlay, &disk), b"abcdeflost");
        assert_eq!(after_cut(&disk), b"abcdef");
    }

    #[test]
    fn overlapping_writes_keep_the_newest_bytes() {
        let mut disk = disk(b"0123456789");
        let mut overlay = Overlay::new(10);
        overlay.write(2, b"aaaa");
        overlay.write(4, b"bbbb");
        overlay.write(1, b"c");
        overlay.write(3, b"dd");
        assert_eq!(whole(&overlay, &disk), b"0caddbbb89");
        assert_eq!(overlay.pending_bytes(), 7);
        overlay.sync(&mut disk, false).unwrap();
        assert_eq!(disk.bytes, b"0caddbbb89");
    }

    #[test]
    fn a_write_past_the_end_leaves_zeros_in_the_gap() {
        let mut disk = disk(b"ab");
        let mut overlay = Overlay::new(2);
        overlay.write(5, b"z");
        assert_eq!(whole(&overlay, &disk), b"ab\0\0\0z");
        overlay.sync(&mut disk, true).unwrap();
        assert_eq!(disk.bytes, b"ab\0\0\0z");
    }

    #[test]
    fn a_truncate_then_extend_reads_zeros_not_the_old_bytes() {
        let mut disk = disk(b"abcdefgh");
        let mut overlay = Overlay::new(8);
        overlay.write(1, b"XY");
        overlay.truncate(2);
        assert_eq!(whole(&overlay, &disk), b"aX");
        overlay.truncate(6);
        assert_eq!(whole(&overlay, &disk), b"aX\0\0\0\0");
        // Until a sync, the truncation is not durable either.
        assert_eq!(after_cut(&disk), b"abcdefgh");
        overlay.sync(&mut disk, true).unwrap();
        assert_eq!(disk.bytes, b"aX\0\0\0\0");
        assert_eq!(after_cut(&disk), b"aX\0\0\0\0");
    }

    #[test]
    fn a_truncate_to_zero_then_rewrite_syncs_only_the_new_bytes() {
        let mut disk = disk(b"old contents");
        let mut overlay = Overlay::new(12);
        overlay.truncate(0);
        overlay.write(0, b"new");
        assert_eq!(whole(&overlay, &disk), b"new");
        overlay.sync(&mut disk, true).unwrap();
        assert_eq!(disk.bytes, b"new");
    }

    #[test]
    fn a_truncate_cuts_an_extent_in_two_and_keeps_its_head() {
        let mut disk = disk(b"");
        let mut overlay = Overlay::new(0);
        overlay.write(0, b"0123456789");
        overlay.truncate(4);
        assert_eq!(overlay.pending_bytes(), 4);
        overlay.truncate(10);
        assert_eq!(whole(&overlay, &disk), b"0123\0\0\0\0\0\0");
        overlay.sync(&mut disk, true).unwrap();
        assert_eq!(disk.bytes, b"0123\0\0\0\0\0\0");
    }

    #[test]
    fn an_extension_by_truncate_alone_is_synced_as_a_length() {
        let mut disk = disk(b"ab");
        let mut overlay = Overlay::new(2);
        overlay.truncate(4);
        assert!(!overlay.is_clean());
        overlay.sync(&mut disk, true).unwrap();
        assert_eq!(disk.bytes, b"ab\0\0");
    }

    #[test]
    fn appends_merge_into_one_extent() {
        let mut overlay = Overlay::new(0);
        for index in 0..100u64 {
            overlay.write(index * 3, b"abc");
        }
        assert_eq!(overlay.extents.len(), 1);
        assert_eq!(overlay.pending_bytes(), 300);
    }
}
