//! `brick nbd serve` against a real `brickd dev`, with real NBD clients: nbdinfo and nbdcopy
//! (libnbd-bin), qemu-img and qemu-io (qemu-utils) and fio's `nbd` engine with verification.
//! Data written over NBD is read back through the native client and the reverse; malformed
//! handshakes and bad requests get the protocol's answers and the gateway keeps serving.

use brick_client::{Client, ClientConfig};
use brick_cluster::mgmt::{VolumeCreate, VolumeStart};
use brick_testkit::{free_port, pattern, run_tool as run, DevServer, ServeNode};
use brick_wire::ROOT_FILE_ID;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE_BYTES: u64 = 64 << 20;

fn brick_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_brick"))
}

fn brickd_exe() -> PathBuf {
    let p = brick_exe().with_file_name("brickd");
    assert!(p.exists(), "{} not built", p.display());
    p
}

fn need(tool: &str) {
    brick_testkit::need_tool(tool, ".ci/run installs libnbd-bin, qemu-utils and fio");
}

/// `brick nbd serve`, stopped by its PID when dropped (also when the test fails).
struct Gateway {
    child: Child,
    addr: String,
}

impl Gateway {
    fn start(server: &DevServer, dir: &Path) -> Gateway {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("nbd.log");
        let out = std::fs::File::create(&log).expect("nbd log");
        let child = Command::new(brick_exe())
            .arg("--endpoints")
            .arg(server.endpoints_path())
            .args(["nbd", "serve", "dev", "--listen", &addr])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn brick nbd serve");
        let mut g = Gateway { child, addr };
        let start = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("nbd serving")
        {
            if let Ok(Some(status)) = g.child.try_wait() {
                panic!(
                    "brick nbd serve exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "gateway did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        g
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.addr)
    }

    /// SIGTERM: the gateway must exit cleanly.
    fn stop(mut self) {
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let limit = Duration::from_secs(10);
        let status = brick_testkit::wait_exit(&mut self.child, "brick nbd serve", limit);
        assert!(status.success(), "gateway exit status {status}");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `len` bytes of `pattern(seed)` as a new file of the dev volume.
async fn put(client: &Client, name: &str, seed: u64, len: u64) {
    put_in(client, "dev", name, seed, len).await
}

async fn put_in(client: &Client, volume: &str, name: &str, seed: u64, len: u64) {
    let vol = client.open_volume(volume).await.expect("open");
    let f = vol
        .create(ROOT_FILE_ID, name, 0o644, true)
        .await
        .expect("create");
    for off in (0..len).step_by(1 << 20) {
        let chunk = pattern(seed, off, (1 << 20).min(len - off) as usize);
        vol.write(f.fid, off, &chunk, false).await.expect("write");
    }
}

async fn get(client: &Client, name: &str) -> Vec<u8> {
    get_in(client, "dev", name).await
}

async fn get_in(client: &Client, volume: &str, name: &str) -> Vec<u8> {
    let vol = client.open_volume(volume).await.expect("open");
    let attr = vol.resolve(name).await.expect("resolve");
    let mut out = Vec::with_capacity(attr.size as usize);
    for off in (0..attr.size).step_by(1 << 20) {
        let len = (1u64 << 20).min(attr.size - off) as u32;
        out.extend(vol.read(attr.fid, off, len).await.expect("read"));
    }
    out
}

fn whole_pattern(seed: u64, len: u64) -> Vec<u8> {
    pattern(seed, 0, len as usize)
}

#[test]
fn nbd_clients_read_and_write_volume_files() {
    for tool in ["nbdinfo", "nbdcopy", "qemu-img", "qemu-io", "fio"] {
        need(tool);
    }
    let server = DevServer::start(&brickd_exe(), 1);
    let scratch = tempfile::tempdir_in(brick_testkit::scratch_root()).expect("scratch");
    let dir = scratch.path();
    let rt = brick_testkit::runtime();
    let client = rt
        .block_on(Client::connect(server.client_config()))
        .expect("connect");
    rt.block_on(put(&client, "img.raw", 1, IMAGE_BYTES));
    rt.block_on(put(&client, "blank.raw", 2, IMAGE_BYTES));
    rt.block_on(put(&client, "fio.raw", 3, 32 << 20));
    let gw = Gateway::start(&server, dir);

    // nbdinfo: size and the capabilities clients rely on.
    let info: Value = serde_json::from_str(&run(Command::new("nbdinfo")
        .arg("--json")
        .arg(gw.uri("img.raw"))))
    .expect("nbdinfo JSON");
    let export = &info["exports"][0];
    assert_eq!(export["export-size"], Value::from(IMAGE_BYTES), "{info:#}");
    for cap in [
        "can_flush",
        "can_fua",
        "can_multi_conn",
        "can_trim",
        "can_zero",
    ] {
        assert_eq!(export[cap], Value::Bool(true), "{cap}: {info:#}");
    }
    assert_eq!(export["is_read_only"], Value::Bool(false));
    let list = run(Command::new("nbdinfo").arg("--list").arg(gw.uri("")));
    for name in ["img.raw", "blank.raw", "fio.raw"] {
        assert!(list.contains(name), "{name} not listed: {list}");
    }

    // nbdcopy (4 connections each way): written natively, read over NBD, and the reverse.
    let down = dir.join("down.raw");
    run(Command::new("nbdcopy").arg(gw.uri("img.raw")).arg(&down));
    let got = std::fs::read(&down).expect("download");
    assert!(
        got == whole_pattern(1, IMAGE_BYTES),
        "nbdcopy download differs"
    );
    let up = dir.join("up.raw");
    std::fs::write(&up, whole_pattern(9, IMAGE_BYTES)).expect("local image");
    run(Command::new("nbdcopy").arg(&up).arg(gw.uri("blank.raw")));
    let back = rt.block_on(get(&client, "blank.raw"));
    assert!(
        back == whole_pattern(9, IMAGE_BYTES),
        "nbdcopy upload read natively differs"
    );

    // qemu-img: a qcow2 image converted into the export and out of it, compared both ways.
    let qcow = dir.join("src.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow)
        .arg("64M"));
    run(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 1M 3M",
            "-c",
            "write -P 0x5c 40M 512k",
        ])
        .arg(&qcow));
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "qcow2", "-O", "raw"])
        .arg(&qcow)
        .arg(gw.uri("blank.raw")));
    run(Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(&qcow)
        .arg(gw.uri("blank.raw")));
    let out_qcow = dir.join("out.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(gw.uri("blank.raw"))
        .arg(&out_qcow));
    run(Command::new("qemu-img")
        .arg("compare")
        .arg(&out_qcow)
        .arg(&qcow));
    let native = rt.block_on(get(&client, "blank.raw"));
    assert!(native[1 << 20..4 << 20].iter().all(|&b| b == 0xab));
    assert!(
        native[..1 << 20].iter().all(|&b| b == 0),
        "qemu-img zeroed the rest"
    );

    // fio's nbd engine: random writes with crc32c verification, queue depth 16.
    let fio = run(Command::new("fio")
        .args([
            "--name=verify",
            "--ioengine=nbd",
            "--rw=randwrite",
            "--bs=4k",
        ])
        .args([
            "--iodepth=16",
            "--size=32M",
            "--verify=crc32c",
            "--do_verify=1",
            // No verify state file left in the test's working directory.
            "--verify_state_save=0",
        ])
        .args(["--output-format=json"])
        .arg(format!("--uri={}", gw.uri("fio.raw"))));
    let job = &fio_job(&fio);
    assert!(
        job["write"]["io_bytes"].as_u64() >= Some(32 << 20),
        "{job:#}"
    );
    assert!(
        job["read"]["io_bytes"].as_u64() >= Some(32 << 20),
        "verification reads: {job:#}"
    );

    // brickd dev serves the same over its own NBD gateway (address in endpoints.json).
    let endpoints: Value = serde_json::from_str(
        &std::fs::read_to_string(server.endpoints_path()).expect("endpoints.json"),
    )
    .expect("endpoints JSON");
    let dev_nbd = endpoints["nbd"]
        .as_str()
        .expect("nbd address in endpoints.json");
    let dev_copy = dir.join("dev-nbd.raw");
    run(Command::new("nbdcopy")
        .arg(format!("nbd://{dev_nbd}/img.raw"))
        .arg(&dev_copy));
    assert!(
        std::fs::read(&dev_copy).expect("dev copy") == whole_pattern(1, IMAGE_BYTES),
        "brickd dev's NBD gateway"
    );
    // Its client is in brickd's own process (in-process connections, no socket): what it
    // writes must read back the same over a socket, and fio's verification must hold.
    let dev_up = dir.join("dev-up.raw");
    std::fs::write(&dev_up, whole_pattern(11, IMAGE_BYTES)).expect("local image");
    run(Command::new("nbdcopy")
        .arg(&dev_up)
        .arg(format!("nbd://{dev_nbd}/blank.raw")));
    assert!(
        rt.block_on(get(&client, "blank.raw")) == whole_pattern(11, IMAGE_BYTES),
        "written through brickd dev's NBD gateway, read natively"
    );
    let fio = run(Command::new("fio")
        .args(["--name=verify", "--ioengine=nbd", "--rw=randwrite"])
        .args(["--bssplit=4k/70:64k/20:1m/10", "--iodepth=16", "--size=32M"])
        .args(["--verify=crc32c", "--do_verify=1", "--verify_state_save=0"])
        .args(["--output-format=json"])
        .arg(format!("--uri=nbd://{dev_nbd}/fio.raw")));
    let job = &fio_job(&fio);
    assert_eq!(
        job["read"]["io_bytes"],
        Value::from(32u64 << 20),
        "verified: {job:#}"
    );

    bad_requests(&gw.addr);
    // The same on the hosted gateway, whose connections a core serves after the handshake.
    bad_requests(dev_nbd);
    assert!(
        server.log().contains("NBD connection served on core"),
        "brickd dev's NBD connections are served on the core: {}",
        server.log()
    );
    // Still serving after all of the above.
    run(Command::new("nbdinfo").arg(gw.uri("img.raw")));
    let unknown = Command::new("nbdinfo")
        .arg(gw.uri("no-such-file"))
        .output()
        .expect("nbdinfo");
    assert!(
        !unknown.status.success(),
        "an unknown export must be refused"
    );
    gw.stop();
}

