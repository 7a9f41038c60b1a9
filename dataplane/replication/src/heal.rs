//! The heal of one PG on one member (design decisions 8 and 17), as a sans-IO state machine
//! beside the `Replica` it drives: it keeps the dirt this member recorded for the others,
//! and, while this member is the PG's primary, brings back members that answer again.
//!
//! - A member that answers the primary's heartbeats again joins the PG's `healing` set (a new
//!   epoch, `Replica::heal_begin`): from then on it receives every new operation, so no new
//!   dirt accumulates. Data PGs wait until the member is up to date in PG 0, which holds the
//!   namespace (the driver says which members are: `HealEnv::namespace_healed`).
//! - Its first operation is the namespace catch-up (`LockKey::EVERYTHING`, so nothing else runs
//!   meanwhile), which the replica starts itself: the directories it missed changes in,
//!   listed from this copy (`ResyncRead::CatchUp`), which the member makes its own match.
//! - Then each recorded attribute change and byte range is copied as a heal op
//!   (`Replica::submit_heal`): read here under its range lock, forwarded to the healing member
//!   only. A client write to that range waits for that one copy; writes elsewhere do not.
//! - Before it counts as up to date the member gets this member's dirt of the others still
//!   away (a hand-off), since it may become their heal source; then `Replica::heal_finish`.
//!   Every member forgets its dirt for a member that is up to date again.
//!
//! At most `window` copies run per healing member; the window halves while client latency on
//! the PG rises (adaptive), or copies are paced to `HealEnv::rate_bytes_s` when one is set.
//!
//! Inputs: `periodic` (every `HEAL_TICK_MS`), `pump` (every replica tick, and after each
//! `on_reply`), `on_reply` (a heal op finished), `record` (the replica's `RecordDirty`, as dirt
//! items), `resync_read` (what to read for a heal op's `ReadForResync`), `apply_handoff` (on
//! the member being healed). Outputs: the replica's (`submit_heal`, `heal_begin`,
//! `heal_finish` push into the same vector) and `Output::WriteDirtLog`.

use crate::body::{decode_handoff, handoff_payload};
use crate::dirt::{Dirt, DirtState, FileId, LogWrite, MemberDirt};
use crate::lock::{LockKey, LockKind};
use crate::map::{Member, MEMBERS_MAX};
use crate::replica::{OpError, OpId, Output, Replica};
use brick_tuning as tuning;
use std::collections::{BTreeMap, BTreeSet};

/// What the healer reads from this member's own copy, synchronously (both are metadata
/// lookups the dataplane makes on its core).
pub trait LocalCopy {
    /// Every file id of PG `pg` on this member's brick (a full heal copies each whole).
    fn ids_in_pg(&self, pg: u32) -> Vec<FileId>;
    /// A file's size; `None` if it is gone.
    fn file_size(&self, fid: FileId) -> Option<u64>;
}

#[derive(Debug, Clone, Copy)]
pub struct HealConfig {
    pub chunk_bytes: u64,
    pub window_max: usize,
    pub retry_ms: u64,
    pub failed_copy_pause_ms: u64,
    pub suffer_pause_ms: u64,
    pub latency_fast_weight: f64,
    pub latency_slow_weight: f64,
    pub suffer_ratio: f64,
    pub report_files_max: usize,
}

impl Default for HealConfig {
    fn default() -> HealConfig {
        HealConfig {
            chunk_bytes: tuning::HEAL_CHUNK_BYTES,
            window_max: tuning::HEAL_WINDOW_MAX,
            retry_ms: tuning::HEAL_RETRY_MS,
            failed_copy_pause_ms: tuning::HEAL_FAILED_COPY_PAUSE_MS,
            suffer_pause_ms: tuning::HEAL_SUFFER_PAUSE_MS,
            latency_fast_weight: tuning::HEAL_LATENCY_FAST_WEIGHT,
            latency_slow_weight: tuning::HEAL_LATENCY_SLOW_WEIGHT,
            suffer_ratio: tuning::HEAL_SUFFER_RATIO,
            report_files_max: tuning::HEAL_REPORT_FILES_MAX,
        }
    }
}

