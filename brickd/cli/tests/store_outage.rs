//! The cluster store away, on real processes: a real etcd and two `brickd serve` nodes on
//! loopback, etcd frozen with SIGSTOP (it keeps its sockets open and answers nothing, as an
//! overloaded or cut-off store does). New `brick` processes list, stat, read and write files
//! of a started volume, and a new client connects and does I/O: none of that needs the store.
//! A change that does (a volume option) fails naming the store, and succeeds once it is back.
//! A node restarted while the store is away says that it waits for it, and serves once it
//! answers.

use brick_client::Client;
use brick_cluster::mgmt::VolumeConfig;
use brick_testkit::failover::{create_volume, LocalCluster};
use brick_testkit::pattern;
use brick_wire::ROOT_FILE_ID;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PASSWORD: &str = "store-outage-password";
const VOLUME: &str = "so";

fn brick_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_brick"))
}

fn brickd_exe() -> PathBuf {
    let p = brick_exe().with_file_name("brickd");
    assert!(p.exists(), "{} not built", p.display());
    p
}

/// `brick ARGS` as the admin against every node; returns its output and how long it took.
fn brick(cluster: &LocalCluster, args: &[&str]) -> (Output, Duration) {
    brick_on(&cluster.admin.servers.join(","), args)
}

/// `brick ARGS` as the admin against `servers` (comma-separated).
fn brick_on(servers: &str, args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(brick_exe())
        .args(["--servers", servers])
        .args(["--user", "admin", "--password", PASSWORD, "--quiet"])
        .args(args)
        .output()
        .expect("run brick");
    (out, started.elapsed())
}

/// `brick ARGS`, which must succeed; returns its stdout.
fn brick_ok(cluster: &LocalCluster, args: &[&str]) -> String {
    brick_ok_on(&cluster.admin.servers.join(","), args)
}

