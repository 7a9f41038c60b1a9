//! What the management plane hands the dataplane and gets back from it: the served state
//! (volumes, their members and maps, users), the requests cores make of the management plane,
//! and heal progress. Plain types at the bottom of the crate: every module may use them.

use brick_replication::PgMap;
use brick_store::Brick;
use brick_wire::ErrorCode;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One PG's heal progress as its primary last published it (`brick heal status`).
#[derive(Debug, Clone)]
pub struct HealReport {
    pub volume_id: u32,
    pub volume: String,
    pub pg: u32,
    pub epoch: u64,
    /// The member copying (the PG's primary).
    pub source_member: u8,
    pub targets: Vec<HealTarget>,
    /// Bytes this slot's heals copied since the process started (benchmarks read it).
    pub copied_total_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct HealTarget {
    pub member: u8,
    /// "absent" (not back yet) or "healing".
    pub state: &'static str,
    pub bytes_left: u64,
    pub bytes_copied: u64,
    pub rate_bytes_s: u64,
    pub namespace_pending: bool,
    /// The files with the most bytes left (at most 16).
    pub files: Vec<HealFile>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HealFile {
    pub fid: u64,
    pub path: String,
    pub bytes_left: u64,
    pub bytes_copied: u64,
}

/// What this node's cores report for `brick heal status`: heal progress by (core, volume, PG),
/// written twice a second, and the bricks whose disk fails.
#[derive(Default)]
pub struct NodeReports {
    pub heal: Mutex<HashMap<(usize, u32, u32), HealReport>>,
    pub disks: crate::disk::DiskHealth,
}

pub type HealReports = Arc<NodeReports>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// O_DIRECT for files at or above `direct_min_bytes`, the page cache below.
    Auto,
    Direct,
    Buffered,
}

impl IoMode {
    pub fn parse(s: &str) -> Option<IoMode> {
        match s {
            "auto" => Some(IoMode::Auto),
            "direct" => Some(IoMode::Direct),
            "buffered" => Some(IoMode::Buffered),
            _ => None,
        }
    }
}

/// One replica of a volume's (single) replica set, by member index.
pub struct MemberSpec {
    pub node: String,
    /// The brick's directory on its node: with `node`, which brick the member is (a
    /// `replace-brick` changes it).
    pub path: String,
    /// The member's node's dataplane address (its core 0).
    pub addr: String,
    /// Present when the member's brick is on this node.
    pub brick: Option<Arc<Brick>>,
    /// The brick's copy was complete when this process started it: the daemon stopped cleanly
    /// before, or the brick is new. A member that crashed may have missed writes.
    pub clean_start: bool,
}

pub struct ServedVolume {
    pub id: u32,
    pub name: String,
    pub io_mode: IoMode,
    pub direct_min_bytes: u64,
    pub members: Vec<MemberSpec>,
    /// The map of every PG, by PG number, as last read from the cluster store.
    pub pg_maps: Vec<PgMap>,
    /// Volume option `heal.rate`: bytes per second a heal copies per PG (0: adaptive).
    pub heal_rate_bytes: u64,
}

impl ServedVolume {
    pub fn local_members(&self) -> impl Iterator<Item = (u8, &Arc<Brick>)> + '_ {
        self.members
            .iter()
            .enumerate()
            .filter_map(|(m, spec)| spec.brick.as_ref().map(|b| (m as u8, b)))
    }
}

pub struct User {
    pub key: [u8; 32],
    pub admin: bool,
    /// A brickd node (replication traffic), not a person.
    pub peer: bool,
}

/// The user name nodes authenticate as to each other; user names cannot start with '@'.
pub const NODE_USER: &str = "@node";

/// Everything a core needs to serve requests; replaced wholesale on every change.
pub struct ServeState {
    pub node: String,
    pub volumes: HashMap<u32, Arc<ServedVolume>>,
    pub users: HashMap<String, User>,
    /// The key this node proves itself with to other nodes (user `NODE_USER`).
    pub node_key: [u8; 32],
}

/// A request from a core's replication driver to the management plane, which owns the
/// cluster store.
pub enum MapRequest {
    /// Compare-and-set the map of one PG from `map.epoch - 1` to `map`. The reply is the
    /// installed map, or the current one (`None`: the store could not be read).
    Propose {
        volume: String,
        pg: u32,
        map: PgMap,
        reply: flume::Sender<Result<PgMap, Option<PgMap>>>,
    },
    Fetch {
        volume: String,
        pg: u32,
        reply: flume::Sender<Option<PgMap>>,
    },
}

pub enum Control {
    /// Serve this state from now on; the sender is told once the core has switched.
    State(Arc<ServeState>, flume::Sender<()>),
    Shutdown,
}

/// A management request handed from a core to the management plane.
pub struct MgmtRequest {
    pub user: String,
    pub admin: bool,
    pub doc: Vec<u8>,
    pub reply: flume::Sender<Result<Vec<u8>, (ErrorCode, String)>>,
}

pub struct DataplaneConfig {
    pub cores: usize,
    /// Core 0 listens here; the other cores on ephemeral ports of the same host, announced to
    /// clients in the handshake.
    pub listen: SocketAddr,
    pub pin: bool,
    /// With `pin`, the CPU of each core in order (empty: core i on CPU i, when it exists).
    pub cpus: Vec<usize>,
    /// How long an idle core polls before it sleeps. Spinning trades CPU for lower wake-up
    /// latency (on VMs a halted vCPU takes long to wake for a completion).
    pub spin_before_park_us: u64,
}
