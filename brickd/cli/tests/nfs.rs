//! `brick nfs serve` against a real `brickd dev`, with real NFSv3 clients: Debian's
//! libnfs-utils (`nfs-cp`, `nfs-ls`, `nfs-cat`) and, for what those binaries cannot do (mkdir,
//! rename, remove, truncate, stat, writes at offsets past 4 GiB), the same libnfs through
//! `tests/nfs_ops.py` (ctypes). Data written over NFS is read back through the native client
//! and the reverse; the gateway is SIGKILLed in the middle of a copy and restarted, and the
//! client's retry completes with the same handles; malformed requests get RPC errors and the
//! gateway keeps serving.

use brick_client::{Client, Volume};
use brick_testkit::{
    assert_pattern_file, free_port, pattern, run_tool as run, runtime, write_pattern_file,
    DevServer,
};
use brick_wire::ROOT_FILE_ID;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Gateway log files in one test directory get distinct names.
static LOG_SEQ: AtomicU64 = AtomicU64::new(0);

fn brick_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_brick"))
}

fn brickd_exe() -> PathBuf {
    let p = brick_exe().with_file_name("brickd");
    assert!(p.exists(), "{} not built", p.display());
    p
}

fn nfs_ops() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/nfs_ops.py")
}

fn need(tool: &str) {
    brick_testkit::need_tool(tool, ".ci/run installs libnfs-utils and python3");
}

