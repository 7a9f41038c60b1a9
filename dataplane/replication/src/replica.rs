//! One member's replication state for one placement group.
//!
//! Sans-IO: every input is a method call with the current time in milliseconds, every effect is
//! an [`Output`] pushed to the caller's vector. The caller owns the operations' payloads (keyed
//! by [`OpId`]), the disk, the sockets and the cluster store. The glommio dataplane drives it in
//! production; `tests/sim.rs` drives it under a seeded simulator that injects faults.
//!
//! The rules that keep replicas identical and acknowledged writes safe:
//! - Only the map's primary starts operations; every message carries the map epoch and a member
//!   refuses forwards of any other epoch (fencing).
//! - The primary holds a lock on each operation's range until every up-to-date member has
//!   applied it, so overlapping operations reach all members in the same order.
//! - An operation is acknowledged only when every up-to-date member of the current map has it.
//!   A member that does not answer, fails, or disagrees is removed by a new map (compare-and-set
//!   on the epoch) before the operation completes without it; the new map is what makes the
//!   member absent, and absent members record nothing until they are healed.
//! - Members only ever leave the up-to-date set here, and every map change is proposed by a
//!   member of the current up-to-date set, which adopts the new epoch at once. So a deposed
//!   primary can never again collect acknowledgements from all of its old set.

use crate::dirt::LogWrite;
use crate::lock::{LockKey, LockKind};
use crate::map::{Epoch, Member, PgMap, MEMBERS_MAX};
use brick_tuning as tuning;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Operation ids are assigned by the primary, increasing, unique per primary incarnation.
pub type OpId = u64;

/// What applying an operation on one member gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A deterministic refusal (an errno: the entry exists, is not empty...). Every member
    /// refuses alike, so the state stays identical.
    Refused(u32),
    /// The member could not apply it (I/O error, no space): the member is unhealthy.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpError {
    NotPrimary {
        epoch: Epoch,
        primary: Option<Member>,
    },
    BelowMinSize {
        up_to_date: u8,
        min_size: u8,
    },
    /// Too many operations in flight; retry shortly.
    Busy,
    Refused(u32),
    /// The primary's own disk failed; it steps down, retry on the next primary.
    Unavailable,
}

/// What `Replica::read_gate` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadGate {
    /// Answer from the local copy.
    Serve,
    /// Not yet: a write of the range is not acknowledged, the new primary is recovering, or
    /// the read lease lapsed (a heartbeat answer is late). Ask again shortly.
    Wait,
    /// Not the primary: the client goes to the one the map names.
    Refuse,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Forward {
        epoch: Epoch,
        op: OpId,
        lock: LockKey,
        /// Every op below this one is complete on all members: forget them.
        watermark: OpId,
        /// Members that do not get this op: every up-to-date member records it for them.
        absent: u8,
    },
    Ack {
        epoch: Epoch,
        op: OpId,
        outcome: Outcome,
    },
    /// The receiver is at another epoch (`epoch` is the receiver's).
    Nack { epoch: Epoch, op: OpId },
    Heartbeat {
        epoch: Epoch,
        watermark: OpId,
        /// The primary's clock when it sent this: the answer echoes it, and a member that
        /// answers in the primary's epoch will not propose the primary's removal before
        /// `failover_ms` after it received it (the primary's read lease).
        sent_ms: u64,
    },
    HeartbeatAck {
        epoch: Epoch,
        /// The heartbeat's `sent_ms`, or 0: this member grants no lease (it proposed a map
        /// that replaces the primary and has not seen the store's answer).
        echo_ms: u64,
        /// From a member that is not up to date: the ranges it may hold that the others do not
        /// (its activity log from before it left); its heal copies them too.
        in_doubt: Option<Vec<LockKey>>,
    },
    /// A new primary asks what its members applied that may not be everywhere.
    Query { epoch: Epoch },
    /// The ranges of forwards this member applied that were not yet known complete.
    InDoubt { epoch: Epoch, keys: Vec<LockKey> },
    /// A map the primary read from the cluster store, sent to every member as it installs
    /// it: the members learn a new epoch before its first forward reaches them, instead of
    /// refusing that forward until their own watch delivers the map.
    Map { map: PgMap },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Apply the operation `op` (submitted here) to the local copy, then `on_local_done`.
    ApplyLocal {
        op: OpId,
    },
    /// A new primary makes a range that may differ between members identical again: read
    /// `lock`'s range of the local copy as the payload of `op` (forwarded as a write), then
    /// `on_local_done`. `Reply` for such an op has no client.
    ReadForResync {
        op: OpId,
        lock: LockKey,
    },
    /// Apply the operation `op` forwarded by `from`, then `on_forward_applied`.
    ApplyForwarded {
        from: Member,
        op: OpId,
    },
    Send {
        to: Member,
        msg: Msg,
    },
    /// The operation is finished; the driver answers its client and drops its payload.
    Reply {
        op: OpId,
        result: Result<(), OpError>,
    },
    /// Members in `absent` miss the operation `op` started by member `origin` (this member's
    /// own op, or a forward): record what it changes durably before it is acknowledged, so
    /// that any up-to-date member can heal them. The op's body may be gone (an op in doubt
    /// when a member left); `lock` then bounds what it changed.
    RecordDirty {
        origin: Member,
        op: OpId,
        lock: LockKey,
        absent: u8,
    },
    /// This member is about to apply an op on `lock`'s part of its copy: persist the range in
    /// the activity log first (`Replica::activity_keys` says what the log must keep).
    RecordActivity {
        lock: LockKey,
    },
    /// Change the dirt log (`Healer`): performed in order with the other outputs.
    WriteDirtLog {
        write: LogWrite,
    },
    /// Compare-and-set the cluster store from epoch `map.epoch - 1` to `map`, then
    /// `on_proposal_result`.
    Propose {
        map: PgMap,
    },
    /// A peer knows a newer map: read it from the cluster store, then `on_map`.
    FetchMap,
}

#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// A forward not acknowledged within this leaves the write path.
    pub replica_timeout_ms: u64,
    pub heartbeat_ms: u64,
    /// A member not heard from within this is suspected (a silent primary is replaced).
    pub failover_ms: u64,
    /// Unacknowledged forwards are sent again this often (lost messages).
    pub resend_ms: u64,
    /// Operations in flight or remembered for de-duplication, per PG.
    pub window_ops_max: u64,
    /// A tick this much later than the previous one means this member itself did not run
    /// (its process was frozen or starved of CPU): the silence it then sees is its own.
    pub local_pause_ms: u64,
    /// Local pauses are excused from a budget that running time refills, up to this much: a
    /// member that is late at every tick drains it and still detects a peer that died (at
    /// most this much later, not never).
    pub pause_excuse_max_ms: u64,
    /// A primary sends every map it installs to the members (`Msg::Map`) before the first
    /// forward of the new epoch, so they need not wait for the store's watch (docs/replication.md).
    pub push_maps: bool,
    /// The primary's read lease ends this much before the earliest moment a member could
    /// propose to replace it (slack for the tick and for clocks that run at slightly
    /// different rates).
    pub read_lease_margin_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            replica_timeout_ms: tuning::REPLICA_TIMEOUT_MS,
            heartbeat_ms: tuning::REPL_HEARTBEAT_MS,
            failover_ms: tuning::FAILOVER_MS,
            resend_ms: tuning::REPL_RESEND_MS,
            window_ops_max: tuning::PG_WINDOW_OPS_MAX,
            local_pause_ms: tuning::LOCAL_PAUSE_MS,
            pause_excuse_max_ms: tuning::PAUSE_EXCUSE_MAX_MS,
            push_maps: PUSH_MAPS,
            read_lease_margin_ms: tuning::READ_LEASE_MARGIN_MS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpState {
    Waiting,
    Running,
}

