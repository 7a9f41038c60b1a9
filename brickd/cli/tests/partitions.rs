//! Network partitions between real processes: three `brickd serve` nodes, etcd and the client
//! each in its own network namespace (testkit::netns), joined by a bridge on private
//! addresses; links are cut by nftables rules that drop packets (TCP waits, nothing is
//! refused). A replica-3 volume (min_size 2) runs a workload of keyed records
//! (testkit::history) throughout, its readers on a second client whose maps are their own (so
//! they may still ask an old primary after the writers moved on), checked for lost
//! acknowledged writes and stale reads; the
//! copies must be identical once healed, and no two members may have been primary of one PG
//! in one epoch (each node logs when one of its members becomes primary).
//!
//! `FAULTS_ROUNDS`, `FAULTS_SEED` and `FAULTS_REPORT` as in tests/faults.rs (bench/faults.sh
//! runs both).

use brick_client::{Client, ClientConfig, Volume};
use brick_cluster::mgmt::VolumeInfo;
use brick_cluster::report::HealStatus;
use brick_testkit::failover::{compare_copies, create_volume};
use brick_testkit::history::{
    assert_clean, env_u64, pick, report, rounds, seed, Workload, BLOCK_BYTES,
};
use brick_testkit::netns::{self, Net};
use brick_testkit::{Etcd, ServeNode};
use brick_wire::ROOT_FILE_ID;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const PASSWORD: &str = "partitions-test-password";
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const BLOCKS: u64 = 512;
const WRITERS: u64 = 4;
const READERS: u64 = 2;
const SMALL_FILES: u64 = 8;
const PORT: u16 = 7000;
/// A heal that takes longer than this fails the test (with the status).
const SETTLE_WAIT: Duration = Duration::from_secs(90);

fn brick_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_brick"))
}

fn brickd_exe() -> PathBuf {
    let p = brick_exe().with_file_name("brickd");
    assert!(p.exists(), "{} not built", p.display());
    p
}

/// How long each partition lasts (`FAULTS_PARTITION_S`, default 6 s).
fn partition() -> Duration {
    Duration::from_secs(env_u64("FAULTS_PARTITION_S", 6))
}

/// The hosts, the store and the nodes; the processes stop before the namespaces go.
struct Cluster {
    nodes: Vec<ServeNode>,
    _etcd: Etcd,
    net: Net,
    admin: ClientConfig,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Creates the namespaces, moves the calling thread into the client's, and starts etcd
    /// and the nodes.
    fn start() -> Cluster {
        if let Err(why) = netns::available() {
            panic!("partition tests cannot run here: {why}");
        }
        let mut hosts: Vec<&str> = NODES.to_vec();
        hosts.extend(["etcd", "client", "admin"]);
        let net = Net::create(&hosts);
        net.enter("client");
        let tmp = tempfile::Builder::new()
            .prefix("partitions")
            .tempdir_in(brick_testkit::scratch_root())
            .expect("tempdir");
        if std::env::var_os("BRICK_KEEP_SCRATCH").is_some() {
            eprintln!("BRICK_KEEP_SCRATCH: keeping {}", tmp.path().display());
        }
        let etcd = Etcd::start_in(&net, "etcd");
        let store = format!("etcd://{}", etcd.endpoint);
        let nodes: Vec<ServeNode> = NODES
            .iter()
            .map(|&n| {
                let h = net.host(n);
                let addr = format!("{}:{PORT}", h.ip);
                ServeNode::start_in(
                    &brickd_exe(),
                    (n, tmp.path()),
                    (&store, PASSWORD),
                    &h.ns,
                    &addr,
                )
            })
            .collect();
        let admin = ClientConfig {
            servers: nodes.iter().map(|n| n.addr.clone()).collect(),
            user: "admin".into(),
            password: PASSWORD.into(),
        };
        Cluster {
            nodes,
            _etcd: etcd,
            net,
            admin,
            _tmp: tmp,
        }
    }

    /// `brick heal status VOLUME` run in the admin's namespace (never cut).
    fn heal_status(&self, volume: &str) -> HealStatus {
        let mut cmd = self.net.command("admin", brick_exe());
        let out = cmd
            .arg("--servers")
            .arg(self.admin.servers.join(","))
            .args([
                "--user",
                "admin",
                "--password",
                PASSWORD,
                "--json",
                "--quiet",
            ])
            .args(["heal", "status", volume])
            .output()
            .expect("run brick");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "brick heal status failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("heal status: {e}: {stdout}"))
    }

