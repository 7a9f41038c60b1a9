//! Rebalance and remove-brick: moving placement groups between replica sets.
//!
//! A move is a heal: the PG's map gains the target set's bricks as fresh members (one map
//! change), the PG's primary heals them like any returning member while clients keep reading
//! and writing through it (their writes reach the new members too), the leader compares a
//! digest of the PG's files on the source and on every new brick, and one more map change
//! leaves the PG on the target set alone. The old bricks free their copy only once a map that
//! no longer places them was committed (the dataplane's `retire`). Every step is a map change
//! in the store, so a leader killed at any point is followed by the next one from the maps:
//! the rebalance document (`rebalance/<volume>`) only says where each PG should go.
//!
//! The leader is the alive node with the smallest name; two nodes that both think they lead
//! for a moment take the same steps, and each map change is a compare-and-set on its epoch.

use crate::mgmt::{cluster_err, Mgmt, MgmtError};
use brick_cluster::mgmt::{self as op, PgDigestReply, PgMove, PgUsageReply, RebalanceStatus};
use brick_cluster::{placement, PgMap, PgMoveDoc, RebalanceDoc, Volume, VolumeStatus};
use brick_tuning::{
    REBALANCE_MOVES_MAX, REBALANCE_TICK_MS, REBALANCE_VERIFY_ATTEMPTS,
    REBALANCE_VERIFY_FAILURES_MAX, REBALANCE_VERIFY_RECENT_MS,
};
use brick_wire::ErrorCode;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

