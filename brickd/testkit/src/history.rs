//! A workload of keyed records with its recorded history, for fault scenarios: writers own
//! blocks of one file and write increasing versions of them (every few writes with FUA, and
//! an fsync now and then), readers read random blocks. Checked as it runs and at the end:
//! - no read returns bytes that were never written (every block names its version and its
//!   contents follow from it);
//! - no read is stale: it returns at least the version acknowledged before it was sent, and
//!   at least the newest version any read returned before it was sent;
//! - every acknowledged write (or, after every copy lost power, every write made durable by
//!   FUA or an acknowledged fsync) reads back at the end.

use crate::pattern;
use brick_client::Volume;
use brick_wire::FileId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BLOCK_BYTES: usize = 4096;
/// Every this many writes of a writer go with FUA.
const FUA_EVERY: u64 = 4;
/// Every this many writes a writer sends an fsync of the file.
const FSYNC_EVERY: u64 = 16;
/// A reader's pause between reads (writers do not pause).
const READ_PAUSE: Duration = Duration::from_millis(2);
/// Messages kept per kind (the counts are exact).
const MESSAGES_MAX: usize = 20;

/// Block contents: the block number and version, so a stale block says what it is.
pub fn block_data(block: u64, version: u64) -> Vec<u8> {
    let mut data = pattern(block.wrapping_mul(1_000_003) ^ version, 0, BLOCK_BYTES);
    data[..8].copy_from_slice(&block.to_le_bytes());
    data[8..16].copy_from_slice(&version.to_le_bytes());
    data
}

/// The version a block holds, if its bytes are exactly what that version wrote (an unwritten
/// block, all zeros, is version 0).
pub fn version_of(block: u64, data: &[u8]) -> Option<u64> {
    if data.len() != BLOCK_BYTES {
        return None;
    }
    if data.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let named = u64::from_le_bytes(data[..8].try_into().ok()?);
    let version = u64::from_le_bytes(data[8..16].try_into().ok()?);
    (named == block && data == block_data(block, version).as_slice()).then_some(version)
}

#[derive(Default, Clone, Copy)]
struct BlockState {
    /// The newest acknowledged version.
    acked: u64,
    /// The newest version made durable (FUA, or written before an acknowledged fsync).
    durable: u64,
    /// A version sent after `acked` whose answer was an error (may or may not have landed).
    maybe: Option<u64>,
    /// The newest version a read returned.
    read_max: u64,
}

#[derive(Default)]
struct Ledger {
    blocks: HashMap<u64, BlockState>,
    acked_writes: u64,
    reads: u64,
    errors: u64,
    error_messages: Vec<String>,
    stale_reads: u64,
    stale_messages: Vec<String>,
    /// When the last operation succeeded, and the longest time without one.
    last_ok: Option<Instant>,
    longest_gap: Duration,
}

impl Ledger {
    fn ok_now(&mut self) {
        let now = Instant::now();
        if let Some(last) = self.last_ok {
            self.longest_gap = self.longest_gap.max(now - last);
        }
        self.last_ok = Some(now);
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.error_messages.len() < MESSAGES_MAX {
            self.error_messages.push(what);
        }
    }

    fn stale(&mut self, what: String) {
        self.stale_reads += 1;
        if self.stale_messages.len() < MESSAGES_MAX {
            self.stale_messages.push(what);
        }
    }
}

/// What a finished workload measured.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub acked_writes: u64,
    pub reads: u64,
    pub errors: u64,
    pub error_messages: Vec<String>,
    pub stale_reads: u64,
    pub stale_messages: Vec<String>,
    /// Blocks whose acknowledged (or durable, see `verify`) version did not read back.
    pub lost_writes: u64,
    pub lost_messages: Vec<String>,
    pub longest_unavailable: Duration,
}

impl Outcome {
    /// This outcome with the client errors (and their messages) of `earlier` added.
    pub fn with_errors_of(mut self, earlier: &Outcome) -> Outcome {
        self.errors = self.errors.max(earlier.errors);
        if self.error_messages.is_empty() {
            self.error_messages = earlier.error_messages.clone();
        }
        self
    }
}

