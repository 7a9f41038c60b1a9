//! `brick`: the admin CLI and client tools. Every command that reports takes `--json` and then
//! prints exactly one JSON document on stdout; progress goes to stderr.

mod files;
mod heal;
mod users;

use anyhow::{anyhow, bail, Context, Result};
use brick_bench::{BenchOptions, Workload};
use brick_client::{Client, ClientConfig};
use brick_cluster::mgmt::{self as op, MgmtCall};
use brick_cluster::report::ErrorReport;
use brick_tuning::DEV_NATIVE_PORT;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "brick", version, about = "brickd admin CLI and client tools")]
struct Cli {
    /// Servers to bootstrap from (any one reachable is enough).
    #[arg(long, env = "BRICK_SERVERS", value_delimiter = ',', global = true)]
    servers: Vec<String>,
    #[arg(long, env = "BRICK_USER", global = true)]
    user: Option<String>,
    #[arg(long, env = "BRICK_PASSWORD", global = true, hide_env_values = true)]
    password: Option<String>,
    /// endpoints.json written by `brickd dev` (servers, user and password default from it).
    #[arg(long, env = "BRICK_ENDPOINTS", global = true)]
    endpoints: Option<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// No progress on stderr.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// How long a write waits for a placement group with too few members up to date to get
    /// one back before failing with "below min_size" (default and most: 30000; 0: fail at
    /// once).
    #[arg(
        long,
        env = "BRICK_BELOW_MIN_SIZE_WAIT_MS",
        global = true,
        value_name = "MS"
    )]
    below_min_size_wait_ms: Option<u64>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Volume management.
    Volume {
        #[command(subcommand)]
        cmd: VolumeCmd,
    },
    /// Cluster membership.
    Peer {
        #[command(subcommand)]
        cmd: PeerCmd,
    },
    /// Upload a local file to VOLUME/PATH (written under a temporary name, then renamed).
    Put { local: PathBuf, remote: String },
    /// Download VOLUME/PATH to a local file.
    Get { remote: String, local: PathBuf },
    /// List a directory (or show one file).
    Ls { remote: String },
    /// Show attributes.
    Stat { remote: String },
    /// Remove a file or an empty directory (-r: a whole tree).
    Rm {
        remote: String,
        #[arg(short, long)]
        recursive: bool,
    },
    /// Create a directory (-p: with its parents, no error if it exists).
    Mkdir {
        remote: String,
        #[arg(short, long)]
        parents: bool,
    },
    /// Measure a volume through the native client.
    Bench(BenchArgs),
    /// What is being healed.
    Heal {
        #[command(subcommand)]
        cmd: HealCmd,
    },
    /// Node questions.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Mount VOLUME at MOUNTPOINT through FUSE; stays in the foreground and unmounts on
    /// Ctrl-C or SIGTERM (or when `brick umount` unmounts it).
    Mount { volume: String, mountpoint: PathBuf },
    /// Unmount a `brick mount` (its process then exits).
    Umount { mountpoint: PathBuf },
    /// NBD gateway: exports the volume's files to QEMU, qemu-img, libnbd and fio.
    Nbd {
        #[command(subcommand)]
        cmd: NbdCmd,
    },
    /// NFSv3 gateway (NFS and MOUNT on one port) for Linux hosts and libnfs clients.
    Nfs {
        #[command(subcommand)]
        cmd: NfsCmd,
    },
    /// SMB2/3 gateway for Windows, macOS and smbclient; logins are the cluster's users.
    Smb {
        #[command(subcommand)]
        cmd: SmbCmd,
    },
    /// Users (native protocol and SMB logins).
    User {
        #[command(subcommand)]
        cmd: users::UserCmd,
    },
}

#[derive(Subcommand)]
enum SmbCmd {
    /// Serve VOLUME as an SMB share until SIGINT or SIGTERM. Users get in with
    /// `brick volume set VOLUME access.USER ro|rw`; `smb.encrypt on` requires encryption.
    Serve {
        volume: String,
        #[arg(long, default_value = "127.0.0.1:445")]
        listen: String,
        /// Share name (default: the volume's name).
        #[arg(long)]
        share: Option<String>,
        /// Every session must sign its messages.
        #[arg(long)]
        require_signing: bool,
    },
}

