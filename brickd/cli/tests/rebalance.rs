//! Distributed volumes on real processes: a real etcd and three `brickd serve` nodes on
//! loopback. A replica-2 volume grows from one replica set to two and to three
//! (`volume add-brick`, `volume rebalance start`) and shrinks back (`volume remove-brick
//! start`, `commit`) while a small-file writer and an image writer run through the native
//! client; a random node is SIGKILLed at a random moment of every move and restarted. After
//! each step, every file the writers were told was written reads back with the sha256 it was
//! written with, and no brick keeps data of a PG it does not hold (its copy of such a file
//! is empty: names are on every brick, data only on the PG's set).
//!
//! `BRICK_REBALANCE_KILLS` sets the SIGKILLs per move (default 1; bench/rebalance.sh runs
//! more), `BRICK_REBALANCE_SEED` the seed.

use brick_client::{Client, Volume};
use brick_cluster::mgmt::{RebalanceStatus, VolumeCreate, VolumeDetail, VolumeStart};
use brick_testkit::failover::LocalCluster;
use brick_testkit::history::env_u64;
use brick_wire::{FileId, ROOT_FILE_ID};
use rand::{Rng, SeedableRng};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PASSWORD: &str = "rebalance-test-password";
const VOLUME: &str = "dist";
const IMAGE_BYTES: u64 = 8 << 20;
const BLOCK: u64 = 4096;
/// Small files the writer creates at most (the loop is bounded).
const SMALL_FILES_MAX: usize = 4000;
const REBALANCE_WAIT_MS_MAX: u64 = 180_000;

fn brick_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_brick"))
}

fn brickd_exe() -> PathBuf {
    let p = brick_exe().with_file_name("brickd");
    assert!(p.exists(), "{} not built", p.display());
    p
}

