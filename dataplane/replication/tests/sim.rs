//! Deterministic simulation of a volume's namespace PG (PG 0: creates and unlinks) and one data
//! PG (PG 1: writes), each with R members running the production `Replica` and `Healer`, on
//! R nodes whose bricks both PGs share, with a cluster store (compare-and-set registers, as
//! etcd gives), a client, and a network and disks that fail. Everything comes from one seeded
//! RNG and one clock, so a failing seed replays exactly: `SIM_SEED=1234 cargo test -p
//! brick-replication --test sim`.
//!
//! What is simulated is only what is not production code: the network, the disk (a brick
//! holding a flat root directory of small files) and the store. Every message between members
//! is encoded and decoded by the REPL codec; every operation's body is a real request
//! (`Request::Write`, `Create`, `Unlink`) or a heal body built by the heal code; the dirt log
//! holds the real 32-byte records and is replayed at start by `DirtState::replay`, as is the
//! activity log; the heal is the `Healer`, fed exactly as the dataplane feeds it. As in the
//! dataplane, the data PG heals a member only once PG 0 has it up to date, and a write to a
//! file names it by the id the namespace PG gave it: what one PG does depends on the other.
//!
//! Faults: process crashes (SIGKILL: volatile state gone, completed disk writes kept, queued
//! ones kept or lost) and restarts; power losses (as a crash, and the logs lose their
//! un-synced tails, cut anywhere, inside a record too: torn records); dirt-log records
//! damaged on disk; freezes (SIGSTOP: nothing runs, messages wait in the socket buffers);
//! partitions between members; a node cut from the store (proposals unanswered, half of them
//! landed) and 2/1 splits (a node cut from the others and the store, still reached by the
//! clients); lost, duplicated and reordered messages; disk writes and reads that fail; bricks
//! replaced by empty ones (`volume replace-brick`). Whether primaries push each new map to the
//! members (`Config::push_maps`) is chosen per seed.
//!
//! Checked after every step: the maps are valid; no two members answered client operations of
//! one PG in one epoch; no read (by a second client with maps of its own) returned less than
//! what was acknowledged or read before it was sent; every member up to date holds, for every
//! file, the last acknowledged state or one written after it (no acknowledged write or
//! namespace change lost). At the
//! end, after the faults stop: every member is healed and up to date, all hold identical
//! bricks, and every client operation got an answer.

use brick_replication::body::{
    decode_catch_up, dirt_of_body, dirt_of_lock, outcome_in_data_pg, CatchUpWriter, ListedEntry,
    RecentNamespace,
};
use brick_replication::codec::{decode_repl, encode_repl, BodyRef, OwnedBody};
use brick_replication::dirt::{
    activity_keys_of, activity_rewrite, boot_activity, encode_activity, RECORD_BYTES,
};
use brick_replication::{
    mask_of, BodyOp, Boot, Config, DirtState, HealConfig, HealEnv, Healer, LocalCopy, LockKey,
    LockKind, LogWrite, Member, Msg, OpError, OpId, Outcome, Output, PgMap, ReadGate, Replica,
    ResyncRead,
};
use brick_wire::{op, Enc, ErrorCode, FileKind, Request, HEADER_BYTES, ROOT_FILE_ID};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

/// The namespace PG and the data PG.
const NAMESPACE_PG: u32 = 0;
const DATA_PG: u32 = 1;
const PGS: usize = 2;
/// Files written by the client (always present): file ids `REG_BASE..REG_BASE + KEYS`.
const KEYS: u64 = 16;
/// Names the client creates, writes and removes: file ids `NS_BASE..NS_BASE + NS_KEYS`.
const NS_KEYS: u64 = 4;
const REG_BASE: u64 = 100;
const NS_BASE: u64 = 200;
/// What a member's freed copy of the data PG holds (its PG moved away): the dataplane cuts
/// the files to size 0, which reads as an unwritten file (a heal copies no empty range).
const FREED: u64 = 0;
/// A WRITE at this offset is beyond the largest file: every member refuses it alike.
const REFUSE_OFFSET: u64 = 1 << 40;
const TICK_MS: u64 = 5;
const FAULT_PHASE_MS: u64 = 20_000;
const SETTLE_MS: u64 = 15_000;
/// A node whose disk failed stays quarantined for a random time in this range.
const DISK_QUARANTINE_MS: std::ops::Range<u64> = 100..2_000;
const CLIENT_TIMEOUT_MS: u64 = 2_000;
/// A request without an answer for this long makes the client look whether its PG moved (the
/// real client's `STALL_CHECK_MS`).
const CLIENT_STALL_CHECK_MS: u64 = 250;
/// Heals this simulated core lets begin at once (the dataplane's per-core limit).
const HEAL_BEGINS_PER_TICK: usize = 8;
/// The activity log's size in records, and how often it is rewritten (as in the dataplane).
const ACTIVITY_RECORDS_MAX: usize = 1024;
const ACTIVITY_REWRITE_MS: u64 = 1000;

/// One client operation: a slot (a register or a name) and what to do with it. `seq` tells
/// apart operations that do the same (two creates of one name): a late answer to an old one
/// must not acknowledge a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClientOp {
    slot: u64,
    kind: OpKind,
    seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    /// Sets file `fid` (the slot's, as the client last learned it) to `value`; `refuse`:
    /// every member refuses it (it must never land).
    Write {
        fid: u64,
        value: u64,
        refuse: bool,
    },
    Create,
    Unlink,
}

impl ClientOp {
    /// Namespace changes go to PG 0, writes to the data PG.
    fn pg(&self) -> u32 {
        match self.kind {
            OpKind::Write { .. } => DATA_PG,
            OpKind::Create | OpKind::Unlink => NAMESPACE_PG,
        }
    }

    /// A refusal is an answer the client may get: for a name (it may be gone or exist), or
    /// for a write made to be refused; never for a plain write of a register.
    fn may_be_refused(&self) -> bool {
        self.slot >= KEYS || matches!(self.kind, OpKind::Write { refuse: true, .. })
    }

    /// The request as the client sends it: its body, lock and whether it is applied locally
    /// before it is forwarded (namespace changes are).
    fn request(&self) -> (OwnedBody, LockKey, bool) {
        let mut e = Enc::default();
        let name = ns_name(self.slot);
        let (req, lock) = match self.kind {
            OpKind::Write { fid, value, refuse } => {
                let offset = if refuse { REFUSE_OFFSET } else { 0 };
                let data = value.to_le_bytes();
                Request::Write {
                    vol: 0,
                    fid,
                    offset,
                    flags: 0,
                    data: &data,
                }
                .encode(&mut e);
                (op::WRITE, LockKey::range(fid, offset, 8))
            }
            OpKind::Create => {
                Request::Create {
                    vol: 0,
                    parent: ROOT_FILE_ID,
                    name: &name,
                    mode: 0o644,
                    exclusive: true,
                }
                .encode(&mut e);
                (op::CREATE, LockKey::NAMESPACE)
            }
            OpKind::Unlink => {
                Request::Unlink {
                    vol: 0,
                    parent: ROOT_FILE_ID,
                    name: &name,
                }
                .encode(&mut e);
                (op::UNLINK, LockKey::NAMESPACE)
            }
        };
        let body = OwnedBody {
            op: BodyOp::Request(req),
            minted: 0,
            payload: e.buf,
        };
        (body, lock, req != op::WRITE)
    }
}

/// The name of slot `slot`'s file in the root directory.
fn slot_name(slot: u64) -> String {
    if slot < KEYS {
        format!("r{slot}")
    } else {
        format!("n{}", slot - KEYS)
    }
}

fn ns_name(slot: u64) -> String {
    slot_name(slot)
}

/// A brick: a root directory of small files, each holding one number. Registers have fixed
/// ids; a created name gets a new id each time (the primary mints it), as in the dataplane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Disk {
    files: BTreeMap<u64, u64>,
    names: BTreeMap<String, u64>,
    /// Files a namespace repair created empty here, whose data the data PG must bring back
    /// (the brick keeps this list until the data PG's member took them as lost).
    lost: BTreeSet<u64>,
    /// Files removed from the namespace, kept (by id, with their data) while a namespace
    /// change here may still be undone: a repair that brings one back restores it whole.
    limbo: BTreeMap<u64, u64>,
}

impl Disk {
    fn formatted() -> Disk {
        Disk {
            files: (0..KEYS).map(|k| (REG_BASE + k, 0)).collect(),
            names: (0..KEYS).map(|k| (slot_name(k), REG_BASE + k)).collect(),
            lost: BTreeSet::new(),
            limbo: BTreeMap::new(),
        }
    }

    /// Applies a body as the dataplane applies it to a brick (a hand-off is the caller's).
    fn apply(&mut self, body: &OwnedBody) -> Outcome {
        match body.op {
            BodyOp::Noop | BodyOp::Handoff => Outcome::Ok,
            BodyOp::CatchUp => match decode_catch_up(&body.payload) {
                Ok(dirs) => {
                    for (dir, entries) in dirs {
                        if dir == ROOT_FILE_ID {
                            self.reconcile_root(&entries);
                        }
                    }
                    Outcome::Ok
                }
                Err(_) => Outcome::Refused(ErrorCode::Malformed.code()),
            },
            BodyOp::Copy(code) | BodyOp::Request(code) => {
                match Request::decode(code, &body.payload) {
                    Ok(Request::Write {
                        fid, offset, data, ..
                    }) => {
                        if offset >= REFUSE_OFFSET {
                            return Outcome::Refused(ErrorCode::FileTooBig.code());
                        }
                        let copy = matches!(body.op, BodyOp::Copy(_));
                        // A copy also reaches a file removed from the namespace while the removal
                        // may still be undone (its data is kept, in limbo), or does nothing if it
                        // is gone; a client's write finds only files in the namespace.
                        let content = match (self.files.get_mut(&fid), copy) {
                            (Some(c), _) => c,
                            (None, true) => match self.limbo.get_mut(&fid) {
                                Some(c) => c,
                                None => return Outcome::Ok,
                            },
                            (None, false) => return Outcome::Refused(ErrorCode::Stale.code()),
                        };
                        let mut word = [0u8; 8];
                        let n = data.len().min(8);
                        word[..n].copy_from_slice(&data[..n]);
                        *content = u64::from_le_bytes(word);
                        Outcome::Ok
                    }
                    Ok(Request::Create { name, .. }) => {
                        if !name.starts_with('n') {
                            return Outcome::Refused(ErrorCode::Invalid.code());
                        }
                        if self.names.contains_key(name) {
                            return Outcome::Refused(ErrorCode::Exists.code());
                        }
                        // The id the primary minted rides in the forward; the primary's own apply
                        // mints it (`minted` is then the sim's next free id).
                        self.names.insert(name.to_string(), body.minted);
                        self.files.insert(body.minted, 0);
                        Outcome::Ok
                    }
                    Ok(Request::Unlink { name, .. }) => {
                        if !name.starts_with('n') {
                            return Outcome::Refused(ErrorCode::Invalid.code());
                        }
                        let Some(fid) = self.names.remove(name) else {
                            return Outcome::Refused(ErrorCode::NotFound.code());
                        };
                        if let Some(content) = self.files.remove(&fid) {
                            self.limbo.insert(fid, content);
                        }
                        Outcome::Ok
                    }
                    _ => Outcome::Refused(ErrorCode::Malformed.code()),
                }
            }
        }
    }

    /// The root's entries as a catch-up lists them.
    fn listing(&self) -> Vec<ListedEntry> {
        self.names
            .iter()
            .map(|(name, &fid)| ListedEntry {
                name: name.clone(),
                fid,
                kind: FileKind::File,
                mode: 0o644,
                target: String::new(),
            })
            .collect()
    }

