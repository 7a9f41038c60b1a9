//! Heal on real processes: a real etcd and three `brickd serve` nodes on loopback. A replica
//! is SIGKILLed; meanwhile files are written, created, renamed, truncated and removed; the
//! replica restarts. The heal must start by itself, `brick heal status --json` must end at
//! nothing left, and the plain files on every brick of the replica set must be identical.
//! The replica-2 run also kills the heal source (the only up-to-date copy) halfway through
//! the heal: it resumes from the dirt log on disk. `brick node can-stop` must say no while a
//! node holds the only up-to-date copy (or stopping it stops writes), and yes once healed.
//! `brick volume replace-brick` puts an empty brick in the place of a dead one (on another
//! node) and of a live one (on the same node): each gets a full heal to an identical copy.

use brick_client::{Client, Volume};
use brick_cluster::mgmt::{BrickReplaced, CanStop, VolumeConfig, VolumeCreate, VolumeStart};
use brick_cluster::report::HealStatus;
use brick_testkit::failover::{compare_bricks, compare_copies, LocalCluster};
use brick_testkit::pattern;
use brick_wire::{SetAttr, ROOT_FILE_ID};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const PASSWORD: &str = "heal-test-password";
const IMAGE_BYTES: u64 = 16 << 20;
const BLOCK: u64 = 4096;
/// Waiting for a heal to finish gives up after this (the test then fails with the status).
const HEAL_WAIT_MS_MAX: u64 = 60_000;

fn brick_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_brick"))
}

fn brickd_exe() -> PathBuf {
    let p = brick_exe().with_file_name("brickd");
    assert!(p.exists(), "{} not built", p.display());
    p
}

/// `brick --json ARGS`, read into the type the CLI prints it from: a field renamed or missing
/// on either side fails here.
fn brick_json<T: DeserializeOwned>(cluster: &LocalCluster, args: &[&str]) -> T {
    cluster.brick_json(&brick_exe(), args)
}

/// `brick --json ARGS` as raw JSON, for the field names ../shared/BRIEF.md fixes.
fn brick_raw(cluster: &LocalCluster, args: &[&str]) -> Value {
    brick_json(cluster, args)
}

/// What the test wrote, to check the heal against.
struct Expected {
    image: Vec<u8>,
}

async fn setup(client: &Client, cluster: &LocalCluster, name: &str, replica: usize) -> Volume {
    let bricks: Vec<String> = cluster.nodes[..replica]
        .iter()
        .map(|n| format!("{}:{}", n.name, n.brick_dir(name).display()))
        .collect();
    client
        .mgmt(&VolumeCreate {
            name: name.into(),
            replica: replica as u32,
            bricks,
            pg_count: Some(16),
        })
        .await
        .expect("volume create");
    client
        .mgmt(&VolumeStart { name: name.into() })
        .await
        .expect("volume start");
    client.open_volume(name).await.expect("open")
}

async fn populate(vol: &Volume) -> Expected {
    let docs = vol.mkdir(ROOT_FILE_ID, "docs", 0o755).await.expect("mkdir");
    for (i, n) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let f = vol.create(docs.fid, n, 0o644, true).await.expect("create");
        let data = pattern(i as u64, 0, 10_000 + i * 1000);
        vol.write(f.fid, 0, &data, false).await.expect("write");
    }
    let old = vol
        .mkdir(ROOT_FILE_ID, "old", 0o755)
        .await
        .expect("mkdir old");
    vol.create(old.fid, "x", 0o644, true)
        .await
        .expect("create x");
    let img = vol
        .create(ROOT_FILE_ID, "vm.img", 0o644, true)
        .await
        .expect("image");
    let image = pattern(99, 0, IMAGE_BYTES as usize);
    for off in (0..IMAGE_BYTES).step_by(1 << 20) {
        let chunk = &image[off as usize..(off + (1 << 20)) as usize];
        vol.write(img.fid, off, chunk, false)
            .await
            .expect("fill image");
    }
    Expected { image }
}

