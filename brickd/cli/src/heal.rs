//! `brick heal status` and `brick node can-stop`.
//!
//! Heal progress lives with the PG primaries that run the heals, on every node; the cluster
//! state says which PGs have members behind. `heal status` asks every peer for its part
//! (`HealLocal`) and merges them: a PG behind whose primary did not answer is shown as
//! unreported, never as healed.

use crate::Out;
use anyhow::Result;
use brick_client::Client;
use brick_cluster::mgmt::MgmtOp;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// `--watch` refreshes this often.
const WATCH_INTERVAL_MS: u64 = 1000;
/// `--watch` gives up after this long (a heal that does not progress is still visible).
const WATCH_SECONDS_MAX: u64 = 24 * 3600;

pub(crate) async fn status(client: &Client, out: &Out, volume: &str, watch: bool) -> Result<()> {
    if !watch {
        let doc = gather(client, volume).await?;
        out.report(&doc, render);
        return Ok(());
    }
    let started = std::time::Instant::now();
    loop {
        let doc = gather(client, volume).await?;
        let healed = doc["healed"].as_bool().unwrap_or(false);
        if healed || started.elapsed() > Duration::from_secs(WATCH_SECONDS_MAX) {
            out.report(&doc, render);
            return Ok(());
        }
        if !out.json {
            // Redraw in place on a terminal: clear the screen, then the report.
            println!("\x1b[2J\x1b[H{}", render(&doc));
        }
        tokio::time::sleep(Duration::from_millis(WATCH_INTERVAL_MS)).await;
    }
}