    /// The brick's `reconcile_dir` for the root: drop what is not listed (or listed under
    /// another id), create (empty) what is missing; the data of what was created follows as
    /// range copies.
    fn reconcile_root(&mut self, entries: &[ListedEntry]) {
        let wanted: BTreeMap<&str, u64> =
            entries.iter().map(|e| (e.name.as_str(), e.fid)).collect();
        let (files, limbo) = (&mut self.files, &mut self.limbo);
        self.names.retain(|name, fid| {
            let keep = wanted.get(name.as_str()) == Some(fid);
            if !keep {
                if let Some(content) = files.remove(fid) {
                    limbo.insert(*fid, content);
                }
            }
            keep
        });
        for (name, fid) in wanted {
            if !self.names.contains_key(name) {
                self.names.insert(name.to_string(), fid);
                if let std::collections::btree_map::Entry::Vacant(e) = self.files.entry(fid) {
                    match self.limbo.remove(&fid) {
                        Some(content) => {
                            e.insert(content);
                        }
                        None => {
                            e.insert(0);
                            self.lost.insert(fid);
                        }
                    }
                }
            }
        }
    }

    /// Holds the same namespace and data as `other`.
    fn same_as(&self, other: &Disk) -> bool {
        self.files == other.files && self.names == other.names
    }

    /// The body a heal or a new primary forwards for `lock`'s range: its bytes as a WRITE, or
    /// nothing if the file is gone or the range holds no data.
    fn resync_body(&self, lock: LockKey) -> OwnedBody {
        let noop = OwnedBody {
            op: BodyOp::Noop,
            minted: 0,
            payload: Vec::new(),
        };
        let (fid, start) = match lock.kind() {
            LockKind::WholeFile(fid) => (fid, 0),
            LockKind::Range { fid, start, .. } => (fid, start),
            _ => return noop,
        };
        let Some(content) = self.files.get(&fid).or_else(|| self.limbo.get(&fid)) else {
            return noop;
        };
        if start >= 8 {
            return noop;
        }
        let mut e = Enc::default();
        Request::Write {
            vol: 0,
            fid,
            offset: 0,
            flags: 0,
            data: &content.to_le_bytes(),
        }
        .encode(&mut e);
        OwnedBody {
            op: BodyOp::Copy(op::WRITE),
            minted: 0,
            payload: e.buf,
        }
    }

    /// A namespace catch-up body for `dirs` (every directory if `tree`).
    fn catch_up(&self, dirs: &[u64], tree: bool) -> OwnedBody {
        let mut w = CatchUpWriter::default();
        if tree || dirs.contains(&ROOT_FILE_ID) {
            w.push(ROOT_FILE_ID, &self.listing())
                .expect("a small listing fits");
        }
        OwnedBody {
            op: BodyOp::CatchUp,
            minted: 0,
            payload: w.finish(),
        }
    }
}

/// What a PG's healer reads of the brick: every file's data is in the data PG.
struct PgCopy<'a> {
    disk: &'a Disk,
}

/// Files in limbo are data the PG still holds (a repair may bring them back), as in the
/// dataplane.
impl LocalCopy for PgCopy<'_> {
    fn ids_in_pg(&self, pg: u32) -> Vec<u64> {
        if pg == DATA_PG {
            let limbo = self.disk.limbo.keys();
            self.disk.files.keys().chain(limbo).copied().collect()
        } else {
            Vec::new()
        }
    }

    fn file_size(&self, fid: u64) -> Option<u64> {
        let held = self.disk.files.contains_key(&fid) || self.disk.limbo.contains_key(&fid);
        held.then_some(8)
    }
}

#[derive(Debug, Clone)]
enum Event {
    Peer {
        from: Member,
        to: Member,
        frame: Vec<u8>,
    },
    ClientRequest {
        to: Member,
        attempt: u64,
        op: ClientOp,
    },
    ClientReply {
        attempt: u64,
        op: ClientOp,
        result: Result<(), OpError>,
        /// The id a create gave its entry (0: none).
        minted: u64,
    },
    ClientDisconnected {
        attempt: u64,
    },
    /// A read of register `slot` at the data PG's primary (as the client's map names it).
    ClientRead {
        to: Member,
        id: u64,
        slot: u64,
    },
    /// Its answer: the register's value, or `None` (not the primary, or not sure it still
    /// is: `Replica::read_gate`; the client asks again).
    ClientReadReply {
        id: u64,
        value: Option<u64>,
    },
    DiskDone {
        node: Member,
        incarnation: u64,
        pg: u32,
        job: DiskJob,
        generation: u64,
    },
    Propose {
        node: Member,
        incarnation: u64,
        pg: u32,
        map: PgMap,
    },
    MapDelivery {
        node: Member,
        incarnation: u64,
        pg: u32,
        map: PgMap,
        proposal_result: Option<bool>,
    },
    /// A proposal's answer never came (the node is cut from the store): it may or may not
    /// have been applied.
    ProposalLost {
        node: Member,
        incarnation: u64,
        pg: u32,
    },
}

#[derive(Debug, Clone)]
enum DiskJob {
    Local {
        op: OpId,
        body: OwnedBody,
    },
    Forwarded {
        from: Member,
        op: OpId,
        body: OwnedBody,
    },
    /// A read for a `ReadForResync`.
    Resync {
        op: OpId,
        lock: LockKey,
    },
}

/// An op a PG's member runs as primary: its body (`None` while its resync read runs), the
/// client attempt if any, and when it started.
struct PrimaryOp {
    body: Option<OwnedBody>,
    attempt: Option<(u64, ClientOp)>,
    started_ms: u64,
}

/// One PG's member on a node: the dataplane's slot.
#[derive(Default)]
struct Slot {
    replica: Option<Replica>,
    healer: Option<Healer>,
    ops: BTreeMap<OpId, PrimaryOp>,
    /// Forwarded bodies received and not yet applied, by (sender, op).
    bodies_in: BTreeMap<(Member, OpId), OwnedBody>,
    recent_namespace: RecentNamespace,
    /// The dirt log's bytes on disk, and how much of it is synced.
    dirt_log: Vec<u8>,
    dirt_synced: usize,
    /// The activity log's bytes (a mapped file: survives a crash, not a power loss).
    activity_log: Vec<u8>,
    activity_appended: usize,
    activity_rewritten_ms: u64,
    /// Stopped while its node's disk fails (see `Node::disk_failing_until_ms`).
    quarantined: bool,
    /// Grows each time the PG moves off this member: disk jobs of an earlier generation are
    /// dropped (the dataplane's slot and its I/O are gone with the move).
    generation: u64,
}

impl Slot {
    /// What a process crash loses.
    fn crash(&mut self) {
        self.quarantined = false;
        self.replica = None;
        self.healer = None;
        self.ops.clear();
        self.bodies_in.clear();
        self.recent_namespace = RecentNamespace::default();
    }
}

struct Node {
    up: bool,
    incarnation: u64,
    frozen_until_ms: u64,
    inbox: Vec<Event>,
    disk: Disk,
    slots: [Slot; PGS],
    down_since_ms: u64,
    /// The last crash was a power loss: the next start knows its logs may have lost records.
    power_lost: bool,
    /// As the dataplane: after a disk fault the node's members leave their PGs (where another
    /// copy is up to date) and, once out of a PG's map, are stopped until this time (the
    /// quarantine and the probe of the disk), then started again as after a crash.
    disk_failing_until_ms: u64,
    /// Members started again after a quarantine (their op ids start past the others').
    quarantine_restarts: u64,
    /// Cut from the cluster store until then (a partition between it and etcd only): its
    /// proposals and watch get no answer; once the link is back, its watch delivers every
    /// map again.
    store_cut_until_ms: u64,
}

struct Outstanding {
    op: ClientOp,
    attempt: u64,
    sent_at_ms: u64,
    sent_to: Member,
    sent_epoch: u64,
}

struct Client {
    maps: [PgMap; PGS],
    next_value: u64,
    next_attempt: u64,
    outstanding: BTreeMap<u64, Outstanding>,
    /// Attempts that are no longer current, by id: their slot (an Ok still acknowledges).
    attempts: BTreeMap<u64, u64>,
    /// What the client can tell of every file's content and every name.
    ledger: Ledger,
    retry_at_ms: BTreeMap<u64, u64>,
    acks: u64,
    below_min: u64,
    /// Reads in flight, by id. The reader is another client process: its maps are its own,
    /// refreshed only when a read is refused, so it may still send reads to an old primary
    /// after the writer moved on to a new one.
    reads: BTreeMap<u64, PendingRead>,
    read_maps: [PgMap; PGS],
    next_read: u64,
    /// Per register: the newest value a read returned.
    read_max: BTreeMap<u64, u64>,
    /// Reads waiting to be sent again (by id), and when.
    read_retry_at_ms: BTreeMap<u64, u64>,
}

/// A read of a register: no answer may be older than what was acknowledged or read before
/// it was sent.
struct PendingRead {
    slot: u64,
    /// The register's acknowledged value when the read was sent.
    acked_floor: u64,
    /// The newest value any read had returned when it was sent.
    read_floor: u64,
    sent_at_ms: u64,
}

/// What a file (by id) must hold: the last acknowledged content, or one written since (the
/// writes not answered yet, or answered with an error, may or may not have landed).
#[derive(Debug, Clone, Default)]
struct Content {
    acked: u64,
    since: Vec<u64>,
}

/// What a name must be: the entry of the last acknowledged create or unlink (its file id, or
/// none), or what a create or unlink issued since may have made it.
#[derive(Debug, Clone, Default)]
struct NameState {
    acked: Option<u64>,
    created_since: bool,
    unlinked_since: bool,
    /// Ids minted for this name since its last acknowledged change are at least this.
    minted_from: u64,
}

#[derive(Debug, Default)]
struct Ledger {
    contents: BTreeMap<u64, Content>,
    names: BTreeMap<u64, NameState>,
}

impl Ledger {
    fn issued(&mut self, op: &ClientOp) {
        match op.kind {
            OpKind::Write { refuse: true, .. } => {}
            OpKind::Write { fid, value, .. } => {
                self.contents.entry(fid).or_default().since.push(value)
            }
            OpKind::Create => self.names.entry(op.slot).or_default().created_since = true,
            OpKind::Unlink => self.names.entry(op.slot).or_default().unlinked_since = true,
        }
    }

    /// `op` was acknowledged; `minted`: the id a create gave its entry; `next_fid`: the next
    /// id the primaries would mint.
    fn acknowledged(&mut self, op: &ClientOp, minted: u64, next_fid: u64) {
        let name = |acked| NameState {
            acked,
            minted_from: next_fid,
            ..NameState::default()
        };
        match op.kind {
            OpKind::Write { fid, value, .. } => {
                self.contents.insert(
                    fid,
                    Content {
                        acked: value,
                        since: Vec::new(),
                    },
                );
            }
            OpKind::Create => {
                self.names.insert(op.slot, name(Some(minted)));
                self.contents.insert(minted, Content::default());
            }
            OpKind::Unlink => {
                self.names.insert(op.slot, name(None));
            }
        }
    }

    /// Whether the entry `entry` (a file id, or none) may be what name `slot` holds; `minted_for`
    /// says which name each id was minted for.
    fn name_may_be(&self, slot: u64, entry: Option<u64>, minted_for: &BTreeMap<u64, u64>) -> bool {
        let state = self.names.get(&slot).cloned().unwrap_or_default();
        entry == state.acked
            || (entry.is_none() && state.unlinked_since)
            || entry.is_some_and(|f| {
                state.created_since && f >= state.minted_from && minted_for.get(&f) == Some(&slot)
            })
    }

    fn content_may_be(&self, fid: u64, content: u64) -> bool {
        let c = self.contents.get(&fid).cloned().unwrap_or_default();
        content == c.acked || c.since.contains(&content)
    }
}

