//! `brickd`: the node daemon. `brickd dev` is the single-process default (three bricks, a
//! replica-3 volume "dev", the embedded cluster store); `brickd serve` runs one node.

mod mgmt;
mod rebalance;
mod users;

use anyhow::{bail, Context, Result};
use brick_cluster::mgmt::{HealLocal, MgmtOp, VolumeStart};
use brick_cluster::{
    hex_encode, BrickSpec, Cluster, ClusterError, ClusterStore, EmbeddedStore, EtcdStore,
    VolumeStatus,
};
use brick_dataplane::{Dataplane, DataplaneConfig, MapRequest, MgmtRequest, ServeState};
use brick_tuning::{
    DEV_NATIVE_PORT, DEV_NBD_PORT, DEV_NFS_PORT, DEV_SMB_PORT, MGMT_DOC_BYTES_MAX, MGMT_QUEUE_MAX,
    SHUTDOWN_MGMT_WAIT_MS, STORE_RETRY_MS, STORE_WARN_INTERVAL_MS,
};
use brick_wire::{auth, ErrorCode};
use clap::{Parser, Subcommand};
use mgmt::Mgmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "brickd", version, about = "brickd node daemon")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Single-process cluster: volume "dev" (replica 3 unless --replica) under DIR, on 127.0.0.1.
    Dev {
        #[arg(long, default_value = "./brickd-dev")]
        dir: PathBuf,
        /// Replicas (and bricks) of the dev volume when it is first created: 1 to 3.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=3))]
        replica: u8,
        /// Native protocol address (core 0; other cores use ephemeral ports on the same host).
        #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], DEV_NATIVE_PORT)))]
        listen: SocketAddr,
        /// Dataplane cores (default: all).
        #[arg(long)]
        cores: Option<usize>,
        /// Microseconds an idle core polls before sleeping (0: sleep at once).
        #[arg(long, default_value_t = 0)]
        spin_us: u64,
        /// CPUs the cores are pinned to, core i on the i-th (default: core i on CPU i), e.g. to
        /// keep the CPU that takes the disk's interrupts for brickd and the others for VMs.
        #[arg(long, value_delimiter = ',', value_name = "CPU,...")]
        cpus: Vec<usize>,
        /// NBD gateway address for the dev volume's files (port 0: any free port).
        #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], DEV_NBD_PORT)))]
        nbd_listen: SocketAddr,
        /// NFSv3 gateway address (NFS and MOUNT on one port; port 0: any free port).
        #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], DEV_NFS_PORT)))]
        nfs_listen: SocketAddr,
        /// SMB gateway address (share "dev", user "dev"; port 0: any free port).
        #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], DEV_SMB_PORT)))]
        smb_listen: SocketAddr,
    },
    /// One node of a cluster.
    Serve {
        #[arg(long)]
        node: String,
        #[arg(long)]
        listen: SocketAddr,
        /// Cluster store: `embedded://DIR` (single node) or `etcd://H:P[,H:P...]` (multi-node).
        #[arg(long)]
        store: String,
        /// Brick directories this node hosts (informational until `volume create` names them).
        #[arg(long)]
        brick: Vec<PathBuf>,
        #[arg(long)]
        cores: Option<usize>,
        /// Microseconds an idle core polls before sleeping (0: sleep at once).
        #[arg(long, default_value_t = 0)]
        spin_us: u64,
        /// CPUs the cores are pinned to, core i on the i-th (default: core i on CPU i), e.g. to
        /// keep the CPU that takes the disk's interrupts for brickd and the others for VMs.
        /// Several nodes on one host (a test cluster) each need their own: by default every
        /// one of them pins its core 0 to CPU 0.
        #[arg(long, value_delimiter = ',', value_name = "CPU,...")]
        cpus: Vec<usize>,
        /// Admin user created on first start if the store has no users.
        #[arg(long, default_value = "admin")]
        admin_user: String,
        #[arg(long, env = "BRICKD_ADMIN_PASSWORD")]
        admin_password: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Host an NBD gateway for VOLUME on ADDR in this process (repeatable): its client
        /// reaches the cores in-process and logs in as the node.
        #[arg(long, value_name = "VOLUME@ADDR")]
        nbd: Vec<String>,
        /// Host an NFSv3 gateway for VOLUME on ADDR (NFS and MOUNT on one port; repeatable).
        #[arg(long, value_name = "VOLUME@ADDR")]
        nfs: Vec<String>,
        /// Host an SMB2/3 gateway sharing VOLUME as share VOLUME on ADDR, for the users with
        /// access to it (`brick volume set VOLUME access.USER rw`; repeatable).
        #[arg(long, value_name = "VOLUME@ADDR")]
        smb: Vec<String>,
    },
}

