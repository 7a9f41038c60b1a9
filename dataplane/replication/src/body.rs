//! What a replicated operation carries besides its lock: a client request as the client sent
//! it, or one of the heal's own bodies. The dataplane applies bodies to a brick; this module
//! says what each one changes (the dirt an absent member gets) and encodes the heal's bodies.

use crate::dirt::{self, Dirt, DirtState, FileId, RECORD_BYTES};
use crate::lock::{LockKey, LockKind};
use crate::map::{Member, MEMBERS_MAX};
use crate::replica::{OpId, Outcome};
use brick_tuning::{
    FRAME_PAYLOAD_BYTES_MAX, RECENT_NAMESPACE_BODIES_MAX, SYMLINK_TARGET_BYTES_MAX,
};
use brick_wire::{Dec, DecodeError, Enc, ErrorCode, FileKind, Request};
use std::collections::{HashMap, VecDeque};

/// The kind of a body, as its 16-bit code on the wire (REPL forwards only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyOp {
    /// Changes nothing (a resync of something that needs none).
    Noop,
    /// A request as a client sent it, by its opcode (CREATE, WRITE, SETATTR...).
    Request(u16),
    /// A copy that a heal or a new primary makes of a range (WRITE) or of a file's attributes
    /// (SETATTR), from its own copy: applied as the request, except that a file missing on
    /// the member was removed from the namespace there, so there is nothing to copy into and
    /// the copy succeeds doing nothing.
    Copy(u16),
    /// A heal's namespace catch-up: directory listings the member makes its own.
    CatchUp,
    /// A heal's dirt hand-off: dirt-log records of the members still away.
    Handoff,
}

const NOOP_CODE: u16 = 0;
const CATCH_UP_CODE: u16 = 0xFF01;
const HANDOFF_CODE: u16 = 0xFF02;
/// A copy's code is its request's opcode with this bit (request opcodes are below it).
const COPY_BIT: u16 = 0x8000;

impl BodyOp {
    pub fn code(self) -> u16 {
        match self {
            BodyOp::Noop => NOOP_CODE,
            BodyOp::Request(op) => op,
            BodyOp::Copy(op) => COPY_BIT | op,
            BodyOp::CatchUp => CATCH_UP_CODE,
            BodyOp::Handoff => HANDOFF_CODE,
        }
    }

    pub fn from_code(code: u16) -> BodyOp {
        match code {
            NOOP_CODE => BodyOp::Noop,
            CATCH_UP_CODE => BodyOp::CatchUp,
            HANDOFF_CODE => BodyOp::Handoff,
            op if op & COPY_BIT != 0 => BodyOp::Copy(op & !COPY_BIT),
            op => BodyOp::Request(op),
        }
    }

    /// A namespace change (its record names directories; the new primary of an in-doubt one
    /// resyncs the directories it touched).
    pub fn is_namespace_change(self) -> bool {
        use brick_wire::op;
        matches!(
            self,
            BodyOp::Request(
                op::CREATE | op::MKDIR | op::SYMLINK | op::UNLINK | op::RMDIR | op::RENAME
            )
        )
    }
}

