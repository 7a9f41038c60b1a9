//! Bricks of this node whose disk failed an operation (an I/O error, a read-only file system),
//! and the probe that lets them back. The cores mark a brick failing; each tick they drop
//! its members' replicas (a quarantine: to the others the member crashed), except where it
//! holds the last up-to-date copy of a PG. A thread probes failing bricks (write, fdatasync,
//! read back) once `DISK_QUARANTINE_MS` have passed: when the probe passes, the mark goes,
//! the cores start the members again as after a crash, and the heal brings them back.

use brick_tuning::{DISK_PROBE_INTERVAL_MS, DISK_QUARANTINE_MS};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

/// What a failing brick's members may do now (see `DiskHealth::report`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Quarantine {
    pub leave: bool,
    pub stop: bool,
}

/// A brick whose disk fails.
#[derive(Debug, Clone)]
pub struct FailingDisk {
    pub volume: String,
    /// `node:path`, as volumes name their bricks.
    pub brick: String,
    pub root: PathBuf,
    /// The last error seen (an operation's, then the probe's).
    pub error: String,
    pub since: Instant,
    pub failures: u64,
}

/// Per failing brick, a bit per core: the cores that still have one of its members in a PG's
/// map, and those where one holds the last up-to-date copy of its PG. All set when it starts
/// failing (unknown until each core has looked).
#[derive(Clone, Copy)]
struct Cores {
    listed: u64,
    last_copy: u64,
}

struct Failing {
    disk: FailingDisk,
    cores: Cores,
}

/// Failing bricks by (volume id, member).
#[derive(Default)]
pub struct DiskHealth {
    failing: Mutex<HashMap<(u32, u8), Failing>>,
    /// Counts the bricks found working again: cores then create their quarantined slots.
    cleared: std::sync::atomic::AtomicU64,
}

impl DiskHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, u8), Failing>> {
        self.failing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks a brick failing (or counts one more failure of a failing one).
    pub fn failed(
        &self,
        (vol_id, member): (u32, u8),
        cores: usize,
        disk: impl FnOnce() -> FailingDisk,
    ) {
        let mut all = self.lock();
        match all.get_mut(&(vol_id, member)) {
            Some(f) => f.disk.failures += 1,
            None => {
                let disk = disk();
                tracing::error!(
                    volume = disk.volume,
                    brick = disk.brick,
                    "the disk of this brick fails ({}): its members leave their PGs until a probe of it passes",
                    disk.error
                );
                let every_core = u64::MAX >> (64 - cores.clamp(1, 64));
                let cores = Cores {
                    listed: every_core,
                    last_copy: every_core,
                };
                all.insert((vol_id, member), Failing { disk, cores });
            }
        }
    }

    /// Core `core` says whether one of its members of the brick is still in a PG's map, and
    /// whether one holds the last up-to-date copy of its PG. Returns what the brick's members
    /// may do: leave their PGs (no core holds a last copy: one that did would keep serving
    /// data while the brick's other members, its namespace member among them, were out), and
    /// stop (none is in a map any more, on any core).
    pub fn report(&self, key: (u32, u8), core: usize, listed: bool, last_copy: bool) -> Quarantine {
        let mut all = self.lock();
        let Some(Failing { cores: c, .. }) = all.get_mut(&key) else {
            return Quarantine::default(); // not failing (any more)
        };
        let bit = 1u64 << (core % 64);
        let set = |bits: &mut u64, on: bool| {
            if on {
                *bits |= bit;
            } else {
                *bits &= !bit;
            }
        };
        set(&mut c.listed, listed);
        set(&mut c.last_copy, last_copy);
        Quarantine {
            leave: c.last_copy == 0,
            stop: c.last_copy == 0 && c.listed == 0,
        }
    }

    pub fn generation(&self) -> u64 {
        self.cleared.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn is_failing(&self, vol_id: u32, member: u8) -> bool {
        self.lock().contains_key(&(vol_id, member))
    }

    pub fn failing_keys(&self) -> Vec<(u32, u8)> {
        self.lock().keys().copied().collect()
    }

    pub fn failing(&self) -> Vec<FailingDisk> {
        let mut out: Vec<FailingDisk> = self.lock().values().map(|f| f.disk.clone()).collect();
        out.sort_by(|a, b| (&a.volume, &a.brick).cmp(&(&b.volume, &b.brick)));
        out
    }

    /// One round of probes: clears the bricks that work again.
    fn probe_round(&self) {
        let due: Vec<((u32, u8), PathBuf)> = self
            .lock()
            .iter()
            .filter(|(_, f)| f.disk.since.elapsed() >= Duration::from_millis(DISK_QUARANTINE_MS))
            .map(|(k, f)| (*k, f.disk.root.clone()))
            .collect();
        for (key, root) in due {
            let result = probe(&root);
            let mut all = self.lock();
            match result {
                Ok(()) => {
                    if let Some(Failing { disk: f, .. }) = all.remove(&key) {
                        self.cleared
                            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                        tracing::info!(
                            volume = f.volume,
                            brick = f.brick,
                            "the disk of this brick works again (probe passed after {} failures): its members rejoin",
                            f.failures
                        );
                    }
                }
                Err(e) => {
                    if let Some(f) = all.get_mut(&key) {
                        f.disk.error = format!("probe: {e}");
                    }
                }
            }
        }
    }
}

/// Probes failing bricks every `DISK_PROBE_INTERVAL_MS` until the dataplane is gone.
pub fn spawn_prober(health: Weak<crate::state::NodeReports>) {
    let spawned = std::thread::Builder::new()
        .name("brick-disk-probe".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(DISK_PROBE_INTERVAL_MS));
            let Some(reports) = health.upgrade() else {
                return;
            };
            reports.disks.probe_round();
        });
    if let Err(e) = spawned {
        tracing::error!("no disk probe thread ({e}): failing bricks stay out until restarted");
    }
}

const PROBE_BYTES: usize = 4096;

/// Writes a block to `.brickd/disk-probe`, makes it durable, and reads it back.
fn probe(root: &Path) -> std::io::Result<()> {
    let path = root.join(".brickd").join("disk-probe");
    let block: Vec<u8> = (0..PROBE_BYTES).map(|i| (i * 7 + 3) as u8).collect();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    f.write_all(&block)?;
    f.sync_data()?;
    drop(f);
    let mut back = Vec::with_capacity(PROBE_BYTES);
    std::fs::File::open(&path)?.read_to_end(&mut back)?;
    if back != block {
        return Err(std::io::Error::other(
            "read back differs from what was written",
        ));
    }
    Ok(())
}