#[derive(Subcommand)]
enum NfsCmd {
    /// Serve VOLUME over NFSv3 (export `/` = the volume root) until SIGINT or SIGTERM.
    Serve {
        volume: String,
        #[arg(long, default_value = "127.0.0.1:2049")]
        listen: String,
    },
}

#[derive(Subcommand)]
enum NbdCmd {
    /// Serve VOLUME's regular files over NBD (export name = path in the volume) until
    /// SIGINT or SIGTERM.
    Serve {
        volume: String,
        #[arg(long, default_value = "127.0.0.1:10809")]
        listen: String,
    },
}

#[derive(Subcommand)]
enum HealCmd {
    /// Per PG and file: source and target brick, bytes left and copied, rate, ETA.
    Status {
        volume: String,
        /// Refresh every second with progress bars until everything is healed.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Whether the node can be switched off without losing the last up-to-date copy of
    /// anything or stopping writes; lists every PG in the way.
    CanStop { node: String },
}

#[derive(Subcommand)]
enum VolumeCmd {
    /// create NAME [replica R] NODE:DIR [NODE:DIR...]  (bricks listed replica set by replica set)
    Create {
        name: String,
        #[arg(num_args = 1.., required = true)]
        args: Vec<String>,
        /// Placement groups (default 64).
        #[arg(long)]
        pgs: Option<u32>,
    },
    Start {
        name: String,
    },
    Stop {
        name: String,
    },
    Delete {
        name: String,
    },
    Info {
        name: String,
    },
    Status {
        name: String,
    },
    List,
    /// set NAME KEY VALUE (keys: io.mode, io.direct_min_bytes, heal.rate, smb.encrypt on|off,
    /// access.USER ro|rw|none: USER's access to the volume's SMB share)
    Set {
        name: String,
        key: String,
        value: String,
    },
    /// replace-brick NAME OLD_NODE:DIR NEW_NODE:DIR: the new (empty) brick takes the old
    /// one's place and gets a full heal; `brick heal status NAME` follows it
    ReplaceBrick {
        name: String,
        old: String,
        new: String,
    },
    /// add-brick NAME NODE:DIR [NODE:DIR...]: adds whole replica sets; `rebalance NAME start`
    /// then moves their share of the PGs to them
    AddBrick {
        name: String,
        #[arg(num_args = 1.., required = true)]
        bricks: Vec<String>,
    },
    /// remove-brick NAME NODE:DIR... start|status|stop|commit: drains one replica set's PGs
    /// to the others; commit takes it out once it holds nothing
    RemoveBrick {
        name: String,
        /// The set's bricks, then the action.
        #[arg(num_args = 2.., required = true)]
        args: Vec<String>,
        /// With status: refresh every second until the drain ends.
        #[arg(long)]
        watch: bool,
    },
    /// rebalance NAME start|stop|status: moves PGs so that every replica set holds its share
    /// (by capacity); a moved PG is healed into its new set, verified, then committed
    Rebalance {
        name: String,
        action: String,
        /// With status: refresh every second until the rebalance ends.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Subcommand)]
enum PeerCmd {
    Add { name: String, addr: String },
    List,
    Remove { name: String },
}

#[derive(Args)]
struct BenchArgs {
    #[arg(long)]
    volume: String,
    /// randwrite-4k | randread-4k | seqwrite-1m | seqread-1m
    #[arg(long)]
    workload: String,
    #[arg(long, default_value_t = 32)]
    qd: u32,
    #[arg(long, default_value_t = 1)]
    jobs: u32,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Bytes per job file (default 1 GiB).
    #[arg(long, default_value_t = 1 << 30)]
    size: u64,
    /// Stop after this many requests even if time remains.
    #[arg(long, default_value_t = 1_000_000_000)]
    ops_max: u64,
}

/// The system allocator spent a fifth of a replica's core in malloc/free of the 4 KiB
/// buffers of a random-write load (bins, consolidation); mimalloc keeps them per thread. It
/// also keeps freed MiB-sized READ and WRITE buffers for reuse (no page clearing in a profile
/// of a 1 GiB NFS read), which glibc needed mallopt thresholds for.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    if matches!(
        cli.cmd,
        Cmd::Mount { .. } | Cmd::Nfs { .. } | Cmd::Smb { .. } | Cmd::Nbd { .. }
    ) {
        // Long-running servers report what goes wrong (a restarted nfsserve, a lost brick).
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("BRICK_LOG")
                    // fuser warns once per unimplemented call a kernel makes (xattrs, poll).
                    .unwrap_or_else(|_| "info,nfsserve=off,smb_server=warn,fuser=error".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    // Gateways serve many clients at once; one-shot commands need one thread.
    let mut builder = match cli.cmd {
        // NBD: one thread (fewer cross-thread wake-ups measured as fast or faster).
        Cmd::Mount { .. } | Cmd::Nfs { .. } | Cmd::Smb { .. } => {
            tokio::runtime::Builder::new_multi_thread()
        }
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("brick: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    let json_out = cli.json;
    match rt.block_on(run(cli)) {
        Ok(()) => {}
        Err(e) => {
            if json_out {
                let doc = ErrorReport {
                    error: format!("{e:#}"),
                };
                match serde_json::to_string(&doc) {
                    Ok(text) => println!("{text}"),
                    Err(e) => eprintln!("brick: cannot print the error as JSON: {e}"),
                }
            }
            eprintln!("brick: {e:#}");
            std::process::exit(1);
        }
    }
}

fn client_config(cli: &Cli) -> Result<ClientConfig> {
    let endpoints_path = cli.endpoints.clone().or_else(|| {
        let default = PathBuf::from("brickd-dev/endpoints.json");
        default.exists().then_some(default)
    });
    let endpoints: Option<Value> = match &endpoints_path {
        Some(p) => Some(
            serde_json::from_str(
                &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            )
            .with_context(|| format!("parsing {}", p.display()))?,
        ),
        None => None,
    };
    let from_endpoints = |key: &str| {
        endpoints
            .as_ref()
            .and_then(|e| e[key].as_str().map(str::to_string))
    };
    let servers = if !cli.servers.is_empty() {
        cli.servers.clone()
    } else if let Some(native) = from_endpoints("native") {
        vec![native]
    } else {
        vec![format!("127.0.0.1:{DEV_NATIVE_PORT}")]
    };
    let user = cli
        .user
        .clone()
        .or_else(|| from_endpoints("user"))
        .unwrap_or_else(|| "dev".into());
    let password = cli
        .password
        .clone()
        .or_else(|| from_endpoints("password"))
        .ok_or_else(|| anyhow!("no password: pass --password, set BRICK_PASSWORD, or point --endpoints at brickd dev's endpoints.json"))?;
    Ok(ClientConfig {
        servers,
        user,
        password,
    })
}

pub(crate) struct Out {
    pub json: bool,
    pub quiet: bool,
}

impl Out {
    pub fn progress(&self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }

    /// Prints the document as JSON on one line (the typed document, field for field), or
    /// the text rendering of it.
    pub fn report<T: Serialize>(&self, doc: &T, text: impl FnOnce(&T) -> String) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string(doc)?);
        } else {
            println!("{}", text(doc));
        }
        Ok(())
    }
}

async fn run(cli: Cli) -> Result<()> {
    if let Cmd::Umount { mountpoint } = &cli.cmd {
        return umount(mountpoint);
    }
    let cfg = client_config(&cli)?;
    let out = Out {
        json: cli.json,
        quiet: cli.quiet,
    };
    let caller_key = brick_wire::auth::password_key(&cfg.user, &cfg.password);
    let client = Client::connect(cfg).await?;
    if let Some(ms) = cli.below_min_size_wait_ms {
        client.set_below_min_size_wait(std::time::Duration::from_millis(ms));
    }
    match cli.cmd {
        Cmd::User { cmd } => users::run(&client, &caller_key, &out, cmd).await,
        Cmd::Smb {
            cmd:
                SmbCmd::Serve {
                    volume,
                    listen,
                    share,
                    require_signing,
                },
        } => {
            let share = share.unwrap_or_else(|| volume.clone());
            smb_serve(
                client,
                caller_key,
                &volume,
                &share,
                &listen,
                require_signing,
            )
            .await
        }
        Cmd::Volume { cmd } => volume(&client, &out, cmd).await,
        Cmd::Peer { cmd } => match cmd {
            PeerCmd::Add { name, addr } => show(&client, &out, &op::PeerAdd { name, addr }).await,
            PeerCmd::List => show(&client, &out, &op::PeerList {}).await,
            PeerCmd::Remove { name } => show(&client, &out, &op::PeerRemove { name }).await,
        },
        Cmd::Put { local, remote } => files::put(&client, &out, &local, &remote).await,
        Cmd::Get { remote, local } => files::get(&client, &out, &remote, &local).await,
        Cmd::Ls { remote } => files::ls(&client, &out, &remote).await,
        Cmd::Stat { remote } => files::stat(&client, &out, &remote).await,
        Cmd::Rm { remote, recursive } => files::rm(&client, &out, &remote, recursive).await,
        Cmd::Mkdir { remote, parents } => files::mkdir(&client, &out, &remote, parents).await,
        Cmd::Bench(args) => bench(&client, &out, args).await,
        Cmd::Heal {
            cmd: HealCmd::Status { volume, watch },
        } => heal::status(&client, &out, &volume, watch).await,
        Cmd::Node {
            cmd: NodeCmd::CanStop { node },
        } => heal::can_stop(&client, &out, &node).await,
        Cmd::Nbd {
            cmd: NbdCmd::Serve { volume, listen },
        } => gateway_serve(&client, GatewayKind::Nbd, &volume, &listen).await,
        Cmd::Nfs {
            cmd: NfsCmd::Serve { volume, listen },
        } => gateway_serve(&client, GatewayKind::Nfs, &volume, &listen).await,
        Cmd::Mount { volume, mountpoint } => mount(&client, &volume, &mountpoint).await,
        Cmd::Umount { .. } => unreachable!("handled before connecting"),
    }
}

async fn mount(client: &Client, volume: &str, mountpoint: &std::path::Path) -> Result<()> {
    let vol = client.open_volume(volume).await?;
    let canonical = mountpoint
        .canonicalize()
        .with_context(|| format!("mount point {}", mountpoint.display()))?;
    let rt = tokio::runtime::Handle::current();
    let session = brick_fuse::mount(vol, rt, &canonical)
        .with_context(|| format!("mounting {volume} at {}", canonical.display()))?;
    println!("mounted volume {volume:?} at {}", canonical.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                if session.guard.is_finished() || !is_mounted(&canonical) {
                    // Unmounted from outside (`brick umount`, umount(8)). A lazy unmount may
                    // leave the session thread waiting: it is not waited for.
                    return Ok(());
                }
            }
        }
    }
    let stop = tokio::task::spawn_blocking(move || session.umount_and_join());
    match tokio::time::timeout(std::time::Duration::from_secs(UNMOUNT_WAIT_S), stop).await {
        Ok(joined) => joined??,
        Err(_) => {
            // Unmounted, but the kernel keeps the connection while something still uses it.
            eprintln!("brick mount: the FUSE session did not end within {UNMOUNT_WAIT_S} s after the unmount; exiting");
            std::process::exit(0);
        }
    }
    Ok(())
}

