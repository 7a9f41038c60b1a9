//! `brick mount` (FUSE) against a real `brickd dev`: fio with verification on the mount, a
//! directory of 10,000 small files created, listed, stat-ed, read and removed, the POSIX
//! operations the dataplane offers, data written through FUSE read back over NBD and the
//! native client and the reverse, and a clean unmount on SIGINT and by `brick umount`.

use brick_client::Client;
use brick_testkit::{pattern, run_tool as run, DevServer};
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SMALL_FILES: usize = 10_000;
const SMALL_BYTES: usize = 4096;

fn brick_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_brick"))
}

fn brickd_exe() -> PathBuf {
    let p = brick_exe().with_file_name("brickd");
    assert!(p.exists(), "{} not built", p.display());
    p
}

fn is_mounted(mountpoint: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let want = mountpoint.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_ref()))
}

/// A `brick mount` process, unmounted and stopped by its PID when dropped.
struct MountProc {
    child: Child,
    mountpoint: PathBuf,
}

impl MountProc {
    fn start(server: &DevServer, mountpoint: &Path, log: &Path) -> MountProc {
        std::fs::create_dir_all(mountpoint).expect("mount point");
        // /proc/mounts lists canonical paths.
        let mountpoint = &mountpoint.canonicalize().expect("canonical mount point");
        let out = std::fs::File::create(log).expect("mount log");
        let child = Command::new(brick_exe())
            .arg("--endpoints")
            .arg(server.endpoints_path())
            .arg("mount")
            .arg("dev")
            .arg(mountpoint)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn brick mount");
        let mut m = MountProc {
            child,
            mountpoint: mountpoint.to_path_buf(),
        };
        let start = Instant::now();
        while !is_mounted(mountpoint) {
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!(
                    "brick mount exited ({status}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(start.elapsed() < Duration::from_secs(20), "not mounted");
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        brick_testkit::wait_exit(&mut self.child, "brick mount", Duration::from_secs(10))
    }
}

impl Drop for MountProc {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) {
            let _ = Command::new(brick_exe())
                .arg("umount")
                .arg(&self.mountpoint)
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn fuse_mount_serves_posix_operations() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the FUSE tests need it (CI runs as root with /dev/fuse)"
    );
    let server = DevServer::start(&brickd_exe(), 1);
    let scratch = tempfile::tempdir_in(brick_testkit::scratch_root()).expect("scratch");
    let mnt = scratch.path().canonicalize().expect("scratch").join("mnt");
    let mut mount = MountProc::start(&server, &mnt, &scratch.path().join("mount.log"));
    let rt = brick_testkit::runtime();
    let client = rt
        .block_on(Client::connect(server.client_config()))
        .expect("connect");
    let vol = rt.block_on(client.open_volume("dev")).expect("open");

    // fio with verification through the kernel's page cache and FUSE.
    let fio = run(Command::new("fio")
        .args(["--name=verify", "--rw=randwrite", "--bs=4k", "--iodepth=8"])
        .args([
            "--ioengine=io_uring",
            "--size=16M",
            "--verify=crc32c",
            "--do_verify=1",
            // No verify state file left in the test's working directory.
            "--verify_state_save=0",
        ])
        .args(["--output-format=json"])
        .arg(format!("--directory={}", mnt.display())));
    let doc: Value = serde_json::from_str(&fio[fio.find('{').expect("fio JSON")..]).expect("JSON");
    assert_eq!(doc["jobs"][0]["error"], Value::from(0), "{doc:#}");

    // POSIX operations, checked through the native client.
    std::fs::create_dir(mnt.join("docs")).expect("mkdir");
    let text = pattern(5, 0, 100_000);
    std::fs::write(mnt.join("docs/a"), &text).expect("write a");
    std::fs::rename(mnt.join("docs/a"), mnt.join("b")).expect("rename");
    let b = rt.block_on(vol.resolve("b")).expect("b natively");
    assert_eq!(b.size, text.len() as u64);
    let native = rt
        .block_on(vol.read(b.fid, 0, text.len() as u32))
        .expect("read b");
    assert!(native == text, "FUSE write read natively");
    std::os::unix::fs::symlink("b", mnt.join("link")).expect("symlink");
    assert_eq!(
        std::fs::read_link(mnt.join("link")).expect("readlink"),
        Path::new("b")
    );
    assert!(std::fs::read(mnt.join("link")).expect("through the link") == text);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("b"))
        .expect("open b");
    f.set_len(1000).expect("truncate");
    drop(f);
    assert_eq!(rt.block_on(vol.getattr(b.fid)).expect("getattr").size, 1000);
    assert_eq!(std::fs::metadata(mnt.join("b")).expect("stat").size(), 1000);
    assert!(std::fs::remove_dir(mnt.join("missing")).is_err());
    std::fs::write(mnt.join("docs/x"), b"x").expect("x");
    let not_empty = std::fs::remove_dir(mnt.join("docs")).expect_err("rmdir of a non-empty dir");
    assert_eq!(not_empty.raw_os_error(), Some(libc::ENOTEMPTY));
    std::fs::remove_file(mnt.join("docs/x")).expect("unlink");
    std::fs::remove_dir(mnt.join("docs")).expect("rmdir");