/// What the driver knows beyond this PG.
#[derive(Debug, Clone, Copy, Default)]
pub struct HealEnv {
    /// Members up to date in PG 0 (the namespace), as the cluster store says.
    pub namespace_healed: u8,
    /// The volume's `heal.rate` in bytes per second; 0: adaptive.
    pub rate_bytes_s: u64,
}

/// What one heal op copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    CatchUp { dirs: Vec<FileId>, tree: bool },
    Handoff,
    Attr(FileId),
    Range { fid: FileId, start: u64, end: u64 },
}

impl Work {
    fn lock(&self) -> LockKey {
        match self {
            Work::CatchUp { .. } => LockKey::EVERYTHING,
            Work::Handoff => LockKey::HANDOFF,
            Work::Attr(fid) => LockKey::whole_file(*fid),
            Work::Range { fid, start, end } => LockKey::range(*fid, *start, end - start),
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Work::Range { start, end, .. } => end - start,
            _ => tuning::DIRT_BLOCK_BYTES,
        }
    }
}

/// What the driver reads for a `ReadForResync` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResyncRead {
    /// A heal's namespace catch-up, or a new primary's resync of a namespace change in doubt:
    /// list these directories (every directory if `tree`), parents first, into a
    /// `CatchUpWriter` body. If they cannot be read, say why
    /// (`on_catch_up_unreadable`) and send a no-op: the dirt stays for another try.
    CatchUp { dirs: Vec<FileId>, tree: bool },
    /// A dirt hand-off: this is the body's payload (`BodyOp::Handoff`).
    Handoff { payload: Vec<u8> },
    /// The lock's bytes (a WRITE) or, for a whole file, its attributes (a SETATTR).
    Range,
}

#[derive(Debug)]
struct Plan {
    targets: u8,
    work: Work,
    /// The catch-up could not be read: its dirt stays.
    failed: Option<String>,
    /// Submitted by this healer's copy window (not the replica's own catch-up).
    windowed: bool,
}

#[derive(Debug, Clone, Default)]
struct TargetStats {
    bytes_copied: u64,
    started_ms: Option<u64>,
    error: Option<String>,
    copied_by_file: BTreeMap<FileId, u64>,
}

#[derive(Debug, Default)]
struct Target {
    /// Copies are being planned for this member (it is healing and this member is primary).
    running: bool,
    window: usize,
    /// Windowed copies submitted and not finished.
    copies: usize,
    /// Bytes of range copies taken out of the dirt and not finished.
    in_flight_bytes: u64,
    paced_until_ms: u64,
    resume_at_ms: u64,
    began_ms: Option<u64>,
    handed_off: bool,
    stats: TargetStats,
}

enum Next {
    Stop,
    Wait,
    /// The dirt was reshaped: ask again at once.
    Retry,
    Finish,
    Copy(Work),
}

/// A PG's heal progress, as its primary sees it (`brick heal status`).
#[derive(Debug, Clone, PartialEq)]
pub struct HealProgress {
    pub epoch: u64,
    pub source_member: Member,
    pub targets: Vec<TargetProgress>,
    /// Bytes this member's heals of the PG copied since it started.
    pub copied_total_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetProgress {
    pub member: Member,
    /// Healing (false: absent, not back yet).
    pub healing: bool,
    pub bytes_left: u64,
    pub bytes_copied: u64,
    pub rate_bytes_s: u64,
    pub namespace_pending: bool,
    /// The files with the most bytes left: (fid, bytes left, bytes copied).
    pub files: Vec<(FileId, u64, u64)>,
    pub error: Option<String>,
}

/// A hand-off body that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadHandoff;

#[derive(Debug)]
pub struct Healer {
    pg: u32,
    me: Member,
    cfg: HealConfig,
    dirt: DirtState,
    plans: BTreeMap<OpId, Plan>,
    targets: [Target; MEMBERS_MAX as usize],
    latency_fast_us: f64,
    latency_slow_us: f64,
    copied_total_bytes: u64,
}

/// Bounds the planning loop of one pump (each pass submits a copy, waits, or reshapes dirt).
const PLAN_STEPS_MAX: usize = 64;

impl Healer {
    /// `dirt`: what the log held at start (`DirtState::replay`).
    pub fn new(pg: u32, me: Member, cfg: HealConfig, dirt: DirtState) -> Healer {
        assert!(me < MEMBERS_MAX);
        assert!(cfg.window_max >= 1 && cfg.chunk_bytes >= tuning::DIRT_BLOCK_BYTES);
        Healer {
            pg,
            me,
            cfg,
            dirt,
            plans: BTreeMap::new(),
            targets: Default::default(),
            latency_fast_us: 0.0,
            latency_slow_us: 0.0,
            copied_total_bytes: 0,
        }
    }