/// The system allocator spent a fifth of a replica's core in malloc/free of the 4 KiB
/// buffers of a random-write load (bins, consolidation); mimalloc keeps them per thread. It
/// also keeps freed MiB-sized READ and WRITE buffers for reuse (no page clearing in a profile
/// of a 1 GiB NFS read), which glibc needed mallopt thresholds for.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if let Err(e) = run() {
        eprintln!("brickd: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BRICKD_LOG")
                // nfsserve logs every connection at info and every failed lookup at error.
                .unwrap_or_else(|_| "info,nfsserve=off,smb_server=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Modes from clients (NFS, SMB, create) must land as given, not filtered by our umask.
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0) };
    raise_open_files_limit();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("brickd-mgmt")
        .build()?;
    match cli.cmd {
        Cmd::Dev {
            dir,
            replica,
            listen,
            cores,
            spin_us,
            cpus,
            nbd_listen,
            nfs_listen,
            smb_listen,
        } => rt.block_on(run_dev(
            dir,
            replica,
            listen,
            Gateways {
                nbd: nbd_listen,
                nfs: nfs_listen,
                smb: smb_listen,
            },
            Tuning {
                cores,
                spin_us,
                cpus,
            },
        )),
        Cmd::Serve {
            node,
            listen,
            store,
            brick: _,
            cores,
            spin_us,
            cpus,
            admin_user,
            admin_password,
            config,
            nbd,
            nfs,
            smb,
        } => {
            if config.is_some() {
                bail!("--config is reserved for node tuning files and not read by this build");
            }
            let store = StoreSpec::parse(&store)?;
            let mut hosted = Vec::new();
            let kinds = [
                (GatewayKind::Nbd, nbd),
                (GatewayKind::Nfs, nfs),
                (GatewayKind::Smb, smb),
            ];
            for (kind, specs) in kinds {
                for spec in specs {
                    hosted.push(HostedGateway::parse(kind, &spec)?);
                }
            }
            rt.block_on(run_serve(
                node,
                listen,
                store,
                Tuning {
                    cores,
                    spin_us,
                    cpus,
                },
                (admin_user, admin_password),
                hosted,
            ))
        }
    }
}

/// Where the cluster state lives.
enum StoreSpec {
    Embedded(PathBuf),
    Etcd(String),
}

impl StoreSpec {
    fn parse(s: &str) -> Result<StoreSpec> {
        if let Some(dir) = s.strip_prefix("embedded://") {
            return Ok(StoreSpec::Embedded(PathBuf::from(dir)));
        }
        if let Some(eps) = s.strip_prefix("etcd://") {
            return Ok(StoreSpec::Etcd(eps.to_string()));
        }
        bail!("--store must be embedded://DIR or etcd://H:P[,H:P...]")
    }

    /// A store that can be away for a while (etcd), rather than a local file that fails.
    fn may_come_back(&self) -> bool {
        matches!(self, StoreSpec::Etcd(_))
    }

    async fn open(&self) -> Result<Arc<dyn ClusterStore>> {
        Ok(match self {
            StoreSpec::Embedded(dir) => Arc::new(
                EmbeddedStore::open(dir)
                    .with_context(|| format!("opening cluster store in {}", dir.display()))?,
            ),
            StoreSpec::Etcd(eps) => EtcdStore::connect(eps)
                .await
                .with_context(|| format!("connecting to etcd at {eps}"))?,
        })
    }
}

