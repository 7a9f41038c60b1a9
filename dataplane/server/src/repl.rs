//! The replication driver of one dataplane core: one `Replica` and its `Healer` (sans-IO state
//! machines of `brick_replication`) per (volume, PG owned by this core, local member). Client
//! writes and namespace changes are submitted to the PG's primary; the driver turns the
//! machines' outputs into disk I/O (io_uring, through `apply`), log writes (`logs`), peer
//! messages (`peer`, or a direct call when the member is on this node) and cluster-store
//! requests (`MapRequest`, to the management plane), and feeds the results back in. Nothing
//! here blocks: every disk or store action is a spawned task whose completion is one more
//! input.

use crate::apply::{self, error_reply, Body, BrickCopy, NoCopy};
use crate::disk::{FailingDisk, Quarantine};
use crate::files::FileCache;
use crate::logs::{ActivityLog, DirtLog};
use crate::peer::PeerLinks;
use crate::state::{
    HealFile, HealReport, HealReports, HealTarget, MapRequest, ServeState, ServedVolume,
};
use brick_replication::body::{dirt_of_body, dirt_of_lock, outcome_in_data_pg, RecentNamespace};
use brick_replication::codec::{decode_repl, encode_repl, BodyRef};
use brick_replication::dirt::boot_activity;
use brick_replication::heal::HealProgress;
use brick_replication::{
    BodyOp, Boot, Config, Dirt, DirtState, HealConfig, HealEnv, Healer, LocalCopy, LockKey,
    LogWrite, Member, Msg, OpError, OpId, Outcome, Output, PgMap, ReadGate, Replica, ResyncRead,
};
use brick_store::Brick;
use brick_tuning::{
    ACTIVITY_REWRITE_INTERVAL_MS, HEALING_PGS_PER_CORE_MAX, HEAL_REPORT_INTERVAL_MS, HEAL_TICK_MS,
    LIMBO_AGE_CHECK_MS, LIMBO_KEEP_MS, READ_GATE_POLL_MS, READ_GATE_WAIT_MS, REPL_TICK_MS,
};
use brick_wire::{op, DecodeError, ErrorCode, Header, HEADER_BYTES};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// (volume, PG, local member).
pub(crate) type SlotKey = (u32, u32, Member);

struct PrimaryOp {
    request_id: u64,
    body: Body,
    started: Instant,
    /// The frame the local apply produced (the client's reply when the op succeeds).
    local_reply: Option<Vec<u8>>,
    /// `None` for resync and heal ops, which have no client.
    waiter: Option<flume::Sender<Vec<u8>>>,
}

/// One (volume, PG, local member).
struct Slot {
    replica: Replica,
    healer: Healer,
    vol: Arc<ServedVolume>,
    ops: HashMap<OpId, PrimaryOp>,
    /// Forwarded bodies received and not yet applied, by (sender, op).
    inbox: HashMap<(Member, OpId), Body>,
    dirt: DirtLog,
    activity: ActivityLog,
    recent_namespace: RecentNamespace,
    /// PG 0's slot frees its brick's limbo: whether that runs now, and when it last looked
    /// for files kept too long.
    limbo_freeing: Rc<Cell<bool>>,
    limbo_aged_at: Instant,
    /// The last epoch in which this member was logged as the PG's primary.
    primary_logged: u64,
    /// The member was behind (absent or being healed) at some tick since lost files were
    /// last taken.
    behind_seen: bool,
}

impl Slot {
    /// The brick of this slot's member (on this node by construction of the slot).
    fn brick(&self) -> Option<Arc<Brick>> {
        self.vol
            .members
            .get(self.replica.me() as usize)
            .and_then(|s| s.brick.clone())
    }

    fn heal_env(&self) -> HealEnv {
        HealEnv {
            namespace_healed: self.vol.pg_maps.first().map_or(0, |m| m.up_to_date),
            rate_bytes_s: self.vol.heal_rate_bytes,
        }
    }

    /// Performs a log write of the healer; one that fails leaves the members it was about
    /// with a full heal (kept in memory).
    fn write_dirt(&mut self, write: LogWrite) {
        if let Err(e) = self.dirt.write(&write) {
            tracing::error!(pg = self.replica.pg, "dirt log: {e}; full heal needed");
            if let LogWrite::Append { targets, .. } = write {
                self.healer.on_log_write_failed(targets);
            }
        }
    }

    /// Rewrites the activity log with what is still in doubt, at most once a second, and only
    /// when it grew (so an idle PG writes nothing).
    fn compact_activity(&mut self) {
        let a = &self.activity;
        if a.appended == 0
            || a.rewritten_at.elapsed() < Duration::from_millis(ACTIVITY_REWRITE_INTERVAL_MS)
        {
            return;
        }
        let keys = self.replica.activity_keys();
        if let Err(e) = self.activity.rewrite(&keys) {
            tracing::warn!(pg = self.replica.pg, "activity log rewrite: {e}");
        }
    }
}

impl Slot {
    /// Files of this PG that a namespace repair created empty on this member's brick: their
    /// data is lost here, and the replica makes sure a heal brings it back.
    fn take_lost(&mut self, out: &mut Vec<Output>) {
        let Some(brick) = self.brick() else { return };
        let lost = brick.take_lost(self.replica.pg);
        let map = *self.replica.map();
        let behind =
            std::mem::replace(&mut self.behind_seen, !map.is_up_to_date(self.replica.me()));
        if lost.is_empty() {
            return;
        }
        if self.replica.pg == 0 && behind {
            // The namespace's own files, created empty by this member's namespace heal: what
            // they hold was written while the member was behind, so the heal that is under
            // way (or was) copies it. Retiring the member for them restarted that heal over
            // and over under a steady stream of creates (a new brick never caught up).
            tracing::debug!(
                vol = self.vol.id,
                pg = self.replica.pg,
                files = lost.len(),
                "files created empty by this member's namespace heal are healed by it"
            );
            return;
        }
        tracing::warn!(
            vol = self.vol.id,
            pg = self.replica.pg,
            files = lost.len(),
            "a namespace repair recreated files whose data this member lost: healing them"
        );
        let keys: Vec<LockKey> = lost.into_iter().map(LockKey::whole_file).collect();
        self.replica.lost_data(&keys, out);
    }