/// `brick_on`, which must succeed; returns its stdout.
fn brick_ok_on(servers: &str, args: &[&str]) -> String {
    let (out, took) = brick_on(servers, args);
    assert!(
        out.status.success(),
        "brick {args:?} failed after {took:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("brick {args:?}: {} ms", took.as_millis());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn data_io_and_new_clients_go_on_while_the_cluster_store_is_frozen() {
    let mut cluster = LocalCluster::start(&brickd_exe(), "store-outage", &["n1", "n2"], PASSWORD);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let scratch = tempfile::tempdir().expect("tempdir");
    let kept = pattern(7, 0, 300_000);
    rt.block_on(async {
        let client = Client::connect(cluster.admin.clone())
            .await
            .expect("connect");
        let vol = create_volume(&client, &cluster.nodes, VOLUME, 2).await;
        let f = vol
            .create(ROOT_FILE_ID, "kept.bin", 0o644, true)
            .await
            .expect("create");
        vol.write(f.fid, 0, &kept, false).await.expect("write");
        vol.fsync(f.fid).await.expect("fsync");
    });

    cluster.etcd[0].freeze();
    let frozen_at = Instant::now();

    // New CLI processes: each connects, opens the volume and does its I/O.
    let listing = brick_ok(&cluster, &["ls", "so/"]);
    assert!(listing.contains("kept.bin"), "ls: {listing}");
    let stat: serde_json::Value =
        serde_json::from_str(brick_ok(&cluster, &["--json", "stat", "so/kept.bin"]).trim())
            .expect("stat --json");
    assert_eq!(
        stat["size"].as_u64(),
        Some(kept.len() as u64),
        "stat: {stat}"
    );
    let back = scratch.path().join("back.bin");
    brick_ok(
        &cluster,
        &["get", "so/kept.bin", back.to_str().expect("utf-8")],
    );
    assert_eq!(std::fs::read(&back).expect("read back"), kept);
    let local = scratch.path().join("new.bin");
    let new_data = pattern(8, 0, 200_000);
    std::fs::write(&local, &new_data).expect("write local");
    brick_ok(
        &cluster,
        &["put", local.to_str().expect("utf-8"), "so/new.bin"],
    );

    // A new client library connection (what QEMU, NBD and FUSE reconnects do).
    rt.block_on(async {
        let client = Client::connect(cluster.admin.clone())
            .await
            .expect("connect");
        let vol = client.open_volume(VOLUME).await.expect("open while frozen");
        let f = vol.lookup(ROOT_FILE_ID, "new.bin").await.expect("lookup");
        let read = vol
            .read(f.fid, 0, new_data.len() as u32)
            .await
            .expect("read");
        assert_eq!(read, new_data);
        let g = vol
            .create(ROOT_FILE_ID, "during.bin", 0o644, true)
            .await
            .expect("create while frozen");
        vol.write(g.fid, 0, b"written while etcd was frozen", false)
            .await
            .expect("write while frozen");
    });

    // A change needs the store: it fails, and says which store.
    let (out, took) = brick(&cluster, &["volume", "set", VOLUME, "heal.rate", "50M"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "volume set succeeded with etcd frozen"
    );
    assert!(
        err.contains("etcd") && err.contains(&cluster.etcd[0].endpoint),
        "the error does not name the store: {err}"
    );
    eprintln!(
        "volume set with etcd frozen: failed after {} ms: {}",
        took.as_millis(),
        err.trim()
    );

    // A node restarted meanwhile waits for the store, then serves.
    cluster.nodes[1].kill9();
    let serving_before =
        cluster.nodes[1].restart_until_logged("waiting for it to load the cluster state");
    eprintln!(
        "etcd frozen for {} ms; thawing",
        frozen_at.elapsed().as_millis()
    );
    cluster.etcd[0].thaw();
    cluster.nodes[1].wait_serving(serving_before);

    // Back: the change goes through, and the data written meanwhile is there.
    let set: VolumeConfig = serde_json::from_str(
        brick_ok(
            &cluster,
            &["--json", "volume", "set", VOLUME, "heal.rate", "50M"],
        )
        .trim(),
    )
    .expect("volume set --json");
    let rate = set.options.get("heal.rate").map(String::as_str);
    assert!(
        rate.is_some_and(|r| r != "adaptive"),
        "heal.rate not set: {rate:?}"
    );
    let during = scratch.path().join("during.bin");
    brick_ok(
        &cluster,
        &["get", "so/during.bin", during.to_str().expect("utf-8")],
    );
    assert_eq!(
        std::fs::read(&during).expect("read during"),
        b"written while etcd was frozen"
    );
}

/// How long the quorum stays lost (`BRICK_QUORUM_LOST_S`; bench runs use 60).
fn quorum_lost_s() -> u64 {
    std::env::var("BRICK_QUORUM_LOST_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

const RECORD_BYTES: usize = 4096;
/// Bounds the writer however fast it runs.
const RECORDS_MAX: u64 = 200_000;

#[test]
fn io_and_new_clients_go_on_while_the_etcd_cluster_has_no_quorum() {
    let etcd = brick_testkit::Etcd::start_cluster(3);
    let mut cluster =
        LocalCluster::start_on(&brickd_exe(), "quorum-lost", &["n1", "n2"], PASSWORD, etcd);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let scratch = tempfile::tempdir().expect("tempdir");
    let client = rt.block_on(async {
        let client = Client::connect(cluster.admin.clone())
            .await
            .expect("connect");
        // Opened again below, without a quorum.
        create_volume(&client, &cluster.nodes, "qv", 2).await;
        client
    });

    // One member of three down: nothing is noticed, changes included.
    cluster.etcd[2].kill9();
    brick_ok(&cluster, &["volume", "set", "qv", "heal.rate", "20M"]);

    // Two down: no quorum. Writes go on; a new CLI process every few seconds reads and writes.
    cluster.etcd[1].kill9();
    let lost_at = Instant::now();
    let outage = Duration::from_secs(quorum_lost_s());
    let small = scratch.path().join("small.txt");
    std::fs::write(&small, b"written without a quorum").expect("local file");
    let (records, cli_runs) = rt.block_on(async {
        let vol = client.open_volume("qv").await.expect("open");
        let f = vol
            .create(ROOT_FILE_ID, "log.bin", 0o644, true)
            .await
            .expect("create without a quorum");
        let mut records = 0u64;
        let mut cli_runs = 0u64;
        let mut next_cli = Instant::now();
        while lost_at.elapsed() < outage && records < RECORDS_MAX {
            let data = pattern(records, 0, RECORD_BYTES);
            let off = records * RECORD_BYTES as u64;
            vol.write(f.fid, off, &data, false)
                .await
                .unwrap_or_else(|e| panic!("write {records} without a quorum: {e}"));
            records += 1;
            if Instant::now() >= next_cli {
                let name = format!("qv/cli-{cli_runs}.txt");
                brick_ok(&cluster, &["put", small.to_str().expect("utf-8"), &name]);
                let back = scratch.path().join("back.txt");
                brick_ok(&cluster, &["get", &name, back.to_str().expect("utf-8")]);
                assert_eq!(
                    std::fs::read(&back).expect("read back"),
                    b"written without a quorum"
                );
                cli_runs += 1;
                next_cli = Instant::now() + Duration::from_secs(3);
            }
        }
        (records, cli_runs)
    });
    let (out, took) = brick(&cluster, &["volume", "set", "qv", "heal.rate", "30M"]);
    assert!(
        !out.status.success(),
        "volume set succeeded without a quorum"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("etcd"),
        "the error does not name the store: {err}"
    );
    eprintln!(
        "no quorum for {} ms: {records} writes of 4 KiB and {cli_runs} new CLI put+get, no \
         error; volume set failed after {} ms: {}",
        lost_at.elapsed().as_millis(),
        took.as_millis(),
        err.trim()
    );

    // Quorum back: changes go through again, and every acknowledged write reads back.
    cluster.etcd[1].restart();
    cluster.etcd[2].restart();
    for member in &cluster.etcd {
        member.wait_answers();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (out, _) = brick(&cluster, &["volume", "set", "qv", "heal.rate", "30M"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "volume set still fails after the quorum came back: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    rt.block_on(async {
        let client = Client::connect(cluster.admin.clone())
            .await
            .expect("connect");
        let vol = client.open_volume("qv").await.expect("open");
        let f = vol.lookup(ROOT_FILE_ID, "log.bin").await.expect("lookup");
        for i in 0..records {
            let got = vol
                .read(f.fid, i * RECORD_BYTES as u64, RECORD_BYTES as u32)
                .await
                .expect("read back");
            assert_eq!(got, pattern(i, 0, RECORD_BYTES), "record {i}");
        }
    });
}

/// How long the gateway test keeps the quorum lost (`BRICK_GATEWAYS_QUORUM_LOST_S`; the
/// bench/faults.sh run uses 60).
fn gateways_quorum_lost_s() -> u64 {
    std::env::var("BRICK_GATEWAYS_QUORUM_LOST_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn is_mounted(mountpoint: &std::path::Path) -> bool {
    let want = mountpoint.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

/// A `brick mount` of volume `qv`; stopped by its PID (and unmounted) when dropped.
struct Mount {
    child: std::process::Child,
    mountpoint: PathBuf,
}

impl Mount {
    fn start(servers: &str, mountpoint: &std::path::Path, log: &std::path::Path) -> Mount {
        std::fs::create_dir_all(mountpoint).expect("mount point");
        let mountpoint = mountpoint.canonicalize().expect("canonical mount point");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("mount log");
        let child = Command::new(brick_exe())
            .args([
                "--servers",
                servers,
                "--user",
                "admin",
                "--password",
                PASSWORD,
            ])
            .arg("mount")
            .arg("qv")
            .arg(&mountpoint)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn brick mount");
        let mut m = Mount { child, mountpoint };
        let start = Instant::now();
        while !is_mounted(&m.mountpoint) {
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!(
                    "brick mount exited ({status}) without a quorum: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(start.elapsed() < Duration::from_secs(20), "not mounted");
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    /// The mount process dies (SIGKILL); the kernel's mount goes with a lazy unmount.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .status();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) {
            let _ = Command::new(brick_exe())
                .arg("umount")
                .arg(&self.mountpoint)
                .status();
        }
        self.kill();
    }
}

/// One fio run through the NBD gateway: random 4 KiB writes at queue depth 16 over 16 MiB,
/// then every block read back and verified (crc32c). Panics on any fio error.
fn fio_through_nbd(uri: &str) -> u64 {
    let out = Command::new("fio")
        .args([
            "--name=quorum",
            "--ioengine=nbd",
            "--rw=randwrite",
            "--bs=4k",
        ])
        .args([
            "--iodepth=16",
            "--size=16M",
            "--verify=crc32c",
            "--do_verify=1",
        ])
        .args(["--verify_state_save=0", "--output-format=json"])
        .arg(format!("--uri={uri}"))
        .output()
        .expect("run fio (.ci/run installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "fio through NBD without a quorum failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_str(&stdout[stdout.find('{').expect("fio JSON")..]).expect("fio JSON");
    let job = &doc["jobs"][0];
    assert_eq!(job["error"], serde_json::Value::from(0), "{doc:#}");
    job["write"]["io_bytes"].as_u64().unwrap_or(0)
}

/// Two of three etcd members killed while QEMU-like and admin clients keep working: fio
/// through a node's NBD gateway (each run a new NBD connection, verified), a FUSE mount
/// killed and mounted again (a new client bootstrap) that writes and reads a file, new CLI
/// processes, and a node restarted meanwhile (a node that holds no member of the volume: a
/// member that stops cannot leave its PGs without the store, so their writes would wait for
/// it). Zero errors on the volume; the restarted node serves once the quorum is back.
#[test]
fn nbd_fio_fuse_remount_and_a_node_restart_go_on_without_quorum() {
    for tool in ["fio", "nbdinfo"] {
        brick_testkit::need_tool(tool, ".ci/run installs fio and libnbd-bin");
    }
    let etcd = brick_testkit::Etcd::start_cluster(3);
    let store = brick_testkit::Etcd::cluster_url(&etcd);
    let dir = tempfile::tempdir_in(brick_testkit::scratch_root()).expect("scratch");
    let nbd_addr = format!("127.0.0.1:{}", brick_testkit::free_port());
    let hosted = ["--nbd".to_string(), format!("qv@{nbd_addr}")];
    let mut nodes: Vec<brick_testkit::ServeNode> = ["n1", "n2", "n3"]
        .iter()
        .map(|&n| {
            let extra: &[String] = if n == "n1" { &hosted } else { &[] };
            brick_testkit::ServeNode::start_with(
                &brickd_exe(),
                n,
                dir.path(),
                &store,
                PASSWORD,
                extra,
            )
        })
        .collect();
    let servers = nodes
        .iter()
        .map(|n| n.addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    let admin = brick_client::ClientConfig {
        servers: nodes.iter().map(|n| n.addr.clone()).collect(),
        user: "admin".into(),
        password: PASSWORD.into(),
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = Client::connect(admin.clone()).await.expect("connect");
        let vol = create_volume(&client, &nodes[..2], "qv", 2).await;
        let f = vol
            .create(ROOT_FILE_ID, "disk.raw", 0o644, true)
            .await
            .expect("create the image");
        vol.write(f.fid, (16 << 20) - 1, &[0], true)
            .await
            .expect("size the image");
    });
    let uri = format!("nbd://{nbd_addr}/disk.raw");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Command::new("nbdinfo")
        .arg(&uri)
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(
            Instant::now() < deadline,
            "no NBD export; log:\n{}",
            nodes[0].log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mount_log = dir.path().join("mount.log");
    let mut mount = Mount::start(&servers, &dir.path().join("mnt"), &mount_log);

    let mut etcd = etcd;
    etcd[2].kill9();
    etcd[1].kill9();
    let lost_at = Instant::now();
    let outage = Duration::from_secs(gateways_quorum_lost_s());

    // A node restarted without the store: it says it waits, and serves once the quorum is back.
    nodes[2].kill9();
    let serving_before = nodes[2].restart_until_logged("waiting for it to load the cluster state");

    // The FUSE mount dies and is mounted again: a new client that bootstraps without a store.
    mount.kill();
    let mount = Mount::start(&servers, &dir.path().join("mnt"), &mount_log);
    let via_fuse = mount.mountpoint.join("fuse-during.txt");
    std::fs::write(&via_fuse, b"written through FUSE without a quorum").expect("FUSE write");
    assert_eq!(
        std::fs::read(&via_fuse).expect("FUSE read"),
        b"written through FUSE without a quorum"
    );

    // fio through NBD, a new connection each run, until the outage ends.
    let mut fio_runs = 0u64;
    let mut fio_bytes = 0u64;
    while lost_at.elapsed() < outage {
        fio_bytes += fio_through_nbd(&uri);
        fio_runs += 1;
        let listing = brick_ok_on(&servers, &["ls", "qv/"]);
        assert!(listing.contains("fuse-during.txt"), "ls: {listing}");
    }
    assert!(fio_runs > 0);
    eprintln!(
        "no quorum for {} ms: {fio_runs} fio runs through NBD ({} MiB written and verified), a \
         FUSE remount with a write and a read, a CLI ls after each fio run, a node restart \
         waiting for the store",
        lost_at.elapsed().as_millis(),
        fio_bytes >> 20
    );

    etcd[1].restart();
    etcd[2].restart();
    for member in &etcd {
        member.wait_answers();
    }
    nodes[2].wait_serving(serving_before);
    fio_through_nbd(&uri);
    drop(mount);
}
