//! Disks that fail and lose power, on real processes: a real etcd and `brickd serve` nodes on
//! loopback, one brick (or every brick) on `brick-faultfs`, a FUSE passthrough that fails
//! chosen operations with EIO or ENOSPC and, on a power cut, forgets every write no fsync
//! made durable. A workload of keyed records (testkit::history) runs throughout and is
//! checked for lost acknowledged writes and stale reads.
//!
//! `FAULTS_ROUNDS` (default 1) repeats each scenario, `FAULTS_SEED` (default 1) picks the
//! readers' blocks and the moments of the faults, and `FAULTS_REPORT` names a file to which
//! each scenario appends one JSON line (bench/faults.sh reads them into its table).

use brick_client::{Client, Volume};
use brick_cluster::mgmt::VolumeInfo;
use brick_cluster::report::HealStatus;
use brick_testkit::failover::{compare_copies, create_volume, LocalCluster};
use brick_testkit::faultfs::FaultFs;
use brick_testkit::history::{
    assert_clean, env_u64, pick, report, rounds, seed, Workload, BLOCK_BYTES,
};
use brick_wire::ROOT_FILE_ID;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const PASSWORD: &str = "faults-test-password";
const BLOCKS: u64 = 512;
const WRITERS: u64 = 4;
const READERS: u64 = 2;
const SMALL_FILES: u64 = 8;
/// A heal or a failover that takes longer than this fails the test (with the status).
const SETTLE_WAIT: Duration = Duration::from_secs(60);

fn brick_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_brick"))
}

fn brickd_exe() -> PathBuf {
    let p = brick_exe().with_file_name("brickd");
    assert!(p.exists(), "{} not built", p.display());
    p
}

/// The workload's tasks run while the test thread sleeps between faults.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// `brick --json ARGS` as the admin.
fn brick_json<T: serde::de::DeserializeOwned>(cluster: &LocalCluster, args: &[&str]) -> T {
    cluster.brick_json(&brick_exe(), args)
}

fn heal_status(cluster: &LocalCluster, volume: &str) -> HealStatus {
    brick_json(cluster, &["heal", "status", volume])
}

/// A volume over `cluster`'s nodes whose bricks listed in `on_faultfs` sit on brick-faultfs;
/// returns the mounts, the volume and its loaded file (`BLOCKS` blocks, written once).
async fn setup(
    cluster: &LocalCluster,
    volume: &str,
    on_faultfs: &[usize],
) -> (Vec<(usize, FaultFs)>, Volume, brick_wire::FileId) {
    let mounts: Vec<(usize, FaultFs)> = on_faultfs
        .iter()
        .map(|&i| {
            let n = &cluster.nodes[i];
            let backing = n.dir.join(format!("{volume}.disk"));
            (i, FaultFs::mount(&backing, &n.brick_dir(volume)))
        })
        .collect();
    let client = Client::connect(cluster.admin.clone())
        .await
        .expect("connect as admin");
    let replica = cluster.nodes.len() as u32;
    let vol = create_volume(&client, &cluster.nodes, volume, replica).await;
    let f = vol
        .create(ROOT_FILE_ID, "records", 0o644, true)
        .await
        .expect("create the records file");
    vol.write(f.fid, (BLOCKS * BLOCK_BYTES as u64) - 1, &[0], true)
        .await
        .expect("size the records file");
    // A few more files, so the copies compared at the end are more than one file.
    for i in 0..SMALL_FILES {
        let a = vol
            .create(ROOT_FILE_ID, &format!("small-{i}"), 0o644, true)
            .await
            .expect("create a small file");
        vol.write(a.fid, 0, &brick_testkit::pattern(i, 0, 100), true)
            .await
            .expect("write a small file");
    }
    (mounts, vol, f.fid)
}

/// The node name holding the primary of `fid`'s PG.
async fn primary_of(cluster: &LocalCluster, volume: &str, fid: brick_wire::FileId) -> String {
    let client = Client::connect(cluster.admin.clone())
        .await
        .expect("connect as admin");
    let info = client
        .mgmt(&VolumeInfo {
            name: volume.into(),
        })
        .await
        .expect("volume info");
    info.pgs
        .get(brick_wire::pg_of(fid) as usize)
        .and_then(|p| p.primary.as_deref())
        .and_then(|b| b.split(':').next())
        .expect("a primary")
        .to_string()
}

