//! Starting the per-core executors and each core's accept / control / forward loops.

use crate::ctx::{CoreCtx, CoreParts, Forward};
use crate::files::FileCache;
use crate::repl::ReplCore;
use crate::state::{Control, DataplaneConfig, HealReports, MapRequest, MgmtRequest, ServeState};
use brick_tuning::{
    CORE_CHANNEL_DEPTH, CORE_CONNECTIONS_MAX, CORE_IO_MEMORY_BYTES, CORE_IO_MEMORY_BYTES_MIN,
    UNLINKED_SWEEP_INTERVAL_MS,
};
use brick_wire::local::{NbdSessionEnd, ToCore};
use brick_wire::ErrorCode;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// The running cores.
pub(crate) struct Started {
    pub shard_addrs: Vec<SocketAddr>,
    pub heal_reports: HealReports,
    pub controls: Vec<flume::Sender<Control>>,
    pub handles: Vec<glommio::ExecutorJoinHandle<()>>,
}

pub(crate) fn start(
    cfg: DataplaneConfig,
    state: Arc<ServeState>,
    mgmt: flume::Sender<MgmtRequest>,
    maps: flume::Sender<MapRequest>,
) -> std::io::Result<Started> {
    assert!(cfg.cores >= 1);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let io_memory = io_memory_per_core(cfg.cores);
    let (fwd_txs, fwd_rxs): (Vec<_>, Vec<_>) = (0..cfg.cores)
        .map(|_| flume::bounded(CORE_CHANNEL_DEPTH))
        .unzip();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel::<(usize, std::io::Result<SocketAddr>)>();
    let mut addr_txs = Vec::new();
    let heal_reports: HealReports = Default::default();
    crate::disk::spawn_prober(std::sync::Arc::downgrade(&heal_reports));
    let mut controls = Vec::new();
    let mut handles = Vec::new();
    for (core, fwd_rx) in fwd_rxs.into_iter().enumerate() {
        let (control_tx, control_rx) = flume::unbounded::<Control>();
        let (addr_tx, addr_rx) = flume::bounded::<Vec<String>>(1);
        controls.push(control_tx);
        addr_txs.push(addr_tx);
        let listen = if core == 0 {
            cfg.listen
        } else {
            SocketAddr::new(cfg.listen.ip(), 0)
        };
        let placement = match cfg.cpus.get(core) {
            Some(&cpu) if cfg.pin => Placement::Fixed(cpu),
            None if cfg.pin && core < cpus => Placement::Fixed(core),
            _ => Placement::Unbound,
        };
        let (peers, mgmt, maps, state, bound_tx) = (
            fwd_txs.clone(),
            mgmt.clone(),
            maps.clone(),
            state.clone(),
            bound_tx.clone(),
        );
        let heal_reports = heal_reports.clone();
        let ncores = cfg.cores;
        let spin_us = cfg.spin_before_park_us;
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("brick-core{core}"))
            .io_memory(io_memory)
            .spin_before_park(std::time::Duration::from_micros(spin_us))
            .spawn(move || async move {
                let listener = match bind_exclusive(listen) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = bound_tx.send((core, Err(e)));
                        return;
                    }
                };
                let _ = bound_tx.send((core, listener.local_addr().map_err(Into::into)));
                let Ok(shard_addrs) = addr_rx.recv_async().await else {
                    return;
                };
                let files = Rc::new(RefCell::new(FileCache::default()));
                let repl = ReplCore::new((core, ncores), files.clone(), maps, heal_reports);
                let ctx = Rc::new(CoreCtx::new(CoreParts {
                    core,
                    ncores,
                    state: state.clone(),
                    cores: peers,
                    mgmt,
                    shard_addrs,
                    files,
                    repl: repl.clone(),
                }));
                probe_bricks(&ctx, &state).await;
                ctx.set_state(state);
                glommio::spawn_local(repl.tick_loop()).detach();
                glommio::spawn_local(release_unlinked_loop(ctx.clone())).detach();
                glommio::spawn_local(crate::stall::stall_watch_loop(core)).detach();
                run_core(ctx, listener, control_rx, fwd_rx).await;
            })
            .map_err(std::io::Error::from)?;
        handles.push(handle);
    }
    drop(bound_tx);
    let mut shard_addrs = vec![None; cfg.cores];
    for _ in 0..cfg.cores {
        let (core, addr) = bound_rx
            .recv()
            .map_err(|_| std::io::Error::other("a dataplane core exited before binding"))?;
        shard_addrs[core] = Some(
            addr.map_err(|e| std::io::Error::new(e.kind(), format!("core {core}: bind: {e}")))?,
        );
    }
    let shard_addrs: Vec<SocketAddr> = shard_addrs.into_iter().flatten().collect();
    let texts: Vec<String> = shard_addrs.iter().map(|a| a.to_string()).collect();
    for tx in &addr_txs {
        let _ = tx.send(texts.clone());
    }
    Ok(Started {
        shard_addrs,
        heal_reports,
        controls,
        handles,
    })
}