    // Written natively, read through FUSE, and never stale after the change: each open
    // drops the kernel's cached pages.
    let before = std::fs::read(mnt.join("b")).expect("read b");
    assert!(before == text[..1000]);
    let newer = pattern(6, 0, 1000);
    rt.block_on(vol.write(b.fid, 0, &newer, false))
        .expect("native write");
    assert!(
        std::fs::read(mnt.join("b")).expect("reread") == newer,
        "stale data after a native write"
    );

    // Written through FUSE, read over brickd dev's NBD gateway.
    let img = pattern(7, 0, 8 << 20);
    std::fs::write(mnt.join("img.raw"), &img).expect("image through FUSE");
    let endpoints: Value = serde_json::from_str(
        &std::fs::read_to_string(server.endpoints_path()).expect("endpoints.json"),
    )
    .expect("JSON");
    let nbd = endpoints["nbd"].as_str().expect("nbd address");
    let copy = scratch.path().join("img.copy");
    run(Command::new("nbdcopy")
        .arg(format!("nbd://{nbd}/img.raw"))
        .arg(&copy));
    assert!(
        std::fs::read(&copy).expect("copy") == img,
        "FUSE write read over NBD"
    );

    small_files(&mnt.join("small"));

    // A clean unmount on SIGINT.
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(mount.child.id() as i32, libc::SIGINT) };
    let status = mount.wait_exit();
    assert!(status.success(), "brick mount exit status {status}");
    assert!(!is_mounted(&mnt), "still mounted after SIGINT");

    // `brick umount` ends a mount, and its process exits.
    let mut again = MountProc::start(&server, &mnt, &scratch.path().join("mount2.log"));
    assert!(std::fs::read(mnt.join("img.raw")).expect("after remount") == img);
    run(Command::new(brick_exe()).arg("umount").arg(&mnt));
    assert!(again.wait_exit().success());
    assert!(!is_mounted(&mnt));
}

/// 10,000 x 4 KiB in one directory: create, list, stat, read, delete.
fn small_files(dir: &Path) {
    std::fs::create_dir(dir).expect("mkdir small");
    let started = Instant::now();
    for i in 0..SMALL_FILES {
        std::fs::write(
            dir.join(format!("f{i:05}")),
            pattern(i as u64, 0, SMALL_BYTES),
        )
        .expect("create");
    }
    let created = started.elapsed();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), SMALL_FILES, "listing is complete");
    assert_eq!(names.first().map(String::as_str), Some("f00000"));
    for i in 0..SMALL_FILES {
        let m = std::fs::metadata(dir.join(format!("f{i:05}"))).expect("stat");
        assert_eq!(m.size(), SMALL_BYTES as u64);
    }
    for i in (0..SMALL_FILES).step_by(7) {
        let got = std::fs::read(dir.join(format!("f{i:05}"))).expect("read");
        assert!(got == pattern(i as u64, 0, SMALL_BYTES), "file {i}");
    }
    for i in 0..SMALL_FILES {
        std::fs::remove_file(dir.join(format!("f{i:05}"))).expect("delete");
    }
    assert_eq!(std::fs::read_dir(dir).expect("list").count(), 0);
    std::fs::remove_dir(dir).expect("rmdir small");
    eprintln!(
        "{SMALL_FILES} small files: created in {created:?}, all steps in {:?}",
        started.elapsed()
    );
}
