//! A brick on `brick-faultfs` (src/bin/brick-faultfs.rs): a FUSE passthrough that fails chosen
//! operations with an errno and, on a power cut, forgets every write no fsync made durable.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the mount may take to appear, and `exit` to unmount.
const FAULTFS_WAIT: Duration = Duration::from_secs(10);

/// A mounted `brick-faultfs`; unmounted (and its process stopped by PID) when dropped.
pub struct FaultFs {
    child: Option<Child>,
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    socket: PathBuf,
}

/// `brick-faultfs` beside the running test binary's directory (target/<profile>/).
pub fn faultfs_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join("brick-faultfs");
    assert!(
        p.exists(),
        "{} not built (cargo test --workspace builds it)",
        p.display()
    );
    p
}

fn is_mounted(mountpoint: &Path) -> bool {
    let target = mountpoint.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(target.as_str()))
}

impl FaultFs {
    /// Mounts `backing` (created if missing) at `mountpoint` (created if missing).
    pub fn mount(backing: &Path, mountpoint: &Path) -> FaultFs {
        std::fs::create_dir_all(backing).expect("backing dir");
        std::fs::create_dir_all(mountpoint).expect("mountpoint");
        // /proc/self/mounts names the mount by its canonical path.
        let mountpoint = &std::fs::canonicalize(mountpoint).expect("canonical mountpoint");
        // A Unix socket's path is limited to 107 bytes: this one is short.
        static SOCKETS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SOCKETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket =
            std::env::temp_dir().join(format!("brick-faultfs-{}-{n}.sock", std::process::id()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(backing.with_extension("faultfs.log"))
            .expect("faultfs log");
        let child = Command::new(faultfs_exe())
            .arg(backing)
            .arg(mountpoint)
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn brick-faultfs");
        let mut fs = FaultFs {
            child: Some(child),
            backing: backing.to_path_buf(),
            mountpoint: mountpoint.to_path_buf(),
            socket,
        };
        let deadline = Instant::now() + FAULTFS_WAIT;
        while !(is_mounted(mountpoint) && UnixStream::connect(&fs.socket).is_ok()) {
            if let Some(status) = fs.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                fs.child = None;
                panic!("brick-faultfs exited during start ({status})");
            }
            assert!(
                Instant::now() < deadline,
                "brick-faultfs did not mount {}",
                mountpoint.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        fs
    }

    /// Sends one control line; returns the answer after "ok " (panics on an "err" answer).
    pub fn command(&self, line: &str) -> String {
        let mut s = UnixStream::connect(&self.socket).expect("faultfs control socket");
        s.set_read_timeout(Some(FAULTFS_WAIT)).expect("timeout");
        writeln!(s, "{line}").expect("faultfs command");
        let mut answer = String::new();
        BufReader::new(s)
            .read_line(&mut answer)
            .expect("faultfs answer");
        let answer = answer.trim();
        match answer.strip_prefix("ok") {
            Some(rest) => rest.trim().to_string(),
            None => panic!("brick-faultfs refused {line:?}: {answer}"),
        }
    }

    /// `op` on paths containing `path_part` (`*`: all) fails with `errno` (`EIO`, `ENOSPC`...).
    pub fn fail(&self, op: &str, path_part: &str, errno: &str) {
        self.command(&format!("fail {op} {path_part} {errno}"));
    }

    pub fn clear(&self) {
        self.command("clear");
    }

    /// The power cut: unsynced writes are undone. Returns the bytes forgotten.
    pub fn cut(&self) -> u64 {
        let answer = self.command("cut");
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected cut answer {answer:?}"))
    }

    /// A counter of `stats` (`writes`, `synced`, `unsynced_bytes`, `injected`).
    pub fn stat(&self, name: &str) -> u64 {
        let answer = self.command("stats");
        answer
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {answer:?}"))
    }

    /// Unmounts and stops the process (by PID if it does not exit).
    pub fn unmount(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = UnixStream::connect(&self.socket).and_then(|mut s| writeln!(s, "exit"));
        let deadline = Instant::now() + FAULTFS_WAIT;
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Unmounts and mounts the same backing directory again (a machine back from a power cut).
    pub fn remount(&mut self) {
        self.unmount();
        *self = FaultFs::mount(&self.backing.clone(), &self.mountpoint.clone());
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        self.unmount();
    }
}
