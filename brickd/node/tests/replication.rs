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

/// A replica-3 volume (min_size 2) that loses two of its nodes refuses writes until one is
/// back. A client's write in that time is not failed at once with "too few up-to-date
/// replicas": it waits, and lands if a member is back and healed within the client's failover
/// wait (30 s); after that it gets the refusal.
#[test]
fn a_write_below_min_size_waits_for_a_member_to_return() {
    use brick_client::{Client, ClientConfig};
    use brick_cluster::mgmt::VolumeOpen;
    use brick_wire::ROOT_FILE_ID;

    let mut cluster = LocalCluster::start(
        std::path::Path::new(BRICKD),
        "belowmin",
        &["n1", "n2", "n3"],
        PASSWORD,
    );
    // The write below runs on a worker thread while this one sleeps and restarts a node.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let first = ClientConfig {
        servers: vec![cluster.nodes[0].addr.clone()],
        ..cluster.admin.clone()
    };
    let (client, vol, fid) = rt.block_on(async {
        let client = Client::connect(first).await.expect("connect");
        let vol = failover::create_volume(&client, &cluster.nodes, "belowmin", 3).await;
        let a = vol
            .create(ROOT_FILE_ID, "f", 0o644, true)
            .await
            .expect("create");
        vol.write(a.fid, 0, &[1u8; 4096], true)
            .await
            .expect("first write");
        (client, vol, a.fid)
    });
    let pg = brick_wire::pg_of(fid) as usize;
    let up_to_date = |client: &Client| {
        let op = VolumeOpen {
            name: "belowmin".into(),
        };
        let handle = rt.block_on(client.mgmt(&op)).expect("volume maps");
        handle.pg_maps.get(pg).expect("map").up_to_date.count_ones()
    };

    cluster.nodes[1].kill9();
    cluster.nodes[2].kill9();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while up_to_date(&client) > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "PG {pg} kept more than one member up to date with two of three nodes dead"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // While no member comes back, a write waits out the client's failover wait, then gets
    // the clear refusal.
    let refused = {
        let vol = vol.clone();
        rt.spawn(async move { vol.write(fid, 0, &[2u8; 4096], true).await })
    };
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !refused.is_finished(),
        "a write below min_size ended at once: {:?}",
        rt.block_on(refused)
    );
    // A client told not to wait (`brick --below-min-size-wait-ms 0`) gets the refusal while
    // the one above still waits.
    let impatient = rt
        .block_on(async {
            let client = Client::connect(cluster.admin.clone()).await?;
            client.set_below_min_size_wait(Duration::ZERO);
            let vol = client.open_volume("belowmin").await?;
            vol.write(fid, 0, &[3u8; 4096], true).await
        })
        .expect_err("a write below min_size succeeded");
    assert_eq!(
        impatient.code(),
        Some(brick_wire::ErrorCode::BelowMinSize),
        "{impatient}"
    );
    assert!(
        !refused.is_finished(),
        "the waiting write ended before the impatient one was refused"
    );
    let err = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(40), refused).await })
        .expect("the client gives up after its failover wait")
        .expect("task")
        .expect_err("no member came back");
    assert_eq!(
        err.code(),
        Some(brick_wire::ErrorCode::BelowMinSize),
        "{err}"
    );
    assert!(err.to_string().contains("to accept writes"), "{err}");
    // A member that comes back while a write waits lets it land.
    let data = brick_testkit::pattern(11, 0, 64 << 10);
    let write = {
        let (vol, data) = (vol.clone(), data.clone());
        rt.spawn(async move { vol.write(fid, 0, &data, true).await })
    };
    std::thread::sleep(Duration::from_secs(1));
    cluster.nodes[1].restart();
    let written = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(40), write).await })
        .expect("the write ends once a member is back")
        .expect("task");
    written.expect("the write waited for a member and landed");
    let got = rt
        .block_on(vol.read(fid, 0, data.len() as u32))
        .expect("read");
    assert!(got == data, "the write that waited did not land");
}
