//! The namespace index: stable 64-bit file ids for the plain files under `data/`.
//!
//! In memory: id -> (parent id, name) and (parent id, name) -> id. On disk: an append-only log
//! of crc32c-protected records in `.brickd/index.log` (format in docs/disk-format.md). A torn
//! or corrupt tail left by a crash is detected on replay, never applied, and cut off.

use brick_tuning::{INDEX_LOG_COMPACT_BYTES, INDEX_RECORD_BYTES_MAX, NAME_BYTES_MAX};
use brick_wire::{FileId, ROOT_FILE_ID};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const RECORD_LINK: u8 = 1;
const RECORD_UNLINK: u8 = 2;
/// len (u32) + crc (u32)
const RECORD_PREFIX_BYTES: usize = 8;
/// kind (u8) + fid (u64) + parent (u64)
const RECORD_FIXED_BYTES: usize = 17;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub parent: FileId,
    pub name: String,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayReport {
    pub records: u64,
    /// Bytes cut from the end of the log because they did not form a whole, valid record.
    pub torn_tail_bytes: u64,
}

pub struct Index {
    path: PathBuf,
    log: File,
    log_bytes: u64,
    by_id: HashMap<FileId, Location>,
    by_name: HashMap<(FileId, String), FileId>,
    /// Records appended since the last `sync`.
    dirty: bool,
    /// Directories whose entries changed since they were last fsynced.
    unsynced_dirs: HashSet<FileId>,
}

impl Index {
    pub fn open(path: &Path) -> io::Result<(Index, ReplayReport)> {
        let mut index = Index {
            path: path.to_path_buf(),
            log: OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .mode(0o600)
                .open(path)?,
            log_bytes: 0,
            by_id: HashMap::new(),
            by_name: HashMap::new(),
            dirty: false,
            unsynced_dirs: HashSet::new(),
        };
        let report = index.replay()?;
        if index.log_bytes > INDEX_LOG_COMPACT_BYTES {
            index.compact()?;
        }
        Ok((index, report))
    }

    fn replay(&mut self) -> io::Result<ReplayReport> {
        let mut bytes = Vec::new();
        File::open(&self.path)?.read_to_end(&mut bytes)?;
        let mut at = 0usize;
        let mut report = ReplayReport::default();
        while let Some((kind, fid, parent, name, used)) = parse_record(&bytes[at..]) {
            self.apply(kind, fid, parent, name);
            at += used;
            report.records += 1;
        }
        if at < bytes.len() {
            report.torn_tail_bytes = (bytes.len() - at) as u64;
            self.log.set_len(at as u64)?;
            self.log.sync_data()?;
        }
        self.log_bytes = at as u64;
        Ok(report)
    }

    fn apply(&mut self, kind: u8, fid: FileId, parent: FileId, name: String) {
        match kind {
            RECORD_LINK => self.link_in_memory(fid, parent, name),
            _ => self.unlink_in_memory(fid),
        }
    }

    fn link_in_memory(&mut self, fid: FileId, parent: FileId, name: String) {
        self.unlink_in_memory(fid);
        if let Some(previous) = self.by_name.remove(&(parent, name.clone())) {
            self.by_id.remove(&previous);
        }
        self.by_name.insert((parent, name.clone()), fid);
        self.by_id.insert(fid, Location { parent, name });
    }

    fn unlink_in_memory(&mut self, fid: FileId) {
        if let Some(loc) = self.by_id.remove(&fid) {
            self.by_name.remove(&(loc.parent, loc.name));
        }
    }

    pub fn location(&self, fid: FileId) -> Option<&Location> {
        self.by_id.get(&fid)
    }

    pub fn child(&self, parent: FileId, name: &str) -> Option<FileId> {
        self.by_name.get(&(parent, name.to_string())).copied()
    }