    fn wait_healed(&self, volume: &str) -> Duration {
        let start = Instant::now();
        loop {
            let st = self.heal_status(volume);
            if st.healed {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < SETTLE_WAIT,
                "{volume}: not healed after {SETTLE_WAIT:?}: {st:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Every (volume, PG, epoch) some node logged a primary for, with the members that were.
    /// More than one member for one key is two primaries in one epoch.
    fn primaries(&self) -> BTreeMap<(String, u32, u64), Vec<(String, u32)>> {
        let mut seen: BTreeMap<(String, u32, u64), Vec<(String, u32)>> = BTreeMap::new();
        for n in &self.nodes {
            for line in n.log().lines() {
                let Some((pg, volume, member, epoch)) = parse_primary(line) else {
                    continue;
                };
                let who = seen.entry((volume, pg, epoch)).or_default();
                if !who.contains(&(n.name.clone(), member)) {
                    who.push((n.name.clone(), member));
                }
            }
        }
        seen
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
        // Logs and bricks stay for a post-mortem (the directory is printed at start).
        brick_testkit::keep_scratch_if_asked(&mut self._tmp);
    }
}

/// "PG 3 of volume v: member 1 is primary in epoch 5" (ANSI colours stripped).
fn parse_primary(line: &str) -> Option<(u32, String, u32, u64)> {
    let plain: String = strip_ansi(line);
    let rest = &plain[plain.find("PG ")? + 3..];
    let (pg, rest) = rest.split_once(" of volume ")?;
    let (volume, rest) = rest.split_once(": member ")?;
    let (member, rest) = rest.split_once(" is primary in epoch ")?;
    let epoch = rest.split_whitespace().next()?;
    Some((
        pg.parse().ok()?,
        volume.to_string(),
        member.parse().ok()?,
        epoch.parse().ok()?,
    ))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The workload's tasks run while the test thread sleeps between faults (built after the
/// thread entered the client's namespace: its workers are there too).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The volume and its loaded file (`BLOCKS` blocks), the same volume opened by a second
/// client (the readers'), and the node holding the file's PG primary.
async fn setup(cluster: &Cluster, volume: &str) -> (Volume, Volume, brick_wire::FileId, String) {
    let client = Client::connect(cluster.admin.clone())
        .await
        .expect("connect as admin");
    let vol = create_volume(&client, &cluster.nodes, volume, NODES.len() as u32).await;
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
    let info = client
        .mgmt(&VolumeInfo {
            name: volume.into(),
        })
        .await
        .expect("volume info");
    let primary = info
        .pgs
        .get(brick_wire::pg_of(f.fid) as usize)
        .and_then(|p| p.primary.as_deref())
        .and_then(|b| b.split(':').next())
        .expect("a primary")
        .to_string();
    let readers = Client::connect(cluster.admin.clone())
        .await
        .expect("connect the readers' client")
        .open_volume(volume)
        .await
        .expect("open the volume for the readers");
    (vol, readers, f.fid, primary)
}

/// What a scenario does to the links while the load runs; returns what to report of it.
type Fault = fn(&mut Net, &Roles, u64) -> serde_json::Value;

/// The loaded PG's primary node and the two others.
struct Roles {
    primary: String,
    others: [String; 2],
}

/// Runs `fault` under load, restores every link, waits for the heal and checks the history,
/// the copies and the primaries. `errors_allowed`: the scenario may leave the loaded PG
/// without a writable majority for longer than clients wait.
fn scenario(name: &str, fault: Fault, errors_allowed: bool) {
    for round in 0..rounds() {
        // Each round in its own thread: it moves into the client's namespace.
        let name = name.to_string();
        std::thread::Builder::new()
            .name(format!("{name}-{round}"))
            .spawn(move || one_round(&name, round, fault, errors_allowed))
            .expect("spawn")
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
    }
}

fn one_round(name: &str, round: u64, fault: Fault, errors_allowed: bool) {
    let mut cluster = Cluster::start();
    let rt = runtime();
    let volume = "part";
    let (vol, readers_vol, fid, primary) = rt.block_on(setup(&cluster, volume));
    let others: Vec<String> = NODES
        .iter()
        .filter(|&&n| n != primary)
        .map(|n| n.to_string())
        .collect();
    let roles = Roles {
        primary: primary.clone(),
        others: [others[0].clone(), others[1].clone()],
    };
    let mut load = rt.block_on(async {
        let shape = (BLOCKS, WRITERS, READERS);
        Workload::start_with_readers_on(vol, readers_vol, fid, shape, seed() + round)
    });
    std::thread::sleep(Duration::from_millis(1500 + pick(round, 11, 1000)));
    let acked_before = load.acked();
    let extra = fault(&mut cluster.net, &roles, round);
    let acked_during = load.acked() - acked_before;
    cluster.net.restore_all();
    std::thread::sleep(Duration::from_millis(1500));
    let o = rt.block_on(load.verify(false));
    let heal = cluster.wait_healed(volume);
    let primaries = cluster.primaries();
    let doubled: Vec<_> = primaries.iter().filter(|(_, who)| who.len() > 1).collect();
    let mut extra = extra;
    extra["primary_before"] = serde_json::json!(primary);
    extra["acked_during_fault"] = serde_json::json!(acked_during);
    extra["heal_after_ms"] = serde_json::json!(heal.as_millis() as u64);
    extra["primary_epochs_logged"] = serde_json::json!(primaries.len());
    extra["two_primaries_in_one_epoch"] = serde_json::json!(doubled.len());
    report(name, round, &o, extra);
    assert_clean(name, &o, errors_allowed);
    assert!(
        doubled.is_empty(),
        "{name}: two members primary of one PG in one epoch: {doubled:?}"
    );
    assert!(
        primaries.keys().any(|(v, _, _)| v == volume),
        "{name}: no node logged a primary (the invariant would check nothing)"
    );
    compare_copies(&cluster.nodes, &[0, 1, 2], volume);
    drop(load);
    rt.shutdown_timeout(Duration::from_secs(5));
}

/// The primary of the loaded PG cannot reach etcd; clients and the other nodes still reach it.
fn cut_primary_from_store(net: &mut Net, r: &Roles, _round: u64) -> serde_json::Value {
    net.cut(&r.primary, "etcd");
    std::thread::sleep(partition());
    serde_json::json!({"cut": [[r.primary, "etcd"]]})
}

/// A secondary cannot reach the primary (and the primary not it); everything else works.
fn cut_replica_from_primary(net: &mut Net, r: &Roles, round: u64) -> serde_json::Value {
    let secondary = &r.others[(round % 2) as usize];
    net.cut(&r.primary, secondary);
    std::thread::sleep(partition());
    serde_json::json!({"cut": [[r.primary, secondary]]})
}

/// The client cannot reach the primary, which the other nodes and etcd still reach.
fn cut_client_from_primary(net: &mut Net, r: &Roles, _round: u64) -> serde_json::Value {
    net.cut("client", &r.primary);
    std::thread::sleep(partition());
    serde_json::json!({"cut": [["client", r.primary]]})
}

/// 2/1: the primary alone on one side, the two other nodes and etcd on the other; the client
/// reaches both sides (so it can still ask the old primary).
fn split_primary_alone(net: &mut Net, r: &Roles, _round: u64) -> serde_json::Value {
    net.isolate(&r.primary, &[&r.others[0], &r.others[1], "etcd"]);
    std::thread::sleep(partition());
    serde_json::json!({"minority": [r.primary], "majority": [r.others[0], r.others[1], "etcd"]})
}

/// 2/1 with etcd on the minority side: the primary and etcd against the two other nodes.
/// Those cannot reach the store, so they elect nobody; the primary can remove them but then
/// the PG is below min_size: writes wait until the split ends.
fn split_store_with_minority(net: &mut Net, r: &Roles, _round: u64) -> serde_json::Value {
    for o in &r.others {
        net.cut(&r.primary, o);
        net.cut("etcd", o);
    }
    std::thread::sleep(partition());
    serde_json::json!({"minority": [r.primary, "etcd"], "majority": [r.others[0], r.others[1]]})
}

/// The link between the primary and one secondary goes down and up at seeded moments.
fn flapping_link(net: &mut Net, r: &Roles, round: u64) -> serde_json::Value {
    let secondary = &r.others[(round % 2) as usize];
    let end = Instant::now() + partition() * 2;
    let mut flaps = 0u64;
    while Instant::now() < end {
        net.cut(&r.primary, secondary);
        std::thread::sleep(Duration::from_millis(200 + pick(round, 100 + flaps, 1300)));
        net.restore(&r.primary, secondary);
        std::thread::sleep(Duration::from_millis(200 + pick(round, 200 + flaps, 1300)));
        flaps += 1;
    }
    serde_json::json!({"link": [r.primary, secondary], "flaps": flaps})
}

#[test]
fn primary_cut_from_store() {
    scenario(
        "partition-primary-from-store",
        cut_primary_from_store,
        false,
    );
}

#[test]
fn replica_cut_from_primary() {
    scenario(
        "partition-replica-from-primary",
        cut_replica_from_primary,
        false,
    );
}

#[test]
fn client_cut_from_primary() {
    scenario(
        "partition-client-from-primary",
        cut_client_from_primary,
        false,
    );
}

#[test]
fn split_with_the_store_on_the_majority() {
    scenario("partition-split-store-majority", split_primary_alone, false);
}

#[test]
fn split_with_the_store_on_the_minority() {
    scenario(
        "partition-split-store-minority",
        split_store_with_minority,
        false,
    );
}

#[test]
fn flapping_link_between_primary_and_replica() {
    scenario("partition-flapping", flapping_link, false);
}
