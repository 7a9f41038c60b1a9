//! The brick dataplane: one pinned glommio executor per core. Each core owns the placement
//! groups `pg % cores == core`, listens on its own address, keeps its own open-file cache and
//! does file I/O through io_uring. A request that reaches a core which does not own its PG is
//! forwarded to the owner through an explicit channel; the reply comes back the same way.
//!
//! The management plane (tokio) talks to the cores only through channels: it pushes the set
//! of served volumes and users (`Control::State`), and cores hand it MGMT requests.

// The modules from the top layer down: each imports only modules below it (the layering is
// drawn in docs/ARCHITECTURE.md, "The dataplane's modules").

/// Starting the cores; each core's accept, control and forward loops.
mod core;

/// NBD connections served on the core that owns their image.
mod nbd;

/// Native connections: handshake, read loop, write loop.
mod conn;

/// One request: to the owning core, the management plane, a read, or the replication driver.
mod dispatch;

/// One core's services and channels.
mod ctx;

/// The replication driver: a replica and a healer per (volume, PG, local member).
mod repl;

/// Executing a request or a replicated body on a member's brick.
mod apply;

/// The dirt and activity log files.
mod logs;

/// Replication links to other nodes.
mod peer;

/// The open-file cache and the io_uring data path.
mod files;

/// Last closes of deleted files, off the cores.
mod closer;

/// Core stall warnings.
mod stall;

/// Types shared with the management plane.
mod state;

/// Bricks whose disk fails, and the probe that lets them back.
mod disk;

use std::net::SocketAddr;
use std::sync::Arc;

pub use crate::core::raise_soft_limit;
pub use brick_wire::core_of;
pub use disk::FailingDisk;
pub use state::{
    Control, DataplaneConfig, HealFile, HealReport, HealReports, HealTarget, IoMode, MapRequest,
    MemberSpec, MgmtRequest, ServeState, ServedVolume, User, NODE_USER,
};

pub struct Dataplane {
    pub shard_addrs: Vec<SocketAddr>,
    pub heal_reports: HealReports,
    controls: Vec<flume::Sender<Control>>,
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl Dataplane {
    pub fn start(
        cfg: DataplaneConfig,
        state: Arc<ServeState>,
        mgmt: flume::Sender<MgmtRequest>,
        maps: flume::Sender<MapRequest>,
    ) -> std::io::Result<Dataplane> {
        let started = core::start(cfg, state, mgmt, maps)?;
        Ok(Dataplane {
            shard_addrs: started.shard_addrs,
            heal_reports: started.heal_reports,
            controls: started.controls,
            handles: started.handles,
        })
    }

    /// Hands `state` to every core and returns once all of them serve it, so that a reply
    /// sent after publishing (a started volume, a new user) holds on every core.
    pub async fn publish(&self, state: Arc<ServeState>) {
        let (ack_tx, ack_rx) = flume::bounded(self.controls.len());
        let mut sent = 0;
        for c in &self.controls {
            if c.send(Control::State(state.clone(), ack_tx.clone()))
                .is_ok()
            {
                sent += 1;
            }
        }
        drop(ack_tx);
        for _ in 0..sent {
            if ack_rx.recv_async().await.is_err() {
                break; // a core is gone (shutting down)
            }
        }
    }

    /// The PGs this node is healing (or waiting to heal), as its cores last published them.
    pub fn heal_reports(&self) -> Vec<HealReport> {
        let all = self
            .heal_reports
            .heal
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<HealReport> = all.values().cloned().collect();
        out.sort_by_key(|r| (r.volume_id, r.pg));
        out
    }

    /// This node's bricks whose disk fails, as the cores marked them.
    pub fn failing_disks(&self) -> Vec<FailingDisk> {
        self.heal_reports.disks.failing()
    }

    /// Stops accepting, closes connections, joins every core.
    pub fn shutdown(self) {
        for c in &self.controls {
            let _ = c.send(Control::Shutdown);
        }
        for h in self.handles {
            let _ = h.join();
        }
    }
}