    /// PG 0's member frees the brick's limbo once no namespace change applied here is in
    /// doubt any more (no repair can bring those files back) and no member is behind this
    /// copy in the namespace (one that still lists a removed file may be healed in the file's
    /// data PG first, from what is kept here), and files kept longer than `LIMBO_KEEP_MS` in
    /// any case (space comes back even while a peer stays away), off the core and without the
    /// brick's lock.
    fn free_limbo(&mut self) {
        if self.replica.pg != 0 || self.limbo_freeing.get() {
            return;
        }
        let Some(brick) = self.brick().filter(|b| b.has_limbo()) else {
            return;
        };
        let older_than = if self.replica.namespace_settled() && !self.healer.has_dirt() {
            None
        } else if self.limbo_aged_at.elapsed() >= Duration::from_millis(LIMBO_AGE_CHECK_MS) {
            self.limbo_aged_at = Instant::now();
            Some(Duration::from_millis(LIMBO_KEEP_MS))
        } else {
            return;
        };
        let busy = self.limbo_freeing.clone();
        busy.set(true);
        glommio::spawn_local(async move {
            let freed = glommio::executor()
                .spawn_blocking(move || brick.empty_trash(older_than))
                .await;
            busy.set(false);
            if freed > 0 {
                tracing::debug!(freed, "freed removed files");
            }
        })
        .detach();
    }
}

/// Runs `f` with the healer, its replica, its environment and what it reads of the brick.
fn with_healer<R>(
    slot: &mut Slot,
    f: impl FnOnce(&mut Healer, &mut Replica, &HealEnv, &dyn LocalCopy) -> R,
) -> R {
    let env = slot.heal_env();
    let brick = slot.brick();
    let local: &dyn LocalCopy = match &brick {
        Some(b) => &BrickCopy(b),
        None => &NoCopy,
    };
    f(&mut slot.healer, &mut slot.replica, &env, local)
}

pub(crate) struct Submission {
    pub request_id: u64,
    pub body: Body,
    pub lock: LockKey,
    pub local_first: bool,
}

/// The replication driver of one core.
pub(crate) struct ReplCore {
    core: usize,
    ncores: usize,
    slots: RefCell<HashMap<SlotKey, Slot>>,
    started: Instant,
    files: Rc<RefCell<FileCache>>,
    maps: flume::Sender<MapRequest>,
    links: Rc<PeerLinks>,
    heal_reports: HealReports,
    /// The state of the last `sync_slots`: slots dropped while their disk failed are created
    /// again from it once the disk works.
    last_state: RefCell<Option<Arc<ServeState>>>,
    /// Slots dropped because their disk failed: created again as after a crash.
    quarantined: RefCell<std::collections::HashSet<SlotKey>>,
    /// `DiskHealth::generation` when this core last looked.
    disks_seen: Cell<u64>,
    /// Members a PG moved off, with the epoch of the map that moved it: no slot is made for
    /// them again from a map that old (a state read before the move was committed).
    moved_off: RefCell<HashMap<SlotKey, u64>>,
    /// Members whose copy of a PG is being freed (the PG moved off them); no slot is made
    /// for them until it is done.
    sweeping: RefCell<std::collections::HashSet<SlotKey>>,
    /// Local members of PGs placed elsewhere whose copy this process has freed (or is
    /// freeing): once per process, so a crash in the middle of a sweep is finished after it.
    swept: RefCell<std::collections::HashSet<SlotKey>>,
}