struct Sim {
    seed: u64,
    rng: StdRng,
    now_ms: u64,
    cfg: Config,
    store: [PgMap; PGS],
    nodes: Vec<Node>,
    queue: BTreeMap<(u64, u64), Event>,
    seq: u64,
    partitions: BTreeMap<(Member, Member), u64>,
    disk_fault_per_mille: u32,
    faults: bool,
    client: Client,
    /// (PG, epoch) -> the member that answered client operations in it.
    writers_by_epoch: BTreeMap<(u32, u64), Member>,
    trace: bool,
    /// Run the heal (default; `SIM_HEAL=0` runs replication alone).
    heal: bool,
    /// Members per replica set; the nodes are `sets` replica sets of it. PG 0 (the namespace)
    /// is on every node, the data PG on one set, or on two while it moves.
    replica: u8,
    sets: u8,
    /// The set the data PG is moving to (a rebalance between `with_added` and `with_removed`).
    moving_to: Option<u8>,
    /// Rebalances move the data PG between the sets (`SIM_MOVES=0` turns them off).
    moves: bool,
    /// The next id a primary mints for a new entry, and the name (slot) each was minted for.
    next_fid: u64,
    minted_for: BTreeMap<u64, u64>,
    stats: Stats,
}

#[derive(Default, Debug)]
struct Stats {
    crashes: u32,
    power_losses: u32,
    torn_records: u32,
    damaged_records: u32,
    freezes: u32,
    partitions: u32,
    disk_faults: u32,
    /// Members stopped while their disk failed (and started again after).
    quarantined: u32,
    map_changes: u32,
    lost: u32,
    duplicated: u32,
    heal_copies: u32,
    catch_ups: u32,
    handoffs: u32,
    namespace_ops: u32,
    replacements: u32,
    moves: u32,
    moves_committed: u32,
    moves_stopped: u32,
    retired: u32,
    push_maps_seeds: u32,
    lost_data: u32,
    /// Client reads answered from a primary's copy, and those it was told to ask again.
    reads: u32,
    reads_refused: u32,
    store_cuts: u32,
    splits: u32,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.crashes += o.crashes;
        self.power_losses += o.power_losses;
        self.torn_records += o.torn_records;
        self.damaged_records += o.damaged_records;
        self.freezes += o.freezes;
        self.partitions += o.partitions;
        self.disk_faults += o.disk_faults;
        self.quarantined += o.quarantined;
        self.map_changes += o.map_changes;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.heal_copies += o.heal_copies;
        self.catch_ups += o.catch_ups;
        self.handoffs += o.handoffs;
        self.namespace_ops += o.namespace_ops;
        self.replacements += o.replacements;
        self.moves += o.moves;
        self.moves_committed += o.moves_committed;
        self.moves_stopped += o.moves_stopped;
        self.retired += o.retired;
        self.push_maps_seeds += o.push_maps_seeds;
        self.lost_data += o.lost_data;
        self.reads += o.reads;
        self.reads_refused += o.reads_refused;
        self.store_cuts += o.store_cuts;
        self.splits += o.splits;
    }
}

fn push_maps_for(rng: &mut StdRng) -> bool {
    match std::env::var("SIM_PUSH_MAPS").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => rng.gen_bool(0.5),
    }
}

impl Sim {
    fn new(seed: u64, members: u8, min_size: u8) -> Sim {
        Sim::with_sets(seed, members, min_size, 1)
    }