async fn gather(client: &Client, volume: &str) -> Result<Value> {
    let peers = client.mgmt(&MgmtOp::PeerList).await?;
    let mut parts = Vec::new();
    let mut unreachable = Vec::new();
    let op = MgmtOp::HealLocal {
        name: volume.to_string(),
    };
    let peers = peers["peers"].as_array().cloned().unwrap_or_default();
    for p in &peers {
        let (Some(name), Some(addr)) = (p["name"].as_str(), p["addr"].as_str()) else {
            continue;
        };
        match client.mgmt_node(&op, addr).await {
            Ok(doc) => parts.push(doc),
            Err(e) => unreachable.push(json!({"node": name, "error": e.to_string()})),
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
fn merge(volume: &str, parts: &[Value], unreachable: Vec<Value>) -> Value {
    let bricks = parts
        .iter()
        .find_map(|p| p["bricks"].as_array().cloned())
        .unwrap_or_default();
    let brick = |m: &Value| {
        m.as_u64()
            .and_then(|i| bricks.get(i as usize))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    let mut behind: BTreeMap<u64, Value> = BTreeMap::new();
    let mut reports: BTreeMap<u64, Value> = BTreeMap::new();
    for part in parts {
        for b in part["behind"].as_array().into_iter().flatten() {
            let pg = b["pg"].as_u64().unwrap_or(0);
            let newer = behind
                .get(&pg)
                .is_none_or(|o| o["epoch"].as_u64() < b["epoch"].as_u64());
            if newer {
                behind.insert(pg, b.clone());
            }
        }
        for r in part["reports"].as_array().into_iter().flatten() {
            let pg = r["pg"].as_u64().unwrap_or(0);
            let newer = reports
                .get(&pg)
                .is_none_or(|o| o["epoch"].as_u64() < r["epoch"].as_u64());
            if newer {
                reports.insert(pg, r.clone());
            }
        }
    }
    let (mut bytes_left, mut bytes_copied, mut rate) = (0u64, 0u64, 0u64);
    let mut pgs = Vec::new();
    for (pg, b) in &behind {
        let report = reports.get(pg);
        let source = report.map(|r| brick(&r["source_member"]));
        let mut targets = Vec::new();
        for t in report
            .and_then(|r| r["targets"].as_array())
            .into_iter()
            .flatten()
        {
            let left = t["bytes_left"].as_u64().unwrap_or(0);
            let r = t["rate_bytes_s"].as_u64().unwrap_or(0);
            bytes_left += left;
            bytes_copied += t["bytes_copied"].as_u64().unwrap_or(0);
            rate += r;
            let mut t = t.clone();
            t["brick"] = json!(brick(&t["member"]));
            t["eta_s"] = if r > 0 {
                json!(left.div_ceil(r))
            } else {
                Value::Null
            };
            targets.push(t);
        }
        pgs.push(json!({
            "pg": pg,
            "epoch": b["epoch"],
            "source": source,
            "reported": report.is_some(),
            "healing": b["healing"].as_array().into_iter().flatten().map(&brick).collect::<Vec<_>>(),
            "absent": b["absent"].as_array().into_iter().flatten().map(&brick).collect::<Vec<_>>(),
            "targets": targets,
        }));
    }
    // Since each primary started: what heals copied in all, finished ones included.
    let copied_total: u64 = reports
        .values()
        .map(|r| r["copied_total_bytes"].as_u64().unwrap_or(0))
        .sum();
    json!({
        "volume": volume,
        "healed": behind.is_empty(),
        "copied_total_bytes": copied_total,
        "bytes_left": bytes_left,
        "bytes_copied": bytes_copied,
        "rate_bytes_s": rate,
        "eta_s": if rate > 0 { json!(bytes_left.div_ceil(rate)) } else { Value::Null },
        "pgs_behind": behind.len(),
        "pgs": pgs,
        "unreachable_nodes": unreachable,
    })
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

fn render(doc: &Value) -> String {
    let mut s = String::new();
    if doc["healed"].as_bool() == Some(true) {
        return format!(
            "volume {}: healed, nothing left",
            doc["volume"].as_str().unwrap_or("?")
        );
    }
    s.push_str(&format!(
        "volume {}: {} PGs behind, {} left, {} copied, {}/s\n",
        doc["volume"].as_str().unwrap_or("?"),
        doc["pgs_behind"],
        mib(doc["bytes_left"].as_u64().unwrap_or(0)),
        mib(doc["bytes_copied"].as_u64().unwrap_or(0)),
        mib(doc["rate_bytes_s"].as_u64().unwrap_or(0)),
    ));
    for pg in doc["pgs"].as_array().into_iter().flatten() {
        if pg["reported"].as_bool() != Some(true) {
            s.push_str(&format!(
                "  pg {:>4}: primary has not reported (node down?)\n",
                pg["pg"]
            ));
            continue;
        }
        for t in pg["targets"].as_array().into_iter().flatten() {
            let left = t["bytes_left"].as_u64().unwrap_or(0);
            let copied = t["bytes_copied"].as_u64().unwrap_or(0);
            s.push_str(&format!(
                "  pg {:>4}: {} -> {} {:8} {} {} left, {} copied, {}/s, ETA {}\n",
                pg["pg"],
                pg["source"].as_str().unwrap_or("?"),
                t["brick"].as_str().unwrap_or("?"),
                t["state"].as_str().unwrap_or("?"),
                bar(copied, copied + left),
                mib(left),
                mib(copied),
                mib(t["rate_bytes_s"].as_u64().unwrap_or(0)),
                t["eta_s"].as_u64().map_or("-".into(), |e| format!("{e}s")),
            ));
            if let Some(e) = t["error"].as_str() {
                s.push_str(&format!("        error: {e}\n"));
            }
            for f in t["files"].as_array().into_iter().flatten() {
                s.push_str(&format!(
                    "        {}: {} left, {} copied\n",
                    f["path"].as_str().unwrap_or("?"),
                    mib(f["bytes_left"].as_u64().unwrap_or(0)),
                    mib(f["bytes_copied"].as_u64().unwrap_or(0)),
                ));
            }
        }
    }
    for u in doc["unreachable_nodes"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "  node {} did not answer: {}\n",
            u["node"], u["error"]
        ));
    }
    s.trim_end().to_string()
}

pub(crate) async fn can_stop(client: &Client, out: &Out, node: &str) -> Result<()> {
    let doc = client
        .mgmt(&MgmtOp::NodeCanStop {
            node: node.to_string(),
        })
        .await?;
    out.report(&doc, |d| {
        let mut s = if d["can_stop"].as_bool() == Some(true) {
            format!("yes: node {node} can stop; every PG keeps enough up-to-date copies")
        } else {
            format!(
                "no: stopping node {node} would affect {} PGs",
                d["blocked_pgs"]
            )
        };
        for r in d["reasons"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "\n  volume {} pg {}: {}",
                r["volume"].as_str().unwrap_or("?"),
                r["pg"],
                r["reason"].as_str().unwrap_or("?")
            ));
        }
        s
    });
    Ok(())
}