    pub fn dirt(&self) -> &DirtState {
        &self.dirt
    }

    /// Whether `op` is one of this healer's copies (or a catch-up it registered).
    pub fn owns(&self, op: OpId) -> bool {
        self.plans.contains_key(&op)
    }

    /// Whether anything is recorded for any member.
    pub fn has_dirt(&self) -> bool {
        self.dirt.members.iter().any(|d| !d.is_empty())
    }

    /// Records what an op changed for the members `absent` that miss it (the replica's
    /// `RecordDirty`); returns what to append to the log before the op is applied.
    pub fn record(&mut self, absent: u8, items: &[Dirt]) -> Option<LogWrite> {
        let absent = absent & !(1 << self.me);
        let mut merged: Option<LogWrite> = None;
        for &d in items {
            merged = merge(merged, self.dirt.record(absent, d));
        }
        merged
    }

    /// A `LogWrite::Append` for `targets` failed: they get a full heal.
    pub fn on_log_write_failed(&mut self, targets: u8) {
        self.dirt.on_write_failed(targets);
    }

    /// A client op of this PG finished after `us` microseconds (the adaptive throttle).
    pub fn note_client_latency(&mut self, us: f64) {
        if self.latency_slow_us == 0.0 {
            self.latency_slow_us = us;
            self.latency_fast_us = us;
        }
        self.latency_fast_us += (us - self.latency_fast_us) * self.cfg.latency_fast_weight;
        self.latency_slow_us += (us - self.latency_slow_us) * self.cfg.latency_slow_weight;
    }

    fn clients_suffer(&self) -> bool {
        self.latency_slow_us > 0.0
            && self.latency_fast_us > self.cfg.suffer_ratio * self.latency_slow_us
    }

    /// Every `HEAL_TICK_MS`: forgets the dirt of members up to date again and, as primary,
    /// begins the heal of one member that is back (`begins`: how many more PGs the caller lets
    /// start now; each start is a map change). Then plans copies (`pump`).
    pub fn periodic(
        &mut self,
        now_ms: u64,
        replica: &mut Replica,
        env: &HealEnv,
        begins: &mut usize,
        local: &dyn LocalCopy,
        out: &mut Vec<Output>,
    ) {
        self.forget_healed(replica, out);
        self.drop_stale_plans(now_ms, replica);
        if replica.is_primary() {
            self.begin(now_ms, replica, env, begins, out);
        }
        self.pump(now_ms, replica, env, local, out);
    }

    /// Forgets what members that are up to date again missed.
    fn forget_healed(&mut self, replica: &Replica, out: &mut Vec<Output>) {
        let map = *replica.map();
        for m in 0..MEMBERS_MAX {
            // Members the set does not have (a damaged log records everything for all eight)
            // have nothing to be healed of.
            let healed = !map.is_placed(m) || map.is_up_to_date(m);
            if healed && !self.dirt.members[m as usize].is_empty() {
                if let Some(write) = self.dirt.clear(m) {
                    out.push(Output::WriteDirtLog { write });
                }
                self.targets[m as usize].stats = TargetStats::default();
            }
        }
    }

    /// As primary: begins the heal of a member that is back, and plans copies for every
    /// member being healed.
    fn begin(
        &mut self,
        now_ms: u64,
        replica: &mut Replica,
        env: &HealEnv,
        begins: &mut usize,
        out: &mut Vec<Output>,
    ) {
        let map = *replica.map();
        let back = replica.alive_absent(now_ms);
        let namespace_healed = |m: Member| self.pg == 0 || env.namespace_healed & (1 << m) != 0;
        let rested = |t: &Target| t.began_ms.is_none_or(|b| now_ms >= b + self.cfg.retry_ms);
        let candidate = (0..map.members).find(|&m| {
            back & (1 << m) != 0 && namespace_healed(m) && rested(&self.targets[m as usize])
        });
        if let Some(m) = candidate.filter(|_| *begins > 0) {
            if replica.heal_begin(m, out) {
                *begins -= 1;
                self.targets[m as usize].began_ms = Some(now_ms);
            }
        }
        for m in 0..map.members {
            let t = &mut self.targets[m as usize];
            t.handed_off &= map.is_healing(m);
            if map.is_healing(m) && !t.running {
                t.running = true;
                t.window = self.cfg.window_max;
                t.stats.started_ms.get_or_insert(now_ms);
            }
        }
    }