#[derive(Debug)]
struct Pending {
    lock: LockKey,
    local_first: bool,
    state: OpState,
    local: Option<Outcome>,
    acks: [Option<Outcome>; MEMBERS_MAX as usize],
    forwarded_at_ms: u64,
    last_send_ms: u64,
    forwarded: bool,
    resync: bool,
    /// Members that get this op: the receivers when it was submitted, minus those that left
    /// since (a member that starts healing later gets only later ops).
    targets: u8,
    /// A heal copy: it changes nothing on the up-to-date members, so nothing is recorded.
    heal: bool,
}

/// A new primary's first job: learn which ranges may differ between members.
#[derive(Debug)]
struct Recovery {
    waiting: u8,
    keys: Vec<LockKey>,
    started_ms: u64,
    last_send_ms: u64,
}

use tuning::{IN_DOUBT_REPORT_KEYS_MAX, REPL_NACK_RESEND_MS as NACK_RESEND_MS};

/// How a member starts.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Op ids of this incarnation start here (distinct from any earlier incarnation's).
    pub op_base: OpId,
    /// This member lost its memory (process restart); it may have missed forwards, so it
    /// leaves the up-to-date set if anybody else is in it.
    pub restarted: bool,
    /// The activity log found at start: ranges this member applied that may not be on the
    /// others. Reported to the primary that heals it.
    pub activity: Vec<LockKey>,
}

/// One member of one PG.
pub struct Replica {
    pub pg: u32,
    me: Member,
    cfg: Config,
    map: PgMap,
    /// Set when this member must leave the up-to-date set (restarted, or its disk failed): it
    /// serves nothing until a map without it (or a refusal) arrives.
    retiring: bool,
    proposing: Option<PgMap>,
    /// This member proposed a map that names another primary (or none), or one whose answer
    /// never came: until its map reaches this epoch it neither serves reads as primary nor
    /// extends a primary's read lease, and after a lost answer it also applies no forward and
    /// starts no op of the old epoch (the proposal may have landed: the simulator's store cuts
    /// found copies diverging while a proposer went on in the epoch it had left).
    fence_epoch: Epoch,
    /// Per member: the `sent_ms` of the latest heartbeat it answered in this primary's epoch.
    /// Reads are served while every other up-to-date member's answer is younger than
    /// `failover_ms - read_lease_margin_ms` (`reads_leased`).
    lease_from_ms: [u64; MEMBERS_MAX as usize],
    /// While fenced, the map is fetched again from this time on (every `resend_ms`).
    fetch_at_ms: u64,
    // primary side
    next_op: OpId,
    pending: BTreeMap<OpId, Pending>,
    last_heard_ms: [u64; MEMBERS_MAX as usize],
    suspect: u8,
    suspect_since_ms: u64,
    last_heartbeat_ms: u64,
    last_tick_ms: u64,
    /// How much local pause can still be excused (see `Config::pause_excuse_max_ms`).
    pause_budget_ms: u64,
    // member side
    last_heard_primary_ms: u64,
    recovery: Option<Recovery>,
    /// Forwards seen, by (sender, op), with their range: outcome `None` while being applied.
    seen: HashMap<(Member, OpId), (LockKey, Option<Outcome>)>,
    seen_watermark: [OpId; MEMBERS_MAX as usize],
    /// From the activity log at start, kept until this member is up to date again.
    own_in_doubt: Vec<LockKey>,
    /// Members whose in-doubt ranges this primary has recorded (they report with every
    /// heartbeat answer while behind); a heal begins and ends only after that.
    reported: u8,
    /// The in-doubt keys of each member recorded this absence: a key reported again is not
    /// recorded again (copied ranges leave the dirt, and recording them again would bring them
    /// back), a new one is (a member may learn of more while it is away: `lost_data`).
    recorded: [BTreeSet<LockKey>; MEMBERS_MAX as usize],
}

impl Replica {
    pub fn new(
        pg: u32,
        me: Member,
        map: PgMap,
        cfg: Config,
        now_ms: u64,
        boot: Boot,
        out: &mut Vec<Output>,
    ) -> Replica {
        let Boot {
            op_base,
            restarted,
            activity,
        } = boot;
        assert!(map.is_valid(), "invalid map {map:?}");
        assert!(
            map.is_placed(me),
            "member {me} does not hold the PG: {map:?}"
        );
        let mut r = Replica {
            pg,
            me,
            cfg,
            map,
            retiring: false,
            proposing: None,
            fence_epoch: 0,
            lease_from_ms: [0; MEMBERS_MAX as usize],
            fetch_at_ms: 0,
            next_op: op_base.max(1),
            pending: BTreeMap::new(),
            last_heard_ms: [now_ms; MEMBERS_MAX as usize],
            suspect: 0,
            suspect_since_ms: now_ms,
            last_heartbeat_ms: 0,
            last_tick_ms: now_ms,
            pause_budget_ms: cfg.pause_excuse_max_ms,
            last_heard_primary_ms: now_ms,
            recovery: None,
            seen: HashMap::new(),
            seen_watermark: [0; MEMBERS_MAX as usize],
            own_in_doubt: if restarted { activity } else { Vec::new() },
            reported: 0,
            recorded: Default::default(),
        };
        let listed = map.is_healing(me) || (map.is_up_to_date(me) && map.up_to_date_count() > 1);
        if restarted && listed {
            r.retire(out);
        } else if restarted && map.is_up_to_date(me) {
            // The last up-to-date member lost its memory of the ops in flight when it died,
            // which the others may have missed: its activity log says which ranges.
            r.impose_own_in_doubt(out);
        }
        if map.is_up_to_date(me) {
            r.record_fresh(map.fresh, out);
        }
        r
    }

    /// This member is (or stays) the last up-to-date copy while ranges it applied may differ
    /// from the others' (its activity when it crashed, or ops abandoned when it was deposed):
    /// they are recorded as missed by every other member, whose heals copy them from here.
    fn impose_own_in_doubt(&mut self, out: &mut Vec<Output>) {
        let others = self.map.all() & !(1 << self.me);
        for &lock in self.own_in_doubt.iter().filter(|_| others != 0) {
            out.push(Output::RecordDirty {
                origin: self.me,
                op: 0,
                lock,
                absent: others,
            });
        }
        self.own_in_doubt.clear();
    }

