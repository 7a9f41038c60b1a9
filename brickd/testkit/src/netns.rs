//! Network partitions between real processes: every host (a brickd node, etcd, a client) in
//! its own network namespace, all joined by veth pairs to a bridge in one more namespace, on
//! private addresses (10.77.0.0/24) that exist only inside these namespaces. A link between
//! two hosts is cut by nftables rules in the first host's namespace that drop every packet
//! to and from the other (silently, as a partition does: TCP waits, nothing is refused).
//! Everything is removed when the `Net` is dropped (processes first: drop them before it).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// The hosts' subnet (a /24 in the namespaces only).
const SUBNET: &str = "10.77.0";
/// Hosts at most (one address each, .1 up).
const HOSTS_MAX: usize = 200;

/// One namespace and its address.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: String,
}

pub struct Net {
    hub: String,
    pub hosts: Vec<Host>,
    /// Cut pairs (indexes into `hosts`, smaller first).
    cuts: BTreeSet<(usize, usize)>,
}

/// Runs `ip ARGS`, panicking with its error output if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether this machine can run the partition tests (root, `ip`, `nft`, namespaces).
pub fn available() -> Result<(), String> {
    for tool in ["ip", "nft"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Err(format!(
                "{tool} is missing (Debian: iproute2, nftables; .ci/run installs them)"
            ));
        }
    }
    if unsafe { libc::geteuid() } != 0 {
        return Err("network namespaces need root".into());
    }
    Ok(())
}

/// Makes `cmd` run in the network namespace `ns` (a name under /run/netns).
pub fn run_in(cmd: &mut Command, ns: &str) {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // The namespace's file stays open in the parent while the command is alive.
    let fd = file.as_raw_fd();
    let keep = std::sync::Arc::new(file);
    unsafe {
        cmd.pre_exec(move || {
            let _held = &keep;
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Net {
    /// Creates the namespaces of `names` (and the hub), joined by one bridge.
    pub fn create(names: &[&str]) -> Net {
        assert!(names.len() <= HOSTS_MAX, "too many hosts");
        static NETS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("bk{}x{n}", std::process::id());
        let hub = format!("{prefix}-hub");
        let mut net = Net {
            hub: hub.clone(),
            hosts: Vec::new(),
            cuts: BTreeSet::new(),
        };
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{prefix}-{name}");
            ip(&["netns", "add", &ns]);
            net.hosts.push(Host {
                name: name.to_string(),
                ns: ns.clone(),
                ip: format!("{SUBNET}.{}", i + 1),
            });
            let hub_end = format!("h{i}");
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n", &hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&["-n", &hub, "link", "set", &hub_end, "master", "br0", "up"]);
            let addr = format!("{SUBNET}.{}/24", i + 1);
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        net
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    fn index(&self, name: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// A command that runs in `host`'s namespace (its PID is the program's: stop it by PID).
    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        run_in(&mut cmd, &self.host(host).ns);
        cmd
    }

    /// Moves the calling thread into `host`'s namespace: sockets it (and the threads it starts
    /// from now on, a tokio runtime's workers too) opens are there.
    pub fn enter(&self, host: &str) {
        let path = format!("/run/netns/{}", self.host(host).ns);
        let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
    }

    /// Cuts the link between `a` and `b` (both directions; packets are dropped).
    pub fn cut(&mut self, a: &str, b: &str) {
        let (i, j) = (self.index(a), self.index(b));
        assert_ne!(i, j);
        self.cuts.insert((i.min(j), i.max(j)));
        self.apply(i);
        self.apply(j);
    }

    /// Restores the link between `a` and `b`.
    pub fn restore(&mut self, a: &str, b: &str) {
        let (i, j) = (self.index(a), self.index(b));
        self.cuts.remove(&(i.min(j), i.max(j)));
        self.apply(i);
        self.apply(j);
    }

    /// Cuts `host` from every host in `others`.
    pub fn isolate(&mut self, host: &str, others: &[&str]) {
        for o in others {
            self.cut(host, o);
        }
    }

    /// Restores every link.
    pub fn restore_all(&mut self) {
        let touched: BTreeSet<usize> = self.cuts.iter().flat_map(|&(i, j)| [i, j]).collect();
        self.cuts.clear();
        for i in touched {
            self.apply(i);
        }
    }

    /// Rewrites host `i`'s rules from `cuts`.
    fn apply(&self, i: usize) {
        let peers: Vec<&str> = self
            .cuts
            .iter()
            .filter_map(|&(a, b)| match (a == i, b == i) {
                (true, _) => Some(self.hosts[b].ip.as_str()),
                (_, true) => Some(self.hosts[a].ip.as_str()),
                _ => None,
            })
            .collect();
        let mut rules = String::from("table inet brickcut\ndelete table inet brickcut\n");
        rules.push_str("table inet brickcut {\n");
        for (chain, hook, dir) in [("input", "input", "saddr"), ("output", "output", "daddr")] {
            rules.push_str(&format!(
                "  chain {chain} {{ type filter hook {hook} priority 0; policy accept;\n"
            ));
            for p in &peers {
                rules.push_str(&format!("    ip {dir} {p} drop\n"));
            }
            rules.push_str("  }\n");
        }
        rules.push_str("}\n");
        let mut child = self
            .command(&self.hosts[i].name, "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft (nftables)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .expect("nft rules");
        let out = child.wait_with_output().expect("nft");
        assert!(
            out.status.success(),
            "nft in {}: {}\n{rules}",
            self.hosts[i].ns,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub])
            .status();
    }
}