impl ReplCore {
    pub fn new(
        (core, ncores): (usize, usize),
        files: Rc<RefCell<FileCache>>,
        maps: flume::Sender<MapRequest>,
        heal_reports: HealReports,
    ) -> Rc<ReplCore> {
        Rc::new(ReplCore {
            core,
            ncores,
            slots: RefCell::new(HashMap::new()),
            started: Instant::now(),
            files,
            maps,
            links: Rc::new(PeerLinks::new(core)),
            heal_reports,
            last_state: RefCell::new(None),
            quarantined: RefCell::new(Default::default()),
            disks_seen: Cell::new(0),
            moved_off: RefCell::new(HashMap::new()),
            sweeping: RefCell::new(Default::default()),
            swept: RefCell::new(Default::default()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn with_slot<R>(&self, key: SlotKey, f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
        self.slots.borrow_mut().get_mut(&key).map(f)
    }

    fn slot_keys(&self) -> Vec<SlotKey> {
        self.slots.borrow().keys().copied().collect()
    }

    /// Runs `f` on one slot with the time, then acts on what its machines asked for.
    fn feed(self: &Rc<Self>, key: SlotKey, f: impl FnOnce(&mut Slot, u64, &mut Vec<Output>)) {
        let now = self.now_ms();
        let mut out = Vec::new();
        if self.with_slot(key, |slot| f(slot, now, &mut out)).is_none() {
            return; // the volume stopped meanwhile
        }
        self.drive(key, out);
    }

    /// Logs once per epoch that a local member became its PG's primary (target
    /// `brickd::primary`, debug): the partition tests check from every node's log that no two
    /// members were primary of one PG in one epoch.
    fn log_primary(&self, key: SlotKey) {
        self.with_slot(key, |slot| {
            let epoch = slot.replica.map().epoch;
            if slot.replica.is_primary() && slot.primary_logged != epoch {
                slot.primary_logged = epoch;
                tracing::debug!(
                    target: "brickd::primary",
                    "PG {} of volume {}: member {} is primary in epoch {epoch}",
                    key.1,
                    slot.vol.name,
                    key.2
                );
            }
        });
    }

    /// Creates, updates and drops this core's replicas to match a newly published state.
    pub fn sync_slots(self: &Rc<Self>, state: &Arc<ServeState>) {
        *self.last_state.borrow_mut() = Some(state.clone());
        self.links.set_node_key(state.node_key);
        let disks = &self.heal_reports.disks;
        let now = self.now_ms();
        let mut started: Vec<(SlotKey, Vec<Output>)> = Vec::new();
        {
            let mut slots = self.slots.borrow_mut();
            // A slot whose brick was replaced starts over with the new one (absent, fresh).
            slots.retain(|&(vol, _, m), slot| {
                let now = state
                    .volumes
                    .get(&vol)
                    .and_then(|v| v.members.get(m as usize));
                let before = slot
                    .vol
                    .members
                    .get(m as usize)
                    .and_then(|s| s.brick.as_ref());
                match (now.and_then(|s| s.brick.as_ref()), before) {
                    (Some(now), Some(before)) => Arc::ptr_eq(now, before),
                    _ => false,
                }
            });
            let mut sweeps = Vec::new();
            for vol in state.volumes.values() {
                for pg in (self.core..vol.pg_maps.len()).step_by(self.ncores) {
                    let map = vol.pg_maps[pg];
                    for (m, brick) in vol.local_members() {
                        let key = (vol.id, pg as u32, m);
                        let moved_off = self
                            .moved_off
                            .borrow()
                            .get(&key)
                            .is_some_and(|&e| map.epoch <= e);
                        if !map.is_placed(m) || moved_off {
                            match slots.get_mut(&key) {
                                // The map that moved the PG off it: `drive` retires the slot.
                                Some(slot) if map.epoch > slot.replica.map().epoch => {
                                    let mut out = Vec::new();
                                    slot.replica.on_map(now, map, &mut out);
                                    started.push((key, out));
                                }
                                Some(_) => {}
                                None => {
                                    // A copy a crash or a state read late left: freed
                                    // once per process.
                                    if self.swept.borrow_mut().insert(key) {
                                        sweeps.push((key, brick.clone()));
                                    }
                                }
                            }
                            continue;
                        }
                        if self.sweeping.borrow().contains(&key) {
                            continue; // made once the old copy is freed
                        }
                        let mut out = Vec::new();
                        match slots.get_mut(&key) {
                            Some(slot) => {
                                record_replaced(slot, vol);
                                slot.vol = vol.clone();
                                if map.epoch > slot.replica.map().epoch {
                                    slot.replica.on_map(now, map, &mut out);
                                }
                            }
                            None => {
                                if disks.is_failing(vol.id, m) && !map.is_last_copy(m) {
                                    continue; // quarantined: created once the disk works
                                }
                                let crashed = self.quarantined.borrow_mut().remove(&key);
                                let slot =
                                    new_slot(vol, (pg as u32, m), map, now, crashed, &mut out);
                                slots.insert(key, slot);
                            }
                        }
                        let retired = slots.get(&key).is_some_and(|s| s.replica.retired());
                        if !out.is_empty() || retired {
                            started.push((key, out)); // `drive` retires a retired slot
                        }
                    }
                }
            }
            for (key, brick) in sweeps {
                self.sweep_brick(key, brick);
            }
        }
        for (key, out) in started {
            self.drive(key, out);
        }
    }

    /// The PG of `key` moved off its member (a committed map no longer places it): the slot
    /// goes and the member's copy is freed.
    fn retire(self: &Rc<Self>, key: SlotKey) {
        let Some(slot) = self.slots.borrow_mut().remove(&key) else {
            return;
        };
        let epoch = slot.replica.map().epoch;
        tracing::info!(
            vol = key.0,
            pg = key.1,
            member = key.2,
            epoch,
            "the PG moved to other bricks; freeing this brick's copy"
        );
        self.moved_off.borrow_mut().insert(key, epoch);
        self.swept.borrow_mut().insert(key);
        let brick = slot.brick();
        drop(slot);
        if let Some(brick) = brick {
            self.sweep_brick(key, brick);
        }
    }

    /// Frees a local member's copy of a PG that is placed elsewhere, off the core; slots for
    /// it wait until that is done.
    fn sweep_brick(self: &Rc<Self>, key: SlotKey, brick: Arc<Brick>) {
        if !self.sweeping.borrow_mut().insert(key) {
            return;
        }
        let core = self.clone();
        glommio::spawn_local(async move {
            let pg = key.1;
            let dirt = brick.meta_path(&format!("dirt/pg-{pg}.log"));
            let activity = brick.meta_path(&format!("dirt/pg-{pg}.activity"));
            let freed = glommio::executor()
                .spawn_blocking(move || {
                    let freed = brick.drop_pg_data(pg, || true);
                    // What this member recorded for others is about a copy it no longer has.
                    let _ = std::fs::remove_file(dirt);
                    let _ = std::fs::remove_file(activity);
                    freed
                })
                .await;
            if freed.0 > 0 {
                tracing::info!(
                    vol = key.0,
                    pg,
                    member = key.2,
                    "freed this brick's copy of the PG: {} files, {} bytes",
                    freed.0,
                    freed.1
                );
            }
            core.sweeping.borrow_mut().remove(&key);
            let state = core.last_state.borrow().clone();
            if let Some(state) = state {
                core.sync_slots(&state);
            }
        })
        .detach();
    }

    /// Gives every replica of this core the time every `REPL_TICK_MS`; every `HEAL_TICK_MS`
    /// the healers begin heals and forget healed members' dirt; twice a second the heal
    /// progress is published for `brick heal status`.
    pub async fn tick_loop(self: Rc<Self>) {
        let mut last_heal = Instant::now();
        let mut last_report = Instant::now();
        loop {
            glommio::timer::sleep(Duration::from_millis(REPL_TICK_MS)).await;
            let heal_due = last_heal.elapsed() >= Duration::from_millis(HEAL_TICK_MS);
            if heal_due {
                last_heal = Instant::now();
                self.heal_periodic();
            }
            self.quarantine_tick();
            for key in self.slot_keys() {
                self.feed(key, |slot, now, out| {
                    slot.replica.tick(now, out);
                    slot.behind_seen |= !slot.replica.map().is_up_to_date(slot.replica.me());
                    if !heal_due {
                        with_healer(slot, |h, r, env, local| h.pump(now, r, env, local, out));
                    }
                });
            }
            if last_report.elapsed() >= Duration::from_millis(HEAL_REPORT_INTERVAL_MS) {
                last_report = Instant::now();
                self.publish_reports();
            }
        }
    }

    /// The healers' periodic work, PG 0 (the namespace) first, then PGs with something to
    /// copy: at most `HEALING_PGS_PER_CORE_MAX` PGs of this core heal at once, because each
    /// start and end is a map change (an etcd transaction and a state reload on every node,
    /// which a burst of 64 at once turns into a stall for clients).
    fn heal_periodic(self: &Rc<Self>) {
        let mut keys = self.slot_keys();
        let rank = |key: &SlotKey| {
            let dirty = self.with_slot(*key, |s| s.healer.has_dirt());
            (key.1 != 0, dirty != Some(true), *key)
        };
        keys.sort_by_cached_key(rank);
        let healing = keys
            .iter()
            .filter(|&&k| {
                self.with_slot(k, |s| {
                    s.replica.is_primary() && s.replica.map().healing != 0
                }) == Some(true)
            })
            .count();
        let mut begins = HEALING_PGS_PER_CORE_MAX.saturating_sub(healing);
        for key in keys {
            self.feed(key, |slot, now, out| {
                slot.compact_activity();
                slot.take_lost(out);
                slot.free_limbo();
                with_healer(slot, |h, r, env, local| {
                    h.periodic(now, r, env, &mut begins, local, out)
                });
            });
        }
    }

    /// Publishes this core's heal progress (primaries only) for `brick heal status`.
    fn publish_reports(&self) {
        let now = self.now_ms();
        let mut mine: Vec<HealReport> = Vec::new();
        for key in self.slot_keys() {
            if let Some(Some(r)) = self.with_slot(key, |slot| report(slot, now)) {
                mine.push(r);
            }
        }
        let mut all = self
            .heal_reports
            .heal
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        all.retain(|&(core, _, _), _| core != self.core);
        for r in mine {
            all.insert((self.core, r.volume_id, r.pg), r);
        }
    }

    /// Local member `member`'s disk failed (`why`): the brick is marked failing. Each tick
    /// then drops (quarantines) its slots on every core, except where it holds the last
    /// up-to-date copy; they come back as after a crash once a probe of the disk passes.
    pub fn disk_failed(&self, vol: &ServedVolume, member: Member, why: &str) {
        self.heal_reports
            .disks
            .failed((vol.id, member), self.ncores, || {
                let spec = vol.members.get(member as usize);
                FailingDisk {
                    volume: vol.name.clone(),
                    brick: spec.map_or("?".into(), |s| format!("{}:{}", s.node, s.path)),
                    root: spec
                        .and_then(|s| s.brick.as_ref())
                        .map(|b| b.root.clone())
                        .unwrap_or_default(),
                    error: why.to_string(),
                    since: Instant::now(),
                    failures: 1,
                }
            });
    }

    /// A read of local member `member` of `pg` failed with a disk error: the brick is marked
    /// failing and this PG's member steps down at once if another is up to date (see
    /// `Replica::on_disk_failed`). Returns whether it did (the reader retries at the
    /// next primary).
    pub fn local_read_failed(
        self: &Rc<Self>,
        vol: &ServedVolume,
        pg: u32,
        member: Member,
        why: &str,
    ) -> bool {
        self.disk_failed(vol, member, why);
        if !self.report_quarantine((vol.id, member)).leave {
            return false;
        }
        let mut leaves = false;
        self.feed((vol.id, pg, member), |slot, _now, out| {
            leaves = slot.replica.on_disk_failed(out);
        });
        leaves
    }

    /// This core's part of a failing brick's state (see `DiskHealth::report`).
    fn report_quarantine(&self, key: (u32, Member)) -> Quarantine {
        let (mut listed, mut last_copy) = (false, false);
        for (k, slot) in self.slots.borrow().iter() {
            if (k.0, k.2) == key {
                listed |= slot.replica.map().receivers() & (1 << k.2) != 0;
                last_copy |= slot.replica.is_last_copy();
            }
        }
        self.heal_reports
            .disks
            .report(key, self.core, listed, last_copy)
    }

    /// Quarantines the bricks whose disk fails. Their members leave their PGs, unless one of
    /// them holds the last up-to-date copy of its PG (then all stay: a data member serving
    /// while its brick's namespace member is out lets the copies diverge); once none of them
    /// is in a PG's map on any core, their slots are dropped together, so that nothing heals
    /// them back meanwhile. Once the disk works, the slots are created again as after a crash.
    fn quarantine_tick(self: &Rc<Self>) {
        let disks = &self.heal_reports.disks;
        for key in disks.failing_keys() {
            let what = self.report_quarantine(key);
            let slots: Vec<SlotKey> = self
                .slot_keys()
                .into_iter()
                .filter(|k| (k.0, k.2) == key)
                .collect();
            if what.leave {
                for &k in &slots {
                    self.feed(k, |slot, _now, out| {
                        slot.replica.on_disk_failed(out);
                    });
                }
            }
            if what.stop {
                for k in slots {
                    if self.slots.borrow_mut().remove(&k).is_some() {
                        tracing::debug!(vol = k.0, pg = k.1, member = k.2, "quarantined");
                        self.quarantined.borrow_mut().insert(k);
                    }
                }
            }
        }
        let generation = disks.generation();
        if generation != self.disks_seen.replace(generation) {
            let state = self.last_state.borrow().clone();
            if let Some(state) = state {
                self.sync_slots(&state);
            }
        }
    }

    /// The local member holding the primary copy of a PG, or the error to answer with.
    pub fn local_primary(&self, vol: &ServedVolume, pg: u32) -> Result<Member, String> {
        let slots = self.slots.borrow();
        let mut known: Option<PgMap> = vol.pg_maps.get(pg as usize).copied();
        for (m, _) in vol.local_members() {
            if let Some(slot) = slots.get(&(vol.id, pg, m)) {
                if slot.replica.is_primary() {
                    return Ok(m);
                }
                let map = *slot.replica.map();
                if known.is_none_or(|k| map.epoch > k.epoch) {
                    known = Some(map);
                }
            }
        }
        Err(match known {
            Some(map) => match map.primary() {
                Some(p) => format!(
                    "PG {pg} of volume {} is served by member {p} ({}) in epoch {}",
                    vol.name,
                    vol.members.get(p as usize).map_or("?", |s| s.node.as_str()),
                    map.epoch
                ),
                None => format!("PG {pg} of volume {} has no up-to-date member", vol.name),
            },
            None => format!("PG {pg} of volume {} is not held by this node", vol.name),
        })
    }

    /// Waits until the local primary `member` may answer a read of `lock` from its copy
    /// (`Replica::read_gate`: its read lease holds, no unacknowledged write of the range);
    /// the error is the answer when it is not the primary or could not confirm it in time.
    pub async fn read_ready(
        &self,
        vol: &ServedVolume,
        pg: u32,
        member: Member,
        lock: LockKey,
    ) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_millis(READ_GATE_WAIT_MS);
        loop {
            match self.read_gate(vol, pg, member, &lock) {
                ReadGate::Serve => return Ok(()),
                ReadGate::Wait if Instant::now() < deadline => {
                    glommio::timer::sleep(Duration::from_millis(READ_GATE_POLL_MS)).await
                }
                ReadGate::Wait => {
                    return Err(format!(
                        "PG {pg} of volume {}: this primary could not confirm within \
                         {READ_GATE_WAIT_MS} ms that it still is (its members did not answer)",
                        vol.name
                    ))
                }
                ReadGate::Refuse => {
                    return Err(self
                        .local_primary(vol, pg)
                        .err()
                        .unwrap_or_else(|| format!("PG {pg} moved meanwhile")))
                }
            }
        }
    }

    /// `Replica::read_gate` of a local member now (`Refuse` if it is not held here).
    pub fn read_gate(
        &self,
        vol: &ServedVolume,
        pg: u32,
        member: Member,
        lock: &LockKey,
    ) -> ReadGate {
        let now = self.now_ms();
        self.with_slot((vol.id, pg, member), |s| s.replica.read_gate(now, lock))
            .unwrap_or(ReadGate::Refuse)
    }

    /// Runs one client write or namespace change through its PG's primary on this core and
    /// returns the reply frame once every up-to-date member has it (or it failed).
    pub async fn submit(self: &Rc<Self>, vol: &ServedVolume, pg: u32, sub: Submission) -> Vec<u8> {
        let (id, opcode) = (sub.request_id, sub.body.op.code());
        let member = match self.local_primary(vol, pg) {
            Ok(m) => m,
            Err(why) => return error_reply(id, opcode, ErrorCode::NotPrimary, &why),
        };
        let key = (vol.id, pg, member);
        let (tx, rx) = flume::bounded(1);
        let now = self.now_ms();
        let mut out = Vec::new();
        let submitted = self.with_slot(key, |slot| {
            let op = slot
                .replica
                .submit(now, sub.lock, sub.local_first, &mut out)?;
            slot.ops.insert(
                op,
                PrimaryOp {
                    request_id: id,
                    body: sub.body,
                    started: Instant::now(),
                    local_reply: None,
                    waiter: Some(tx),
                },
            );
            Ok(())
        });
        match submitted {
            None => {
                return error_reply(id, opcode, ErrorCode::NotPrimary, "the PG moved meanwhile")
            }
            Some(Err(e)) => return op_error_reply(id, opcode, e),
            Some(Ok(())) => {}
        }
        self.drive(key, out);
        rx.recv_async().await.unwrap_or_else(|_| {
            error_reply(
                id,
                opcode,
                ErrorCode::Unavailable,
                "the volume stopped while the operation ran",
            )
        })
    }

    /// A replication message from another node (opcode REPL), on the core owning its PG.
    pub fn on_peer_frame(self: &Rc<Self>, payload: &[u8]) -> Result<(), DecodeError> {
        let m = decode_repl(payload)?;
        let key = (m.vol, m.pg, m.to);
        let body = m.body.map(|b| Body {
            op: b.op,
            minted: b.minted,
            payload: Rc::new(b.payload),
            data_dma: Default::default(),
        });
        let now = self.now_ms();
        let mut out = Vec::new();
        self.with_slot(key, |slot| {
            deliver(slot, now, m.from, m.msg, body, &mut out)
        });
        self.drive(key, out);
        Ok(())
    }

    /// Acts on a slot's outputs in order, and on what acting on them makes other local
    /// replicas output.
    fn drive(self: &Rc<Self>, key: SlotKey, outputs: Vec<Output>) {
        let mut work: VecDeque<(SlotKey, Output)> = outputs.into_iter().map(|o| (key, o)).collect();
        self.log_primary(key);
        while let Some((key, output)) = work.pop_front() {
            self.log_primary(key);
            match output {
                Output::ApplyLocal { op } => self.spawn_apply_local(key, op),
                Output::ReadForResync { op, lock } => self.spawn_resync_read(key, op, lock),
                Output::ApplyForwarded { from, op } => self.spawn_apply_forwarded(key, from, op),
                Output::Send { to, msg } => self.send(key, to, msg, &mut work),
                Output::Reply { op, result } => {
                    let more = self.reply(key, op, result);
                    work.extend(more.into_iter().map(|o| (key, o)));
                }
                Output::RecordDirty {
                    origin,
                    op,
                    lock,
                    absent,
                } => {
                    self.with_slot(key, |slot| record_dirt(slot, (origin, op), lock, absent));
                }
                Output::RecordActivity { lock } => {
                    let appended = self.with_slot(key, |s| {
                        let replica = &s.replica;
                        s.activity.append(lock, || replica.activity_keys())
                    });
                    if let Some(Err(e)) = appended {
                        tracing::error!(vol = key.0, pg = key.1, "activity log: {e}");
                    }
                }
                Output::WriteDirtLog { write } => {
                    self.with_slot(key, |slot| slot.write_dirt(write));
                }
                Output::Propose { map } => self.spawn_propose(key, map),
                Output::FetchMap => self.spawn_fetch(key),
            }
        }
        if self.with_slot(key, |s| s.replica.retired()) == Some(true) {
            self.retire(key);
        }
    }

    /// An FSYNC makes the dirt recorded so far durable too (it describes the data being
    /// synced).
    fn sync_dirt_before_fsync(&self, key: SlotKey, body: &Body) {
        if body.op != BodyOp::Request(op::FSYNC) {
            return;
        }
        let synced = self.with_slot(key, |slot| {
            slot.dirt.sync().and_then(|()| slot.activity.sync())
        });
        if let Some(Err(e)) = synced {
            tracing::error!(vol = key.0, pg = key.1, "dirt log sync: {e}");
        }
    }

    fn spawn_apply_local(self: &Rc<Self>, key: SlotKey, op: OpId) {
        let found = self
            .with_slot(key, |slot| {
                let p = slot.ops.get(&op)?;
                Some((slot.vol.clone(), p.request_id, p.body.clone()))
            })
            .flatten();
        let Some((vol, request_id, body)) = found else {
            return;
        };
        self.sync_dirt_before_fsync(key, &body);
        let core = self.clone();
        glommio::spawn_local(async move {
            let frame = apply::apply(&core.files, &vol, key.2, request_id, &body).await;
            let outcome = data_outcome(&vol, key, &frame);
            if disk_failure_of(&frame) {
                let why = String::from_utf8_lossy(frame.get(HEADER_BYTES..).unwrap_or_default());
                core.disk_failed(&vol, key.2, &why);
            }
            let minted = minted_fid(body.op, &frame);
            core.feed(key, |slot, now, out| {
                if let Some(p) = slot.ops.get_mut(&op) {
                    p.local_reply = Some(frame);
                    if let Some(fid) = minted {
                        p.body.minted = fid;
                    }
                }
                slot.replica.on_local_done(now, op, outcome, out);
            });
        })
        .detach();
    }

    fn spawn_resync_read(self: &Rc<Self>, key: SlotKey, op: OpId, lock: LockKey) {
        let Some(vol) = self.with_slot(key, |slot| slot.vol.clone()) else {
            return;
        };
        let core = self.clone();
        glommio::spawn_local(async move {
            let read = core.with_slot(key, |slot| {
                let what = slot.healer.resync_read(op, lock, &slot.replica);
                (what, slot.brick())
            });
            let Some((what, brick)) = read else {
                return;
            };
            let body = match what {
                ResyncRead::CatchUp { dirs, tree } => {
                    // One that cannot be read is sent empty (the heal reports why and keeps
                    // its dirt), never failing this member.
                    let body = brick
                        .ok_or_else(|| "the heal source's brick is not on this node".to_string())
                        .and_then(|b| apply::catch_up_body(&b, &dirs, tree));
                    Ok(body.unwrap_or_else(|why| {
                        tracing::warn!(
                            vol = key.0,
                            pg = key.1,
                            "namespace catch-up not read: {why}"
                        );
                        core.with_slot(key, |slot| slot.healer.on_catch_up_unreadable(op, why));
                        Body::noop()
                    }))
                }
                ResyncRead::Handoff { payload } => Ok(Body {
                    op: BodyOp::Handoff,
                    minted: 0,
                    payload: Rc::new(payload),
                    data_dma: Default::default(),
                }),
                ResyncRead::Range => apply::resync_body(&core.files, &vol, key.2, lock).await,
            };
            let (body, outcome) = match body {
                Ok(body) => (body, Outcome::Ok),
                Err(e) => {
                    tracing::warn!(vol = vol.id, pg = key.1, "resync read failed: {e}");
                    if is_disk_failure(e.code) {
                        core.disk_failed(&vol, key.2, &e.to_string());
                    }
                    (Body::noop(), Outcome::Failed)
                }
            };
            core.feed(key, |slot, now, out| {
                slot.ops.insert(
                    op,
                    PrimaryOp {
                        request_id: 0,
                        body,
                        started: Instant::now(),
                        local_reply: None,
                        waiter: None,
                    },
                );
                slot.replica.on_local_done(now, op, outcome, out);
            });
        })
        .detach();
    }

    fn spawn_apply_forwarded(self: &Rc<Self>, key: SlotKey, from: Member, op: OpId) {
        let found = self.with_slot(key, |slot| {
            (slot.vol.clone(), slot.inbox.remove(&(from, op)))
        });
        let Some((vol, body)) = found else {
            return;
        };
        if let Some(b) = &body {
            self.sync_dirt_before_fsync(key, b);
            if b.op == BodyOp::Handoff {
                // A dirt hand-off is recorded, not applied to the brick.
                self.feed(key, |slot, now, out| {
                    let outcome = match slot.healer.apply_handoff(&b.payload) {
                        Ok(write) => {
                            if let Some(w) = write {
                                slot.write_dirt(w);
                            }
                            Outcome::Ok
                        }
                        Err(_) => Outcome::Refused(ErrorCode::Malformed.code()),
                    };
                    slot.replica.on_forward_applied(now, from, op, outcome, out);
                });
                return;
            }
        }
        let core = self.clone();
        glommio::spawn_local(async move {
            let outcome = match body {
                Some(body) => {
                    let frame = apply::apply(&core.files, &vol, key.2, 0, &body).await;
                    let outcome = data_outcome(&vol, key, &frame);
                    if outcome != Outcome::Ok {
                        let why =
                            String::from_utf8_lossy(frame.get(HEADER_BYTES..).unwrap_or_default());
                        if disk_failure_of(&frame) {
                            core.disk_failed(&vol, key.2, &why);
                        }
                        tracing::warn!(
                            vol = vol.id,
                            pg = key.1,
                            op,
                            opcode = body.op.code(),
                            "forwarded op: {outcome:?}: {why}"
                        );
                    }
                    outcome
                }
                None => {
                    tracing::error!(vol = vol.id, pg = key.1, op, "forward without its body");
                    Outcome::Failed
                }
            };
            core.feed(key, |slot, now, out| {
                slot.replica.on_forward_applied(now, from, op, outcome, out)
            });
        })
        .detach();
    }

    fn send(
        self: &Rc<Self>,
        key: SlotKey,
        to: Member,
        msg: Msg,
        work: &mut VecDeque<(SlotKey, Output)>,
    ) {
        let (vol_id, pg, from) = key;
        let found = self.with_slot(key, |slot| {
            let body = match &msg {
                Msg::Forward { op, .. } => Some(slot.ops.get(op).map(|p| p.body.clone())),
                _ => None,
            };
            (slot.vol.clone(), body)
        });
        let Some((vol, body)) = found else { return };
        let body = match body {
            Some(None) => return, // its resync read is still running; the resend timer retries
            Some(Some(b)) => Some(b),
            None => None,
        };
        let Some(spec) = vol.members.get(to as usize) else {
            return;
        };
        if spec.brick.is_some() {
            let target = (vol_id, pg, to);
            let now = self.now_ms();
            let mut out = Vec::new();
            self.with_slot(target, |t| deliver(t, now, from, msg, body, &mut out));
            work.extend(out.into_iter().map(|o| (target, o)));
        } else {
            let body_ref = body.as_ref().map(|b| BodyRef {
                op: b.op,
                minted: b.minted,
                payload: &b.payload,
            });
            let frame = encode_repl((vol_id, pg), from, to, &msg, body_ref);
            self.links.send(&spec.addr, frame);
        }
    }

    /// An op finished: the healer hears of it (and may plan more copies: returned), the
    /// client gets its answer.
    fn reply(self: &Rc<Self>, key: SlotKey, op: OpId, result: Result<(), OpError>) -> Vec<Output> {
        let now = self.now_ms();
        let mut more = Vec::new();
        let removed = self.with_slot(key, |slot| {
            slot.healer.on_reply(now, op, result.is_ok());
            with_healer(slot, |h, r, env, local| {
                h.pump(now, r, env, local, &mut more)
            });
            let p = slot.ops.remove(&op);
            if let Some(p) = p.as_ref().filter(|p| p.waiter.is_some()) {
                let us = p.started.elapsed().as_micros() as f64;
                slot.healer.note_client_latency(us);
            }
            p
        });
        let Some(Some(p)) = removed else {
            return more;
        };
        let Some(waiter) = p.waiter else {
            return more;
        };
        let (id, opcode) = (p.request_id, p.body.op.code());
        let frame = match (result, p.local_reply) {
            (Ok(()), Some(frame)) | (Err(OpError::Refused(_)), Some(frame)) => frame,
            (Ok(()), None) => error_reply(id, opcode, ErrorCode::Internal, "no local result"),
            (Err(e), _) => op_error_reply(id, opcode, e),
        };
        let _ = waiter.send(frame);
        more
    }

    fn spawn_propose(self: &Rc<Self>, key: SlotKey, map: PgMap) {
        let Some(volume) = self.with_slot(key, |slot| slot.vol.name.clone()) else {
            return;
        };
        tracing::debug!(vol = key.0, pg = key.1, member = key.2, "proposing {map:?}");
        let core = self.clone();
        glommio::spawn_local(async move {
            let (tx, rx) = flume::bounded(1);
            let request = MapRequest::Propose {
                volume,
                pg: key.1,
                map,
                reply: tx,
            };
            let result = match core.maps.send_async(request).await {
                Ok(()) => rx.recv_async().await.unwrap_or(Err(None)),
                Err(_) => Err(None),
            };
            core.feed(key, |slot, now, out| {
                slot.replica.on_proposal_result(now, result, out)
            });
        })
        .detach();
    }

    fn spawn_fetch(self: &Rc<Self>, key: SlotKey) {
        let Some(volume) = self.with_slot(key, |slot| slot.vol.name.clone()) else {
            return;
        };
        let core = self.clone();
        glommio::spawn_local(async move {
            let (tx, rx) = flume::bounded(1);
            let request = MapRequest::Fetch {
                volume,
                pg: key.1,
                reply: tx,
            };
            if core.maps.send_async(request).await.is_err() {
                return;
            }
            let Ok(Some(map)) = rx.recv_async().await else {
                return;
            };
            core.feed(key, |slot, now, out| {
                if map.epoch > slot.replica.map().epoch {
                    slot.replica.on_map(now, map, out);
                }
            });
        })
        .detach();
    }
}

/// A new slot: its logs opened and replayed, its replica and healer started.
fn new_slot(
    vol: &Arc<ServedVolume>,
    (pg, m): (u32, Member),
    map: PgMap,
    now: u64,
    quarantined: bool,
    out: &mut Vec<Output>,
) -> Slot {
    // A member that crashed may have missed writes that members on other nodes took; when
    // every up-to-date member is on this node they all crashed together and none is behind
    // another.
    let elsewhere = map.acting().any(|o| {
        vol.members
            .get(o as usize)
            .is_some_and(|s| s.brick.is_none())
    });
    let brick = vol.members.get(m as usize).and_then(|s| s.brick.clone());
    let power_lost = brick.as_ref().is_some_and(|b| b.power_lost());
    if power_lost {
        tracing::warn!(
            vol = vol.id,
            pg,
            "the machine restarted without a clean stop: this member's logs may have lost \
             records, so its heal and the heals it is the source of are full ones"
        );
    }
    let (mut activity, in_doubt) = open_activity(brick.as_deref(), pg);
    let in_doubt = boot_activity(in_doubt, power_lost);
    if power_lost {
        // Written down at once: a crash before the next rewrite must not forget it.
        if let Err(e) = activity.rewrite(&in_doubt) {
            tracing::error!(vol = vol.id, pg, "activity log: {e}");
        }
    }
    let (dirt, state) = open_dirt(brick.as_deref(), pg, m, power_lost);
    let boot = Boot {
        op_base: op_base(),
        // Back from a quarantine (its disk failed): as after a crash of this member alone.
        restarted: quarantined || (!vol.members[m as usize].clean_start && elsewhere),
        activity: in_doubt,
    };
    let replica = Replica::new(pg, m, map, Config::default(), now, boot, out);
    Slot {
        replica,
        healer: Healer::new(pg, m, HealConfig::default(), state),
        vol: vol.clone(),
        ops: HashMap::new(),
        inbox: HashMap::new(),
        dirt,
        activity,
        recent_namespace: RecentNamespace::default(),
        limbo_freeing: Rc::new(Cell::new(false)),
        limbo_aged_at: Instant::now(),
        primary_logged: 0,
        behind_seen: false,
    }
}

/// Opens a slot's activity log; returns it with the ranges it held (a crash left them in
/// doubt). A log that cannot be opened stands for everything.
fn open_activity(brick: Option<&Brick>, pg: u32) -> (ActivityLog, Vec<LockKey>) {
    let Some(brick) = brick else {
        return (ActivityLog::detached(), Vec::new());
    };
    let path = brick.meta_path(&format!("dirt/pg-{pg}.activity"));
    match ActivityLog::open(&path) {
        Ok(found) => found,
        Err(e) => {
            tracing::error!("{}: {e}; its ranges count as everything", path.display());
            (ActivityLog::detached(), vec![LockKey::EVERYTHING])
        }
    }
}

/// Opens a slot's dirt log; a log that cannot be opened leaves the slot recording in memory
/// only (and says so), which heals correctly unless this process dies too.
fn open_dirt(brick: Option<&Brick>, pg: u32, m: Member, power_lost: bool) -> (DirtLog, DirtState) {
    let Some(brick) = brick else {
        return (DirtLog::detached(), DirtState::default());
    };
    let path = brick.meta_path(&format!("dirt/pg-{pg}.log"));
    match DirtLog::open(&path, m, power_lost) {
        Ok(opened) => {
            if opened.corrupt_records > 0 {
                tracing::error!(
                    "{}: {} damaged records skipped; absent members get a full heal",
                    path.display(),
                    opened.corrupt_records
                );
            }
            (opened.log, opened.state)
        }
        Err(e) => {
            tracing::error!("{}: {e}; dirt is kept in memory only", path.display());
            (DirtLog::detached(), DirtState::default())
        }
    }
}

/// Op ids of a new `Replica` start at the wall clock in ms << 20: distinct from any earlier
/// incarnation's unless that one issued a million ops per millisecond.
fn op_base() -> OpId {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1);
    ms << 20
}

/// Members whose brick was replaced (`replace-brick`) hold nothing of what this copy holds:
/// everything is recorded as missed for them. The map marks them fresh, which records the
/// same; this covers a heal that began toward the old brick before this node saw the change.
fn record_replaced(slot: &mut Slot, vol: &ServedVolume) {
    let replaced = slot
        .vol
        .members
        .iter()
        .zip(&vol.members)
        .enumerate()
        .filter(|(_, (was, now))| was.node != now.node || was.path != now.path)
        .fold(0u8, |mask, (m, _)| mask | (1 << m));
    if replaced == 0 || !slot.replica.map().is_up_to_date(slot.replica.me()) {
        return;
    }
    if let Some(w) = slot.healer.record(replaced, &[Dirt::All]) {
        slot.write_dirt(w);
    }
}

/// Records what the op `(origin, op)` changes for the members in `absent`, before the op is
/// applied here (the driver acts on outputs in order).
fn record_dirt(slot: &mut Slot, (origin, op): (Member, OpId), lock: LockKey, absent: u8) {
    let items = if origin == slot.replica.me() {
        slot.ops
            .get(&op)
            .and_then(|p| dirt_of_body(p.body.op, &p.body.payload))
    } else {
        slot.inbox
            .get(&(origin, op))
            .and_then(|b| dirt_of_body(b.op, &b.payload))
            .or_else(|| slot.recent_namespace.dirt_of((origin, op)))
    }
    .unwrap_or_else(|| dirt_of_lock(lock));
    if let Some(w) = slot.healer.record(absent, &items) {
        slot.write_dirt(w);
    }
}

/// Hands a message to a replica, keeping a forward's body until it is applied.
fn deliver(
    slot: &mut Slot,
    now: u64,
    from: Member,
    msg: Msg,
    body: Option<Body>,
    out: &mut Vec<Output>,
) {
    let forwarded = match (&msg, body) {
        (Msg::Forward { op, .. }, Some(body)) => {
            slot.recent_namespace
                .keep((from, *op), body.op, &body.payload);
            slot.inbox.insert((from, *op), body);
            Some(*op)
        }
        _ => None,
    };
    slot.replica.on_message(now, from, msg, out);
    if let Some(op) = forwarded {
        let applying = out.iter().any(
            |o| matches!(o, Output::ApplyForwarded { from: f, op: o } if *f == from && *o == op),
        );
        if !applying {
            slot.inbox.remove(&(from, op)); // a duplicate, or refused
        }
    }
}

fn report(slot: &Slot, now: u64) -> Option<HealReport> {
    let HealProgress {
        epoch,
        source_member,
        targets,
        copied_total_bytes,
    } = slot.healer.progress(now, &slot.replica)?;
    let brick = slot.brick();
    let targets = targets
        .into_iter()
        .map(|t| HealTarget {
            member: t.member,
            state: if t.healing { "healing" } else { "absent" },
            bytes_left: t.bytes_left,
            bytes_copied: t.bytes_copied,
            rate_bytes_s: t.rate_bytes_s,
            namespace_pending: t.namespace_pending,
            files: t
                .files
                .into_iter()
                .map(|(fid, bytes_left, bytes_copied)| HealFile {
                    fid,
                    path: path_of(brick.as_deref(), fid),
                    bytes_left,
                    bytes_copied,
                })
                .collect(),
            error: t.error,
        })
        .collect();
    Some(HealReport {
        volume_id: slot.vol.id,
        volume: slot.vol.name.clone(),
        pg: slot.replica.pg,
        epoch,
        source_member,
        targets,
        copied_total_bytes,
    })
}

fn path_of(brick: Option<&Brick>, fid: u64) -> String {
    let relative = brick.and_then(|b| {
        let p = b.path_of(fid).ok()?;
        Some(format!("/{}", p.strip_prefix(&b.data).ok()?.display()))
    });
    relative.unwrap_or_else(|| format!("{fid:#x}"))
}

/// What applying an op gave, for the replica: in a data PG, a file missing on a member whose
/// namespace is behind (not up to date in PG 0) is a failure of that member, not a refusal.
fn data_outcome(vol: &ServedVolume, (_, pg, member): SlotKey, frame: &[u8]) -> Outcome {
    let outcome = outcome_of(frame);
    if pg == 0 {
        return outcome;
    }
    let namespace_current = vol.pg_maps.first().is_some_and(|m| m.is_up_to_date(member));
    outcome_in_data_pg(outcome, namespace_current)
}

/// The error codes that say the brick's disk fails (not that the op was refused, nor that
/// the volume is full: a full brick answers ENOSPC and stays).
pub(crate) fn is_disk_failure(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Io | ErrorCode::ReadOnly)
}

/// Whether a local apply's reply frame reports a failing disk.
fn disk_failure_of(frame: &[u8]) -> bool {
    status_of(frame).is_some_and(|s| s != 0 && is_disk_failure(ErrorCode::from_code(s)))
}

/// The status of a reply frame; None if it has no valid header.
fn status_of(frame: &[u8]) -> Option<u32> {
    let head = <&[u8; HEADER_BYTES]>::try_from(frame.get(..HEADER_BYTES)?).ok()?;
    Header::parse(head).ok().map(|h| h.status)
}

fn outcome_of(frame: &[u8]) -> Outcome {
    let Some(status) = status_of(frame) else {
        return Outcome::Failed;
    };
    match ErrorCode::from_code(status) {
        _ if status == 0 => Outcome::Ok,
        ErrorCode::Perm
        | ErrorCode::NotFound
        | ErrorCode::Access
        | ErrorCode::Exists
        | ErrorCode::CrossDevice
        | ErrorCode::NotDir
        | ErrorCode::IsDir
        | ErrorCode::Invalid
        | ErrorCode::FileTooBig
        | ErrorCode::NameTooLong
        | ErrorCode::NotEmpty
        | ErrorCode::NotSupported
        | ErrorCode::Stale
        | ErrorCode::Malformed => Outcome::Refused(status),
        _ => Outcome::Failed,
    }
}

/// The id of the entry a successful CREATE, MKDIR or SYMLINK made, from its reply.
fn minted_fid(body_op: BodyOp, frame: &[u8]) -> Option<u64> {
    let creates = matches!(
        body_op,
        BodyOp::Request(op::CREATE | op::MKDIR | op::SYMLINK)
    );
    if !creates || outcome_of(frame) != Outcome::Ok {
        return None;
    }
    brick_wire::Attr::decode_whole(frame.get(HEADER_BYTES..)?)
        .ok()
        .map(|a| a.fid)
}

fn op_error_reply(id: u64, opcode: u16, e: OpError) -> Vec<u8> {
    let (code, why) = match e {
        OpError::NotPrimary { epoch, primary } => (
            ErrorCode::NotPrimary,
            format!("not the primary in epoch {epoch} (primary: member {primary:?})"),
        ),
        OpError::BelowMinSize {
            up_to_date,
            min_size,
        } => (
            ErrorCode::BelowMinSize,
            format!(
                "{up_to_date} up-to-date replicas, the volume needs {min_size} to accept writes"
            ),
        ),
        OpError::Busy => (
            ErrorCode::Unavailable,
            "too many operations in flight on this placement group; retry".into(),
        ),
        OpError::Refused(code) => (ErrorCode::from_code(code), "refused".into()),
        OpError::Unavailable => (
            ErrorCode::Unavailable,
            "the primary's copy failed or the map changed; retry at the new primary".into(),
        ),
    };
    error_reply(id, opcode, code, &why)
}
