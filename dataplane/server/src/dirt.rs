//! Dirty tracking for heal (design decision 7 of the brief): for one (volume, PG, local
//! member), what each absent member of the PG missed while this member stayed up to date.
//! Every change is appended to `<brick>/.brickd/dirt/pg-<PG>.log` before the operation that
//! caused it is applied, so any up-to-date member can be the heal source. Byte-level format:
//! docs/disk-format.md ("Dirt log").

use brick_replication::{LockKey, MEMBERS_MAX};
use brick_tuning::ACTIVITY_LOG_BYTES;
use brick_wire::FileId;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub(crate) const RECORD_BYTES: usize = 32;
/// Ranges are recorded in whole 4 KiB blocks.
pub(crate) const DIRT_BLOCK_BYTES: u64 = 4096;

const KIND_RANGE: u8 = 1;
const KIND_ATTR: u8 = 2;
const KIND_DIR: u8 = 3;
const KIND_TREE: u8 = 4;
const KIND_ALL: u8 = 5;
const KIND_CLEAR: u8 = 6;

/// One thing a member missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dirt {
    /// Bytes [start, end) of a file (`end` u64::MAX: to its end, after a truncate).
    Range { fid: FileId, start: u64, end: u64 },
    /// A file's or directory's attributes (mode, owner, times, size).
    Attr(FileId),
    /// A directory's entries.
    Dir(FileId),
    /// Every directory's entries (a namespace change in doubt whose body is gone).
    Tree,
    /// Everything (a new brick, or a damaged log).
    All,
}

impl Dirt {
    pub fn range(fid: FileId, offset: u64, len: u64) -> Dirt {
        let start = offset / DIRT_BLOCK_BYTES * DIRT_BLOCK_BYTES;
        let end = offset
            .saturating_add(len.max(1))
            .div_ceil(DIRT_BLOCK_BYTES)
            .saturating_mul(DIRT_BLOCK_BYTES);
        Dirt::Range { fid, start, end }
    }
}

/// Disjoint, non-adjacent byte ranges.
#[derive(Debug, Default, Clone)]
pub(crate) struct RangeSet(BTreeMap<u64, u64>);

impl RangeSet {
    pub fn covers(&self, start: u64, end: u64) -> bool {
        self.0
            .range(..=start)
            .next_back()
            .is_some_and(|(_, &e)| e >= end)
    }

