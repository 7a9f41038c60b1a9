//! The longest client stall while a replica or the primary is frozen (SIGSTOP) or killed:
//! a real etcd and three `brickd serve` nodes on loopback, write load on replica-3 and
//! replica-2 volumes, every request's latency logged as CSV (one file per scenario), and a
//! summary of the longest request per scenario. Run through bench/failover-stall.sh.
//!
//!   failover-stall --brickd target/release/brickd --out DIR [--during-ms N]

use brick_testkit::failover::{self, Fault, LocalCluster, Scenario, Target};
use std::path::PathBuf;
use std::time::Duration;

const PASSWORD: &str = "failover-stall-bench";

fn main() {
    let mut brickd = PathBuf::from("target/release/brickd");
    let mut out = PathBuf::from("target/failover-stall");
    let mut during_ms = 5000u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().unwrap_or_default();
        match a.as_str() {
            "--brickd" => brickd = PathBuf::from(value),
            "--out" => out = PathBuf::from(value),
            "--during-ms" => during_ms = value.parse().unwrap_or(during_ms).min(60_000),
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2);
            }
        }
    }
    std::fs::create_dir_all(&out).expect("output directory");
    let mut cluster = LocalCluster::start(&brickd, "failover-stall", &["n1", "n2", "n3"], PASSWORD);
    let mut rows = Vec::new();
    for replica in [3u32, 2] {
        for (fault, target) in [
            (Fault::Freeze, Target::Secondary),
            (Fault::Freeze, Target::Primary),
            (Fault::Kill, Target::Secondary),
            (Fault::Kill, Target::Primary),
        ] {
            let name = format!("r{replica}-{fault:?}-{target:?}").to_lowercase();
            let log = out.join(format!("{name}.csv"));
            let sc = Scenario {
                volume: name.clone(),
                replica,
                fault,
                target,
                before: Duration::from_secs(1),
                during: Duration::from_millis(during_ms),
                after: Duration::from_secs(1),
                writers: 32,
                latency_log: Some(log.clone()),
            };
            let r = failover::run(&mut cluster.nodes, cluster.admin.clone(), &sc);
            let row = serde_json::json!({
                "scenario": name,
                "target_node": r.target_node,
                "stall_max_ms": r.stall_max.as_secs_f64() * 1000.0,
                "writes_acked": r.writes_acked,
                "writes_acked_after_fault": r.writes_acked_after_fault,
                "errors": r.errors.len(),
                "latency_log": log.display().to_string(),
            });
            println!("{row}");
            rows.push(row);
        }
    }
    drop(cluster);
    let summary = serde_json::json!({"during_ms": during_ms, "scenarios": rows});
    let path = out.join("summary.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&summary).unwrap_or_default(),
    )
    .expect("summary");
    println!("summary: {}", path.display());
}
