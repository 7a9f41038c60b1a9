//! One client outlives a server crash: after brickd is SIGKILLed and restarted (its per-core
//! ports change), the same `Client` reconnects, re-learns the shard addresses, and idempotent
//! requests succeed; the file ids it holds are still valid.

use brick_client::{Client, Volume};
use brick_testkit::{pattern, DevServer};
use brick_wire::ROOT_FILE_ID;
use std::path::Path;

/// A one-thread runtime and the dev volume, opened through a client of `server`.
fn open_dev(server: &DevServer) -> (tokio::runtime::Runtime, Volume) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt
        .block_on(Client::connect(server.client_config()))
        .expect("connect");
    let vol = rt.block_on(client.open_volume("dev")).expect("open");
    (rt, vol)
}

/// The log's lines saying a PG map was installed, in order.
fn map_installs(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" installed ")).collect()
}

#[test]
fn a_client_reconnects_after_the_server_restarts() {
    let mut server = DevServer::start(Path::new(env!("CARGO_BIN_EXE_brickd")), 2);
    let (rt, vol) = open_dev(&server);
    let data = pattern(7, 0, 1 << 20);
    let fid = rt.block_on(async {
        let a = vol
            .create(ROOT_FILE_ID, "survivor", 0o644, true)
            .await
            .unwrap();
        vol.write(a.fid, 0, &data, false).await.unwrap();
        vol.fsync(a.fid).await.unwrap();
        a.fid
    });

    server.kill9();
    // While the server is down, requests fail with a clear error once retries are exhausted.
    let err = rt
        .block_on(vol.getattr(fid))
        .expect_err("no server is running");
    assert!(
        err.to_string().contains("disconnected") || err.to_string().contains("no server reachable"),
        "{err}"
    );

    server.restart();
    rt.block_on(async {
        let got = vol
            .read(fid, 0, data.len() as u32)
            .await
            .expect("same client, same file id, after restart");
        assert!(got == data, "data differs after restart");
        let attr = vol.lookup(ROOT_FILE_ID, "survivor").await.unwrap();
        assert_eq!(attr.fid, fid);
        // Writes work again too.
        vol.write(fid, 0, &data[..4096], true)
            .await
            .expect("write after reconnect");
    });
    assert!(server.terminate().success());
}

/// A single-node cluster frozen for 2 s (SIGSTOP: a stuck disk, a paused VM) is nobody's
/// failure, since every member was frozen alike: when it resumes, no PG changes its map, and
/// a write sent during the freeze completes.
#[test]
fn a_frozen_single_node_cluster_resumes_without_failover() {
    let mut server = DevServer::start(Path::new(env!("CARGO_BIN_EXE_brickd")), 2);
    let (rt, vol) = open_dev(&server);
    let before = pattern(8, 0, 1 << 20);
    let during = pattern(9, 0, 1 << 20);
    let fid = rt.block_on(async {
        let a = vol
            .create(ROOT_FILE_ID, "frozen", 0o644, true)
            .await
            .unwrap();
        vol.write(a.fid, 0, &before, true).await.unwrap();
        a.fid
    });
    let installed_before = map_installs(&server.log()).len();

    server.freeze();
    rt.block_on(async {
        let thaw_later = async {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            server.thaw();
        };
        let (written, ()) = tokio::join!(vol.write(fid, 0, &during, true), thaw_later);
        written.expect("a write sent during the freeze completes after it");
    });
    // Long enough for a failover (1 s of silence) and a removal's grace (2 s) to have shown.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let log = server.log();
    let installed_after = &map_installs(&log)[installed_before..];
    assert!(
        installed_after.is_empty(),
        "{} maps changed after the freeze, e.g. {:?}",
        installed_after.len(),
        &installed_after[..installed_after.len().min(5)]
    );
    let got = rt
        .block_on(vol.read(fid, 0, during.len() as u32))
        .expect("read");
    assert!(
        got == during,
        "the write sent during the freeze did not land"
    );
    assert!(server.terminate().success());
}
