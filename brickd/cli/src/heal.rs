//! `brick heal status` and `brick node can-stop`.
//!
//! Heal progress lives with the PG primaries that run the heals, on every node; the cluster
//! state says which PGs have members behind. `heal status` asks every peer for its part
//! (`HealLocal`) and merges them: a PG behind whose primary did not answer is shown as
//! unreported, never as healed.

use crate::Out;
use anyhow::Result;
use brick_client::Client;
use brick_cluster::mgmt::{
    CanStop, FailingDiskReport, HealLocal, HealLocalReply, NodeCanStop, PeerList, PgBehind,
    PgHealReport,
};
use brick_cluster::report::{HealPgStatus, HealStatus, HealTargetStatus, UnreachableNode};
use std::collections::BTreeMap;
use std::time::Duration;

/// `--watch` refreshes this often.
const WATCH_INTERVAL_MS: u64 = 1000;
/// `--watch` gives up after this long (a heal that does not progress is still visible).
const WATCH_SECONDS_MAX: u64 = 24 * 3600;

pub(crate) async fn status(client: &Client, out: &Out, volume: &str, watch: bool) -> Result<()> {
    if !watch {
        let doc = gather(client, volume).await?;
        return out.report(&doc, render);
    }
    let started = std::time::Instant::now();
    loop {
        let doc = gather(client, volume).await?;
        if doc.healed || started.elapsed() > Duration::from_secs(WATCH_SECONDS_MAX) {
            return out.report(&doc, render);
        }
        if !out.json {
            // Redraw in place on a terminal: clear the screen, then the report.
            println!("\x1b[2J\x1b[H{}", render(&doc));
        }
        tokio::time::sleep(Duration::from_millis(WATCH_INTERVAL_MS)).await;
    }
}

async fn gather(client: &Client, volume: &str) -> Result<HealStatus> {
    let peers = client.mgmt(&PeerList {}).await?;
    let mut parts = Vec::new();
    let mut unreachable = Vec::new();
    let op = HealLocal {
        name: volume.to_string(),
    };
    for p in &peers.peers {
        match client.mgmt_node(&op, &p.addr).await {
            Ok(part) => parts.push(part),
            Err(e) => unreachable.push(UnreachableNode {
                node: p.name.clone(),
                error: e.to_string(),
            }),
        }
    }
    if parts.is_empty() {
        // A single-node cluster lists itself under an address clients may not use: ask the
        // server the client is connected to.
        parts.push(client.mgmt(&op).await?);
        unreachable.clear();
    }
    Ok(merge(volume, &parts, unreachable))
}

/// One document from every node's part: the behind list from the freshest cluster view,
/// each PG's report from the primary with the newest epoch.
fn merge(volume: &str, parts: &[HealLocalReply], unreachable: Vec<UnreachableNode>) -> HealStatus {
    let bricks: &[String] = parts.first().map_or(&[], |p| &p.bricks);
    let brick = |m: u8| {
        bricks
            .get(m as usize)
            .cloned()
            .unwrap_or_else(|| "?".to_string())
    };
    let mut behind: BTreeMap<u32, &PgBehind> = BTreeMap::new();
    let mut reports: BTreeMap<u32, &PgHealReport> = BTreeMap::new();
    for part in parts {
        for b in &part.behind {
            if behind.get(&b.pg).is_none_or(|o| o.epoch < b.epoch) {
                behind.insert(b.pg, b);
            }
        }
        for r in &part.reports {
            if reports.get(&r.pg).is_none_or(|o| o.epoch < r.epoch) {
                reports.insert(r.pg, r);
            }
        }
    }
    let failing_disks: Vec<FailingDiskReport> = parts
        .iter()
        .flat_map(|p| p.failing_disks.iter().cloned())
        .collect();
    let (mut bytes_left, mut bytes_copied, mut rate) = (0u64, 0u64, 0u64);
    let mut pgs = Vec::new();
    for (pg, b) in &behind {
        let report = reports.get(pg);
        let mut targets = Vec::new();
        for t in report.iter().flat_map(|r| &r.targets) {
            bytes_left += t.bytes_left;
            bytes_copied += t.bytes_copied;
            rate += t.rate_bytes_s;
            let mut report = t.clone();
            let name = brick(t.member);
            if let Some(d) = failing_disks.iter().find(|d| d.brick == name) {
                report.error.get_or_insert_with(|| {
                    format!(
                        "disk failing for {} s ({}); healed back once a probe of it passes",
                        d.failing_s, d.error
                    )
                });
            }
            targets.push(HealTargetStatus {
                brick: name,
                eta_s: eta(t.bytes_left, t.rate_bytes_s),
                report,
            });
        }
        pgs.push(HealPgStatus {
            pg: *pg,
            epoch: b.epoch,
            source: report.map(|r| brick(r.source_member)),
            reported: report.is_some(),
            healing: b.healing.iter().map(|&m| brick(m)).collect(),
            absent: b.absent.iter().map(|&m| brick(m)).collect(),
            targets,
        });
    }
    HealStatus {
        volume: volume.to_string(),
        healed: behind.is_empty(),
        copied_total_bytes: reports.values().map(|r| r.copied_total_bytes).sum(),
        bytes_left,
        bytes_copied,
        rate_bytes_s: rate,
        eta_s: eta(bytes_left, rate),
        pgs_behind: behind.len() as u64,
        pgs,
        unreachable_nodes: unreachable,
        failing_disks,
    }
}

