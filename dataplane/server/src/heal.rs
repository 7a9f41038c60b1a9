//! Heal (design decision 8 of the brief): the primary of a PG copies to a member that came
//! back exactly what that member missed, as recorded in the dirt log (`dirt.rs`), while
//! client I/O continues.
//!
//! - A member that answers the primary's heartbeats again joins the PG's `healing` set (a new
//!   epoch): from then on it receives every new operation, so no new dirt accumulates. Data
//!   PGs wait until the member is up to date in PG 0, which holds the namespace.
//! - Its first operation is the namespace catch-up (`LockKey::EVERYTHING`, so nothing else
//!   runs meanwhile): the directories it missed changes in, listed from this copy, which the
//!   member makes its own directories match.
//! - Then each recorded attribute change and byte range is copied as a heal op: the range is
//!   read here under its range lock and forwarded to the healing member only. A client write
//!   to that range waits for that one copy; writes elsewhere do not.
//! - When nothing is left the member becomes up to date (another epoch) and every member
//!   forgets its dirt.
//!
//! One worker per (slot, healing member) runs at most `HEAL_WINDOW_MAX` copies at once,
//! halving that window while client latency on the PG rises (adaptive default), or paced to
//! the volume's `heal.rate` bytes per second when one is set.

use crate::core::CoreCtx;
use crate::dirt::{Dirt, MemberDirt};
use crate::repl::{self, Body, SlotKey};
use crate::{HealFile, HealReport, HealTarget};
use brick_replication::{LockKey, Member, OpError, OpId, MEMBERS_MAX};
use brick_store::{Brick, FsError, HealEntry};
use brick_tuning::FRAME_PAYLOAD_BYTES_MAX;
use brick_wire::{Dec, DecodeError, Enc, ErrorCode, FileId, FileKind, Request, ROOT_FILE_ID};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The body opcode of a namespace catch-up (only ever inside REPL forwards between nodes).
pub(crate) const HEAL_NAMESPACE: u16 = 0xFF01;
/// The body opcode of a dirt handoff: dirt-log records (docs/disk-format.md §6) of the members
/// still away, which a member about to be up to date must know to be their heal source.
pub(crate) const HEAL_DIRT: u16 = 0xFF02;
/// The lock of a dirt handoff: a key no file or namespace op uses.
const HANDOFF_LOCK: LockKey = LockKey {
    fid: u64::MAX - 1,
    start: 0,
    end: 1,
};
pub(crate) const HEAL_TICK_MS: u64 = 100;
/// One heal copy moves at most this much.
pub(crate) const HEAL_CHUNK_BYTES: u64 = 256 * 1024;
pub(crate) const HEAL_WINDOW_MAX: usize = 2;
/// PGs one core heals at once (their map changes spread out instead of all at once).
const HEALING_PGS_MAX: usize = 8;
const REPORT_INTERVAL_MS: u64 = 500;
const REPORT_FILES_MAX: usize = 16;

/// What one heal op copies.
#[derive(Debug, Clone)]
pub(crate) enum Work {
    CatchUp { dirs: Vec<FileId>, tree: bool },
    Handoff,
    Attr(FileId),
    Range { fid: FileId, start: u64, end: u64 },
}

pub(crate) struct Plan {
    pub targets: u8,
    pub work: Work,
    pub done: Option<flume::Sender<bool>>,
    /// The catch-up could not be read: its dirt stays.
    pub failed: Option<String>,
}

#[derive(Default)]
pub(crate) struct TargetStats {
    pub bytes_copied: u64,
    pub started: Option<Instant>,
    pub error: Option<String>,
    pub copied_by_file: HashMap<FileId, u64>,
}

/// Heal state of one slot (volume, PG, local member).
#[derive(Default)]
pub(crate) struct HealSlot {
    pub plans: HashMap<OpId, Plan>,
    pub running: u8,
    pub stats: [TargetStats; MEMBERS_MAX as usize],
    /// Client op latency, fast and slow moving averages (µs): the adaptive throttle.
    pub client_lat_fast_us: f64,
    pub client_lat_slow_us: f64,
    /// Bytes currently being copied per target (taken out of the dirt, not yet done).
    pub in_flight: [u64; MEMBERS_MAX as usize],
    /// When a heal of each member last began: a heal that failed is retried after
    /// `HEAL_RETRY_MS`, not in a loop of epochs.
    pub began: [Option<Instant>; MEMBERS_MAX as usize],
    /// Bytes copied by every heal of this slot since the process started.
    pub copied_total_bytes: u64,
    /// Members that got this source's dirt of the others in their current heal.
    pub handed_off: u8,
}