/// What applying this body changes, for a member that misses it; `None` if the body does not
/// decode (the op's lock bounds it then: `dirt_of_lock`).
pub fn dirt_of_body(op: BodyOp, payload: &[u8]) -> Option<Vec<Dirt>> {
    let code = match op {
        BodyOp::Noop | BodyOp::Handoff => return Some(Vec::new()),
        BodyOp::CatchUp => {
            let dirs = decode_catch_up(payload).ok()?;
            return Some(dirs.into_iter().map(|(d, _)| Dirt::Dir(d)).collect());
        }
        BodyOp::Request(code) | BodyOp::Copy(code) => code,
    };
    let req = Request::decode(code, payload).ok()?;
    Some(match req {
        Request::Write {
            fid, offset, data, ..
        } => vec![Dirt::range(fid, offset, data.len() as u64)],
        Request::SetAttr { fid, attr, .. } => {
            let mut out = vec![Dirt::Attr(fid)];
            if let Some(size) = attr.size {
                let block = brick_tuning::DIRT_BLOCK_BYTES;
                out.push(Dirt::Range {
                    fid,
                    start: size / block * block,
                    end: u64::MAX,
                });
            }
            out
        }
        Request::Fsync { .. } => Vec::new(),
        Request::Create { parent, .. }
        | Request::Mkdir { parent, .. }
        | Request::Symlink { parent, .. }
        | Request::Unlink { parent, .. }
        | Request::Rmdir { parent, .. } => vec![Dirt::Dir(parent)],
        Request::Rename {
            src_parent,
            dst_parent,
            ..
        } => vec![Dirt::Dir(src_parent), Dirt::Dir(dst_parent)],
        _ => return None,
    })
}

/// What an op known only by its lock may have changed.
pub fn dirt_of_lock(lock: LockKey) -> Vec<Dirt> {
    match lock.kind() {
        LockKind::Everything => vec![Dirt::All],
        LockKind::Namespace => vec![Dirt::Tree],
        LockKind::Handoff => Vec::new(),
        LockKind::WholeFile(fid) => vec![
            Dirt::Attr(fid),
            Dirt::Range {
                fid,
                start: 0,
                end: u64::MAX,
            },
        ],
        LockKind::Range { fid, start, end } => vec![Dirt::range(fid, start, end - start)],
    }
}

/// What a data op's refusal means on a member: the file it names is missing there
/// (`Stale`, `NotFound`) while the member is not up to date in the namespace PG (PG 0): its
/// namespace is behind, not the file gone, so the member failed the op (it leaves the PG)
/// rather than refused it alike with the others (a primary that refused would otherwise
/// remove the members that have the file). Any other outcome stands.
pub fn outcome_in_data_pg(outcome: Outcome, namespace_current: bool) -> Outcome {
    let missing = [ErrorCode::Stale.code(), ErrorCode::NotFound.code()];
    match outcome {
        Outcome::Refused(code) if !namespace_current && missing.contains(&code) => Outcome::Failed,
        other => other,
    }
}

/// One entry of a directory as a namespace catch-up lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEntry {
    pub name: String,
    pub fid: FileId,
    pub kind: FileKind,
    pub mode: u32,
    /// A symlink's target (empty otherwise).
    pub target: String,
}

/// A catch-up body larger than one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUpTooLarge;

impl std::fmt::Display for CatchUpTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the namespace catch-up exceeds {FRAME_PAYLOAD_BYTES_MAX} bytes (too many changed \
             directories); see docs/heal.md"
        )
    }
}

/// Builds a catch-up body: directories, parents first, each with its entries.
/// Format: `count u32 | (dir u64 | entries u32 | (fid u64 | kind u8 | mode u32 | name str |
/// target str)*)*`.
pub struct CatchUpWriter {
    enc: Enc,
    dirs: u32,
}

impl Default for CatchUpWriter {
    fn default() -> Self {
        let mut enc = Enc::default();
        enc.u32(0);
        CatchUpWriter { enc, dirs: 0 }
    }
}

impl CatchUpWriter {
    pub fn push(&mut self, dir: FileId, entries: &[ListedEntry]) -> Result<(), CatchUpTooLarge> {
        self.enc.u64(dir).u32(entries.len() as u32);
        for en in entries {
            self.enc
                .u64(en.fid)
                .u8(en.kind as u8)
                .u32(en.mode)
                .str(&en.name)
                .str(&en.target);
        }
        self.dirs += 1;
        if self.enc.buf.len() > FRAME_PAYLOAD_BYTES_MAX as usize - 4096 {
            return Err(CatchUpTooLarge);
        }
        Ok(())
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.enc.buf[..4].copy_from_slice(&self.dirs.to_le_bytes());
        self.enc.buf
    }
}