    /// `sets` replica sets of `replica` members: PG 0 on all of them, the data PG on the
    /// first, from where rebalances move it between sets.
    fn with_sets(seed: u64, replica: u8, min_size: u8, sets: u8) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let members = replica * sets;
        let preferred = rng.gen_range(0..replica);
        // The two PGs' primaries start on different members when there are several.
        let store = [
            PgMap::initial_on(mask_of(members), min_size, preferred),
            PgMap::initial_on(mask_of(replica), min_size, (preferred + 1) % replica),
        ];
        let cfg = Config {
            push_maps: push_maps_for(&mut rng),
            ..Config::default()
        };
        let mut sim = Sim {
            seed,
            rng,
            now_ms: 0,
            cfg,
            store,
            nodes: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            partitions: BTreeMap::new(),
            disk_fault_per_mille: 0,
            faults: true,
            client: Client {
                maps: store,
                next_value: 1,
                next_attempt: 1,
                outstanding: BTreeMap::new(),
                attempts: BTreeMap::new(),
                ledger: Ledger::default(),
                retry_at_ms: BTreeMap::new(),
                acks: 0,
                below_min: 0,
                reads: BTreeMap::new(),
                read_maps: store,
                next_read: 1,
                read_max: BTreeMap::new(),
                read_retry_at_ms: BTreeMap::new(),
            },
            writers_by_epoch: BTreeMap::new(),
            trace: std::env::var("SIM_TRACE").is_ok(),
            heal: heal_enabled(),
            replica,
            sets,
            moving_to: None,
            moves: heal_enabled() && sets > 1 && moves_enabled(),
            next_fid: NS_BASE,
            minted_for: BTreeMap::new(),
            stats: Stats {
                push_maps_seeds: cfg.push_maps as u32,
                ..Stats::default()
            },
        };
        for _ in 0..members {
            sim.nodes.push(Node {
                up: false,
                incarnation: 0,
                frozen_until_ms: 0,
                inbox: Vec::new(),
                disk: Disk::formatted(),
                slots: Default::default(),
                down_since_ms: 0,
                power_lost: false,
                disk_failing_until_ms: 0,
                quarantine_restarts: 0,
                store_cut_until_ms: 0,
            });
        }
        for m in 0..members {
            sim.boot(m, false);
        }
        sim
    }

    fn at(&mut self, delay_ms: u64, e: Event) {
        self.seq += 1;
        self.queue.insert((self.now_ms + delay_ms, self.seq), e);
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[{:>6}ms] {}", self.now_ms, what());
        }
    }

    fn partitioned(&self, a: Member, b: Member) -> bool {
        let key = (a.min(b), a.max(b));
        self.partitions
            .get(&key)
            .is_some_and(|&until| until > self.now_ms)
    }

    fn store_cut(&self, n: Member) -> bool {
        self.nodes[n as usize].store_cut_until_ms > self.now_ms
    }

    /// Nodes whose link to the store came back: their watch delivers every map again.
    fn restore_store_links(&mut self) {
        for n in 0..self.nodes.len() as Member {
            let node = &self.nodes[n as usize];
            if node.store_cut_until_ms != self.now_ms || !node.up {
                continue;
            }
            let inc = node.incarnation;
            for pg in 0..PGS as u32 {
                let map = self.store[pg as usize];
                let d = self.rng.gen_range(1..20);
                self.at(
                    d,
                    Event::MapDelivery {
                        node: n,
                        incarnation: inc,
                        pg,
                        map,
                        proposal_result: None,
                    },
                );
            }
        }
    }

    fn frozen(&self, n: Member) -> bool {
        self.nodes[n as usize].frozen_until_ms > self.now_ms
    }

    /// Whether node `n`'s disk fails this operation; a failure starts (or extends) the node's
    /// quarantine, as the dataplane's `DISK_QUARANTINE_MS` does (shortened to this scale).
    fn disk_fault(&mut self, n: Member) -> bool {
        if self.disk_fault_per_mille > 0 && self.rng.gen_ratio(self.disk_fault_per_mille, 1000) {
            self.stats.disk_faults += 1;
            let until = self.now_ms + self.rng.gen_range(DISK_QUARANTINE_MS);
            let node = &mut self.nodes[n as usize];
            node.disk_failing_until_ms = node.disk_failing_until_ms.max(until);
            let until = node.disk_failing_until_ms;
            self.log(|| format!("DISK FAULT node {n}: failing until {until}ms"));
            return true;
        }
        false
    }

    /// The dataplane's quarantine tick for node `n`: while its disk fails, members still in a
    /// PG's map leave it (`on_disk_failed`; the last up-to-date copy stays) and those out of
    /// it stop; once the disk works, stopped members start again as after a crash.
    fn quarantine_tick(&mut self, n: Member) {
        let now = self.now_ms;
        if self.nodes[n as usize].disk_failing_until_ms <= now {
            for pg in 0..PGS as u32 {
                if self.slot(n, pg).quarantined {
                    self.restart_member(n, pg);
                }
            }
            return;
        }
        // As the dataplane: the brick's members leave their PGs unless one holds the last
        // up-to-date copy of its PG (then all stay: never a data member serving while its
        // namespace member is out), and stop together once none is in a map.
        let last_copy = (0..PGS as u32).any(|pg| {
            self.slot(n, pg)
                .replica
                .as_ref()
                .is_some_and(|r| r.is_last_copy())
        });
        if last_copy {
            return;
        }
        let mut listed = false;
        for pg in 0..PGS as u32 {
            let Some(r) = self.slot(n, pg).replica.as_mut() else {
                continue;
            };
            if r.map().receivers() & (1 << n) != 0 {
                listed = true;
                let mut out = Vec::new();
                r.on_disk_failed(&mut out);
                self.run_outputs(n, pg, out);
            }
        }
        if listed {
            return;
        }
        for pg in 0..PGS as u32 {
            let slot = self.slot(n, pg);
            if slot.replica.is_some() {
                slot.crash();
                slot.quarantined = true;
                self.log(|| format!("QUARANTINE node {n} pg {pg}"));
                self.stats.quarantined += 1;
            }
        }
    }

    /// Starts one member again after its quarantine, as the dataplane creates its slot:
    /// `restarted` (it may differ from the others).
    fn restart_member(&mut self, n: Member, pg: u32) {
        if !self.store[pg as usize].is_placed(n) {
            self.slot(n, pg).quarantined = false;
            return;
        }
        self.log(|| format!("START node {n} pg {pg} after its quarantine"));
        let node = &mut self.nodes[n as usize];
        node.quarantine_restarts += 1;
        let op_base = (node.incarnation << 40) | (node.quarantine_restarts << 32);
        let out = self.start_member(n, pg, op_base, true, false);
        self.run_outputs(n, pg, out);
        // Files a namespace repair recreated empty while this member was stopped.
        self.hand_over_lost(n);
    }

    /// Starts member `n` of `pg` as the dataplane does: its logs replayed (the dirt log's torn
    /// tail cut, the activity log rewritten), then its replica and its healer. Returns the
    /// replica's first outputs, for the caller to run.
    fn start_member(
        &mut self,
        n: Member,
        pg: u32,
        op_base: u64,
        restarted: bool,
        power_lost: bool,
    ) -> Vec<Output> {
        let now = self.now_ms;
        let (map, cfg) = (self.store[pg as usize], self.cfg);
        let slot = &mut self.nodes[n as usize].slots[pg as usize];
        slot.quarantined = false;
        let (dirt, replay) = DirtState::replay(&slot.dirt_log, n, power_lost);
        slot.dirt_log.truncate(replay.kept_bytes as usize);
        slot.dirt_log.extend_from_slice(&replay.append);
        slot.dirt_synced = slot.dirt_log.len();
        let activity = boot_activity(activity_keys_of(&slot.activity_log), power_lost);
        slot.activity_log = activity_rewrite(&activity, ACTIVITY_RECORDS_MAX);
        slot.activity_appended = 0;
        slot.activity_rewritten_ms = now;
        let mut out = Vec::new();
        let boot = Boot {
            op_base,
            restarted,
            activity,
        };
        slot.replica = Some(Replica::new(pg, n, map, cfg, now, boot, &mut out));
        slot.healer = Some(Healer::new(pg, n, HealConfig::default(), dirt));
        out
    }

    /// What the dataplane tells a PG's healer: the members PG 0 has up to date, as the
    /// cluster store says.
    fn heal_env(&self) -> HealEnv {
        HealEnv {
            namespace_healed: self.store[NAMESPACE_PG as usize].up_to_date,
            rate_bytes_s: 0,
        }
    }

    fn slot(&mut self, n: Member, pg: u32) -> &mut Slot {
        &mut self.nodes[n as usize].slots[pg as usize]
    }

    /// Performs the outputs of a node's member of `pg` in order, as the dataplane's driver
    /// does.
    fn run_outputs(&mut self, n: Member, pg: u32, outs: Vec<Output>) {
        for o in outs {
            self.log(|| format!("node {n} pg {pg} -> {o:?}"));
            let inc = self.nodes[n as usize].incarnation;
            let generation = self.nodes[n as usize].slots[pg as usize].generation;
            let disk_done = |job| Event::DiskDone {
                node: n,
                incarnation: inc,
                pg,
                job,
                generation,
            };
            match o {
                Output::ApplyLocal { op } => {
                    let body = self.slot(n, pg).ops.get(&op).and_then(|p| p.body.clone());
                    let Some(mut body) = body else {
                        panic!("seed {}: ApplyLocal of unknown op {op}", self.seed)
                    };
                    if body.op == BodyOp::Request(op::CREATE) && body.minted == 0 {
                        // The primary's brick mints the new entry's id as it creates it; the
                        // forward (sent only once the create succeeded here) carries it.
                        body.minted = self.next_fid;
                        self.next_fid += 1;
                        if let Some(slot) = slot_of_create(&body.payload) {
                            self.minted_for.insert(body.minted, slot);
                        }
                        if let Some(b) = self
                            .slot(n, pg)
                            .ops
                            .get_mut(&op)
                            .and_then(|p| p.body.as_mut())
                        {
                            b.minted = body.minted;
                        }
                    }
                    let d = self.rng.gen_range(0..4);
                    self.at(d, disk_done(DiskJob::Local { op, body }));
                }
                Output::ReadForResync { op, lock } => {
                    let now = self.now_ms;
                    self.slot(n, pg).ops.entry(op).or_insert(PrimaryOp {
                        body: None,
                        attempt: None,
                        started_ms: now,
                    });
                    let d = self.rng.gen_range(0..4);
                    self.at(d, disk_done(DiskJob::Resync { op, lock }));
                }
                Output::ApplyForwarded { from, op } => {
                    let body = self.slot(n, pg).bodies_in.remove(&(from, op));
                    let Some(body) = body else {
                        panic!(
                            "seed {}: forward {op} from {from} without its body",
                            self.seed
                        )
                    };
                    let d = self.rng.gen_range(0..4);
                    self.at(d, disk_done(DiskJob::Forwarded { from, op, body }));
                }
                Output::Send { to, msg } => {
                    let body = match &msg {
                        Msg::Forward { op, .. } => {
                            match self.slot(n, pg).ops.get(op).map(|p| p.body.clone()) {
                                Some(Some(body)) => Some(body),
                                // Its resync read is still running; the resend timer retries.
                                Some(None) => continue,
                                None => panic!("seed {}: forward of unknown op {op}", self.seed),
                            }
                        }
                        _ => None,
                    };
                    let frame = encode_repl(
                        (0, pg),
                        n,
                        to,
                        &msg,
                        body.as_ref().map(|b| BodyRef {
                            op: b.op,
                            minted: b.minted,
                            payload: &b.payload,
                        }),
                    );
                    self.send_peer(n, to, frame);
                }
                Output::Reply { op, result } => self.reply(n, pg, op, result),
                Output::RecordDirty {
                    origin,
                    op,
                    lock,
                    absent,
                } => {
                    let slot = self.slot(n, pg);
                    let items = if origin == n {
                        slot.ops
                            .get(&op)
                            .and_then(|p| p.body.as_ref())
                            .and_then(|b| dirt_of_body(b.op, &b.payload))
                    } else {
                        slot.bodies_in
                            .get(&(origin, op))
                            .and_then(|b| dirt_of_body(b.op, &b.payload))
                            .or_else(|| slot.recent_namespace.dirt_of((origin, op)))
                    }
                    .unwrap_or_else(|| dirt_of_lock(lock));
                    let write = slot.healer.as_mut().and_then(|h| h.record(absent, &items));
                    if let Some(w) = write {
                        self.write_dirt_log(n, pg, w);
                    }
                }
                Output::RecordActivity { lock } => {
                    let slot = self.slot(n, pg);
                    slot.activity_log.extend_from_slice(&encode_activity(lock));
                    slot.activity_appended += 1;
                }
                Output::WriteDirtLog { write } => self.write_dirt_log(n, pg, write),
                Output::Propose { map } => {
                    let d = self.rng.gen_range(1..6);
                    self.at(
                        d,
                        Event::Propose {
                            node: n,
                            incarnation: inc,
                            pg,
                            map,
                        },
                    );
                }
                Output::FetchMap => {
                    let d = self.rng.gen_range(1..6);
                    let map = self.store[pg as usize];
                    self.at(
                        d,
                        Event::MapDelivery {
                            node: n,
                            incarnation: inc,
                            pg,
                            map,
                            proposal_result: None,
                        },
                    );
                }
            }
        }
    }

    fn write_dirt_log(&mut self, n: Member, pg: u32, write: LogWrite) {
        if self.trace {
            if let LogWrite::Append { records, .. } = &write {
                for rec in records.chunks(RECORD_BYTES) {
                    eprintln!(
                        "  dirt log node {n} pg {pg}: {:?}",
                        brick_replication::dirt::decode(rec)
                    );
                }
            } else {
                eprintln!("  dirt log node {n} pg {pg}: truncate");
            }
        }
        let slot = self.slot(n, pg);
        match write {
            LogWrite::Append { records, .. } => slot.dirt_log.extend_from_slice(&records),
            LogWrite::Truncate => {
                // Truncated and synced.
                slot.dirt_log.clear();
                slot.dirt_synced = 0;
            }
        }
    }

    /// An op finished on a primary: the healer hears of it, the client gets its answer.
    fn reply(&mut self, n: Member, pg: u32, op: OpId, result: Result<(), OpError>) {
        let now = self.now_ms;
        let env = self.heal_env();
        let node = &mut self.nodes[n as usize];
        let slot = &mut node.slots[pg as usize];
        let mut out = Vec::new();
        let mut copied = false;
        if let (Some(r), Some(h)) = (slot.replica.as_mut(), slot.healer.as_mut()) {
            copied = h.owns(op) && result.is_ok();
            h.on_reply(now, op, result.is_ok());
            h.pump(now, r, &env, &PgCopy { disk: &node.disk }, &mut out);
        }
        self.stats.heal_copies += copied as u32;
        let slot = self.slot(n, pg);
        let Some(p) = slot.ops.remove(&op) else {
            self.run_outputs(n, pg, out);
            return;
        };
        if let (Some(h), Some(_)) = (slot.healer.as_mut(), p.attempt) {
            h.note_client_latency(((now - p.started_ms) * 1000) as f64);
        }
        let epoch = slot.replica.as_ref().map(|r| r.map().epoch).unwrap_or(0);
        let minted = p.body.as_ref().map_or(0, |b| b.minted);
        if let Some((attempt, cop)) = p.attempt {
            if result.is_ok() {
                match self.writers_by_epoch.get(&(pg, epoch)) {
                    Some(&w) if w != n => panic!(
                        "seed {}: two primaries answered writes of PG {pg} in epoch {epoch}: {w} and {n}",
                        self.seed
                    ),
                    _ => {
                        self.writers_by_epoch.insert((pg, epoch), n);
                    }
                }
            }
            let d = self.rng.gen_range(0..3);
            self.at(
                d,
                Event::ClientReply {
                    attempt,
                    op: cop,
                    result,
                    minted,
                },
            );
        }
        self.run_outputs(n, pg, out);
    }

    fn send_peer(&mut self, from: Member, to: Member, frame: Vec<u8>) {
        if self.partitioned(from, to) || (self.faults && self.rng.gen_ratio(1, 100)) {
            self.stats.lost += 1;
            return;
        }
        let copies = if self.faults && self.rng.gen_ratio(1, 100) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let d = self.rng.gen_range(0..6);
            self.at(
                d,
                Event::Peer {
                    from,
                    to,
                    frame: frame.clone(),
                },
            );
        }
    }

    fn deliver(&mut self, e: Event) {
        let target = match &e {
            Event::Peer { to, .. }
            | Event::ClientRequest { to, .. }
            | Event::ClientRead { to, .. } => Some(*to),
            Event::DiskDone { node, .. }
            | Event::Propose { node, .. }
            | Event::MapDelivery { node, .. }
            | Event::ProposalLost { node, .. } => Some(*node),
            _ => None,
        };
        if let Some(n) = target {
            let node = &self.nodes[n as usize];
            let stale_incarnation = match &e {
                Event::DiskDone { incarnation, .. }
                | Event::Propose { incarnation, .. }
                | Event::MapDelivery { incarnation, .. }
                | Event::ProposalLost { incarnation, .. } => *incarnation != node.incarnation,
                _ => false,
            };
            if let Event::Propose { pg, map, .. } = &e {
                let (pg, map) = (*pg, *map);
                if self.store_cut(n) {
                    // The request may have reached the store before the link went; the answer
                    // is lost either way, and the proposer's store client times out.
                    if self.rng.gen_bool(0.5) {
                        self.cas(pg, map);
                    }
                    let d = self.rng.gen_range(100..600);
                    let incarnation = self.nodes[n as usize].incarnation;
                    self.at(
                        d,
                        Event::ProposalLost {
                            node: n,
                            incarnation,
                            pg,
                        },
                    );
                    return;
                }
                // The store executes the transaction even if the proposer died meanwhile.
                let ok = self.cas(pg, map);
                let current = self.store[pg as usize];
                if stale_incarnation || !self.nodes[n as usize].up {
                    return;
                }
                let d = self.rng.gen_range(0..3);
                self.at(
                    d,
                    Event::MapDelivery {
                        node: n,
                        incarnation: self.nodes[n as usize].incarnation,
                        pg,
                        map: current,
                        proposal_result: Some(ok),
                    },
                );
                return;
            }
            if stale_incarnation {
                return;
            }
            if !node.up {
                if let Event::ClientRequest { attempt, .. } = e {
                    self.at(1, Event::ClientDisconnected { attempt });
                }
                return;
            }
            if self.frozen(n) {
                self.nodes[n as usize].inbox.push(e);
                return;
            }
            if let Event::Peer { from, to, .. } = &e {
                if self.partitioned(*from, *to) {
                    self.stats.lost += 1;
                    return;
                }
            }
            if let Event::MapDelivery {
                pg,
                proposal_result,
                ..
            } = &e
            {
                if self.store_cut(n) {
                    // A watch event or fetch is lost; a proposal's answer becomes "no answer".
                    if proposal_result.is_some() {
                        let lost = Event::ProposalLost {
                            node: n,
                            incarnation: node.incarnation,
                            pg: *pg,
                        };
                        self.handle(lost);
                    }
                    return;
                }
            }
        }
        self.handle(e);
    }

    /// A store transaction on PG `pg`'s map.
    fn cas(&mut self, pg: u32, map: PgMap) -> bool {
        let current = self.store[pg as usize];
        if current.epoch + 1 != map.epoch {
            return false;
        }
        assert!(
            map.is_valid(),
            "seed {}: proposed an invalid map {map:?}",
            self.seed
        );
        self.log(|| format!("store: pg {pg} epoch {} -> {map:?}", current.epoch));
        self.store[pg as usize] = map;
        self.stats.map_changes += 1;
        // The store's watchers hear of it.
        for n in 0..self.nodes.len() as Member {
            let d = self.rng.gen_range(1..20);
            let inc = self.nodes[n as usize].incarnation;
            self.at(
                d,
                Event::MapDelivery {
                    node: n,
                    incarnation: inc,
                    pg,
                    map,
                    proposal_result: None,
                },
            );
        }
        true
    }

    fn handle(&mut self, e: Event) {
        let now = self.now_ms;
        let mut out = Vec::new();
        match e {
            Event::Peer { from, to, frame } => {
                let m = decode_repl(&frame[HEADER_BYTES..]).unwrap_or_else(|err| {
                    panic!("seed {}: a frame we sent does not decode: {err}", self.seed)
                });
                assert_eq!((m.from, m.to), (from, to));
                let pg = m.pg;
                let slot = self.slot(to, pg);
                let Some(r) = slot.replica.as_mut() else {
                    return;
                };
                // As the dataplane's `deliver`: keep a forward's body until it is applied.
                let forwarded = match (&m.msg, m.body) {
                    (Msg::Forward { op, .. }, Some(body)) => {
                        slot.recent_namespace
                            .keep((from, *op), body.op, &body.payload);
                        slot.bodies_in.insert((from, *op), body);
                        Some(*op)
                    }
                    _ => None,
                };
                r.on_message(now, from, m.msg, &mut out);
                if let Some(op) = forwarded {
                    let applying = out.iter().any(|o| {
                        matches!(o, Output::ApplyForwarded { from: f, op: o } if *f == from && *o == op)
                    });
                    if !applying {
                        slot.bodies_in.remove(&(from, op)); // a duplicate, or refused
                    }
                }
                self.run_outputs(to, pg, out);
            }
            Event::ClientRequest { to, attempt, op } => {
                let pg = op.pg();
                let slot = self.slot(to, pg);
                let Some(r) = slot.replica.as_mut() else {
                    return;
                };
                let (body, lock, local_first) = op.request();
                match r.submit(now, lock, local_first, &mut out) {
                    Ok(id) => {
                        slot.ops.insert(
                            id,
                            PrimaryOp {
                                body: Some(body),
                                attempt: Some((attempt, op)),
                                started_ms: now,
                            },
                        );
                    }
                    Err(err) => {
                        let d = self.rng.gen_range(0..3);
                        self.at(
                            d,
                            Event::ClientReply {
                                attempt,
                                op,
                                result: Err(err),
                                minted: 0,
                            },
                        );
                    }
                }
                // The op must be known before its outputs run (ApplyLocal needs the body);
                // submit only queues outputs, so running them now is in order.
                self.run_outputs(to, pg, out);
            }
            Event::ClientReply {
                attempt,
                op,
                result,
                minted,
            } => self.client_reply(attempt, op, result, minted),
            Event::ClientDisconnected { attempt } => {
                self.client_retry_attempt(attempt);
            }
            Event::ClientRead { to, id, slot } => self.serve_read(to, id, slot),
            Event::ClientReadReply { id, value } => self.client_read_reply(id, value),
            Event::DiskDone {
                node: n,
                pg,
                job,
                generation,
                ..
            } => {
                if generation == self.slot(n, pg).generation {
                    self.disk_done(n, pg, job);
                }
            }
            Event::MapDelivery {
                node: n,
                pg,
                map,
                proposal_result,
                ..
            } => {
                let Some(r) = self.slot(n, pg).replica.as_mut() else {
                    // A member the PG moved to is started when a map places it (the
                    // dataplane's `sync_slots`).
                    self.maybe_start_placed(n, pg);
                    return;
                };
                match proposal_result {
                    Some(true) => r.on_proposal_result(now, Ok(map), &mut out),
                    Some(false) => r.on_proposal_result(now, Err(Some(map)), &mut out),
                    None => r.on_map(now, map, &mut out),
                }
                self.run_outputs(n, pg, out);
                self.retire_if_moved_off(n, pg);
            }
            Event::ProposalLost { node: n, pg, .. } => {
                let Some(r) = self.slot(n, pg).replica.as_mut() else {
                    return;
                };
                r.on_proposal_result(now, Err(None), &mut out);
                self.run_outputs(n, pg, out);
            }
            Event::Propose { .. } => unreachable!("handled in deliver"),
        }
    }

    fn disk_done(&mut self, n: Member, pg: u32, job: DiskJob) {
        let now = self.now_ms;
        let mut out = Vec::new();
        match job {
            DiskJob::Local { op, body } => {
                let outcome = self.apply(n, &body);
                let outcome = self.data_outcome(n, pg, outcome);
                let slot = self.slot(n, pg);
                if let Some(r) = slot.replica.as_mut() {
                    r.on_local_done(now, op, outcome, &mut out);
                }
            }
            DiskJob::Forwarded { from, op, body } => {
                let outcome = if body.op == BodyOp::Handoff {
                    self.apply_handoff(n, pg, &body.payload)
                } else {
                    let outcome = self.apply(n, &body);
                    self.data_outcome(n, pg, outcome)
                };
                if let Some(r) = self.slot(n, pg).replica.as_mut() {
                    r.on_forward_applied(now, from, op, outcome, &mut out);
                }
                self.hand_over_lost(n);
            }
            DiskJob::Resync { op, lock } => {
                let failed = self.disk_fault(n);
                let node = &mut self.nodes[n as usize];
                let slot = &mut node.slots[pg as usize];
                let (Some(r), Some(h)) = (slot.replica.as_mut(), slot.healer.as_mut()) else {
                    return;
                };
                let read = h.resync_read(op, lock, r);
                if self.trace {
                    eprintln!("[{:>6}ms] node {n} pg {pg} resync read {op}: {read:?}", now);
                }
                match read {
                    ResyncRead::CatchUp { .. } => self.stats.catch_ups += 1,
                    ResyncRead::Handoff { .. } => self.stats.handoffs += 1,
                    _ => {}
                }
                let body = match read {
                    ResyncRead::CatchUp { dirs, tree } => node.disk.catch_up(&dirs, tree),
                    ResyncRead::Handoff { payload } => OwnedBody {
                        op: BodyOp::Handoff,
                        minted: 0,
                        payload,
                    },
                    ResyncRead::Range => node.disk.resync_body(lock),
                };
                let outcome = if failed { Outcome::Failed } else { Outcome::Ok };
                if let Some(p) = slot.ops.get_mut(&op) {
                    p.body = Some(body);
                }
                r.on_local_done(now, op, outcome, &mut out);
            }
        }
        self.run_outputs(n, pg, out);
    }

    /// As the dataplane: a data op that finds its file missing while this member's namespace
    /// is behind (as its own PG 0 member knows) failed here rather than was refused.
    fn data_outcome(&mut self, n: Member, pg: u32, outcome: Outcome) -> Outcome {
        if pg != DATA_PG {
            return outcome;
        }
        let current = self.nodes[n as usize].slots[NAMESPACE_PG as usize]
            .replica
            .as_ref()
            .is_some_and(|r| r.map().is_up_to_date(n));
        outcome_in_data_pg(outcome, current)
    }

    /// Files a namespace repair created empty on `n`'s brick are lost data to its data PG
    /// member, which persists them in its activity log before the brick forgets them.
    fn hand_over_lost(&mut self, n: Member) {
        let node = &mut self.nodes[n as usize];
        if node.disk.lost.is_empty() {
            return;
        }
        let slot = &mut node.slots[DATA_PG as usize];
        let Some(r) = slot.replica.as_mut() else {
            return;
        };
        let keys: Vec<LockKey> = node
            .disk
            .lost
            .iter()
            .map(|&f| LockKey::whole_file(f))
            .collect();
        let mut out = Vec::new();
        r.lost_data(&keys, &mut out);
        node.disk.lost.clear();
        self.stats.lost_data += keys.len() as u32;
        self.run_outputs(n, DATA_PG, out);
    }

    /// Starts node `n`'s member of `pg` once the store's map places it (a move to its set),
    /// as the dataplane creates a slot for a newly placed member: empty logs, fresh.
    fn maybe_start_placed(&mut self, n: Member, pg: u32) {
        let node = &self.nodes[n as usize];
        let slot = &node.slots[pg as usize];
        if !node.up || slot.quarantined || !self.store[pg as usize].is_placed(n) {
            return;
        }
        self.log(|| format!("START node {n} pg {pg}: the PG moved here"));
        self.free_copy(n, pg);
        let node = &mut self.nodes[n as usize];
        node.quarantine_restarts += 1;
        let op_base = (node.incarnation << 40) | (node.quarantine_restarts << 32);
        let out = self.start_member(n, pg, op_base, false, false);
        self.run_outputs(n, pg, out);
        self.hand_over_lost(n);
    }

    /// The PG moved off node `n`'s member (a committed map no longer places it): the
    /// dataplane drops the slot and frees the copy.
    fn retire_if_moved_off(&mut self, n: Member, pg: u32) {
        let retired = self
            .slot(n, pg)
            .replica
            .as_ref()
            .is_some_and(|r| r.retired());
        if retired {
            self.log(|| format!("RETIRE node {n} pg {pg}: the PG moved off it"));
            self.stats.retired += 1;
            self.free_copy(n, pg);
        }
    }

    /// Drops node `n`'s slot of `pg` and frees its copy of the PG's data: the data PG's files
    /// keep their names (PG 0 is on every node) and are emptied.
    fn free_copy(&mut self, n: Member, pg: u32) {
        let slot = self.slot(n, pg);
        let generation = slot.generation + 1;
        *slot = Slot {
            generation,
            ..Slot::default()
        };
        if pg == DATA_PG {
            let disk = &mut self.nodes[n as usize].disk;
            for v in disk.files.values_mut() {
                *v = FREED;
            }
            disk.limbo.clear();
        }
    }

    /// A rebalance's next step for the data PG: adds the other set (fresh: healed by the
    /// primary while clients go on), commits once that set is up to date (as the leader does
    /// after its digests match), or, now and then, stops the move (the added set leaves).
    fn advance_move(&mut self) {
        let Some(to) = self.moving_to else { return };
        let map = self.store[DATA_PG as usize];
        let dst = self.set_mask(to);
        if map.placed & dst == 0 {
            self.moving_to = None; // stopped, or never added
            return;
        }
        if map.up_to_date & dst == dst {
            if let Some(next) = map.with_removed(map.placed & !dst) {
                self.log(|| format!("MOVE commit: data PG on set {to} ({next:?})"));
                assert!(
                    self.cas(DATA_PG, next),
                    "seed {}: move commit CAS",
                    self.seed
                );
                self.stats.moves_committed += 1;
                self.moving_to = None;
            }
        } else if self.faults && self.rng.gen_ratio(1, 20_000) {
            if let Some(next) = map.with_removed(dst) {
                self.log(|| format!("MOVE stopped: data PG back on its set ({next:?})"));
                assert!(self.cas(DATA_PG, next), "seed {}: move stop CAS", self.seed);
                self.stats.moves_stopped += 1;
                self.moving_to = None;
            }
        }
    }

    /// Starts moving the data PG to another set.
    fn start_move(&mut self) {
        let map = self.store[DATA_PG as usize];
        let from = (0..self.sets).find(|&s| map.placed & self.set_mask(s) != 0);
        let Some(from) = from.filter(|&s| map.placed == self.set_mask(s)) else {
            return; // mid-move
        };
        let to = (from + 1 + self.rng.gen_range(0..self.sets - 1)) % self.sets;
        let Some(next) = map.with_added(self.set_mask(to)) else {
            return;
        };
        self.log(|| format!("MOVE start: data PG from set {from} to {to} ({next:?})"));
        assert!(self.cas(DATA_PG, next), "seed {}: move CAS", self.seed);
        self.stats.moves += 1;
        self.moving_to = Some(to);
    }

    fn set_mask(&self, set: u8) -> u8 {
        mask_of(self.replica) << (set * self.replica)
    }

    /// Applies a body to a node's brick; returns what the disk says.
    fn apply(&mut self, n: Member, body: &OwnedBody) -> Outcome {
        if matches!(body.op, BodyOp::Request(op::WRITE)) && self.disk_fault(n) {
            return Outcome::Failed;
        }
        let disk = &mut self.nodes[n as usize].disk;
        let outcome = disk.apply(body);
        if let BodyOp::Request(code) = body.op {
            self.log(|| format!("APPLY node {n} opcode {code:#x} -> {outcome:?}"));
        }
        outcome
    }

    fn apply_handoff(&mut self, n: Member, pg: u32, payload: &[u8]) -> Outcome {
        let Some(h) = self.slot(n, pg).healer.as_mut() else {
            return Outcome::Failed;
        };
        match h.apply_handoff(payload) {
            Ok(write) => {
                if let Some(w) = write {
                    self.write_dirt_log(n, pg, w);
                }
                Outcome::Ok
            }
            Err(_) => Outcome::Refused(ErrorCode::Malformed.code()),
        }
    }

    fn client_reply(
        &mut self,
        attempt: u64,
        cop: ClientOp,
        result: Result<(), OpError>,
        minted: u64,
    ) {
        let c = &mut self.client;
        let slot = cop.slot;
        let current = c
            .outstanding
            .get(&slot)
            .is_some_and(|o| o.attempt == attempt);
        let known = current || c.attempts.contains_key(&attempt);
        if !known {
            return;
        }
        self.log(|| format!("client: attempt {attempt} {cop:?} -> {result:?}"));
        let refuse = matches!(cop.kind, OpKind::Write { refuse: true, .. });
        match result {
            Ok(()) => {
                assert!(
                    !refuse,
                    "seed {}: a write every member refuses was acknowledged",
                    self.seed
                );
                let c = &mut self.client;
                // Only the current attempt's answer counts, as in the real client (which
                // drops the older attempt when it sends again): a newer attempt of the same
                // op may still be on its way, and moving on to the next op now would let
                // that duplicate land after it.
                let still_wanted = current && c.outstanding.get(&slot).is_some_and(|o| o.op == cop);
                if still_wanted {
                    c.ledger.acknowledged(&cop, minted, self.next_fid);
                    c.outstanding.remove(&slot);
                    c.acks += 1;
                }
            }
            Err(OpError::Refused(code)) => {
                assert!(
                    cop.may_be_refused(),
                    "seed {}: a plain write of register {slot} was refused ({code})",
                    self.seed
                );
                if current {
                    self.client.outstanding.remove(&slot);
                }
            }
            Err(OpError::BelowMinSize { .. }) => {
                if current {
                    self.client.outstanding.remove(&slot);
                    self.client.below_min += 1;
                }
            }
            Err(_) => {
                // Sometimes the application gives up instead of retrying: whatever part of
                // the op landed must still converge on every member.
                let giving_up = self.now_ms + 1500 > FAULT_PHASE_MS || self.rng.gen_ratio(1, 4);
                if current && giving_up {
                    self.client.outstanding.remove(&slot);
                } else if current {
                    self.client_retry_attempt(attempt);
                }
            }
        }
    }

    /// A read at node `n`, answered as the dataplane answers it: from the member's copy if
    /// `read_gate` lets it (the disk is read at once, so the gate is asked once).
    fn serve_read(&mut self, n: Member, id: u64, slot: u64) {
        let now = self.now_ms;
        let fid = REG_BASE + slot;
        let node = &self.nodes[n as usize];
        let gate = node.slots[DATA_PG as usize]
            .replica
            .as_ref()
            .map(|r| r.read_gate(now, &LockKey::range(fid, 0, 8)));
        let value = match gate {
            Some(ReadGate::Serve) => node.disk.files.get(&fid).copied(),
            _ => None,
        };
        self.log(|| format!("node {n} read {id} of register {slot}: {gate:?} -> {value:?}"));
        let d = self.rng.gen_range(0..3);
        self.at(d, Event::ClientReadReply { id, value });
    }

    fn client_read_reply(&mut self, id: u64, value: Option<u64>) {
        let Some(read) = self.client.reads.get(&id) else {
            return;
        };
        let Some(v) = value else {
            self.stats.reads_refused += 1;
            self.client.read_maps = self.store;
            let d = self.rng.gen_range(5..30);
            self.client.read_retry_at_ms.insert(id, self.now_ms + d);
            return;
        };
        assert!(
            v >= read.acked_floor && v >= read.read_floor,
            "seed {}: at {}ms a read of register {} returned {v}, but {} was acknowledged and \
             {} read before it was sent (maps {:?})",
            self.seed,
            self.now_ms,
            read.slot,
            read.acked_floor,
            read.read_floor,
            self.store
        );
        let slot = read.slot;
        self.stats.reads += 1;
        self.client.reads.remove(&id);
        let max = self.client.read_max.entry(slot).or_default();
        *max = (*max).max(v);
    }

    /// Sends read `id` to the data PG's primary of the client's map.
    fn client_send_read(&mut self, id: u64) {
        let Some(primary) = self.client.read_maps[DATA_PG as usize].primary() else {
            self.client.read_retry_at_ms.insert(id, self.now_ms + 20);
            return;
        };
        let Some(read) = self.client.reads.get_mut(&id) else {
            return;
        };
        read.sent_at_ms = self.now_ms;
        let slot = read.slot;
        let d = self.rng.gen_range(0..3);
        self.at(
            d,
            Event::ClientRead {
                to: primary,
                id,
                slot,
            },
        );
    }

    /// Reads due again are sent; a read without an answer for long (its node died) is
    /// dropped; with `issue`, new reads of registers not being read start.
    fn client_read_step(&mut self, issue: bool) {
        let now = self.now_ms;
        let due: Vec<u64> = self
            .client
            .read_retry_at_ms
            .iter()
            .filter(|(_, &t)| t <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            self.client.read_retry_at_ms.remove(&id);
            self.client_send_read(id);
        }
        // A read without an answer for long (its node is down or frozen): the reader drops
        // it and learns the maps again.
        let retry = &self.client.read_retry_at_ms;
        let before = self.client.reads.len();
        self.client
            .reads
            .retain(|id, r| retry.contains_key(id) || now < r.sent_at_ms + CLIENT_TIMEOUT_MS);
        if self.client.reads.len() < before {
            self.client.read_maps = self.store;
        }
        if !issue {
            return;
        }
        for slot in 0..KEYS {
            let reading = self.client.reads.values().any(|r| r.slot == slot);
            if reading || !self.rng.gen_ratio(1, 30) {
                continue;
            }
            let fid = REG_BASE + slot;
            let acked_floor = self.client.ledger.contents.get(&fid).map_or(0, |c| c.acked);
            let read_floor = self.client.read_max.get(&slot).copied().unwrap_or(0);
            let id = self.client.next_read;
            self.client.next_read += 1;
            self.client.reads.insert(
                id,
                PendingRead {
                    slot,
                    acked_floor,
                    read_floor,
                    sent_at_ms: now,
                },
            );
            self.client_send_read(id);
        }
    }

    /// The current attempt failed retriably: learn the maps and send again shortly.
    fn client_retry_attempt(&mut self, attempt: u64) {
        let slot = self
            .client
            .outstanding
            .iter()
            .find(|(_, o)| o.attempt == attempt)
            .map(|(&k, _)| k);
        if let Some(slot) = slot {
            self.client.maps = self.store;
            let d = self.rng.gen_range(5..30);
            self.client.retry_at_ms.insert(slot, self.now_ms + d);
        }
    }

    fn client_send(&mut self, slot: u64) {
        let Some(pg) = self.client.outstanding.get(&slot).map(|o| o.op.pg()) else {
            return;
        };
        let map = self.client.maps[pg as usize];
        let Some(primary) = map.primary() else { return };
        let attempt = self.client.next_attempt;
        self.client.next_attempt += 1;
        let now = self.now_ms;
        let Some(o) = self.client.outstanding.get_mut(&slot) else {
            return;
        };
        self.client.attempts.insert(o.attempt, slot);
        o.attempt = attempt;
        o.sent_at_ms = now;
        o.sent_to = primary;
        o.sent_epoch = map.epoch;
        let op = o.op;
        let d = self.rng.gen_range(0..3);
        self.at(
            d,
            Event::ClientRequest {
                to: primary,
                attempt,
                op,
            },
        );
    }

    /// The next op on a slot: registers are written; names are created, written and removed.
    fn next_op(&mut self, slot: u64) -> ClientOp {
        let value = self.client.next_value;
        self.client.next_value += 1;
        let known = self.client.ledger.names.get(&slot).and_then(|n| n.acked);
        let kind = if slot < KEYS {
            let refuse = self.rng.gen_ratio(1, 20);
            OpKind::Write {
                fid: REG_BASE + slot,
                value,
                refuse,
            }
        } else {
            match (self.rng.gen_range(0u32..4), known) {
                (1, _) => OpKind::Unlink,
                (0, _) | (_, None) => OpKind::Create,
                (_, Some(fid)) => OpKind::Write {
                    fid,
                    value,
                    refuse: false,
                },
            }
        };
        if !matches!(kind, OpKind::Write { .. }) {
            self.stats.namespace_ops += 1;
        }
        ClientOp {
            slot,
            kind,
            seq: value,
        }
    }

    fn client_step(&mut self, issue: bool) {
        let now = self.now_ms;
        let due: Vec<u64> = self
            .client
            .retry_at_ms
            .iter()
            .filter(|(_, &t)| t <= now)
            .map(|(&k, _)| k)
            .collect();
        for slot in due {
            self.client.retry_at_ms.remove(&slot);
            self.client_send(slot);
        }
        // A request without an answer for long: if the map moved on, the old primary is
        // fenced and the op goes to the new one; otherwise keep waiting (a late original
        // must never overtake a newer op on the same primary).
        let waited: Vec<u64> = self
            .client
            .outstanding
            .iter()
            .filter(|(k, o)| {
                now >= o.sent_at_ms + CLIENT_STALL_CHECK_MS
                    && !self.client.retry_at_ms.contains_key(k)
            })
            .map(|(&k, _)| k)
            .collect();
        for slot in waited {
            let o = &self.client.outstanding[&slot];
            let store = self.store[o.op.pg() as usize];
            if store.epoch != o.sent_epoch || store.primary() != Some(o.sent_to) {
                self.client.maps = self.store;
                self.client_send(slot);
            } else if let Some(o) = self.client.outstanding.get_mut(&slot) {
                o.sent_at_ms = now;
            }
        }
        if !issue {
            return;
        }
        for slot in 0..KEYS + NS_KEYS {
            // Every fourth register is cold: written about once in 1.5 s, so that after a
            // failover some registers were last written by the new primary only.
            let rate = if slot % 4 == 0 { 1500 } else { 40 };
            if self.client.outstanding.contains_key(&slot) || !self.rng.gen_ratio(1, rate) {
                continue;
            }
            let op = self.next_op(slot);
            self.client.ledger.issued(&op);
            self.client.outstanding.insert(
                slot,
                Outstanding {
                    op,
                    attempt: 0,
                    sent_at_ms: now,
                    sent_to: 0,
                    sent_epoch: 0,
                },
            );
            self.client_send(slot);
        }
    }

    fn inject_faults(&mut self) {
        let members = self.nodes.len() as Member;
        let n = self.rng.gen_range(0..members);
        let roll = self.rng.gen_range(0..10_000);
        match roll {
            0..=1 if self.nodes[n as usize].up => self.crash(n, false),
            2 if self.nodes[n as usize].up => self.crash(n, true),
            3..=5 if self.nodes[n as usize].up && !self.frozen(n) => {
                let d = self.rng.gen_range(300..3000);
                self.log(|| format!("FREEZE node {n} for {d}ms"));
                self.stats.freezes += 1;
                self.nodes[n as usize].frozen_until_ms = self.now_ms + d;
            }
            9 if self.heal => self.replace(n),
            16..=17 if self.moves && self.moving_to.is_none() => self.start_move(),
            13..=15 if !self.store_cut(n) => {
                // A split: node n on the minority side, without the store; clients still
                // reach it (the old primary a reader may still ask).
                let d = self.rng.gen_range(1000..5000);
                self.log(|| format!("SPLIT node {n} from the others and the store for {d}ms"));
                self.stats.splits += 1;
                self.nodes[n as usize].store_cut_until_ms = self.now_ms + d;
                for m in (0..members).filter(|&m| m != n) {
                    self.partitions
                        .insert((n.min(m), n.max(m)), self.now_ms + d);
                }
            }
            10..=12 if !self.store_cut(n) => {
                let d = self.rng.gen_range(100..4000);
                self.log(|| format!("STORE CUT node {n} for {d}ms"));
                self.stats.store_cuts += 1;
                self.nodes[n as usize].store_cut_until_ms = self.now_ms + d;
            }
            6..=8 => {
                let m = self.rng.gen_range(0..members);
                if m != n {
                    let d = self.rng.gen_range(100..3000);
                    self.log(|| format!("PARTITION {n} | {m} for {d}ms"));
                    self.stats.partitions += 1;
                    self.partitions
                        .insert((n.min(m), n.max(m)), self.now_ms + d);
                }
            }
            _ => {}
        }
        for n in 0..members {
            let node = &self.nodes[n as usize];
            if !node.up && self.now_ms > node.down_since_ms + 200 && self.rng.gen_ratio(1, 500) {
                self.restart(n);
            }
        }
    }

    /// A SIGKILL, or (`power`) the machine losing power: then the logs also lose what was not
    /// synced, cut anywhere (a record may be torn), and at start the member knows it.
    fn crash(&mut self, n: Member, power: bool) {
        self.log(|| format!("{} node {n}", if power { "POWER LOSS" } else { "CRASH" }));
        if power {
            self.stats.power_losses += 1;
        } else {
            self.stats.crashes += 1;
        }
        let now = self.now_ms;
        let node = &mut self.nodes[n as usize];
        node.up = false;
        node.down_since_ms = now;
        node.inbox.clear();
        node.frozen_until_ms = 0;
        for slot in &mut node.slots {
            slot.crash();
        }
        if power {
            node.power_lost = true;
            for pg in 0..PGS {
                let slot = &self.nodes[n as usize].slots[pg];
                let (len, synced) = (slot.dirt_log.len(), slot.dirt_synced);
                let records = slot.activity_log.len() / RECORD_BYTES;
                let keep = self.rng.gen_range(synced.min(len)..=len);
                if keep % RECORD_BYTES != 0 {
                    self.stats.torn_records += 1;
                }
                let kept = self.rng.gen_range(0..=records) * RECORD_BYTES;
                let slot = &mut self.nodes[n as usize].slots[pg];
                slot.dirt_log.truncate(keep);
                slot.activity_log.truncate(kept);
            }
        }
        // Writes the process had handed to the kernel complete; the rest never happen. The
        // completion events die with the incarnation. (Data writes that completed survive a
        // power loss too: the images brickd serves are written O_DIRECT.)
        let jobs: Vec<OwnedBody> = self
            .queue
            .values()
            .filter_map(|e| match e {
                Event::DiskDone {
                    node,
                    job: DiskJob::Local { body, .. } | DiskJob::Forwarded { body, .. },
                    ..
                } if *node == n && body.op != BodyOp::Handoff => Some(body.clone()),
                _ => None,
            })
            .collect();
        for body in jobs {
            if self.rng.gen_bool(0.5) {
                self.apply(n, &body);
            }
        }
        // Clients connected to it see the connection reset.
        let attempts: Vec<u64> = self
            .client
            .outstanding
            .values()
            .filter(|o| o.sent_to == n)
            .map(|o| o.attempt)
            .collect();
        for attempt in attempts {
            let d = self.rng.gen_range(1..5);
            self.at(d, Event::ClientDisconnected { attempt });
        }
    }

    /// `volume replace-brick`: member `n`'s brick is replaced by an empty one, in one store
    /// transaction that marks it absent and fresh in every PG (refused, as the cluster model
    /// refuses it, when that would lose a PG's last up-to-date copy or drop one below
    /// `min_size`). The new brick starts at once, with nothing on it.
    fn replace(&mut self, n: Member) {
        let mut next = self.store;
        for map in next.iter_mut().filter(|m| m.is_placed(n)) {
            match map.with_replaced(n) {
                Some(m) if m.up_to_date_count() >= m.min_size => *map = m,
                _ => return,
            }
        }
        self.log(|| format!("REPLACE member {n} by an empty brick"));
        self.stats.replacements += 1;
        if self.nodes[n as usize].up {
            self.crash(n, false);
        }
        let node = &mut self.nodes[n as usize];
        node.disk = Disk::default();
        node.slots = Default::default();
        node.power_lost = false;
        for (pg, map) in next.into_iter().enumerate() {
            if map != self.store[pg] {
                assert!(self.cas(pg as u32, map), "seed {}: replace CAS", self.seed);
            }
        }
        self.boot(n, false);
    }

    fn restart(&mut self, n: Member) {
        // Now and then a record of a dirt log was damaged on disk while it was down.
        for pg in 0..PGS {
            let len = self.nodes[n as usize].slots[pg].dirt_log.len();
            if len >= RECORD_BYTES && self.rng.gen_ratio(1, 20) {
                let at = self.rng.gen_range(0..len);
                let bit = self.rng.gen_range(0..8);
                self.nodes[n as usize].slots[pg].dirt_log[at] ^= 1 << bit;
                self.stats.damaged_records += 1;
            }
        }
        self.boot(n, true);
    }

    /// Starts member `n` as the dataplane does: each PG's logs are replayed (the dirt log's
    /// torn tail cut, the activity log rewritten), then its replica and its healer start.
    /// `restarted`: after a crash (a new brick: not).
    fn boot(&mut self, n: Member, restarted: bool) {
        self.log(|| format!("START node {n}"));
        let node = &mut self.nodes[n as usize];
        node.up = true;
        node.incarnation += 1;
        node.disk_failing_until_ms = 0;
        let power_lost = std::mem::take(&mut node.power_lost);
        let op_base = node.incarnation << 40;
        let mut outs = Vec::new();
        for pg in 0..PGS as u32 {
            if !self.store[pg as usize].is_placed(n) {
                // Not placed here: whatever a move left of its copy is freed.
                self.free_copy(n, pg);
                continue;
            }
            let out = self.start_member(n, pg, op_base, restarted, power_lost);
            outs.push((pg, out));
        }
        for (pg, out) in outs {
            self.run_outputs(n, pg, out);
        }
        self.hand_over_lost(n);
    }

    fn thaw(&mut self) {
        for n in 0..self.nodes.len() as Member {
            let node = &mut self.nodes[n as usize];
            if node.up && node.frozen_until_ms <= self.now_ms && !node.inbox.is_empty() {
                let inbox = std::mem::take(&mut node.inbox);
                for e in inbox {
                    self.deliver(e);
                }
            }
        }
    }

    fn tick_all(&mut self) {
        for n in 0..self.nodes.len() as Member {
            if self.frozen(n) {
                continue;
            }
            // As the dataplane: removed files are freed once no namespace change applied here
            // is in doubt any more and no member is behind this copy in the namespace.
            let node = &mut self.nodes[n as usize];
            let ns = &node.slots[NAMESPACE_PG as usize];
            let settled = ns.replica.as_ref().is_some_and(|r| r.namespace_settled())
                && ns.healer.as_ref().is_some_and(|h| !h.has_dirt());
            if settled && !node.disk.limbo.is_empty() {
                node.disk.limbo.clear();
            }
            self.quarantine_tick(n);
            let mut begins = if self.heal { HEAL_BEGINS_PER_TICK } else { 0 };
            for pg in 0..PGS as u32 {
                let now = self.now_ms;
                let mut out = Vec::new();
                if let Some(r) = self.slot(n, pg).replica.as_mut() {
                    r.tick(now, &mut out);
                }
                self.run_outputs(n, pg, out);
                self.tick_heal(n, pg, &mut begins);
            }
        }
    }

    /// The dataplane's per-tick work beside a replica: the activity log's rewrite and the
    /// healer. With the heal off (`begins` 0), nothing begins (members that left stay
    /// absent), but the dirt is still recorded and forgotten as in production.
    fn tick_heal(&mut self, n: Member, pg: u32, begins: &mut usize) {
        let now = self.now_ms;
        let env = self.heal_env();
        let node = &mut self.nodes[n as usize];
        let slot = &mut node.slots[pg as usize];
        let (Some(r), Some(h)) = (slot.replica.as_mut(), slot.healer.as_mut()) else {
            return;
        };
        if slot.activity_appended > 0 && now >= slot.activity_rewritten_ms + ACTIVITY_REWRITE_MS {
            slot.activity_log = activity_rewrite(&r.activity_keys(), ACTIVITY_RECORDS_MAX);
            slot.activity_appended = 0;
            slot.activity_rewritten_ms = now;
        }
        let mut out = Vec::new();
        let local = PgCopy { disk: &node.disk };
        if now.is_multiple_of(brick_tuning::HEAL_TICK_MS) {
            h.periodic(now, r, &env, begins, &local, &mut out);
        } else {
            h.pump(now, r, &env, &local, &mut out);
        }
        self.run_outputs(n, pg, out);
    }

    fn check(&self) {
        for (pg, map) in self.store.iter().enumerate() {
            assert!(
                map.is_valid(),
                "seed {}: invalid map of PG {pg} {map:?}",
                self.seed
            );
        }
        let ledger = &self.client.ledger;
        // Members up to date in PG 0 hold every acknowledged namespace change.
        for n in self.store[NAMESPACE_PG as usize].acting() {
            let disk = &self.nodes[n as usize].disk;
            for slot in KEYS..KEYS + NS_KEYS {
                let entry = disk.names.get(&slot_name(slot)).copied();
                assert!(
                    ledger.name_may_be(slot, entry, &self.minted_for),
                    "seed {}: at {}ms member {n}, up to date in PG 0, has name {} = {entry:?}, \
                     but the client's ledger says {:?} (maps {:?})",
                    self.seed,
                    self.now_ms,
                    slot_name(slot),
                    ledger.names.get(&slot),
                    self.store
                );
            }
        }
        // Members up to date in the data PG hold every acknowledged write of the files they
        // have; one that is leaving (it knows its copy differs) serves nothing meanwhile.
        let leaving = |n: Member| {
            self.nodes[n as usize].slots[DATA_PG as usize]
                .replica
                .as_ref()
                .is_some_and(|r| r.is_leaving())
        };
        for n in self.store[DATA_PG as usize]
            .acting()
            .filter(|&n| !leaving(n))
        {
            let disk = &self.nodes[n as usize].disk;
            for (&fid, &content) in &disk.files {
                // A file whose removal was acknowledged cannot come back: what a member
                // behind in the namespace still holds of it does not matter.
                let dead = self
                    .minted_for
                    .get(&fid)
                    .is_some_and(|&slot| !ledger.name_may_be(slot, Some(fid), &self.minted_for));
                if dead {
                    continue;
                }
                assert!(
                    ledger.content_may_be(fid, content),
                    "seed {}: at {}ms member {n}, up to date in the data PG, has file {fid} = \
                     {content}, but the client's ledger says {:?} (maps {:?}; each member's \
                     copy, or the one it keeps in limbo: {:?})",
                    self.seed,
                    self.now_ms,
                    ledger.contents.get(&fid),
                    self.store,
                    self.nodes
                        .iter()
                        .map(|node| (node.disk.files.get(&fid), node.disk.limbo.get(&fid)))
                        .collect::<Vec<_>>()
                );
            }
            for k in 0..KEYS {
                assert!(
                    disk.files.contains_key(&(REG_BASE + k)),
                    "seed {}: member {n}, up to date in the data PG, lost register {k}",
                    self.seed
                );
            }
        }
    }

    fn step(&mut self, faults: bool, issue: bool) {
        self.now_ms += 1;
        if faults {
            self.inject_faults();
        }
        self.thaw();
        self.restore_store_links();
        while let Some((&(t, s), _)) = self.queue.iter().next() {
            if t > self.now_ms {
                break;
            }
            let e = self.queue.remove(&(t, s)).expect("present");
            self.deliver(e);
        }
        if self.now_ms.is_multiple_of(TICK_MS) {
            self.tick_all();
        }
        if self.heal {
            self.advance_move();
        }
        self.client_step(issue);
        self.client_read_step(issue);
        self.check();
    }

    fn run(&mut self) {
        self.disk_fault_per_mille = if self.rng.gen_bool(0.3) { 2 } else { 0 };
        // The last stretch of faults runs without new operations and with a client that gives
        // up at the first error, so that what the last failovers left half-applied stays as
        // the final state of its files and must be made identical by the new primaries.
        while self.now_ms < FAULT_PHASE_MS {
            let issue = self.now_ms + 2000 < FAULT_PHASE_MS;
            self.step(true, issue);
        }
        // The faults stop: crashed members restart, frozen ones thaw, links heal.
        self.faults = false;
        self.disk_fault_per_mille = 0;
        self.partitions.clear();
        for n in 0..self.nodes.len() as Member {
            let node = &mut self.nodes[n as usize];
            if node.store_cut_until_ms > self.now_ms {
                // Back at the next step, whose `restore_store_links` resends the maps.
                node.store_cut_until_ms = self.now_ms + 1;
            }
            self.nodes[n as usize].frozen_until_ms = 0;
            if !self.nodes[n as usize].up {
                self.restart(n);
            }
        }
        let end = self.now_ms + SETTLE_MS;
        while self.now_ms < end {
            self.step(false, false);
        }
        self.check_settled();
    }

    fn check_settled(&self) {
        for (pg, map) in self.store.iter().enumerate() {
            let primary = map.primary().map(|p| &self.nodes[p as usize].slots[pg]);
            assert!(
                !self.heal || map.up_to_date == map.placed,
                "seed {}: members of PG {pg} still behind after the faults stopped: the heal did \
                 not finish (map {map:?}, the primary's healer {:?})",
                self.seed,
                primary.map(|p| &p.healer)
            );
        }
        if self.heal {
            let data = self.store[DATA_PG as usize];
            assert!(
                (0..self.sets).any(|s| data.placed == self.set_mask(s)),
                "seed {}: the data PG did not end on one replica set: {data:?}",
                self.seed
            );
            for n in (0..self.nodes.len() as Member).filter(|&n| !data.is_placed(n)) {
                assert!(
                    self.nodes[n as usize].slots[DATA_PG as usize]
                        .replica
                        .is_none(),
                    "seed {}: node {n} still runs a member of the data PG that moved off it",
                    self.seed
                );
            }
        }
        let both = self.store[0].up_to_date & self.store[1].up_to_date;
        let acting: Vec<Member> = (0..self.nodes.len() as Member)
            .filter(|&m| both & (1 << m) != 0)
            .collect();
        let first = &self.nodes[acting[0] as usize].disk;
        for &m in &acting[1..] {
            let theirs = &self.nodes[m as usize].disk;
            assert!(
                theirs.same_as(first),
                "seed {}: up-to-date members {} and {m} differ after the faults stopped (maps \
                 {:?}): {first:?} and {theirs:?}",
                self.seed,
                acting[0],
                self.store
            );
        }
        assert!(
            self.client.outstanding.is_empty(),
            "seed {}: client operations still unanswered after the faults stopped: {:?} (maps {:?})",
            self.seed,
            self.client.outstanding.keys().collect::<Vec<_>>(),
            self.store
        );
        for n in acting {
            for (pg, slot) in self.nodes[n as usize].slots.iter().enumerate() {
                let r = slot.replica.as_ref().expect("restarted");
                assert_eq!(
                    r.pending_ops(),
                    0,
                    "seed {}: member {n} still has ops in PG {pg}",
                    self.seed
                );
                if self.heal {
                    let h = slot.healer.as_ref().expect("restarted");
                    assert!(
                        !h.has_dirt(),
                        "seed {}: member {n} still records dirt in PG {pg} with every member up to date",
                        self.seed
                    );
                }
            }
        }
    }
}

