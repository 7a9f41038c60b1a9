//! The `brick` CLI against a real `brickd dev`: files, volumes, bench, all with --json.

use brick_bench::BenchReport;
use brick_cluster::mgmt::{
    Peers, VolumeConfig, VolumeDeleted, VolumeDetail, VolumeStatusReply, Volumes,
};
use brick_cluster::report::{
    AttrKind, ErrorReport, FileAttrs, Listing, MkdirSummary, PutSummary, RmSummary,
};
use brick_cluster::VolumeStatus;
use brick_testkit::{pattern, DevServer};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn brick_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_brick"))
}

/// brickd is built into the same directory by the same `cargo test` run.
fn brickd_exe() -> PathBuf {
    let p = brick_exe().with_file_name("brickd");
    assert!(
        p.exists(),
        "{} not built; run the workspace tests (cargo test --workspace)",
        p.display()
    );
    p
}

fn brick(server: &DevServer, args: &[&str]) -> Output {
    Command::new(brick_exe())
        .arg("--endpoints")
        .arg(server.endpoints_path())
        .arg("--quiet")
        .args(args)
        .output()
        .expect("run brick")
}

fn ok(server: &DevServer, args: &[&str]) -> String {
    let out = brick(server, args);
    assert!(
        out.status.success(),
        "brick {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// `brick --json ARGS`, read into the type the CLI prints it from: a field renamed or missing
/// on either side fails here.
fn json<T: DeserializeOwned>(server: &DevServer, args: &[&str]) -> T {
    let mut with_json = vec!["--json"];
    with_json.extend_from_slice(args);
    let text = ok(server, &with_json);
    assert_eq!(
        text.trim().lines().count(),
        1,
        "--json prints exactly one document: {text}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("brick {args:?}: not JSON ({e}): {text}"))
}

fn write_random_file(path: &Path, size: u64, seed: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut at = 0;
    while at < size {
        let n = (size - at).min(1 << 20) as usize;
        f.write_all(&pattern(seed, at, n)).unwrap();
        at += n as u64;
    }
    f.flush().unwrap();
}

fn assert_same_file(a: &Path, b: &Path) {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    assert_eq!(
        fa.metadata().unwrap().len(),
        fb.metadata().unwrap().len(),
        "sizes differ"
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            break;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        assert!(ba[..n] == bb[..n], "contents differ near byte {offset}");
        offset += n as u64;
    }
}

#[test]
fn one_gib_put_get_survives_sigkill_and_restart() {
    let mut server = DevServer::start(&brickd_exe(), 2);
    let local = server.dir.join("big.bin");
    let back = server.dir.join("big.back");
    // 1 GiB plus a tail that is not a multiple of 4 KiB.
    write_random_file(&local, (1 << 30) + 12_345, 42);
    ok(&server, &["mkdir", "-p", "dev/images"]);
    let put: PutSummary = json(
        &server,
        &["put", local.to_str().unwrap(), "dev/images/big.bin"],
    );
    assert_eq!(put.bytes, (1u64 << 30) + 12_345);
    assert_eq!(put.attr.size, put.bytes);
    ok(
        &server,
        &["get", "dev/images/big.bin", back.to_str().unwrap()],
    );
    assert_same_file(&local, &back);
    // The brick holds the data as a plain file: recoverable with cp.
    assert_same_file(&local, &server.dir.join("bricks/b0/data/images/big.bin"));

    server.kill9();
    server.restart();
    std::fs::remove_file(&back).unwrap();
    ok(
        &server,
        &["get", "dev/images/big.bin", back.to_str().unwrap()],
    );
    assert_same_file(&local, &back);
    assert!(server.terminate().success());
}

#[test]
fn volumes_files_and_bench_report_json() {
    let server = DevServer::start(&brickd_exe(), 2);
    let brick_dir = server.dir.join("extra-brick");
    let brick_arg = format!("dev:{}", brick_dir.display());

    let created: VolumeConfig = json(
        &server,
        &["volume", "create", "one", "replica", "1", &brick_arg],
    );
    assert_eq!(created.replica, 1);
    assert_eq!(created.status, VolumeStatus::Created);
    let bad = brick(
        &server,
        &["volume", "create", "two", "replica", "2", &brick_arg],
    );
    assert!(
        !bad.status.success(),
        "a replica-2 volume with one brick must be refused"
    );
    let started: VolumeConfig = json(&server, &["volume", "start", "one"]);
    assert_eq!(started.status, VolumeStatus::Started);
    let info: VolumeDetail = json(&server, &["volume", "info", "dev"]);
    assert_eq!(info.volume.replica, 3);
    assert_eq!(
        info.volume.copies_stored, 3,
        "replica 3 stores three copies"
    );
    assert!(info.volume.replication.contains("primary"));
    assert_eq!(info.pgs.len(), info.volume.pg_count as usize);
    assert!(info.pgs.iter().all(|p| p.writable && p.primary.is_some()));
    let set: VolumeConfig = json(&server, &["volume", "set", "one", "io.mode", "buffered"]);
    assert_eq!(set.options["io.mode"], "buffered");
    assert!(
        !brick(&server, &["volume", "set", "one", "io.mode", "sideways"])
            .status
            .success()
    );
    let list: Volumes = json(&server, &["volume", "list"]);
    assert_eq!(list.volumes.len(), 2);
    let status: VolumeStatusReply = json(&server, &["volume", "status", "one"]);
    assert!(status.bricks[0].online);
    assert!(
        status.bricks[0].files_indexed.is_some(),
        "a brick of the node answering"
    );
    let peers: Peers = json(&server, &["peer", "list"]);
    assert_eq!(peers.peers[0].name, "dev");
    assert!(peers.peers[0].is_self && peers.peers[0].alive);

    // Files on the new volume.
    let made: MkdirSummary = json(&server, &["mkdir", "-p", "one/a/b/c"]);
    assert_eq!(made.attr.kind, AttrKind::Dir);
    assert!(
        !brick(&server, &["mkdir", "one/x/y"]).status.success(),
        "mkdir without -p needs the parent"
    );
    let small = server.dir.join("small.txt");
    std::fs::write(&small, b"hello brickd\n").unwrap();
    let _: PutSummary = json(
        &server,
        &["put", small.to_str().unwrap(), "one/a/b/c/hello.txt"],
    );
    let stat: FileAttrs = json(&server, &["stat", "one/a/b/c/hello.txt"]);
    assert_eq!(stat.size, 13);
    assert_eq!(stat.kind, AttrKind::File);
    let raw: Value = json(&server, &["stat", "one/a/b/c/hello.txt"]);
    assert!(
        raw["pg"].is_u64(),
        "bench/compare-gluster.sh reads pg: {raw}"
    );
    let ls: Listing = json(&server, &["ls", "one/a/b/c"]);
    let names: Vec<&str> = ls.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["hello.txt"],
        "no temporary upload names left behind"
    );
    assert_eq!(
        std::fs::read(brick_dir.join("data/a/b/c/hello.txt")).unwrap(),
        b"hello brickd\n"
    );
    // The dev volume keeps three copies: a file put through the client lands on every brick.
    let _: PutSummary = json(&server, &["put", small.to_str().unwrap(), "dev/copied.txt"]);
    for b in 0..3 {
        let copy = server.dir.join(format!("bricks/b{b}/data/copied.txt"));
        assert_eq!(
            std::fs::read(&copy).unwrap_or_else(|e| panic!("{}: {e}", copy.display())),
            b"hello brickd\n",
            "brick b{b} holds the replica"
        );
    }
    assert!(
        !brick(&server, &["rm", "one/a"]).status.success(),
        "rm of a non-empty directory needs -r"
    );
    let rm: RmSummary = json(&server, &["rm", "-r", "one/a"]);
    assert_eq!(rm.entries, 4);
    assert!(!brick(&server, &["stat", "one/a"]).status.success());

    // Bench reports the documented fields.
    for workload in ["randwrite-4k", "seqread-1m"] {
        let b: Value = json(
            &server,
            &[
                "bench",
                "--volume",
                "one",
                "--workload",
                workload,
                "--qd",
                "4",
                "--seconds",
                "1",
                "--size",
                "8388608",
            ],
        );
        assert!(b["iops"].as_f64().unwrap() > 0.0, "{b}");
        assert!(b["mib_s"].as_f64().unwrap() > 0.0);
        for p in ["p50", "p99", "p999", "max"] {
            assert!(b["lat_us"][p].as_u64().unwrap() > 0, "{p} missing in {b}");
        }
        assert_eq!(b["errors"], 0);
        let typed: BenchReport = serde_json::from_value(b.clone())
            .unwrap_or_else(|e| panic!("the bench report's fields: {e}: {b}"));
        assert_eq!(typed.workload.name(), workload);
    }

    let stopped: VolumeConfig = json(&server, &["volume", "stop", "one"]);
    assert_eq!(stopped.status, VolumeStatus::Stopped);
    assert!(
        !brick(&server, &["ls", "one/"]).status.success(),
        "a stopped volume is not served"
    );
    let deleted: VolumeDeleted = json(&server, &["volume", "delete", "one"]);
    assert_eq!(deleted.deleted, "one");
    assert!(
        brick_dir.join("data").exists(),
        "deleting a volume leaves brick data on disk"
    );

    // Errors are JSON too with --json, and exit non-zero.
    let out = brick(&server, &["--json", "stat", "dev/does-not-exist"]);
    assert!(!out.status.success());
    let err: ErrorReport = serde_json::from_slice(&out.stdout).expect("error as JSON");
    assert!(err.error.contains("no such file"), "{}", err.error);
}