    /// Plans copies for every member being healed while their windows have room: call it at
    /// the replica's tick rate (a copy that finished plans the next one itself).
    pub fn pump(
        &mut self,
        now_ms: u64,
        replica: &mut Replica,
        env: &HealEnv,
        local: &dyn LocalCopy,
        out: &mut Vec<Output>,
    ) {
        for m in 0..MEMBERS_MAX {
            if self.targets[m as usize].running {
                self.pump_target(now_ms, m, replica, env, local, out);
            }
        }
    }

    /// Submits copies for `target` while its window has room.
    fn pump_target(
        &mut self,
        now_ms: u64,
        target: Member,
        replica: &mut Replica,
        env: &HealEnv,
        local: &dyn LocalCopy,
        out: &mut Vec<Output>,
    ) {
        for _ in 0..PLAN_STEPS_MAX {
            let t = &self.targets[target as usize];
            let paced = env.rate_bytes_s > 0 && now_ms < t.paced_until_ms;
            if !t.running || now_ms < t.resume_at_ms || t.copies >= t.window || paced {
                return;
            }
            match self.next_work(target, replica, local) {
                Next::Stop => {
                    self.targets[target as usize].running = false;
                    return;
                }
                Next::Wait => return,
                Next::Retry => continue,
                Next::Finish => {
                    if self.targets[target as usize].copies == 0 {
                        replica.heal_finish(target, out);
                        // Planned again by the next `periodic` if it is still healing (the
                        // proposal failed or has not been answered yet).
                        self.targets[target as usize].running = false;
                    }
                    return;
                }
                Next::Copy(work) => {
                    let bytes = work.bytes();
                    match self.submit(now_ms, target, work, replica, out) {
                        Ok(()) => {
                            let t = &mut self.targets[target as usize];
                            t.copies += 1;
                            if let Some(spent_ms) =
                                bytes.saturating_mul(1000).checked_div(env.rate_bytes_s)
                            {
                                // At most a second of credit builds up while idle.
                                t.paced_until_ms =
                                    t.paced_until_ms.max(now_ms.saturating_sub(1000)) + spent_ms;
                            }
                        }
                        Err(OpError::Busy) => return,
                        Err(_) => {
                            self.targets[target as usize].running = false;
                            return;
                        }
                    }
                }
            }
        }
    }

