//! The two logs each (volume, PG, local member) keeps under `<brick>/.brickd/dirt/`, as files.
//! What they hold and when they are written is decided by `brick_replication` (the `Healer`
//! produces the dirt log's bytes, the `Replica` says what the activity log must keep); this
//! module only moves bytes to and from disk. Byte-level format: docs/disk-format.md §6.
//!
//! - `pg-<PG>.log`, the dirt log: what absent members missed, appended before the operation
//!   that caused it is applied, so any up-to-date member can be the heal source.
//! - `pg-<PG>.activity`, the activity log: the ranges this member is applying that may not be
//!   everywhere yet; a fixed-size file mapped shared, so an append is a 32-byte copy into the
//!   page cache (it survives the process being killed like a write(2) would, without a system
//!   call per op: one per op cost a quarter of a secondary's CPU at 4 KiB QD32).

use brick_replication::dirt::{activity_keys_of, activity_rewrite, encode_activity, RECORD_BYTES};
use brick_replication::{DirtState, LockKey, LogWrite, Member};
use brick_tuning::ACTIVITY_LOG_BYTES;
use memmap2::MmapMut;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The dirt log file of one slot (its contents live in the slot's `Healer`).
pub(crate) struct DirtLog {
    path: PathBuf,
    file: Option<File>,
    log_bytes: u64,
}

/// What opening a dirt log found: its state, and how many records were damaged.
pub(crate) struct OpenedDirt {
    pub log: DirtLog,
    pub state: DirtState,
    pub corrupt_records: u64,
}

impl DirtLog {
    /// A log that records in memory only (its file could not be opened).
    pub fn detached() -> DirtLog {
        DirtLog {
            path: PathBuf::from("(not open)"),
            file: None,
            log_bytes: 0,
        }
    }

    /// Opens (creating) the log at `path` and replays it for member `me`; a torn tail is cut.
    /// `power_lost`: records not yet synced may be missing (docs/heal.md).
    pub fn open(path: &Path, me: Member, power_lost: bool) -> io::Result<OpenedDirt> {
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
        let (state, replay) = DirtState::replay(&bytes, me, power_lost);
        if replay.torn_tail_bytes > 0 {
            file.set_len(replay.kept_bytes)?;
        }
        // Distrust that must outlive the next restart (damage, power loss).
        file.write_all(&replay.append)?;
        let log_bytes = replay.kept_bytes + replay.append.len() as u64;
        Ok(OpenedDirt {
            log: DirtLog {
                path: path.to_path_buf(),
                file: Some(file),
                log_bytes,
            },
            state,
            corrupt_records: replay.corrupt_records,
        })
    }

    /// Performs one of the healer's log writes. An append reaches the page cache before this
    /// returns (it survives the process being killed); `sync` makes it survive power loss.
    pub fn write(&mut self, write: &LogWrite) -> io::Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Err(io::Error::other(format!(
                "{}: dirt log not open",
                self.path.display()
            )));
        };
        match write {
            LogWrite::Append { records, .. } => {
                if let Err(e) = f.write_all(records) {
                    let _ = f.set_len(self.log_bytes);
                    return Err(e);
                }
                self.log_bytes += records.len() as u64;
            }
            LogWrite::Truncate => {
                f.set_len(0)?;
                f.sync_data()?;
                self.log_bytes = 0;
            }
        }
        Ok(())
    }

    pub fn sync(&self) -> io::Result<()> {
        match &self.file {
            Some(f) if self.log_bytes > 0 => f.sync_data(),
            _ => Ok(()),
        }
    }
}

/// The activity log of one slot. Appended before this member applies an op; rewritten now
/// and then with what is still in doubt (`Replica::activity_keys`).
pub(crate) struct ActivityLog {
    /// None: detached (the slot has no local brick).
    path: Option<PathBuf>,
    map: Option<MappedLog>,
    /// Records appended since the last rewrite.
    pub appended: usize,
    pub rewritten_at: std::time::Instant,
}

const RECORDS_MAX: usize = ACTIVITY_LOG_BYTES / RECORD_BYTES;

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
        let rec = encode_activity(lock);
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
    pub fn rewrite(&mut self, keys: &[LockKey]) -> io::Result<()> {
        let Some(path) = self.path.as_ref() else {
            return Ok(());
        };
        let bytes = activity_rewrite(keys, RECORDS_MAX);
        let tmp = path.with_extension("activity.tmp");
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
        self.map = Some(MappedLog::new(file, bytes.len())?);
        self.appended = 0;
        self.rewritten_at = std::time::Instant::now();
        Ok(())
    }

    pub fn sync(&self) -> io::Result<()> {
        match &self.map {
            Some(m) => m.map.flush(),
            None => Ok(()),
        }
    }
}

/// A file of `ACTIVITY_LOG_BYTES` mapped shared, read and write, filled from the front.
struct MappedLog {
    map: MmapMut,
    used: usize,
}

impl MappedLog {
    fn new(file: File, used: usize) -> io::Result<MappedLog> {
        assert!(used <= ACTIVITY_LOG_BYTES);
        if file.metadata()?.len() != ACTIVITY_LOG_BYTES as u64 {
            return Err(io::Error::other("activity log has the wrong size"));
        }
        // SAFETY: the file is this process's own (mode 0600 under the brick's metadata
        // directory), created at this length by `rewrite` and never shortened while mapped;
        // nothing else writes it.
        let map = unsafe { MmapMut::map_mut(&file)? };
        Ok(MappedLog { map, used })
    }

    /// Copies `rec` after the records so far; false when the log is full.
    fn push(&mut self, rec: &[u8; RECORD_BYTES]) -> bool {
        let Some(room) = self.map.get_mut(self.used..self.used + RECORD_BYTES) else {
            return false;
        };
        room.copy_from_slice(rec);
        self.used += RECORD_BYTES;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brick_replication::Dirt;

    #[test]
    fn activity_log_keeps_ranges_across_reopen_and_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg-1.activity");
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
    }

    #[test]
    fn a_full_activity_log_is_compacted_to_what_is_in_doubt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg-2.activity");
        let (mut log, _) = ActivityLog::open(&path).unwrap();
        let mut compactions = 0;
        for i in 0..RECORDS_MAX as u64 + 10 {
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
    }

    #[test]
    fn the_dirt_log_file_replays_what_the_healer_wrote_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg-3.log");
        let opened = DirtLog::open(&path, 0, false).unwrap();
        let (mut log, mut state) = (opened.log, opened.state);
        for w in [
            state.record(0b010, Dirt::range(7, 5000, 10)),
            state.record(0b110, Dirt::Dir(1)),
            state.clear(2),
        ]
        .into_iter()
        .flatten()
        {
            log.write(&w).unwrap();
        }
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            bytes.len(),
            4 * RECORD_BYTES,
            "one range, a directory for two, a clear"
        );
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&path, &bytes).unwrap();
        let opened = DirtLog::open(&path, 0, false).unwrap();
        assert_eq!(opened.state.members[1], state.members[1]);
        assert!(opened.state.members[2].is_empty());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            4 * RECORD_BYTES as u64
        );
        let (mut log, mut state) = (opened.log, opened.state);
        log.write(&state.clear(1).unwrap()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