/// The name slot a CREATE body is about.
fn slot_of_create(payload: &[u8]) -> Option<u64> {
    match Request::decode(op::CREATE, payload).ok()? {
        Request::Create { name, .. } => {
            let i: u64 = name.strip_prefix('n')?.parse().ok()?;
            (i < NS_KEYS).then_some(KEYS + i)
        }
        _ => None,
    }
}

fn moves_enabled() -> bool {
    std::env::var("SIM_MOVES").map_or(true, |v| v != "0")
}

fn heal_enabled() -> bool {
    std::env::var("SIM_HEAL").map_or(true, |v| v != "0")
}

fn shapes(seed: u64) -> (u8, u8) {
    match seed % 3 {
        0 => (3, 2),
        1 => (2, 1),
        _ => (3, 1),
    }
}

fn run_seed(seed: u64) -> Sim {
    let (members, min_size) = shapes(seed);
    // Every other seed has two replica sets, between which rebalances move the data PG.
    let sets = if heal_enabled() && (seed / 3) % 2 == 1 {
        2
    } else {
        1
    };
    let mut sim = Sim::with_sets(seed, members, min_size, sets);
    sim.run();
    sim
}

#[test]
fn seeded_simulation() {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        let seed: u64 = seed.parse().expect("SIM_SEED is a number");
        let sim = run_seed(seed);
        eprintln!("seed {seed}: {:?}, acks {}", sim.stats, sim.client.acks);
        return;
    }
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 200 } else { 2000 });
    let first: u64 = std::env::var("SIM_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut totals = Stats::default();
    let (mut acks, mut below_min) = (0u64, 0u64);
    let mut writers = BTreeSet::new();
    for seed in first..first + seeds {
        let result = std::panic::catch_unwind(|| run_seed(seed));
        let sim = match result {
            Ok(sim) => sim,
            Err(e) => {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("seed {seed} failed: {why}\nreplay: SIM_SEED={seed} SIM_TRACE=1 cargo test -p brick-replication --test sim");
            }
        };
        acks += sim.client.acks;
        below_min += sim.client.below_min;
        totals.add(&sim.stats);
        writers.extend(sim.writers_by_epoch.values().copied());
    }
    eprintln!(
        "{seeds} seeds: {acks} acknowledged operations, {below_min} refused below min_size, {totals:?}"
    );
    // The faults must actually have happened and operations must have gone through, or the
    // run proves nothing.
    assert!(
        acks > seeds * 100,
        "too few operations acknowledged: {acks}"
    );
    assert!(totals.crashes > 0 && totals.freezes > 0 && totals.partitions > 0);
    assert!(seeds < 10 || (totals.store_cuts > 0 && totals.splits > 0));
    assert!(totals.map_changes > 0 && totals.lost > 0 && totals.duplicated > 0);
    assert!(totals.namespace_ops > 0 && totals.reads > 0 && totals.reads_refused > 0);
    assert!(seeds < 10 || (totals.disk_faults > 0 && totals.quarantined > 0));
    assert!(seeds < 50 || (totals.power_losses > 0 && totals.torn_records > 0));
    assert!(seeds < 50 || totals.damaged_records > 0);
    assert!(seeds < 10 || (totals.push_maps_seeds > 0 && totals.push_maps_seeds < seeds as u32));
    assert!(writers.len() > 1, "the primary never changed");
    assert!(
        !heal_enabled() || (totals.heal_copies > 0 && totals.catch_ups > 0),
        "no heal copied anything"
    );
    assert!(
        !heal_enabled() || seeds < 10 || (totals.replacements > 0 && totals.handoffs > 0),
        "no brick was replaced, or no heal handed off dirt"
    );
    assert!(
        !heal_enabled()
            || !moves_enabled()
            || seeds < 10
            || (totals.moves_committed > 0 && totals.retired > 0),
        "no move of a PG between replica sets was committed"
    );
}

