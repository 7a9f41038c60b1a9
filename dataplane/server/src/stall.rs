//! A core that does not get back to its event loop for a while misses heartbeats (its members
//! may leave the write path) and holds every client it serves. Each core therefore checks how
//! late its own timer fires and, when it is late, logs where the time of the whole check
//! interval (`interval_ms`: the timer's period plus `late_ms`) went according to the kernel's
//! scheduler statistics of the core's thread:
//!
//! - `on_cpu_ms`: the thread ran (a task that did not yield, or a syscall that computes);
//! - `runnable_ms`: it was ready but waited for a CPU (the machine is overloaded);
//! - `off_cpu_ms`: the rest, the thread slept. Far more than the period means a blocking
//!   syscall on the core (a file system waiting for its journal, say).
//!
//! The machine's steal time (`/proc/stat`, all CPUs) is logged too: a VM whose vCPUs the host
//! does not run shows up there and not in the thread's own counters.

use brick_tuning::{CORE_STALL_CHECK_INTERVAL_MS, CORE_STALL_WARN_MS};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Longest procfs line we parse; both files' relevant lines are far shorter.
const PROC_READ_BYTES_MAX: usize = 512;

/// The scheduler's view of one thread: nanoseconds on a CPU and waiting on a run queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ThreadSched {
    pub(crate) on_cpu_ns: u64,
    pub(crate) runnable_ns: u64,
}

/// Parses `/proc/.../schedstat`: "ON_CPU_NS RUNQUEUE_WAIT_NS TIMESLICES".
pub(crate) fn parse_schedstat(text: &str) -> Option<ThreadSched> {
    let mut fields = text.split_ascii_whitespace();
    let on_cpu_ns = fields.next()?.parse().ok()?;
    let runnable_ns = fields.next()?.parse().ok()?;
    Some(ThreadSched {
        on_cpu_ns,
        runnable_ns,
    })
}

/// Parses the steal column (the 8th number) of `/proc/stat`'s first line, in clock ticks.
pub(crate) fn parse_steal_ticks(text: &str) -> Option<u64> {
    let line = text.lines().next()?;
    let mut fields = line.split_ascii_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    fields.nth(7)?.parse().ok()
}

/// Reads a procfs file from its start through a descriptor opened once (no open per check).
fn read_proc(file: &File) -> Option<String> {
    let mut buf = [0u8; PROC_READ_BYTES_MAX];
    let len = file.read_at(&mut buf, 0).ok()?;
    String::from_utf8(buf[..len].to_vec()).ok()
}

struct Counters {
    sched: Option<File>,
    stat: Option<File>,
    ticks_per_s: u64,
}

impl Counters {
    /// Opened on the core's own thread, so `thread-self` names it.
    fn open() -> Self {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Counters {
            sched: File::open("/proc/thread-self/schedstat").ok(),
            stat: File::open("/proc/stat").ok(),
            ticks_per_s: u64::try_from(ticks).unwrap_or(100).max(1),
        }
    }

    fn sample(&self) -> (Option<ThreadSched>, Option<u64>) {
        let sched = self.sched.as_ref().and_then(read_proc);
        let steal = self.stat.as_ref().and_then(read_proc);
        (
            sched.as_deref().and_then(parse_schedstat),
            steal.as_deref().and_then(parse_steal_ticks),
        )
    }
}

pub(crate) async fn stall_watch_loop(core: usize) {
    let period = Duration::from_millis(CORE_STALL_CHECK_INTERVAL_MS);
    let counters = Counters::open();
    loop {
        let slept_at = Instant::now();
        let (sched_before, steal_before) = counters.sample();
        glommio::timer::sleep(period).await;
        let elapsed = slept_at.elapsed();
        let late_ms = elapsed.saturating_sub(period).as_millis();
        if late_ms < u128::from(CORE_STALL_WARN_MS) {
            continue;
        }
        let (sched_after, steal_after) = counters.sample();
        let (on_cpu_ms, runnable_ms) = match (sched_before, sched_after) {
            (Some(a), Some(b)) => (
                b.on_cpu_ns.saturating_sub(a.on_cpu_ns) / 1_000_000,
                b.runnable_ns.saturating_sub(a.runnable_ns) / 1_000_000,
            ),
            _ => (0, 0),
        };
        let interval_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let off_cpu_ms = interval_ms.saturating_sub(on_cpu_ms + runnable_ms);
        let steal_ms = match (steal_before, steal_after) {
            (Some(a), Some(b)) => b.saturating_sub(a) * 1000 / counters.ticks_per_s,
            _ => 0,
        };
        tracing::warn!(
            core,
            late_ms,
            interval_ms,
            on_cpu_ms,
            runnable_ms,
            off_cpu_ms,
            steal_ms,
            "core event loop ran late"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_and_steal_parse_and_bad_input_is_none() {
        assert_eq!(
            parse_schedstat("123456 789 42\n"),
            Some(ThreadSched {
                on_cpu_ns: 123456,
                runnable_ns: 789
            })
        );
        assert_eq!(parse_schedstat("12x 3 4"), None);
        assert_eq!(parse_schedstat(""), None);
        let stat = "cpu  10 0 20 3000 40 0 5 77 0 0\ncpu0 5 0 10 1500 20 0 2 40 0 0\n";
        assert_eq!(parse_steal_ticks(stat), Some(77));
        assert_eq!(parse_steal_ticks("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(parse_steal_ticks("cpu 1 2 3\n"), None);
    }

    #[test]
    fn this_threads_counters_are_readable_and_grow_with_work() {
        let counters = Counters::open();
        let (before, steal) = counters.sample();
        let before = before.expect("schedstat of this thread");
        assert!(steal.is_some(), "steal column of /proc/stat");
        let spin_until = Instant::now() + Duration::from_millis(20);
        let mut spins = 0u64;
        while Instant::now() < spin_until {
            spins = std::hint::black_box(spins + 1);
        }
        let after = counters.sample().0.expect("schedstat of this thread");
        assert!(
            after.on_cpu_ns > before.on_cpu_ns,
            "{before:?} -> {after:?}"
        );
    }
}