/// How long `brick mount` waits for its FUSE session to end after unmounting.
const UNMOUNT_WAIT_S: u64 = 5;

fn is_mounted(mountpoint: &std::path::Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let want = mountpoint.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_ref()))
}

fn umount(mountpoint: &std::path::Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| anyhow!("mount point contains a NUL byte"))?;
    // SAFETY: a valid NUL-terminated path; umount2 reads it only.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
        let err = std::io::Error::last_os_error();
        bail!("umount {}: {err}", mountpoint.display());
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum GatewayKind {
    Nbd,
    Nfs,
}

/// Runs the NBD or NFS gateway for `volume` on `listen` until SIGINT or SIGTERM, then stops it
/// cleanly (open connections are closed).
async fn gateway_serve(
    client: &Client,
    kind: GatewayKind,
    volume: &str,
    listen: &str,
) -> Result<()> {
    let name = match kind {
        GatewayKind::Nbd => "nbd",
        GatewayKind::Nfs => "nfs",
    };
    let vol = client.open_volume(volume).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("{name}: listening on {listen}"))?;
    let addr = listener.local_addr()?;
    let how = match kind {
        GatewayKind::Nbd => format!("export name = file path, e.g. nbd://{addr}/vm.img"),
        GatewayKind::Nfs => format!(
            "NFSv3 and MOUNT on port {port}, export /: \
             nfs://{ip}/?version=3&nfsport={port}&mountport={port}",
            ip = addr.ip(),
            port = addr.port()
        ),
    };
    println!("{name} serving volume {volume:?} on {addr} ({how})");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = match kind {
        GatewayKind::Nbd => tokio::spawn(brick_nbd::serve(listener, vol, stopped)),
        GatewayKind::Nfs => tokio::spawn(brick_nfs::serve(listener, vol, stopped)),
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let _ = stop.send(true);
    server.await??;
    Ok(())
}