/// `brickd serve --nbd VOLUME@ADDR --nfs VOLUME@ADDR --smb VOLUME@ADDR`: the node hosts the
/// gateways (their client in-process, logged in as the node), waits for the volume to be
/// created and started, then serves its files; the SMB share admits the volume's users.
#[test]
fn brickd_serve_hosts_an_nbd_gateway() {
    for tool in ["nbdinfo", "nbdcopy", "nfs-ls", "smbclient"] {
        need(tool);
    }
    let scratch = tempfile::tempdir_in(brick_testkit::scratch_root()).expect("scratch");
    let dir = scratch.path();
    let store = format!("embedded://{}", dir.join("store").display());
    let nbd_addr = format!("127.0.0.1:{}", free_port());
    let password = "hosted-gateway-test";
    let nfs_port = free_port();
    let smb_port = free_port();
    let hosted = [
        "--nbd".to_string(),
        format!("vm@{nbd_addr}"),
        "--nfs".to_string(),
        format!("vm@127.0.0.1:{nfs_port}"),
        "--smb".to_string(),
        format!("vm@127.0.0.1:{smb_port}"),
    ];
    let node = ServeNode::start_with(&brickd_exe(), "n1", dir, &store, password, &hosted);
    let rt = brick_testkit::runtime();
    let admin = rt
        .block_on(Client::connect(ClientConfig {
            servers: vec![node.addr.clone()],
            user: "admin".into(),
            password: password.into(),
        }))
        .expect("connect as admin");
    rt.block_on(async {
        let bricks = vec![format!("n1:{}", node.brick_dir("b").display())];
        let create = VolumeCreate {
            name: "vm".into(),
            replica: 1,
            bricks,
            pg_count: None,
        };
        admin.mgmt(&create).await.expect("create vm");
        let start = VolumeStart { name: "vm".into() };
        admin.mgmt(&start).await.expect("start vm");
        put_in(&admin, "vm", "img.raw", 21, IMAGE_BYTES).await;
    });
    // An SMB user of the volume (the share is named after it).
    let admin_cli = |args: &[&str], stdin: &str| {
        let mut cmd = Command::new(brick_exe());
        cmd.args([
            "--servers",
            &node.addr,
            "--user",
            "admin",
            "--password",
            password,
        ]);
        brick_testkit::run_tool_with_stdin(cmd.args(args), stdin);
    };
    admin_cli(&["user", "add", "carol"], "carol-pw-1\n");
    admin_cli(&["volume", "set", "vm", "access.carol", "rw"], "");
    let uri = format!("nbd://{nbd_addr}/img.raw");
    wait_for_export(&uri, &node);
    let down = dir.join("hosted-down.raw");
    run(Command::new("nbdcopy").arg(&uri).arg(&down));
    assert!(
        std::fs::read(&down).expect("download") == whole_pattern(21, IMAGE_BYTES),
        "read through the hosted gateway"
    );
    let up = dir.join("hosted-up.raw");
    std::fs::write(&up, whole_pattern(22, IMAGE_BYTES)).expect("local image");
    run(Command::new("nbdcopy").arg(&up).arg(&uri));
    assert!(
        rt.block_on(get_in(&admin, "vm", "img.raw")) == whole_pattern(22, IMAGE_BYTES),
        "written through the hosted gateway, read natively"
    );
    let listing = run(Command::new("nfs-ls").arg(format!(
        "nfs://127.0.0.1/?version=3&nfsport={nfs_port}&mountport={nfs_port}"
    )));
    assert!(listing.contains("img.raw"), "hosted NFS listing: {listing}");
    // The hosted SMB share: an upload read back natively, a download of what NBD wrote.
    let smb = |command: &str| {
        Command::new("smbclient")
            .arg("//127.0.0.1/vm")
            .args([
                "-p",
                &smb_port.to_string(),
                "-U",
                "carol%carol-pw-1",
                "-c",
                command,
            ])
            .output()
            .expect("smbclient")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !smb("ls").status.success() {
        assert!(
            Instant::now() < deadline,
            "no SMB share; log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let put = smb(&format!("put {} smb.raw", up.display()));
    assert!(put.status.success(), "smbclient put: {put:?}");
    assert!(
        rt.block_on(get_in(&admin, "vm", "smb.raw")) == whole_pattern(22, IMAGE_BYTES),
        "written through the hosted SMB share, read natively"
    );
    let smb_down = dir.join("smb-down.raw");
    let get = smb(&format!("get img.raw {}", smb_down.display()));
    assert!(get.status.success(), "smbclient get: {get:?}");
    assert!(
        std::fs::read(&smb_down).expect("smb download") == whole_pattern(22, IMAGE_BYTES),
        "read through the hosted SMB share"
    );
    for kind in ["nbd", "nfs", "smb"] {
        let line = format!("{kind} gateway for volume \"vm\" serving");
        assert!(node.log().contains(&line), "{line}: {}", node.log());
    }
}

/// The one job of fio's JSON output (after whatever fio printed first), which must have
/// ended without an error.
fn fio_job(out: &str) -> Value {
    let doc: Value = serde_json::from_str(&out[out.find('{').expect("fio JSON")..]).expect("JSON");
    let job = doc["jobs"][0].clone();
    assert_eq!(job["error"], Value::from(0), "{doc:#}");
    job
}

/// Waits (at most 20 s) until the gateway `node` hosts serves `uri` (it waits for its volume).
fn wait_for_export(uri: &str, node: &ServeNode) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Command::new("nbdinfo")
        .arg(uri)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(
            Instant::now() < deadline,
            "the hosted gateway never served {uri}; log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Raw protocol: a malformed handshake closes that connection only; out-of-range, unknown and
/// oversized requests get EINVAL, EINVAL and EOVERFLOW.
fn bad_requests(addr: &str) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).expect("hello");
    assert_eq!(&hello[..8], b"NBDMAGIC");
    s.write_all(&0xdead_0000u32.to_be_bytes()).expect("flags");
    let mut rest = Vec::new();
    let closed = s
        .read_to_end(&mut rest)
        .map(|_| rest.is_empty())
        .unwrap_or(true);
    assert!(closed, "unknown client flags must close the connection");

    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.read_exact(&mut hello).expect("hello");
    s.write_all(&3u32.to_be_bytes()).expect("flags"); // fixed newstyle, no zeroes
    let name = b"img.raw";
    let mut go = Vec::new();
    go.extend_from_slice(b"IHAVEOPT");
    go.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
    go.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
    go.extend_from_slice(&(name.len() as u32).to_be_bytes());
    go.extend_from_slice(name);
    go.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&go).expect("GO");
    // REP_INFO (export) then REP_ACK.
    for expected_kind in [3u32, 1] {
        let mut head = [0u8; 20];
        s.read_exact(&mut head).expect("option reply");
        let kind = u32::from_be_bytes(head[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(head[16..20].try_into().unwrap());
        assert_eq!(kind, expected_kind);
        let mut body = vec![0u8; len as usize];
        s.read_exact(&mut body).expect("option data");
    }
    let request = |command: u16, cookie: u64, offset: u64, length: u32| {
        let mut r = Vec::with_capacity(28);
        r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&command.to_be_bytes());
        r.extend_from_slice(&cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&length.to_be_bytes());
        r
    };
    let mut error_of = |req: Vec<u8>, cookie: u64| {
        s.write_all(&req).expect("request");
        let mut reply = [0u8; 16];
        s.read_exact(&mut reply).expect("reply");
        assert_eq!(&reply[..4], &0x6744_6698u32.to_be_bytes());
        assert_eq!(u64::from_be_bytes(reply[8..].try_into().unwrap()), cookie);
        u32::from_be_bytes(reply[4..8].try_into().unwrap())
    };
    assert_eq!(
        error_of(request(0, 1, IMAGE_BYTES - 512, 4096), 1),
        22,
        "read past the end"
    );
    assert_eq!(error_of(request(99, 2, 0, 512), 2), 22, "unknown command");
    assert_eq!(
        error_of(request(0, 3, 0, 64 << 20), 3),
        75,
        "oversized read"
    );
    assert_eq!(error_of(request(4, 4, 0, 4096), 4), 0, "trim");
    // A good read on the same connection still works, then DISC.
    s.write_all(&request(0, 5, 4096, 4096)).expect("read");
    let mut reply = [0u8; 16 + 4096];
    s.read_exact(&mut reply).expect("read reply");
    assert_eq!(&reply[4..8], &[0, 0, 0, 0]);
    assert!(reply[16..] == pattern(1, 4096, 4096)[..], "read data");
    s.write_all(&request(2, 6, 0, 0)).expect("disc");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing after DISC");
}

/// A connection served on the core of the export's primary goes back to the gateway when that
/// core can no longer serve it: node n1 hosts the NBD gateway and is the primary of the
/// image's PG; it is frozen (SIGSTOP) under fio's writes long enough for n2 to take over in
/// a new epoch, then thawed. n1's core refuses what it still holds, hands the connection back,
/// and the gateway's native client follows the failover to n2: fio's crc32c verification of
/// every block must pass on the same connection.
#[test]
fn a_fenced_primary_hands_its_nbd_connection_back_to_the_gateway() {
    for tool in ["nbdinfo", "fio"] {
        need(tool);
    }
    let etcd = brick_testkit::Etcd::start();
    let scratch = tempfile::tempdir_in(brick_testkit::scratch_root()).expect("scratch");
    let dir = scratch.path();
    let store = etcd.store_url();
    let password = "nbd-handback-test";
    let nbd_addr = format!("127.0.0.1:{}", free_port());
    let hosted = ["--nbd".to_string(), format!("vm@{nbd_addr}")];
    let n1 = ServeNode::start_with(&brickd_exe(), "n1", dir, &store, password, &hosted);
    let n2 = ServeNode::start(&brickd_exe(), "n2", dir, &store, password);
    let rt = brick_testkit::runtime();
    let admin = rt
        .block_on(Client::connect(ClientConfig {
            servers: vec![n1.addr.clone(), n2.addr.clone()],
            user: "admin".into(),
            password: password.into(),
        }))
        .expect("connect as admin");
    rt.block_on(async {
        let bricks = vec![
            format!("n1:{}", n1.brick_dir("b").display()),
            format!("n2:{}", n2.brick_dir("b").display()),
        ];
        // One PG, whose preferred primary is the first member: n1.
        let create = VolumeCreate {
            name: "vm".into(),
            replica: 2,
            bricks,
            pg_count: Some(1),
        };
        admin.mgmt(&create).await.expect("create vm");
        let start = VolumeStart { name: "vm".into() };
        admin.mgmt(&start).await.expect("start vm");
        put_in(&admin, "vm", "fio.raw", 5, 16 << 20).await;
    });
    let uri = format!("nbd://{nbd_addr}/fio.raw");
    wait_for_export(&uri, &n1);
    // 4096 writes at 500 a second: the freeze lands in the middle of them.
    let mut fio = Command::new("fio")
        .args([
            "--name=handback",
            "--ioengine=nbd",
            "--rw=randwrite",
            "--bs=4k",
        ])
        .args(["--iodepth=8", "--size=16M", "--rate_iops=500"])
        .args(["--verify=crc32c", "--do_verify=1", "--verify_state_save=0"])
        .args(["--output-format=json"])
        .arg(format!("--uri={uri}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fio");
    let fio_guard = ChildGuard(fio.id());
    std::thread::sleep(Duration::from_millis(1500));
    n1.freeze();
    std::thread::sleep(Duration::from_secs(4));
    n1.thaw();
    let status = brick_testkit::wait_exit(&mut fio, "fio", Duration::from_secs(120));
    drop(fio_guard);
    let mut out = String::new();
    if let Some(mut o) = fio.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let mut err = String::new();
    if let Some(mut e) = fio.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        status.success(),
        "fio failed: {err}\n{out}\nn1:\n{}",
        n1.log()
    );
    let job = &fio_job(&out);
    assert_eq!(
        job["read"]["io_bytes"],
        Value::from(16u64 << 20),
        "verified: {job:#}"
    );
    let log = n1.log();
    assert!(
        log.contains("NBD connection served on core"),
        "the connection never reached the core:\n{log}"
    );
    assert!(
        log.contains("handed back to the gateway"),
        "the core never handed the connection back:\n{log}"
    );
    drop((n1, n2, etcd));
}

/// Kills a child by PID when a test fails before waiting for it.
struct ChildGuard(u32);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}