/// Steps a fault-free simulation for `ms`, the client writing throughout.
fn run_quietly(sim: &mut Sim, ms: u64) {
    for _ in 0..ms {
        sim.step(false, true);
    }
}

/// Every member frozen at once (a single-node cluster's process stopped, its VM paused, its
/// only core starved) is nobody's failure: when they resume, no map changes, also when a short
/// stall came shortly before. The same freeze of a primary alone still replaces it, and a
/// member whose every tick is late still detects a dead peer.
#[test]
fn a_freeze_of_every_member_at_once_changes_no_map() {
    let epochs = |sim: &Sim| sim.store.map(|m| m.epoch);
    for seed in 0..20 {
        let mut sim = Sim::new(seed, 3, 2);
        sim.faults = false;
        run_quietly(&mut sim, 2000);
        let (before, acks) = (epochs(&sim), sim.client.acks);
        // A short stall first (a loaded machine), then a long freeze soon after it.
        for (frozen_ms, then_ms) in [(400, 3000), (2500, 6000)] {
            let thaw_ms = sim.now_ms + frozen_ms;
            for node in &mut sim.nodes {
                node.frozen_until_ms = thaw_ms;
            }
            run_quietly(&mut sim, then_ms);
        }
        assert_eq!(
            epochs(&sim),
            before,
            "seed {seed}: a map changed after a freeze of every member ({:?})",
            sim.store
        );
        assert!(
            sim.client.acks > acks + 100,
            "seed {seed}: writes did not resume after the freeze ({} acks before, {} after)",
            acks,
            sim.client.acks
        );

        let mut sim = Sim::new(seed, 3, 2);
        sim.faults = false;
        run_quietly(&mut sim, 2000);
        let before = epochs(&sim);
        let primary = sim.store[DATA_PG as usize].primary().expect("a primary");
        sim.nodes[primary as usize].frozen_until_ms = sim.now_ms + 2500;
        run_quietly(&mut sim, 6000);
        assert!(
            epochs(&sim)[DATA_PG as usize] > before[DATA_PG as usize],
            "seed {seed}: primary {primary}, frozen alone for 2.5 s, was not replaced ({:?})",
            sim.store
        );
    }

    // A primary whose ticks are all late (each 300 ms after the last) while a member hangs:
    // once its pause budget is spent it still proposes the map without that member.
    let mut sim = Sim::new(3, 3, 2);
    sim.faults = false;
    run_quietly(&mut sim, 2000);
    let epoch = sim.store[DATA_PG as usize].epoch;
    let primary = sim.store[DATA_PG as usize].primary().expect("a primary");
    // Frozen, not crashed: no connection reset tells the primary; only silence does.
    let dead = (primary + 1) % 3;
    sim.nodes[dead as usize].frozen_until_ms = u64::MAX;
    // The budget (10 s) and failover_ms (1 s) with room to spare; without the budget's limit
    // the silence would grow by 5 ms a cycle and take a minute.
    let limit_ms = 15_000;
    let start_ms = sim.now_ms;
    while sim.store[DATA_PG as usize].epoch == epoch && sim.now_ms < start_ms + limit_ms {
        let thaw_ms = sim.now_ms + 300;
        sim.nodes[primary as usize].frozen_until_ms = thaw_ms;
        run_quietly(&mut sim, 305);
    }
    assert!(
        sim.store[DATA_PG as usize].epoch > epoch,
        "a primary late at every tick never removed hung member {dead} ({:?})",
        sim.store
    );
}

