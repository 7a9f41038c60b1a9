//! `brick bench`: randwrite-4k, randread-4k, seqwrite-1m, seqread-1m against one volume through
//! the native client, `qd` requests in flight per job, every latency into an hdrhistogram.
//! Each job has its own file, laid out in full before the timed run (as fio does), so reads
//! hit real blocks and writes do not allocate.

use brick_client::{ClientError, ClientResult, Volume};
use brick_tuning::{BENCH_JOBS_MAX, BENCH_QD_MAX, BENCH_SECONDS_MAX};
use brick_wire::{ErrorCode, FileId, SetAttr, ROOT_FILE_ID};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    Randwrite4k,
    Randread4k,
    Seqwrite1m,
    Seqread1m,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Workload::Randwrite4k,
        Workload::Randread4k,
        Workload::Seqwrite1m,
        Workload::Seqread1m,
    ];

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Workload::Randwrite4k => "randwrite-4k",
            Workload::Randread4k => "randread-4k",
            Workload::Seqwrite1m => "seqwrite-1m",
            Workload::Seqread1m => "seqread-1m",
        }
    }

    pub fn block_bytes(self) -> u64 {
        match self {
            Workload::Randwrite4k | Workload::Randread4k => 4096,
            Workload::Seqwrite1m | Workload::Seqread1m => 1 << 20,
        }
    }

    fn is_write(self) -> bool {
        matches!(self, Workload::Randwrite4k | Workload::Seqwrite1m)
    }

    fn is_random(self) -> bool {
        matches!(self, Workload::Randwrite4k | Workload::Randread4k)
    }
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub workload: Workload,
    pub qd: u32,
    pub jobs: u32,
    pub seconds: u64,
    pub size_bytes: u64,
    /// Stop after this many requests even if time remains (every load loop is bounded).
    pub ops_max: u64,
}

impl BenchOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.qd == 0 || self.qd > BENCH_QD_MAX {
            return Err(format!("--qd must be 1..={BENCH_QD_MAX}"));
        }
        if self.jobs == 0 || self.jobs > BENCH_JOBS_MAX {
            return Err(format!("--jobs must be 1..={BENCH_JOBS_MAX}"));
        }
        if self.seconds == 0 || self.seconds > BENCH_SECONDS_MAX {
            return Err(format!("--seconds must be 1..={BENCH_SECONDS_MAX}"));
        }
        let block = self.workload.block_bytes();
        if self.size_bytes < block * 4 || !self.size_bytes.is_multiple_of(block) {
            return Err(format!(
                "--size must be a multiple of {block} and at least {}",
                block * 4
            ));
        }
        Ok(())
    }
}

/// Request latencies in microseconds (`brick bench --json`: `lat_us`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

/// What `brick bench --json` prints; benchmark scripts read `iops`, `mib_s`, `lat_us`,
/// `errors` and `host_cpus` (../shared/BRIEF.md fixes the first three): add fields, never
/// rename.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchReport {
    pub workload: Workload,
    pub qd: u32,
    pub jobs: u32,
    pub size_bytes: u64,
    pub block_bytes: u64,
    pub seconds: f64,
    pub ops: u64,
    pub errors: u64,
    pub iops: f64,
    pub mib_s: f64,
    pub lat_us: Latency,
    /// CPU time this whole machine spent (user, system, interrupts; not idle, I/O wait or
    /// steal) during the timed phase, per completed request. Meaningful when the servers run
    /// on this machine too, as in the replicated-write bench; None where /proc/stat is absent.
    pub host_cpu_us_per_op: Option<f64>,
    /// CPUs of this machine: with `host_cpu_us_per_op`, the most requests per second its
    /// CPUs could carry at that cost (`host_cpus * 1e6 / host_cpu_us_per_op`).
    pub host_cpus: usize,
}

/// The machine's CPUs as /proc/stat shows them at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
struct HostCpu {
    /// Busy time so far, in microseconds: user + nice + system + irq + softirq of the first
    /// line (idle, iowait and steal excluded).
    busy_us: u64,
    /// The `cpuN` lines: every CPU of the machine, not this process's affinity.
    cpus: usize,
}

/// One read of /proc/stat; None where it is absent or not understood.
fn host_cpu() -> Option<HostCpu> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_host_cpu(&stat, clock_ticks_per_second())
}

fn parse_host_cpu(stat: &str, ticks_per_s: u64) -> Option<HostCpu> {
    let busy_us = parse_cpu_busy_us(stat.lines().next()?, ticks_per_s)?;
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Some(HostCpu {
        busy_us,
        cpus: cpus.max(1),
    })
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 when the value is unknown.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

fn parse_cpu_busy_us(line: &str, ticks_per_s: u64) -> Option<u64> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal
    let busy_ticks = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?;
    Some(busy_ticks.saturating_mul(1_000_000) / ticks_per_s.max(1))
}