/// Registers this node and reads what it serves. While the store does not answer, says so and
/// tries again: the node serves once it has the state (SIGTERM stops it meanwhile).
async fn load_cluster_state(
    node: &str,
    listen: SocketAddr,
    store: &StoreSpec,
) -> Result<(Arc<Mgmt>, ServeState)> {
    let mut waited_ms = 0u64;
    loop {
        match try_load_cluster_state(node, listen, store).await {
            Ok(loaded) => {
                if waited_ms > 0 {
                    tracing::info!("cluster store answered after {waited_ms} ms: serving");
                }
                return Ok(loaded);
            }
            Err(e) if store.may_come_back() && is_store_unreachable(&e) => {
                if waited_ms.is_multiple_of(STORE_WARN_INTERVAL_MS) {
                    tracing::warn!(
                        "cluster store unreachable ({e:#}); waiting for it to load the cluster \
                         state before serving"
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(STORE_RETRY_MS)).await;
                waited_ms += STORE_RETRY_MS;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn try_load_cluster_state(
    node: &str,
    listen: SocketAddr,
    store: &StoreSpec,
) -> Result<(Arc<Mgmt>, ServeState)> {
    let cluster = Cluster::new(store.open().await?);
    let mgmt = Arc::new(Mgmt::new(cluster, node.to_string()));
    mgmt.register_self(&listen.to_string()).await?;
    mgmt.cluster
        .register_alive(node, brick_tuning::NODE_LIVENESS_TTL_MS)
        .await
        .context("registering this node's liveness")?;
    let state = mgmt
        .serve_state()
        .await
        .map_err(|(code, why)| anyhow::Error::new(LoadError { code, why }))?;
    Ok((mgmt, state))
}

/// `Mgmt::serve_state`'s error, kept typed so that a store outage can be told apart.
#[derive(Debug)]
struct LoadError {
    code: ErrorCode,
    why: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

impl std::error::Error for LoadError {}

/// Whether `e` says the cluster store did not answer (rather than refused or held bad data).
fn is_store_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<brick_cluster::StoreError>(),
            Some(brick_cluster::StoreError::Io(_))
        ) || matches!(
            cause.downcast_ref::<brick_cluster::ClusterError>(),
            Some(brick_cluster::ClusterError::Store(
                brick_cluster::StoreError::Io(_)
            ))
        ) || matches!(
            cause.downcast_ref::<LoadError>(),
            // `cluster_err` keeps the store's words ("cluster store I/O: ..."); a brick's I/O
            // error also comes as `Io`, and is not waited out.
            Some(l) if l.code == ErrorCode::Io && l.why.starts_with("cluster store I/O")
        )
    })
}

/// Dataplane settings given on the command line.
struct Tuning {
    cores: Option<usize>,
    spin_us: u64,
    cpus: Vec<usize>,
}

struct Running {
    mgmt: Arc<Mgmt>,
    dataplane: Dataplane,
    mgmt_rx: flume::Receiver<MgmtRequest>,
    maps_rx: flume::Receiver<MapRequest>,
}

async fn start_node(
    node: &str,
    listen: SocketAddr,
    store: &StoreSpec,
    tuning: Tuning,
) -> Result<Running> {
    let (mgmt, state) = load_cluster_state(node, listen, store).await?;
    let cores = tuning.cores.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if cores == 0 || cores > 256 {
        bail!("--cores must be 1..=256");
    }
    if !tuning.cpus.is_empty() && tuning.cpus.len() < cores {
        bail!("--cpus names {} CPUs for {cores} cores", tuning.cpus.len());
    }
    let (mgmt_tx, mgmt_rx) = flume::bounded(1024);
    let (maps_tx, maps_rx) = flume::bounded(4096);
    let dataplane = Dataplane::start(
        DataplaneConfig {
            cores,
            listen,
            pin: true,
            cpus: tuning.cpus,
            spin_before_park_us: tuning.spin_us,
        },
        Arc::new(state),
        mgmt_tx,
        maps_tx,
    )
    .with_context(|| format!("starting the dataplane on {listen}"))?;
    Ok(Running {
        mgmt,
        dataplane,
        mgmt_rx,
        maps_rx,
    })
}

/// Serves management requests until SIGINT or SIGTERM, then shuts down cleanly.
/// How long a change of the cluster state waits for more before it is republished.
const REPUBLISH_DELAY: std::time::Duration = std::time::Duration::from_millis(20);
/// A placeholder deadline while nothing is to be republished (that branch is disabled).
const REPUBLISH_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Serves until SIGINT or SIGTERM; `gateways` are told to stop before the dataplane does.
async fn serve_until_signal(
    running: Running,
    gateways: Vec<tokio::sync::watch::Sender<bool>>,
) -> Result<()> {
    let Running {
        mgmt,
        dataplane,
        mgmt_rx,
        maps_rx,
    } = running;
    let dataplane = Arc::new(dataplane);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Other nodes change the cluster state too (a volume started, a user added): follow it.
    let mut changes = mgmt.cluster.watch("").await?;
    // Requests that may wait for the store (each up to its timeout while it is away) run one
    // at a time beside this loop: what is answered from memory, opening a volume above all,
    // never waits behind them, so clients connect while the store does not answer.
    let (work_tx, work_rx) = flume::bounded(MGMT_QUEUE_MAX);
    let republish_due = Arc::new(tokio::sync::Notify::new());
    let rebalancer = tokio::spawn(rebalance::run(mgmt.clone()));
    let worker = tokio::spawn(mgmt_worker(
        mgmt.clone(),
        dataplane.clone(),
        work_rx,
        republish_due.clone(),
    ));
    // A burst of changes (a heal starting in every PG) is republished once, 20 ms after its
    // first change; meanwhile requests, map proposals above all, are served as they come.
    let mut republish_at: Option<tokio::time::Instant> = None;
    loop {
        let due = republish_at.unwrap_or_else(|| tokio::time::Instant::now() + REPUBLISH_IDLE);
        tokio::select! {
            req = mgmt_rx.recv_async() => {
                let Ok(req) = req else { break };
                let Some(op) = parse_mgmt(&req) else { continue };
                if !answer_from_memory(&mgmt, &req, &op) {
                    if let Err(flume::TrySendError::Full((req, _))) = work_tx.try_send((req, op)) {
                        let _ = req.reply.send(Err((
                            ErrorCode::Unavailable,
                            format!(
                                "{MGMT_QUEUE_MAX} management requests are waiting for the \
                                 cluster store ({})",
                                mgmt.cluster.describe_store()
                            ),
                        )));
                    }
                }
            }
            req = maps_rx.recv_async() => {
                let Ok(req) = req else { break };
                // Concurrently: a failover proposes for many PGs at once.
                let mgmt = mgmt.clone();
                tokio::spawn(async move { mgmt.map_request(req).await });
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                changes.borrow_and_update();
                republish_at.get_or_insert_with(|| tokio::time::Instant::now() + REPUBLISH_DELAY);
            }
            _ = tokio::time::sleep_until(due), if republish_at.is_some() => {
                republish_at = None;
                republish_due.notify_one();
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    for g in gateways {
        let _ = g.send(true);
    }
    tracing::info!("shutting down: closing connections and syncing bricks");
    drop(work_tx);
    // Requests still queued may each wait for an unreachable store: they are dropped (their
    // clients see the connection close) rather than holding up the stop.
    rebalancer.abort();
    let worker_abort = worker.abort_handle();
    let wait = std::time::Duration::from_millis(SHUTDOWN_MGMT_WAIT_MS);
    if tokio::time::timeout(wait, worker).await.is_err() {
        worker_abort.abort();
        tracing::warn!("management requests still waiting for the cluster store were dropped");
    }
    match Arc::try_unwrap(dataplane) {
        Ok(dataplane) => tokio::task::spawn_blocking(move || dataplane.shutdown()).await?,
        Err(_) => {
            tracing::error!("the dataplane is still in use: stopping without joining its cores")
        }
    }
    mgmt.sync_bricks();
    tracing::info!("stopped");
    Ok(())
}

/// Runs management requests and republishes the served state, one at a time, in order.
async fn mgmt_worker(
    mgmt: Arc<Mgmt>,
    dataplane: Arc<Dataplane>,
    requests: flume::Receiver<(MgmtRequest, MgmtOp)>,
    republish_due: Arc<tokio::sync::Notify>,
) {
    loop {
        tokio::select! {
            req = requests.recv_async() => {
                let Ok((req, op)) = req else { break };
                handle_mgmt(&mgmt, &dataplane, req, op).await;
            }
            _ = republish_due.notified() => {
                if let Err(e) = republish(&mgmt, &dataplane).await {
                    tracing::warn!("cannot follow the cluster state: {e:#}");
                }
            }
        }
    }
}

/// The request's op; a document too large or malformed is answered here (`None`).
fn parse_mgmt(req: &MgmtRequest) -> Option<MgmtOp> {
    let parsed = if req.doc.len() > MGMT_DOC_BYTES_MAX {
        Err("management document too large".to_string())
    } else {
        MgmtOp::parse(&req.doc)
    };
    match parsed {
        Ok(op) => Some(op),
        Err(e) => {
            let _ = req.reply.send(Err((ErrorCode::Malformed, e)));
            None
        }
    }
}

/// Answers a request that needs no store from what this node holds; returns whether it did.
fn answer_from_memory(mgmt: &Mgmt, req: &MgmtRequest, op: &MgmtOp) -> bool {
    let MgmtOp::VolumeOpen(open) = op else {
        return false;
    };
    let Some(reply) = mgmt.volume_open_from_view(&open.name) else {
        return false;
    };
    let _ = req
        .reply
        .send(mgmt::encode::<brick_cluster::mgmt::VolumeOpen>(reply));
    true
}

async fn handle_mgmt(mgmt: &Mgmt, dataplane: &Dataplane, req: MgmtRequest, op: MgmtOp) {
    if let MgmtOp::HealLocal(r) = &op {
        let reply = mgmt
            .heal_local(&r.name, dataplane.heal_reports(), dataplane.failing_disks())
            .await;
        let _ = req.reply.send(mgmt::encode::<HealLocal>(reply));
        return;
    }
    let (result, changed) = mgmt.handle(op, &req.user, req.admin).await;
    if changed {
        if let Err(e) = republish(mgmt, dataplane).await {
            tracing::error!("cannot rebuild the served state: {e:#}");
        }
    }
    let _ = req.reply.send(result);
}

/// Every core caches up to `CORE_OPEN_FILES_MAX` files with two descriptors each; the usual
/// soft limit of 1024 descriptors would run out long before. Raise it to the hard limit.
fn raise_open_files_limit() {
    match brick_dataplane::raise_soft_limit(libc::RLIMIT_NOFILE) {
        Some(l) if l.rlim_cur >= 16 * 1024 || l.rlim_cur == libc::RLIM_INFINITY => {}
        Some(l) => eprintln!(
            "brickd: only {} open files allowed; caching many files may fail with EMFILE",
            l.rlim_cur
        ),
        None => eprintln!("brickd: cannot read the open-file limit"),
    }
}

/// Rebuilds what the dataplane serves from the cluster state and hands it to every core.
async fn republish(mgmt: &Mgmt, dataplane: &Dataplane) -> Result<()> {
    let state = mgmt
        .serve_state()
        .await
        .map_err(|(_, why)| anyhow::anyhow!(why))?;
    dataplane.publish(Arc::new(state)).await;
    Ok(())
}

/// Creates `user` with `password` (or brings it up to date: a record from before passwords
/// were sealed for SMB gets its sealed copy).
async fn ensure_user(cluster: &Cluster, user: &str, password: &str, admin: bool) -> Result<()> {
    let key = hex_encode(&auth::password_key(user, password));
    let current = match cluster.user(user).await? {
        Some(u) if u.key_hex == key && u.admin == admin => {
            users::stored_password(cluster, &u).await?.as_deref() == Some(password)
        }
        _ => false,
    };
    if !current {
        let record = users::user_record(cluster, user, password, admin).await?;
        cluster.put_user(&record).await?;
    }
    Ok(())
}

fn generated_password() -> String {
    let bytes: [u8; 18] = rand::random();
    hex_encode(&bytes)
}

/// Reads the kept password, or generates and keeps one (0600) on first start.
fn kept_password(path: &Path) -> Result<String> {
    if let Ok(p) = std::fs::read_to_string(path) {
        let p = p.trim().to_string();
        if !p.is_empty() {
            return Ok(p);
        }
    }
    let p = generated_password();
    write_private(path, &p)?;
    Ok(p)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Where `brickd dev` serves its gateways.
struct Gateways {
    nbd: SocketAddr,
    nfs: SocketAddr,
    smb: SocketAddr,
}

#[derive(Clone, Copy)]
enum GatewayKind {
    Nbd,
    Nfs,
    Smb,
}

impl GatewayKind {
    fn name(self) -> &'static str {
        match self {
            GatewayKind::Nbd => "nbd",
            GatewayKind::Nfs => "nfs",
            GatewayKind::Smb => "smb",
        }
    }
}

/// A gateway `brickd serve` hosts: `--nbd`, `--nfs` or `--smb VOLUME@ADDR`.
struct HostedGateway {
    kind: GatewayKind,
    volume: String,
    listen: SocketAddr,
}

impl HostedGateway {
    fn parse(kind: GatewayKind, spec: &str) -> Result<HostedGateway> {
        let Some((volume, addr)) = spec.split_once('@') else {
            bail!("gateway {spec:?}: expected VOLUME@ADDR, e.g. vm@127.0.0.1:10809");
        };
        brick_cluster::validate_name("volume", volume)?;
        let listen = addr
            .parse()
            .with_context(|| format!("gateway {spec:?}: {addr:?} is not an address"))?;
        Ok(HostedGateway {
            kind,
            volume: volume.to_string(),
            listen,
        })
    }
}

/// Who a hosted gateway's client logs in as.
#[derive(Clone)]
struct GatewayLogin {
    native: String,
    user: String,
    key: [u8; 32],
}

/// Serves a volume through a gateway over the native client library, as `brick nbd serve`
/// and `brick nfs serve` do, in this process (the client reaches the cores in-process);
/// returns the bound address and the switch that stops it. The volume is opened once the node
/// serves management requests (after this returns), and retried every second until it is
/// started.
async fn start_gateway(
    kind: GatewayKind,
    volume: String,
    login: GatewayLogin,
    listen: SocketAddr,
) -> Result<(SocketAddr, tokio::sync::watch::Sender<bool>)> {
    let name = kind.name();
    let listener = match GatewayListener::bind(kind, listen).await {
        Ok(l) => l,
        // A default port already taken (an NFS server on 2049, say) must not stop the dev
        // cluster: take any free port; the address printed and in endpoints.json is the truth.
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && listen.port() != 0 => {
            tracing::warn!("{name} gateway: {listen} is in use; listening on another port");
            GatewayListener::bind(kind, SocketAddr::new(listen.ip(), 0))
                .await
                .with_context(|| format!("{name} gateway: listening on {}:0", listen.ip()))?
        }
        Err(e) => return Err(e).with_context(|| format!("{name} gateway: listening on {listen}")),
    };
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let Some(vol) = open_gateway_volume(&volume, &login, &mut stopped).await else {
            return;
        };
        tracing::info!("{name} gateway for volume {volume:?} serving on {addr}");
        let served = match listener {
            GatewayListener::Nbd(l) => brick_nbd::serve(l, vol, stopped)
                .await
                .map_err(|e| e.to_string()),
            GatewayListener::Nfs(l) => brick_nfs::serve(l, vol, stopped)
                .await
                .map_err(|e| e.to_string()),
            // The share is named after the volume; its users are the volume's (fetched as
            // the node, which may read them: mgmt.rs).
            GatewayListener::Smb(bound) => {
                let client = vol.client.clone();
                brick_smb::serve(bound, client, &volume, &volume, login.key, stopped).await
            }
        };
        if let Err(e) = served {
            tracing::error!("{name} gateway for volume {volume:?} stopped: {e}");
        }
    });
    Ok((addr, stop))
}

/// A hosted gateway's bound listener.
enum GatewayListener {
    Nbd(tokio::net::TcpListener),
    Nfs(tokio::net::TcpListener),
    Smb(brick_smb::Bound),
}

impl GatewayListener {
    async fn bind(kind: GatewayKind, listen: SocketAddr) -> std::io::Result<GatewayListener> {
        Ok(match kind {
            GatewayKind::Nbd => GatewayListener::Nbd(tokio::net::TcpListener::bind(listen).await?),
            GatewayKind::Nfs => GatewayListener::Nfs(tokio::net::TcpListener::bind(listen).await?),
            GatewayKind::Smb => {
                let settings = brick_smb::SmbSettings {
                    listen,
                    require_signing: false,
                };
                GatewayListener::Smb(brick_smb::bind(&settings).await?)
            }
        })
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            GatewayListener::Nbd(l) | GatewayListener::Nfs(l) => l.local_addr(),
            GatewayListener::Smb(bound) => Ok(bound.addr),
        }
    }
}

/// Opens `volume` for a hosted gateway, retrying every second (a volume created or started
/// later); `None` once the node is stopping.
async fn open_gateway_volume(
    volume: &str,
    login: &GatewayLogin,
    stopped: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<brick_client::Volume> {
    let mut warned = false;
    loop {
        let servers = vec![login.native.clone()];
        let opened =
            match brick_client::Client::connect_with_key(servers, &login.user, login.key).await {
                Ok(client) => client.open_volume(volume).await,
                Err(e) => Err(e),
            };
        match opened {
            Ok(vol) => return Some(vol),
            Err(e) if !warned => {
                tracing::warn!("gateway for volume {volume:?} waits for it: {e}");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = stopped.changed() => return None,
        }
    }
}

/// Serves the dev volume as SMB share "dev" for user "dev", as `brick smb serve` does;
/// returns the bound address and the switch that stops it.
async fn start_dev_smb(
    native: &str,
    password: &str,
    listen: SocketAddr,
) -> Result<(SocketAddr, tokio::sync::watch::Sender<bool>)> {
    let mut settings = brick_smb::SmbSettings {
        listen,
        require_signing: false,
    };
    let bound = match brick_smb::bind(&settings).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && listen.port() != 0 => {
            tracing::warn!("smb gateway: {listen} is in use; listening on another port");
            settings.listen = SocketAddr::new(listen.ip(), 0);
            brick_smb::bind(&settings)
                .await
                .with_context(|| format!("smb gateway: listening on {}:0", listen.ip()))?
        }
        Err(e) => return Err(e).with_context(|| format!("smb gateway: listening on {listen}")),
    };
    let addr = bound.addr;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let cfg = brick_client::ClientConfig {
        servers: vec![native.to_string()],
        user: "dev".into(),
        password: password.to_string(),
    };
    let key = auth::password_key(&cfg.user, &cfg.password);
    tokio::spawn(async move {
        let served = match brick_client::Client::connect(cfg).await {
            Ok(client) => brick_smb::serve(bound, client, "dev", "dev", key, stopped).await,
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = served {
            tracing::error!("smb gateway stopped: {e}");
        }
    });
    Ok((addr, stop))
}

async fn run_dev(
    dir: PathBuf,
    replica: u8,
    listen: SocketAddr,
    gateways: Gateways,
    tuning: Tuning,
) -> Result<()> {
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let password = kept_password(&dir.join("dev-password"))?;
    let store = StoreSpec::Embedded(dir.join("cluster"));
    let running = start_node("dev", listen, &store, tuning).await?;
    let cluster = running.mgmt.cluster.clone();
    ensure_user(&cluster, "dev", &password, true).await?;
    let bricks: Vec<BrickSpec> = (0..replica)
        .map(|i| BrickSpec {
            node: "dev".into(),
            path: dir
                .join("bricks")
                .join(format!("b{i}"))
                .to_string_lossy()
                .into_owned(),
        })
        .collect();
    match cluster
        .create_volume("dev", replica as u32, bricks, None)
        .await
    {
        Ok(_) | Err(ClusterError::Exists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    if cluster.volume("dev").await?.status != VolumeStatus::Started {
        let (r, _) = running
            .mgmt
            .handle(
                MgmtOp::VolumeStart(VolumeStart { name: "dev".into() }),
                "dev",
                true,
            )
            .await;
        r.map_err(|(_, why)| anyhow::anyhow!(why))?;
    }
    if !cluster
        .volume("dev")
        .await?
        .options
        .contains_key("access.dev")
    {
        cluster
            .update_volume("dev", |v| {
                v.options.insert("access.dev".into(), "rw".into());
                Ok(())
            })
            .await?;
    }
    republish(&running.mgmt, &running.dataplane).await?;
    let native = running.dataplane.shard_addrs[0].to_string();
    let login = GatewayLogin {
        native: native.clone(),
        user: "dev".into(),
        key: auth::password_key("dev", &password),
    };
    let (nbd, stop_nbd) =
        start_gateway(GatewayKind::Nbd, "dev".into(), login.clone(), gateways.nbd).await?;
    let (nfs, stop_nfs) =
        start_gateway(GatewayKind::Nfs, "dev".into(), login, gateways.nfs).await?;
    let (smb, stop_smb) = start_dev_smb(&native, &password, gateways.smb).await?;
    let endpoints = serde_json::json!({
        "native": native,
        "nbd": nbd.to_string(),
        "nfs": nfs.to_string(),
        "smb": smb.to_string(),
        "volume": "dev",
        "user": "dev",
        "password": password,
        "cores": running.dataplane.shard_addrs.len(),
    });
    write_private(
        &dir.join("endpoints.json"),
        &serde_json::to_string_pretty(&endpoints)?,
    )?;
    println!(
        "brickd dev serving volume \"dev\" (replica {}) from {}",
        cluster.volume("dev").await?.replica,
        dir.display()
    );
    println!("  native  {native}");
    println!(
        "  nbd     nbd://{nbd}/PATH (a file of the volume, e.g. qemu-img info nbd://{nbd}/vm.img)"
    );
    println!(
        "  nfs     nfs://{}/?version=3&nfsport={port}&mountport={port} (NFSv3, MOUNT on the same port)",
        nfs.ip(),
        port = nfs.port()
    );
    println!(
        "  smb     smbclient //{}/dev -p {} -U dev (share \"dev\"; SMB 2.0.2 to 3.1.1)",
        smb.ip(),
        smb.port()
    );
    println!(
        "  user    dev (password in {})",
        dir.join("endpoints.json").display()
    );
    println!(
        "  try     brick --endpoints {} ls dev/",
        dir.join("endpoints.json").display()
    );
    serve_until_signal(running, vec![stop_nbd, stop_nfs, stop_smb]).await
}

async fn run_serve(
    node: String,
    listen: SocketAddr,
    store: StoreSpec,
    tuning: Tuning,
    (admin_user, admin_password): (String, Option<String>),
    hosted: Vec<HostedGateway>,
) -> Result<()> {
    brick_cluster::validate_name("node", &node)?;
    let running = start_node(&node, listen, &store, tuning).await?;
    let cluster = running.mgmt.cluster.clone();
    if cluster.list_users().await?.is_empty() {
        let password = match admin_password {
            Some(p) => p,
            None => {
                let p = generated_password();
                eprintln!("created admin user {admin_user:?} with password {p}");
                p
            }
        };
        ensure_user(&cluster, &admin_user, &password, true).await?;
        republish(&running.mgmt, &running.dataplane).await?;
    }
    let login = GatewayLogin {
        native: running.dataplane.shard_addrs[0].to_string(),
        user: brick_dataplane::NODE_USER.to_string(),
        key: cluster.node_key().await?,
    };
    let mut stops = Vec::new();
    for g in hosted {
        let (addr, stop) = start_gateway(g.kind, g.volume, login.clone(), g.listen).await?;
        println!("brickd node {node}: {} gateway on {addr}", g.kind.name());
        stops.push(stop);
    }
    println!(
        "brickd node {node} serving on {}",
        running.dataplane.shard_addrs[0]
    );
    serve_until_signal(running, stops).await
}
