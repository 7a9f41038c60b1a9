//! Crash test: brickd is SIGKILLed while clients write, create, rename and remove; after a
//! restart every write acknowledged before a successful fsync is there, every file reads to its
//! end without error, and file ids are unchanged.

use brick_client::{Client, Volume};
use brick_testkit::{pattern, DevServer};
use brick_wire::{ErrorCode, FileId, SetAttr, ROOT_FILE_ID};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROUNDS: u32 = 3;
const WRITERS: u64 = 4;
const CHUNK: usize = 256 * 1024;
const CHUNKS_PER_FSYNC: u64 = 4;
/// Every load loop is bounded in time and count.
const LOAD_TIME: Duration = Duration::from_millis(1500);
const LOAD_CHUNKS_MAX: u64 = 4000;

struct Durable {
    /// file name -> (fid, bytes from 0 that were acknowledged before a successful fsync)
    data: Mutex<HashMap<String, (FileId, Arc<AtomicU64>)>>,
    /// small files created, written and fsynced: name -> (fid, seed)
    small: Mutex<HashMap<String, (FileId, u64)>>,
    /// names whose unlink was acknowledged (a SIGKILL keeps what the kernel has)
    removed: Mutex<Vec<String>>,
}

fn brickd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_brickd"))
}

async fn writer(
    vol: Volume,
    dir: FileId,
    name: String,
    seed: u64,
    direct: bool,
    durable: Arc<Durable>,
) {
    let Ok(attr) = vol.create(dir, &name, 0o644, true).await else {
        return;
    };
    if direct {
        // Sized up front, the brick opens it with O_DIRECT (io.mode auto).
        if vol
            .setattr(
                attr.fid,
                SetAttr {
                    size: Some(64 << 20),
                    ..SetAttr::NONE
                },
            )
            .await
            .is_err()
        {
            return;
        }
    }
    if vol.fsync(attr.fid).await.is_err() {
        return;
    }
    let acked = Arc::new(AtomicU64::new(0));
    durable
        .data
        .lock()
        .unwrap()
        .insert(name, (attr.fid, acked.clone()));
    let start = Instant::now();
    for chunk in 0..LOAD_CHUNKS_MAX {
        if start.elapsed() > LOAD_TIME * 4 {
            break;
        }
        let offset = chunk * CHUNK as u64;
        if vol
            .write(attr.fid, offset, &pattern(seed, offset, CHUNK), false)
            .await
            .is_err()
        {
            return;
        }
        if (chunk + 1) % CHUNKS_PER_FSYNC == 0 {
            if vol.fsync(attr.fid).await.is_err() {
                return;
            }
            acked.store(offset + CHUNK as u64, Ordering::Release);
        }
    }
}

async fn namespace_churn(vol: Volume, dir: FileId, round: u32, durable: Arc<Durable>) {
    for i in 0..LOAD_CHUNKS_MAX {
        let name = format!("small-{round}-{i}");
        let seed = (round as u64) << 32 | i;
        let Ok(a) = vol.create(dir, &name, 0o644, true).await else {
            return;
        };
        if vol
            .write(a.fid, 0, &pattern(seed, 0, 4096 + i as usize % 3000), false)
            .await
            .is_err()
        {
            return;
        }
        if vol.fsync(a.fid).await.is_err() {
            return;
        }
        durable
            .small
            .lock()
            .unwrap()
            .insert(name.clone(), (a.fid, seed));
        if i % 3 == 1 {
            let renamed = format!("{name}-renamed");
            durable.small.lock().unwrap().remove(&name);
            if vol.rename(dir, &name, dir, &renamed).await.is_err()
                || vol.fsync(a.fid).await.is_err()
            {
                return;
            }
            durable.small.lock().unwrap().insert(renamed, (a.fid, seed));
        } else if i % 3 == 2 {
            durable.small.lock().unwrap().remove(&name);
            if vol.unlink(dir, &name).await.is_err() {
                return;
            }
            durable.removed.lock().unwrap().push(name);
        }
    }
}