/// io_uring-registered memory per core: the full pool when the memlock limit allows it for
/// every core, else a small one (glommio then allocates the rest from the heap, slower).
fn io_memory_per_core(cores: usize) -> usize {
    let limit = raise_soft_limit(libc::RLIMIT_MEMLOCK).unwrap_or(libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    });
    // SAFETY: geteuid has no preconditions.
    let privileged = unsafe { libc::geteuid() } == 0;
    let wanted = (CORE_IO_MEMORY_BYTES * cores) as u64;
    if privileged || limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= wanted * 2 {
        CORE_IO_MEMORY_BYTES
    } else {
        tracing::warn!(
            memlock_bytes = limit.rlim_cur,
            "memlock limit too low for a {} MiB io_uring buffer pool per core; using {} KiB",
            CORE_IO_MEMORY_BYTES >> 20,
            CORE_IO_MEMORY_BYTES_MIN >> 10
        );
        CORE_IO_MEMORY_BYTES_MIN
    }
}

/// Binds without SO_REUSEPORT (which glommio's own `bind` always sets): a second daemon on
/// the same address must fail to start, not silently receive half of the connections.
fn bind_exclusive(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::IntoRawFd;
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let fd = std_listener.into_raw_fd();
    // SAFETY: `fd` is a bound, listening socket we own; ownership moves into the listener.
    Ok(unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Connections a core has open, sockets and in-process ones alike, stay under the limit.
fn admit(ctx: &CoreCtx) -> bool {
    if !ctx.admit(CORE_CONNECTIONS_MAX) {
        tracing::warn!(
            core = ctx.core(),
            "connection limit reached; closing new connection"
        );
        return false;
    }
    true
}

async fn run_core(
    ctx: Rc<CoreCtx>,
    listener: TcpListener,
    control_rx: flume::Receiver<Control>,
    fwd_rx: flume::Receiver<Forward>,
) {
    let fwd_ctx = ctx.clone();
    glommio::spawn_local(async move {
        while let Ok(f) = fwd_rx.recv_async().await {
            let ctx = fwd_ctx.clone();
            glommio::spawn_local(async move {
                let frame =
                    crate::dispatch::execute_payload(&ctx, f.opcode, f.request_id, f.payload).await;
                let _ = f.reply.send(frame);
            })
            .detach();
        }
    })
    .detach();
    // Clients in this process (hosted gateways) reach this core without a socket.
    let local = listener
        .local_addr()
        .map(|addr| brick_wire::local::register(addr, CORE_CHANNEL_DEPTH));
    let (_registration, _local_task) = match local {
        Ok((registration, rx)) => (
            Some(registration),
            Some(glommio::spawn_local(local_loop(ctx.clone(), rx))),
        ),
        Err(e) => {
            tracing::warn!(core = ctx.core(), "no in-process connections: {e}");
            (None, None)
        }
    };
    // Accepting runs in its own task and is never raced against other events: dropping an
    // io_uring accept that the kernel has just completed loses that connection (its client
    // then waits for a handshake reply that never comes).
    let _accept_task = glommio::spawn_local(accept_loop(ctx.clone(), listener));
    while let Ok(control) = control_rx.recv_async().await {
        match control {
            Control::State(state, applied) => {
                probe_bricks(&ctx, &state).await;
                ctx.set_state(state);
                let _ = applied.send(());
            }
            Control::Shutdown => break,
        }
    }
    // Dropping the tasks stops accepting and unregisters this core.
}

/// Releases cached descriptors of unlinked files (`FileCache::release_unlinked`) after any
/// brick of this node changed its namespace, checked every `UNLINKED_SWEEP_INTERVAL_MS`.
async fn release_unlinked_loop(ctx: Rc<CoreCtx>) {
    let mut swept_at = None;
    loop {
        glommio::timer::sleep(Duration::from_millis(UNLINKED_SWEEP_INTERVAL_MS)).await;
        let generations: Vec<u64> = ctx
            .state()
            .volumes
            .values()
            .flat_map(|v| v.local_members().map(|(_, brick)| brick.generation()))
            .collect();
        if swept_at.as_ref() == Some(&generations) {
            continue;
        }
        let released = ctx.files().borrow_mut().release_unlinked();
        if released > 0 {
            tracing::debug!(
                core = ctx.core(),
                released,
                "released descriptors of unlinked files"
            );
        }
        swept_at = Some(generations);
    }
}

async fn accept_loop(ctx: Rc<CoreCtx>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if admit(&ctx) {
                    spawn_connection(&ctx, crate::conn::serve(ctx.clone(), stream));
                }
            }
            Err(e) => {
                tracing::warn!(core = ctx.core(), "accept failed: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// In-process connections; ends only with the core (the registration holds a sender).
async fn local_loop(ctx: Rc<CoreCtx>, connects: flume::Receiver<ToCore>) {
    while let Ok(message) = connects.recv_async().await {
        let connect = match message {
            ToCore::Connect(connect) => connect,
            ToCore::Nbd(handoff) => {
                if admit(&ctx) {
                    spawn_connection(&ctx, crate::nbd::serve(ctx.clone(), handoff));
                } else {
                    // The gateway keeps serving it through its own connections.
                    let _ = handoff.ended.send(NbdSessionEnd::untouched());
                }
                continue;
            }
        };
        if !admit(&ctx) {
            let why = "connection limit reached".to_string();
            let _ = connect.welcome.send(Err((ErrorCode::Unavailable, why)));
            continue;
        }
        spawn_connection(&ctx, crate::conn::serve_local(ctx.clone(), connect));
    }
}

/// Runs an admitted connection as its own task; it counts against the limit until it ends.
fn spawn_connection(ctx: &Rc<CoreCtx>, serve: impl std::future::Future<Output = ()> + 'static) {
    let ctx = ctx.clone();
    glommio::spawn_local(async move {
        serve.await;
        ctx.connection_ended();
    })
    .detach();
}

/// glommio decides once per device and thread whether the device supports polled I/O, by
/// reading the first block of the first file opened with O_DIRECT. An empty file makes that
/// read "succeed" and the device is wrongly marked pollable, after which I/O fails. So every
/// core opens each brick's non-empty probe file first.
async fn probe_bricks(ctx: &CoreCtx, state: &ServeState) {
    use std::os::unix::fs::MetadataExt;
    for brick in state
        .volumes
        .values()
        .flat_map(|v| v.local_members().map(|(_, b)| b.clone()))
    {
        let probe = brick.probe_path();
        let Ok(meta) = std::fs::metadata(&probe) else {
            continue;
        };
        if !ctx.first_probe_of(meta.dev()) {
            continue;
        }
        match glommio::io::DmaFile::open(&probe).await {
            Ok(f) => {
                let _ = f.read_at(0, 4096).await;
                let _ = f.close().await;
            }
            Err(e) => tracing::warn!(
                core = ctx.core(),
                "direct I/O probe on {} failed: {e}",
                probe.display()
            ),
        }
    }
}

/// Raises a resource's soft limit to its hard limit (no privilege needed) and returns the limit
/// now in force, or `None` if it cannot be read.
pub fn raise_soft_limit(resource: libc::__rlimit_resource_t) -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, properly sized out-parameter.
    unsafe {
        if libc::getrlimit(resource, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(resource, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit)
}