/// Runs the SMB gateway for `volume` until SIGINT or SIGTERM, then stops it cleanly.
async fn smb_serve(
    client: Client,
    caller_key: [u8; 32],
    volume: &str,
    share: &str,
    listen: &str,
    require_signing: bool,
) -> Result<()> {
    let listen: std::net::SocketAddr = tokio::net::lookup_host(listen)
        .await
        .with_context(|| format!("smb: resolving {listen}"))?
        .next()
        .ok_or_else(|| anyhow!("smb: {listen} resolves to no address"))?;
    let settings = brick_smb::SmbSettings {
        listen,
        require_signing,
    };
    let bound = brick_smb::bind(&settings)
        .await
        .with_context(|| format!("smb: listening on {listen}"))?;
    let addr = bound.addr;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (volume_owned, share_owned) = (volume.to_string(), share.to_string());
    let mut server = tokio::spawn(async move {
        brick_smb::serve(
            bound,
            client,
            &volume_owned,
            &share_owned,
            caller_key,
            stopped,
        )
        .await
    });
    println!(
        "smb serving volume {volume:?} as share {share:?} on {addr} (smbclient //{ip}/{share} -p {port} -U USER)",
        ip = addr.ip(),
        port = addr.port()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        // Ended on its own: the cluster refused the share (no such volume, not an admin).
        ended = &mut server => return ended?.map_err(|e| anyhow!("smb: {e}")),
    }
    let _ = stop.send(true);
    server.await?.map_err(|e| anyhow!(e))?;
    Ok(())
}

