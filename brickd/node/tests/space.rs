//! A deleted file's space comes back at once: no core keeps a descriptor of a file that was
//! unlinked or replaced by a rename (a descriptor keeps the inode, its blocks, and for the page
//! cache its dirty pages, alive).

use brick_client::Client;
use brick_testkit::DevServer;
use std::path::Path;
use std::time::{Duration, Instant};

fn brickd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_brickd"))
}

/// The targets of the process's descriptors that point into `dir`.
fn open_files_under(pid: u32, dir: &Path) -> Vec<String> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("list the process's fds");
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .map(|target| target.display().to_string())
        .collect()
}

const FILES: usize = 8;
const FILE_BYTES: usize = 2 << 20;
/// Far above the sweep interval (UNLINKED_SWEEP_INTERVAL_MS), bounded.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

#[test]
fn unlinked_and_replaced_files_are_not_kept_open() {
    let server = DevServer::start(brickd(), 2);
    let pid = server.pid().expect("brickd runs");
    let bricks = server.dir.canonicalize().expect("the server's directory");
    let rt = brick_testkit::runtime();
    rt.block_on(async {
        let client = Client::connect(server.client_config()).await.unwrap();
        let vol = client.open_volume("dev").await.unwrap();
        for i in 0..FILES {
            let a = vol.create(1, &format!("f{i}"), 0o644, true).await.unwrap();
            let data = brick_testkit::pattern(i as u64, 0, FILE_BYTES);
            assert_eq!(
                vol.write(a.fid, 0, &data, false).await.unwrap() as usize,
                FILE_BYTES
            );
            assert_eq!(vol.read(a.fid, 0, 4096).await.unwrap(), data[..4096]);
        }
    });
    let held = open_files_under(pid, &bricks);
    assert!(
        held.iter().any(|t| t.contains("/f0")),
        "reads and writes keep files open (else this test checks nothing): {held:?}"
    );
    rt.block_on(async {
        let client = Client::connect(server.client_config()).await.unwrap();
        let vol = client.open_volume("dev").await.unwrap();
        for i in 0..FILES - 1 {
            vol.unlink(1, &format!("f{i}")).await.unwrap();
        }
        // The last one is replaced by a rename over it.
        vol.create(1, "newer", 0o644, true).await.unwrap();
        vol.rename(1, "newer", 1, &format!("f{}", FILES - 1))
            .await
            .unwrap();
    });
    let start = Instant::now();
    loop {
        let deleted: Vec<String> = open_files_under(pid, &bricks)
            .into_iter()
            .filter(|t| t.ends_with(" (deleted)"))
            .collect();
        if deleted.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < RELEASE_WAIT,
            "brickd still holds deleted files after {RELEASE_WAIT:?}: {deleted:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
