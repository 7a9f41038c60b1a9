//! Dirty tracking (design decision 7): what each absent member of a PG missed, as this member
//! recorded it, and the 32-byte records of the dirt and activity logs (docs/disk-format.md §6).
//! Pure: the driver persists the bytes this module produces (`LogWrite`) and hands it back the
//! bytes it finds at start (`DirtState::replay`, `activity_keys_of`).

use crate::lock::LockKey;
use crate::map::{Member, MEMBERS_MAX};
use brick_tuning::DIRT_BLOCK_BYTES;
use std::collections::{BTreeMap, BTreeSet};

pub type FileId = u64;

/// Bytes of one dirt-log or activity-log record.
pub const RECORD_BYTES: usize = 32;

const KIND_RANGE: u8 = 1;
const KIND_ATTR: u8 = 2;
const KIND_DIR: u8 = 3;
const KIND_TREE: u8 = 4;
const KIND_ALL: u8 = 5;
const KIND_CLEAR: u8 = 6;

/// One thing a member missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dirt {
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
    /// The range `offset..offset + len`, rounded out to whole dirt blocks.
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
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangeSet(BTreeMap<u64, u64>);

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

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(&s, &e)| (s, e))
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
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemberDirt {
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
            out.extend(r.iter().map(|(start, end)| Dirt::Range { fid, start, end }));
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

    pub fn covers(&self, d: &Dirt) -> bool {
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

/// A change the driver makes to the dirt log file, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogWrite {
    /// Append these records (for the members `targets`; if the append fails, the driver calls
    /// `DirtState::on_write_failed(targets)`). Must reach the page cache before the op that
    /// caused them is applied.
    Append { targets: u8, records: Vec<u8> },
    /// Nothing is recorded for anybody any more: empty the file and sync it.
    Truncate,
}

/// What replaying a dirt log found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DirtReplay {
    pub records: u64,
    pub torn_tail_bytes: u64,
    /// Records whose crc32c did not match: never applied; every member needs a full heal.
    pub corrupt_records: u64,
    /// Bytes of whole records: the length the file is cut to (a torn tail goes).
    pub kept_bytes: u64,
    /// Records the driver appends after the cut: "everything" for every other member when the
    /// log cannot be trusted (damage, power loss), so that the distrust outlives the next
    /// restart.
    pub append: Vec<u8>,
}

/// The contents of one member's dirt log, by absent member.
#[derive(Debug, Default, Clone)]
pub struct DirtState {
    pub members: [MemberDirt; MEMBERS_MAX as usize],
}

impl DirtState {
    /// Rebuilds the state from a log's bytes. A torn tail is not applied (the driver cuts the
    /// file to `kept_bytes`); a damaged record stands for everything, for every member.
    /// `power_lost`: the machine went down while this log was open, so records not yet synced
    /// may be missing anywhere in its tail: nothing it lacks can be trusted to be absent, and
    /// every other member gets a full heal.
    pub fn replay(bytes: &[u8], me: Member, power_lost: bool) -> (DirtState, DirtReplay) {
        let mut state = DirtState::default();
        let mut report = DirtReplay::default();
        let whole = bytes.len() / RECORD_BYTES * RECORD_BYTES;
        report.torn_tail_bytes = (bytes.len() - whole) as u64;
        report.kept_bytes = whole as u64;
        for rec in bytes[..whole].chunks_exact(RECORD_BYTES) {
            match decode(rec) {
                Some((target, None)) => state.members[target as usize] = MemberDirt::default(),
                Some((target, Some(d))) => state.members[target as usize].add(d),
                None => report.corrupt_records += 1,
            }
            report.records += 1;
        }
        if report.corrupt_records > 0 || power_lost {
            for m in (0..MEMBERS_MAX).filter(|&m| m != me) {
                if let Some(LogWrite::Append { records, .. }) = state.record(1 << m, Dirt::All) {
                    report.append.extend_from_slice(&records);
                }
            }
        }
        (state, report)
    }

    /// Records `d` for every member in `targets` not already known to miss it; returns what
    /// to append to the log.
    pub fn record(&mut self, targets: u8, d: Dirt) -> Option<LogWrite> {
        let mut records = Vec::new();
        let mut written = 0u8;
        for m in 0..MEMBERS_MAX {
            if targets & (1 << m) == 0 || self.members[m as usize].covers(&d) {
                continue;
            }
            records.extend_from_slice(&encode(m, Some(d)));
            self.members[m as usize].add(d);
            written |= 1 << m;
        }
        (!records.is_empty()).then_some(LogWrite::Append {
            targets: written,
            records,
        })
    }

    /// The log could not be written: what these members missed is no longer known, so they
    /// get a full heal (kept in memory; a restart before it finishes loses it).
    pub fn on_write_failed(&mut self, targets: u8) {
        for m in (0..MEMBERS_MAX).filter(|m| targets & (1 << m) != 0) {
            self.members[m as usize].all = true;
        }
    }

    /// Forgets everything recorded for member `m` (it is up to date again).
    pub fn clear(&mut self, m: Member) -> Option<LogWrite> {
        if self.members[m as usize].is_empty() {
            return None;
        }
        self.members[m as usize] = MemberDirt::default();
        if self.members.iter().all(MemberDirt::is_empty) {
            return Some(LogWrite::Truncate);
        }
        Some(LogWrite::Append {
            targets: 1 << m,
            records: encode(m, None).to_vec(),
        })
    }
}