    /// New bricks (`fresh`) missed everything: recorded as such for them, so that their heal
    /// is a full one. Recording it again (after a restart) only restarts that heal.
    fn record_fresh(&self, fresh: u8, out: &mut Vec<Output>) {
        let fresh = fresh & !(1 << self.me);
        if fresh != 0 {
            out.push(Output::RecordDirty {
                origin: self.me,
                op: 0,
                lock: LockKey::EVERYTHING,
                absent: fresh,
            });
        }
    }

    pub fn map(&self) -> &PgMap {
        &self.map
    }

    /// Whether the PG moved off this member (a committed move): the replica has nothing more
    /// to do, and its driver drops it and deletes the member's copy.
    pub fn retired(&self) -> bool {
        !self.map.is_placed(self.me)
    }

    /// The PG moved off this member: a map that no longer places it was committed, with every
    /// member of the new placement up to date, so nothing here is needed any more. Pending
    /// ops fail as at a change of primary (the client retries them on the new one, whose
    /// recovery settles what the old primary left in doubt).
    fn retire_for_good(&mut self, out: &mut Vec<Output>) {
        self.fail_all(
            OpError::NotPrimary {
                epoch: self.map.epoch,
                primary: self.map.primary(),
            },
            out,
        );
        self.recovery = None;
        self.retiring = false;
        self.proposing = None;
        self.suspect = 0;
    }

    pub fn me(&self) -> Member {
        self.me
    }

    /// Whether no namespace change this member applied (or that a catch-up made) can still be
    /// undone by a repair: none is in doubt (`activity_keys`). Files removed from the
    /// namespace are kept until then, so that a repair that brings one back restores its data.
    pub fn namespace_settled(&self) -> bool {
        !self
            .activity_keys()
            .iter()
            .any(|k| matches!(k.kind(), LockKind::Namespace | LockKind::Everything))
    }

    /// Whether this member is leaving the up-to-date set (it restarted, failed, or lost data):
    /// it serves nothing until a map without it arrives.
    pub fn is_leaving(&self) -> bool {
        self.retiring
    }

    /// Whether this member serves as primary right now (reads and writes go here).
    pub fn is_primary(&self) -> bool {
        !self.retiring && self.map.primary() == Some(self.me)
    }

    /// Whether this primary may answer a read from its copy at `now_ms`: no other member can
    /// have become primary yet. Every other up-to-date member answered a heartbeat sent less
    /// than `failover_ms - read_lease_margin_ms` ago, so none of them can have proposed this
    /// primary's removal (a member proposes it only after `failover_ms` of silence from
    /// it), and this primary proposed no map that replaces it. A primary cut from its
    /// members by a partition (still reachable by clients) therefore stops answering reads
    /// before the others may elect a new primary that accepts writes. The driver asks after
    /// reading the copy: data read before the lease ended was current when it was read.
    pub fn reads_leased(&self, now_ms: u64) -> bool {
        if !self.is_primary() || self.fenced() {
            return false;
        }
        let term_ms = self
            .cfg
            .failover_ms
            .saturating_sub(self.cfg.read_lease_margin_ms);
        members_of(self.map.up_to_date & !(1 << self.me))
            .all(|m| now_ms < self.lease_from_ms[m as usize].saturating_add(term_ms))
    }

    /// Whether a read of `lock`'s part of this primary's copy may be answered now.
    /// Reads see no write that is not yet acknowledged: one that overlaps an op applied (or
    /// being applied) here and not yet on every member waits for it, since a failover could
    /// still undo that op, and a reader that saw it would then see time go backwards. A new
    /// primary's reads wait for its recovery (its copy is what the in-doubt ranges become).
    pub fn read_gate(&self, now_ms: u64, lock: &LockKey) -> ReadGate {
        if !self.is_primary() {
            return ReadGate::Refuse;
        }
        let unsettled = self
            .pending
            .values()
            .any(|p| p.state == OpState::Running && !p.heal && !p.resync && p.lock.conflicts(lock));
        if unsettled || self.recovery.is_some() || !self.reads_leased(now_ms) {
            ReadGate::Wait
        } else {
            ReadGate::Serve
        }
    }

    /// A map this member proposed may have replaced the primary, or one whose answer never came
    /// may have changed the map: see `fence_epoch`.
    fn fenced(&self) -> bool {
        self.map.epoch < self.fence_epoch
    }

    /// Proposes `next` (compare-and-set from the current epoch).
    fn propose(&mut self, next: PgMap, out: &mut Vec<Output>) {
        if next.primary() != self.map.primary() {
            self.fence_epoch = self.fence_epoch.max(next.epoch);
        }
        self.proposing = Some(next);
        out.push(Output::Propose { map: next });
    }

    /// What the activity log must hold now: every range this member applied (or is applying)
    /// that is not known to be on every member. The driver rewrites the log with this.
    pub fn activity_keys(&self) -> Vec<LockKey> {
        let mut keys = self.in_doubt_keys();
        keys.extend(
            self.pending
                .values()
                .filter(|p| !p.heal && !p.resync && p.state == OpState::Running)
                .map(|p| p.lock),
        );
        keys.extend(self.own_in_doubt.iter().copied());
        keys.sort();
        keys.dedup();
        keys
    }

    /// Keeps the reports of the members in `keep` only.
    fn forget_reports(&mut self, keep: u8) {
        self.reported &= keep;
        for m in (0..MEMBERS_MAX).filter(|m| keep & (1 << m) == 0) {
            self.recorded[m as usize].clear();
        }
    }

    /// Parts of this member's copy no longer hold what was acknowledged there (a repair of the
    /// namespace recreated these files empty: their data lives in this PG). Like a member that
    /// crashed, it must be healed of them: up to date or healing, it leaves the PG and reports
    /// them when it is back (the last up-to-date copy stays, and what it holds becomes the
    /// others'); absent, it reports them with its next heartbeat answer.
    pub fn lost_data(&mut self, keys: &[LockKey], out: &mut Vec<Output>) {
        if keys.is_empty() {
            return;
        }
        for &lock in keys {
            // Persisted like an op's range: a crash before the heal must not forget them.
            out.push(Output::RecordActivity { lock });
        }
        self.own_in_doubt.extend_from_slice(keys);
        if self.receiving() {
            self.retire(out);
        }
    }

    /// What a member behind reports to the primary: its activity when it left (or at its
    /// restart), or "everything" when that is more than one message may carry.
    fn reported_keys(&self) -> Vec<LockKey> {
        let mut keys = self.own_in_doubt.clone();
        keys.sort();
        keys.dedup();
        if keys.len() > IN_DOUBT_REPORT_KEYS_MAX {
            vec![LockKey::EVERYTHING]
        } else {
            keys
        }
    }

    pub fn pending_ops(&self) -> usize {
        self.pending.len()
    }

    /// Whether `op` (started here) has not finished yet.
    pub fn has_op(&self, op: OpId) -> bool {
        self.pending.contains_key(&op)
    }

    /// The members an op in flight is forwarded to (`None` once it finished).
    pub fn op_targets(&self, op: OpId) -> Option<u8> {
        self.pending.get(&op).map(|p| p.targets)
    }

    fn serving(&self) -> bool {
        !self.retiring && self.map.is_up_to_date(self.me)
    }

