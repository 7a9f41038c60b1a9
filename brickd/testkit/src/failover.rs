//! Failover under load, shared by the replication tests and the stall benchmark
//! (bench/failover-stall.sh): a fresh volume across real `brickd serve` nodes, writers that
//! record every acknowledged write and every request's latency, a fault (SIGKILL or SIGSTOP
//! of the primary or a secondary of the loaded file's PG), then checks that every
//! acknowledged write reads back and that the replicas that stayed up hold identical files.

use crate::{pattern, ServeNode};
use brick_client::{Client, ClientConfig, Volume};
use brick_cluster::mgmt::{VolumeCreate, VolumeInfo, VolumeStart};
use brick_wire::{pg_of, FileId, ROOT_FILE_ID};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A real etcd and `brickd serve` nodes on loopback sharing it, with an admin login for all.
pub struct LocalCluster {
    pub nodes: Vec<ServeNode>,
    pub admin: ClientConfig,
    // Dropped after the nodes (fields drop in order): the nodes stop before their store.
    _tmp: tempfile::TempDir,
    /// The store's members (one, unless started with `start_on`).
    pub etcd: Vec<crate::Etcd>,
}

impl LocalCluster {
    /// `brick --json --quiet ARGS` as the cluster's admin (`brick` is the CLI's path), read
    /// into the type the CLI prints it from: a field renamed or missing on either side fails.
    pub fn brick_json<T: serde::de::DeserializeOwned>(
        &self,
        brick: &std::path::Path,
        args: &[&str],
    ) -> T {
        let out = std::process::Command::new(brick)
            .arg("--servers")
            .arg(self.admin.servers.join(","))
            .args([
                "--user",
                &self.admin.user,
                "--password",
                &self.admin.password,
            ])
            .args(["--json", "--quiet"])
            .args(args)
            .output()
            .expect("run brick");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "brick {args:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("brick {args:?}: {e}: {stdout}"))
    }

    pub fn start(
        brickd: &std::path::Path,
        prefix: &str,
        names: &[&str],
        password: &str,
    ) -> LocalCluster {
        LocalCluster::start_on(brickd, prefix, names, password, vec![crate::Etcd::start()])
    }