pub struct Workload {
    vol: Volume,
    fid: FileId,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn lock(l: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

impl Workload {
    /// Starts `writers` writers over `blocks` blocks of `fid` and `readers` readers, on the
    /// current tokio runtime. `seed` picks the readers' blocks.
    pub fn start(
        vol: Volume,
        fid: FileId,
        blocks: u64,
        writers: u64,
        readers: u64,
        seed: u64,
    ) -> Workload {
        let readers_vol = vol.clone();
        Workload::start_with_readers_on(vol, readers_vol, fid, (blocks, writers, readers), seed)
    }

    /// `start` with the readers on `readers_vol`, another client's handle of the volume: its
    /// maps are its own, so after a failover it may still ask the old primary while the
    /// writers already moved on (as another host's client would).
    pub fn start_with_readers_on(
        vol: Volume,
        readers_vol: Volume,
        fid: FileId,
        (blocks, writers, readers): (u64, u64, u64),
        seed: u64,
    ) -> Workload {
        assert!(writers > 0 && blocks >= writers);
        let ledger = Arc::new(Mutex::new(Ledger {
            last_ok: Some(Instant::now()),
            ..Ledger::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..writers {
            let owned: Vec<u64> = (w..blocks).step_by(writers as usize).collect();
            let (vol, ledger, stop) = (vol.clone(), ledger.clone(), stop.clone());
            tasks.push(tokio::spawn(writer(vol, fid, owned, ledger, stop)));
        }
        for r in 0..readers {
            let (vol, ledger, stop) = (readers_vol.clone(), ledger.clone(), stop.clone());
            let seed = seed.wrapping_mul(31).wrapping_add(r);
            tasks.push(tokio::spawn(reader(vol, fid, blocks, seed, ledger, stop)));
        }
        Workload {
            vol,
            fid,
            ledger,
            stop,
            tasks,
        }
    }

    /// Acknowledged writes so far.
    pub fn acked(&self) -> u64 {
        lock(&self.ledger).acked_writes
    }

    /// Stops the load and waits for its last requests.
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }

    /// Stops the load; the outcome of what ran (nothing read back).
    pub async fn stop_and_outcome(&mut self) -> Outcome {
        self.stop().await;
        self.outcome(Vec::new())
    }

    /// What the ledger recorded, with `lost` (messages of the blocks that did not read back).
    fn outcome(&self, lost: Vec<String>) -> Outcome {
        let l = lock(&self.ledger);
        Outcome {
            acked_writes: l.acked_writes,
            reads: l.reads,
            errors: l.errors,
            error_messages: l.error_messages.clone(),
            stale_reads: l.stale_reads,
            stale_messages: l.stale_messages.clone(),
            lost_writes: lost.len() as u64,
            lost_messages: lost.into_iter().take(MESSAGES_MAX).collect(),
            longest_unavailable: l.longest_gap,
        }
    }

    /// Reads every block back: each must hold its newest acknowledged version (or, with
    /// `durable_only`, at least its newest durable one: what survives when every copy lost
    /// power), or the version of a later write that failed. Then the outcome.
    pub async fn verify(&mut self, durable_only: bool) -> Outcome {
        self.stop().await;
        let blocks: Vec<(u64, BlockState)> = lock(&self.ledger)
            .blocks
            .iter()
            .map(|(b, s)| (*b, *s))
            .collect();
        let mut lost = Vec::new();
        for (block, st) in blocks {
            let got = match self
                .vol
                .read(self.fid, block * BLOCK_BYTES as u64, BLOCK_BYTES as u32)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    lost.push(format!("block {block}: read failed at the end: {e}"));
                    continue;
                }
            };
            let version = version_of(block, &got);
            let wanted = if durable_only { st.durable } else { st.acked };
            let ok = match version {
                Some(v) if durable_only => v >= wanted && v <= st.maybe.unwrap_or(st.acked),
                Some(v) => v == wanted || Some(v) == st.maybe,
                None => false,
            };
            if !ok {
                lost.push(format!(
                    "block {block}: wanted version {wanted} (acked {}, durable {}, maybe {:?}), found {version:?}",
                    st.acked, st.durable, st.maybe
                ));
            }
        }
        self.outcome(lost)
    }
}

async fn writer(
    vol: Volume,
    fid: FileId,
    owned: Vec<u64>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    // Versions written (acknowledged) since this writer's last fsync: durable once one is.
    let mut since_sync: Vec<(u64, u64)> = Vec::new();
    for version in 1.. {
        for &block in &owned {
            if stop.load(Ordering::Acquire) {
                return;
            }
            n += 1;
            let fua = n.is_multiple_of(FUA_EVERY);
            let data = block_data(block, version);
            let result = vol.write(fid, block * BLOCK_BYTES as u64, &data, fua).await;
            {
                let mut l = lock(&ledger);
                match result {
                    Ok(_) => {
                        l.ok_now();
                        l.acked_writes += 1;
                        let st = l.blocks.entry(block).or_default();
                        st.acked = version;
                        st.maybe = None;
                        if fua {
                            st.durable = version;
                        } else {
                            since_sync.push((block, version));
                        }
                    }
                    Err(e) => {
                        l.blocks.entry(block).or_default().maybe = Some(version);
                        l.error(format!("write block {block} v{version}: {e}"));
                    }
                }
            }
            if n.is_multiple_of(FSYNC_EVERY) {
                let result = vol.fsync(fid).await;
                let mut l = lock(&ledger);
                match result {
                    Ok(()) => {
                        l.ok_now();
                        for (b, v) in since_sync.drain(..) {
                            let st = l.blocks.entry(b).or_default();
                            st.durable = st.durable.max(v);
                        }
                    }
                    Err(e) => l.error(format!("fsync: {e}")),
                }
            }
        }
    }
}

async fn reader(
    vol: Volume,
    fid: FileId,
    blocks: u64,
    seed: u64,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut x = seed | 1;
    while !stop.load(Ordering::Acquire) {
        // xorshift: which block to read.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let block = x % blocks;
        let floor = {
            let l = lock(&ledger);
            l.blocks
                .get(&block)
                .map(|s| (s.acked, s.read_max))
                .unwrap_or_default()
        };
        let result = vol
            .read(fid, block * BLOCK_BYTES as u64, BLOCK_BYTES as u32)
            .await;
        {
            let mut l = lock(&ledger);
            match result {
                Ok(data) => {
                    l.ok_now();
                    l.reads += 1;
                    match version_of(block, &data) {
                    None => l.stale(format!("block {block}: read bytes no write wrote")),
                    Some(v) if v < floor.0 || v < floor.1 => l.stale(format!(
                        "block {block}: read version {v} after version {} was acknowledged and {} read",
                        floor.0, floor.1
                    )),
                    Some(v) => {
                        let st = l.blocks.entry(block).or_default();
                        st.read_max = st.read_max.max(v);
                    }
                }
                }
                Err(e) => l.error(format!("read block {block}: {e}")),
            }
        }
        tokio::time::sleep(READ_PAUSE).await;
    }
}

// Scenario support shared by the fault and partition tests: `FAULTS_ROUNDS`, `FAULTS_SEED`
// and `FAULTS_REPORT` (bench/faults.sh).

/// A number from the environment (`default` when unset or not a number).
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How many times each scenario runs (`FAULTS_ROUNDS`, default 1).
pub fn rounds() -> u64 {
    env_u64("FAULTS_ROUNDS", 1).max(1)
}

/// What picks the readers' blocks and the moments of the faults (`FAULTS_SEED`, default 1).
pub fn seed() -> u64 {
    env_u64("FAULTS_SEED", 1)
}

/// Appends one scenario's line to `FAULTS_REPORT`, and prints it.
pub fn report(scenario: &str, round: u64, o: &Outcome, extra: serde_json::Value) {
    let line = serde_json::json!({
        "scenario": scenario,
        "round": round,
        "seed": seed(),
        "acked_writes": o.acked_writes,
        "reads": o.reads,
        "client_errors": o.errors,
        "lost_writes": o.lost_writes,
        "stale_reads": o.stale_reads,
        "longest_unavailable_ms": o.longest_unavailable.as_millis() as u64,
        "extra": extra,
    });
    eprintln!("{line}");
    if let Ok(path) = std::env::var("FAULTS_REPORT") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("FAULTS_REPORT file");
        writeln!(f, "{line}").expect("write FAULTS_REPORT");
    }
}

/// No acknowledged write lost, no stale read, something written, and (unless allowed) no
/// client error.
pub fn assert_clean(scenario: &str, o: &Outcome, errors_allowed: bool) {
    assert_eq!(
        o.lost_writes, 0,
        "{scenario}: acknowledged writes lost: {:?}",
        o.lost_messages
    );
    assert_eq!(
        o.stale_reads, 0,
        "{scenario}: stale reads: {:?}",
        o.stale_messages
    );
    if !errors_allowed {
        assert_eq!(
            o.errors, 0,
            "{scenario}: client errors: {:?}",
            o.error_messages
        );
    }
    assert!(o.acked_writes > 0, "{scenario}: nothing was written");
}

/// A pseudo-random number from the seed, the round and a salt (no clock).
pub fn pick(round: u64, salt: u64, below: u64) -> u64 {
    let mut x = (seed() ^ 0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(round + 1)
        .wrapping_add(salt.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 29;
    x % below.max(1)
}