/// One dirt-log record: `d` missed by `target`, or (`None`) a clear of everything for it.
pub fn encode(target: Member, d: Option<Dirt>) -> [u8; RECORD_BYTES] {
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
pub fn decode(rec: &[u8]) -> Option<(Member, Option<Dirt>)> {
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(rec.get(at..at + 8)?.try_into().ok()?))
    };
    if rec.len() != RECORD_BYTES {
        return None;
    }
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

/// An activity-log record: the lock of an op this member is about to apply.
pub fn encode_activity(k: LockKey) -> [u8; RECORD_BYTES] {
    encode(
        0,
        Some(Dirt::Range {
            fid: k.fid,
            start: k.start,
            end: k.end,
        }),
    )
}

/// The ranges an activity log's bytes hold. Zero records are room never written, and a
/// partial record at the end is a torn write, cut. A damaged record stands for everything,
/// even the last one written: a copy the process was killed in the middle of is rare enough
/// that a full heal costs less than guessing.
pub fn activity_keys_of(bytes: &[u8]) -> Vec<LockKey> {
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
    keys.sort();
    keys.dedup();
    keys
}

/// The bytes of an activity log rewritten to hold `keys` (what is still in doubt), for a log
/// of `records_max` records: more than half of it becomes one record for everything, so that
/// appends have room until the next rewrite.
pub fn activity_rewrite(keys: &[LockKey], records_max: usize) -> Vec<u8> {
    let everything = [LockKey::EVERYTHING];
    let keys = if keys.len() > records_max / 2 {
        &everything[..]
    } else {
        keys
    };
    keys.iter().flat_map(|&k| encode_activity(k)).collect()
}

/// What a member that starts has in doubt: the activity log's ranges, or everything when the
/// machine lost power while the log was open (records not yet synced may be gone).
pub fn boot_activity(found: Vec<LockKey>, power_lost: bool) -> Vec<LockKey> {
    if power_lost {
        vec![LockKey::EVERYTHING]
    } else {
        found
    }
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
    fn records_roundtrip_and_damage_is_detected() {
        for d in [
            Dirt::range(7, 5000, 10),
            Dirt::Attr(3),
            Dirt::Dir(1),
            Dirt::Tree,
            Dirt::All,
        ] {
            assert_eq!(decode(&encode(2, Some(d))), Some((2, Some(d))));
        }
        assert_eq!(decode(&encode(5, None)), Some((5, None)));
        let mut rec = encode(1, Some(Dirt::Attr(9)));
        rec[9] ^= 1;
        assert_eq!(decode(&rec), None);
        assert_eq!(decode(&rec[..31]), None);
    }

    #[test]
    fn replay_rebuilds_state_cuts_torn_tails_and_distrusts_damage() {
        fn persist(bytes: &mut Vec<u8>, w: Option<LogWrite>) {
            match w {
                Some(LogWrite::Append { records, .. }) => bytes.extend_from_slice(&records),
                Some(LogWrite::Truncate) => bytes.clear(),
                None => {}
            }
        }
        let mut s = DirtState::default();
        let mut bytes = Vec::new();
        persist(&mut bytes, s.record(0b010, Dirt::range(7, 5000, 10)));
        assert_eq!(s.record(0b010, Dirt::range(7, 4096, 100)), None, "covered");
        persist(&mut bytes, s.record(0b110, Dirt::Dir(1)));
        persist(&mut bytes, s.clear(2));
        assert_eq!(bytes.len(), 4 * RECORD_BYTES);
        let (r, report) = DirtState::replay(&bytes, 0, false);
        assert_eq!((report.records, report.corrupt_records), (4, 0));
        assert_eq!(r.members[1], s.members[1]);
        assert!(r.members[2].is_empty() && r.members[1].ranges[&7].covers(4096, 8192));

        let mut torn = bytes.clone();
        torn.extend_from_slice(&[1, 2, 3]);
        let (_, report) = DirtState::replay(&torn, 0, false);
        assert_eq!(
            (report.torn_tail_bytes, report.kept_bytes),
            (3, bytes.len() as u64)
        );

        let mut damaged = bytes.clone();
        damaged[RECORD_BYTES + 9] ^= 0x40;
        let (r, report) = DirtState::replay(&damaged, 0, false);
        assert_eq!(report.corrupt_records, 1);
        assert!(r.members[1..].iter().all(|m| m.all) && !r.members[0].all);

        let (r, report) = DirtState::replay(&bytes, 1, true);
        assert!(r.members[0].all && !r.members[1].all && r.members[2].all);
        // The distrust is written down: a later replay (no power loss then) keeps it.
        let mut persisted = bytes.clone();
        persisted.extend_from_slice(&report.append);
        let (again, _) = DirtState::replay(&persisted, 1, false);
        assert!(again.members[0].all && !again.members[1].all && again.members[2].all);

        persist(&mut bytes, s.clear(1));
        assert!(bytes.is_empty(), "the last clear empties the log");
    }

    #[test]
    fn activity_records_hold_locks_and_damage_means_everything() {
        let mut bytes = Vec::new();
        for k in [LockKey::range(9, 4096, 100), LockKey::NAMESPACE] {
            bytes.extend_from_slice(&encode_activity(k));
        }
        bytes.extend_from_slice(&[0u8; RECORD_BYTES]); // room never written
        assert_eq!(
            activity_keys_of(&bytes),
            vec![LockKey::NAMESPACE, LockKey::range(9, 4096, 100)]
        );
        bytes[9] ^= 1;
        assert!(activity_keys_of(&bytes).contains(&LockKey::EVERYTHING));
        assert_eq!(
            boot_activity(vec![LockKey::whole_file(3)], true),
            vec![LockKey::EVERYTHING]
        );
    }
}