/// Waits until every PG has all its members up to date (the heal is done).
fn wait_healed(cluster: &LocalCluster, volume: &str) -> HealStatus {
    let start = Instant::now();
    loop {
        let st = heal_status(cluster, volume);
        if st.healed {
            return st;
        }
        assert!(
            start.elapsed() < SETTLE_WAIT,
            "{volume}: not healed after {SETTLE_WAIT:?}: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One brick (the loaded PG's primary, or its secondary) starts failing `faults` (op, path
/// part, errno) under load; `clear` ends them. The member must leave, clients must not see
/// it (no error, no stale read, nothing lost), `heal status` must name the failing disk, and
/// once the disk works again (the quarantine over and a probe passed) the heal must bring the
/// copies back to identical.
fn failing_disk(scenario: &str, faults: &[(&str, &str, &str)], on_primary: bool) {
    let rt = runtime();
    for round in 0..rounds() {
        let cluster = LocalCluster::start(&brickd_exe(), "faults-disk", &["f1", "f2"], PASSWORD);
        let volume = "disk";
        let (mounts, vol, fid) = rt.block_on(setup(&cluster, volume, &[0, 1]));
        let primary = rt.block_on(primary_of(&cluster, volume, fid));
        let target = match (primary == "f1", on_primary) {
            (true, true) | (false, false) => 0,
            _ => 1,
        };
        let disk = &mounts[target].1;
        let mut load = rt.block_on(async {
            Workload::start(vol, fid, BLOCKS, WRITERS, READERS, seed() + round)
        });
        std::thread::sleep(Duration::from_secs(2));
        for (op, part, errno) in faults {
            disk.fail(op, part, errno);
        }
        std::thread::sleep(Duration::from_secs(4));
        let failing = heal_status(&cluster, volume);
        let injected = disk.stat("injected");
        let brick_name = format!(
            "{}:{}",
            cluster.nodes[target].name,
            cluster.nodes[target].brick_dir(volume).display()
        );
        let primary_after = rt.block_on(primary_of(&cluster, volume, fid));
        disk.clear();
        let o = rt.block_on(load.verify(false));
        eprintln!("{scenario}: heal status with the disk failing: {failing:?}");
        report(
            scenario,
            round,
            &o,
            serde_json::json!({"injected": injected, "primary_before": primary, "primary_after": primary_after}),
        );
        assert_clean(scenario, &o, false);
        assert!(injected > 0, "{scenario}: no fault was injected");
        assert!(
            failing.failing_disks.iter().any(|d| d.brick == brick_name),
            "{scenario}: heal status does not name the failing disk {brick_name}: {failing:?}"
        );
        let healed = wait_healed(&cluster, volume);
        assert!(healed.healed);
        compare_copies(&cluster.nodes, &[0, 1], volume);
    }
}

#[test]
fn disk_eio_on_primary_reads() {
    failing_disk(
        "disk-eio-primary-reads",
        &[("read", "records", "EIO")],
        true,
    );
}

#[test]
fn disk_eio_on_primary_writes() {
    failing_disk(
        "disk-eio-primary-writes",
        &[("write", "*", "EIO"), ("fsync", "*", "EIO")],
        true,
    );
}

#[test]
fn disk_eio_on_secondary_writes() {
    failing_disk(
        "disk-eio-secondary-writes",
        &[("write", "*", "EIO"), ("fsync", "*", "EIO")],
        false,
    );
}

#[test]
fn disk_enospc_on_secondary() {
    failing_disk(
        "disk-enospc-secondary",
        &[("write", "data", "ENOSPC")],
        false,
    );
}

/// The machine of node `i` loses power: brickd is killed, every write no fsync made durable is
/// forgotten, and the brick comes back after a reboot (another boot id). Returns the bytes
/// forgotten.
fn power_cut(cluster: &mut LocalCluster, mounts: &mut [(usize, FaultFs)], i: usize) -> u64 {
    cluster.nodes[i].kill9();
    let disk = &mut mounts
        .iter_mut()
        .find(|m| m.0 == i)
        .expect("a faultfs brick")
        .1;
    let forgot = disk.cut();
    let boot_id = disk.backing.join(".brickd").join("boot-id");
    std::fs::write(
        &boot_id,
        format!("power-cut-{}\n", pick(forgot, i as u64, 1 << 40)),
    )
    .expect("a new boot id");
    disk.remount();
    forgot
}

/// Power cuts under load. `all`: every node at once (then only writes made durable by FUA or
/// an acknowledged fsync must survive); otherwise one node (the loaded PG's primary or its
/// secondary, alternating by round), while the other keeps serving: then every acknowledged
/// write must survive, the heal repairing the cut copy.
fn power_loss(scenario: &str, all: bool) {
    let rt = runtime();
    for round in 0..rounds() {
        let mut cluster =
            LocalCluster::start(&brickd_exe(), "faults-power", &["f1", "f2"], PASSWORD);
        let volume = "power";
        let (mut mounts, vol, fid) = rt.block_on(setup(&cluster, volume, &[0, 1]));
        let primary = rt.block_on(primary_of(&cluster, volume, fid));
        let primary_idx = usize::from(primary != "f1");
        let cut: Vec<usize> = if all {
            vec![0, 1]
        } else if round % 2 == 0 {
            vec![primary_idx]
        } else {
            vec![1 - primary_idx]
        };
        let mut load = rt.block_on(async {
            Workload::start(vol, fid, BLOCKS, WRITERS, READERS, seed() + round)
        });
        std::thread::sleep(Duration::from_millis(1500 + pick(round, 1, 1500)));
        let forgot: u64 = cut
            .iter()
            .map(|&i| power_cut(&mut cluster, &mut mounts, i))
            .sum();
        let o = if all {
            // Nothing serves until the nodes are back: the load stops first, so that no read
            // can see what the cut took (allowed here) and count it as stale.
            let o = rt.block_on(load.stop_and_outcome());
            for &i in &cut {
                cluster.nodes[i].restart();
            }
            let _ = wait_healed(&cluster, volume);
            rt.block_on(load.verify(true)).with_errors_of(&o)
        } else {
            std::thread::sleep(Duration::from_millis(1000 + pick(round, 2, 1000)));
            for &i in &cut {
                cluster.nodes[i].restart();
            }
            let _ = wait_healed(&cluster, volume);
            rt.block_on(load.verify(false))
        };
        let cut_names: Vec<&str> = cut
            .iter()
            .map(|&i| cluster.nodes[i].name.as_str())
            .collect();
        report(
            scenario,
            round,
            &o,
            serde_json::json!({"forgotten_bytes": forgot, "cut": cut_names, "primary_before": primary}),
        );
        // Clients see errors only while no copy serves (every node cut).
        assert_clean(scenario, &o, all);
        assert!(
            forgot > 0,
            "{scenario}: the cut forgot nothing: the test would not see a loss"
        );
        compare_copies(&cluster.nodes, &[0, 1], volume);
    }
}

#[test]
fn power_loss_of_one_node() {
    power_loss("power-loss-one-node", false);
}

#[test]
fn power_loss_of_every_node() {
    power_loss("power-loss-every-node", true);
}

/// How long the store outages last (`FAULTS_STORE_OUTAGE_S`, default 8 s).
fn store_outage() -> Duration {
    Duration::from_secs(env_u64("FAULTS_STORE_OUTAGE_S", 8))
}

/// The cluster store away under load: `quorum` kills two of three etcd members (no quorum),
/// otherwise the only member is frozen (SIGSTOP: it keeps its sockets and answers nothing).
/// Data I/O must go on without an error, a stale read or a lost write.
fn store_away(scenario: &str, quorum: bool) {
    let rt = runtime();
    for round in 0..rounds() {
        let etcd = if quorum {
            brick_testkit::Etcd::start_cluster(3)
        } else {
            vec![brick_testkit::Etcd::start()]
        };
        let mut cluster =
            LocalCluster::start_on(&brickd_exe(), "faults-store", &["f1", "f2"], PASSWORD, etcd);
        let volume = "store";
        let (_mounts, vol, fid) = rt.block_on(setup(&cluster, volume, &[]));
        let mut load = rt.block_on(async {
            Workload::start(vol, fid, BLOCKS, WRITERS, READERS, seed() + round)
        });
        std::thread::sleep(Duration::from_millis(1000 + pick(round, 3, 1000)));
        let acked_before = load.acked();
        if quorum {
            cluster.etcd[2].kill9();
            cluster.etcd[1].kill9();
        } else {
            cluster.etcd[0].freeze();
        }
        std::thread::sleep(store_outage());
        let acked_during = load.acked() - acked_before;
        if quorum {
            cluster.etcd[1].restart();
            cluster.etcd[2].restart();
        } else {
            cluster.etcd[0].thaw();
        }
        std::thread::sleep(Duration::from_millis(500));
        let o = rt.block_on(load.verify(false));
        report(
            scenario,
            round,
            &o,
            serde_json::json!({"outage_ms": store_outage().as_millis() as u64, "acked_during_outage": acked_during}),
        );
        assert_clean(scenario, &o, false);
        assert!(
            acked_during > 0,
            "{scenario}: no write went through during the outage"
        );
        compare_copies(&cluster.nodes, &[0, 1], volume);
    }
}

#[test]
fn store_frozen() {
    store_away("store-frozen", false);
}

#[test]
fn store_quorum_lost() {
    store_away("store-quorum-lost", true);
}