const DIR: &str = ".brick-bench";

async fn ensure_dir(vol: &Volume) -> ClientResult<FileId> {
    match vol.mkdir(ROOT_FILE_ID, DIR, 0o755).await {
        Ok(a) => Ok(a.fid),
        Err(e) if e.code() == Some(ErrorCode::Exists) => {
            Ok(vol.lookup(ROOT_FILE_ID, DIR).await?.fid)
        }
        Err(e) => Err(e),
    }
}

/// Creates (or reuses) a job's file of exactly `size` bytes, written in full once.
pub async fn prepare_file(
    vol: &Volume,
    job: u32,
    size: u64,
    progress: &dyn Fn(&str),
) -> ClientResult<FileId> {
    let dir = ensure_dir(vol).await?;
    let name = format!("job{job}.img");
    let ready = format!("job{job}.img.ready-{size}");
    let file = vol.create(dir, &name, 0o644, false).await?;
    if vol.lookup(dir, &ready).await.is_ok() && file.size == size {
        return Ok(file.fid);
    }
    vol.setattr(
        file.fid,
        SetAttr {
            size: Some(size),
            ..SetAttr::NONE
        },
    )
    .await?;
    let chunk: u64 = 1 << 20;
    let data = Arc::new(pattern(chunk as usize, job as u64));
    let mut inflight = std::collections::VecDeque::new();
    let mut last = Instant::now();
    for offset in (0..size).step_by(chunk as usize) {
        let len = chunk.min(size - offset) as usize;
        let (v, d) = (vol.clone(), data.clone());
        let fid = file.fid;
        inflight.push_back(tokio::spawn(async move {
            v.write(fid, offset, &d[..len], false).await
        }));
        if inflight.len() >= 8 {
            if let Some(h) = inflight.pop_front() {
                join(h).await?;
            }
        }
        if last.elapsed() > Duration::from_secs(1) {
            progress(&format!(
                "laying out {name}: {} of {} MiB",
                offset >> 20,
                size >> 20
            ));
            last = Instant::now();
        }
    }
    while let Some(h) = inflight.pop_front() {
        join(h).await?;
    }
    vol.fsync(file.fid).await?;
    let _ = vol.create(dir, &ready, 0o644, false).await?;
    Ok(file.fid)
}