    pub fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        let overlapping: Vec<(u64, u64)> = self
            .0
            .range(..=end)
            .rev()
            .take_while(|(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.0.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.0.insert(start, end);
    }

    pub fn remove(&mut self, start: u64, end: u64) {
        let overlapping: Vec<(u64, u64)> = self
            .0
            .range(..end)
            .rev()
            .take_while(|(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.0.remove(&s);
            if s < start {
                self.0.insert(s, start);
            }
            if e > end {
                self.0.insert(end, e);
            }
        }
    }

    pub fn first(&self) -> Option<(u64, u64)> {
        self.0.iter().next().map(|(&s, &e)| (s, e))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes in finite ranges (a range to the end of a file counts once its size is known).
    pub fn bytes(&self) -> u64 {
        self.0
            .iter()
            .filter(|(_, &e)| e != u64::MAX)
            .map(|(&s, &e)| e - s)
            .sum()
    }
}

/// What one absent member missed.
#[derive(Debug, Default, Clone)]
pub(crate) struct MemberDirt {
    pub ranges: BTreeMap<FileId, RangeSet>,
    pub attrs: BTreeSet<FileId>,
    pub dirs: BTreeSet<FileId>,
    pub tree: bool,
    pub all: bool,
}

impl MemberDirt {
    /// Everything recorded, as items (a heal hands them to the member it healed).
    pub fn items(&self) -> Vec<Dirt> {
        let mut out = Vec::new();
        if self.all {
            out.push(Dirt::All);
        }
        if self.tree {
            out.push(Dirt::Tree);
        }
        out.extend(self.dirs.iter().map(|&d| Dirt::Dir(d)));
        out.extend(self.attrs.iter().map(|&f| Dirt::Attr(f)));
        for (&fid, r) in &self.ranges {
            out.extend(
                r.0.iter()
                    .map(|(&start, &end)| Dirt::Range { fid, start, end }),
            );
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.attrs.is_empty() && !self.has_namespace() && !self.all
    }

    pub fn has_namespace(&self) -> bool {
        self.tree || !self.dirs.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.ranges.values().map(RangeSet::bytes).sum()
    }

    fn covers(&self, d: &Dirt) -> bool {
        if self.all {
            return true;
        }
        match *d {
            Dirt::Range { fid, start, end } => {
                self.ranges.get(&fid).is_some_and(|r| r.covers(start, end))
            }
            Dirt::Attr(fid) => self.attrs.contains(&fid),
            Dirt::Dir(fid) => self.tree || self.dirs.contains(&fid),
            Dirt::Tree => self.tree,
            Dirt::All => false,
        }
    }

    pub fn add(&mut self, d: Dirt) {
        match d {
            Dirt::Range { fid, start, end } => {
                self.ranges.entry(fid).or_default().insert(start, end)
            }
            Dirt::Attr(fid) => {
                self.attrs.insert(fid);
            }
            Dirt::Dir(fid) => {
                self.dirs.insert(fid);
            }
            Dirt::Tree => self.tree = true,
            Dirt::All => self.all = true,
        }
    }

    pub fn remove_range(&mut self, fid: FileId, start: u64, end: u64) {
        if let Some(r) = self.ranges.get_mut(&fid) {
            r.remove(start, end);
            if r.is_empty() {
                self.ranges.remove(&fid);
            }
        }
    }
}

/// The dirt log of one slot and its contents in memory, by member.
pub(crate) struct DirtLog {
    path: PathBuf,
    file: Option<File>,
    log_bytes: u64,
    pub members: [MemberDirt; MEMBERS_MAX as usize],
}

/// What replaying a dirt log found.
#[derive(Debug, Default)]
pub(crate) struct DirtReplay {
    pub records: u64,
    pub torn_tail_bytes: u64,
    /// Records whose crc32c did not match: never applied; every member needs a full heal.
    pub corrupt_records: u64,
}

impl DirtLog {
    /// A log that records in memory only (its file could not be opened).
    pub fn detached() -> DirtLog {
        DirtLog {
            path: PathBuf::from("(not open)"),
            file: None,
            log_bytes: 0,
            members: Default::default(),
        }
    }

    /// Opens (creating) the log at `path` and replays it.
    pub fn open(path: &Path) -> io::Result<(DirtLog, DirtReplay)> {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new().recursive(true).create(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut log = DirtLog {
            path: path.to_path_buf(),
            file: None,
            log_bytes: 0,
            members: Default::default(),
        };
        let report = log.replay(&bytes);
        if report.torn_tail_bytes > 0 {
            file.set_len(log.log_bytes)?;
        }
        log.file = Some(file);
        Ok((log, report))
    }

    fn replay(&mut self, bytes: &[u8]) -> DirtReplay {
        let mut report = DirtReplay::default();
        let whole = bytes.len() / RECORD_BYTES * RECORD_BYTES;
        report.torn_tail_bytes = (bytes.len() - whole) as u64;
        for rec in bytes[..whole].chunks_exact(RECORD_BYTES) {
            match decode(rec) {
                Some((target, None)) => self.members[target as usize] = MemberDirt::default(),
                Some((target, Some(d))) => self.members[target as usize].add(d),
                None => report.corrupt_records += 1,
            }
            report.records += 1;
        }
        if report.corrupt_records > 0 {
            for m in self.members.iter_mut() {
                m.all = true;
            }
        }
        self.log_bytes = whole as u64;
        report
    }

    /// Records `d` for every member in `targets`, unless already recorded. The record is in
    /// the page cache when this returns (it survives the process being killed); `sync`
    /// makes it survive power loss.
    pub fn record(&mut self, targets: u8, d: Dirt) -> io::Result<()> {
        let mut out = Vec::new();
        for m in 0..MEMBERS_MAX {
            if targets & (1 << m) == 0 || self.members[m as usize].covers(&d) {
                continue;
            }
            out.extend_from_slice(&encode(m, Some(d)));
            self.members[m as usize].add(d);
        }
        self.append(&out)
    }

    /// Forgets everything recorded for member `m` (it is up to date again).
    pub fn clear(&mut self, m: u8) -> io::Result<()> {
        if self.members[m as usize].is_empty() {
            return Ok(());
        }
        self.members[m as usize] = MemberDirt::default();
        if self.members.iter().all(MemberDirt::is_empty) {
            if let Some(f) = &self.file {
                f.set_len(0)?;
                f.sync_data()?;
            }
            self.log_bytes = 0;
            return Ok(());
        }
        self.append(&encode(m, None))
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let Some(f) = self.file.as_mut() else {
            return Err(io::Error::other(format!(
                "{}: dirt log not open",
                self.path.display()
            )));
        };
        if let Err(e) = f.write_all(bytes) {
            let _ = f.set_len(self.log_bytes);
            return Err(e);
        }
        self.log_bytes += bytes.len() as u64;
        Ok(())
    }

    pub fn sync(&self) -> io::Result<()> {
        match &self.file {
            Some(f) if self.log_bytes > 0 => f.sync_data(),
            _ => Ok(()),
        }
    }
}

/// The activity log of one slot: `<brick>/.brickd/dirt/pg-<PG>.activity`, the same 32-byte
/// records (kind range, the op's lock as the range). Appended before this member applies an
/// op; rewritten now and then with what is still in doubt (`Replica::activity_keys`).
///
/// The file has a fixed size and is mapped shared, so an append is a 32-byte copy into the
/// page cache: it survives the process being killed like a write(2) would, without a system
/// call per op (one per op cost a quarter of a secondary's CPU at 4 KiB QD32).
pub(crate) struct ActivityLog {
    /// None: detached (the slot has no local brick).
    path: Option<PathBuf>,
    map: Option<MappedLog>,
    /// Records appended since the last rewrite.
    pub appended: usize,
    pub rewritten_at: std::time::Instant,
}

impl ActivityLog {
    /// Opens the log and returns what it holds: the ranges this member may have applied that
    /// the others do not have. A damaged record stands for everything.
    pub fn open(path: &Path) -> io::Result<(ActivityLog, Vec<LockKey>)> {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new().recursive(true).create(dir)?;
        }
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let keys = activity_keys_of(&bytes);
        let mut log = ActivityLog {
            path: Some(path.to_path_buf()),
            map: None,
            appended: 0,
            rewritten_at: std::time::Instant::now(),
        };
        // Starts a fresh mapped file holding the same ranges (an older log may be shorter,
        // or end in a torn record).
        log.rewrite(&keys)?;
        Ok((log, keys))
    }

    pub fn detached() -> ActivityLog {
        ActivityLog {
            path: None,
            map: None,
            appended: 0,
            rewritten_at: std::time::Instant::now(),
        }
    }

    /// Appends `lock`; a full log is first compacted to `in_doubt()`.
    pub fn append(
        &mut self,
        lock: LockKey,
        in_doubt: impl FnOnce() -> Vec<LockKey>,
    ) -> io::Result<()> {
        let rec = encode_lock(lock);
        let Some(map) = self.map.as_mut() else {
            return Err(io::Error::other("activity log not open"));
        };
        if !map.push(&rec) {
            self.rewrite(&in_doubt())?;
            if !self.map.as_mut().is_some_and(|m| m.push(&rec)) {
                return Err(io::Error::other("activity log full after a rewrite"));
            }
        }
        self.appended += 1;
        Ok(())
    }

    /// Replaces the log by `keys` (write a new file, rename it over the old one, map it).
    /// More keys than the log holds are written as one record for everything.
    pub fn rewrite(&mut self, keys: &[LockKey]) -> io::Result<()> {
        let Some(path) = self.path.as_ref() else {
            return Ok(());
        };
        let records_max = ACTIVITY_LOG_BYTES / RECORD_BYTES;
        let everything = [LockKey::EVERYTHING];
        // Half the log at most, so that appends have room until the next rewrite.
        let keys = if keys.len() > records_max / 2 {
            &everything[..]
        } else {
            keys
        };
        let tmp = path.with_extension("activity.tmp");
        let mut bytes = Vec::with_capacity(keys.len() * RECORD_BYTES);
        for &k in keys {
            bytes.extend_from_slice(&encode_lock(k));
        }
        {
            let mut f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.set_len(ACTIVITY_LOG_BYTES as u64)?;
        }
        std::fs::rename(&tmp, path)?;
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        self.map = Some(MappedLog::new(file, keys.len() * RECORD_BYTES)?);
        self.appended = 0;
        self.rewritten_at = std::time::Instant::now();
        Ok(())
    }

    pub fn sync(&self) -> io::Result<()> {
        match &self.map {
            Some(m) => m.file.sync_data(),
            None => Ok(()),
        }
    }
}

/// The ranges an activity log's bytes hold. Zero records are room never written, and a
/// partial record at the end of a file of the older, appended form is a torn write, cut. A
/// damaged record stands for everything, even the last one written: a copy the process was
/// killed in the middle of is rare enough that a full heal costs less than guessing.
fn activity_keys_of(bytes: &[u8]) -> Vec<LockKey> {
    let mut keys = Vec::new();
    for rec in bytes.chunks_exact(RECORD_BYTES) {
        if rec.iter().all(|&b| b == 0) {
            continue;
        }
        match decode(rec) {
            Some((_, Some(Dirt::Range { fid, start, end }))) => {
                keys.push(LockKey { fid, start, end })
            }
            _ => keys.push(LockKey::EVERYTHING),
        }
    }
    keys.sort_by_key(|k| (k.fid, k.start, k.end));
    keys.dedup();
    keys
}

/// A file of `ACTIVITY_LOG_BYTES` mapped shared, read and write, filled from the front.
struct MappedLog {
    file: File,
    base: std::ptr::NonNull<u8>,
    used: usize,
}

impl MappedLog {
    fn new(file: File, used: usize) -> io::Result<MappedLog> {
        use std::os::fd::AsRawFd;
        assert!(used <= ACTIVITY_LOG_BYTES);
        // SAFETY: a fresh shared mapping of a file this process created with this length and
        // never shortens; the kernel picks the address.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ACTIVITY_LOG_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = std::ptr::NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(MappedLog { file, base, used })
    }

    /// Copies `rec` after the records so far; false when the log is full.
    fn push(&mut self, rec: &[u8; RECORD_BYTES]) -> bool {
        if self.used + RECORD_BYTES > ACTIVITY_LOG_BYTES {
            return false;
        }
        // SAFETY: `used + RECORD_BYTES` is within the mapping, which lives as long as self and
        // is written only through it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                rec.as_ptr(),
                self.base.as_ptr().add(self.used),
                RECORD_BYTES,
            );
        }
        self.used += RECORD_BYTES;
        true
    }
}

impl Drop for MappedLog {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; nothing refers to it after this.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), ACTIVITY_LOG_BYTES);
        }
    }
}