    /// Nodes on `etcd`, the members of one etcd cluster (`Etcd::start_cluster`).
    pub fn start_on(
        brickd: &std::path::Path,
        prefix: &str,
        names: &[&str],
        password: &str,
        etcd: Vec<crate::Etcd>,
    ) -> LocalCluster {
        let tmp = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(crate::scratch_root())
            .expect("tempdir");
        if std::env::var_os("BRICK_KEEP_SCRATCH").is_some() {
            eprintln!("BRICK_KEEP_SCRATCH: keeping {}", tmp.path().display());
        }
        let store = crate::Etcd::cluster_url(&etcd);
        let nodes: Vec<ServeNode> = names
            .iter()
            .map(|n| ServeNode::start(brickd, n, tmp.path(), &store, password))
            .collect();
        let admin = ClientConfig {
            servers: nodes.iter().map(|n| n.addr.clone()).collect(),
            user: "admin".into(),
            password: password.into(),
        };
        LocalCluster {
            nodes,
            admin,
            _tmp: tmp,
            etcd,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, restarted after the checks.
    Kill,
    /// SIGSTOP, SIGCONT after `during`.
    Freeze,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The primary of the loaded file's PG.
    Primary,
    /// Another member of that PG.
    Secondary,
}

pub struct Scenario {
    pub volume: String,
    pub replica: u32,
    pub fault: Fault,
    pub target: Target,
    /// Load before the fault, with the fault in force, and after it ends.
    pub before: Duration,
    pub during: Duration,
    pub after: Duration,
    /// Concurrent writers on the loaded file (each owns its own blocks).
    pub writers: usize,
    /// Where to write every request's latency as CSV (`t_ms,op,latency_us,ok`).
    pub latency_log: Option<PathBuf>,
}

#[derive(Debug)]
pub struct Report {
    pub target_node: String,
    pub writes_acked: u64,
    pub writes_acked_after_fault: u64,
    pub files_created: usize,
    pub errors: Vec<String>,
    /// The longest time one request waited for its answer.
    pub stall_max: Duration,
    pub blocks_verified: usize,
    /// Nodes whose copies were compared byte for byte (the replicas that stayed up).
    pub compared: Vec<String>,
}

const BLOCK_BYTES: usize = 4096;
const BLOCKS: u64 = 256;
const SMALL_FILE_BYTES: usize = 100;
const SMALL_FILES_MAX: u64 = 2000;

/// Block contents: the block number and version, so a stale block says what it is.
fn block_data(block: u64, version: u64) -> Vec<u8> {
    let mut data = pattern(block.wrapping_mul(1_000_003) ^ version, 0, BLOCK_BYTES);
    data[..8].copy_from_slice(&block.to_le_bytes());
    data[8..16].copy_from_slice(&version.to_le_bytes());
    data
}

#[derive(Default)]
struct Ledger {
    /// Per block: the last acknowledged version, and a later version that failed (may or may
    /// not have landed).
    blocks: HashMap<u64, (u64, Option<u64>)>,
    small: Vec<String>,
    errors: Vec<String>,
    /// (ms since start, op, latency, ok)
    latencies: Vec<(u64, &'static str, Duration, bool)>,
    acked: u64,
    acked_after_fault: u64,
}

struct Shared {
    start: Instant,
    fault_at_ms: Mutex<Option<u64>>,
    stop: AtomicBool,
    ledger: Mutex<Ledger>,
}

impl Shared {
    fn record(&self, op: &'static str, began: Instant, ok: bool) {
        let t_ms = began.duration_since(self.start).as_millis() as u64;
        let after_fault = self
            .fault_at_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|f| t_ms >= f);
        let mut l = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        l.latencies.push((t_ms, op, began.elapsed(), ok));
        if ok {
            l.acked += 1;
            if after_fault {
                l.acked_after_fault += 1;
            }
        }
    }
}

/// Runs one scenario on `nodes` (the volume's members are the first `replica` of them). A
/// killed node is restarted and a frozen one thawed before this returns.
pub fn run(nodes: &mut [ServeNode], admin: ClientConfig, sc: &Scenario) -> Report {
    assert!(sc.replica as usize <= nodes.len() && sc.writers > 0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (vol, fid, target) = rt.block_on(setup(nodes, admin.clone(), sc));
    let shared = Arc::new(Shared {
        start: Instant::now(),
        fault_at_ms: Mutex::new(None),
        stop: AtomicBool::new(false),
        ledger: Mutex::new(Ledger::default()),
    });
    let tasks = rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..sc.writers {
            let (vol, shared) = (vol.clone(), shared.clone());
            let writers = sc.writers as u64;
            tasks.push(tokio::spawn(writer(vol, fid, w as u64, writers, shared)));
        }
        tasks.push(tokio::spawn(creator(vol.clone(), shared.clone())));
        tasks
    });
    std::thread::sleep(sc.before);
    *shared.fault_at_ms.lock().unwrap_or_else(|p| p.into_inner()) =
        Some(shared.start.elapsed().as_millis() as u64);
    match sc.fault {
        Fault::Kill => nodes[target].kill9(),
        Fault::Freeze => nodes[target].freeze(),
    }
    std::thread::sleep(sc.during);
    if sc.fault == Fault::Freeze {
        nodes[target].thaw();
    }
    std::thread::sleep(sc.after);
    shared.stop.store(true, Ordering::Release);
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    let blocks_verified = rt.block_on(verify(&vol, fid, &shared));
    let survivors: Vec<usize> = (0..sc.replica as usize).filter(|&i| i != target).collect();
    // A survivor the overloaded machine made miss a deadline left the up-to-date set and is
    // being healed: its copy is complete only once it is back in every PG.
    let names: Vec<String> = survivors.iter().map(|&i| nodes[i].name.clone()).collect();
    rt.block_on(wait_up_to_date(&admin, &sc.volume, &names));
    compare_copies(nodes, &survivors, &sc.volume);
    if sc.fault == Fault::Kill {
        nodes[target].restart();
    }
    let ledger = std::mem::take(&mut *shared.ledger.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(path) = &sc.latency_log {
        write_latency_log(path, &ledger.latencies);
    }
    Report {
        target_node: nodes[target].name.clone(),
        writes_acked: ledger.acked,
        writes_acked_after_fault: ledger.acked_after_fault,
        files_created: ledger.small.len(),
        errors: ledger.errors,
        stall_max: ledger
            .latencies
            .iter()
            .map(|l| l.2)
            .max()
            .unwrap_or_default(),
        blocks_verified,
        compared: survivors.iter().map(|&i| nodes[i].name.clone()).collect(),
    }
}

/// Creates and starts volume `name` with one brick on each of `members`, and opens it.
pub async fn create_volume(
    client: &Client,
    members: &[ServeNode],
    name: &str,
    replica: u32,
) -> Volume {
    let bricks: Vec<String> = members
        .iter()
        .map(|n| format!("{}:{}", n.name, n.brick_dir(name).display()))
        .collect();
    client
        .mgmt(&VolumeCreate {
            name: name.to_string(),
            replica,
            bricks,
            pg_count: None,
        })
        .await
        .expect("volume create");
    client
        .mgmt(&VolumeStart {
            name: name.to_string(),
        })
        .await
        .expect("volume start");
    client.open_volume(name).await.expect("open volume")
}

/// Creates and fills the volume; returns it, the loaded file and the index of the node to
/// fault.
async fn setup(nodes: &[ServeNode], admin: ClientConfig, sc: &Scenario) -> (Volume, FileId, usize) {
    let client = Client::connect(admin).await.expect("connect as admin");
    let members = &nodes[..sc.replica as usize];
    let vol = create_volume(&client, members, &sc.volume, sc.replica).await;
    let f = vol
        .create(ROOT_FILE_ID, "load", 0o644, true)
        .await
        .expect("create the loaded file");
    for block in 0..BLOCKS {
        vol.write(
            f.fid,
            block * BLOCK_BYTES as u64,
            &block_data(block, 0),
            false,
        )
        .await
        .expect("fill");
    }
    vol.mkdir(ROOT_FILE_ID, "small", 0o755)
        .await
        .expect("mkdir small");
    let info = client
        .mgmt(&VolumeInfo {
            name: sc.volume.clone(),
        })
        .await
        .expect("volume info");
    let pg = pg_of(f.fid) as usize;
    let primary = info
        .pgs
        .get(pg)
        .and_then(|p| p.primary.as_deref())
        .and_then(|b| b.split(':').next())
        .expect("the loaded PG has a primary")
        .to_string();
    let primary_idx = members
        .iter()
        .position(|n| n.name == primary)
        .expect("the primary is a member");
    let target = match sc.target {
        Target::Primary => primary_idx,
        Target::Secondary => (primary_idx + 1) % members.len(),
    };
    (vol, f.fid, target)
}

async fn writer(vol: Volume, fid: FileId, w: u64, writers: u64, shared: Arc<Shared>) {
    let mut version = 0;
    while !shared.stop.load(Ordering::Acquire) {
        version += 1;
        for block in (w..BLOCKS).step_by(writers as usize) {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            let began = Instant::now();
            let result = vol
                .write(
                    fid,
                    block * BLOCK_BYTES as u64,
                    &block_data(block, version),
                    false,
                )
                .await;
            shared.record("write", began, result.is_ok());
            let mut l = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
            let entry = l.blocks.entry(block).or_insert((0, None));
            match result {
                Ok(_) => *entry = (version, None),
                Err(e) => {
                    entry.1 = Some(version);
                    l.errors
                        .push(format!("write block {block} v{version}: {e}"));
                }
            }
        }
    }
}

/// Namespace load: small files created (PG 0's primary) while the data load runs.
async fn creator(vol: Volume, shared: Arc<Shared>) {
    let dir = match vol.lookup(ROOT_FILE_ID, "small").await {
        Ok(a) => a.fid,
        Err(e) => {
            let mut l = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
            l.errors.push(format!("lookup small: {e}"));
            return;
        }
    };
    for i in 0..SMALL_FILES_MAX {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let name = format!("f{i:05}");
        let began = Instant::now();
        let result = async {
            let a = vol.create(dir, &name, 0o644, true).await?;
            vol.write(a.fid, 0, &pattern(i, 0, SMALL_FILE_BYTES), false)
                .await
        }
        .await;
        shared.record("create+write", began, result.is_ok());
        {
            let mut l = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(_) => l.small.push(name),
                Err(e) => l.errors.push(format!("create {name}: {e}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every acknowledged write reads back (a block whose later write failed may hold either).
async fn verify(vol: &Volume, fid: FileId, shared: &Shared) -> usize {
    let (blocks, small) = {
        let l = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
        (l.blocks.clone(), l.small.clone())
    };
    for (&block, &(acked, maybe)) in &blocks {
        let got = vol
            .read(fid, block * BLOCK_BYTES as u64, BLOCK_BYTES as u32)
            .await
            .unwrap_or_else(|e| panic!("read block {block}: {e}"));
        let ok =
            got == block_data(block, acked) || maybe.is_some_and(|v| got == block_data(block, v));
        let found = got
            .get(8..16)
            .map(|v| u64::from_le_bytes(v.try_into().unwrap_or([0; 8])));
        assert!(
            ok,
            "block {block}: acknowledged version {acked} (maybe {maybe:?}) lost; found version {found:?}"
        );
    }
    let dir = vol
        .lookup(ROOT_FILE_ID, "small")
        .await
        .expect("lookup small");
    for (i, name) in small.iter().enumerate() {
        let a = vol
            .lookup(dir.fid, name)
            .await
            .unwrap_or_else(|e| panic!("acknowledged file {name} lost: {e}"));
        let seed: u64 = name[1..].parse().unwrap_or(i as u64);
        let got = vol
            .read(a.fid, 0, SMALL_FILE_BYTES as u32)
            .await
            .expect("read small");
        assert_eq!(got, pattern(seed, 0, SMALL_FILE_BYTES), "{name}: content");
    }
    blocks.len()
}

/// The replicas that stayed up hold byte-identical copies of every file.
pub fn compare_copies(nodes: &[ServeNode], survivors: &[usize], volume: &str) {
    let copy = |i: usize| nodes[i].brick_dir(volume).join("data");
    let Some((&first, rest)) = survivors.split_first() else {
        return;
    };
    for &other in rest {
        compare_bricks(
            (&nodes[first].name, &copy(first)),
            (&nodes[other].name, &copy(other)),
        );
    }
}

/// Survivors are given this long to be healed back into every PG before copies are compared.
const SURVIVORS_HEALED_WAIT_MS: u64 = 60_000;

/// Waits until every node in `names` is up to date in every PG of `volume`.
async fn wait_up_to_date(admin: &ClientConfig, volume: &str, names: &[String]) {
    let client = Client::connect(admin.clone())
        .await
        .expect("connect as admin");
    let start = Instant::now();
    let mut reported = false;
    loop {
        let info = client
            .mgmt(&VolumeInfo {
                name: volume.into(),
            })
            .await
            .expect("volume info");
        let behind: Vec<String> = info
            .pgs
            .iter()
            .filter_map(|pg| {
                let missing: Vec<&String> = names
                    .iter()
                    .filter(|n| {
                        !pg.up_to_date
                            .iter()
                            .any(|b| b.starts_with(&format!("{n}:")))
                    })
                    .collect();
                (!missing.is_empty()).then(|| format!("pg {}: {missing:?}", pg.pg))
            })
            .collect();
        if behind.is_empty() {
            return;
        }
        if !reported {
            eprintln!("{volume}: survivors behind, waiting for their heal: {behind:?}");
            reported = true;
        }
        assert!(
            start.elapsed() < Duration::from_millis(SURVIVORS_HEALED_WAIT_MS),
            "{volume}: survivors still behind after {SURVIVORS_HEALED_WAIT_MS} ms: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts that two brick data directories hold the same entries with the same contents
/// (and that the first holds something).
pub fn compare_bricks(
    (a_name, a): (&str, &std::path::Path),
    (b_name, b): (&str, &std::path::Path),
) {
    let reference = tree(a);
    assert!(reference.len() > 2, "nothing to compare on {a_name}");
    let theirs = tree(b);
    let names = |t: &Vec<(String, Vec<u8>)>| t.iter().map(|e| e.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&reference),
        names(&theirs),
        "{a_name} and {b_name} hold different entries"
    );
    for (x, y) in reference.iter().zip(&theirs) {
        let first_difference = x.1.iter().zip(&y.1).position(|(p, q)| p != q);
        assert!(
            x.1 == y.1,
            "{}: the copies on {a_name} ({} bytes) and {b_name} ({} bytes) differ (first at {first_difference:?})",
            x.0,
            x.1.len(),
            y.1.len()
        );
    }
}

/// Every file under `root` (relative path, contents), sorted.
fn tree(root: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            if path.is_dir() {
                out.push((format!("{rel}/"), Vec::new()));
                dirs.push(path);
            } else {
                out.push((rel, std::fs::read(&path).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

fn write_latency_log(path: &std::path::Path, latencies: &[(u64, &'static str, Duration, bool)]) {
    let mut text = String::from("t_ms,op,latency_us,ok\n");
    for (t, op, lat, ok) in latencies {
        text.push_str(&format!("{t},{op},{},{}\n", lat.as_micros(), *ok as u8));
    }
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("{}: {e}", path.display());
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
        // Logs and bricks stay for a post-mortem (the directory is printed at start).
        crate::keep_scratch_if_asked(&mut self._tmp);
    }
}
