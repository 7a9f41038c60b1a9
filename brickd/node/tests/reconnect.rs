//! One client outlives a server crash: after brickd is SIGKILLed and restarted (its per-core
//! ports change), the same `Client` reconnects, re-learns the shard addresses, and idempotent
//! requests succeed; the file ids it holds are still valid.

use brick_client::Client;
use brick_testkit::{pattern, DevServer};
use brick_wire::ROOT_FILE_ID;
use std::path::Path;

#[test]
fn a_client_reconnects_after_the_server_restarts() {
    let mut server = DevServer::start(Path::new(env!("CARGO_BIN_EXE_brickd")), 2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt
        .block_on(Client::connect(server.client_config()))
        .expect("connect");
    let vol = rt.block_on(client.open_volume("dev")).expect("open");
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
