//! brick-faultfs itself: injected errors reach the caller with their errno, and a cut forgets
//! exactly the writes no fsync made durable. Being an integration test of this package also
//! makes `cargo test --workspace` build the `brick-faultfs` binary the fault tests mount.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use brick_testkit::faultfs::FaultFs;

fn mounted() -> (tempfile::TempDir, FaultFs) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FaultFs::mount(&dir.path().join("backing"), &dir.path().join("mnt"));
    (dir, fs)
}

#[test]
fn injected_errno_reaches_the_caller_until_cleared() {
    let (_dir, fs) = mounted();
    let path = fs.mountpoint.join("a-file");
    std::fs::write(&path, b"before").expect("write through faultfs");
    fs.fail("write", "a-file", "ENOSPC");
    let err = OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.write_all_at(b"x", 0).and_then(|_| f.sync_all()))
        .expect_err("write must fail while the fault is set");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(fs.stat("injected") >= 1);
    // Other files are not affected.
    std::fs::write(fs.mountpoint.join("other"), b"fine").expect("other file");
    fs.clear();
    let f = OpenOptions::new().write(true).open(&path).expect("open");
    f.write_all_at(b"after!", 0).expect("write after clear");
    f.sync_all().expect("fsync after clear");
    assert_eq!(std::fs::read(&path).expect("read"), b"after!");
}

#[test]
fn cut_forgets_unsynced_writes_and_keeps_synced_ones() {
    let (_dir, mut fs) = mounted();
    let path = fs.mountpoint.join("data");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("create");
    f.write_all(&[1u8; 8192]).expect("write");
    f.sync_all().expect("fsync");
    f.write_all_at(&[2u8; 4096], 4096).expect("overwrite");
    f.write_all_at(&[3u8; 4096], 8192).expect("extend");
    f.flush().expect("flush");
    assert!(fs.stat("unsynced_bytes") >= 8192);
    let forgotten = fs.cut();
    assert_eq!(forgotten, 8192, "two 4 KiB writes were never synced");
    // After the cut the disk is gone until the machine comes back.
    let mut buf = Vec::new();
    let after_cut = std::fs::File::open(&path).and_then(|mut g| g.read_to_end(&mut buf));
    assert!(after_cut.is_err(), "reads after a cut must fail");
    drop(f);
    fs.remount();
    let content = std::fs::read(&path).expect("read after remount");
    assert_eq!(content, vec![1u8; 8192], "only the synced content survives");
}