/// Directories (with their wanted entries) of a catch-up body.
pub fn decode_catch_up(payload: &[u8]) -> Result<Vec<(FileId, Vec<ListedEntry>)>, DecodeError> {
    let mut d = Dec::new(payload);
    let n = d.u32("directory count")?;
    if n as usize > payload.len() {
        return Err(DecodeError::BadValue("directory count", n as u64));
    }
    let mut out = Vec::new();
    for _ in 0..n {
        let dir = d.u64("directory")?;
        let count = d.u32("entry count")?;
        if count as usize > payload.len() {
            return Err(DecodeError::BadValue("entry count", count as u64));
        }
        let mut entries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let fid = d.u64("fid")?;
            let kind = match d.u8("kind")? {
                1 => FileKind::File,
                2 => FileKind::Dir,
                3 => FileKind::Symlink,
                k => return Err(DecodeError::BadValue("kind", k as u64)),
            };
            let mode = d.u32("mode")? & 0o7777;
            let name = d.name("name")?.to_string();
            let target = d
                .str("symlink target", SYMLINK_TARGET_BYTES_MAX)?
                .to_string();
            entries.push(ListedEntry {
                name,
                fid,
                kind,
                mode,
                target,
            });
        }
        out.push((dir, entries));
    }
    d.finish()?;
    Ok(out)
}

/// The body of a dirt hand-off to the members `targets`: `dirt`'s records for every member
/// other than `me` and the targets. More than one frame holds: "everything" for those members
/// instead (a full heal later, never a missed range).
pub fn handoff_payload(dirt: &DirtState, me: Member, targets: u8) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut full = Vec::new();
    let limit = FRAME_PAYLOAD_BYTES_MAX as usize - 4096;
    for m in (0..MEMBERS_MAX).filter(|&m| m != me && targets & (1 << m) == 0) {
        let before = bytes.len();
        for d in dirt.members[m as usize].items() {
            bytes.extend_from_slice(&dirt::encode(m, Some(d)));
        }
        if bytes.len() > limit {
            bytes.truncate(before);
            full.push(m);
        }
    }
    for m in full {
        bytes.extend_from_slice(&dirt::encode(m, Some(Dirt::All)));
    }
    bytes
}

/// The records of a dirt hand-off; `None` if any is damaged or a clear (never sent).
pub fn decode_handoff(payload: &[u8]) -> Option<Vec<(Member, Dirt)>> {
    if !payload.len().is_multiple_of(RECORD_BYTES) {
        return None;
    }
    payload
        .chunks_exact(RECORD_BYTES)
        .map(|rec| match dirt::decode(rec) {
            Some((m, Some(d))) => Some((m, d)),
            _ => None,
        })
        .collect()
}

/// The directories of the namespace changes a member applied lately, by (sender, op): when a
/// member leaves while they are in doubt, its record names those directories instead of the
/// whole tree, and a new primary resyncs the directories of the last few.
#[derive(Debug, Default)]
pub struct RecentNamespace {
    by_op: HashMap<(Member, OpId), Vec<FileId>>,
    order: VecDeque<(Member, OpId)>,
}