/// Seconds until `left` bytes are copied at `rate` bytes/s; None while nothing is copied.
fn eta(left: u64, rate: u64) -> Option<u64> {
    (rate > 0).then(|| left.div_ceil(rate))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let filled = (done * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    format!(
        "[{}{}] {:>3}%",
        "#".repeat(filled as usize),
        ".".repeat((WIDTH - filled) as usize),
        (done * 100).checked_div(total).unwrap_or(100)
    )
}

fn render(doc: &HealStatus) -> String {
    let disks: String = doc
        .failing_disks
        .iter()
        .map(|d| {
            format!(
                "  disk failing: {} for {} s, {} failures ({}); out of its PGs until a probe passes\n",
                d.brick, d.failing_s, d.failures, d.error
            )
        })
        .collect();
    let head = if doc.healed {
        format!("volume {}: healed, nothing left", doc.volume)
    } else {
        render_behind(doc)
    };
    format!("{head}\n{disks}").trim_end().to_string()
}

fn render_behind(doc: &HealStatus) -> String {
    let mut s = format!(
        "volume {}: {} PGs behind, {} left, {} copied, {}/s\n",
        doc.volume,
        doc.pgs_behind,
        mib(doc.bytes_left),
        mib(doc.bytes_copied),
        mib(doc.rate_bytes_s),
    );
    for pg in &doc.pgs {
        if !pg.reported {
            s.push_str(&format!(
                "  pg {:>4}: primary has not reported (node down?)\n",
                pg.pg
            ));
            continue;
        }
        for t in &pg.targets {
            let (left, copied) = (t.report.bytes_left, t.report.bytes_copied);
            s.push_str(&format!(
                "  pg {:>4}: {} -> {} {:8} {} {} left, {} copied, {}/s, ETA {}\n",
                pg.pg,
                pg.source.as_deref().unwrap_or("?"),
                t.brick,
                t.report.state,
                bar(copied, copied + left),
                mib(left),
                mib(copied),
                mib(t.report.rate_bytes_s),
                t.eta_s.map_or("-".into(), |e| format!("{e}s")),
            ));
            if let Some(e) = &t.report.error {
                s.push_str(&format!("        error: {e}\n"));
            }
            for f in &t.report.files {
                s.push_str(&format!(
                    "        {}: {} left, {} copied\n",
                    f.path,
                    mib(f.bytes_left),
                    mib(f.bytes_copied),
                ));
            }
        }
    }
    for u in &doc.unreachable_nodes {
        s.push_str(&format!("  node {} did not answer: {}\n", u.node, u.error));
    }
    s.trim_end().to_string()
}

pub(crate) async fn can_stop(client: &Client, out: &Out, node: &str) -> Result<()> {
    let doc = client
        .mgmt(&NodeCanStop {
            node: node.to_string(),
        })
        .await?;
    out.report(&doc, |d: &CanStop| {
        let mut s = if d.can_stop {
            format!("yes: node {node} can stop; every PG keeps enough up-to-date copies")
        } else {
            format!(
                "no: stopping node {node} would affect {} PGs",
                d.blocked_pgs
            )
        };
        for r in &d.reasons {
            s.push_str(&format!(
                "\n  volume {} pg {}: {}",
                r.volume, r.pg, r.reason
            ));
        }
        s
    })
}