fn brick_json<T: DeserializeOwned>(cluster: &LocalCluster, args: &[&str]) -> T {
    cluster.brick_json(&brick_exe(), args)
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// What the writers were told was written: file name -> sha256 of its content. A create or
/// write whose answer was lost may or may not have happened: such files are `maybe`.
#[derive(Default)]
struct Expected {
    files: BTreeMap<String, [u8; 32]>,
    maybe: BTreeMap<String, Vec<[u8; 32]>>,
    fids: BTreeMap<String, FileId>,
    image: Vec<u8>,
    image_fid: FileId,
    acked_ops: u64,
    /// Every image write: when it was sent (ms from the test's start) and how long it took
    /// until acknowledged, retries included (us).
    latencies: Vec<(u64, u64)>,
    started: Option<Instant>,
}

async fn small_file_writer(
    vol: Volume,
    dir: FileId,
    exp: Arc<Mutex<Expected>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..SMALL_FILES_MAX {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let name = format!("f{i:05}");
        let len = rng.gen_range(1..48) * 1024 + rng.gen_range(0..1024);
        let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let digest = sha(&data);
        let created = vol.create(dir, &name, 0o644, true).await;
        let attr = match created {
            Ok(a) => a,
            Err(e) => {
                // The create may have landed: the file then exists, empty or not.
                eprintln!("create {name}: {e}");
                exp.lock().unwrap().maybe.insert(name, vec![sha(&[])]);
                continue;
            }
        };
        match vol.write(attr.fid, 0, &data, false).await {
            Ok(_) => {
                let mut e = exp.lock().unwrap();
                e.files.insert(name.clone(), digest);
                e.fids.insert(name, attr.fid);
                e.acked_ops += 2;
            }
            Err(err) => {
                eprintln!("write {name}: {err}");
                exp.lock()
                    .unwrap()
                    .maybe
                    .insert(name, vec![sha(&[]), digest]);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn image_writer(vol: Volume, exp: Arc<Mutex<Expected>>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let fid = exp.lock().unwrap().image_fid;
    let blocks = IMAGE_BYTES / BLOCK;
    for _ in 0..1_000_000u64 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let b = rng.gen_range(0..blocks);
        let data: Vec<u8> = (0..BLOCK).map(|_| rng.gen()).collect();
        // A write that fails is retried until it lands: the image must hold one known value.
        let sent = Instant::now();
        for attempt in 0.. {
            match vol.write(fid, b * BLOCK, &data, false).await {
                Ok(_) => break,
                Err(e) if attempt < 20 => {
                    eprintln!("image write: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("image write failed 20 times: {e}"),
            }
        }
        {
            let mut e = exp.lock().unwrap();
            let at = (b * BLOCK) as usize;
            e.image[at..at + BLOCK as usize].copy_from_slice(&data);
            e.acked_ops += 1;
            let since = e
                .started
                .map_or(0, |s| sent.duration_since(s).as_millis() as u64);
            e.latencies.push((since, sent.elapsed().as_micros() as u64));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits for the rebalance (or drain) to be done, SIGKILLing and restarting `kills` random
/// nodes at random moments on the way. Returns the final status.
fn run_move(
    cluster: &mut LocalCluster,
    status_args: &[&str],
    kills: u64,
    rng: &mut rand::rngs::StdRng,
    killed: &mut u64,
) -> RebalanceStatus {
    let started = Instant::now();
    let mut kill_at: Vec<u64> = (0..kills).map(|_| rng.gen_range(0..4_000)).collect();
    kill_at.sort_unstable();
    loop {
        let st: RebalanceStatus = brick_json(cluster, status_args);
        let elapsed = started.elapsed().as_millis() as u64;
        if let Some(&at) = kill_at.first() {
            if elapsed >= at {
                kill_at.remove(0);
                let n = rng.gen_range(0..cluster.nodes.len());
                eprintln!(
                    "SIGKILL {} at {elapsed} ms of the move ({} PGs of {} moved)",
                    cluster.nodes[n].name, st.pgs_moved, st.pgs_to_move
                );
                cluster.nodes[n].kill9();
                std::thread::sleep(Duration::from_millis(rng.gen_range(200..2_500)));
                cluster.nodes[n].restart();
                *killed += 1;
                continue;
            }
        }
        match st.state.as_str() {
            "done" if kill_at.is_empty() => return st,
            "running" | "done" => {}
            other => panic!("rebalance ended {other}: {st:?}"),
        }
        assert!(
            elapsed < REBALANCE_WAIT_MS_MAX,
            "rebalance not done after {elapsed} ms: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every file the writers were told about reads back with its sha256; every brick holds data
/// only of the PGs placed on it.
async fn check(vol: &Volume, cluster: &LocalCluster, exp: &Expected) -> u64 {
    let dir = vol
        .lookup(ROOT_FILE_ID, "small")
        .await
        .expect("lookup small");
    let listed = vol.readdir_all(dir.fid).await.expect("readdir");
    let names: BTreeMap<String, u64> = listed
        .iter()
        .map(|e| (e.name.clone(), e.attr.size))
        .collect();
    let mut verified = 0u64;
    for (name, want) in &exp.files {
        verified += 1;
        let size = *names
            .get(name)
            .unwrap_or_else(|| panic!("acknowledged file {name} is gone"));
        let attr = vol.lookup(dir.fid, name).await.expect("lookup");
        assert_eq!(
            attr.size, size,
            "{name}: readdir and lookup disagree on the size"
        );
        let data = read_all(vol, attr.fid, attr.size).await;
        assert_eq!(
            &sha(&data),
            want,
            "{name}: content differs from what was acknowledged"
        );
    }
    for (name, options) in &exp.maybe {
        if let Ok(attr) = vol.lookup(dir.fid, name).await {
            let data = read_all(vol, attr.fid, attr.size).await;
            assert!(
                options.contains(&sha(&data)),
                "{name}: content is none of what was sent"
            );
        }
    }
    for name in names.keys() {
        assert!(
            exp.files.contains_key(name) || exp.maybe.contains_key(name),
            "{name} appeared without being written"
        );
    }
    let image = read_all(vol, exp.image_fid, IMAGE_BYTES).await;
    assert!(
        image == exp.image,
        "the image differs from what was acknowledged"
    );
    // No orphaned copies: on each brick, a file of a PG that is not placed there is empty.
    let detail: VolumeDetail = brick_json(cluster, &["volume", "info", VOLUME]);
    let placed: Vec<Vec<String>> = detail.pgs.iter().map(|p| p.up_to_date.clone()).collect();
    let mut checked = 0;
    for set in &detail.volume.replica_sets {
        for brick in set {
            let (node, path) = brick.split_once(':').expect("NODE:DIR");
            assert!(cluster.nodes.iter().any(|n| n.name == node));
            for (name, &fid) in &exp.fids {
                let pg = brick_wire::pg_of(fid) as usize;
                let on_brick = std::fs::metadata(PathBuf::from(path).join("data/small").join(name))
                    .map(|m| m.len())
                    .unwrap_or(0);
                let holds = placed[pg].iter().any(|b| b == brick);
                if !holds {
                    assert_eq!(
                        on_brick, 0,
                        "{brick} keeps {on_brick} bytes of {name} (PG {pg}, on {:?})",
                        placed[pg]
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 0);
    verified
}

async fn read_all(vol: &Volume, fid: FileId, size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        let len = (size - out.len() as u64).min(1 << 20) as u32;
        let chunk = vol.read(fid, out.len() as u64, len).await.expect("read");
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    out
}

/// Bytes of file data under a brick's `data/small` and its image.
fn data_bytes(path: &str) -> u64 {
    let small: u64 = std::fs::read_dir(PathBuf::from(path).join("data/small"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    let image = std::fs::metadata(PathBuf::from(path).join("data/vm.img"))
        .map(|m| m.blocks() * 512)
        .unwrap_or(0);
    small + image
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The benchmark's numbers (bench/rebalance.sh): per move, what had to move and what landed
/// on the new bricks, the rate against a local copy of the same bytes, the image writer's
/// p99 before and during the moves and its longest request.
fn bench_report(
    exp: &Expected,
    table: &[(&str, RebalanceStatus, u64)],
    windows: &[(u64, u64)],
    (killed, lost): (u64, u64),
    set_a_dir: &str,
) -> serde_json::Value {
    let first = windows.first().map_or(u64::MAX, |w| w.0);
    let mut before: Vec<u64> = exp
        .latencies
        .iter()
        .filter(|l| l.0 < first)
        .map(|l| l.1)
        .collect();
    let mut during: Vec<u64> = exp
        .latencies
        .iter()
        .filter(|l| windows.iter().any(|w| l.0 >= w.0 && l.0 <= w.1))
        .map(|l| l.1)
        .collect();
    before.sort_unstable();
    during.sort_unstable();
    let local = local_copy_rate(set_a_dir);
    let moves: Vec<serde_json::Value> = table
        .iter()
        .map(|(step, st, landed)| {
            let rate = st.bytes_moved as f64 * 1000.0 / st.elapsed_ms.max(1) as f64;
            serde_json::json!({
                "step": step,
                "pgs_moved": st.pgs_moved,
                "files_moved": st.files_moved,
                "bytes_had_to_move": st.bytes_moved,
                "bytes_landed_on_new_bricks": landed,
                "landed_over_had_to_move": *landed as f64 / st.bytes_moved.max(1) as f64,
                "elapsed_ms": st.elapsed_ms,
                "rate_bytes_s": rate,
                "rate_over_local_copy": rate / local.max(1.0),
                "verified_in_flux": st.verified_in_flux,
            })
        })
        .collect();
    serde_json::json!({
        "kills": killed,
        "files_lost": lost,
        "acknowledged_files": exp.files.len(),
        "acknowledged_ops": exp.acked_ops,
        "local_copy_bytes_s": local,
        "client_p99_before_us": percentile(&before, 0.99),
        "client_p99_during_us": percentile(&during, 0.99),
        "client_p99_ratio": percentile(&during, 0.99) as f64 / percentile(&before, 0.99).max(1) as f64,
        "client_max_during_us": during.last().copied().unwrap_or(0),
        "client_writes_before": before.len(),
        "client_writes_during": during.len(),
        "moves": moves,
    })
}

/// Bytes per second of a local copy (read, write, fsync) of a brick's data on the same file
/// system: the anchor a rebalance's rate is compared with.
fn local_copy_rate(brick: &str) -> f64 {
    use std::io::Write;
    let from = PathBuf::from(brick).join("data/small");
    let to = PathBuf::from(brick).with_file_name("local-copy");
    let _ = std::fs::create_dir_all(&to);
    let started = Instant::now();
    let mut bytes = 0u64;
    for e in std::fs::read_dir(&from).into_iter().flatten().flatten() {
        let Ok(data) = std::fs::read(e.path()) else {
            continue;
        };
        let mut f = std::fs::File::create(to.join(e.file_name())).expect("copy");
        f.write_all(&data).expect("copy");
        f.sync_all().expect("copy");
        bytes += data.len() as u64;
    }
    let _ = std::fs::remove_dir_all(&to);
    bytes as f64 / started.elapsed().as_secs_f64().max(1e-6)
}

/// Files with data on each brick directory of `set` (a drained set must hold none).
fn data_files(path: &str) -> usize {
    std::fs::read_dir(PathBuf::from(path).join("data/small"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_volume_grows_to_three_sets_and_shrinks_back_under_load_and_kill_9() {
    let kills = env_u64("BRICK_REBALANCE_KILLS", 1);
    let seed = env_u64("BRICK_REBALANCE_SEED", 7);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut cluster =
        LocalCluster::start(&brickd_exe(), "rebalance", &["n1", "n2", "n3"], PASSWORD);
    let brick = |cluster: &LocalCluster, n: usize, dir: &str| {
        format!(
            "{}:{}",
            cluster.nodes[n].name,
            cluster.nodes[n].brick_dir(dir).display()
        )
    };
    let set_a = vec![brick(&cluster, 0, "a1"), brick(&cluster, 1, "a2")];
    let set_b = vec![brick(&cluster, 1, "b1"), brick(&cluster, 2, "b2")];
    let set_c = vec![brick(&cluster, 2, "c1"), brick(&cluster, 0, "c2")];
    // The writers run on the runtime's threads while this thread drives the moves.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client = rt
        .block_on(Client::connect(cluster.admin.clone()))
        .expect("connect");
    let vol = rt.block_on(async {
        client
            .mgmt(&VolumeCreate {
                name: VOLUME.into(),
                replica: 2,
                bricks: set_a.clone(),
                pg_count: Some(32),
            })
            .await
            .expect("volume create");
        client
            .mgmt(&VolumeStart {
                name: VOLUME.into(),
            })
            .await
            .expect("volume start");
        client.open_volume(VOLUME).await.expect("open")
    });
    let t0 = Instant::now();
    let ms = move || t0.elapsed().as_millis() as u64;
    let exp = Arc::new(Mutex::new(Expected {
        image: vec![0; IMAGE_BYTES as usize],
        started: Some(t0),
        ..Expected::default()
    }));
    let dir = rt.block_on(async {
        let img = vol
            .create(ROOT_FILE_ID, "vm.img", 0o644, true)
            .await
            .expect("image");
        vol.setattr(
            img.fid,
            brick_wire::SetAttr {
                size: Some(IMAGE_BYTES),
                ..brick_wire::SetAttr::NONE
            },
        )
        .await
        .expect("size the image");
        exp.lock().unwrap().image_fid = img.fid;
        vol.mkdir(ROOT_FILE_ID, "small", 0o755)
            .await
            .expect("mkdir")
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writers = [
        rt.spawn(small_file_writer(
            vol.clone(),
            dir.fid,
            exp.clone(),
            stop.clone(),
            seed,
        )),
        rt.spawn(image_writer(
            vol.clone(),
            exp.clone(),
            stop.clone(),
            seed + 1,
        )),
    ];
    std::thread::sleep(Duration::from_secs(env_u64(
        "BRICK_REBALANCE_BASELINE_S",
        2,
    )));
    let mut killed = 0;
    let mut table = Vec::new();
    let mut windows = Vec::new(); // (start ms, end ms) of each move
    for (step, args) in [
        ("grow to 2 sets", set_b.clone()),
        ("grow to 3 sets", set_c.clone()),
    ] {
        let mut add = vec!["volume", "add-brick", VOLUME];
        add.extend(args.iter().map(String::as_str));
        let _: serde_json::Value = brick_json(&cluster, &add);
        let begin = ms();
        let _: RebalanceStatus = brick_json(&cluster, &["volume", "rebalance", VOLUME, "start"]);
        let st = run_move(
            &mut cluster,
            &["volume", "rebalance", VOLUME, "status"],
            kills,
            &mut rng,
            &mut killed,
        );
        eprintln!(
            "{step}: {} PGs, {} files, {} bytes moved in {} ms",
            st.pgs_moved, st.files_moved, st.bytes_moved, st.elapsed_ms
        );
        windows.push((begin, ms()));
        // What the new set holds now: copied by the move, plus client writes to its PGs.
        let new_set = if step == "grow to 2 sets" {
            &set_b
        } else {
            &set_c
        };
        let landed = data_bytes(new_set[0].split_once(':').unwrap().1);
        table.push((step, st, landed));
    }
    // Shrink back: drain set b (a set in the middle: its bricks keep their places).
    let mut drain: Vec<&str> = vec!["volume", "remove-brick", VOLUME];
    drain.extend(set_b.iter().map(String::as_str));
    let mut start = drain.clone();
    start.push("start");
    let before_a = data_bytes(set_a[0].split_once(':').unwrap().1);
    let before_c = data_bytes(set_c[0].split_once(':').unwrap().1);
    let begin = ms();
    let _: RebalanceStatus = brick_json(&cluster, &start);
    let mut status = drain.clone();
    status.push("status");
    let st = run_move(&mut cluster, &status, kills, &mut rng, &mut killed);
    windows.push((begin, ms()));
    let landed = (data_bytes(set_a[0].split_once(':').unwrap().1)
        + data_bytes(set_c[0].split_once(':').unwrap().1))
    .saturating_sub(before_a + before_c);
    table.push(("drain set b", st, landed));
    let mut commit = drain.clone();
    commit.push("commit");
    let _: RebalanceStatus = brick_json(&cluster, &commit);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        rt.block_on(w).expect("writer");
    }
    let exp = exp.lock().unwrap();
    assert!(
        exp.files.len() > 50,
        "the small-file writer wrote {} files",
        exp.files.len()
    );
    let verified = rt.block_on(check(&vol, &cluster, &exp));
    // The drained set's bricks hold no data once their PGs and the namespace left them.
    let deadline = Instant::now() + Duration::from_secs(20);
    for b in &set_b {
        let path = b.split_once(':').unwrap().1;
        while data_files(path) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(
            data_files(path),
            0,
            "{b} keeps data after remove-brick commit"
        );
    }
    for (step, st, landed) in &table {
        eprintln!(
            "| {step} | {} PGs | {} files | {} bytes had to move | {landed} bytes landed | {} ms | {} in flux |",
            st.pgs_moved, st.files_moved, st.bytes_moved, st.elapsed_ms, st.verified_in_flux
        );
    }
    if let Ok(path) = std::env::var("BRICK_REBALANCE_REPORT") {
        let set_a_dir = set_a[0].split_once(':').unwrap().1.to_string();
        let lost = exp.files.len() as u64 - verified;
        let report = bench_report(&exp, &table, &windows, (killed, lost), &set_a_dir);
        std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap()).expect("report");
        eprintln!("report written to {path}");
    }
    eprintln!(
        "{} files and an image ({} acknowledged ops) intact after {killed} SIGKILLs",
        exp.files.len(),
        exp.acked_ops
    );
    assert_eq!(killed, 3 * kills);
}
