//! Drives the replication core (`brick_replication::Replica`, a sans-IO state machine) on one
//! dataplane core: one `Replica` per (volume, PG owned by this core, local member). Client
//! writes and namespace changes are submitted to the PG's primary; the driver turns the
//! machine's outputs into disk I/O (io_uring, through `exec`), peer messages (`peer`, or a
//! direct call when the member is on this node) and cluster-store requests (`MapRequest`, to
//! the management plane), and feeds the results back in. Nothing here blocks: every disk or
//! store action is a spawned task whose completion is one more input.

use crate::core::CoreCtx;
use crate::dirt::{ActivityLog, Dirt, DirtLog, DirtReplay};
use crate::heal::{self, HealSlot};
use crate::{exec, peer, MapRequest, ServeState, ServedVolume};
use brick_replication::{
    Boot, Config, LockKey, Member, Msg, OpError, OpId, Outcome, Output, PgMap, Replica, MEMBERS_MAX,
};
use brick_tuning::{FRAME_PAYLOAD_BYTES_MAX, REPL_TICK_MS};
use brick_wire::{
    encode_frame, error_frame, op, Dec, DecodeError, Enc, ErrorCode, Header, Kind, HEADER_BYTES,
};
use glommio::io::DmaBuffer;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// (volume, PG, local member).
pub(crate) type SlotKey = (u32, u32, Member);

/// What a replicated operation applies on every member: a request as a client sent it, plus
/// the file id the primary minted for a new entry (0: none). Opcode 0 is a no-op (the resync
/// of an in-doubt namespace change, see docs/replication.md).
#[derive(Clone)]
pub(crate) struct Body {
    pub opcode: u16,
    pub minted: u64,
    pub payload: Rc<Vec<u8>>,
    /// A WRITE's data as it was read off the socket, in an aligned DMA buffer.
    pub data_dma: PreparedData,
}

/// A WRITE's data already in an aligned DMA buffer (read off the socket into it,
/// `exec::dispatch_bulk_write`), the same bytes as the data in `Body::payload`. The local
/// O_DIRECT write takes it instead of copying the payload into a new aligned buffer. Clones of
/// a body share it and the first local write takes it; every other use reads `payload`.
#[derive(Clone, Default)]
pub(crate) struct PreparedData(Option<Rc<Cell<Option<DmaBuffer>>>>);

impl PreparedData {
    pub fn new(data: DmaBuffer) -> Self {
        PreparedData(Some(Rc::new(Cell::new(Some(data)))))
    }

    pub fn take(&self) -> Option<DmaBuffer> {
        self.0.as_ref().and_then(|cell| cell.take())
    }
}

pub(crate) const NOOP: u16 = 0;

impl Body {
    pub fn noop() -> Body {
        Body {
            opcode: NOOP,
            minted: 0,
            payload: Rc::new(Vec::new()),
            data_dma: Default::default(),
        }
    }
}

struct PrimaryOp {
    request_id: u64,
    body: Body,
    started: Instant,
    /// The frame the local apply produced (the client's reply when the op succeeds).
    local_reply: Option<Vec<u8>>,
    /// `None` for resync ops, which have no client.
    waiter: Option<flume::Sender<Vec<u8>>>,
}

impl Slot {
    /// The brick of this slot's member (on this node by construction of the slot).
    pub fn brick(&self) -> Option<Arc<brick_store::Brick>> {
        self.vol
            .members
            .get(self.replica.me() as usize)
            .and_then(|s| s.brick.clone())
    }
}

pub(crate) struct Slot {
    pub replica: Replica,
    pub vol: Arc<ServedVolume>,
    ops: HashMap<OpId, PrimaryOp>,
    /// Forwarded bodies received and not yet applied, by (sender, op).
    inbox: HashMap<(Member, OpId), Body>,
    /// What absent members missed (the heal source's record).
    pub dirt: DirtLog,
    /// What this member applied that may not be everywhere yet (its own heal, if it leaves).
    pub activity: ActivityLog,
    /// Namespace bodies applied here lately, by (sender, op): when a member leaves while
    /// they are in doubt, the record names their directories instead of the whole tree.
    recent_namespace: RecentBodies,
    pub heal: HealSlot,
}

/// A bounded memory of recent bodies.
#[derive(Default)]
struct RecentBodies {
    by_op: HashMap<(Member, OpId), Body>,
    order: VecDeque<(Member, OpId)>,
}

const RECENT_NAMESPACE_BODIES_MAX: usize = 1024;
/// Namespace ops run one at a time per PG, so only the last few can be in doubt at a failover.
const NAMESPACE_RESYNC_OPS: usize = 16;

