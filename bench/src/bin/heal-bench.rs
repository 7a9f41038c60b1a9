//! Heal after an outage, measured (issue 4's benchmark; run through bench/heal.sh): a real
//! etcd and three `brickd serve` nodes on loopback; a 2 GiB image on a replica-2 (and a
//! replica-3) volume under steady 4 KiB random writes at queue depth 4, paced to 1000 IOPS,
//! every request's latency logged; one replica SIGKILLed for 20 s, then restarted. Reports
//! the distinct bytes written during the outage, the bytes the heal copied, the time from the
//! restart to the heal's start and end, and latency percentiles per phase.
//!
//!   heal-bench --brickd target/release/brickd --out DIR [--image-mib N] [--outage-s N]
//!              [--iops N] [--replicas 2,3]

use brick_client::{Client, Volume};
use brick_cluster::mgmt::{HealLocal, VolumeCreate, VolumeInfo, VolumeStart};
use brick_testkit::failover::LocalCluster;
use brick_testkit::pattern;
use brick_wire::{pg_of, FileId, ROOT_FILE_ID};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PASSWORD: &str = "heal-bench";
const BLOCK: u64 = 4096;
const QD: usize = 4;
const BEFORE_S: u64 = 10;
const AFTER_S: u64 = 10;
/// Requests in the first this-many ms after the kill may wait for failure detection.
const DETECTION_WINDOW_MS: u64 = 2500;
/// The heal must finish within this, or the run reports it unfinished.
const HEAL_WAIT_S_MAX: u64 = 600;

struct Opts {
    brickd: PathBuf,
    out: PathBuf,
    image_bytes: u64,
    outage: Duration,
    iops: u64,
    replicas: Vec<u32>,
}

fn parse() -> Opts {
    let mut o = Opts {
        brickd: PathBuf::from("target/release/brickd"),
        out: PathBuf::from("target/heal-bench"),
        image_bytes: 2 << 30,
        outage: Duration::from_secs(20),
        iops: 1000,
        replicas: vec![2, 3],
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--brickd" => o.brickd = PathBuf::from(v),
            "--out" => o.out = PathBuf::from(v),
            "--image-mib" => {
                o.image_bytes = v.parse::<u64>().unwrap_or(2048).clamp(16, 65536) << 20
            }
            "--outage-s" => {
                o.outage = Duration::from_secs(v.parse().unwrap_or(20u64).clamp(3, 600))
            }
            "--iops" => o.iops = v.parse().unwrap_or(1000u64).clamp(10, 100_000),
            "--replicas" => o.replicas = v.split(',').filter_map(|r| r.parse().ok()).collect(),
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2);
            }
        }
    }
    o
}

/// (ms since start, latency µs, ok)
type Sample = (u64, u64, bool);

struct Load {
    start: Instant,
    stop: AtomicBool,
    samples: Mutex<Vec<Sample>>,
    /// Blocks written while the replica was away, by time window.
    written: Mutex<Vec<(u64, u64)>>,
}