    /// Up to date or being healed: takes operations forwarded by the primary.
    fn receiving(&self) -> bool {
        !self.retiring && self.map.receivers() & (1 << self.me) != 0
    }

    fn others(&self) -> u8 {
        self.map.receivers() & !(1 << self.me)
    }

    fn watermark(&self) -> OpId {
        self.pending.keys().next().copied().unwrap_or(self.next_op)
    }

    /// Starts a client operation on the primary. `local_first`: apply locally before
    /// forwarding (namespace operations, whose result decides what is forwarded).
    pub fn submit(
        &mut self,
        now_ms: u64,
        lock: LockKey,
        local_first: bool,
        out: &mut Vec<Output>,
    ) -> Result<OpId, OpError> {
        if !self.is_primary() {
            return Err(OpError::NotPrimary {
                epoch: self.map.epoch,
                primary: self.map.primary(),
            });
        }
        if !self.map.writable() {
            return Err(OpError::BelowMinSize {
                up_to_date: self.map.up_to_date_count(),
                min_size: self.map.min_size,
            });
        }
        let full = self.next_op - self.watermark() >= self.cfg.window_ops_max;
        if self.recovery.is_some() || self.fenced() || full {
            return Err(OpError::Busy);
        }
        let targets = self.others();
        Ok(self.start_op(now_ms, lock, local_first, (false, false), targets, out))
    }

    /// Starts a heal copy on the primary: the driver reads `lock`'s part of the local copy
    /// (`ReadForResync`) and it is forwarded to the healing members `targets` only. Client
    /// operations on an overlapping range wait for it, and it waits for them.
    pub fn submit_heal(
        &mut self,
        now_ms: u64,
        lock: LockKey,
        targets: u8,
        out: &mut Vec<Output>,
    ) -> Result<OpId, OpError> {
        let targets = targets & self.map.healing;
        if !self.is_primary() || targets == 0 {
            return Err(OpError::NotPrimary {
                epoch: self.map.epoch,
                primary: self.map.primary(),
            });
        }
        if self.recovery.is_some() || self.next_op - self.watermark() >= self.cfg.window_ops_max {
            return Err(OpError::Busy);
        }
        Ok(self.start_op(now_ms, lock, true, (true, true), targets, out))
    }

    /// Absent members that answered a heartbeat recently: they are back and can be healed.
    pub fn alive_absent(&self, now_ms: u64) -> u8 {
        (0..self.map.members)
            .filter(|&m| self.map.absent() & (1 << m) != 0)
            .filter(|&m| {
                now_ms.saturating_sub(self.last_heard_ms[m as usize]) <= self.cfg.failover_ms
            })
            .fold(0, |acc, m| acc | (1 << m))
    }

    /// The primary starts healing absent member `m`: it receives every operation from the
    /// next epoch on. Returns whether a map change was proposed.
    pub fn heal_begin(&mut self, m: Member, out: &mut Vec<Output>) -> bool {
        let unreported = self.reported & (1 << m) == 0;
        if !self.is_primary() || self.proposing.is_some() || self.recovery.is_some() || unreported {
            return false;
        }
        let Some(next) = self.map.with_healing(m) else {
            return false;
        };
        self.propose(next, out);
        true
    }

    /// The driver copied everything member `m` missed: it becomes up to date. Returns whether
    /// a map change was proposed.
    pub fn heal_finish(&mut self, m: Member, out: &mut Vec<Output>) -> bool {
        let busy = self
            .pending
            .values()
            .any(|p| p.heal && p.targets & (1 << m) != 0)
            || self.reported & (1 << m) == 0;
        if !self.is_primary() || self.proposing.is_some() || busy || self.recovery.is_some() {
            return false;
        }
        let Some(next) = self.map.with_healed(m) else {
            return false;
        };
        self.propose(next, out);
        true
    }

    fn start_op(
        &mut self,
        now_ms: u64,
        lock: LockKey,
        local_first: bool,
        (resync, heal): (bool, bool),
        targets: u8,
        out: &mut Vec<Output>,
    ) -> OpId {
        let op = self.next_op;
        self.next_op += 1;
        self.pending.insert(
            op,
            Pending {
                lock,
                local_first,
                state: OpState::Waiting,
                local: None,
                acks: [None; MEMBERS_MAX as usize],
                forwarded_at_ms: now_ms,
                last_send_ms: now_ms,
                forwarded: false,
                resync,
                targets,
                heal,
            },
        );
        self.try_start(now_ms, op, out);
        op
    }

    fn try_start(&mut self, now_ms: u64, op: OpId, out: &mut Vec<Output>) {
        let Some(p) = self.pending.get(&op) else {
            return;
        };
        if p.state != OpState::Waiting {
            return;
        }
        let lock = p.lock;
        let blocked = self
            .pending
            .range(..op)
            .any(|(_, earlier)| earlier.lock.conflicts(&lock));
        if blocked {
            return;
        }
        let me = self.me;
        let p = self.pending.get_mut(&op).expect("checked above");
        p.state = OpState::Running;
        let absent = self.map.all() & !p.targets & !(1 << me);
        if absent != 0 && !p.heal {
            out.push(Output::RecordDirty {
                origin: me,
                op,
                lock,
                absent,
            });
        }
        if p.resync {
            out.push(Output::ReadForResync { op, lock });
        } else {
            out.push(Output::RecordActivity { lock });
            out.push(Output::ApplyLocal { op });
        }
        if !p.local_first {
            self.forward(now_ms, op, out);
        }
    }

    fn forward(&mut self, now_ms: u64, op: OpId, out: &mut Vec<Output>) {
        let (epoch, watermark, me) = (self.map.epoch, self.watermark(), self.me);
        let all = self.map.all();
        let Some(p) = self.pending.get_mut(&op) else {
            return;
        };
        p.forwarded = true;
        p.forwarded_at_ms = now_ms;
        p.last_send_ms = now_ms;
        let absent = if p.heal {
            0
        } else {
            all & !p.targets & !(1 << me)
        };
        for m in members_of(p.targets) {
            if p.acks[m as usize].is_none() {
                out.push(Output::Send {
                    to: m,
                    msg: Msg::Forward {
                        epoch,
                        op,
                        lock: p.lock,
                        watermark,
                        absent,
                    },
                });
            }
        }
    }

    /// The local copy applied `op`.
    pub fn on_local_done(
        &mut self,
        now_ms: u64,
        op: OpId,
        outcome: Outcome,
        out: &mut Vec<Output>,
    ) {
        let Some(p) = self.pending.get_mut(&op) else {
            return; // the op was already answered (the map changed under it)
        };
        p.local = Some(outcome);
        match outcome {
            Outcome::Failed if self.map.up_to_date_count() > 1 => {
                self.retire(out);
                self.fail_all(OpError::Unavailable, out);
            }
            // The only copy: it cannot step down; this op fails, the next may succeed. If it
            // was forwarded (to healing members), it keeps its lock until they answered: one
            // that applied it disagrees and leaves, with the op recorded for its heal, and no
            // later op on the range can overtake it there.
            Outcome::Failed if p.forwarded => self.check_done(now_ms, op, out),
            Outcome::Failed => {
                self.finish(now_ms, op, Err(OpError::Unavailable), out);
            }
            Outcome::Refused(code) if p.local_first => {
                self.finish(now_ms, op, Err(OpError::Refused(code)), out);
            }
            Outcome::Ok if p.local_first && !p.forwarded => {
                self.forward(now_ms, op, out);
                self.check_done(now_ms, op, out);
            }
            _ => self.check_done(now_ms, op, out),
        }
    }

