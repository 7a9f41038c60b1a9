//! Multi-node clusters on a real etcd (Debian's etcd-server) with real `brickd serve`
//! processes on loopback: the etcd store's transaction semantics, peers and their liveness
//! leases, volumes across nodes and their placement-group maps.

use brick_client::{Client, ClientConfig};
use brick_cluster::mgmt::{PeerList, VolumeCreate, VolumeInfo, VolumeStart};
use brick_cluster::{Cluster, ClusterStore, EtcdStore, PgMap, TxnOp};
use brick_testkit::{runtime, scratch_root, Etcd, ServeNode};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BRICKD: &str = env!("CARGO_BIN_EXE_brickd");
const PASSWORD: &str = "multinode-test-password";

#[test]
fn etcd_store_transactions_watches_and_pg_map_epochs() {
    let etcd = Etcd::start();
    runtime().block_on(async {
        let store = EtcdStore::connect(&etcd.endpoint).await.expect("connect");
        let mut changes = store.watch("raw/").await.expect("watch");
        assert!(store.get("raw/a").await.unwrap().is_none());
        // Absent check: only the first create wins.
        let create = |v: &'static [u8]| {
            (
                vec![("raw/a".to_string(), None)],
                vec![TxnOp::Put("raw/a".into(), v.to_vec())],
            )
        };
        let (c, o) = create(b"one");
        assert!(store.txn(&c, &o).await.unwrap());
        let (c, o) = create(b"two");
        assert!(
            !store.txn(&c, &o).await.unwrap(),
            "a second create must fail"
        );
        assert_eq!(store.get("raw/a").await.unwrap().unwrap(), b"one");
        // Value check.
        let stale = vec![("raw/a".to_string(), Some(b"zero".to_vec()))];
        assert!(!store
            .txn(&stale, &[TxnOp::Delete("raw/a".into())])
            .await
            .unwrap());
        let fresh = vec![("raw/a".to_string(), Some(b"one".to_vec()))];
        assert!(store
            .txn(
                &fresh,
                &[
                    TxnOp::Put("raw/b".into(), b"b".to_vec()),
                    TxnOp::Put("rawz".into(), b"outside the prefix".to_vec()),
                ]
            )
            .await
            .unwrap());
        let listed = store.list("raw/").await.unwrap();
        let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["raw/a", "raw/b"]);
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("the watch reports changes")
            .expect("watch alive");

        // PG map epochs: one compare-and-set decides between two proposers.
        let store: Arc<dyn ClusterStore> = store;
        let cluster = Cluster::new(store);
        let spec = |n: &str| brick_cluster::BrickSpec::parse(&format!("{n}:/b/{n}")).unwrap();
        let vol = cluster
            .create_volume("pgs", 3, vec![spec("x"), spec("y"), spec("z")], Some(4))
            .await
            .unwrap();
        let maps = cluster.ensure_pg_maps(&vol).await.unwrap();
        assert_eq!(maps.len(), 4);
        assert!(maps
            .iter()
            .all(|m| m.epoch == 1 && m.up_to_date_count() == 3));
        let primaries: Vec<_> = maps.iter().map(|m| m.primary()).collect();
        assert_eq!(primaries, [Some(0), Some(1), Some(2), Some(0)]);
        let without_y: PgMap = maps[1].without(1 << 1).unwrap();
        let without_z: PgMap = maps[1].without(1 << 2).unwrap();
        let (installed, ok) = cluster.propose_pg_map("pgs", 1, &without_y).await.unwrap();
        assert!(ok && installed == without_y);
        let (installed, ok) = cluster.propose_pg_map("pgs", 1, &without_z).await.unwrap();
        assert!(!ok, "a proposal from a stale epoch must lose");
        assert_eq!(installed, without_y);
        assert_eq!(installed.primary(), Some(2));
        let again = cluster.pg_maps(&vol).await.unwrap();
        assert_eq!(again[1], Some(without_y));
        assert_eq!(again[0], Some(maps[0]), "other PGs are untouched");
    });
}

async fn admin(node: &ServeNode) -> Client {
    Client::connect(ClientConfig {
        servers: vec![node.addr.clone()],
        user: "admin".into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("connect as admin")
}

async fn alive(client: &Client) -> Vec<(String, bool)> {
    let v = client.mgmt(&PeerList {}).await.expect("peer list");
    v.peers.into_iter().map(|p| (p.name, p.alive)).collect()
}

async fn wait_alive(client: &Client, node: &str, want: bool, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let peers = alive(client).await;
        if peers.iter().any(|(n, a)| n == node && *a == want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "node {node} not {} after {within:?}: {peers:?}",
            if want { "alive" } else { "down" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn three_nodes_share_the_cluster_state_through_etcd() {
    let etcd = Etcd::start();
    let tmp = tempfile::Builder::new()
        .prefix("multinode")
        .tempdir_in(scratch_root())
        .expect("tempdir");
    let store = etcd.store_url();
    let mut nodes: Vec<ServeNode> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| {
            ServeNode::start(
                std::path::Path::new(BRICKD),
                n,
                tmp.path(),
                &store,
                PASSWORD,
            )
        })
        .collect();
    runtime().block_on(async {
        // Any node answers for the whole cluster.
        let via_n3 = admin(&nodes[2]).await;
        let peers = alive(&via_n3).await;
        assert_eq!(peers.len(), 3, "{peers:?}");
        assert!(peers.iter().all(|(_, a)| *a), "{peers:?}");

        let bricks: Vec<String> = nodes
            .iter()
            .map(|n| format!("{}:{}", n.name, n.brick_dir("b").display()))
            .collect();
        via_n3
            .mgmt(&VolumeCreate {
                name: "r3".into(),
                replica: 3,
                bricks,
                pg_count: None,
            })
            .await
            .expect("create a replica-3 volume across three nodes");
        via_n3
            .mgmt(&VolumeStart { name: "r3".into() })
            .await
            .expect("start");
        let info = via_n3
            .mgmt(&VolumeInfo { name: "r3".into() })
            .await
            .expect("info");
        let pgs = &info.pgs;
        assert_eq!(pgs.len(), 64);
        assert!(pgs.iter().all(|p| p.epoch == Some(1) && p.writable));
        let mut primaries: Vec<&str> = pgs.iter().filter_map(|p| p.primary.as_deref()).collect();
        primaries.sort();
        primaries.dedup();
        assert_eq!(primaries.len(), 3, "primaries are spread over the set");

        // A node started elsewhere serves the volume once it learns of it (watch): data
        // written through the node of the first brick.
        let via_n1 = admin(&nodes[0]).await;
        let vol = via_n1.open_volume("r3").await.expect("open");
        let f = vol
            .create(brick_wire::ROOT_FILE_ID, "hello", 0o644, true)
            .await
            .unwrap();
        vol.write(f.fid, 0, b"across nodes", true).await.unwrap();
        assert_eq!(vol.read(f.fid, 0, 64).await.unwrap(), b"across nodes");

        // Liveness is an etcd lease: SIGKILL makes it lapse, a restart renews it.
        nodes[2].kill9();
        let via_n2 = admin(&nodes[1]).await;
        let took = wait_alive(&via_n2, "n3", false, Duration::from_secs(8)).await;
        eprintln!("n3 reported down {took:?} after SIGKILL");
        nodes[2].restart();
        wait_alive(&via_n2, "n3", true, Duration::from_secs(8)).await;
        let v = via_n2.mgmt(&PeerList {}).await.expect("peer list");
        assert!(v.store.starts_with("etcd"), "{v:?}");
    });
    drop(nodes);
}