impl RecentBodies {
    /// The directories the last `n` namespace bodies changed.
    fn last_dirs(&self, n: usize) -> Vec<u64> {
        let mut dirs: Vec<u64> = self
            .order
            .iter()
            .rev()
            .take(n)
            .filter_map(|k| self.by_op.get(k))
            .filter_map(heal::dirt_of_body)
            .flatten()
            .filter_map(|d| match d {
                crate::dirt::Dirt::Dir(d) => Some(d),
                _ => None,
            })
            .collect();
        dirs.sort_unstable();
        dirs.dedup();
        dirs
    }

    fn keep(&mut self, key: (Member, OpId), body: Body) {
        if self.order.len() >= RECENT_NAMESPACE_BODIES_MAX {
            if let Some(old) = self.order.pop_front() {
                self.by_op.remove(&old);
            }
        }
        self.order.push_back(key);
        self.by_op.insert(key, body);
    }
}

pub(crate) struct ReplCore {
    slots: RefCell<HashMap<SlotKey, Slot>>,
    started: Instant,
}

impl Default for ReplCore {
    fn default() -> ReplCore {
        ReplCore {
            slots: RefCell::new(HashMap::new()),
            started: Instant::now(),
        }
    }
}

impl ReplCore {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

pub(crate) fn now_ms(ctx: &CoreCtx) -> u64 {
    ctx.repl.now_ms()
}

pub(crate) fn slot_keys(ctx: &CoreCtx) -> Vec<SlotKey> {
    ctx.repl.slots.borrow().keys().copied().collect()
}

/// Opens a slot's activity log; returns it with the ranges it held (a crash left them in
/// doubt). A log that cannot be opened stands for everything.
fn open_activity(vol: &ServedVolume, pg: u32, m: Member) -> (ActivityLog, Vec<LockKey>) {
    let Some(brick) = vol.members.get(m as usize).and_then(|s| s.brick.as_ref()) else {
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
fn open_dirt(vol: &ServedVolume, pg: u32, m: Member) -> DirtLog {
    let Some(brick) = vol.members.get(m as usize).and_then(|s| s.brick.as_ref()) else {
        return DirtLog::detached();
    };
    let path = brick.meta_path(&format!("dirt/pg-{pg}.log"));
    match DirtLog::open(&path) {
        Ok((
            log,
            DirtReplay {
                corrupt_records: 0, ..
            },
        )) => log,
        Ok((log, replay)) => {
            tracing::error!(
                "{}: {} damaged records skipped; absent members get a full heal",
                path.display(),
                replay.corrupt_records
            );
            log
        }
        Err(e) => {
            tracing::error!("{}: {e}; dirt is kept in memory only", path.display());
            DirtLog::detached()
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

/// Creates, updates and drops this core's replicas to match a newly published state.
pub(crate) fn sync_slots(ctx: &Rc<CoreCtx>, state: &ServeState) {
    let now = ctx.repl.now_ms();
    let mut started: Vec<(SlotKey, Vec<Output>)> = Vec::new();
    {
        let mut slots = ctx.repl.slots.borrow_mut();
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
        for vol in state.volumes.values() {
            let pgs = (ctx.core..vol.pg_maps.len()).step_by(ctx.ncores);
            for pg in pgs {
                let map = vol.pg_maps[pg];
                for (m, _) in vol.local_members() {
                    if m >= map.members {
                        continue;
                    }
                    let key = (vol.id, pg as u32, m);
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
                            // A member that crashed may have missed writes that members on
                            // other nodes took; when every up-to-date member is on this node
                            // they all crashed together and none is behind another.
                            let elsewhere = map.acting().any(|o| {
                                vol.members
                                    .get(o as usize)
                                    .is_some_and(|s| s.brick.is_none())
                            });
                            let (activity, in_doubt) = open_activity(vol, pg as u32, m);
                            let boot = Boot {
                                op_base: op_base(),
                                restarted: !vol.members[m as usize].clean_start && elsewhere,
                                activity: in_doubt,
                            };
                            let cfg = Config::default();
                            let replica = Replica::new(pg as u32, m, map, cfg, now, boot, &mut out);
                            slots.insert(
                                key,
                                Slot {
                                    replica,
                                    vol: vol.clone(),
                                    ops: HashMap::new(),
                                    inbox: HashMap::new(),
                                    dirt: open_dirt(vol, pg as u32, m),
                                    activity,
                                    recent_namespace: RecentBodies::default(),
                                    heal: HealSlot::default(),
                                },
                            );
                        }
                    }
                    if !out.is_empty() {
                        started.push((key, out));
                    }
                }
            }
        }
    }
    for (key, out) in started {
        drive(ctx, key, out);
    }
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
    if let Err(e) = slot.dirt.record(replaced, Dirt::All) {
        tracing::error!(pg = slot.replica.pg, "dirt log: {e}; kept in memory");
        for m in (0..MEMBERS_MAX).filter(|m| replaced & (1 << m) != 0) {
            slot.dirt.members[m as usize].all = true;
        }
    }
}

/// Gives every replica of this core the time, every `REPL_TICK_MS`.
pub(crate) async fn tick_loop(ctx: Rc<CoreCtx>) {
    loop {
        glommio::timer::sleep(Duration::from_millis(REPL_TICK_MS)).await;
        let keys: Vec<SlotKey> = ctx.repl.slots.borrow().keys().copied().collect();
        for key in keys {
            feed(&ctx, key, |slot, now, out| slot.replica.tick(now, out));
        }
    }
}

/// Runs `f` on one replica with the time, then acts on what it asked for.
fn feed(ctx: &Rc<CoreCtx>, key: SlotKey, f: impl FnOnce(&mut Slot, u64, &mut Vec<Output>)) {
    let now = ctx.repl.now_ms();
    let mut out = Vec::new();
    {
        let mut slots = ctx.repl.slots.borrow_mut();
        let Some(slot) = slots.get_mut(&key) else {
            return; // the volume stopped meanwhile
        };
        f(slot, now, &mut out);
    }
    drive(ctx, key, out);
}

pub(crate) fn with_slot<R>(
    ctx: &CoreCtx,
    key: SlotKey,
    f: impl FnOnce(&mut Slot) -> R,
) -> Option<R> {
    ctx.repl.slots.borrow_mut().get_mut(&key).map(f)
}

/// The local member holding the primary copy of a PG, or the error to answer with.
pub(crate) fn local_primary(ctx: &CoreCtx, vol: &ServedVolume, pg: u32) -> Result<Member, String> {
    let slots = ctx.repl.slots.borrow();
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

pub(crate) struct Submission {
    pub request_id: u64,
    pub body: Body,
    pub lock: LockKey,
    pub local_first: bool,
}

/// Runs one client write or namespace change through its PG's primary on this core and
/// returns the reply frame once every up-to-date member has it (or it failed).
pub(crate) async fn submit(
    ctx: &Rc<CoreCtx>,
    vol: &ServedVolume,
    pg: u32,
    sub: Submission,
) -> Vec<u8> {
    let (id, opcode) = (sub.request_id, sub.body.opcode);
    let member = match local_primary(ctx, vol, pg) {
        Ok(m) => m,
        Err(why) => return error_reply(id, opcode, ErrorCode::NotPrimary, &why),
    };
    let key = (vol.id, pg, member);
    let (tx, rx) = flume::bounded(1);
    let now = ctx.repl.now_ms();
    let mut out = Vec::new();
    let submitted = with_slot(ctx, key, |slot| {
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
        None => return error_reply(id, opcode, ErrorCode::NotPrimary, "the PG moved meanwhile"),
        Some(Err(e)) => return op_error_reply(id, opcode, e),
        Some(Ok(())) => {}
    }
    drive(ctx, key, out);
    rx.recv_async().await.unwrap_or_else(|_| {
        error_reply(
            id,
            opcode,
            ErrorCode::Unavailable,
            "the volume stopped while the operation ran",
        )
    })
}

/// Acts on a replica's outputs, and on what acting on them makes other local replicas output.
pub(crate) fn drive(ctx: &Rc<CoreCtx>, key: SlotKey, outputs: Vec<Output>) {
    let mut work: VecDeque<(SlotKey, Output)> = outputs.into_iter().map(|o| (key, o)).collect();
    while let Some((key, output)) = work.pop_front() {
        match output {
            Output::ApplyLocal { op } => spawn_apply_local(ctx, key, op),
            Output::ReadForResync { op, lock } => spawn_resync_read(ctx, key, op, lock),
            Output::ApplyForwarded { from, op } => spawn_apply_forwarded(ctx, key, from, op),
            Output::Send { to, msg } => send(ctx, key, to, msg, &mut work),
            Output::Reply { op, result } => reply(ctx, key, op, result),
            Output::RecordDirty {
                origin,
                op,
                lock,
                absent,
            } => record_dirt(ctx, key, (origin, op), lock, absent),
            Output::RecordActivity { lock } => {
                let appended = with_slot(ctx, key, |s| {
                    let replica = &s.replica;
                    s.activity.append(lock, || replica.activity_keys())
                });
                if let Some(Err(e)) = appended {
                    tracing::error!(vol = key.0, pg = key.1, "activity log: {e}");
                }
            }
            Output::Propose { map } => spawn_propose(ctx, key, map),
            Output::FetchMap => spawn_fetch(ctx, key),
        }
    }
}

/// Appends what the op `(origin, op)` changes to the dirt log for the members in `absent`,
/// before the op is applied here (the caller acts on outputs in order).
fn record_dirt(
    ctx: &CoreCtx,
    key: SlotKey,
    (origin, op): (Member, OpId),
    lock: LockKey,
    absent: u8,
) {
    with_slot(ctx, key, |slot| {
        let body = if origin == key.2 {
            slot.ops.get(&op).map(|p| p.body.clone())
        } else {
            slot.inbox
                .get(&(origin, op))
                .or_else(|| slot.recent_namespace.by_op.get(&(origin, op)))
                .cloned()
        };
        let dirt = body
            .and_then(|b| heal::dirt_of_body(&b))
            .unwrap_or_else(|| heal::dirt_of_lock(lock));
        for d in dirt {
            if let Err(e) = slot.dirt.record(absent, d) {
                tracing::error!(vol = key.0, pg = key.1, "dirt log: {e}; full heal needed");
                for m in 0..MEMBERS_MAX {
                    if absent & (1 << m) != 0 {
                        slot.dirt.members[m as usize].all = true;
                    }
                }
            }
        }
    });
}

/// An FSYNC makes the dirt recorded so far durable too (it describes the data being synced).
fn sync_dirt_before_fsync(ctx: &CoreCtx, key: SlotKey, opcode: u16) {
    if opcode != op::FSYNC {
        return;
    }
    if let Some(Err(e)) = with_slot(ctx, key, |slot| {
        slot.dirt.sync().and_then(|()| slot.activity.sync())
    }) {
        tracing::error!(vol = key.0, pg = key.1, "dirt log sync: {e}");
    }
}

fn spawn_apply_local(ctx: &Rc<CoreCtx>, key: SlotKey, op: OpId) {
    let found = with_slot(ctx, key, |slot| {
        let p = slot.ops.get(&op)?;
        Some((slot.vol.clone(), p.request_id, p.body.clone()))
    })
    .flatten();
    let Some((vol, request_id, body)) = found else {
        return;
    };
    sync_dirt_before_fsync(ctx, key, body.opcode);
    let ctx = ctx.clone();
    glommio::spawn_local(async move {
        let frame = exec::apply(&ctx, &vol, key.2, request_id, &body).await;
        let outcome = outcome_of(&frame);
        let minted = minted_fid(body.opcode, &frame);
        feed(&ctx, key, |slot, now, out| {
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

/// A namespace listing that could not be read is sent as a no-op: never a reason to fail
/// this member (the reason is logged, and a heal keeps its dirt).
fn body_or_noop(
    key: SlotKey,
    read: Option<Result<Body, String>>,
    what: &str,
) -> Result<Body, String> {
    match read {
        Some(Ok(body)) => Ok(body),
        Some(Err(why)) => {
            tracing::warn!(vol = key.0, pg = key.1, "{what}: {why}");
            Ok(Body::noop())
        }
        None => Err("the volume stopped".to_string()),
    }
}

fn spawn_resync_read(ctx: &Rc<CoreCtx>, key: SlotKey, op: OpId, lock: LockKey) {
    let Some(vol) = with_slot(ctx, key, |slot| slot.vol.clone()) else {
        return;
    };
    let ctx = ctx.clone();
    glommio::spawn_local(async move {
        let read = if lock == LockKey::EVERYTHING {
            // A heal's namespace catch-up; one that cannot be read is sent empty (the heal
            // reports why and keeps its dirt), never failing this member.
            let catch_up = with_slot(&ctx, key, |slot| heal::catch_up_read(slot, op));
            body_or_noop(key, catch_up, "heal: namespace catch-up not read")
        } else if lock == LockKey::NAMESPACE {
            // An in-doubt namespace change: make the directories the last namespace ops
            // touched identical to this (the new primary's) copy on every member.
            let body = with_slot(&ctx, key, |slot| {
                let dirs = slot.recent_namespace.last_dirs(NAMESPACE_RESYNC_OPS);
                heal::namespace_resync_body(slot, &dirs)
            });
            body_or_noop(key, body, "namespace resync skipped")
        } else if with_slot(&ctx, key, |slot| heal::is_handoff(slot, op)) == Some(true) {
            let body = with_slot(&ctx, key, |slot| {
                let targets = slot.heal.plans.get(&op).map_or(0, |p| p.targets);
                heal::handoff_body(slot, targets)
            });
            body.ok_or_else(|| "the volume stopped".to_string())
        } else {
            exec::resync_body(&ctx, &vol, key.2, lock).await
        };
        let (body, outcome) = match read {
            Ok(body) => (body, Outcome::Ok),
            Err(e) => {
                tracing::warn!(vol = vol.id, pg = key.1, "resync read failed: {e}");
                (Body::noop(), Outcome::Failed)
            }
        };
        feed(&ctx, key, |slot, now, out| {
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

fn spawn_apply_forwarded(ctx: &Rc<CoreCtx>, key: SlotKey, from: Member, op: OpId) {
    let found = with_slot(ctx, key, |slot| {
        (slot.vol.clone(), slot.inbox.remove(&(from, op)))
    });
    let Some((vol, body)) = found else {
        return;
    };
    if let Some(b) = &body {
        sync_dirt_before_fsync(ctx, key, b.opcode);
        if b.opcode == heal::HEAL_DIRT {
            let mut out = Vec::new();
            let now = ctx.repl.now_ms();
            with_slot(ctx, key, |slot| {
                let outcome = if heal::apply_handoff(slot, &b.payload) {
                    Outcome::Ok
                } else {
                    Outcome::Refused(ErrorCode::Malformed.code())
                };
                slot.replica
                    .on_forward_applied(now, from, op, outcome, &mut out);
            });
            drive(ctx, key, out);
            return;
        }
    }
    let ctx = ctx.clone();
    glommio::spawn_local(async move {
        let outcome = match body {
            Some(body) => {
                let frame = exec::apply(&ctx, &vol, key.2, 0, &body).await;
                let outcome = outcome_of(&frame);
                if outcome != Outcome::Ok {
                    let why =
                        String::from_utf8_lossy(frame.get(HEADER_BYTES..).unwrap_or_default());
                    tracing::warn!(
                        vol = vol.id,
                        pg = key.1,
                        op,
                        opcode = body.opcode,
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
        feed(&ctx, key, |slot, now, out| {
            slot.replica.on_forward_applied(now, from, op, outcome, out)
        });
    })
    .detach();
}

fn send(
    ctx: &Rc<CoreCtx>,
    key: SlotKey,
    to: Member,
    msg: Msg,
    work: &mut VecDeque<(SlotKey, Output)>,
) {
    let (vol_id, pg, from) = key;
    let found = with_slot(ctx, key, |slot| {
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
        let now = ctx.repl.now_ms();
        let mut out = Vec::new();
        with_slot(ctx, target, |t| deliver(t, now, from, msg, body, &mut out));
        work.extend(out.into_iter().map(|o| (target, o)));
    } else {
        let frame = encode_repl(vol_id, pg, from, to, &msg, body.as_ref());
        peer::send(ctx, &spec.addr, frame);
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
            if is_namespace_opcode(body.opcode) {
                slot.recent_namespace.keep((from, *op), body.clone());
            }
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

fn is_namespace_opcode(opcode: u16) -> bool {
    matches!(
        opcode,
        op::CREATE | op::MKDIR | op::SYMLINK | op::UNLINK | op::RMDIR | op::RENAME
    )
}

fn reply(ctx: &CoreCtx, key: SlotKey, op: OpId, result: Result<(), OpError>) {
    let removed = with_slot(ctx, key, |slot| {
        heal::on_done(slot, op, result.is_ok());
        let p = slot.ops.remove(&op);
        if let Some(p) = p.as_ref().filter(|p| p.waiter.is_some()) {
            let us = p.started.elapsed().as_micros() as f64;
            slot.heal.note_client_latency(us);
        }
        p
    });
    let Some(Some(p)) = removed else {
        return;
    };
    let Some(waiter) = p.waiter else { return };
    let (id, opcode) = (p.request_id, p.body.opcode);
    let frame = match (result, p.local_reply) {
        (Ok(()), Some(frame)) | (Err(OpError::Refused(_)), Some(frame)) => frame,
        (Ok(()), None) => error_reply(id, opcode, ErrorCode::Internal, "no local result"),
        (Err(e), _) => op_error_reply(id, opcode, e),
    };
    let _ = waiter.send(frame);
}

fn spawn_propose(ctx: &Rc<CoreCtx>, key: SlotKey, map: PgMap) {
    let Some(volume) = with_slot(ctx, key, |slot| slot.vol.name.clone()) else {
        return;
    };
    let ctx = ctx.clone();
    glommio::spawn_local(async move {
        let (tx, rx) = flume::bounded(1);
        let request = MapRequest::Propose {
            volume,
            pg: key.1,
            map,
            reply: tx,
        };
        let result = match ctx.maps.send_async(request).await {
            Ok(()) => rx.recv_async().await.unwrap_or(Err(None)),
            Err(_) => Err(None),
        };
        feed(&ctx, key, |slot, now, out| {
            slot.replica.on_proposal_result(now, result, out)
        });
    })
    .detach();
}

fn spawn_fetch(ctx: &Rc<CoreCtx>, key: SlotKey) {
    let Some(volume) = with_slot(ctx, key, |slot| slot.vol.name.clone()) else {
        return;
    };
    let ctx = ctx.clone();
    glommio::spawn_local(async move {
        let (tx, rx) = flume::bounded(1);
        let request = MapRequest::Fetch {
            volume,
            pg: key.1,
            reply: tx,
        };
        if ctx.maps.send_async(request).await.is_err() {
            return;
        }
        let Ok(Some(map)) = rx.recv_async().await else {
            return;
        };
        feed(&ctx, key, |slot, now, out| {
            if map.epoch > slot.replica.map().epoch {
                slot.replica.on_map(now, map, out);
            }
        });
    })
    .detach();
}

/// A replication message from another node (opcode REPL), on the core owning its PG.
pub(crate) fn on_peer_frame(ctx: &Rc<CoreCtx>, payload: &[u8]) -> Result<(), DecodeError> {
    let m = decode_repl(payload)?;
    let key = (m.vol, m.pg, m.to);
    let now = ctx.repl.now_ms();
    let mut out = Vec::new();
    with_slot(ctx, key, |slot| {
        deliver(slot, now, m.from, m.msg, m.body, &mut out)
    });
    drive(ctx, key, out);
    Ok(())
}

/// The PG a REPL payload is about (it decides the core), if the payload is long enough.
pub(crate) fn repl_pg(payload: &[u8]) -> Option<u32> {
    let bytes = payload.get(4..8)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn outcome_of(frame: &[u8]) -> Outcome {
    let Some(head) = frame.get(..HEADER_BYTES) else {
        return Outcome::Failed;
    };
    let Ok(header) = Header::parse(head.try_into().unwrap_or(&[0; HEADER_BYTES])) else {
        return Outcome::Failed;
    };
    match ErrorCode::from_code(header.status) {
        _ if header.status == 0 => Outcome::Ok,
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
        | ErrorCode::Malformed => Outcome::Refused(header.status),
        _ => Outcome::Failed,
    }
}

/// The id of the entry a successful CREATE, MKDIR or SYMLINK made, from its reply.
fn minted_fid(opcode: u16, frame: &[u8]) -> Option<u64> {
    if !matches!(opcode, op::CREATE | op::MKDIR | op::SYMLINK) || outcome_of(frame) != Outcome::Ok {
        return None;
    }
    brick_wire::Attr::decode_whole(frame.get(HEADER_BYTES..)?)
        .ok()
        .map(|a| a.fid)
}

pub(crate) fn error_reply(id: u64, opcode: u16, code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    error_frame(&mut out, id, opcode, code, message);
    out
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

// REPL payload (docs/replication.md, "Wire format"):
// vol u32 | pg u32 | from u8 | to u8 | kind u8 | fields of the kind

const KIND_FORWARD: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_NACK: u8 = 3;
const KIND_HEARTBEAT: u8 = 4;
const KIND_HEARTBEAT_ACK: u8 = 5;
const KIND_QUERY: u8 = 6;
const KIND_IN_DOUBT: u8 = 7;
const KIND_MAP: u8 = 8;

/// Keys one IN_DOUBT message may carry (a PG's op window).
const IN_DOUBT_KEYS_MAX: u32 = 4096;

struct ReplMessage {
    vol: u32,
    pg: u32,
    from: Member,
    to: Member,
    msg: Msg,
    body: Option<Body>,
}

fn encode_lock(e: &mut Enc, k: &LockKey) {
    e.u64(k.fid).u64(k.start).u64(k.end);
}

fn decode_lock(d: &mut Dec) -> Result<LockKey, DecodeError> {
    let (fid, start, end) = (d.u64("lock fid")?, d.u64("lock start")?, d.u64("lock end")?);
    if start >= end {
        return Err(DecodeError::BadValue("lock range (empty)", start));
    }
    Ok(LockKey { fid, start, end })
}

fn decode_keys(d: &mut Dec) -> Result<Vec<LockKey>, DecodeError> {
    let n = d.u32("key count")?;
    if n > IN_DOUBT_KEYS_MAX {
        return Err(DecodeError::BadValue("in-doubt key count", n as u64));
    }
    let mut keys = Vec::with_capacity(n as usize);
    for _ in 0..n {
        keys.push(decode_lock(d)?);
    }
    Ok(keys)
}

fn encode_repl(
    vol: u32,
    pg: u32,
    from: Member,
    to: Member,
    msg: &Msg,
    body: Option<&Body>,
) -> Vec<u8> {
    let body_len = body.map_or(0, |b| b.payload.len());
    let mut e = Enc::with_capacity(96 + body_len);
    e.u32(vol).u32(pg).u8(from).u8(to);
    match msg {
        Msg::Forward {
            epoch,
            op,
            lock,
            watermark,
            absent,
        } => {
            e.u8(KIND_FORWARD).u64(*epoch).u64(*op);
            encode_lock(&mut e, lock);
            e.u64(*watermark).u8(*absent);
            let (opcode, minted, payload) = match body {
                Some(b) => (b.opcode, b.minted, b.payload.as_slice()),
                None => (NOOP, 0, &[][..]),
            };
            e.u32(opcode as u32).u64(minted).bytes(payload);
        }
        Msg::Ack { epoch, op, outcome } => {
            let (kind, code) = match outcome {
                Outcome::Ok => (0u8, 0u32),
                Outcome::Refused(c) => (1, *c),
                Outcome::Failed => (2, 0),
            };
            e.u8(KIND_ACK).u64(*epoch).u64(*op).u8(kind).u32(code);
        }
        Msg::Nack { epoch, op } => {
            e.u8(KIND_NACK).u64(*epoch).u64(*op);
        }
        Msg::Heartbeat { epoch, watermark } => {
            e.u8(KIND_HEARTBEAT).u64(*epoch).u64(*watermark);
        }
        Msg::HeartbeatAck { epoch, in_doubt } => {
            e.u8(KIND_HEARTBEAT_ACK).u64(*epoch);
            match in_doubt {
                None => {
                    e.u8(0);
                }
                Some(keys) => {
                    e.u8(1).u32(keys.len() as u32);
                    for k in keys {
                        encode_lock(&mut e, k);
                    }
                }
            }
        }
        Msg::Query { epoch } => {
            e.u8(KIND_QUERY).u64(*epoch);
        }
        Msg::InDoubt { epoch, keys } => {
            e.u8(KIND_IN_DOUBT).u64(*epoch).u32(keys.len() as u32);
            for k in keys {
                encode_lock(&mut e, k);
            }
        }
        Msg::Map { map } => {
            e.u8(KIND_MAP)
                .u64(map.epoch)
                .u8(map.members)
                .u8(map.up_to_date);
            e.u8(map.healing)
                .u8(map.min_size)
                .u8(map.preferred)
                .u8(map.fresh);
        }
    }
    let header = Header::new(Kind::Request, op::REPL, 0, e.buf.len() as u32, 0);
    let mut out = Vec::with_capacity(HEADER_BYTES + e.buf.len());
    encode_frame(&mut out, header, &e.buf);
    out
}

fn decode_repl(payload: &[u8]) -> Result<ReplMessage, DecodeError> {
    let mut d = Dec::new(payload);
    let (vol, pg, from, to) = (d.u32("vol")?, d.u32("pg")?, d.u8("from")?, d.u8("to")?);
    if from >= MEMBERS_MAX || to >= MEMBERS_MAX || from == to {
        return Err(DecodeError::BadValue("member", from.max(to) as u64));
    }
    let mut body = None;
    let msg = match d.u8("kind")? {
        KIND_FORWARD => {
            let (epoch, op) = (d.u64("epoch")?, d.u64("op")?);
            let lock = decode_lock(&mut d)?;
            let watermark = d.u64("watermark")?;
            let absent = d.u8("absent")?;
            let opcode = u16::try_from(d.u32("opcode")?)
                .map_err(|_| DecodeError::BadValue("opcode", u16::MAX as u64 + 1))?;
            let minted = d.u64("minted")?;
            let bytes = d.bytes("body", FRAME_PAYLOAD_BYTES_MAX as usize)?;
            body = Some(Body {
                opcode,
                minted,
                payload: Rc::new(bytes.to_vec()),
                data_dma: Default::default(),
            });
            Msg::Forward {
                epoch,
                op,
                lock,
                watermark,
                absent,
            }
        }
        KIND_ACK => {
            let (epoch, op) = (d.u64("epoch")?, d.u64("op")?);
            let outcome = match (d.u8("outcome")?, d.u32("code")?) {
                (0, _) => Outcome::Ok,
                (1, code) => Outcome::Refused(code),
                (2, _) => Outcome::Failed,
                (other, _) => return Err(DecodeError::BadValue("outcome", other as u64)),
            };
            Msg::Ack { epoch, op, outcome }
        }
        KIND_NACK => Msg::Nack {
            epoch: d.u64("epoch")?,
            op: d.u64("op")?,
        },
        KIND_HEARTBEAT => Msg::Heartbeat {
            epoch: d.u64("epoch")?,
            watermark: d.u64("watermark")?,
        },
        KIND_HEARTBEAT_ACK => {
            let epoch = d.u64("epoch")?;
            let in_doubt = match d.u8("in-doubt flag")? {
                0 => None,
                1 => Some(decode_keys(&mut d)?),
                other => return Err(DecodeError::BadValue("in-doubt flag", other as u64)),
            };
            Msg::HeartbeatAck { epoch, in_doubt }
        }
        KIND_QUERY => Msg::Query {
            epoch: d.u64("epoch")?,
        },
        KIND_IN_DOUBT => {
            let epoch = d.u64("epoch")?;
            let keys = decode_keys(&mut d)?;
            Msg::InDoubt { epoch, keys }
        }
        KIND_MAP => {
            let map = PgMap {
                epoch: d.u64("epoch")?,
                members: d.u8("members")?,
                up_to_date: d.u8("up-to-date mask")?,
                healing: d.u8("healing mask")?,
                min_size: d.u8("min_size")?,
                preferred: d.u8("preferred")?,
                fresh: d.u8("fresh mask")?,
            };
            if !map.is_valid() {
                return Err(DecodeError::BadValue("pg map", map.epoch));
            }
            Msg::Map { map }
        }
        other => {
            return Err(DecodeError::BadValue(
                "replication message kind",
                other as u64,
            ))
        }
    };
    d.finish()?;
    Ok(ReplMessage {
        vol,
        pg,
        from,
        to,
        msg,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(msg: Msg, body: Option<Body>) {
        let frame = encode_repl(7, 3, 1, 2, &msg, body.as_ref());
        let payload = &frame[HEADER_BYTES..];
        assert_eq!(repl_pg(payload), Some(3));
        let m = decode_repl(payload).expect("decodes");
        assert_eq!((m.vol, m.pg, m.from, m.to), (7, 3, 1, 2));
        assert_eq!(m.msg, msg);
        assert_eq!(
            m.body.map(|b| (b.opcode, b.minted, b.payload.to_vec())),
            body.map(|b| (b.opcode, b.minted, b.payload.to_vec()))
        );
    }

    #[test]
    fn every_message_kind_roundtrips() {
        let lock = LockKey::range(9 << 48, 4096, 4096);
        let body = Body {
            opcode: op::WRITE,
            minted: 0,
            payload: Rc::new(vec![1, 2, 3]),
            data_dma: Default::default(),
        };
        roundtrip(
            Msg::Forward {
                epoch: 4,
                op: 11,
                lock,
                watermark: 10,
                absent: 0b100,
            },
            Some(body),
        );
        for outcome in [Outcome::Ok, Outcome::Refused(17), Outcome::Failed] {
            roundtrip(
                Msg::Ack {
                    epoch: 4,
                    op: 11,
                    outcome,
                },
                None,
            );
        }
        roundtrip(Msg::Nack { epoch: 5, op: 1 }, None);
        roundtrip(
            Msg::Heartbeat {
                epoch: 5,
                watermark: 3,
            },
            None,
        );
        roundtrip(
            Msg::HeartbeatAck {
                epoch: 5,
                in_doubt: None,
            },
            None,
        );
        roundtrip(
            Msg::HeartbeatAck {
                epoch: 5,
                in_doubt: Some(vec![lock, LockKey::NAMESPACE]),
            },
            None,
        );
        roundtrip(Msg::Query { epoch: 6 }, None);
        roundtrip(
            Msg::InDoubt {
                epoch: 6,
                keys: vec![lock, LockKey::NAMESPACE, LockKey::whole_file(5)],
            },
            None,
        );
        let map = PgMap {
            epoch: 9,
            members: 3,
            up_to_date: 0b011,
            healing: 0b100,
            min_size: 2,
            preferred: 1,
            fresh: 0b100,
        };
        roundtrip(Msg::Map { map }, None);
        let invalid = PgMap {
            up_to_date: 0,
            ..map
        };
        let frame = encode_repl(1, 0, 0, 1, &Msg::Map { map: invalid }, None);
        assert!(
            decode_repl(&frame[HEADER_BYTES..]).is_err(),
            "a map nobody is up to date in"
        );
    }

    #[test]
    fn bad_payloads_are_refused_not_trusted() {
        let frame = encode_repl(1, 0, 0, 1, &Msg::Query { epoch: 1 }, None);
        let payload = &frame[HEADER_BYTES..];
        for cut in 0..payload.len() {
            assert!(decode_repl(&payload[..cut]).is_err(), "cut at {cut}");
        }
        let mut same_member = payload.to_vec();
        same_member[9] = 0; // to == from
        assert!(decode_repl(&same_member).is_err());
        let mut unknown = payload.to_vec();
        unknown[10] = 99;
        assert!(decode_repl(&unknown).is_err());
        let mut many = Enc::default();
        many.u32(1)
            .u32(0)
            .u8(0)
            .u8(1)
            .u8(KIND_IN_DOUBT)
            .u64(1)
            .u32(u32::MAX);
        assert!(decode_repl(&many.buf).is_err());
    }
}
