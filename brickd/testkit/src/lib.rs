//! Real `brickd dev` processes for tests: loopback only, a fresh directory each, stopped by
//! PID when the test ends (also when it fails, through Drop).

use brick_client::ClientConfig;

pub mod failover;
pub mod faultfs;
pub mod history;
pub mod netns;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Ports tried before giving up when a parallel test takes the one picked.
const PORT_ATTEMPTS: usize = 5;

/// How long a starting daemon may take to write its endpoints file.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct DevServer {
    brickd: PathBuf,
    child: Option<Child>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub addr: String,
    pub cores: usize,
    /// More arguments of `brickd dev` (first start only, e.g. `--replica 1`).
    extra: Vec<String>,
}

/// A loopback port that was free a moment ago.
/// Waits until `ready()`; `Err(log)` if the process exits first (the caller may retry on
/// another port), a panic if it neither exits nor gets ready within START_TIMEOUT.
fn wait_started(
    child: &mut Option<Child>,
    what: &str,
    log_path: &Path,
    ready: impl Fn() -> bool,
) -> Result<(), String> {
    let log = || read_log(log_path);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            *child = None;
            return Err(format!("exit status {status}\n{}", log()));
        }
        if ready() {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not start; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

impl DevServer {
    /// Starts `brickd dev` in a new temporary directory.
    pub fn start(brickd: &Path, cores: usize) -> DevServer {
        DevServer::start_with(brickd, cores, &[])
    }

    /// Starts `brickd dev` with more arguments (`--replica 1`...).
    pub fn start_with(brickd: &Path, cores: usize, extra: &[&str]) -> DevServer {
        let tmp = tempfile::Builder::new()
            .prefix("brickd-test")
            .tempdir_in(scratch_root())
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut s = DevServer {
            brickd: brickd.to_path_buf(),
            child: None,
            dir,
            _tmp: Some(tmp),
            addr: format!("127.0.0.1:{}", free_port()),
            cores,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        // The port was free a moment ago; a test running in parallel may have taken it since.
        for _ in 0..PORT_ATTEMPTS {
            match s.try_spawn() {
                Ok(()) => return s,
                Err(log) if log.contains("Address already in use") => {
                    s.addr = format!("127.0.0.1:{}", free_port());
                }
                Err(log) => panic!("brickd exited during start; log:\n{log}"),
            }
        }
        panic!("no free loopback port after {PORT_ATTEMPTS} attempts");
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("brickd exited during start; log:\n{log}");
        }
    }

    /// Starts brickd and waits for its endpoints file; `Err(log)` if it exited instead.
    fn try_spawn(&mut self) -> Result<(), String> {
        let _ = std::fs::remove_file(self.endpoints_path());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("brickd.log"))
            .expect("log file");
        let child = Command::new(&self.brickd)
            .args(["dev", "--dir"])
            .arg(&self.dir)
            .args(["--listen", &self.addr, "--cores", &self.cores.to_string()])
            .args(["--cpus", &spread_cpus(self.cores)])
            .args(["--nbd-listen", "127.0.0.1:0"])
            .args(["--nfs-listen", "127.0.0.1:0"])
            .args(["--smb-listen", "127.0.0.1:0"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn brickd");
        self.child = Some(child);
        let endpoints = self.endpoints_path();
        let log_path = self.dir.join("brickd.log");
        wait_started(&mut self.child, "brickd dev", &log_path, || {
            endpoints.exists()
        })
    }

    pub fn endpoints_path(&self) -> PathBuf {
        self.dir.join("endpoints.json")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("brickd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn password(&self) -> String {
        let text = std::fs::read_to_string(self.endpoints_path()).expect("endpoints.json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("endpoints.json is JSON");
        v["password"].as_str().expect("password").to_string()
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            servers: vec![self.addr.clone()],
            user: "dev".into(),
            password: self.password(),
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: every core of the cluster hangs with its sockets open (a paused VM).
    pub fn freeze(&self) {
        signal_child(self.child.as_ref(), libc::SIGSTOP);
    }

    /// SIGCONT after `freeze`.
    pub fn thaw(&self) {
        signal_child(self.child.as_ref(), libc::SIGCONT);
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("server is running");
        signal_child(Some(&c), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("brickd did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts again on the same directory and address (after kill9 or terminate).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        self.spawn();
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        self.kill9();
        report_core_stalls(&self.log());
        if std::thread::panicking() {
            let log = self.log();
            // The tail is what matters; a whole log of a long test would bury the panic.
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("brickd dev log (last 60 lines):\n{tail}");
        }
    }
}

/// Sends `sig` to a child this process started and has not reaped (none: nothing to signal).
fn signal_child(child: Option<&Child>, sig: i32) {
    if let Some(c) = child {
        // SAFETY: kill(2) on the PID of our own child, not yet reaped, so not reused.
        unsafe { libc::kill(c.id() as i32, sig) };
    }
}

/// The `--cpus` list for the next brickd of this test process: its `cores` cores on the next
/// CPUs of this machine, round robin. brickd pins core i to CPU i by default, which on one
/// machine puts every node of a test cluster, and the servers of tests running in parallel, on
/// CPU 0 while the others idle; on 2 CPUs that made cores wait hundreds of milliseconds to run.
pub fn spread_cpus(cores: usize) -> String {
    static NEXT_CPU: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let first = NEXT_CPU.fetch_add(cores, std::sync::atomic::Ordering::Relaxed);
    let list: Vec<String> = (0..cores)
        .map(|i| ((first + i) % cpus).to_string())
        .collect();
    list.join(",")
}

/// Test data lives on the same filesystem as the build (a real disk with O_DIRECT), not /tmp,
/// which may be tmpfs.
pub fn scratch_root() -> PathBuf {
    let root = std::env::var_os("BRICK_TEST_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-scratch")
        });
    std::fs::create_dir_all(&root).expect("scratch dir");
    root
}

/// Deterministic bytes for (seed, offset): what a test wrote can be recomputed to check it.
pub fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let skip = (offset % 8) as usize;
    let mut out = Vec::with_capacity(len + skip);
    let mut word = offset / 8;
    while out.len() < len + skip {
        let mut x =
            (seed ^ word.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_add(0x632B_E59B_D9B4_E019);
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 29;
        out.extend_from_slice(&x.to_le_bytes());
        word += 1;
    }
    out.drain(..skip);
    out.truncate(len);
    out
}

/// A real etcd (Debian's etcd-server) on loopback ports, with its data in a scratch directory;
/// killed by PID when dropped. Election timings are shortened so that 1-2 s leases work.
pub struct Etcd {
    child: Option<Child>,
    pub endpoint: String,
    _tmp: tempfile::TempDir,
    /// The member's command line (`restart` runs it again on the same data).
    args: Vec<String>,
    /// The network namespace it runs in (`start_in`).
    netns: Option<String>,
}

impl Etcd {
    pub fn start() -> Etcd {
        let tmp = tempfile::Builder::new()
            .prefix("etcd-test")
            .tempdir_in(scratch_root())
            .expect("tempdir");
        for _ in 0..PORT_ATTEMPTS {
            let (client, peer) = (free_port(), free_port());
            let endpoint = format!("127.0.0.1:{client}");
            let log = std::fs::File::create(tmp.path().join("etcd.log")).expect("log");
            let initial = format!("test=http://127.0.0.1:{peer}");
            let spawned = Command::new("etcd")
                .args(etcd_args(
                    "test",
                    &tmp.path().join("data"),
                    &endpoint,
                    peer,
                    &initial,
                ))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn();
            let mut child = match spawned {
                Ok(c) => c,
                Err(e) => {
                    panic!("cannot run etcd ({e}): install Debian's etcd-server (.ci/run does)")
                }
            };
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken: try others
                }
                if etcd_answers(&endpoint) {
                    return Etcd {
                        child: Some(child),
                        endpoint,
                        _tmp: tmp,
                        args: Vec::new(),
                        netns: None,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "etcd did not answer on {endpoint}; log:\n{}",
                        std::fs::read_to_string(tmp.path().join("etcd.log")).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("etcd did not start after {PORT_ATTEMPTS} attempts");
    }

    pub fn store_url(&self) -> String {
        format!("etcd://{}", self.endpoint)
    }

    /// `members` etcd processes forming one cluster on loopback ports, each with its own data;
    /// returns once every member answers (a leader is elected).
    pub fn start_cluster(members: usize) -> Vec<Etcd> {
        let ports: Vec<(u16, u16)> = (0..members).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut cluster: Vec<Etcd> = ports
            .iter()
            .enumerate()
            .map(|(i, &(client, peer))| {
                let tmp = tempfile::Builder::new()
                    .prefix("etcd-test")
                    .tempdir_in(scratch_root())
                    .expect("tempdir");
                let endpoint = format!("127.0.0.1:{client}");
                let data = tmp.path().join("data");
                let args = etcd_args(&format!("m{i}"), &data, &endpoint, peer, &initial.join(","));
                Etcd {
                    child: None,
                    endpoint,
                    _tmp: tmp,
                    args,
                    netns: None,
                }
            })
            .collect();
        for member in &mut cluster {
            member.spawn();
        }
        for member in &cluster {
            member.wait_answers();
        }
        cluster
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self._tmp.path().join("etcd.log"))
            .expect("log");
        let mut cmd = Command::new("etcd");
        if let Some(ns) = &self.netns {
            netns::run_in(&mut cmd, ns);
        }
        let child = cmd
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run etcd ({e}): install Debian's etcd-server (.ci/run does)")
            });
        self.child = Some(child);
    }

    /// One etcd in `host`'s network namespace (`netns::Net`), on its address. The calling
    /// thread must be in a namespace that reaches it (it waits until it answers).
    pub fn start_in(net: &netns::Net, host: &str) -> Etcd {
        let h = net.host(host);
        let tmp = tempfile::Builder::new()
            .prefix("etcd-test")
            .tempdir_in(scratch_root())
            .expect("tempdir");
        let endpoint = format!("{}:2379", h.ip);
        let initial = format!("{host}=http://{}:2380", h.ip);
        let data = tmp.path().join("data");
        let mut args = etcd_args(host, &data, &endpoint, 2380, &initial);
        for a in args.iter_mut() {
            *a = a.replace("127.0.0.1", &h.ip);
        }
        let mut e = Etcd {
            child: None,
            endpoint,
            _tmp: tmp,
            args,
            netns: Some(h.ns.clone()),
        };
        e.spawn();
        e.wait_answers();
        e
    }

    /// Waits until this member answers as healthy (part of a cluster with a leader).
    pub fn wait_answers(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !etcd_answers(&self.endpoint) {
            assert!(
                Instant::now() < deadline,
                "etcd did not answer on {}; log:\n{}",
                self.endpoint,
                std::fs::read_to_string(self._tmp.path().join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL (a member of `start_cluster` can be started again with `restart`).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a member of `start_cluster` again on its data (returns at once: it answers once
    /// its cluster has a quorum again).
    pub fn restart(&mut self) {
        assert!(
            !self.args.is_empty(),
            "only members of start_cluster restart"
        );
        assert!(self.child.is_none(), "kill the member first");
        self.spawn();
    }

    /// The store URL brickd takes for these members.
    pub fn cluster_url(members: &[Etcd]) -> String {
        let eps: Vec<&str> = members.iter().map(|m| m.endpoint.as_str()).collect();
        format!("etcd://{}", eps.join(","))
    }

    /// SIGSTOP: etcd hangs with its sockets open (an overloaded or partitioned store).
    pub fn freeze(&self) {
        signal_child(self.child.as_ref(), libc::SIGSTOP);
    }

    /// SIGCONT after `freeze`.
    pub fn thaw(&self) {
        signal_child(self.child.as_ref(), libc::SIGCONT);
    }
}

/// One etcd member's command line: clients on `endpoint`, peers on `peer`, in the cluster
/// `initial` (NAME=URL,...), with election timings short enough for 1-2 s leases.
fn etcd_args(name: &str, data: &Path, endpoint: &str, peer: u16, initial: &str) -> Vec<String> {
    let peer_url = format!("http://127.0.0.1:{peer}");
    [
        "--name",
        name,
        "--data-dir",
        &data.display().to_string(),
        "--listen-client-urls",
        &format!("http://{endpoint}"),
        "--advertise-client-urls",
        &format!("http://{endpoint}"),
        "--listen-peer-urls",
        &peer_url,
        "--initial-advertise-peer-urls",
        &peer_url,
        "--initial-cluster",
        initial,
        "--heartbeat-interval",
        "50",
        "--election-timeout",
        "500",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

fn etcd_answers(endpoint: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(endpoint) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /health HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One `brickd serve` node of a multi-node cluster; killed by PID when dropped.
pub struct ServeNode {
    brickd: PathBuf,
    child: Option<Child>,
    pub name: String,
    pub addr: String,
    pub dir: PathBuf,
    store: String,
    password: String,
    extra_args: Vec<String>,
    /// The network namespace it runs in (`start_in`).
    netns: Option<String>,
}

impl ServeNode {
    /// Starts node `name` with its bricks under `dir/<name>/`; waits until it serves.
    pub fn start(brickd: &Path, name: &str, dir: &Path, store: &str, password: &str) -> ServeNode {
        ServeNode::start_with(brickd, name, dir, store, password, &[])
    }

    /// `start` with more `brickd serve` arguments (hosted gateways, say).
    pub fn start_with(
        brickd: &Path,
        name: &str,
        dir: &Path,
        store: &str,
        password: &str,
        extra_args: &[String],
    ) -> ServeNode {
        let mut n = ServeNode {
            brickd: brickd.to_path_buf(),
            child: None,
            name: name.to_string(),
            addr: String::new(),
            dir: dir.join(name),
            store: store.to_string(),
            password: password.to_string(),
            extra_args: extra_args.to_vec(),
            netns: None,
        };
        std::fs::create_dir_all(&n.dir).expect("node dir");
        for _ in 0..PORT_ATTEMPTS {
            n.addr = format!("127.0.0.1:{}", free_port());
            match n.try_spawn() {
                Ok(()) => return n,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("brickd serve {name} exited during start; log:\n{log}"),
            }
        }
        panic!("no free loopback port after {PORT_ATTEMPTS} attempts");
    }

    /// Starts node `name` in network namespace `ns`, listening on `addr` (an address of that
    /// namespace); waits until it serves.
    pub fn start_in(
        brickd: &Path,
        (name, dir): (&str, &Path),
        (store, password): (&str, &str),
        ns: &str,
        addr: &str,
    ) -> ServeNode {
        let mut n = ServeNode {
            brickd: brickd.to_path_buf(),
            child: None,
            name: name.to_string(),
            addr: addr.to_string(),
            dir: dir.join(name),
            store: store.to_string(),
            password: password.to_string(),
            extra_args: Vec::new(),
            netns: Some(ns.to_string()),
        };
        std::fs::create_dir_all(&n.dir).expect("node dir");
        if let Err(log) = n.try_spawn() {
            panic!("brickd serve {name} exited during start; log:\n{log}");
        }
        n
    }

    /// Starts `brickd serve` with its output appended to the node's log; returns the log's path.
    fn spawn_child(&mut self) -> PathBuf {
        let log_path = self.dir.join("brickd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let mut cmd = Command::new(&self.brickd);
        if let Some(ns) = &self.netns {
            netns::run_in(&mut cmd, ns);
            // The partition tests read from the logs who was primary of which PG in which epoch.
            if std::env::var_os("BRICKD_LOG").is_none() {
                cmd.env("BRICKD_LOG", "info,brickd::primary=debug");
            }
        }
        let child = cmd
            .args(["serve", "--node", &self.name, "--listen", &self.addr])
            .args(["--store", &self.store, "--cores", "1"])
            .args(["--cpus", &spread_cpus(1)])
            .args(&self.extra_args)
            .env("BRICKD_ADMIN_PASSWORD", &self.password)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn brickd serve");
        self.child = Some(child);
        log_path
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        let started_before = self.log().matches("serving on").count();
        let log_path = self.spawn_child();
        wait_started(&mut self.child, "brickd serve", &log_path, || {
            read_log(&log_path).matches("serving on").count() > started_before
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("brickd.log")).unwrap_or_default()
    }

    pub fn brick_dir(&self, brick: &str) -> PathBuf {
        self.dir.join(brick)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the process hangs with its sockets open (what a stuck disk or VM looks like).
    pub fn freeze(&self) {
        signal_child(self.child.as_ref(), libc::SIGSTOP);
    }

    /// SIGCONT after `freeze`.
    pub fn thaw(&self) {
        signal_child(self.child.as_ref(), libc::SIGCONT);
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node first");
        if let Err(log) = self.try_spawn() {
            panic!("brickd serve {} did not restart; log:\n{log}", self.name);
        }
    }

    /// Restarts the node without waiting for it to serve: returns once it has logged `needle`
    /// (after this restart). `wait_serving` then waits for it to serve.
    pub fn restart_until_logged(&mut self, needle: &str) -> usize {
        assert!(self.child.is_none(), "stop the node first");
        let serving_before = self.log().matches("serving on").count();
        let seen_before = self.log().matches(needle).count();
        let log_path = self.spawn_child();
        let logged = wait_started(&mut self.child, "brickd serve", &log_path, || {
            read_log(&log_path).matches(needle).count() > seen_before
        });
        if let Err(log) = logged {
            panic!(
                "brickd serve {} never logged {needle:?}; log:\n{log}",
                self.name
            );
        }
        serving_before
    }

    /// Waits until the node serves (it logged "serving on" more than `before` times).
    pub fn wait_serving(&mut self, before: usize) {
        let log_path = self.dir.join("brickd.log");
        let served = wait_started(&mut self.child, "brickd serve", &log_path, || {
            read_log(&log_path).matches("serving on").count() > before
        });
        if let Err(log) = served {
            panic!("brickd serve {} did not serve; log:\n{log}", self.name);
        }
    }
}

impl Drop for ServeNode {
    fn drop(&mut self) {
        self.kill9();
        report_core_stalls(&self.log());
    }
}

/// Appends brickd's "event loop ran late" warnings to `core-stalls.log` in the scratch root,
/// named by test, so that a run (CI prints the file) shows which tests blocked a core and for
/// how long, also when they passed.
fn report_core_stalls(log: &str) {
    let stalls: Vec<&str> = log.lines().filter(|l| l.contains("ran late")).collect();
    if stalls.is_empty() {
        return;
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let text: String = stalls.iter().map(|l| format!("{test}: {l}\n")).collect();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(scratch_root().join("core-stalls.log"));
    if let Ok(mut f) = file {
        let _ = f.write_all(text.as_bytes());
    }
}

/// With `BRICK_KEEP_SCRATCH` set, keeps `tmp` (logs and bricks, for a post-mortem) by putting
/// an unused directory in its place; call it while dropping the processes that used it.
pub fn keep_scratch_if_asked(tmp: &mut tempfile::TempDir) {
    if std::env::var_os("BRICK_KEEP_SCRATCH").is_none() {
        return;
    }
    let unused = tempfile::Builder::new()
        .prefix("unused")
        .tempdir_in(scratch_root())
        .expect("tempdir");
    let _ = std::mem::replace(tmp, unused).keep();
}

/// A current-thread tokio runtime for a test's native-client calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Fails the test unless `tool` is on PATH; `install_hint` says where it comes from.
pub fn need_tool(tool: &str, install_hint: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "{tool} is not installed ({install_hint})");
}

/// Runs an external tool (a real client: nbdcopy, qemu-img, fio, ...) and returns its
/// stdout; fails the test with its output when it fails.
pub fn run_tool(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tool");
    stdout_of_success(cmd, out)
}

/// `run_tool` with `stdin` fed to the command (passwords, say).
pub fn run_tool_with_stdin(cmd: &mut Command, stdin: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tool");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("tool stdin");
    }
    let out = child.wait_with_output().expect("run tool");
    stdout_of_success(cmd, out)
}

/// A tool's stdout; fails the test with its output when it failed.
fn stdout_of_success(cmd: &Command, out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for a child process this test started to exit; fails the test after `limit`.
pub fn wait_exit(child: &mut Child, what: &str, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "{what} did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `len` bytes of `pattern(seed, ..)` to a local file, 8 MiB at a time.
pub fn write_pattern_file(path: &Path, seed: u64, len: u64) {
    let mut f = std::fs::File::create(path).expect("create local file");
    for off in (0..len).step_by(8 << 20) {
        f.write_all(&pattern(seed, off, (8u64 << 20).min(len - off) as usize))
            .expect("write local file");
    }
}

/// Fails unless the local file holds exactly `len` bytes of `pattern(seed, ..)`.
pub fn assert_pattern_file(path: &Path, seed: u64, len: u64) {
    let mut f = std::fs::File::open(path).expect("open local file");
    assert_eq!(f.metadata().expect("stat").len(), len, "{}", path.display());
    let mut buf = vec![0u8; 8 << 20];
    for off in (0..len).step_by(8 << 20) {
        let n = (8u64 << 20).min(len - off) as usize;
        f.read_exact(&mut buf[..n]).expect("read local file");
        assert!(
            buf[..n] == pattern(seed, off, n)[..],
            "{} differs in the 8 MiB at {off}",
            path.display()
        );
    }
}

/// Waits until `path` in `vol` holds at least 16 MiB of a `len`-byte upload that `what` is
/// making, so a gateway can be killed in its middle; fails if the upload makes no progress in
/// 60 s or is already complete.
pub fn wait_until_partly_written(
    rt: &tokio::runtime::Runtime,
    vol: &brick_client::Volume,
    path: &str,
    len: u64,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let size = rt.block_on(vol.resolve(path)).map(|a| a.size).unwrap_or(0);
        if size >= 16 << 20 {
            assert!(
                size < len,
                "{what} finished before the kill: make it larger"
            );
            return;
        }
        assert!(Instant::now() < deadline, "{what} made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
}