fn invalid(why: impl Into<String>) -> MgmtError {
    (ErrorCode::Invalid, why.into())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The set each PG is on now: mid-move, the one that holds it up to date and is not being
/// filled (`None`: no such set).
fn current_sets(vol: &Volume, maps: &[PgMap]) -> Vec<Option<usize>> {
    maps.iter()
        .map(|m| match vol.sets_of_map(m).as_slice() {
            [one] => Some(*one),
            // Mid-move: the set that holds it up to date and is not being filled.
            two => two.iter().copied().find(|&s| {
                m.up_to_date & vol.set_mask(s) == vol.set_mask(s) && m.fresh & vol.set_mask(s) == 0
            }),
        })
        .collect()
}

/// Every PG's map, or an error naming the missing one.
async fn all_maps(mgmt: &Mgmt, vol: &Volume) -> Result<Vec<PgMap>, MgmtError> {
    let maps = mgmt.cluster.pg_maps(vol).await.map_err(cluster_err)?;
    maps.into_iter()
        .enumerate()
        .map(|(pg, m)| m.ok_or_else(|| invalid(format!("PG {pg} of {} has no map yet", vol.name))))
        .collect()
}

/// `volume rebalance NAME start|stop|status`.
pub async fn rebalance(mgmt: &Mgmt, r: op::VolumeRebalance) -> Result<RebalanceStatus, MgmtError> {
    let vol = mgmt.cluster.volume(&r.name).await.map_err(cluster_err)?;
    match r.action.as_str() {
        "start" => start(mgmt, &vol, Vec::new()).await,
        "stop" => stop(mgmt, &vol).await,
        "status" => status(mgmt, &vol).await,
        other => Err(invalid(format!(
            "rebalance action {other:?}: one of start, stop, status"
        ))),
    }
}

/// `volume remove-brick NAME BRICK... start|status|stop|commit`.
pub async fn remove_brick(
    mgmt: &Mgmt,
    r: op::VolumeRemoveBrick,
) -> Result<RebalanceStatus, MgmtError> {
    let vol = mgmt.cluster.volume(&r.name).await.map_err(cluster_err)?;
    let set = set_of_bricks(&vol, &r.bricks)?;
    match r.action.as_str() {
        "start" => {
            if vol.live_sets().len() < 2 {
                return Err(invalid(format!(
                    "volume {} has one replica set; it cannot be drained into nothing",
                    vol.name
                )));
            }
            start(mgmt, &vol, vec![set as u32]).await
        }
        "stop" => stop(mgmt, &vol).await,
        "status" => status(mgmt, &vol).await,
        "commit" => {
            let maps = all_maps(mgmt, &vol).await?;
            let mask = vol.set_mask(set);
            let held: Vec<usize> = (1..maps.len())
                .filter(|&pg| maps[pg].placed & mask != 0)
                .collect();
            if !held.is_empty() {
                return Err(invalid(format!(
                    "the replica set of {} still holds {} PGs (first {:?}); remove-brick start, \
                     then commit once status says done",
                    r.bricks.join(" "),
                    held.len(),
                    &held[..held.len().min(8)]
                )));
            }
            mgmt.cluster
                .remove_set(&vol.name, set)
                .await
                .map_err(cluster_err)?;
            let vol = mgmt.cluster.volume(&r.name).await.map_err(cluster_err)?;
            let mut st = status(mgmt, &vol).await?;
            st.note = format!(
                "replica set {set} ({}) is out of volume {}; its directories are left on disk",
                r.bricks.join(" "),
                vol.name
            );
            Ok(st)
        }
        other => Err(invalid(format!(
            "remove-brick action {other:?}: one of start, status, stop, commit"
        ))),
    }
}

/// The replica set whose bricks are exactly `bricks` (in any order).
fn set_of_bricks(vol: &Volume, bricks: &[String]) -> Result<usize, MgmtError> {
    let specs: Vec<brick_cluster::BrickSpec> = bricks
        .iter()
        .map(|b| brick_cluster::BrickSpec::parse(b).map_err(cluster_err))
        .collect::<Result<_, _>>()?;
    for (s, set) in vol.replica_sets().iter().enumerate() {
        if vol.is_removed_set(s) {
            continue;
        }
        if set.len() == specs.len() && set.iter().all(|b| specs.contains(b)) {
            return Ok(s);
        }
    }
    Err(invalid(format!(
        "{} is not a replica set of volume {} (give every brick of one set)",
        bricks.join(" "),
        vol.name
    )))
}

async fn start(
    mgmt: &Mgmt,
    vol: &Volume,
    removing: Vec<u32>,
) -> Result<RebalanceStatus, MgmtError> {
    if vol.status != VolumeStatus::Started {
        return Err(invalid(format!("volume {} is not started", vol.name)));
    }
    let old = mgmt
        .cluster
        .rebalance(&vol.name)
        .await
        .map_err(cluster_err)?;
    if let Some((doc, _)) = &old {
        if doc.state == "running" {
            if doc.removing == removing {
                return status(mgmt, vol).await; // already running: idempotent
            }
            return Err(invalid(format!(
                "a rebalance of {} is running; stop it first",
                vol.name
            )));
        }
    }
    // The plan is made by the leader (it weighs the sets by their bricks' capacity).
    let doc = RebalanceDoc {
        state: "running".into(),
        removing,
        started_ms: now_ms(),
        ..RebalanceDoc::default()
    };
    let stored = old.map(|(_, b)| b);
    if !mgmt
        .cluster
        .put_rebalance(&vol.name, stored, &doc)
        .await
        .map_err(cluster_err)?
    {
        return Err((
            ErrorCode::Unavailable,
            "the rebalance changed concurrently; retry".into(),
        ));
    }
    status(mgmt, vol).await
}

/// Stops the rebalance; PGs mid-move go back to their source set alone (the copies on the
/// target are freed), so a stopped rebalance leaves no PG on two sets.
async fn stop(mgmt: &Mgmt, vol: &Volume) -> Result<RebalanceStatus, MgmtError> {
    let Some((mut doc, bytes)) = mgmt
        .cluster
        .rebalance(&vol.name)
        .await
        .map_err(cluster_err)?
    else {
        return status(mgmt, vol).await;
    };
    if doc.state == "running" {
        doc.state = "stopped".into();
        doc.finished_ms = now_ms();
        if !mgmt
            .cluster
            .put_rebalance(&vol.name, Some(bytes), &doc)
            .await
            .map_err(cluster_err)?
        {
            return Err((
                ErrorCode::Unavailable,
                "the rebalance changed concurrently; retry".into(),
            ));
        }
    }
    let maps = all_maps(mgmt, vol).await?;
    for (pg, map) in maps.iter().enumerate().skip(1) {
        let Some(&target) = doc.target.get(pg) else {
            continue;
        };
        let tmask = vol.set_mask(target as usize);
        if map.placed != tmask && map.placed & tmask == tmask {
            if let Some(next) = map.with_removed(tmask) {
                let _ = mgmt
                    .cluster
                    .propose_pg_map(&vol.name, pg as u32, &next)
                    .await;
            }
        }
    }
    status(mgmt, vol).await
}

pub async fn status(mgmt: &Mgmt, vol: &Volume) -> Result<RebalanceStatus, MgmtError> {
    let doc = mgmt
        .cluster
        .rebalance(&vol.name)
        .await
        .map_err(cluster_err)?
        .map(|(d, _)| d);
    let maps = all_maps(mgmt, vol).await.unwrap_or_default();
    Ok(report(vol, doc.as_ref(), &maps))
}

fn bricks_of(vol: &Volume, mask: u8) -> Vec<String> {
    (0..8)
        .filter(|b| mask & (1 << b) != 0)
        .filter_map(|b| vol.bricks.get(b).map(|s| s.to_string()))
        .collect()
}

fn report(vol: &Volume, doc: Option<&RebalanceDoc>, maps: &[PgMap]) -> RebalanceStatus {
    let Some(doc) = doc else {
        return RebalanceStatus {
            volume: vol.name.clone(),
            state: "idle".into(),
            removing: Vec::new(),
            pgs_to_move: 0,
            pgs_moved: 0,
            files_left: 0,
            bytes_left: 0,
            files_moved: 0,
            bytes_moved: 0,
            rate_bytes_s: 0,
            eta_s: None,
            elapsed_ms: 0,
            verified_in_flux: 0,
            moving: Vec::new(),
            error: None,
            note: "no rebalance has run on this volume".into(),
        };
    };
    let (mut files_left, mut bytes_left, mut files_moved, mut bytes_moved) = (0, 0, 0, 0);
    let mut moving = Vec::new();
    for (&pg, mv) in &doc.pgs {
        if mv.done {
            files_moved += mv.files;
            bytes_moved += mv.bytes;
            continue;
        }
        files_left += mv.files;
        bytes_left += mv.bytes;
        let (Some(map), Some(&target)) = (maps.get(pg as usize), doc.target.get(pg as usize))
        else {
            continue;
        };
        let tmask = vol.set_mask(target as usize);
        if map.placed & tmask == tmask && map.placed != tmask {
            let phase = if map.up_to_date & tmask == tmask {
                "verifying"
            } else {
                "copying"
            };
            moving.push(PgMove {
                pg,
                from: bricks_of(vol, map.placed & !tmask),
                to: bricks_of(vol, tmask),
                phase: phase.into(),
                files: mv.files,
                bytes: mv.bytes,
            });
        }
    }
    let end = if doc.finished_ms > 0 {
        doc.finished_ms
    } else {
        now_ms()
    };
    let elapsed_ms = end.saturating_sub(doc.started_ms);
    let rate_bytes_s = (bytes_moved as u128 * 1000 / elapsed_ms.max(1) as u128) as u64;
    let eta_s = (doc.state == "running" && rate_bytes_s > 0).then(|| bytes_left / rate_bytes_s);
    RebalanceStatus {
        volume: vol.name.clone(),
        state: doc.state.clone(),
        removing: doc
            .removing
            .iter()
            .flat_map(|&s| bricks_of(vol, vol.set_mask(s as usize)))
            .collect(),
        pgs_to_move: doc.pgs.len() as u64,
        pgs_moved: doc.pgs.values().filter(|m| m.done).count() as u64,
        files_left,
        bytes_left,
        files_moved,
        bytes_moved,
        rate_bytes_s,
        eta_s,
        elapsed_ms,
        verified_in_flux: doc.verified_in_flux,
        moving,
        error: doc.error.clone(),
        note: if doc.target.is_empty() && doc.state == "running" {
            "planning: the leader weighs the sets by capacity and picks the PGs to move".into()
        } else {
            String::new()
        },
    }
}

/// What the leader keeps between its steps.
#[derive(Default)]
struct Leader {
    client: Option<brick_client::Client>,
    /// Verifications that found the copies different, per (volume, PG).
    verify_failures: HashMap<(String, u32), u32>,
}

/// The rebalance leader's loop (every node runs it; the alive node with the smallest name acts).
pub async fn run(mgmt: Arc<Mgmt>) {
    let mut leader = Leader::default();
    loop {
        tokio::time::sleep(Duration::from_millis(REBALANCE_TICK_MS)).await;
        if let Err(e) = tick(&mgmt, &mut leader).await {
            tracing::debug!("rebalance: {e:?}");
        }
    }
}

async fn tick(mgmt: &Mgmt, leader: &mut Leader) -> Result<(), MgmtError> {
    let c = &mgmt.cluster;
    let mut alive = c.alive_nodes().await.map_err(cluster_err)?;
    alive.sort();
    if alive.first() != Some(&mgmt.node) {
        return Ok(());
    }
    for vol in c.list_volumes().await.map_err(cluster_err)? {
        let Some((doc, bytes)) = c.rebalance(&vol.name).await.map_err(cluster_err)? else {
            continue;
        };
        if doc.state != "running" || vol.status != VolumeStatus::Started {
            continue;
        }
        let mut next = doc.clone();
        if let Err(e) = step(mgmt, leader, &vol, &mut next).await {
            tracing::warn!("rebalance of {}: {}", vol.name, e.1);
        }
        if next != doc {
            let _ = c.put_rebalance(&vol.name, Some(bytes), &next).await;
        }
    }
    Ok(())
}

/// One step of a running rebalance: plan it, measure, start moves, verify and commit.
async fn step(
    mgmt: &Mgmt,
    leader: &mut Leader,
    vol: &Volume,
    doc: &mut RebalanceDoc,
) -> Result<(), MgmtError> {
    let maps = all_maps(mgmt, vol).await?;
    if doc.target.is_empty() {
        plan(mgmt, leader, vol, &maps, doc).await?;
    }
    for (&pg, mv) in doc.pgs.iter_mut() {
        if !mv.measured && !mv.done {
            let map = &maps[pg as usize];
            if let Some(src) = map.primary() {
                if let Ok(u) = usage(mgmt, leader, vol, pg, src).await {
                    (mv.files, mv.bytes, mv.measured) = (u.files, u.bytes, true);
                }
            }
        }
    }
    let target_of = |pg: u32| vol.set_mask(doc.target[pg as usize] as usize);
    let mut moving = doc
        .pgs
        .iter()
        .filter(|(&pg, mv)| {
            let (map, t) = (&maps[pg as usize], target_of(pg));
            !mv.done && map.placed != t && map.placed & t == t
        })
        .count();
    let pgs: Vec<u32> = doc.pgs.keys().copied().collect();
    for pg in pgs {
        if doc.pgs[&pg].done {
            continue;
        }
        let (map, tmask) = (maps[pg as usize], target_of(pg));
        if tmask == 0 {
            doc.state = "failed".into();
            doc.error = Some(format!("PG {pg}'s target set was taken out of the volume"));
            doc.finished_ms = now_ms();
            return Ok(());
        }
        if map.placed == tmask {
            if let Some(mv) = doc.pgs.get_mut(&pg) {
                mv.done = true;
            }
            continue;
        }
        if map.placed & tmask == 0 {
            if moving < REBALANCE_MOVES_MAX {
                if let Some(next) = map.with_added(tmask) {
                    let (_, ok) = mgmt
                        .cluster
                        .propose_pg_map(&vol.name, pg, &next)
                        .await
                        .map_err(cluster_err)?;
                    if ok {
                        moving += 1;
                        tracing::info!(
                            "rebalance of {}: PG {pg} is being copied to {}",
                            vol.name,
                            bricks_of(vol, tmask).join(" ")
                        );
                    }
                }
            }
            continue;
        }
        if map.placed & tmask != tmask || map.up_to_date & tmask != tmask {
            continue; // still copying (the primary heals the new bricks)
        }
        match verify(mgmt, leader, vol, pg, &map, tmask).await {
            Ok(in_flux) => {
                let Some(next) = map.with_removed(map.placed & !tmask) else {
                    continue;
                };
                let (_, ok) = mgmt
                    .cluster
                    .propose_pg_map(&vol.name, pg, &next)
                    .await
                    .map_err(cluster_err)?;
                if ok {
                    tracing::info!(
                        "rebalance of {}: PG {pg} moved to {} (epoch {})",
                        vol.name,
                        bricks_of(vol, tmask).join(" "),
                        next.epoch
                    );
                    doc.verified_in_flux += in_flux;
                    if let Some(mv) = doc.pgs.get_mut(&pg) {
                        mv.done = true;
                    }
                    leader.verify_failures.remove(&(vol.name.clone(), pg));
                }
            }
            Err(why) => {
                let n = leader
                    .verify_failures
                    .entry((vol.name.clone(), pg))
                    .or_default();
                *n += 1;
                tracing::warn!(
                    "rebalance of {}: PG {pg} not verified ({n}): {why}",
                    vol.name
                );
                if *n >= REBALANCE_VERIFY_FAILURES_MAX {
                    doc.state = "failed".into();
                    doc.error = Some(format!("PG {pg}: {why}"));
                    doc.finished_ms = now_ms();
                    return Ok(());
                }
            }
        }
    }
    if doc.pgs.values().all(|m| m.done) {
        doc.state = "done".into();
        doc.finished_ms = now_ms();
        tracing::info!(
            "rebalance of {} done: {} PGs moved",
            vol.name,
            doc.pgs.len()
        );
    }
    Ok(())
}

/// Picks where every PG goes: sets weighed by their smallest brick's capacity, drained sets
/// weigh nothing; only PGs whose set changes move.
async fn plan(
    mgmt: &Mgmt,
    leader: &mut Leader,
    vol: &Volume,
    maps: &[PgMap],
    doc: &mut RebalanceDoc,
) -> Result<(), MgmtError> {
    let sets = vol.replica_sets().len();
    let mut weights = vec![0u64; sets];
    for (s, w) in weights.iter_mut().enumerate() {
        if vol.is_removed_set(s) || doc.removing.contains(&(s as u32)) {
            continue;
        }
        let mut smallest = u64::MAX;
        for m in (0..vol.bricks.len()).filter(|&b| vol.set_of_brick(b) == s) {
            // A brick that does not answer (its node is down) leaves the plan for later: a
            // guessed weight sent 25 PGs instead of 15 to a new set in a run with kills.
            let cap = usage(mgmt, leader, vol, 0, m as u8).await?.capacity_bytes;
            smallest = smallest.min(cap);
        }
        *w = smallest.max(1);
    }
    if weights.iter().all(|&w| w == 0) {
        doc.state = "failed".into();
        doc.error = Some("no replica set can take the PGs".into());
        return Ok(());
    }
    let current = current_sets(vol, maps);
    let target = placement::plan(&current, &weights);
    doc.target = target.iter().map(|&s| s as u16).collect();
    doc.pgs = (1..maps.len())
        .filter(|&pg| current[pg] != Some(target[pg]) || vol.sets_of_map(&maps[pg]).len() != 1)
        .map(|pg| (pg as u32, PgMoveDoc::default()))
        .collect();
    tracing::info!(
        "rebalance of {}: {} of {} PGs move (set weights {:?})",
        vol.name,
        doc.pgs.len(),
        maps.len() - 1,
        weights
    );
    Ok(())
}

/// A management request to the node of brick `member`, as this node.
async fn ask<C: brick_cluster::mgmt::MgmtCall>(
    mgmt: &Mgmt,
    leader: &mut Leader,
    vol: &Volume,
    member: u8,
    req: &C,
) -> Result<C::Reply, MgmtError> {
    let node = &vol
        .bricks
        .get(member as usize)
        .ok_or_else(|| invalid(format!("volume {} has no brick {member}", vol.name)))?
        .node;
    let nodes = mgmt.cluster.list_nodes().await.map_err(cluster_err)?;
    let addr = nodes
        .iter()
        .find(|n| &n.name == node)
        .map(|n| n.addr.clone())
        .ok_or_else(|| invalid(format!("node {node} is not a peer")))?;
    if leader.client.is_none() {
        let own = nodes
            .iter()
            .find(|n| n.name == mgmt.node)
            .map(|n| n.addr.clone())
            .unwrap_or_else(|| addr.clone());
        let key = mgmt.cluster.node_key().await.map_err(cluster_err)?;
        let client =
            brick_client::Client::connect_with_key(vec![own], brick_dataplane::NODE_USER, key)
                .await
                .map_err(|e| (ErrorCode::Unavailable, e.to_string()))?;
        leader.client = Some(client);
    }
    let client = leader.client.as_ref().expect("set above");
    client.mgmt_node(req, &addr).await.map_err(|e| {
        if matches!(e, brick_client::ClientError::Auth(_)) {
            leader.client = None;
        }
        (e.code().unwrap_or(ErrorCode::Unavailable), e.to_string())
    })
}

async fn usage(
    mgmt: &Mgmt,
    leader: &mut Leader,
    vol: &Volume,
    pg: u32,
    member: u8,
) -> Result<PgUsageReply, MgmtError> {
    let req = op::PgUsage {
        volume: vol.name.clone(),
        pg,
        member,
    };
    ask(mgmt, leader, vol, member, &req).await
}

async fn digest(
    mgmt: &Mgmt,
    leader: &mut Leader,
    vol: &Volume,
    pg: u32,
    member: u8,
    skip_recent_ms: u64,
) -> Result<PgDigestReply, MgmtError> {
    let req = op::PgDigest {
        volume: vol.name.clone(),
        pg,
        member,
        skip_recent_ms,
    };
    ask(mgmt, leader, vol, member, &req).await
}

/// Compares the PG's files on its primary (the source) and on every brick of the target
/// set: ids, sizes and crc32c of the contents. Copies being written differ for a moment, so
/// a difference is looked at again; after `REBALANCE_VERIFY_ATTEMPTS`, files modified in the
/// last `REBALANCE_VERIFY_RECENT_MS` are left out on both sides (replication keeps them
/// equal: every write goes to both sets). Returns how many files were left out that way.
async fn verify(
    mgmt: &Mgmt,
    leader: &mut Leader,
    vol: &Volume,
    pg: u32,
    map: &PgMap,
    tmask: u8,
) -> Result<u64, String> {
    let source = map
        .primary()
        .filter(|p| tmask & (1 << p) == 0)
        .or_else(|| map.acting().find(|m| tmask & (1 << m) == 0))
        .ok_or("no source brick is up to date")?;
    let mut last = String::new();
    for attempt in 0..=REBALANCE_VERIFY_ATTEMPTS {
        let skip = if attempt == REBALANCE_VERIFY_ATTEMPTS {
            REBALANCE_VERIFY_RECENT_MS
        } else {
            0
        };
        let src = digest(mgmt, leader, vol, pg, source, skip)
            .await
            .map_err(|e| e.1)?;
        let mut same = true;
        for t in (0..8u8).filter(|t| tmask & (1 << t) != 0) {
            let got = digest(mgmt, leader, vol, pg, t, skip)
                .await
                .map_err(|e| e.1)?;
            if (got.files, got.bytes, got.digest) != (src.files, src.bytes, src.digest) {
                same = false;
                last = format!(
                    "{} has {} files, {} bytes, digest {:08x}; {} has {} files, {} bytes, digest {:08x}",
                    vol.bricks[source as usize],
                    src.files,
                    src.bytes,
                    src.digest,
                    vol.bricks[t as usize],
                    got.files,
                    got.bytes,
                    got.digest
                );
            }
        }
        if same {
            return Ok(src.skipped);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("copies differ: {last}"))
}