/// The text rendering of replies without one of their own: the document, indented.
pub(crate) fn pretty<T: Serialize>(doc: &T) -> String {
    serde_json::to_string_pretty(doc).unwrap_or_else(|e| format!("(cannot render the reply: {e})"))
}

/// Sends `req` and prints its reply.
pub(crate) async fn show<C: MgmtCall>(client: &Client, out: &Out, req: &C) -> Result<()> {
    let reply = client.mgmt(req).await?;
    out.report(&reply, pretty)
}

async fn volume(client: &Client, out: &Out, cmd: VolumeCmd) -> Result<()> {
    match cmd {
        VolumeCmd::Create { name, args, pgs } => {
            let (replica, bricks) = match args.first().map(String::as_str) {
                Some("replica") => {
                    let r = args
                        .get(1)
                        .and_then(|r| r.parse().ok())
                        .ok_or_else(|| anyhow!("`replica` must be followed by a number"))?;
                    (r, args[2..].to_vec())
                }
                _ => (1, args),
            };
            if bricks.is_empty() {
                bail!("no bricks given: volume create NAME [replica R] NODE:DIR [NODE:DIR...]");
            }
            let req = op::VolumeCreate {
                name,
                replica,
                bricks,
                pg_count: pgs,
            };
            show(client, out, &req).await
        }
        VolumeCmd::Start { name } => show(client, out, &op::VolumeStart { name }).await,
        VolumeCmd::Stop { name } => show(client, out, &op::VolumeStop { name }).await,
        VolumeCmd::Delete { name } => show(client, out, &op::VolumeDelete { name }).await,
        VolumeCmd::Info { name } => show(client, out, &op::VolumeInfo { name }).await,
        VolumeCmd::Status { name } => show(client, out, &op::VolumeStatus { name }).await,
        VolumeCmd::List => show(client, out, &op::VolumeList {}).await,
        VolumeCmd::Set { name, key, value } => {
            show(client, out, &op::VolumeSet { name, key, value }).await
        }
        VolumeCmd::ReplaceBrick { name, old, new } => {
            show(client, out, &op::VolumeReplaceBrick { name, old, new }).await
        }
        VolumeCmd::AddBrick { name, bricks } => {
            show(client, out, &op::VolumeAddBrick { name, bricks }).await
        }
        VolumeCmd::RemoveBrick {
            name,
            mut args,
            watch,
        } => {
            let action = args.pop().unwrap_or_default();
            let req = op::VolumeRemoveBrick {
                name,
                bricks: args,
                action,
            };
            rebalance_report(client, out, &req, watch).await
        }
        VolumeCmd::Rebalance {
            name,
            action,
            watch,
        } => rebalance_report(client, out, &op::VolumeRebalance { name, action }, watch).await,
    }
}