async fn verify(vol: &Volume, dir: FileId, durable: &Durable) {
    let data: Vec<_> = durable
        .data
        .lock()
        .unwrap()
        .iter()
        .map(|(n, (f, a))| (n.clone(), *f, a.load(Ordering::Acquire)))
        .collect();
    for (name, fid, acked) in data {
        let attr = vol
            .lookup(dir, &name)
            .await
            .unwrap_or_else(|e| panic!("{name} lost after crash: {e}"));
        assert_eq!(attr.fid, fid, "{name}: file id changed across the crash");
        assert!(
            attr.size >= acked,
            "{name}: size {} < {acked} acknowledged bytes",
            attr.size
        );
        let mut offset = 0;
        while offset < attr.size {
            let len = (attr.size - offset).min(1 << 20) as u32;
            let got = vol
                .read(fid, offset, len)
                .await
                .unwrap_or_else(|e| panic!("{name} unreadable at {offset}: {e}"));
            assert_eq!(got.len(), len as usize, "{name}: short read at {offset}");
            let check_end = acked.min(offset + len as u64);
            if offset < check_end {
                let n = (check_end - offset) as usize;
                let seed = seed_of(&name);
                assert!(
                    got[..n] == pattern(seed, offset, n)[..],
                    "{name}: acknowledged bytes at {offset} differ"
                );
            }
            offset += len as u64;
        }
    }
    let small: Vec<_> = durable
        .small
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| (n.clone(), *v))
        .collect();
    for (name, (fid, seed)) in small {
        let attr = vol
            .lookup(dir, &name)
            .await
            .unwrap_or_else(|e| panic!("{name} lost after crash: {e}"));
        assert_eq!(attr.fid, fid, "{name}: file id changed across the crash");
        let got = vol
            .read(fid, 0, attr.size as u32)
            .await
            .expect("read small file");
        assert!(
            got == pattern(seed, 0, got.len()),
            "{name}: content differs"
        );
    }
}

fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn fsynced_writes_survive_sigkill_and_files_stay_readable() {
    let mut server = DevServer::start(brickd(), 2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for round in 0..ROUNDS {
        let durable = Arc::new(Durable {
            data: Mutex::new(HashMap::new()),
            small: Mutex::new(HashMap::new()),
            removed: Mutex::new(Vec::new()),
        });
        let dir = rt.block_on(async {
            let client = Client::connect(server.client_config())
                .await
                .expect("connect");
            let vol = client.open_volume("dev").await.expect("open dev");
            let dir = vol
                .mkdir(ROOT_FILE_ID, &format!("round{round}"), 0o755)
                .await
                .expect("mkdir")
                .fid;
            let mut tasks = Vec::new();
            for w in 0..WRITERS {
                let name = format!("data-{w}");
                let seed = seed_of(&name);
                tasks.push(tokio::spawn(writer(
                    vol.clone(),
                    dir,
                    name,
                    seed,
                    w % 2 == 0,
                    durable.clone(),
                )));
            }
            tasks.push(tokio::spawn(namespace_churn(
                vol.clone(),
                dir,
                round,
                durable.clone(),
            )));
            tokio::time::sleep(LOAD_TIME).await;
            server.kill9();
            for t in tasks {
                tokio::time::timeout(Duration::from_secs(60), t)
                    .await
                    .expect("writers notice the crash")
                    .expect("writer task");
            }
            dir
        });
        let acked: u64 = durable
            .data
            .lock()
            .unwrap()
            .values()
            .map(|(_, a)| a.load(Ordering::Acquire))
            .sum();
        assert!(
            acked > 0,
            "round {round}: no write was acknowledged before the kill; the test proves nothing"
        );
        server.restart();
        rt.block_on(async {
            let client = Client::connect(server.client_config())
                .await
                .expect("reconnect");
            let vol = client.open_volume("dev").await.expect("open dev");
            let dir_attr = vol
                .lookup(ROOT_FILE_ID, &format!("round{round}"))
                .await
                .expect("round dir");
            assert_eq!(dir_attr.fid, dir);
            verify(&vol, dir, &durable).await;
            let removed = durable.removed.lock().unwrap().clone();
            for name in removed {
                let err = vol
                    .lookup(dir, &name)
                    .await
                    .expect_err("a removed name came back after the crash");
                assert_eq!(err.code(), Some(ErrorCode::NotFound), "{name}: {err}");
            }
        });
        eprintln!(
            "round {round}: {} MiB acknowledged, {} small files verified",
            acked >> 20,
            durable.small.lock().unwrap().len()
        );
    }
    let status = server.terminate();
    assert!(status.success(), "clean shutdown after SIGTERM: {status}");
}