    /// This member's disk fails (a read or write failed with an I/O error). As after a failed
    /// write (`on_local_done`, `on_forward_applied`): a healing member leaves; an up-to-date
    /// one leaves when another is up to date, failing the ops it runs so that their clients
    /// retry at the next primary; the last up-to-date copy stays (what fails, fails). Returns
    /// whether it is leaving. Called again while it is still listed, it keeps trying.
    pub fn on_disk_failed(&mut self, out: &mut Vec<Output>) -> bool {
        let listed = self.map.receivers() & (1 << self.me) != 0;
        if !listed || self.is_last_copy() {
            return false;
        }
        let primary = self.is_primary();
        self.retire(out);
        if primary {
            self.fail_all(OpError::Unavailable, out);
        }
        true
    }

    /// Whether this member holds the only up-to-date copy of the PG.
    pub fn is_last_copy(&self) -> bool {
        self.map.is_last_copy(self.me)
    }

    /// Leaves the up-to-date set: proposes a map without this member. The last up-to-date
    /// member never leaves (it holds the only complete copy).
    fn retire(&mut self, out: &mut Vec<Output>) {
        if self.map.without(1 << self.me).is_none() {
            self.retiring = false;
            if self.map.is_up_to_date(self.me) {
                // The last up-to-date copy stays: what it holds is what the others get.
                self.impose_own_in_doubt(out);
            }
            return;
        }
        self.retiring = true;
        if let Some(next) = self.map.without(1 << self.me) {
            if self.proposing.is_none() {
                self.propose(next, out);
            }
        }
    }

    fn fail_all(&mut self, err: OpError, out: &mut Vec<Output>) {
        // Ops applied (or being applied) here that now never complete may be on this copy
        // only: they stay in its activity, so that a heal of this member undoes them.
        // (Running: its local apply was issued, and lands even if the op is abandoned.)
        for p in self.pending.values() {
            if p.state == OpState::Running && !p.heal && !p.resync {
                self.own_in_doubt.push(p.lock);
            }
        }
        for (op, p) in std::mem::take(&mut self.pending) {
            // An op that ran here may have reached the others too: its client must not take
            // "not the primary" for "not executed" (a retried create would find its own file).
            let ran = p.state == OpState::Running || p.local.is_some();
            let result = match err {
                OpError::NotPrimary { .. } if ran => Err(OpError::Unavailable),
                _ => Err(err),
            };
            out.push(Output::Reply { op, result });
        }
    }

    fn check_done(&mut self, now_ms: u64, op: OpId, out: &mut Vec<Output>) {
        let Some(p) = self.pending.get(&op) else {
            return;
        };
        if p.state != OpState::Running || !p.forwarded {
            return;
        }
        let Some(local) = p.local else { return };
        let mut disagree = 0u8;
        for m in members_of(p.targets & self.map.receivers()) {
            match p.acks[m as usize] {
                None => return, // still waiting for this member
                Some(o) if o != local => disagree |= 1 << m,
                Some(_) => {}
            }
        }
        if disagree != 0 {
            // This copy refused what an up-to-date member applied: it lacks what the others
            // have (a file its namespace does not have yet), so this member leaves, not them;
            // the client retries at the next primary, which has it.
            let applied_elsewhere = members_of(disagree & self.map.up_to_date)
                .any(|m| p.acks[m as usize] == Some(Outcome::Ok));
            if matches!(local, Outcome::Refused(_)) && applied_elsewhere && !p.heal && !p.resync {
                self.retire(out);
                self.finish(now_ms, op, Err(OpError::Unavailable), out);
                return;
            }
            // A member that failed or disagrees leaves before the op completes without it.
            self.suspect_members(now_ms, disagree);
            self.maybe_propose(now_ms, true, out);
            return;
        }
        // Heal copies are what brings the PG back to min_size: they never wait for it.
        let heal = p.heal;
        let result = if !self.map.writable() && !heal {
            Err(OpError::BelowMinSize {
                up_to_date: self.map.up_to_date_count(),
                min_size: self.map.min_size,
            })
        } else {
            match local {
                Outcome::Ok => Ok(()),
                Outcome::Refused(code) => Err(OpError::Refused(code)),
                Outcome::Failed => Err(OpError::Unavailable),
            }
        };
        self.finish(now_ms, op, result, out);
    }

    fn finish(
        &mut self,
        now_ms: u64,
        op: OpId,
        result: Result<(), OpError>,
        out: &mut Vec<Output>,
    ) {
        let Some(done) = self.pending.remove(&op) else {
            return;
        };
        out.push(Output::Reply { op, result });
        let unblocked: Vec<OpId> = self
            .pending
            .range(op..)
            .filter(|(_, p)| p.state == OpState::Waiting && p.lock.conflicts(&done.lock))
            .map(|(&id, _)| id)
            .collect();
        for id in unblocked {
            self.try_start(now_ms, id, out);
        }
    }

    fn suspect_members(&mut self, now_ms: u64, members: u8) {
        let members = members & self.others();
        if members & !self.suspect != 0 && self.suspect == 0 {
            self.suspect_since_ms = now_ms;
        }
        self.suspect |= members;
    }

    /// Proposes removing the suspected members. A removal that leaves the PG below min_size
    /// waits longer: the silent side may be this primary, and the others should get the
    /// chance to replace it first (their map keeps the PG writable).
    fn maybe_propose(&mut self, now_ms: u64, definite: bool, out: &mut Vec<Output>) {
        if self.suspect == 0 || self.proposing.is_some() || !self.serving() {
            return;
        }
        let Some(next) = self.map.without(self.suspect) else {
            return;
        };
        let grace_ms = 2 * self.cfg.failover_ms;
        if !next.writable() && !definite && now_ms < self.suspect_since_ms + grace_ms {
            return;
        }
        self.propose(next, out);
    }