    fn next_work(&mut self, target: Member, replica: &Replica, local: &dyn LocalCopy) -> Next {
        let map = *replica.map();
        if !replica.is_primary() || !map.is_healing(target) {
            return Next::Stop;
        }
        let pg = self.pg;
        let d = &mut self.dirt.members[target as usize];
        if d.all {
            expand_all(d, local, pg);
        }
        if pg != 0 {
            // The namespace is PG 0's: its catch-up runs under PG 0's lock, ordered with every
            // create and unlink. Reconciling directories from a data PG would race with them
            // (a listing taken here misses a file PG 0 creates meanwhile, and the member would
            // drop it). Data PGs wait until PG 0 has healed the member, so nothing is missing.
            d.dirs.clear();
            d.tree = false;
        }
        if d.has_namespace() {
            // The catch-up that runs when a member joins takes these; a new one is needed
            // only if that one failed.
            let pending = self
                .plans
                .values()
                .any(|p| matches!(p.work, Work::CatchUp { .. }));
            return if pending {
                Next::Wait
            } else {
                Next::Copy(Work::CatchUp {
                    dirs: Vec::new(),
                    tree: false,
                })
            };
        }
        if let Some(fid) = d.attrs.pop_first() {
            return Next::Copy(Work::Attr(fid));
        }
        let Some((&fid, ranges)) = d.ranges.iter().next() else {
            if self.targets[target as usize].in_flight_bytes != 0 {
                return Next::Wait;
            }
            // Before it counts as up to date it may become the primary, the heal source of the
            // members still away: it needs this member's record of what they missed.
            let others_dirty = (0..map.members)
                .filter(|&m| m != target && m != self.me)
                .any(|m| !self.dirt.members[m as usize].is_empty());
            if others_dirty && !self.targets[target as usize].handed_off {
                let pending = self.plans.values().any(|p| p.work == Work::Handoff);
                return if pending {
                    Next::Wait
                } else {
                    Next::Copy(Work::Handoff)
                };
            }
            return Next::Finish;
        };
        let Some((start, end)) = ranges.first() else {
            d.ranges.remove(&fid);
            return Next::Retry;
        };
        if end == u64::MAX {
            // To the end of the file: its size now (later growth reaches the member directly).
            let size = local.file_size(fid).unwrap_or(0);
            let eof = size.div_ceil(tuning::DIRT_BLOCK_BYTES) * tuning::DIRT_BLOCK_BYTES;
            d.remove_range(fid, start, u64::MAX);
            if eof > start {
                d.add(Dirt::Range {
                    fid,
                    start,
                    end: eof,
                });
            }
            return Next::Retry;
        }
        let end = end.min(start + self.cfg.chunk_bytes);
        d.remove_range(fid, start, end);
        self.targets[target as usize].in_flight_bytes += end - start;
        Next::Copy(Work::Range { fid, start, end })
    }

    fn submit(
        &mut self,
        now_ms: u64,
        target: Member,
        work: Work,
        replica: &mut Replica,
        out: &mut Vec<Output>,
    ) -> Result<(), OpError> {
        match replica.submit_heal(now_ms, work.lock(), 1 << target, out) {
            Ok(op) => {
                self.plans.insert(
                    op,
                    Plan {
                        targets: 1 << target,
                        work,
                        failed: None,
                        windowed: true,
                    },
                );
                Ok(())
            }
            Err(e) => {
                self.give_back(target, &work);
                Err(e)
            }
        }
    }

    /// A copy that did not happen: its dirt is recorded again (in memory; the log still has
    /// it).
    fn give_back(&mut self, target: Member, work: &Work) {
        let d = &mut self.dirt.members[target as usize];
        match *work {
            Work::CatchUp { .. } | Work::Handoff => {}
            Work::Attr(fid) => {
                d.attrs.insert(fid);
            }
            Work::Range { fid, start, end } => {
                d.add(Dirt::Range { fid, start, end });
                let t = &mut self.targets[target as usize];
                t.in_flight_bytes = t.in_flight_bytes.saturating_sub(end - start);
            }
        }
    }

    /// A heal op finished (the replica's `Reply`; `ok`: every target has it). Ops that are not
    /// this healer's are ignored.
    /// The caller then calls `pump`: a finished copy makes room for the next.
    pub fn on_reply(&mut self, now_ms: u64, op: OpId, ok: bool) {
        self.finish_plan(now_ms, op, ok);
    }

    /// Plans whose op the replica no longer has: their reply was missed (a catch-up read
    /// that completed after its op had already failed registered one). Ended as failed, or
    /// the member's heal would wait for them forever.
    fn drop_stale_plans(&mut self, now_ms: u64, replica: &Replica) {
        let stale: Vec<OpId> = self
            .plans
            .keys()
            .copied()
            .filter(|&op| !replica.has_op(op))
            .collect();
        for op in stale {
            self.finish_plan(now_ms, op, false);
        }
    }

    fn finish_plan(&mut self, now_ms: u64, op: OpId, ok: bool) {
        let Some(mut plan) = self.plans.remove(&op) else {
            return;
        };
        let ok = ok && plan.failed.is_none();
        let suffer = self.clients_suffer();
        for m in (0..MEMBERS_MAX).filter(|m| plan.targets & (1 << m) != 0) {
            if let Some(why) = plan.failed.take() {
                self.targets[m as usize].stats.error = Some(why);
            }
            if plan.windowed {
                let t = &mut self.targets[m as usize];
                t.copies = t.copies.saturating_sub(1);
                if !ok {
                    t.window = self.cfg.window_max;
                    t.resume_at_ms = now_ms + self.cfg.failed_copy_pause_ms;
                } else if suffer {
                    t.window = (t.window / 2).max(1);
                    t.resume_at_ms = now_ms + self.cfg.suffer_pause_ms;
                } else {
                    t.window = (t.window + 1).min(self.cfg.window_max);
                }
            }
            if !ok {
                self.give_back(m, &plan.work);
                continue;
            }
            self.done(m, &plan.work);
        }
    }