/// Everything a replica misses while it is down: data and namespace changes.
async fn churn(vol: &Volume, exp: &mut Expected, seed: u64, extra_bytes: u64) {
    let img = scribble_image(vol, exp, seed).await;
    // Larger dirt, in 64 KiB pieces, so the heal takes a while at a set rate.
    for i in 0..extra_bytes / (64 << 10) {
        let off = (i * 3 * (64 << 10)) % IMAGE_BYTES;
        let data = pattern(seed ^ (i << 20), off, 64 << 10);
        vol.write(img.fid, off, &data, false)
            .await
            .expect("64k write");
        exp.image[off as usize..off as usize + data.len()].copy_from_slice(&data);
    }
    let docs = vol.resolve("docs").await.expect("docs");
    let new = vol
        .mkdir(ROOT_FILE_ID, "new", 0o755)
        .await
        .expect("mkdir new");
    for i in 0..20 {
        let f = vol
            .create(new.fid, &format!("f{i}"), 0o640, true)
            .await
            .expect("create new");
        let data = pattern(seed + i, 0, 1000 + i as usize * 700);
        vol.write(f.fid, 0, &data, false).await.expect("write new");
    }
    vol.rename(docs.fid, "a", new.fid, "a-moved")
        .await
        .expect("rename across");
    vol.rename(docs.fid, "b", docs.fid, "b2")
        .await
        .expect("rename");
    vol.unlink(docs.fid, "c").await.expect("unlink");
    let d = vol.lookup(docs.fid, "d").await.expect("d");
    vol.write(d.fid, d.size, &pattern(seed, 0, 5000), false)
        .await
        .expect("append");
    let e = vol.lookup(docs.fid, "e").await.expect("e");
    let truncate = SetAttr {
        size: Some(100),
        ..SetAttr::NONE
    };
    vol.setattr(e.fid, truncate).await.expect("truncate");
    let old = vol.resolve("old").await.expect("old");
    vol.unlink(old.fid, "x").await.expect("unlink x");
    vol.rmdir(ROOT_FILE_ID, "old").await.expect("rmdir old");
    vol.symlink(ROOT_FILE_ID, "link", "docs/d")
        .await
        .expect("symlink");
}

/// 300 random 4 KiB writes to the image; returns its attributes.
async fn scribble_image(vol: &Volume, exp: &mut Expected, seed: u64) -> brick_wire::Attr {
    let img = vol.resolve("vm.img").await.expect("image");
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..300u64 {
        let off = next() % (IMAGE_BYTES / BLOCK) * BLOCK;
        let data = pattern(seed ^ i, off, BLOCK as usize);
        vol.write(img.fid, off, &data, false)
            .await
            .expect("random write");
        exp.image[off as usize..(off + BLOCK) as usize].copy_from_slice(&data);
    }
    img
}

async fn check_image(vol: &Volume, exp: &Expected) {
    let img = vol.resolve("vm.img").await.expect("image");
    for off in (0..IMAGE_BYTES).step_by(1 << 20) {
        let got = vol.read(img.fid, off, 1 << 20).await.expect("read image");
        assert!(
            got == exp.image[off as usize..(off + (1 << 20)) as usize],
            "image bytes at {off} differ from what was acknowledged"
        );
    }
}

