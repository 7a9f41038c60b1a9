//! NFSv3 gateway (NFS and MOUNT on one port) over the native client library. The gateway
//! holds no data: every request becomes native calls, so it can run on any host.
//!
//! Two layers. Ours owns the client connections: it reads RPC records with limits, checks
//! every call header and argument, answers READ, WRITE (unstable or stable), COMMIT, FSSTAT,
//! RMDIR, MKNOD and LINK itself (`ops.rs`), and hands every other NFS and MOUNT call to
//! nfsserve, which runs in-process on a loopback port of its own with `BrickFs` (`fs.rs`) as
//! its file system. File handles carry the volume id and brickd's stable file id, so they stay
//! valid across restarts of the gateway and of the bricks. Byte layout, limits and error
//! mapping: docs/nfs.md.

mod fs;
mod ops;

mod rpc;

pub use fs::BrickFs;

use brick_client::Volume;
use nfsserve::tcp::{NFSTcp, NFSTcpListener};
use rpc::{BadCall, Call};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

/// Client connections served at once; more wait in the listen backlog.
pub const CONNECTIONS_MAX: usize = 256;
/// Requests one connection has in flight; reading further requests waits.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 128;
/// A call handed to nfsserve that has no reply after this long is answered SYSTEM_ERR.
const PROXY_REPLY_TIMEOUT_MS: u64 = 60_000;
/// nfsserve's replies are at most this large (READDIR counts are clamped to 1 MiB).
const PROXY_REPLY_BYTES_MAX: usize = 4 << 20;
/// Replies smaller than this are gathered into one socket write.
const BATCH_BYTES: usize = 64 * 1024;
/// READDIRPLUS `maxcount` below this is answered TOOSMALL (nfsserve needs room for headers).
const READDIRPLUS_MAXCOUNT_MIN: u32 = 1024;

struct Gateway {
    fs: Arc<BrickFs>,
    /// The port clients reach us on: what a portmap GETPORT for NFS or MOUNT answers.
    port: u16,
    /// Where the in-process nfsserve listens (changes if it had to be restarted).
    inner_addr: Mutex<SocketAddr>,
}

impl Gateway {
    fn inner_addr(&self) -> SocketAddr {
        *self.inner_addr.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serves `vol` over NFSv3 and MOUNT on `listener` until `shutdown` turns true; connections
/// open then are closed.
pub async fn serve(
    listener: TcpListener,
    vol: Volume,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let fs = Arc::new(BrickFs::new(vol));
    let first = start_inner(fs.clone()).await?;
    let gateway = Arc::new(Gateway {
        fs,
        port: listener.local_addr()?.port(),
        inner_addr: Mutex::new(first.0),
    });
    let supervisor = tokio::spawn(supervise_inner(gateway.clone(), first.1));
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = shutdown.changed() => break,
        };
        let gateway = gateway.clone();
        conns.spawn(async move {
            let _permit = permit;
            match connection(stream, gateway).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => tracing::info!(%peer, "nfs connection closed: {e}"),
                Ok(()) => {}
            }
        });
        while conns.try_join_next().is_some() {}
    }
    supervisor.abort();
    conns.shutdown().await;
    Ok(())
}

type InnerTask = tokio::task::JoinHandle<std::io::Result<()>>;

/// Starts nfsserve on a loopback port of its own, serving `fs`.
async fn start_inner(fs: Arc<BrickFs>) -> std::io::Result<(SocketAddr, InnerTask)> {
    let listener = NFSTcpListener::bind("127.0.0.1:0", SharedFs(fs)).await?;
    let addr = SocketAddr::new(listener.get_listen_ip(), listener.get_listen_port());
    let task = tokio::spawn(async move { listener.handle_forever().await });
    Ok((addr, task))
}