    fn done(&mut self, m: Member, work: &Work) {
        let t = &mut self.targets[m as usize];
        let d = &mut self.dirt.members[m as usize];
        match work {
            Work::CatchUp { dirs, tree } => {
                for dir in dirs {
                    d.dirs.remove(dir);
                }
                if *tree {
                    d.tree = false;
                }
                t.stats.error = None;
            }
            Work::Attr(_) => {}
            Work::Handoff => t.handed_off = true,
            Work::Range { fid, start, end } => {
                let bytes = end - start;
                self.copied_total_bytes += bytes;
                t.stats.bytes_copied += bytes;
                *t.stats.copied_by_file.entry(*fid).or_default() += bytes;
                t.in_flight_bytes = t.in_flight_bytes.saturating_sub(bytes);
            }
        }
    }

    /// What to read for the replica's `ReadForResync { op, lock }`. A catch-up is registered
    /// here (the replica starts it on its own when a member joins or a primary takes over),
    /// so that its directories leave the dirt once every target has it.
    pub fn resync_read(&mut self, op: OpId, lock: LockKey, replica: &Replica) -> ResyncRead {
        match lock.kind() {
            LockKind::Everything => {
                // The members this catch-up goes to, not every member being healed: one that
                // joined while it was in flight gets its own, and must keep its dirt until then
                // (seed 5219).
                let live_targets = replica.op_targets(op);
                let targets = live_targets.unwrap_or(replica.map().healing);
                let mut dirs = BTreeSet::new();
                let mut tree = false;
                // Only PG 0 reconciles directories (see `next_work`): a data PG's catch-up is
                // empty.
                if self.pg == 0 {
                    for m in (0..MEMBERS_MAX).filter(|m| targets & (1 << m) != 0) {
                        let d = &self.dirt.members[m as usize];
                        dirs.extend(d.dirs.iter().copied());
                        tree |= d.tree || d.all;
                    }
                }
                let dirs: Vec<FileId> = dirs.into_iter().collect();
                if live_targets.is_none() {
                    // Finished already (its targets left while it was being read): its body
                    // goes nowhere, and a plan registered now would never end.
                    return ResyncRead::CatchUp { dirs, tree };
                }
                let plan = self.plans.entry(op).or_insert(Plan {
                    targets,
                    work: Work::Handoff,
                    failed: None,
                    windowed: false,
                });
                plan.work = Work::CatchUp {
                    dirs: dirs.clone(),
                    tree,
                };
                ResyncRead::CatchUp { dirs, tree }
            }
            LockKind::Handoff => {
                let targets = self
                    .plans
                    .get(&op)
                    .map_or(replica.map().healing, |p| p.targets);
                ResyncRead::Handoff {
                    payload: handoff_payload(
                        &self.dirt_with_copies_in_flight(targets),
                        self.me,
                        targets,
                    ),
                }
            }
            // A namespace change in doubt at a failover: every directory of this (the new
            // primary's) copy is made identical on the others. The op in doubt may never have
            // reached this member (its forward was lost, or it was being healed), so nothing
            // here says which directory it touched (sim seed 9342: the last few namespace ops
            // this member saw were listed, the unlink another member had applied was not
            // undone, and both counted as up to date).
            LockKind::Namespace => ResyncRead::CatchUp {
                dirs: Vec::new(),
                tree: true,
            },
            LockKind::WholeFile(_) | LockKind::Range { .. } => ResyncRead::Range,
        }
    }