async fn join<T>(h: tokio::task::JoinHandle<ClientResult<T>>) -> ClientResult<T> {
    h.await
        .map_err(|e| ClientError::Usage(format!("task failed: {e}")))?
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Shared {
    ops: AtomicU64,
    errors: AtomicU64,
}

pub async fn run(
    vol: &Volume,
    opts: &BenchOptions,
    progress: &dyn Fn(&str),
) -> ClientResult<BenchReport> {
    opts.validate().map_err(ClientError::Usage)?;
    let mut files = Vec::new();
    for job in 0..opts.jobs {
        files.push(prepare_file(vol, job, opts.size_bytes, progress).await?);
    }
    let shared = Arc::new(Shared {
        ops: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let block = opts.workload.block_bytes();
    let blocks = opts.size_bytes / block;
    let start = Instant::now();
    let cpu_at_start = host_cpu();
    let deadline = start + Duration::from_secs(opts.seconds);
    let mut workers = Vec::new();
    for (job, fid) in files.iter().enumerate() {
        let seq_base = Arc::new(AtomicU64::new(0));
        for w in 0..opts.qd {
            let (v, sh, fid, seq) = (vol.clone(), shared.clone(), *fid, seq_base.clone());
            let (workload, ops_max) = (opts.workload, opts.ops_max);
            let data = pattern(block as usize, (job as u64) << 32 | w as u64);
            workers.push(tokio::spawn(async move {
                let mut hist =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
                let mut rng = rand::random::<u64>() | 1;
                while Instant::now() < deadline && sh.ops.load(Ordering::Relaxed) < ops_max {
                    let index = if workload.is_random() {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng % blocks
                    } else {
                        seq.fetch_add(1, Ordering::Relaxed) % blocks
                    };
                    let offset = index * block;
                    let t = Instant::now();
                    let result = if workload.is_write() {
                        v.write(fid, offset, &data, false).await.map(|_| ())
                    } else {
                        v.read(fid, offset, block as u32).await.map(|_| ())
                    };
                    let us = t.elapsed().as_micros().max(1) as u64;
                    match result {
                        Ok(()) => {
                            let _ = hist.record(us.min(60_000_000));
                            sh.ops.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            sh.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                hist
            }));
        }
    }
    let ticker_shared = shared.clone();
    let mut last_ops = 0;
    let mut merged = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut pending = workers.into_iter();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    loop {
        if Instant::now() >= deadline || ticker_shared.ops.load(Ordering::Relaxed) >= opts.ops_max {
            break;
        }
        ticker.tick().await;
        let ops = ticker_shared.ops.load(Ordering::Relaxed);
        progress(&format!(
            "{} {:>4.0}s  {:>9} IOPS",
            opts.workload.name(),
            start.elapsed().as_secs_f64(),
            ops - last_ops
        ));
        last_ops = ops;
    }
    for h in pending.by_ref() {
        let hist = h
            .await
            .map_err(|e| ClientError::Usage(format!("bench worker failed: {e}")))?;
        merged
            .add(&hist)
            .map_err(|e| ClientError::Usage(e.to_string()))?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_at_end = host_cpu();
    let cpu_busy_us = cpu_at_start
        .zip(cpu_at_end)
        .map(|(a, b)| b.busy_us.saturating_sub(a.busy_us));
    let ops = shared.ops.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    if ops == 0 {
        return Err(ClientError::Usage(format!(
            "no request succeeded ({errors} failed)"
        )));
    }
    Ok(BenchReport {
        workload: opts.workload,
        qd: opts.qd,
        jobs: opts.jobs,
        size_bytes: opts.size_bytes,
        block_bytes: block,
        seconds,
        ops,
        errors,
        iops: ops as f64 / seconds,
        mib_s: ops as f64 * block as f64 / seconds / (1 << 20) as f64,
        lat_us: Latency {
            p50: merged.value_at_quantile(0.50),
            p99: merged.value_at_quantile(0.99),
            p999: merged.value_at_quantile(0.999),
            max: merged.max(),
            mean: merged.mean(),
        },
        host_cpu_us_per_op: cpu_busy_us.map(|us| us as f64 / ops as f64),
        host_cpus: cpu_at_end.map_or(1, |c| c.cpus),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_counts_user_system_and_interrupts_only() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let line = "cpu  100 5 40 9000 700 3 2 50 0 0";
        assert_eq!(parse_cpu_busy_us(line, 100), Some(150 * 10_000));
        assert_eq!(parse_cpu_busy_us("cpu0 1 2 3 4 5 6 7 8", 100), None);
        assert_eq!(parse_cpu_busy_us("cpu 1 2 x", 100), None);
        let stat =
            format!("{line}\ncpu0 50 2 20 4500 350 1 1 25\ncpu1 50 3 20 4500 350 2 1 25\nintr 9\n");
        assert_eq!(
            parse_host_cpu(&stat, 100),
            Some(HostCpu {
                busy_us: 150 * 10_000,
                cpus: 2
            })
        );
    }

    fn report() -> BenchReport {
        BenchReport {
            workload: Workload::Randwrite4k,
            qd: 32,
            jobs: 1,
            size_bytes: 1 << 30,
            block_bytes: 4096,
            seconds: 10.0,
            ops: 1000,
            errors: 0,
            iops: 100.0,
            mib_s: 0.4,
            lat_us: Latency {
                p50: 300,
                p99: 900,
                p999: 2000,
                max: 4000,
                mean: 320.5,
            },
            host_cpu_us_per_op: Some(55.0),
            host_cpus: 2,
        }
    }

    #[test]
    fn the_report_round_trips_with_the_fields_scripts_read() {
        let text = serde_json::to_string(&report()).expect("encode");
        let back: BenchReport = serde_json::from_str(&text).expect("decode");
        assert_eq!(back, report());
        let doc: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        for field in ["iops", "mib_s", "errors", "host_cpus", "host_cpu_us_per_op"] {
            assert!(doc.get(field).is_some(), "{field}");
        }
        for p in ["p50", "p99", "p999", "max"] {
            assert!(doc["lat_us"].get(p).is_some(), "lat_us.{p}");
        }
    }

    #[test]
    fn a_report_missing_or_misspelling_a_field_does_not_parse() {
        let doc = serde_json::to_value(report()).expect("encode");
        let mut missing = doc.clone();
        if let Some(lat) = missing["lat_us"].as_object_mut() {
            lat.remove("p999");
        }
        let e = serde_json::from_value::<BenchReport>(missing).expect_err("p999 is required");
        assert!(e.to_string().contains("missing field `p999`"), "{e}");
        let mut misspelled = doc;
        if let Some(obj) = misspelled.as_object_mut() {
            if let Some(v) = obj.remove("mib_s") {
                obj.insert("mibs".into(), v);
            }
        }
        let e = serde_json::from_value::<BenchReport>(misspelled).expect_err("mibs is unknown");
        assert!(e.to_string().contains("mibs"), "{e}");
    }
}