impl RecentNamespace {
    /// Remembers a namespace change's body (anything else is ignored).
    pub fn keep(&mut self, key: (Member, OpId), op: BodyOp, payload: &[u8]) {
        if !op.is_namespace_change() || self.by_op.contains_key(&key) {
            return;
        }
        let dirs = dirt_of_body(op, payload)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|d| match d {
                Dirt::Dir(d) => Some(d),
                _ => None,
            })
            .collect();
        if self.order.len() >= RECENT_NAMESPACE_BODIES_MAX {
            if let Some(old) = self.order.pop_front() {
                self.by_op.remove(&old);
            }
        }
        self.order.push_back(key);
        self.by_op.insert(key, dirs);
    }

    /// What the change `key` dirtied, if it is remembered.
    pub fn dirt_of(&self, key: (Member, OpId)) -> Option<Vec<Dirt>> {
        self.by_op
            .get(&key)
            .map(|dirs| dirs.iter().map(|&d| Dirt::Dir(d)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brick_wire::{op, ROOT_FILE_ID};

    #[test]
    fn body_codes_roundtrip() {
        for b in [
            BodyOp::Noop,
            BodyOp::CatchUp,
            BodyOp::Handoff,
            BodyOp::Request(op::WRITE),
            BodyOp::Request(op::RENAME),
            BodyOp::Copy(op::WRITE),
            BodyOp::Copy(op::SETATTR),
        ] {
            assert_eq!(BodyOp::from_code(b.code()), b);
        }
        assert!(BodyOp::Request(op::RENAME).is_namespace_change());
        assert!(!BodyOp::Request(op::WRITE).is_namespace_change());
    }

    #[test]
    fn a_write_dirties_its_blocks_and_a_rename_both_directories() {
        let mut e = Enc::default();
        Request::Write {
            vol: 1,
            fid: 9,
            offset: 5000,
            flags: 0,
            data: &[1; 10],
        }
        .encode(&mut e);
        assert_eq!(
            dirt_of_body(BodyOp::Request(op::WRITE), &e.buf),
            Some(vec![Dirt::Range {
                fid: 9,
                start: 4096,
                end: 8192
            }])
        );
        let mut e = Enc::default();
        Request::Rename {
            vol: 1,
            src_parent: ROOT_FILE_ID,
            src_name: "a",
            dst_parent: 7,
            dst_name: "b",
            flags: 0,
        }
        .encode(&mut e);
        assert_eq!(
            dirt_of_body(BodyOp::Request(op::RENAME), &e.buf),
            Some(vec![Dirt::Dir(ROOT_FILE_ID), Dirt::Dir(7)])
        );
        assert_eq!(dirt_of_body(BodyOp::Request(op::WRITE), &[1, 2]), None);
        assert_eq!(dirt_of_lock(LockKey::EVERYTHING), vec![Dirt::All]);
        assert_eq!(dirt_of_lock(LockKey::HANDOFF), Vec::new());
    }

    #[test]
    fn catch_up_bodies_roundtrip_and_refuse_garbage() {
        let entries = vec![
            ListedEntry {
                name: "a".into(),
                fid: 5,
                kind: FileKind::File,
                mode: 0o644,
                target: String::new(),
            },
            ListedEntry {
                name: "l".into(),
                fid: 6,
                kind: FileKind::Symlink,
                mode: 0o777,
                target: "a".into(),
            },
        ];
        let mut w = CatchUpWriter::default();
        w.push(ROOT_FILE_ID, &entries).unwrap();
        w.push(9, &[]).unwrap();
        let body = w.finish();
        let dirs = decode_catch_up(&body).unwrap();
        assert_eq!(dirs, vec![(ROOT_FILE_ID, entries), (9, Vec::new())]);
        assert_eq!(
            dirt_of_body(BodyOp::CatchUp, &body),
            Some(vec![Dirt::Dir(ROOT_FILE_ID), Dirt::Dir(9)])
        );
        for cut in 0..body.len() {
            assert!(decode_catch_up(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = body.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_catch_up(&huge).is_err());
    }

    #[test]
    fn handoffs_carry_the_others_dirt() {
        let mut d = DirtState::default();
        let _ = d.record(0b0100, Dirt::range(9, 0, 1));
        let _ = d.record(0b1000, Dirt::Dir(1));
        let _ = d.record(0b0010, Dirt::Attr(3)); // the target's own: not handed off
        let payload = handoff_payload(&d, 0, 0b0010);
        let mut got = decode_handoff(&payload).unwrap();
        got.sort_by_key(|(m, _)| *m);
        assert_eq!(got, vec![(2, Dirt::range(9, 0, 1)), (3, Dirt::Dir(1))]);
        assert_eq!(decode_handoff(&payload[..31]), None);
        assert_eq!(decode_handoff(&dirt::encode(2, None)), None);
    }
}