    /// What the other members still miss, copies in flight included: a planned copy has left
    /// the dirt until it lands, and if this member stops being the primary before it lands
    /// (the member the hand-off goes to may become the primary), only the hand-off can tell
    /// the next heal source about it (sim seed 107: a move's new member became primary and
    /// healed a returning member without a range its predecessor was copying).
    fn dirt_with_copies_in_flight(&self, handoff_targets: u8) -> DirtState {
        let mut dirt = self.dirt.clone();
        for plan in self.plans.values() {
            let others = plan.targets & !handoff_targets;
            for m in (0..MEMBERS_MAX).filter(|&m| others & (1 << m) != 0) {
                let d = &mut dirt.members[m as usize];
                match plan.work {
                    Work::Range { fid, start, end } => d.add(Dirt::Range { fid, start, end }),
                    Work::Attr(fid) => {
                        d.attrs.insert(fid);
                    }
                    Work::CatchUp { .. } | Work::Handoff => {}
                }
            }
        }
        dirt
    }

    /// The catch-up of `op` could not be read (it is sent empty): its dirt stays, and the
    /// heal status shows why.
    pub fn on_catch_up_unreadable(&mut self, op: OpId, why: String) {
        if let Some(plan) = self.plans.get_mut(&op) {
            plan.failed = Some(why);
        }
    }

    /// A dirt hand-off reached this member (being healed): records it; returns what to append.
    pub fn apply_handoff(&mut self, payload: &[u8]) -> Result<Option<LogWrite>, BadHandoff> {
        let records = decode_handoff(payload).ok_or(BadHandoff)?;
        let mut merged = None;
        for (m, d) in records {
            if m != self.me {
                merged = merge(merged, self.dirt.record(1 << m, d));
            }
        }
        Ok(merged)
    }

    /// Progress of the heals this member runs as primary; `None` when it is not the primary
    /// or nothing is behind and nothing was copied.
    pub fn progress(&self, now_ms: u64, replica: &Replica) -> Option<HealProgress> {
        if !replica.is_primary() {
            return None;
        }
        let map = *replica.map();
        let behind = map.healing | map.absent();
        if behind == 0 && self.copied_total_bytes == 0 {
            return None;
        }
        let mut targets = Vec::new();
        for m in (0..map.members).filter(|m| behind & (1 << m) != 0) {
            let d = &self.dirt.members[m as usize];
            let t = &self.targets[m as usize];
            let elapsed_ms = t
                .stats
                .started_ms
                .map_or(1, |s| now_ms.saturating_sub(s).max(1));
            let mut files: Vec<(FileId, u64, u64)> = d
                .ranges
                .iter()
                .map(|(&fid, r)| {
                    let copied = t.stats.copied_by_file.get(&fid).copied().unwrap_or(0);
                    (fid, r.bytes(), copied)
                })
                .collect();
            files.sort_unstable_by_key(|&(fid, left, _)| (std::cmp::Reverse(left), fid));
            files.truncate(self.cfg.report_files_max);
            targets.push(TargetProgress {
                member: m,
                healing: map.is_healing(m),
                bytes_left: d.bytes() + t.in_flight_bytes,
                bytes_copied: t.stats.bytes_copied,
                rate_bytes_s: t.stats.bytes_copied.saturating_mul(1000) / elapsed_ms,
                namespace_pending: d.has_namespace(),
                files,
                error: t.stats.error.clone(),
            });
        }
        Some(HealProgress {
            epoch: map.epoch,
            source_member: self.me,
            targets,
            copied_total_bytes: self.copied_total_bytes,
        })
    }
}

/// A full heal: every directory, and every file of the PG whole.
fn expand_all(d: &mut MemberDirt, local: &dyn LocalCopy, pg: u32) {
    d.all = false;
    d.tree = pg == 0;
    for fid in local.ids_in_pg(pg) {
        d.attrs.insert(fid);
        d.add(Dirt::Range {
            fid,
            start: 0,
            end: u64::MAX,
        });
    }
}

fn merge(a: Option<LogWrite>, b: Option<LogWrite>) -> Option<LogWrite> {
    match (a, b) {
        (
            Some(LogWrite::Append {
                targets: ta,
                records: mut ra,
            }),
            Some(LogWrite::Append {
                targets: tb,
                records: rb,
            }),
        ) => {
            ra.extend_from_slice(&rb);
            Some(LogWrite::Append {
                targets: ta | tb,
                records: ra,
            })
        }
        (Some(LogWrite::Truncate), _) | (_, Some(LogWrite::Truncate)) => {
            unreachable!("recording never truncates")
        }
        (a, None) => a,
        (None, b) => b,
    }
}