    /// A message from member `from`.
    pub fn on_message(&mut self, now_ms: u64, from: Member, msg: Msg, out: &mut Vec<Output>) {
        if !self.map.is_placed(from) || from == self.me || self.retired() {
            return;
        }
        match msg {
            Msg::Forward {
                epoch,
                op,
                lock,
                watermark,
                absent,
            } => self.on_forward(now_ms, from, epoch, op, (lock, absent), watermark, out),
            Msg::Ack { epoch, op, outcome } => {
                self.heard(now_ms, from, epoch, out);
                if let Some(p) = self.pending.get_mut(&op) {
                    if p.state == OpState::Running {
                        p.acks[from as usize] = Some(outcome);
                        self.check_done(now_ms, op, out);
                    }
                }
            }
            Msg::Nack { epoch, op } => {
                self.heard(now_ms, from, epoch, out);
                // The member is between epochs (a map change just happened): send again soon
                // instead of after a full resend interval, so the change costs clients
                // milliseconds, not `resend_ms`.
                let soon = now_ms.saturating_sub(self.cfg.resend_ms.saturating_sub(NACK_RESEND_MS));
                if let Some(p) = self.pending.get_mut(&op) {
                    if p.state == OpState::Running && p.acks[from as usize].is_none() {
                        p.last_send_ms = p.last_send_ms.min(soon);
                    }
                }
            }
            Msg::HeartbeatAck {
                epoch,
                in_doubt,
                echo_ms,
            } => {
                self.heard(now_ms, from, epoch, out);
                if epoch == self.map.epoch && echo_ms > 0 {
                    let from_ms = &mut self.lease_from_ms[from as usize];
                    *from_ms = (*from_ms).max(echo_ms);
                }
                // Each key recorded once per primary and absence: copied ranges leave the
                // dirt, and a report recorded again would bring them back.
                let behind = !self.map.is_up_to_date(from);
                if let (Some(keys), true, true) = (in_doubt, behind, self.is_primary()) {
                    let recorded = &mut self.recorded[from as usize];
                    for lock in keys {
                        if recorded.len() < IN_DOUBT_REPORT_KEYS_MAX && recorded.insert(lock) {
                            out.push(Output::RecordDirty {
                                origin: from,
                                op: 0,
                                lock,
                                absent: 1 << from,
                            });
                        }
                    }
                    self.reported |= 1 << from;
                }
            }
            Msg::Heartbeat {
                epoch,
                watermark,
                sent_ms,
            } => {
                if epoch > self.map.epoch {
                    out.push(Output::FetchMap);
                }
                let from_primary = epoch == self.map.epoch && self.map.primary() == Some(from);
                if from_primary {
                    self.last_heard_primary_ms = now_ms;
                    self.forget_below(from, watermark);
                }
                let behind = !self.map.is_up_to_date(self.me);
                let in_doubt = behind.then(|| self.reported_keys());
                // The answer promises not to replace the primary for `failover_ms` from now,
                // which holds only while no such proposal of ours is in flight.
                let echo_ms = if from_primary && !self.fenced() {
                    sent_ms.max(1)
                } else {
                    0
                };
                out.push(Output::Send {
                    to: from,
                    msg: Msg::HeartbeatAck {
                        epoch: self.map.epoch,
                        in_doubt,
                        echo_ms,
                    },
                });
            }
            Msg::Map { map } => self.on_map(now_ms, map, out),
            Msg::Query { epoch } => {
                if epoch > self.map.epoch {
                    out.push(Output::FetchMap);
                }
                let refused = epoch != self.map.epoch
                    || self.map.primary() != Some(from)
                    || !self.receiving()
                    || self.fenced();
                if refused {
                    out.push(Output::Send {
                        to: from,
                        msg: Msg::Nack {
                            epoch: self.map.epoch,
                            op: 0,
                        },
                    });
                    return;
                }
                self.last_heard_primary_ms = now_ms;
                if self.applying() {
                    // Forwards of the old primary are still being applied here: answer once
                    // they are done (the primary asks again), so that nothing of the old epoch
                    // lands after the new primary's first write.
                    return;
                }
                out.push(Output::Send {
                    to: from,
                    msg: Msg::InDoubt {
                        epoch,
                        keys: self.in_doubt_keys(),
                    },
                });
            }
            Msg::InDoubt { epoch, keys } => {
                self.heard(now_ms, from, epoch, out);
                if epoch != self.map.epoch {
                    return;
                }
                if let Some(rec) = self.recovery.as_mut() {
                    if rec.waiting & (1 << from) != 0 {
                        rec.waiting &= !(1 << from);
                        rec.keys.extend(keys);
                    }
                }
                self.maybe_finish_recovery(now_ms, out);
            }
        }
    }

    fn forget_below(&mut self, from: Member, watermark: OpId) {
        let wm = &mut self.seen_watermark[from as usize];
        if watermark > *wm {
            *wm = watermark;
            self.seen.retain(|&(f, o), _| f != from || o >= watermark);
        }
    }

    /// Whether a forwarded op is still being applied here.
    fn applying(&self) -> bool {
        self.seen.values().any(|(_, outcome)| outcome.is_none())
    }

