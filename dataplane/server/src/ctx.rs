//! One core's context: the services a core runs (its replication driver, its open-file cache)
//! and its channels to the other cores and to the management plane. Never shared with another
//! thread; other cores reach it through `Forward` messages on its channel. Modules above use
//! it through these methods, never through its fields.

use crate::files::FileCache;
use crate::repl::ReplCore;
use crate::state::{MgmtRequest, ServeState};
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

/// A request forwarded from the core that received it to the core that owns its PG.
pub(crate) struct Forward {
    pub opcode: u16,
    pub request_id: u64,
    pub payload: Vec<u8>,
    pub reply: flume::Sender<Vec<u8>>,
}

pub(crate) struct CoreCtx {
    core: usize,
    ncores: usize,
    state: RefCell<Arc<ServeState>>,
    /// Every core's channel, by core.
    cores: Vec<flume::Sender<Forward>>,
    mgmt: flume::Sender<MgmtRequest>,
    shard_addrs: Vec<String>,
    files: Rc<RefCell<FileCache>>,
    connections: Cell<usize>,
    repl: Rc<ReplCore>,
    probed_devices: RefCell<HashSet<u64>>,
}

/// What a core is made of when it starts.
pub(crate) struct CoreParts {
    pub core: usize,
    pub ncores: usize,
    pub state: Arc<ServeState>,
    pub cores: Vec<flume::Sender<Forward>>,
    pub mgmt: flume::Sender<MgmtRequest>,
    pub shard_addrs: Vec<String>,
    pub files: Rc<RefCell<FileCache>>,
    pub repl: Rc<ReplCore>,
}

impl CoreCtx {
    pub fn new(p: CoreParts) -> CoreCtx {
        assert!(p.core < p.ncores && p.cores.len() == p.ncores);
        CoreCtx {
            core: p.core,
            ncores: p.ncores,
            state: RefCell::new(p.state),
            cores: p.cores,
            mgmt: p.mgmt,
            shard_addrs: p.shard_addrs,
            files: p.files,
            connections: Cell::new(0),
            repl: p.repl,
            probed_devices: RefCell::new(HashSet::new()),
        }
    }

    pub fn core(&self) -> usize {
        self.core
    }

    /// The core that owns PG `pg` on this node.
    pub fn owner_of(&self, pg: u32) -> usize {
        pg as usize % self.ncores
    }

    pub fn state(&self) -> Arc<ServeState> {
        self.state.borrow().clone()
    }

    /// Serves `state` from now on: the file cache drops stopped volumes, the replication
    /// driver creates, updates and drops its replicas.
    pub fn set_state(&self, state: Arc<ServeState>) {
        self.files.borrow_mut().retain_volumes(&state);
        *self.state.borrow_mut() = state.clone();
        self.repl.sync_slots(&state);
    }

    pub fn shard_addrs(&self) -> &[String] {
        &self.shard_addrs
    }

    pub fn files(&self) -> &RefCell<FileCache> {
        &self.files
    }

    pub fn repl(&self) -> &Rc<ReplCore> {
        &self.repl
    }

    /// Hands a request to the core that owns it; false if that core is gone.
    pub async fn forward_to(&self, core: usize, f: Forward) -> bool {
        match self.cores.get(core) {
            Some(tx) => tx.send_async(f).await.is_ok(),
            None => false,
        }
    }

    /// Hands a MGMT request to the management plane; false if it is shutting down.
    pub async fn send_mgmt(&self, req: MgmtRequest) -> bool {
        self.mgmt.send_async(req).await.is_ok()
    }

    /// Counts a new connection against the core's limit; false if it is reached.
    pub fn admit(&self, limit: usize) -> bool {
        if self.connections.get() >= limit {
            return false;
        }
        self.connections.set(self.connections.get() + 1);
        true
    }

    pub fn connection_ended(&self) {
        self.connections
            .set(self.connections.get().saturating_sub(1));
    }

    /// Whether the device `dev` still has to be probed for direct I/O on this core (and
    /// marks it probed).
    pub fn first_probe_of(&self, dev: u64) -> bool {
        self.probed_devices.borrow_mut().insert(dev)
    }
}