/// A member that crashed and comes back is healed by exactly what it missed: the heal copies
/// the registers written while it was away, not everything.
#[test]
fn a_heal_copies_what_was_missed_and_no_more() {
    let mut sim = Sim::new(11, 2, 1);
    sim.faults = false;
    run_quietly(&mut sim, 1000);
    let victim = (sim.store[DATA_PG as usize].primary().expect("a primary") + 1) % 2;
    sim.crash(victim, false);
    // Only register 3 is written while the victim is away.
    for _ in 0..3000 {
        sim.step(false, false);
        let gone = sim.store.iter().all(|m| m.up_to_date.count_ones() == 1);
        if sim.client.outstanding.is_empty() && gone {
            break;
        }
    }
    let op = ClientOp {
        slot: 3,
        kind: OpKind::Write {
            fid: REG_BASE + 3,
            value: 777_777,
            refuse: false,
        },
        seq: 777_777,
    };
    sim.client.ledger.issued(&op);
    sim.client.outstanding.insert(
        3,
        Outstanding {
            op,
            attempt: 0,
            sent_at_ms: sim.now_ms,
            sent_to: 0,
            sent_epoch: 0,
        },
    );
    sim.client.maps = sim.store;
    sim.client_send(3);
    for _ in 0..2000 {
        sim.step(false, false);
    }
    assert_eq!(
        sim.client
            .ledger
            .contents
            .get(&(REG_BASE + 3))
            .map(|c| c.acked),
        Some(777_777)
    );
    let before = sim.stats.heal_copies;
    sim.restart(victim);
    for _ in 0..8000 {
        sim.step(false, false);
    }
    assert!(
        sim.store.iter().all(|m| m.up_to_date == 0b11),
        "healed: {:?}",
        sim.store
    );
    assert_eq!(sim.nodes[0].disk, sim.nodes[1].disk);
    let copies = sim.stats.heal_copies - before;
    // The register written in the outage, plus what the restarted member reported in doubt
    // from its activity log (at most the files in flight when it crashed).
    assert!(
        (1..=1 + (KEYS + NS_KEYS) as u32).contains(&copies),
        "{copies} heal copies for one register written in the outage"
    );
}