/// Sends a rebalance or remove-brick request and prints where the rebalance is; with
/// `watch`, asks again every second until it is no longer running.
async fn rebalance_report<C>(client: &Client, out: &Out, req: &C, watch: bool) -> Result<()>
where
    C: MgmtCall<Reply = op::RebalanceStatus>,
{
    loop {
        let st = client.mgmt(req).await?;
        let running = st.state == "running";
        out.report(&st, rebalance_text)?;
        if !watch || !running {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

fn rebalance_text(st: &op::RebalanceStatus) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut s = format!(
        "volume {}: rebalance {}{}\n  PGs moved {}/{}; {:.1} MiB in {} files moved, {:.1} MiB in {} files left; {:.1} MiB/s{}; {:.1} s",
        st.volume,
        st.state,
        if st.removing.is_empty() {
            String::new()
        } else {
            format!(" (draining {})", st.removing.join(" "))
        },
        st.pgs_moved,
        st.pgs_to_move,
        mib(st.bytes_moved),
        st.files_moved,
        mib(st.bytes_left),
        st.files_left,
        mib(st.rate_bytes_s),
        st.eta_s.map(|e| format!(", ETA {e} s")).unwrap_or_default(),
        st.elapsed_ms as f64 / 1000.0
    );
    for m in &st.moving {
        s.push_str(&format!(
            "\n  PG {}: {} -> {} ({}, {:.1} MiB in {} files)",
            m.pg,
            m.from.join(","),
            m.to.join(","),
            m.phase,
            mib(m.bytes),
            m.files
        ));
    }
    if let Some(e) = &st.error {
        s.push_str(&format!("\n  error: {e}"));
    }
    if !st.note.is_empty() {
        s.push_str(&format!("\n  {}", st.note));
    }
    s
}

async fn bench(client: &Client, out: &Out, a: BenchArgs) -> Result<()> {
    let workload = Workload::parse(&a.workload).ok_or_else(|| {
        anyhow!(
            "unknown workload {:?}; one of {}",
            a.workload,
            Workload::ALL
                .iter()
                .map(|w| w.name())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let opts = BenchOptions {
        workload,
        qd: a.qd,
        jobs: a.jobs,
        seconds: a.seconds,
        size_bytes: a.size,
        ops_max: a.ops_max,
    };
    opts.validate().map_err(|e| anyhow!(e))?;
    let vol = client.open_volume(&a.volume).await?;
    let report = brick_bench::run(&vol, &opts, &|line| out.progress(line)).await?;
    out.report(&report, |report| {
        let cpu = report.host_cpu_us_per_op.map_or(String::new(), |us| {
            format!(
                "; this machine's CPUs: {us:.1} us per op ({} CPUs)",
                report.host_cpus
            )
        });
        format!(
            "{} qd={} jobs={}: {:.0} IOPS, {:.1} MiB/s, latency us p50={} p99={} p99.9={} max={} ({} ops, {} errors){cpu}",
            workload.name(),
            report.qd,
            report.jobs,
            report.iops,
            report.mib_s,
            report.lat_us.p50,
            report.lat_us.p99,
            report.lat_us.p999,
            report.lat_us.max,
            report.ops,
            report.errors
        )
    })
}