/// `brick nfs serve`, stopped by its PID when dropped (also when the test fails).
struct Gateway {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Gateway {
    fn start(server: &DevServer, dir: &Path, port: u16) -> Gateway {
        let log = dir.join(format!(
            "nfs-{}.log",
            LOG_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let out = std::fs::File::create(&log).expect("nfs log");
        let child = Command::new(brick_exe())
            .arg("--endpoints")
            .arg(server.endpoints_path())
            .args(["nfs", "serve", "dev", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn brick nfs serve");
        let mut g = Gateway { child, port, log };
        let start = Instant::now();
        while !g.log_text().contains("nfs serving") {
            if let Ok(Some(status)) = g.child.try_wait() {
                panic!("brick nfs serve exited ({status}): {}", g.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "gateway did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        g
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `nfs://127.0.0.1/PATH?...` for libnfs (NFS and MOUNT on the gateway's one port).
    fn url(&self, path: &str) -> String {
        format!(
            "nfs://127.0.0.1/{path}?version=3&nfsport={p}&mountport={p}",
            p = self.port
        )
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the gateway must exit cleanly.
    fn stop(mut self) {
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let limit = Duration::from_secs(10);
        let status = brick_testkit::wait_exit(&mut self.child, "brick nfs serve", limit);
        assert!(status.success(), "gateway exit status {status}");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("gateway log {}:\n{}", self.log.display(), self.log_text());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `nfs_ops.py URL OP ARGS...`; Ok(stdout) or Err(stderr).
fn op(gw: &Gateway, args: &[&str]) -> Result<String, String> {
    let out = Command::new("python3")
        .arg(nfs_ops())
        .arg(gw.url(""))
        .args(args)
        .output()
        .expect("run nfs_ops.py");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn op_ok(gw: &Gateway, args: &[&str]) -> String {
    op(gw, args).unwrap_or_else(|e| panic!("nfs_ops {args:?}: {e}"))
}

fn op_err(gw: &Gateway, args: &[&str], status: &str) {
    match op(gw, args) {
        Ok(out) => panic!("nfs_ops {args:?} succeeded ({out}); expected {status}"),
        Err(e) => assert!(
            e.contains(status),
            "nfs_ops {args:?}: {e}; expected {status}"
        ),
    }
}

/// The entry names `nfs-ls` prints for a directory (its last column).
fn ls_names(gw: &Gateway, dir: &str) -> Vec<String> {
    let out = run(Command::new("nfs-ls").arg(gw.url(dir)));
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    names
}

async fn volume(server: &DevServer) -> Volume {
    let client = Client::connect(server.client_config())
        .await
        .expect("connect");
    client.open_volume("dev").await.expect("open")
}

#[test]
fn nfs_clients_copy_large_files_and_change_the_namespace() {
    for tool in ["nfs-cp", "nfs-ls", "nfs-cat", "python3"] {
        need(tool);
    }
    let server = DevServer::start(&brickd_exe(), 1);
    let scratch = tempfile::tempdir_in(brick_testkit::scratch_root()).expect("scratch");
    let dir = scratch.path();
    let rt = runtime();
    let vol = rt.block_on(volume(&server));
    let gw = Gateway::start(&server, dir, free_port());

    // 1 GiB up and down with nfs-cp (unstable WRITEs and one COMMIT), compared byte for byte.
    let gib = 1u64 << 30;
    let local = dir.join("big.bin");
    write_pattern_file(&local, 1, gib);
    let started = Instant::now();
    run(Command::new("nfs-cp").arg(&local).arg(gw.url("/big.bin")));
    let up_s = started.elapsed().as_secs_f64();
    std::fs::remove_file(&local).expect("remove local copy");
    let back = dir.join("back.bin");
    let started = Instant::now();
    run(Command::new("nfs-cp").arg(gw.url("/big.bin")).arg(&back));
    let down_s = started.elapsed().as_secs_f64();
    assert_pattern_file(&back, 1, gib);
    std::fs::remove_file(&back).expect("remove download");
    eprintln!("1 GiB: nfs-cp up {up_s:.1} s, down {down_s:.1} s");
    // What NFS wrote, the native client reads.
    rt.block_on(async {
        let attr = vol.resolve("big.bin").await.expect("resolve");
        assert_eq!(attr.size, gib);
        for off in [0, 4096, (512 << 20) + 7, gib - 100] {
            let got = vol.read(attr.fid, off, 100).await.expect("native read");
            assert_eq!(got, pattern(1, off, 100), "native read at {off}");
        }
    });

    // What the native client wrote, NFS reads (nfs-cat).
    rt.block_on(async {
        let f = vol
            .create(ROOT_FILE_ID, "native.bin", 0o644, true)
            .await
            .expect("create");
        vol.write(f.fid, 0, &pattern(2, 0, 3 << 20), false)
            .await
            .expect("write");
    });
    let cat = Command::new("nfs-cat")
        .arg(gw.url("/native.bin"))
        .output()
        .expect("nfs-cat");
    assert!(cat.status.success());
    assert!(
        cat.stdout == pattern(2, 0, 3 << 20),
        "nfs-cat of native.bin"
    );

    // Namespace operations and their errors, through libnfs.
    op_ok(&gw, &["mkdir", "/d"]);
    op_ok(&gw, &["pwrite", "/d/f", "0", "hello"]);
    // Past 4 GiB: the offset and the size need all 64 bits.
    let far = 5_000_000_000u64;
    op_ok(&gw, &["pwrite", "/d/f", &far.to_string(), "far"]);
    assert!(op_ok(&gw, &["stat", "/d/f"]).contains(&format!("size={}", far + 3)));
    assert_eq!(op_ok(&gw, &["pread", "/d/f", &far.to_string(), "3"]), "far");
    rt.block_on(async {
        let f = vol.resolve("d/f").await.expect("native resolve");
        assert_eq!(f.size, far + 3);
        assert_eq!(vol.read(f.fid, far, 3).await.expect("read"), b"far");
        assert_eq!(vol.read(f.fid, 0, 5).await.expect("read"), b"hello");
    });
    op_ok(&gw, &["rename", "/d/f", "/d/g"]);
    assert_eq!(ls_names(&gw, "/d"), vec!["g".to_string()]);
    op_ok(&gw, &["truncate", "/d/g", "2"]);
    assert!(op_ok(&gw, &["stat", "/d/g"]).contains("size=2 "));
    assert_eq!(op_ok(&gw, &["pread", "/d/g", "0", "10"]), "he");
    op_err(&gw, &["rmdir", "/d"], "NFS3ERR_NOTEMPTY");
    op_err(&gw, &["mkdir", "/d"], "NFS3ERR_EXIST");
    op_err(&gw, &["rmdir", "/native.bin"], "NFS3ERR_NOTDIR");
    op_err(&gw, &["stat", "/nothing"], "NFS3ERR_NOENT");
    op_err(&gw, &["unlink", "/nothing"], "NFS3ERR_NOENT");
    op_ok(&gw, &["unlink", "/d/g"]);
    op_ok(&gw, &["rmdir", "/d"]);
    rt.block_on(async {
        assert!(vol.resolve("d").await.is_err(), "d is gone natively too");
    });
    let names = ls_names(&gw, "/");
    assert!(names.contains(&"big.bin".to_string()) && !names.contains(&"d".to_string()));
    gw.stop();
}

#[test]
fn nfs_lists_a_directory_of_10000_entries_completely() {
    need("nfs-ls");
    let server = DevServer::start(&brickd_exe(), 1);
    let scratch = tempfile::tempdir_in(brick_testkit::scratch_root()).expect("scratch");
    let rt = runtime();
    let vol = rt.block_on(volume(&server));
    const FILES: usize = 10_000;
    rt.block_on(async {
        let dir = vol.mkdir(ROOT_FILE_ID, "many", 0o755).await.expect("mkdir");
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..32 {
            let vol = vol.clone();
            tasks.spawn(async move {
                for i in (w..FILES).step_by(32) {
                    vol.create(dir.fid, &format!("f{i:05}"), 0o644, true)
                        .await
                        .expect("create");
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("creator");
        }
    });
    let gw = Gateway::start(&server, scratch.path(), free_port());
    let names = ls_names(&gw, "/many");
    let expected: Vec<String> = (0..FILES).map(|i| format!("f{i:05}")).collect();
    assert_eq!(names.len(), FILES, "nfs-ls listed {} entries", names.len());
    assert_eq!(names, expected);
    // Again after a gateway restart: listings resume from positions it has to find again.
    gw.stop();
    let gw = Gateway::start(&server, scratch.path(), free_port());
    assert_eq!(ls_names(&gw, "/many").len(), FILES);
}

#[test]
fn nfs_copy_survives_a_gateway_killed_and_restarted() {
    need("nfs-cp");
    let server = DevServer::start(&brickd_exe(), 1);
    let scratch = tempfile::tempdir_in(brick_testkit::scratch_root()).expect("scratch");
    let dir = scratch.path();
    let rt = runtime();
    let vol = rt.block_on(volume(&server));
    let port = free_port();
    let mut gw = Gateway::start(&server, dir, port);
    let root_before = mount_root_handle(port);

    let len = 256u64 << 20;
    let local = dir.join("src.bin");
    write_pattern_file(&local, 3, len);
    let mut copy = Command::new("nfs-cp")
        .arg(&local)
        .arg(gw.url("/copy.bin"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nfs-cp");
    // Kill the gateway once part of the file has arrived.
    brick_testkit::wait_until_partly_written(&rt, &vol, "copy.bin", len, "nfs-cp");
    gw.kill9();
    // Restarted at once: with a 0.5 s pause first, nfs-cp failed once in about ten runs while
    // the other NFS tests loaded the machine (libnfs's reconnect attempts are limited).
    let gw = Gateway::start(&server, dir, port);
    let status = brick_testkit::wait_exit(&mut copy, "nfs-cp", Duration::from_secs(120));
    let mut err = String::new();
    if let Some(mut e) = copy.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(status.success(), "nfs-cp after the restart: {status} {err}");
    let back = dir.join("back.bin");
    run(Command::new("nfs-cp").arg(gw.url("/copy.bin")).arg(&back));
    assert_pattern_file(&back, 3, len);
    // Handles do not change with the gateway's restart.
    assert_eq!(mount_root_handle(port), root_before);
    bad_requests(&gw, &vol, &rt);
    gw.stop();
}

/// One raw ONC RPC call (AUTH_NONE); returns the reply record.
fn rpc(stream: &mut TcpStream, xid: u32, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for w in [xid, 0, 2, prog, vers, proc_, 0, 0, 0, 0] {
        body.extend_from_slice(&w.to_be_bytes());
    }
    body.extend_from_slice(args);
    stream
        .write_all(&(0x8000_0000u32 | body.len() as u32).to_be_bytes())
        .expect("send");
    stream.write_all(&body).expect("send");
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).expect("reply mark");
    let len = (u32::from_be_bytes(head) & 0x7fff_ffff) as usize;
    let mut reply = vec![0u8; len];
    stream.read_exact(&mut reply).expect("reply");
    assert_eq!(&reply[0..4], &xid.to_be_bytes(), "reply xid");
    reply
}

fn word(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// accept_stat of an accepted reply (0: SUCCESS, 1: PROG_UNAVAIL, 2: PROG_MISMATCH,
/// 4: GARBAGE_ARGS).
fn accept_stat(reply: &[u8]) -> u32 {
    assert_eq!(word(reply, 8), 0, "MSG_ACCEPTED");
    word(reply, 20)
}

fn opaque(data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len() + (4 - data.len() % 4) % 4, 0);
    out
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    s
}

/// MOUNT v3 MNT of "/": the root file handle.
fn mount_root_handle(port: u16) -> Vec<u8> {
    let mut s = connect(port);
    let reply = rpc(&mut s, 1, 100_005, 3, 1, &opaque(b"/"));
    assert_eq!(accept_stat(&reply), 0);
    assert_eq!(word(&reply, 24), 0, "MNT3_OK");
    let len = word(&reply, 28) as usize;
    reply[32..32 + len].to_vec()
}

/// Our handle layout (docs/nfs.md): magic, volume id, file id, crc32c.
fn handle_of(vol_id: u32, fid: u64) -> Vec<u8> {
    let mut h = b"BKN1".to_vec();
    h.extend_from_slice(&vol_id.to_be_bytes());
    h.extend_from_slice(&fid.to_be_bytes());
    let crc = crc32c::crc32c(&h);
    h.extend_from_slice(&crc.to_be_bytes());
    h
}

/// NFS status of a GETATTR on `handle`.
fn getattr_status(s: &mut TcpStream, xid: u32, handle: &[u8]) -> u32 {
    let reply = rpc(s, xid, 100_003, 3, 1, &opaque(handle));
    assert_eq!(accept_stat(&reply), 0);
    word(&reply, 24)
}

fn bad_requests(gw: &Gateway, vol: &Volume, rt: &tokio::runtime::Runtime) {
    let mut s = connect(gw.port);
    assert_eq!(accept_stat(&rpc(&mut s, 10, 100_003, 3, 0, &[])), 0, "NULL");
    let root = mount_root_handle(gw.port);
    assert_eq!(getattr_status(&mut s, 11, &root), 0, "GETATTR of the root");
    assert_eq!(getattr_status(&mut s, 12, b"xyz"), 10001, "BADHANDLE");
    // A file that was removed: its handle is STALE.
    let gone = rt.block_on(async {
        let f = vol
            .create(ROOT_FILE_ID, "gone", 0o644, true)
            .await
            .expect("create");
        vol.unlink(ROOT_FILE_ID, "gone").await.expect("unlink");
        f.fid
    });
    assert_eq!(
        getattr_status(&mut s, 13, &handle_of(vol.id, gone)),
        70,
        "STALE"
    );
    assert_eq!(
        getattr_status(&mut s, 14, &handle_of(vol.id + 1000, ROOT_FILE_ID)),
        70,
        "another volume's handle is STALE"
    );
    // Arguments that do not decode: GARBAGE_ARGS, and the connection goes on.
    let truncated_lookup = &opaque(&root)[..8];
    assert_eq!(
        accept_stat(&rpc(&mut s, 15, 100_003, 3, 3, truncated_lookup)),
        4
    );
    let huge_handle = u32::MAX.to_be_bytes();
    assert_eq!(
        accept_stat(&rpc(&mut s, 16, 100_003, 3, 1, &huge_handle)),
        4
    );
    assert_eq!(
        accept_stat(&rpc(&mut s, 17, 100_003, 3, 7, &opaque(&root))),
        4,
        "WRITE"
    );
    assert_eq!(
        accept_stat(&rpc(&mut s, 18, 100_003, 4, 0, &[])),
        2,
        "NFSv4: mismatch"
    );
    assert_eq!(
        accept_stat(&rpc(&mut s, 19, 123_456, 1, 0, &[])),
        1,
        "PROG_UNAVAIL"
    );
    // Portmap GETPORT on the NFS port names this port (not nfsserve's private one).
    let mut getport = Vec::new();
    for w in [100_003u32, 3, 6, 0] {
        getport.extend_from_slice(&w.to_be_bytes());
    }
    let reply = rpc(&mut s, 22, 100_000, 2, 3, &getport);
    assert_eq!(accept_stat(&reply), 0);
    assert_eq!(word(&reply, 24), gw.port as u32, "GETPORT NFS v3 TCP");
    assert_eq!(getattr_status(&mut s, 20, &root), 0, "still serving");
    // A record larger than any request closes that connection only.
    let mut big = connect(gw.port);
    big.write_all(&0xffff_fff0u32.to_be_bytes()).expect("send");
    let mut byte = [0u8; 1];
    assert!(
        matches!(big.read(&mut byte), Ok(0) | Err(_)),
        "an oversized record closes the connection"
    );
    assert_eq!(
        getattr_status(&mut s, 21, &root),
        0,
        "other connections go on"
    );
    unstable_write_then_commit(&mut s, vol, rt);
    fsstat_reports_the_bricks(&mut s, &root, vol, rt);
    assert!(ls_names(gw, "/").contains(&"copy.bin".to_string()));
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(w)
}

/// WRITE with `stable = UNSTABLE` is answered UNSTABLE, COMMIT answers the same verifier, and
/// the data is in the volume.
fn unstable_write_then_commit(s: &mut TcpStream, vol: &Volume, rt: &tokio::runtime::Runtime) {
    let fid = rt.block_on(async {
        vol.create(ROOT_FILE_ID, "unstable.bin", 0o644, true)
            .await
            .expect("create")
            .fid
    });
    let handle = handle_of(vol.id, fid);
    let data = pattern(9, 0, 8192);
    let mut args = opaque(&handle);
    args.extend_from_slice(&4096u64.to_be_bytes());
    args.extend_from_slice(&(data.len() as u32).to_be_bytes());
    args.extend_from_slice(&0u32.to_be_bytes()); // UNSTABLE
    args.extend_from_slice(&opaque(&data));
    let reply = rpc(s, 30, 100_003, 3, 7, &args);
    assert_eq!(accept_stat(&reply), 0);
    assert_eq!(word(&reply, 24), 0, "WRITE status");
    assert_eq!((word(&reply, 28), word(&reply, 32)), (0, 0), "wcc_data");
    assert_eq!(word(&reply, 36), data.len() as u32, "count");
    assert_eq!(word(&reply, 40), 0, "committed: UNSTABLE");
    let write_verf = reply[44..52].to_vec();
    let mut args = opaque(&handle);
    args.extend_from_slice(&0u64.to_be_bytes());
    args.extend_from_slice(&0u32.to_be_bytes());
    let reply = rpc(s, 31, 100_003, 3, 21, &args);
    assert_eq!(accept_stat(&reply), 0);
    assert_eq!(word(&reply, 24), 0, "COMMIT status");
    assert_eq!(
        reply[36..44],
        write_verf[..],
        "COMMIT verifier = WRITE verifier"
    );
    rt.block_on(async {
        let got = vol.read(fid, 4096, 8192).await.expect("native read");
        assert_eq!(got, data);
    });
}

/// FSSTAT carries the bricks' numbers, not constants.
fn fsstat_reports_the_bricks(
    s: &mut TcpStream,
    root: &[u8],
    vol: &Volume,
    rt: &tokio::runtime::Runtime,
) {
    let reply = rpc(s, 32, 100_003, 3, 18, &opaque(root));
    assert_eq!(accept_stat(&reply), 0);
    assert_eq!(word(&reply, 24), 0, "FSSTAT status");
    // post_op_attr: present (1) and a fattr3 of 84 bytes, then tbytes, fbytes, abytes.
    let at = if word(&reply, 28) == 1 { 32 + 84 } else { 32 };
    let (total, free) = (u64_at(&reply, at), u64_at(&reply, at + 8));
    let statfs = rt.block_on(vol.statfs()).expect("statfs");
    assert_eq!(total, statfs.total_bytes, "FSSTAT tbytes");
    assert!(total > 0 && free <= total, "FSSTAT {total} {free}");
}