fn wait_healed(cluster: &LocalCluster, volume: &str) -> HealStatus {
    let start = Instant::now();
    loop {
        let doc: HealStatus = brick_json(cluster, &["heal", "status", volume]);
        if doc.healed {
            return doc;
        }
        if start.elapsed() > Duration::from_millis(HEAL_WAIT_MS_MAX) {
            for n in &cluster.nodes {
                let log = n.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!(
                    "--- {} (last lines)\n{}",
                    n.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            panic!("{volume}: not healed after {HEAL_WAIT_MS_MAX} ms: {doc:#?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn can_stop(cluster: &LocalCluster, node: &str) -> CanStop {
    brick_json(cluster, &["node", "can-stop", node])
}

struct Run {
    volume: &'static str,
    replica: usize,
    /// Kill the heal source halfway through the heal (and restart it).
    kill_source: bool,
}

fn heal_run(cluster: &mut LocalCluster, rt: &tokio::runtime::Runtime, run: &Run) {
    let client = rt
        .block_on(Client::connect(cluster.admin.clone()))
        .expect("connect");
    let vol = rt.block_on(setup(&client, cluster, run.volume, run.replica));
    let mut exp = rt.block_on(populate(&vol));
    let victim = run.replica - 1;
    let source = 0;
    cluster.nodes[victim].kill9();
    let extra = if run.kill_source { 12 << 20 } else { 0 };
    rt.block_on(churn(&vol, &mut exp, 7 + run.replica as u64, extra));
    let no = can_stop(cluster, &cluster.nodes[source].name);
    assert!(!no.can_stop, "{}: {no:#?}", run.volume);
    assert!(!no.reasons.is_empty() && no.blocked_pgs > 0, "{no:#?}");
    let raw = brick_raw(cluster, &["node", "can-stop", &cluster.nodes[source].name]);
    assert_eq!(raw["can_stop"], Value::Bool(false), "{raw:#}");
    assert!(raw["reasons"].as_array().is_some_and(|r| !r.is_empty()));
    let behind: HealStatus = brick_json(cluster, &["heal", "status", run.volume]);
    assert!(!behind.healed, "{behind:#?}");
    if run.kill_source {
        // Slow enough to catch it halfway.
        let set: VolumeConfig =
            brick_json(cluster, &["volume", "set", run.volume, "heal.rate", "2M"]);
        assert_eq!(set.options["heal.rate"], "2M");
    }
    let restarted = Instant::now();
    cluster.nodes[victim].restart();
    if run.kill_source {
        let start = Instant::now();
        loop {
            let doc: HealStatus = brick_json(cluster, &["heal", "status", run.volume]);
            if doc.bytes_copied > 0 && doc.bytes_left > 0 {
                eprintln!(
                    "{}: killing the heal source {} halfway: {} copied, {} left",
                    run.volume, cluster.nodes[source].name, doc.bytes_copied, doc.bytes_left
                );
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "heal did not start: {doc:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster.nodes[source].kill9();
        std::thread::sleep(Duration::from_millis(500));
        cluster.nodes[source].restart();
        let _: VolumeConfig = brick_json(
            cluster,
            &["volume", "set", run.volume, "heal.rate", "adaptive"],
        );
    }
    let done = wait_healed(cluster, run.volume);
    eprintln!(
        "{}: healed {:?} after the restart; final status {done:?}",
        run.volume,
        restarted.elapsed()
    );
    assert_eq!(done.bytes_left, 0);
    let raw = brick_raw(cluster, &["heal", "status", run.volume]);
    assert_eq!(raw["bytes_left"], Value::from(0u64), "{raw:#}");
    let vol = rt.block_on(client.open_volume(run.volume)).expect("reopen");
    rt.block_on(check_image(&vol, &exp));
    let members: Vec<usize> = (0..run.replica).collect();
    compare_copies(&cluster.nodes, &members, run.volume);
    let yes = can_stop(cluster, &cluster.nodes[source].name);
    assert!(yes.can_stop, "{}: {yes:#?}", run.volume);
    assert!(yes.reasons.is_empty() && yes.blocked_pgs == 0, "{yes:#?}");
}

#[test]
fn returning_replicas_heal_to_identical_copies() {
    let mut cluster = LocalCluster::start(&brickd_exe(), "heal", &["n1", "n2", "n3"], PASSWORD);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for run in [
        Run {
            volume: "r3",
            replica: 3,
            kill_source: false,
        },
        Run {
            volume: "r2",
            replica: 2,
            kill_source: true,
        },
    ] {
        heal_run(&mut cluster, &rt, &run);
    }
}

fn data_dir(cluster: &LocalCluster, node: usize, brick: &str) -> PathBuf {
    cluster.nodes[node].brick_dir(brick).join("data")
}

/// Replaces `old` by `new` and waits for the full heal.
fn replace_and_heal(
    cluster: &LocalCluster,
    volume: &str,
    (old_node, old): (usize, &str),
    (new_node, new): (usize, &str),
) {
    let spec = |n: usize, b: &str| {
        format!(
            "{}:{}",
            cluster.nodes[n].name,
            cluster.nodes[n].brick_dir(b).display()
        )
    };
    let (old_spec, new_spec) = (spec(old_node, old), spec(new_node, new));
    let doc: BrickReplaced = brick_json(
        cluster,
        &["volume", "replace-brick", volume, &old_spec, &new_spec],
    );
    let listed = &doc.volume.replica_sets[0];
    assert!(
        listed.contains(&new_spec) && !listed.contains(&old_spec),
        "{doc:#?}"
    );
    assert_eq!(
        (doc.replaced.old.as_str(), doc.replaced.new.as_str()),
        (old_spec.as_str(), new_spec.as_str())
    );
    let behind: HealStatus = brick_json(cluster, &["heal", "status", volume]);
    assert!(!behind.healed, "{behind:#?}");
    let again: BrickReplaced = brick_json(
        cluster,
        &["volume", "replace-brick", volume, &old_spec, &new_spec],
    );
    assert_eq!(
        again.volume.epoch, doc.volume.epoch,
        "a repeated replace changes nothing"
    );
    let started = Instant::now();
    let done = wait_healed(cluster, volume);
    eprintln!(
        "{volume}: {new_spec} fully healed in {:?}: {done:?}",
        started.elapsed()
    );
}

#[test]
fn replaced_bricks_get_a_full_heal() {
    let mut cluster = LocalCluster::start(&brickd_exe(), "replace", &["n1", "n2", "n3"], PASSWORD);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client = rt
        .block_on(Client::connect(cluster.admin.clone()))
        .expect("connect");
    let name = "rb";
    let vol = rt.block_on(setup(&client, &cluster, name, 2));
    let mut exp = rt.block_on(populate(&vol));
    // n2's disk dies: its brick is replaced by an empty one on n3.
    cluster.nodes[1].kill9();
    rt.block_on(churn(&vol, &mut exp, 21, 0));
    replace_and_heal(&cluster, name, (1, name), (2, "rb-new"));
    compare_bricks(
        ("n1", &data_dir(&cluster, 0, name)),
        ("n3", &data_dir(&cluster, 2, "rb-new")),
    );
    // The old node comes back: it no longer serves the volume and changes nothing.
    cluster.nodes[1].restart();
    let vol = rt.block_on(client.open_volume(name)).expect("reopen");
    rt.block_on(scribble_image(&vol, &mut exp, 22));
    rt.block_on(check_image(&vol, &exp));
    // A live brick replaced by another directory on the same node, while clients write.
    let writer = {
        let vol = vol.clone();
        rt.spawn(async move {
            let f = vol
                .create(ROOT_FILE_ID, "during", 0o644, true)
                .await
                .expect("create during");
            for i in 0..200u64 {
                let data = pattern(i, i * BLOCK, BLOCK as usize);
                vol.write(f.fid, i * BLOCK, &data, false)
                    .await
                    .expect("write during the replace");
            }
        })
    };
    replace_and_heal(&cluster, name, (0, name), (0, "rb-2"));
    rt.block_on(writer).expect("writer");
    let done = wait_healed(&cluster, name);
    assert_eq!(done.bytes_left, 0);
    compare_bricks(
        ("n3", &data_dir(&cluster, 2, "rb-new")),
        ("n1", &data_dir(&cluster, 0, "rb-2")),
    );
    rt.block_on(check_image(&vol, &exp));
    let during = rt.block_on(vol.resolve("during")).expect("during");
    let got = rt
        .block_on(vol.read(during.fid, 0, (200 * BLOCK) as u32))
        .expect("read during");
    for i in 0..200u64 {
        let want = pattern(i, i * BLOCK, BLOCK as usize);
        assert!(
            got[(i * BLOCK) as usize..((i + 1) * BLOCK) as usize] == want[..],
            "block {i} written during the replace"
        );
    }
    let yes = can_stop(&cluster, "n2");
    assert!(yes.can_stop, "{yes:#?}");
}