async fn writer(vol: Volume, fid: FileId, w: u64, opts_iops: u64, blocks: u64, load: Arc<Load>) {
    let interval = Duration::from_secs_f64(QD as f64 / opts_iops as f64);
    let mut due = Instant::now();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (w + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    while !load.stop.load(Ordering::Acquire) {
        due += interval;
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        } else {
            due = now; // behind: do not burst to catch up
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let block = x % blocks;
        let data = pattern(x, block * BLOCK, BLOCK as usize);
        let began = Instant::now();
        let ok = vol.write(fid, block * BLOCK, &data, false).await.is_ok();
        let t_ms = load.start.elapsed().as_millis() as u64;
        let lat = began.elapsed().as_micros() as u64;
        load.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((t_ms, lat, ok));
        load.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((t_ms, block));
    }
}

/// Heal state of the volume from every node: (behind PGs, copied total bytes). A node that
/// does not answer (the victim, while it is down) adds nothing.
async fn heal_state(client: &Client, addrs: &[String], volume: &str) -> (usize, u64) {
    let op = HealLocal {
        name: volume.into(),
    };
    let mut behind = 0usize;
    let mut copied = 0u64;
    for a in addrs {
        if let Ok(part) = client.mgmt_node(&op, a).await {
            behind = behind.max(part.behind.len());
            copied += part
                .reports
                .iter()
                .map(|r| r.copied_total_bytes)
                .sum::<u64>();
        }
    }
    (behind, copied)
}

/// Latency percentiles of one phase, as summary.json reports them.
#[derive(serde::Serialize)]
struct Percentiles {
    requests: u64,
    errors: u64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

fn percentiles(samples: &[Sample], from_ms: u64, to_ms: u64) -> Percentiles {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut errors = 0;
    for &(_, lat, ok) in samples.iter().filter(|s| s.0 >= from_ms && s.0 < to_ms) {
        let _ = h.record(lat.max(1));
        errors += (!ok) as u64;
    }
    Percentiles {
        requests: h.len(),
        errors,
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    }
}

fn run_one(
    cluster: &mut LocalCluster,
    rt: &tokio::runtime::Runtime,
    o: &Opts,
    replica: u32,
) -> Value {
    let volume = format!("heal-r{replica}");
    let client = rt
        .block_on(Client::connect(cluster.admin.clone()))
        .expect("connect");
    let bricks: Vec<String> = cluster.nodes[..replica as usize]
        .iter()
        .map(|n| format!("{}:{}", n.name, n.brick_dir(&volume).display()))
        .collect();
    let (vol, fid) = rt.block_on(async {
        client
            .mgmt(&VolumeCreate {
                name: volume.clone(),
                replica,
                bricks,
                pg_count: None,
            })
            .await
            .expect("create");
        client
            .mgmt(&VolumeStart {
                name: volume.clone(),
            })
            .await
            .expect("start");
        let vol = client.open_volume(&volume).await.expect("open");
        let f = vol
            .create(ROOT_FILE_ID, "vm.img", 0o644, true)
            .await
            .expect("image");
        eprintln!("{volume}: filling the {} MiB image", o.image_bytes >> 20);
        let chunk = pattern(1, 0, 1 << 20);
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let (vol, chunk) = (vol.clone(), chunk.clone());
            let chunks = o.image_bytes >> 20;
            tasks.push(tokio::spawn(async move {
                for c in (t..chunks).step_by(8) {
                    vol.write(f.fid, c << 20, &chunk, false)
                        .await
                        .expect("fill");
                }
            }));
        }
        for t in tasks {
            t.await.expect("fill task");
        }
        // The kernel writes the fill back ~30 s later, stalling the load at random: now.
        let _ = std::process::Command::new("sync").status();
        (vol, f.fid)
    });
    let info = rt
        .block_on(client.mgmt(&VolumeInfo {
            name: volume.clone(),
        }))
        .expect("info");
    let pg = pg_of(fid) as usize;
    let primary = info
        .pgs
        .get(pg)
        .and_then(|p| p.primary.as_deref())
        .and_then(|b| b.split(':').next())
        .unwrap_or("");
    let victim = (0..replica as usize)
        .find(|&i| cluster.nodes[i].name != primary)
        .expect("a secondary");
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.clone()).collect();
    // Lines up the latency log (ms since the load started) with the nodes' logs.
    let load_start_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let load = Arc::new(Load {
        start: Instant::now(),
        stop: AtomicBool::new(false),
        samples: Mutex::new(Vec::new()),
        written: Mutex::new(Vec::new()),
    });
    let blocks = o.image_bytes / BLOCK;
    let tasks: Vec<_> = (0..QD as u64)
        .map(|w| rt.spawn(writer(vol.clone(), fid, w, o.iops, blocks, load.clone())))
        .collect();
    let ms = |load: &Load| load.start.elapsed().as_millis() as u64;
    std::thread::sleep(Duration::from_secs(BEFORE_S));
    let (_, copied_before) = rt.block_on(heal_state(&client, &addrs, &volume));
    let kill_ms = ms(&load);
    eprintln!(
        "{volume}: killing {} (a secondary of the image's PG)",
        cluster.nodes[victim].name
    );
    cluster.nodes[victim].kill9();
    std::thread::sleep(o.outage);
    let restart_ms = ms(&load);
    cluster.nodes[victim].restart();
    let restarted_ms = ms(&load);
    let mut heal_start_ms = None;
    let healed_ms = loop {
        let (behind, copied) = rt.block_on(heal_state(&client, &addrs, &volume));
        let now = ms(&load);
        if heal_start_ms.is_none() && copied > copied_before {
            heal_start_ms = Some(now);
        }
        if behind == 0 {
            break Some(now);
        }
        if now - restart_ms > HEAL_WAIT_S_MAX * 1000 {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let end_ms = healed_ms.unwrap_or(ms(&load));
    std::thread::sleep(Duration::from_secs(AFTER_S));
    load.stop.store(true, Ordering::Release);
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    std::thread::sleep(Duration::from_millis(1200)); // the last reports are published
    let (_, copied_after) = rt.block_on(heal_state(&client, &addrs, &volume));
    let heal_began = heal_start_ms.unwrap_or(end_ms);
    let written = load
        .written
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let dirty: HashSet<u64> = written
        .iter()
        .filter(|(t, _)| *t >= kill_ms && *t < heal_began)
        .map(|&(_, b)| b)
        .collect();
    let distinct_bytes = dirty.len() as u64 * BLOCK;
    let copied = copied_after.saturating_sub(copied_before);
    let samples = load
        .samples
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let last_ms = ms(&load);
    let before = percentiles(&samples, kill_ms.saturating_sub(BEFORE_S * 1000), kill_ms);
    let outage = percentiles(&samples, kill_ms, restart_ms);
    let outage_after_detection = percentiles(&samples, kill_ms + DETECTION_WINDOW_MS, restart_ms);
    let heal = percentiles(&samples, restart_ms, end_ms.max(restart_ms + 1));
    let after = percentiles(&samples, end_ms, last_ms);
    let outside_detection_max_us = [&before, &outage_after_detection, &heal, &after]
        .iter()
        .map(|p| p.max_us)
        .max()
        .unwrap_or(0);
    let p99 = |p: &Percentiles| p.p99_us as f64;
    let log = o.out.join(format!("{volume}-latency.csv"));
    let mut csv = String::from("t_ms,latency_us,ok\n");
    for (t, lat, ok) in &samples {
        csv.push_str(&format!("{t},{lat},{}\n", *ok as u8));
    }
    let _ = std::fs::write(&log, csv);
    json!({
        "volume": volume,
        "replica": replica,
        "image_bytes": o.image_bytes,
        "iops_target": o.iops,
        "qd": QD,
        "victim": cluster.nodes[victim].name,
        "outage_ms": restart_ms - kill_ms,
        "load_start_unix_ms": load_start_unix_ms,
        "distinct_bytes_written_during_outage": distinct_bytes,
        "bytes_copied_by_heal": copied,
        "copied_over_distinct": if distinct_bytes > 0 { copied as f64 / distinct_bytes as f64 } else { 0.0 },
        "restart_to_serving_ms": restarted_ms - restart_ms,
        "restart_to_heal_start_ms": heal_start_ms.map(|t| t.saturating_sub(restart_ms)),
        "restart_to_healed_ms": healed_ms.map(|t| t - restart_ms),
        "latency": {
            "before": before,
            "outage": outage,
            "outage_after_detection": outage_after_detection,
            "heal": heal,
            "after": after,
        },
        "heal_p99_over_before_p99": p99(&heal) / p99(&before).max(1.0),
        "max_latency_outside_detection_us": outside_detection_max_us,
        "latency_log": log.display().to_string(),
    })
}

fn main() {
    let o = parse();
    std::fs::create_dir_all(&o.out).expect("output directory");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut cluster = LocalCluster::start(&o.brickd, "heal-bench", &["n1", "n2", "n3"], PASSWORD);
    let mut rows = Vec::new();
    for &r in &o.replicas {
        let row = run_one(&mut cluster, &rt, &o, r);
        println!("{row}");
        rows.push(row);
    }
    for n in &cluster.nodes {
        // The nodes' logs belong with the results (map changes, heal progress, stalls).
        let _ = std::fs::copy(
            n.dir.join("brickd.log"),
            o.out.join(format!("{}.log", n.name)),
        );
    }
    drop(cluster);
    let summary = json!({"runs": rows});
    let path = o.out.join("summary.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&summary).unwrap_or_default(),
    )
    .expect("summary");
    println!("summary: {}", path.display());
}