const HEAL_RETRY_MS: u64 = 1000;

impl HealSlot {
    pub fn note_client_latency(&mut self, us: f64) {
        if self.client_lat_slow_us == 0.0 {
            self.client_lat_slow_us = us;
            self.client_lat_fast_us = us;
        }
        self.client_lat_fast_us += (us - self.client_lat_fast_us) * 0.2;
        self.client_lat_slow_us += (us - self.client_lat_slow_us) * 0.01;
    }

    fn clients_suffer(&self) -> bool {
        self.client_lat_slow_us > 0.0 && self.client_lat_fast_us > 1.5 * self.client_lat_slow_us
    }
}

/// What changing data by this body leaves for a member that missed it; `None` if unknown.
pub(crate) fn dirt_of_body(body: &Body) -> Option<Vec<Dirt>> {
    if body.opcode == repl::NOOP {
        return Some(Vec::new());
    }
    if body.opcode == HEAL_NAMESPACE {
        let dirs = decode_catch_up(&body.payload).ok()?;
        return Some(dirs.into_iter().map(|(d, _)| Dirt::Dir(d)).collect());
    }
    let req = Request::decode(body.opcode, &body.payload).ok()?;
    Some(match req {
        Request::Write {
            fid, offset, data, ..
        } => vec![Dirt::range(fid, offset, data.len() as u64)],
        Request::SetAttr { fid, attr, .. } => {
            let mut out = vec![Dirt::Attr(fid)];
            if let Some(size) = attr.size {
                out.push(Dirt::Range {
                    fid,
                    start: size / 4096 * 4096,
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
pub(crate) fn dirt_of_lock(lock: LockKey) -> Vec<Dirt> {
    if lock == LockKey::EVERYTHING {
        vec![Dirt::All]
    } else if lock == LockKey::NAMESPACE {
        vec![Dirt::Tree]
    } else if lock.end == u64::MAX {
        vec![
            Dirt::Attr(lock.fid),
            Dirt::Range {
                fid: lock.fid,
                start: 0,
                end: u64::MAX,
            },
        ]
    } else {
        vec![Dirt::range(lock.fid, lock.start, lock.end - lock.start)]
    }
}

/// Every `HEAL_TICK_MS`: start heals for members that came back, run a worker per healing
/// member, drop the dirt of members that are up to date again, publish progress.
pub(crate) async fn heal_loop(ctx: Rc<CoreCtx>) {
    let mut last_report = Instant::now();
    loop {
        glommio::timer::sleep(Duration::from_millis(HEAL_TICK_MS)).await;
        let mut keys = repl::slot_keys(&ctx);
        // PG 0 (the namespace) first, then PGs with something to copy, then the rest.
        let rank = |key: &SlotKey| {
            let dirty =
                repl::with_slot(&ctx, *key, |s| s.dirt.members.iter().any(|d| !d.is_empty()));
            (key.1 != 0, dirty != Some(true), *key)
        };
        keys.sort_by_cached_key(rank);
        let healing = keys
            .iter()
            .filter(|&&k| {
                repl::with_slot(&ctx, k, |s| {
                    s.replica.is_primary() && s.replica.map().healing != 0
                }) == Some(true)
            })
            .count();
        let mut begins = HEALING_PGS_MAX.saturating_sub(healing);
        for key in keys {
            tick_slot(&ctx, key, &mut begins);
        }
        if last_report.elapsed() >= Duration::from_millis(REPORT_INTERVAL_MS) {
            last_report = Instant::now();
            publish_reports(&ctx);
        }
    }
}

/// `begins`: how many more PGs this core may start healing now (each start and end is a map
/// change: an etcd transaction and a state reload on every node, which a burst of 64 at once
/// turns into a stall for clients).
fn tick_slot(ctx: &Rc<CoreCtx>, key: SlotKey, begins: &mut usize) {
    let mut spawn = Vec::new();
    let mut out = Vec::new();
    let now = repl::now_ms(ctx);
    repl::with_slot(ctx, key, |slot| {
        compact_activity(slot);
        let map = *slot.replica.map();
        for m in 0..map.members {
            if map.is_up_to_date(m) && !slot.dirt.members[m as usize].is_empty() {
                if let Err(e) = slot.dirt.clear(m) {
                    tracing::warn!(vol = key.0, pg = key.1, "clearing dirt of member {m}: {e}");
                }
                slot.heal.stats[m as usize] = TargetStats::default();
            }
        }
        if !slot.replica.is_primary() {
            return;
        }
        let namespace_healed = |m: Member| {
            key.1 == 0
                || slot
                    .vol
                    .pg_maps
                    .first()
                    .is_some_and(|m0| m0.is_up_to_date(m))
        };
        let back = slot.replica.alive_absent(now);
        let rested = |m: Member, h: &HealSlot| {
            h.began[m as usize].is_none_or(|t| t.elapsed() >= Duration::from_millis(HEAL_RETRY_MS))
        };
        let ready = |m: Member| back & (1 << m) != 0 && namespace_healed(m);
        let candidate = (0..map.members).find(|&m| ready(m) && rested(m, &slot.heal));
        if let Some(m) = candidate.filter(|_| *begins > 0) {
            if slot.replica.heal_begin(m, &mut out) {
                *begins -= 1;
                slot.heal.began[m as usize] = Some(Instant::now());
                tracing::info!(vol = key.0, pg = key.1, "member {m} is back: healing it");
            }
        }
        slot.heal.handed_off &= map.healing;
        for m in 0..map.members {
            if map.is_healing(m) && slot.heal.running & (1 << m) == 0 {
                slot.heal.running |= 1 << m;
                let stats = &mut slot.heal.stats[m as usize];
                stats.started.get_or_insert_with(Instant::now);
                spawn.push(m);
            }
        }
    });
    repl::drive(ctx, key, out);
    for m in spawn {
        let ctx = ctx.clone();
        glommio::spawn_local(async move {
            worker(&ctx, key, m).await;
            repl::with_slot(&ctx, key, |slot| slot.heal.running &= !(1 << m));
        })
        .detach();
    }
}

/// Rewrites the activity log with what is still in doubt, at most once a second, and only
/// when it grew (so an idle PG writes nothing).
fn compact_activity(slot: &mut repl::Slot) {
    let a = &slot.activity;
    if a.appended == 0 || a.rewritten_at.elapsed() < Duration::from_secs(ACTIVITY_REWRITE_S) {
        return;
    }
    let keys = slot.replica.activity_keys();
    if let Err(e) = slot.activity.rewrite(&keys) {
        tracing::warn!(pg = slot.replica.pg, "activity log rewrite: {e}");
    }
}

const ACTIVITY_REWRITE_S: u64 = 1;

enum Next {
    Stop,
    Wait,
    /// The dirt was reshaped: ask again at once.
    Retry,
    Finish,
    Copy(Work),
}

/// Copies everything `target` missed, a window of copies at a time, then makes it up to date.
async fn worker(ctx: &Rc<CoreCtx>, key: SlotKey, target: Member) {
    let mut window = HEAL_WINDOW_MAX;
    let mut in_flight: Vec<flume::Receiver<bool>> = Vec::new();
    let mut paced_until = Instant::now();
    loop {
        while in_flight.len() < window {
            let next =
                repl::with_slot(ctx, key, |slot| next_work(slot, target)).unwrap_or(Next::Stop);
            match next {
                Next::Stop => return,
                Next::Wait => break,
                Next::Retry => continue,
                Next::Finish if in_flight.is_empty() => {
                    let mut out = Vec::new();
                    repl::with_slot(ctx, key, |slot| slot.replica.heal_finish(target, &mut out));
                    repl::drive(ctx, key, out);
                    glommio::timer::sleep(Duration::from_millis(HEAL_TICK_MS)).await;
                    return;
                }
                Next::Finish => break,
                Next::Copy(work) => {
                    let bytes = work_bytes(&work);
                    match submit(ctx, key, target, work) {
                        Ok(rx) => in_flight.push(rx),
                        Err(OpError::Busy) => break,
                        Err(_) => return,
                    }
                    let rate = repl::with_slot(ctx, key, |s| s.vol.heal_rate_bytes).unwrap_or(0);
                    if rate > 0 {
                        paced_until += Duration::from_secs_f64(bytes as f64 / rate as f64);
                        paced_until = paced_until.max(Instant::now() - Duration::from_secs(1));
                    }
                }
            }
        }
        if in_flight.is_empty() {
            glommio::timer::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let done = in_flight.remove(0);
        if !done.recv_async().await.unwrap_or(false) {
            glommio::timer::sleep(Duration::from_millis(HEAL_TICK_MS)).await;
            return;
        }
        let suffer = repl::with_slot(ctx, key, |s| s.heal.clients_suffer()).unwrap_or(false);
        window = if suffer {
            (window / 2).max(1)
        } else {
            (window + 1).min(HEAL_WINDOW_MAX)
        };
        let wait = paced_until.saturating_duration_since(Instant::now());
        if suffer || !wait.is_zero() {
            glommio::timer::sleep(wait.max(Duration::from_millis(if suffer { 2 } else { 0 })))
                .await;
        }
    }
}

fn work_bytes(w: &Work) -> u64 {
    match w {
        Work::Range { start, end, .. } => end - start,
        _ => 4096,
    }
}

fn next_work(slot: &mut repl::Slot, target: Member) -> Next {
    let map = *slot.replica.map();
    if !slot.replica.is_primary() || !map.is_healing(target) {
        return Next::Stop;
    }
    let pg = slot.replica.pg;
    let brick = slot.brick();
    let d = &mut slot.dirt.members[target as usize];
    if d.all {
        if let Some(b) = &brick {
            expand_all(d, b, pg);
        }
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
        // The catch-up that runs when a member joins takes these; a new one is needed only
        // if that one failed.
        let pending = slot
            .heal
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
    if let Some(&fid) = d.attrs.iter().next() {
        d.attrs.remove(&fid);
        return Next::Copy(Work::Attr(fid));
    }
    let Some((&fid, ranges)) = d.ranges.iter().next() else {
        if slot.heal.in_flight[target as usize] != 0 {
            return Next::Wait;
        }
        // Before it counts as up to date it may become the primary, the heal source of the
        // members still away: it needs this member's record of what they missed.
        let me = slot.replica.me();
        let others_dirty = (0..map.members)
            .filter(|&m| m != target && m != me)
            .any(|m| !slot.dirt.members[m as usize].is_empty());
        if others_dirty && slot.heal.handed_off & (1 << target) == 0 {
            let pending = slot
                .heal
                .plans
                .values()
                .any(|p| matches!(p.work, Work::Handoff));
            return if pending {
                Next::Wait
            } else {
                Next::Copy(Work::Handoff)
            };
        }
        return Next::Finish;
    };
    let Some((start, mut end)) = ranges.first() else {
        d.ranges.remove(&fid);
        return Next::Wait;
    };
    if end == u64::MAX {
        // To the end of the file: its size now (later growth reaches the member directly).
        let size = brick
            .as_ref()
            .and_then(|b| b.getattr(fid).ok())
            .map_or(0, |a| a.size);
        let eof = size.div_ceil(4096) * 4096;
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
    end = end.min(start + HEAL_CHUNK_BYTES);
    d.remove_range(fid, start, end);
    slot.heal.in_flight[target as usize] += end - start;
    Next::Copy(Work::Range { fid, start, end })
}

/// A full heal: every directory, and every file of the PG whole.
fn expand_all(d: &mut MemberDirt, brick: &Brick, pg: u32) {
    d.all = false;
    d.tree = pg == 0;
    for fid in brick.ids_in_pg(pg) {
        d.attrs.insert(fid);
        d.add(Dirt::Range {
            fid,
            start: 0,
            end: u64::MAX,
        });
    }
}

fn submit(
    ctx: &Rc<CoreCtx>,
    key: SlotKey,
    target: Member,
    work: Work,
) -> Result<flume::Receiver<bool>, OpError> {
    let lock = match &work {
        Work::CatchUp { .. } => LockKey::EVERYTHING,
        Work::Handoff => HANDOFF_LOCK,
        Work::Attr(fid) => LockKey::whole_file(*fid),
        Work::Range { fid, start, end } => LockKey::range(*fid, *start, end - start),
    };
    let (tx, rx) = flume::bounded(1);
    let now = repl::now_ms(ctx);
    let mut out = Vec::new();
    let result = repl::with_slot(ctx, key, |slot| {
        match slot.replica.submit_heal(now, lock, 1 << target, &mut out) {
            Ok(op) => {
                slot.heal.plans.insert(
                    op,
                    Plan {
                        targets: 1 << target,
                        work,
                        done: Some(tx),
                        failed: None,
                    },
                );
                Ok(())
            }
            Err(e) => {
                give_back(slot, target, &work);
                Err(e)
            }
        }
    })
    .unwrap_or(Err(OpError::Unavailable));
    repl::drive(ctx, key, out);
    result.map(|()| rx)
}

/// A copy that did not happen: its dirt is recorded again (in memory; the log still has it).
fn give_back(slot: &mut repl::Slot, target: Member, work: &Work) {
    let d = &mut slot.dirt.members[target as usize];
    match *work {
        Work::CatchUp { .. } | Work::Handoff => {}
        Work::Attr(fid) => {
            d.attrs.insert(fid);
        }
        Work::Range { fid, start, end } => {
            d.add(Dirt::Range { fid, start, end });
            let f = &mut slot.heal.in_flight[target as usize];
            *f = f.saturating_sub(end - start);
        }
    }
}

/// A heal op finished (`ok`: every target has it).
pub(crate) fn on_done(slot: &mut repl::Slot, op: OpId, ok: bool) {
    let Some(mut plan) = slot.heal.plans.remove(&op) else {
        return;
    };
    let ok = ok && plan.failed.is_none();
    for m in (0..MEMBERS_MAX).filter(|m| plan.targets & (1 << m) != 0) {
        let stats = &mut slot.heal.stats[m as usize];
        if let Some(why) = plan.failed.take() {
            stats.error = Some(why);
        }
        if !ok {
            give_back(slot, m, &plan.work);
            continue;
        }
        match &plan.work {
            Work::CatchUp { dirs, tree } => {
                let d = &mut slot.dirt.members[m as usize];
                for dir in dirs {
                    d.dirs.remove(dir);
                }
                if *tree {
                    d.tree = false;
                }
                stats.error = None;
            }
            Work::Attr(_) => {}
            Work::Handoff => slot.heal.handed_off |= 1 << m,
            Work::Range { fid, start, end } => {
                slot.heal.copied_total_bytes += end - start;
                let stats = &mut slot.heal.stats[m as usize];
                stats.bytes_copied += end - start;
                *stats.copied_by_file.entry(*fid).or_default() += end - start;
                let f = &mut slot.heal.in_flight[m as usize];
                *f = f.saturating_sub(end - start);
            }
        }
    }
    if let Some(done) = plan.done {
        let _ = done.send(ok);
    }
}

/// The body of a namespace catch-up (`LockKey::EVERYTHING`) for the members being healed:
/// the listing of every directory they missed changes in, parents first. Registers the plan
/// (so its dirt is cleared once every target has it) unless one was registered by `submit`.
pub(crate) fn catch_up_read(slot: &mut repl::Slot, op: OpId) -> Result<Body, String> {
    let brick = slot
        .brick()
        .ok_or("the heal source's brick is not on this node")?;
    let healing = slot.replica.map().healing;
    let mut dirs = BTreeSet::new();
    let mut tree = false;
    // Only PG 0 reconciles directories (see `next_work`): a data PG's catch-up is empty.
    let namespace_pg = slot.replica.pg == 0;
    for m in (0..MEMBERS_MAX).filter(|m| healing & (1 << m) != 0 && namespace_pg) {
        let d = &slot.dirt.members[m as usize];
        dirs.extend(d.dirs.iter().copied());
        tree |= d.tree || d.all;
    }
    let plan = slot.heal.plans.entry(op).or_insert_with(|| Plan {
        targets: healing,
        work: Work::CatchUp {
            dirs: Vec::new(),
            tree: false,
        },
        done: None,
        failed: None,
    });
    plan.work = Work::CatchUp {
        dirs: dirs.iter().copied().collect(),
        tree,
    };
    let result = catch_up_body(&brick, &dirs, tree);
    if let Err(why) = &result {
        plan.failed = Some(why.clone());
    }
    result
}

/// The resync of an in-doubt namespace change: the listings of `dirs` on this member (the
/// new primary), which every other member makes its own (the catch-up's body and code).
pub(crate) fn namespace_resync_body(slot: &repl::Slot, dirs: &[FileId]) -> Result<Body, String> {
    let brick = slot
        .brick()
        .ok_or("the primary's brick is not on this node")?;
    if dirs.is_empty() {
        return Ok(Body::noop());
    }
    catch_up_body(&brick, &dirs.iter().copied().collect(), false)
}

fn catch_up_body(brick: &Brick, dirs: &BTreeSet<FileId>, tree: bool) -> Result<Body, String> {
    let mut order: Vec<(usize, FileId)> = Vec::new();
    let listed: Vec<FileId> = if tree {
        brick.all_dirs().map_err(|e| e.message)?
    } else {
        dirs.iter().copied().collect()
    };
    for dir in listed {
        match brick.depth_of(dir) {
            Ok(depth) => order.push((depth, dir)),
            Err(_) => continue, // gone here: its parent's listing drops it
        }
    }
    order.sort_unstable();
    let mut e = Enc::default();
    e.u32(order.len() as u32);
    for (_, dir) in order {
        let entries = match brick.dir_listing(dir) {
            Ok(entries) => entries,
            Err(_) if dir != ROOT_FILE_ID => Vec::new(),
            Err(err) => return Err(err.message),
        };
        e.u64(dir).u32(entries.len() as u32);
        for en in &entries {
            e.u64(en.fid)
                .u8(en.kind as u8)
                .u32(en.mode)
                .str(&en.name)
                .str(&en.target);
        }
        if e.buf.len() > FRAME_PAYLOAD_BYTES_MAX as usize - 4096 {
            return Err(format!(
                "the namespace catch-up exceeds {} bytes (too many changed directories); \
                 see docs/heal.md",
                FRAME_PAYLOAD_BYTES_MAX
            ));
        }
    }
    Ok(Body {
        opcode: HEAL_NAMESPACE,
        minted: 0,
        payload: Rc::new(e.buf),
        data_dma: Default::default(),
    })
}

/// Whether a heal op being read is a dirt handoff.
pub(crate) fn is_handoff(slot: &repl::Slot, op: OpId) -> bool {
    slot.heal
        .plans
        .get(&op)
        .is_some_and(|p| matches!(p.work, Work::Handoff))
}

/// The body of a dirt handoff to the members `targets`: this member's records for every other
/// absent or healing member. Too many for one frame: "everything" for those members instead
/// (a full heal later, never a missed range).
pub(crate) fn handoff_body(slot: &repl::Slot, targets: u8) -> Body {
    let me = slot.replica.me();
    let mut bytes = Vec::new();
    let mut full = Vec::new();
    let limit = FRAME_PAYLOAD_BYTES_MAX as usize - 4096;
    for m in (0..MEMBERS_MAX).filter(|&m| m != me && targets & (1 << m) == 0) {
        let before = bytes.len();
        for d in slot.dirt.members[m as usize].items() {
            bytes.extend_from_slice(&crate::dirt::encode(m, Some(d)));
        }
        if bytes.len() > limit {
            bytes.truncate(before);
            full.push(m);
        }
    }
    for m in full {
        bytes.extend_from_slice(&crate::dirt::encode(m, Some(Dirt::All)));
    }
    Body {
        opcode: HEAL_DIRT,
        minted: 0,
        payload: Rc::new(bytes),
        data_dma: Default::default(),
    }
}

/// Records a dirt handoff on the member being healed.
pub(crate) fn apply_handoff(slot: &mut repl::Slot, payload: &[u8]) -> bool {
    if !payload.len().is_multiple_of(crate::dirt::RECORD_BYTES) {
        return false;
    }
    for rec in payload.chunks_exact(crate::dirt::RECORD_BYTES) {
        let Some((m, Some(d))) = crate::dirt::decode(rec) else {
            return false;
        };
        if slot.dirt.record(1 << m, d).is_err() {
            slot.dirt.members[m as usize].all = true;
        }
    }
    true
}

/// Directories (with their wanted entries) of a catch-up body.
fn decode_catch_up(payload: &[u8]) -> Result<Vec<(FileId, Vec<HealEntry>)>, DecodeError> {
    let mut d = Dec::new(payload);
    let n = d.u32("directory count")?;
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
                .str("symlink target", brick_tuning::SYMLINK_TARGET_BYTES_MAX)?
                .to_string();
            entries.push(HealEntry {
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

/// Applies a catch-up on the member being healed.
pub(crate) fn apply_catch_up(brick: &Brick, payload: &[u8]) -> Result<(), FsError> {
    let dirs = decode_catch_up(payload)
        .map_err(|e| FsError::new(ErrorCode::Malformed, format!("namespace catch-up: {e}")))?;
    // Ids listed anywhere in this catch-up: an entry holding one is moved to its place, not
    // removed, even when its directory is reconciled first (a rename across directories).
    let mut placed_later: std::collections::HashSet<FileId> = dirs
        .iter()
        .flat_map(|(_, e)| e.iter().map(|e| e.fid))
        .collect();
    for (dir, entries) in &dirs {
        brick.reconcile_dir(*dir, entries, &placed_later)?;
        for e in entries {
            placed_later.remove(&e.fid);
        }
    }
    // Anything still parked was wanted nowhere after all.
    for (dir, _) in &dirs {
        brick.reconcile_dir_parked(*dir)?;
    }
    Ok(())
}

/// Publishes this core's heal progress (primaries only) for `brick heal status`.
fn publish_reports(ctx: &Rc<CoreCtx>) {
    let mut mine: Vec<HealReport> = Vec::new();
    for key in repl::slot_keys(ctx) {
        if let Some(Some(r)) = repl::with_slot(ctx, key, |slot| report(slot)) {
            mine.push(r);
        }
    }
    let mut all = ctx.heal_reports.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|&(core, _, _), _| core != ctx.core);
    for r in mine {
        all.insert((ctx.core, r.volume_id, r.pg), r);
    }
}

fn report(slot: &repl::Slot) -> Option<HealReport> {
    if !slot.replica.is_primary() {
        return None;
    }
    let map = *slot.replica.map();
    let behind = map.healing | map.absent();
    if behind == 0 && slot.heal.copied_total_bytes == 0 {
        return None;
    }
    let me = slot.replica.me();
    let brick = slot.brick();
    let mut targets = Vec::new();
    for m in (0..map.members).filter(|m| behind & (1 << m) != 0) {
        let d = &slot.dirt.members[m as usize];
        let stats = &slot.heal.stats[m as usize];
        let in_flight = slot.heal.in_flight[m as usize];
        let bytes_left = d.bytes() + in_flight;
        let elapsed_s = stats
            .started
            .map_or(0.0, |t| t.elapsed().as_secs_f64())
            .max(0.001);
        let mut files: Vec<HealFile> = d
            .ranges
            .iter()
            .take(REPORT_FILES_MAX)
            .map(|(&fid, r)| HealFile {
                fid,
                path: path_of(brick.as_deref(), fid),
                bytes_left: r.bytes(),
                bytes_copied: stats.copied_by_file.get(&fid).copied().unwrap_or(0),
            })
            .collect();
        files.sort_by_key(|f| std::cmp::Reverse(f.bytes_left));
        targets.push(HealTarget {
            member: m,
            state: if map.is_healing(m) {
                "healing"
            } else {
                "absent"
            },
            bytes_left,
            bytes_copied: stats.bytes_copied,
            rate_bytes_s: (stats.bytes_copied as f64 / elapsed_s) as u64,
            namespace_pending: d.has_namespace(),
            files,
            error: stats.error.clone(),
        });
    }
    Some(HealReport {
        volume_id: slot.vol.id,
        volume: slot.vol.name.clone(),
        pg: slot.replica.pg,
        epoch: map.epoch,
        source_member: me,
        targets,
        copied_total_bytes: slot.heal.copied_total_bytes,
    })
}

fn path_of(brick: Option<&Brick>, fid: FileId) -> String {
    let relative = brick.and_then(|b| {
        let p = b.path_of(fid).ok()?;
        Some(format!("/{}", p.strip_prefix(&b.data).ok()?.display()))
    });
    relative.unwrap_or_else(|| format!("{fid:#x}"))
}