    /// Ranges of forwards seen here that are not known to be on every member.
    fn in_doubt_keys(&self) -> Vec<LockKey> {
        let mut keys: Vec<LockKey> = self.seen.values().map(|(k, _)| *k).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Becoming primary in a new epoch: ask every member for its in-doubt ranges first.
    fn begin_recovery(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let mut waiting = 0u8;
        for m in members_of(self.others()) {
            waiting |= 1 << m;
            out.push(Output::Send {
                to: m,
                msg: Msg::Query {
                    epoch: self.map.epoch,
                },
            });
        }
        self.recovery = Some(Recovery {
            waiting,
            keys: self.in_doubt_keys(),
            started_ms: now_ms,
            last_send_ms: now_ms,
        });
        self.maybe_finish_recovery(now_ms, out);
    }

    /// Once every member answered (or left), every in-doubt range is copied from this
    /// member to all others, before any client op (the ops queue behind them by their locks).
    fn maybe_finish_recovery(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let Some(rec) = self.recovery.as_ref() else {
            return;
        };
        if rec.waiting & self.map.receivers() != 0 || self.applying() {
            return;
        }
        let mut keys = self.recovery.take().map(|r| r.keys).unwrap_or_default();
        keys.sort();
        keys.dedup();
        let targets = self.others();
        // An in-doubt catch-up is not resynced: it is started again below for the members
        // still healing, and changed nothing on the others.
        for lock in keys.into_iter().filter(|k| *k != LockKey::EVERYTHING) {
            self.start_op(now_ms, lock, true, (true, false), targets, out);
        }
        // Members being healed get the heal's namespace catch-up again before anything else:
        // the previous primary may have died in the middle of it.
        self.start_catch_up(now_ms, self.map.healing, out);
    }

    /// The first operation a healing member gets: the PG's namespace catch-up (the driver
    /// reads what to send for `LockKey::EVERYTHING`). Every later operation waits for it, so
    /// nothing reaches the member before the entries it refers to exist there.
    fn start_catch_up(&mut self, now_ms: u64, healing: u8, out: &mut Vec<Output>) {
        if healing != 0 {
            self.start_op(
                now_ms,
                LockKey::EVERYTHING,
                true,
                (true, true),
                healing,
                out,
            );
        }
    }

    fn heard(&mut self, now_ms: u64, from: Member, epoch: Epoch, out: &mut Vec<Output>) {
        self.last_heard_ms[from as usize] = now_ms;
        if epoch > self.map.epoch {
            out.push(Output::FetchMap);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_forward(
        &mut self,
        now_ms: u64,
        from: Member,
        epoch: Epoch,
        op: OpId,
        (lock, absent): (LockKey, u8),
        watermark: OpId,
        out: &mut Vec<Output>,
    ) {
        let refused = epoch != self.map.epoch
            || !self.receiving()
            || self.map.primary() != Some(from)
            || self.fenced();
        if refused {
            if epoch > self.map.epoch || self.fenced() {
                out.push(Output::FetchMap);
            }
            out.push(Output::Send {
                to: from,
                msg: Msg::Nack {
                    epoch: self.map.epoch,
                    op,
                },
            });
            return;
        }
        self.last_heard_primary_ms = now_ms;
        self.forget_below(from, watermark);
        if op < self.seen_watermark[from as usize] {
            return; // a late duplicate of an op every member has
        }
        match self.seen.get(&(from, op)) {
            Some((_, Some(outcome))) => out.push(Output::Send {
                to: from,
                msg: Msg::Ack {
                    epoch,
                    op,
                    outcome: *outcome,
                },
            }),
            Some((_, None)) => {} // being applied; its ack follows
            None => {
                if self.seen.len() as u64 >= self.cfg.window_ops_max {
                    // The primary bounds its window, so this is a peer breaking the protocol:
                    // refuse rather than grow without limit.
                    out.push(Output::Send {
                        to: from,
                        msg: Msg::Ack {
                            epoch,
                            op,
                            outcome: Outcome::Failed,
                        },
                    });
                    return;
                }
                self.seen.insert((from, op), (lock, None));
                // A healing member records too: once healed it may be the heal source of the
                // members still away, and it must know what they missed meanwhile.
                let absent = absent & self.map.all() & !(1 << self.me);
                if absent != 0 && self.receiving() {
                    out.push(Output::RecordDirty {
                        origin: from,
                        op,
                        lock,
                        absent,
                    });
                }
                out.push(Output::RecordActivity { lock });
                out.push(Output::ApplyForwarded { from, op });
            }
        }
    }

    /// A forwarded op finished applying on this member.
    pub fn on_forward_applied(
        &mut self,
        now_ms: u64,
        from: Member,
        op: OpId,
        outcome: Outcome,
        out: &mut Vec<Output>,
    ) {
        if let Some((_, slot)) = self.seen.get_mut(&(from, op)) {
            *slot = Some(outcome);
        }
        if outcome == Outcome::Failed {
            self.retire(out);
        }
        if self.recovery.is_some() {
            self.maybe_finish_recovery(now_ms, out);
        }
        out.push(Output::Send {
            to: from,
            msg: Msg::Ack {
                epoch: self.map.epoch,
                op,
                outcome,
            },
        });
    }

    /// Time passes: heartbeats, resends, timeouts, failover.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        if self.retired() {
            return;
        }
        let gap_ms = now_ms.saturating_sub(self.last_tick_ms);
        self.last_tick_ms = now_ms;
        if gap_ms > self.cfg.local_pause_ms {
            self.excuse_local_pause(now_ms, gap_ms);
        } else {
            self.pause_budget_ms =
                (self.pause_budget_ms + gap_ms).min(self.cfg.pause_excuse_max_ms);
        }
        if self.fenced() && now_ms >= self.fetch_at_ms {
            self.fetch_at_ms = now_ms + self.cfg.resend_ms;
            out.push(Output::FetchMap);
        }
        if self.is_primary() {
            self.tick_primary(now_ms, out);
        } else if self.serving() {
            let silent_ms = now_ms.saturating_sub(self.last_heard_primary_ms);
            if silent_ms > self.cfg.failover_ms {
                if let Some(p) = self.map.primary() {
                    let since = self.last_heard_primary_ms + self.cfg.failover_ms;
                    if self.suspect & (1 << p) == 0 {
                        self.suspect = 1 << p;
                        self.suspect_since_ms = since;
                    }
                    self.maybe_propose(now_ms, false, out);
                }
            }
        }
    }

    /// This member did not run for `gap_ms` (its ticks stopped): peers' messages from that
    /// time still wait in its sockets, so the pause, as far as the budget covers it, does not
    /// count as their silence. Without this, every PG of a process frozen for longer than
    /// `failover_ms` changes its map on resume although nobody else failed (Cassandra's
    /// failure detector ignores its own JVM's pauses the same way).
    fn excuse_local_pause(&mut self, now_ms: u64, gap_ms: u64) {
        let pause_ms = gap_ms.min(self.pause_budget_ms);
        self.pause_budget_ms -= pause_ms;
        let later = |t: &mut u64| *t = t.saturating_add(pause_ms).min(now_ms);
        self.last_heard_ms.iter_mut().for_each(later);
        later(&mut self.last_heard_primary_ms);
        for p in self.pending.values_mut() {
            later(&mut p.forwarded_at_ms);
        }
        if let Some(rec) = self.recovery.as_mut() {
            later(&mut rec.started_ms);
        }
    }

    fn tick_primary(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let others: Vec<Member> = members_of(self.others()).collect();
        if now_ms >= self.last_heartbeat_ms + self.cfg.heartbeat_ms {
            self.last_heartbeat_ms = now_ms;
            let watermark = self.watermark();
            // Absent members get heartbeats too: their answer says they are back to be healed.
            for m in members_of(self.map.all() & !(1 << self.me)) {
                out.push(Output::Send {
                    to: m,
                    msg: Msg::Heartbeat {
                        epoch: self.map.epoch,
                        watermark,
                        sent_ms: now_ms,
                    },
                });
            }
        }
        if let Some(rec) = self.recovery.as_mut() {
            let waiting = rec.waiting & self.map.receivers();
            if now_ms.saturating_sub(rec.started_ms) > self.cfg.replica_timeout_ms {
                let since = rec.started_ms;
                self.suspect_members(since, waiting);
            } else if now_ms.saturating_sub(rec.last_send_ms) >= self.cfg.resend_ms {
                rec.last_send_ms = now_ms;
                for m in (0..self.map.members).filter(|m| waiting & (1 << m) != 0) {
                    out.push(Output::Send {
                        to: m,
                        msg: Msg::Query {
                            epoch: self.map.epoch,
                        },
                    });
                }
            }
        }
        let mut silent = 0u8;
        for &m in &others {
            if now_ms.saturating_sub(self.last_heard_ms[m as usize]) > self.cfg.failover_ms {
                silent |= 1 << m;
            }
        }
        let (epoch, watermark) = (self.map.epoch, self.watermark());
        for (&op, p) in self.pending.iter_mut() {
            if p.state != OpState::Running || !p.forwarded {
                continue;
            }
            let overdue = now_ms.saturating_sub(p.forwarded_at_ms) > self.cfg.replica_timeout_ms;
            let resend = now_ms.saturating_sub(p.last_send_ms) >= self.cfg.resend_ms;
            let lock = p.lock;
            let all = self.map.all();
            let absent = if p.heal {
                0
            } else {
                all & !p.targets & !(1 << self.me)
            };
            for m in members_of(p.targets & self.map.receivers()) {
                if p.acks[m as usize].is_some() {
                    continue;
                }
                if overdue {
                    silent |= 1 << m;
                } else if resend {
                    out.push(Output::Send {
                        to: m,
                        msg: Msg::Forward {
                            epoch,
                            op,
                            lock,
                            watermark,
                            absent,
                        },
                    });
                }
            }
            if resend {
                p.last_send_ms = now_ms;
            }
        }
        if silent != 0 {
            self.suspect_members(now_ms, silent);
        }
        self.maybe_propose(now_ms, false, out);
    }

    /// The result of a `Propose`: `Ok(map)` if it was installed, `Err(current)` with the map
    /// that is installed instead, or `Err(None)` if the store could not be reached.
    pub fn on_proposal_result(
        &mut self,
        now_ms: u64,
        result: Result<PgMap, Option<PgMap>>,
        out: &mut Vec<Output>,
    ) {
        let proposed = self.proposing.take();
        match result {
            Ok(map) | Err(Some(map)) => self.on_map(now_ms, map, out),
            Err(None) => {
                // No answer: the map may have changed anyway. Until this member knows, it takes
                // no part in the old epoch (it applies no forward and starts no op), since the
                // others may already act on the new one (`fenced`).
                if let Some(p) = proposed {
                    self.fence_epoch = self.fence_epoch.max(p.epoch);
                    out.push(Output::FetchMap);
                }
                if self.retiring {
                    self.retire(out); // keep trying to leave
                }
            }
        }
    }

    /// Members that stopped receiving operations in the new map may have missed every op not
    /// yet known complete: an up-to-date member records them all for those members.
    fn record_leavers(&mut self, old: PgMap, out: &mut Vec<Output>) {
        let me = self.me;
        let left = old.receivers() & !self.map.receivers() & !(1 << me);
        // Retiring or not: a member still listed may end up the last copy and the source of
        // the leavers' heal (a primary that was leaving when its lost proposal turned out to
        // have removed the others: the simulator's store cuts found it).
        if left == 0 || self.map.receivers() & (1 << me) == 0 {
            return;
        }
        for (&op, p) in &self.pending {
            if p.state == OpState::Running && !p.heal && p.targets & left != 0 {
                out.push(Output::RecordDirty {
                    origin: me,
                    op,
                    lock: p.lock,
                    absent: left,
                });
            }
        }
        // A catch-up changes nothing but healing members: nobody can have missed it.
        let seen = self
            .seen
            .iter()
            .filter(|(_, (lock, _))| *lock != LockKey::EVERYTHING);
        for (&(origin, op), &(lock, _)) in seen {
            out.push(Output::RecordDirty {
                origin,
                op,
                lock,
                absent: left,
            });
        }
    }

    /// A map read from the cluster store (watch, fetch or proposal result).
    pub fn on_map(&mut self, now_ms: u64, map: PgMap, out: &mut Vec<Output>) {
        if map.epoch <= self.map.epoch || !map.is_valid() || map.members < self.map.members {
            return;
        }
        if !map.is_placed(self.me) {
            self.map = map;
            self.retire_for_good(out);
            return;
        }
        let was_primary = self.is_primary();
        let old = self.map;
        self.map = map;
        self.suspect &= map.receivers();
        self.record_leavers(old, out);
        // Retiring or not: a listed member may still end up the last copy and the source.
        if map.is_up_to_date(self.me) {
            // A fresh member that stops receiving may come back as yet another empty brick
            // (replaced again): what its heal copied so far no longer counts.
            let left_fresh = old.receivers() & !map.receivers() & map.fresh;
            let was_serving = old.is_up_to_date(self.me);
            let newly = if was_serving {
                map.fresh & !old.fresh
            } else {
                map.fresh
            };
            self.record_fresh(newly | left_fresh, out);
        }
        let me_bit = 1 << self.me;
        if old.receivers() & me_bit != 0 && map.receivers() & me_bit == 0 {
            // Leaving: what this member applied and is not known to be everywhere is what it
            // reports when it comes back (forwards it gets while healing are not in doubt).
            let keys = self.activity_keys();
            self.own_in_doubt = keys;
        }
        // A heal copy whose target left did not land: it fails (its dirt stays recorded).
        let lost_heals: Vec<OpId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.heal && p.targets & !map.receivers() != 0)
            .map(|(&id, _)| id)
            .collect();
        for p in self.pending.values_mut() {
            p.targets &= map.receivers();
        }
        for op in lost_heals {
            self.finish(now_ms, op, Err(OpError::Unavailable), out);
        }
        if map.receivers() & (1 << self.me) == 0 {
            self.retiring = false; // done: absent until healed
        } else if self.retiring {
            self.proposing = None;
            self.retire(out); // still listed: propose again against the new epoch
        }
        if map.is_up_to_date(self.me) && !old.is_up_to_date(self.me) {
            // Healed: the primary copied them. (A restarted member still listed up to date
            // keeps them: it reports them once its retirement takes it out of the set.)
            self.own_in_doubt.clear();
        }
        // Up to date: nothing to report; left again: a new report (a new absence).
        self.forget_reports(!map.up_to_date & !(old.receivers() & !map.receivers()));
        if self.is_primary() {
            if self.cfg.push_maps {
                // Before any forward of the new epoch (links deliver in order).
                for m in members_of(map.all() & !me_bit) {
                    out.push(Output::Send {
                        to: m,
                        msg: Msg::Map { map },
                    });
                }
            }
            if !was_primary {
                self.forget_reports(0);
                self.lease_from_ms = [0; MEMBERS_MAX as usize];
                self.last_heard_ms = [now_ms; MEMBERS_MAX as usize];
                self.last_heartbeat_ms = 0;
                self.begin_recovery(now_ms, out);
            } else {
                self.maybe_finish_recovery(now_ms, out);
                let joined = map.healing & !old.healing;
                if self.recovery.is_none() {
                    self.start_catch_up(now_ms, joined, out);
                }
            }
            // Ops in flight continue in the new epoch: members that left are no longer
            // waited for, the others get the forward again with the new epoch.
            let running: Vec<OpId> = self
                .pending
                .iter()
                .filter(|(_, p)| p.state == OpState::Running && p.forwarded)
                .map(|(&id, _)| id)
                .collect();
            for op in running {
                self.forward(now_ms, op, out);
                self.check_done(now_ms, op, out);
            }
            self.tick_primary(now_ms, out);
        } else {
            // Heal copies and resyncs only read here: they cannot have made this copy differ.
            // A running op's local apply was issued (a namespace op's too, though it has not
            // answered yet): it lands whatever happens to the op.
            let applied_here = self.pending.values().any(|p| {
                !p.heal && !p.resync && (p.local.is_some() || p.state == OpState::Running)
            });
            self.fail_all(
                OpError::NotPrimary {
                    epoch: map.epoch,
                    primary: map.primary(),
                },
                out,
            );
            if applied_here && self.serving() {
                // Ops applied here may be missing elsewhere: this copy may differ from the
                // others, so it must not stay listed as identical.
                self.retire(out);
            }
            self.recovery = None;
            self.last_heard_primary_ms = now_ms;
            self.suspect = 0;
        }
    }
}

/// Whether a primary pushes each map it installs to the members (`Msg::Map`): members then
/// take a new epoch with its first forward instead of Nacking until their watch delivers it.
/// Members accept a pushed map either way (it was read from the store).
const PUSH_MAPS: bool = true;

/// The members in a bit mask, in member order.
fn members_of(mask: u8) -> impl Iterator<Item = Member> {
    (0..MEMBERS_MAX).filter(move |m| mask & (1 << m) != 0)
}
