//! Replication with failover on real processes: a real etcd and three `brickd serve` nodes on
//! loopback; replica-3 and replica-2 volumes under write load (data writes on one file from
//! several writers, plus small-file creates through PG 0) while the primary or a secondary
//! of the loaded file's PG is SIGKILLed or SIGSTOPped. Every acknowledged write must read back,
//! clients must not see errors (they follow the failover), I/O must continue during the
//! fault, and the replicas that stayed up must hold byte-identical files. Stall times are
//! printed, not asserted (bench/failover-stall.sh measures them).

use brick_testkit::failover::{self, Fault, LocalCluster, Scenario, Target};
use std::time::Duration;

const BRICKD: &str = env!("CARGO_BIN_EXE_brickd");
const PASSWORD: &str = "replication-test-password";

#[test]
fn acknowledged_writes_survive_kill_and_freeze_of_primary_and_secondary() {
    let mut cluster = LocalCluster::start(
        std::path::Path::new(BRICKD),
        "replication",
        &["n1", "n2", "n3"],
        PASSWORD,
    );
    let mut summary = Vec::new();
    for replica in [3u32, 2] {
        for (fault, target) in [
            (Fault::Kill, Target::Secondary),
            (Fault::Freeze, Target::Secondary),
            (Fault::Kill, Target::Primary),
            (Fault::Freeze, Target::Primary),
        ] {
            let sc = Scenario {
                volume: format!("r{replica}-{fault:?}-{target:?}").to_lowercase(),
                replica,
                fault,
                target,
                before: Duration::from_millis(700),
                during: Duration::from_millis(3500),
                after: Duration::from_millis(700),
                writers: 8,
                latency_log: None,
            };
            let r = failover::run(&mut cluster.nodes, cluster.admin.clone(), &sc);
            let line = format!(
                "{}: {fault:?} {target:?} ({}): {} writes acked ({} after the fault), {} files, \
                 {} blocks verified, copies identical on {:?}, longest request {:?}",
                sc.volume,
                r.target_node,
                r.writes_acked,
                r.writes_acked_after_fault,
                r.files_created,
                r.blocks_verified,
                r.compared,
                r.stall_max
            );
            eprintln!("{line}");
            assert!(
                r.errors.is_empty(),
                "{}: clients saw errors instead of a transparent failover: {:?}",
                sc.volume,
                &r.errors[..r.errors.len().min(5)]
            );
            assert!(
                r.writes_acked_after_fault > 0,
                "{}: no write completed after the fault",
                sc.volume
            );
            assert!(r.files_created > 0, "{}: no file created", sc.volume);
            summary.push(line);
        }
    }
    eprintln!("{}", summary.join("\n"));
}