fn encode_lock(k: LockKey) -> [u8; RECORD_BYTES] {
    encode(
        0,
        Some(Dirt::Range {
            fid: k.fid,
            start: k.start,
            end: k.end,
        }),
    )
}

pub(crate) fn encode(target: u8, d: Option<Dirt>) -> [u8; RECORD_BYTES] {
    let (kind, fid, start, end) = match d {
        None => (KIND_CLEAR, 0, 0, 0),
        Some(Dirt::Range { fid, start, end }) => (KIND_RANGE, fid, start, end),
        Some(Dirt::Attr(fid)) => (KIND_ATTR, fid, 0, 0),
        Some(Dirt::Dir(fid)) => (KIND_DIR, fid, 0, 0),
        Some(Dirt::Tree) => (KIND_TREE, 0, 0, 0),
        Some(Dirt::All) => (KIND_ALL, 0, 0, 0),
    };
    let mut rec = [0u8; RECORD_BYTES];
    rec[4] = kind;
    rec[5] = target;
    rec[8..16].copy_from_slice(&fid.to_le_bytes());
    rec[16..24].copy_from_slice(&start.to_le_bytes());
    rec[24..32].copy_from_slice(&end.to_le_bytes());
    let crc = crc32c::crc32c(&rec[4..]);
    rec[..4].copy_from_slice(&crc.to_le_bytes());
    rec
}