/// nfsserve's accept loop ends only on an error (or a panic inside it); start another.
async fn supervise_inner(gateway: Arc<Gateway>, mut task: InnerTask) {
    loop {
        let why = match task.await {
            Ok(Ok(())) => "returned".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::error!("nfs: nfsserve's listener stopped ({why}); starting another");
        loop {
            match start_inner(gateway.fs.clone()).await {
                Ok((addr, t)) => {
                    *gateway.inner_addr.lock().unwrap_or_else(|p| p.into_inner()) = addr;
                    task = t;
                    break;
                }
                Err(e) => {
                    tracing::error!("nfs: restarting nfsserve: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// nfsserve takes its file system by value; ours is shared with our own layer.
struct SharedFs(Arc<BrickFs>);

#[async_trait::async_trait]
impl nfsserve::vfs::NFSFileSystem for SharedFs {
    fn capabilities(&self) -> nfsserve::vfs::VFSCapabilities {
        self.0.capabilities()
    }
    fn root_dir(&self) -> u64 {
        self.0.root_dir()
    }
    async fn lookup(
        &self,
        dirid: u64,
        filename: &nfsserve::nfs::filename3,
    ) -> Result<u64, nfsserve::nfs::nfsstat3> {
        self.0.lookup(dirid, filename).await
    }
    async fn getattr(&self, id: u64) -> Result<nfsserve::nfs::fattr3, nfsserve::nfs::nfsstat3> {
        self.0.getattr(id).await
    }
    async fn setattr(
        &self,
        id: u64,
        setattr: nfsserve::nfs::sattr3,
    ) -> Result<nfsserve::nfs::fattr3, nfsserve::nfs::nfsstat3> {
        self.0.setattr(id, setattr).await
    }
    async fn read(
        &self,
        id: u64,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool), nfsserve::nfs::nfsstat3> {
        self.0.read(id, offset, count).await
    }
    async fn write(
        &self,
        id: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<nfsserve::nfs::fattr3, nfsserve::nfs::nfsstat3> {
        self.0.write(id, offset, data).await
    }
    async fn create(
        &self,
        dirid: u64,
        filename: &nfsserve::nfs::filename3,
        attr: nfsserve::nfs::sattr3,
    ) -> Result<(u64, nfsserve::nfs::fattr3), nfsserve::nfs::nfsstat3> {
        self.0.create(dirid, filename, attr).await
    }
    async fn create_exclusive(
        &self,
        dirid: u64,
        filename: &nfsserve::nfs::filename3,
    ) -> Result<u64, nfsserve::nfs::nfsstat3> {
        self.0.create_exclusive(dirid, filename).await
    }
    async fn mkdir(
        &self,
        dirid: u64,
        dirname: &nfsserve::nfs::filename3,
    ) -> Result<(u64, nfsserve::nfs::fattr3), nfsserve::nfs::nfsstat3> {
        self.0.mkdir(dirid, dirname).await
    }
    async fn remove(
        &self,
        dirid: u64,
        filename: &nfsserve::nfs::filename3,
    ) -> Result<(), nfsserve::nfs::nfsstat3> {
        self.0.remove(dirid, filename).await
    }
    async fn rename(
        &self,
        from_dirid: u64,
        from_filename: &nfsserve::nfs::filename3,
        to_dirid: u64,
        to_filename: &nfsserve::nfs::filename3,
    ) -> Result<(), nfsserve::nfs::nfsstat3> {
        self.0
            .rename(from_dirid, from_filename, to_dirid, to_filename)
            .await
    }
    async fn readdir(
        &self,
        dirid: u64,
        start_after: u64,
        max_entries: usize,
    ) -> Result<nfsserve::vfs::ReadDirResult, nfsserve::nfs::nfsstat3> {
        self.0.readdir(dirid, start_after, max_entries).await
    }
    async fn symlink(
        &self,
        dirid: u64,
        linkname: &nfsserve::nfs::filename3,
        symlink: &nfsserve::nfs::nfspath3,
        attr: &nfsserve::nfs::sattr3,
    ) -> Result<(u64, nfsserve::nfs::fattr3), nfsserve::nfs::nfsstat3> {
        self.0.symlink(dirid, linkname, symlink, attr).await
    }
    async fn readlink(&self, id: u64) -> Result<nfsserve::nfs::nfspath3, nfsserve::nfs::nfsstat3> {
        self.0.readlink(id).await
    }
    async fn fsinfo(
        &self,
        root_fileid: u64,
    ) -> Result<nfsserve::nfs::fsinfo3, nfsserve::nfs::nfsstat3> {
        self.0.fsinfo(root_fileid).await
    }
    fn id_to_fh(&self, id: u64) -> nfsserve::nfs::nfs_fh3 {
        self.0.id_to_fh(id)
    }
    fn fh_to_id(&self, id: &nfsserve::nfs::nfs_fh3) -> Result<u64, nfsserve::nfs::nfsstat3> {
        self.0.fh_to_id(id)
    }
    fn serverid(&self) -> [u8; 8] {
        self.0.serverid()
    }
}

/// Where one client request goes.
enum Route {
    /// Already answered (framed reply).
    Answer(Vec<u8>),
    /// One of our procedures.
    Ours(Call),
    /// nfsserve's.
    Proxy(Call),
}

fn route(record: &mut [u8], port: u16) -> Result<Route, BadCall> {
    use rpc::*;
    let call = parse_call(record)?;
    let garbage = || Route::Answer(accepted(call.xid, ACCEPT_GARBAGE_ARGS));
    Ok(match call.prog {
        PROG_NFS if call.vers != NFS_V3 => Route::Answer(prog_mismatch(call.xid, 3, 3)),
        PROG_NFS if ops::is_ours(call.proc_) => Route::Ours(call),
        PROG_NFS if call.proc_ > 21 => Route::Answer(accepted(call.xid, ACCEPT_PROC_UNAVAIL)),
        PROG_NFS => {
            if check_nfs_args(call.proc_, record, call.args_at).is_none() {
                garbage()
            } else if call.proc_ == 17
                && readdirplus_maxcount(record, call.args_at)
                    .is_some_and(|m| m < READDIRPLUS_MAXCOUNT_MIN)
            {
                Route::Answer(too_small(call.xid))
            } else {
                Route::Proxy(call)
            }
        }
        PROG_MOUNT if call.vers != MOUNT_V3 => Route::Answer(prog_mismatch(call.xid, 3, 3)),
        PROG_MOUNT if call.proc_ > 5 => Route::Answer(accepted(call.xid, ACCEPT_PROC_UNAVAIL)),
        PROG_MOUNT => match check_mount_args(call.proc_, record, call.args_at) {
            Some(()) => Route::Proxy(call),
            None => garbage(),
        },
        // nfsserve would answer GETPORT with its private port, which bypasses this layer.
        PROG_PORTMAP => Route::Answer(portmap(call, record, port)),
        _ => Route::Answer(accepted(call.xid, ACCEPT_PROG_UNAVAIL)),
    })
}

/// Portmap v2 on the NFS port: NULL, and GETPORT naming this port for NFS v3 and MOUNT v3
/// over TCP (0, "not registered", for anything else).
fn portmap(call: Call, record: &[u8], port: u16) -> Vec<u8> {
    use rpc::*;
    const PMAP_V2: u32 = 2;
    const IPPROTO_TCP: u32 = 6;
    if call.vers != PMAP_V2 {
        return prog_mismatch(call.xid, PMAP_V2, PMAP_V2);
    }
    match call.proc_ {
        0 => accepted(call.xid, ACCEPT_SUCCESS),
        3 => {
            let mut x = Xdr::new(record, call.args_at);
            let (Some(prog), Some(vers), Some(prot), Some(_)) =
                (x.u32(), x.u32(), x.u32(), x.u32())
            else {
                return accepted(call.xid, ACCEPT_GARBAGE_ARGS);
            };
            let ours = matches!((prog, vers), (PROG_NFS, NFS_V3) | (PROG_MOUNT, MOUNT_V3))
                && prot == IPPROTO_TCP;
            let mut out = accepted_open(call.xid, ACCEPT_SUCCESS);
            out.extend_from_slice(&(if ours { port as u32 } else { 0 }).to_be_bytes());
            finish(out)
        }
        _ => accepted(call.xid, ACCEPT_PROC_UNAVAIL),
    }
}

fn too_small(xid: u32) -> Vec<u8> {
    let mut out = rpc::accepted_open(xid, rpc::ACCEPT_SUCCESS);
    out.extend_from_slice(&10005u32.to_be_bytes()); // NFS3ERR_TOOSMALL
    out.extend_from_slice(&0u32.to_be_bytes()); // dir_attributes: none
    rpc::finish(out)
}

/// Calls handed to nfsserve on one connection and not answered yet, by xid.
type Outstanding = Arc<Mutex<HashMap<u32, (Instant, OwnedSemaphorePermit)>>>;

/// The connection to nfsserve serving one client connection.
struct Proxy {
    to_inner: OwnedWriteHalf,
    outstanding: Outstanding,
    alive: watch::Receiver<bool>,
}

async fn connection(stream: TcpStream, gateway: Arc<Gateway>) -> std::io::Result<()> {
    stream.set_nodelay(true).ok();
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = BufReader::with_capacity(256 * 1024, read_half);
    let (replies, mut replies_rx) = mpsc::channel::<Vec<u8>>(REQUESTS_IN_FLIGHT_MAX);
    let writer = tokio::spawn(async move {
        let mut batch = Vec::new();
        while let Some(first) = replies_rx.recv().await {
            // Small replies share one write; large ones (READ data) go out without a copy.
            if first.len() >= BATCH_BYTES {
                write_half.write_all(&first).await?;
                continue;
            }
            batch.clear();
            batch.extend_from_slice(&first);
            while batch.len() < BATCH_BYTES {
                match replies_rx.try_recv() {
                    Ok(more) if more.len() >= BATCH_BYTES => {
                        write_half.write_all(&batch).await?;
                        batch.clear();
                        write_half.write_all(&more).await?;
                    }
                    Ok(more) => batch.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                write_half.write_all(&batch).await?;
            }
        }
        Ok::<(), std::io::Error>(())
    });
    let slots = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX));
    let mut proxy: Option<Proxy> = None;
    let result = loop {
        let mut record = match rpc::read_record(&mut reader, rpc::RECORD_BYTES_MAX).await {
            Ok(Some(r)) => r,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break Ok(());
        };
        match route(&mut record, gateway.port) {
            Err(BadCall::Unreadable) => {
                break Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not an RPC call",
                ))
            }
            Err(BadCall::Answer(reply)) | Ok(Route::Answer(reply)) => {
                if replies.send(reply).await.is_err() {
                    break Ok(());
                }
            }
            Ok(Route::Ours(call)) => {
                let fs = gateway.fs.clone();
                let replies = replies.clone();
                tokio::spawn(async move {
                    let reply = ops::run(&fs, call.xid, call.proc_, &record, call.args_at).await;
                    let _ = replies.send(reply).await;
                    drop(permit);
                });
            }
            Ok(Route::Proxy(call)) => {
                if proxy.as_ref().is_none_or(|p| !*p.alive.borrow()) {
                    proxy = Some(open_proxy(&gateway, replies.clone()).await?);
                }
                let Some(p) = proxy.as_mut() else {
                    break Ok(());
                };
                {
                    let mut outstanding = lock(&p.outstanding);
                    if outstanding.contains_key(&call.xid) {
                        // A retransmission of a call still running: its reply will come.
                        continue;
                    }
                    outstanding.insert(call.xid, (Instant::now(), permit));
                }
                if let Err(e) = p.to_inner.write_all(&rpc::framed(&record)).await {
                    tracing::warn!("nfs: forwarding to nfsserve: {e}");
                    let lost = lock(&p.outstanding).remove(&call.xid);
                    if lost.is_some() {
                        let _ = replies
                            .send(rpc::accepted(call.xid, rpc::ACCEPT_SYSTEM_ERR))
                            .await;
                    }
                    proxy = None;
                }
            }
        }
    };
    drop(replies);
    drop(proxy);
    let _ = writer.await;
    result
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connects to nfsserve and starts relaying its replies to the client's reply queue.
async fn open_proxy(gateway: &Gateway, replies: mpsc::Sender<Vec<u8>>) -> std::io::Result<Proxy> {
    let stream = TcpStream::connect(gateway.inner_addr()).await?;
    stream.set_nodelay(true).ok();
    let (read_half, to_inner) = stream.into_split();
    let outstanding: Outstanding = Arc::new(Mutex::new(HashMap::new()));
    let (alive_tx, alive) = watch::channel(true);
    tokio::spawn(relay_replies(
        BufReader::with_capacity(256 * 1024, read_half),
        outstanding.clone(),
        replies,
        alive_tx,
    ));
    Ok(Proxy {
        to_inner,
        outstanding,
        alive,
    })
}

/// Copies nfsserve's replies to the client; answers SYSTEM_ERR for calls it dropped (it
/// closes its connection on a call it cannot decode, and loses a call whose task panics).
async fn relay_replies(
    mut from_inner: BufReader<tokio::net::tcp::OwnedReadHalf>,
    outstanding: Outstanding,
    replies: mpsc::Sender<Vec<u8>>,
    alive: watch::Sender<bool>,
) {
    // The sweep runs beside the reads, never in a select with them: `read_record` is not
    // cancellation-safe, and a sweep tick that dropped a half-read record desynchronised the
    // reply stream (a reply lost, the next ones read from the middle of a record).
    let sweeper = tokio::spawn(sweep_unanswered(outstanding.clone(), replies.clone()));
    loop {
        let record = match rpc::read_record(&mut from_inner, PROXY_REPLY_BYTES_MAX).await {
            Ok(Some(r)) if r.len() >= 4 => r,
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("nfs: reading nfsserve's reply: {e}");
                break;
            }
        };
        let xid = u32::from_be_bytes([record[0], record[1], record[2], record[3]]);
        let permit = lock(&outstanding).remove(&xid);
        if replies.send(rpc::framed(&record)).await.is_err() {
            break;
        }
        drop(permit);
    }
    sweeper.abort();
    let _ = alive.send(false);
    let lost: Vec<u32> = lock(&outstanding).drain().map(|(x, _)| x).collect();
    for xid in lost {
        let _ = replies
            .send(rpc::accepted(xid, rpc::ACCEPT_SYSTEM_ERR))
            .await;
    }
}

/// Answers SYSTEM_ERR for calls nfsserve has not answered within `PROXY_REPLY_TIMEOUT_MS`.
async fn sweep_unanswered(outstanding: Outstanding, replies: mpsc::Sender<Vec<u8>>) {
    let limit = Duration::from_millis(PROXY_REPLY_TIMEOUT_MS);
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        sweep.tick().await;
        let expired: Vec<u32> = {
            let mut o = lock(&outstanding);
            let xids: Vec<u32> = o
                .iter()
                .filter(|(_, (at, _))| at.elapsed() > limit)
                .map(|(x, _)| *x)
                .collect();
            for x in &xids {
                o.remove(x);
            }
            xids
        };
        for xid in expired {
            tracing::warn!("nfs: nfsserve did not answer xid {xid}");
            if replies
                .send(rpc::accepted(xid, rpc::ACCEPT_SYSTEM_ERR))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply that arrives in two pieces with a sweep tick between them reaches the client
    /// whole, and so does the one after it (the tick once dropped the half-read record).
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_reply_split_around_a_sweep_tick_is_relayed_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut inner, _) = accepted.expect("accept");
        let (read_half, _write_half) = client.expect("connect").into_split();
        let outstanding: Outstanding = Arc::new(Mutex::new(HashMap::new()));
        let (replies, mut replies_rx) = mpsc::channel(8);
        let (alive_tx, alive) = watch::channel(true);
        let relay = tokio::spawn(relay_replies(
            BufReader::new(read_half),
            outstanding,
            replies,
            alive_tx,
        ));
        let first = rpc::framed(&[0, 0, 0, 7, 1, 2, 3, 4]);
        inner.write_all(&first[..4]).await.expect("mark");
        // Paused time jumps to the next timer while the relay waits: the sweep ticks here.
        tokio::time::sleep(Duration::from_secs(12)).await;
        inner.write_all(&first[4..]).await.expect("body");
        let second = rpc::framed(&[0, 0, 0, 8, 5, 6, 7, 8]);
        inner.write_all(&second).await.expect("second");
        assert_eq!(replies_rx.recv().await, Some(first));
        assert_eq!(replies_rx.recv().await, Some(second));
        assert!(*alive.borrow(), "the relay is still reading");
        drop(inner);
        relay.await.expect("relay ends with its connection");
        assert!(!*alive.borrow());
    }
}