    /// Every file id with a location (a full heal enumerates them).
    pub fn ids(&self) -> impl Iterator<Item = FileId> + '_ {
        self.by_id.keys().copied()
    }

    pub fn contains(&self, fid: FileId) -> bool {
        fid == ROOT_FILE_ID || self.by_id.contains_key(&fid)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Records that `fid` now lives at (parent, name), replacing whatever was there.
    pub fn link(&mut self, fid: FileId, parent: FileId, name: &str) -> io::Result<()> {
        assert!(fid != ROOT_FILE_ID && name.len() <= NAME_BYTES_MAX);
        self.append(RECORD_LINK, fid, parent, name)?;
        self.link_in_memory(fid, parent, name.to_string());
        Ok(())
    }

    pub fn unlink(&mut self, fid: FileId) -> io::Result<()> {
        if !self.by_id.contains_key(&fid) {
            return Ok(());
        }
        self.append(RECORD_UNLINK, fid, 0, "")?;
        self.unlink_in_memory(fid);
        Ok(())
    }

    fn append(&mut self, kind: u8, fid: FileId, parent: FileId, name: &str) -> io::Result<()> {
        let record = encode_record(kind, fid, parent, name);
        if let Err(e) = self.log.write_all(&record) {
            // Cut a partial record now, or every later record would sit behind garbage and be
            // dropped at the next replay.
            let _ = self.log.set_len(self.log_bytes);
            return Err(e);
        }
        self.log_bytes += record.len() as u64;
        self.dirty = true;
        Ok(())
    }

    /// Notes that a directory's entries changed and are not yet durable.
    pub fn mark_dir_unsynced(&mut self, dir: FileId) {
        self.unsynced_dirs.insert(dir);
    }

    /// Whether `dir` had unsynced entry changes; clears the mark.
    pub fn take_dir_unsynced(&mut self, dir: FileId) -> bool {
        self.unsynced_dirs.remove(&dir)
    }

    pub fn unsynced_dir_count(&self) -> usize {
        self.unsynced_dirs.len()
    }

    pub fn drain_unsynced_dirs(&mut self) -> Vec<FileId> {
        self.unsynced_dirs.drain().collect()
    }

    /// A handle on the log to fdatasync without holding the index, if records were appended
    /// since the last sync (they count as synced from now; `mark_log_unsynced` if it fails).
    pub fn take_sync_handle(&mut self) -> io::Result<Option<File>> {
        if !self.dirty {
            return Ok(None);
        }
        let handle = self.log.try_clone()?;
        self.dirty = false;
        Ok(Some(handle))
    }

    pub fn mark_log_unsynced(&mut self) {
        self.dirty = true;
    }

    /// Makes every appended record durable. Cheap when nothing changed.
    pub fn sync(&mut self) -> io::Result<bool> {
        if !self.dirty {
            return Ok(false);
        }
        self.log.sync_data()?;
        self.dirty = false;
        Ok(true)
    }

    /// Rewrites the log as one record per live entry: write a new file, fsync, rename, fsync dir.
    pub fn compact(&mut self) -> io::Result<()> {
        let tmp = self.path.with_extension("log.tmp");
        let mut out = Vec::with_capacity(self.by_id.len() * 48);
        for (fid, loc) in &self.by_id {
            out.extend_from_slice(&encode_record(RECORD_LINK, *fid, loc.parent, &loc.name));
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.log = OpenOptions::new()
            .append(true)
            .read(true)
            .open(&self.path)?;
        self.log_bytes = out.len() as u64;
        self.dirty = false;
        Ok(())
    }
}

fn encode_record(kind: u8, fid: FileId, parent: FileId, name: &str) -> Vec<u8> {
    let body_len = RECORD_FIXED_BYTES + name.len();
    let mut r = Vec::with_capacity(RECORD_PREFIX_BYTES + body_len);
    r.extend_from_slice(&(body_len as u32).to_le_bytes());
    r.extend_from_slice(&[0; 4]);
    r.push(kind);
    r.extend_from_slice(&fid.to_le_bytes());
    r.extend_from_slice(&parent.to_le_bytes());
    r.extend_from_slice(name.as_bytes());
    let crc = crc32c::crc32c(&r[RECORD_PREFIX_BYTES..]);
    r[4..8].copy_from_slice(&crc.to_le_bytes());
    r
}

/// One record from the front of `bytes`, or None if they do not start with a whole valid one.
fn parse_record(bytes: &[u8]) -> Option<(u8, FileId, FileId, String, usize)> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    if !(RECORD_FIXED_BYTES..=INDEX_RECORD_BYTES_MAX).contains(&len) {
        return None;
    }
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let body = bytes.get(RECORD_PREFIX_BYTES..RECORD_PREFIX_BYTES + len)?;
    if crc32c::crc32c(body) != crc {
        return None;
    }
    let kind = body[0];
    if kind != RECORD_LINK && kind != RECORD_UNLINK {
        return None;
    }
    let fid = u64::from_le_bytes(body[1..9].try_into().ok()?);
    let parent = u64::from_le_bytes(body[9..17].try_into().ok()?);
    let name = std::str::from_utf8(&body[17..]).ok()?.to_string();
    Some((kind, fid, parent, name, RECORD_PREFIX_BYTES + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.log");
        {
            let (mut idx, _) = Index::open(&path).unwrap();
            idx.link(10, ROOT_FILE_ID, "a").unwrap();
            idx.link(11, ROOT_FILE_ID, "b").unwrap();
            idx.link(10, 11, "a-moved").unwrap();
            idx.unlink(11).unwrap();
            idx.sync().unwrap();
        }
        let good_len = std::fs::metadata(&path).unwrap().len();
        // A crash mid-append leaves a partial record; a bit flip leaves a bad crc.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        let partial = encode_record(RECORD_LINK, 12, ROOT_FILE_ID, "c");
        f.write_all(&partial[..partial.len() - 3]).unwrap();
        drop(f);
        let (idx, report) = Index::open(&path).unwrap();
        assert_eq!(report.records, 4);
        assert_eq!(report.torn_tail_bytes, (partial.len() - 3) as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
        assert_eq!(idx.child(11, "a-moved"), Some(10));
        assert_eq!(idx.child(ROOT_FILE_ID, "a"), None);
        assert_eq!(idx.location(11), None);
        assert_eq!(idx.child(ROOT_FILE_ID, "c"), None);
    }

    #[test]
    fn corrupt_record_is_never_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.log");
        {
            let (mut idx, _) = Index::open(&path).unwrap();
            idx.link(10, ROOT_FILE_ID, "a").unwrap();
            idx.link(20, ROOT_FILE_ID, "b").unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40; // flips a name byte of the second record
        std::fs::write(&path, &bytes).unwrap();
        let (idx, report) = Index::open(&path).unwrap();
        assert_eq!(report.records, 1);
        assert!(report.torn_tail_bytes > 0);
        assert_eq!(idx.child(ROOT_FILE_ID, "a"), Some(10));
        assert_eq!(idx.location(20), None);
    }

    #[test]
    fn compaction_keeps_live_entries_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.log");
        let (mut idx, _) = Index::open(&path).unwrap();
        for i in 0..100u64 {
            idx.link(100 + i, ROOT_FILE_ID, &format!("f{i}")).unwrap();
        }
        for i in 0..90u64 {
            idx.unlink(100 + i).unwrap();
        }
        let before = std::fs::metadata(&path).unwrap().len();
        idx.compact().unwrap();
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(after < before / 5, "{after} vs {before}");
        drop(idx);
        let (idx, report) = Index::open(&path).unwrap();
        assert_eq!(report.records, 10);
        assert_eq!(idx.child(ROOT_FILE_ID, "f95"), Some(195));
    }
}