/// `None`: damaged. `Some((target, None))`: a clear record.
pub(crate) fn decode(rec: &[u8]) -> Option<(u8, Option<Dirt>)> {
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(rec.get(at..at + 8)?.try_into().ok()?))
    };
    let crc = u32::from_le_bytes(rec.get(..4)?.try_into().ok()?);
    if crc32c::crc32c(rec.get(4..)?) != crc {
        return None;
    }
    let (kind, target) = (rec[4], rec[5]);
    if target >= MEMBERS_MAX || rec[6] != 0 || rec[7] != 0 {
        return None;
    }
    let (fid, start, end) = (word(8)?, word(16)?, word(24)?);
    let d = match kind {
        KIND_CLEAR => return Some((target, None)),
        KIND_RANGE if start < end => Dirt::Range { fid, start, end },
        KIND_ATTR => Dirt::Attr(fid),
        KIND_DIR => Dirt::Dir(fid),
        KIND_TREE => Dirt::Tree,
        KIND_ALL => Dirt::All,
        _ => return None,
    };
    Some((target, Some(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_sets_merge_split_and_cover() {
        let mut r = RangeSet::default();
        r.insert(0, 4096);
        r.insert(8192, 12288);
        r.insert(4096, 8192);
        assert_eq!(r.first(), Some((0, 12288)));
        assert!(r.covers(4096, 8192) && !r.covers(8192, 16384));
        r.remove(4096, 8192);
        assert_eq!(r.bytes(), 8192);
        assert!(!r.covers(4096, 4097));
        r.remove(0, 20000);
        assert!(r.is_empty());
    }

    #[test]
    fn activity_log_keeps_ranges_across_reopen_and_rewrite() {
        let dir = std::env::temp_dir().join(format!("brick-activity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("pg-1.activity");
        let (mut log, keys) = ActivityLog::open(&path).unwrap();
        assert!(keys.is_empty());
        log.append(LockKey::range(9, 4096, 100), Vec::new).unwrap();
        log.append(LockKey::NAMESPACE, Vec::new).unwrap();
        // Killed here: the mapped records are in the page cache, never written with write(2).
        let (mut log, keys) = ActivityLog::open(&path).unwrap();
        assert_eq!(keys, vec![LockKey::NAMESPACE, LockKey::range(9, 4096, 100)]);
        log.rewrite(&[LockKey::whole_file(3)]).unwrap();
        log.append(LockKey::range(3, 0, 1), Vec::new).unwrap();
        drop(log);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            ACTIVITY_LOG_BYTES as u64
        );
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.push(7); // a torn record of the older, appended form
        std::fs::write(&path, &bytes).unwrap();
        let (_, keys) = ActivityLog::open(&path).unwrap();
        assert_eq!(keys, vec![LockKey::range(3, 0, 1), LockKey::whole_file(3)]);
        // A damaged record stands for everything.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[RECORD_BYTES + 9] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let (_, keys) = ActivityLog::open(&path).unwrap();
        assert!(keys.contains(&LockKey::EVERYTHING), "{keys:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_activity_log_is_compacted_to_what_is_in_doubt() {
        let dir = std::env::temp_dir().join(format!("brick-activity-full-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("pg-2.activity");
        let (mut log, _) = ActivityLog::open(&path).unwrap();
        let records_max = ACTIVITY_LOG_BYTES / RECORD_BYTES;
        let mut compactions = 0;
        for i in 0..records_max as u64 + 10 {
            log.append(LockKey::range(5, i * 4096, 4096), || {
                compactions += 1;
                vec![LockKey::whole_file(8)]
            })
            .unwrap();
        }
        assert_eq!(compactions, 1);
        let (_, keys) = ActivityLog::open(&path).unwrap();
        assert_eq!(keys.len(), 11, "the in-doubt key and the 10 appended since");
        assert!(keys.contains(&LockKey::whole_file(8)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn replay_restores_dirt_and_detects_damage() {
        let dir = std::env::temp_dir().join(format!("brick-dirt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("pg-3.log");
        {
            let (mut log, _) = DirtLog::open(&path).unwrap();
            log.record(0b010, Dirt::range(7, 5000, 10)).unwrap();
            log.record(0b010, Dirt::range(7, 4096, 100)).unwrap(); // covered: no record
            log.record(0b110, Dirt::Dir(1)).unwrap();
            log.clear(2).unwrap();
        }
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            4 * RECORD_BYTES as u64
        );
        let (log, report) = DirtLog::open(&path).unwrap();
        assert_eq!((report.records, report.corrupt_records), (4, 0));
        assert!(log.members[1].ranges[&7].covers(4096, 8192));
        assert!(log.members[1].dirs.contains(&1) && log.members[2].is_empty());
        drop(log);
        // A torn tail is cut; a flipped bit is detected and never applied.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[1, 2, 3]);
        bytes[RECORD_BYTES + 9] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let (log, report) = DirtLog::open(&path).unwrap();
        assert_eq!((report.torn_tail_bytes, report.corrupt_records), (3, 1));
        assert!(log.members.iter().all(|m| m.all), "damage: full heal");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            4 * RECORD_BYTES as u64
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
