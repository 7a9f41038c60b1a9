//! The management plane of one node: applies MGMT requests to the cluster state and turns the
//! state into what the dataplane serves (`ServeState`), published to every core on change.

use brick_cluster::mgmt::{
    self as op, BrickReplaced, BrickStatus, CanStop, CanStopReason, FailingDiskReport,
    HealFileReport, HealLocalReply, HealTargetReport, MemberRoute, MgmtCall, MgmtOp, Peer,
    PeerAdded, PeerRemoved, Peers, PgBehind, PgHealReport, PgSummary, ReplacedBrick, VolumeConfig,
    VolumeDeleted, VolumeDetail, VolumeHandle, VolumeListEntry, VolumeStatusReply, Volumes,
};
use brick_cluster::{
    validate_option, BrickSpec, Cluster, ClusterError, Node, PgMap, Volume, VolumeStatus,
    ACCESS_OPTION_PREFIX, VOLUME_OPTIONS,
};
use brick_dataplane::{IoMode, MemberSpec, ServeState, ServedVolume, User, NODE_USER};
use brick_store::Brick;
use brick_tuning::{STORE_RETRY_MS, STORE_WARN_INTERVAL_MS};
use brick_wire::ErrorCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct Mgmt {
    pub cluster: Cluster,
    pub node: String,
    /// The cluster state as last read whole (every republish): what opening a volume needs,
    /// answered from here so that clients connect and reconnect while the store is away.
    view: Mutex<Arc<View>>,
    /// When a failed map proposal was last logged.
    store_warned: Mutex<Option<std::time::Instant>>,
    /// Bricks opened by this node, by directory; kept open across stop/start.
    bricks: Mutex<HashMap<String, Arc<Brick>>>,
    /// Whether each brick's copy was complete when this process first opened it: new, or
    /// left by a clean shutdown. A brick that went through a crash may have missed writes.
    clean_start: Mutex<HashMap<String, bool>>,
}

/// What a client needs to open a started volume, as this node last read it from the store.
#[derive(Debug, Default)]
struct View {
    /// Started volumes with every PG map, by name.
    volumes: HashMap<String, (Volume, Vec<PgMap>)>,
    nodes: Vec<Node>,
}

pub type MgmtError = (ErrorCode, String);
/// A reply as it goes on the wire.
pub type MgmtResult = Result<Vec<u8>, MgmtError>;

/// Serializes the reply to a `C` request; the type parameter makes the compiler check that
/// each op answers with its own reply type.
pub(crate) fn encode<C: MgmtCall>(reply: Result<C::Reply, MgmtError>) -> MgmtResult {
    op::encode_reply::<C>(&reply?).map_err(|e| (ErrorCode::Internal, e))
}

pub(crate) fn cluster_err(e: ClusterError) -> (ErrorCode, String) {
    let code = match &e {
        ClusterError::NotFound(_) => ErrorCode::NotFound,
        ClusterError::Exists(_) => ErrorCode::Exists,
        ClusterError::Invalid(_) => ErrorCode::Invalid,
        ClusterError::Contended => ErrorCode::Unavailable,
        ClusterError::Store(_) => ErrorCode::Io,
    };
    (code, e.to_string())
}

const REPLICATION_NOTE: &str = "primary-copy replication per placement group: writes and namespace changes go to the PG's \
primary, which applies them and forwards them to every up-to-date member before answering. A member that fails or stops \
answering leaves the PG's up-to-date set (see pgs); when it answers again, the primary heals it: it copies what the member missed (recorded in the dirt logs) in the background, and the member rejoins the up-to-date set (`brick heal status`)";

impl Mgmt {
    pub fn new(cluster: Cluster, node: String) -> Mgmt {
        Mgmt {
            cluster,
            node,
            bricks: Mutex::new(HashMap::new()),
            clean_start: Mutex::new(HashMap::new()),
            view: Mutex::new(Arc::new(View::default())),
            store_warned: Mutex::new(None),
        }
    }

    fn open_brick(
        &self,
        vol: &Volume,
        spec: &BrickSpec,
    ) -> Result<Arc<Brick>, (ErrorCode, String)> {
        let mut bricks = self.bricks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = bricks.get(&spec.path) {
            if b.identity.volume == vol.name {
                return Ok(b.clone());
            }
            // The directory was reused for another volume: Brick::open checks its identity.
            bricks.remove(&spec.path);
        }
        let root = std::path::Path::new(&spec.path);
        let existed = Brick::is_formatted(root);
        let brick = Brick::open(root, &vol.name, vol.pg_count)
            .map_err(|e| (e.code, format!("brick {spec}: {}", e.message)))?;
        let clean = !existed || brick.take_clean_shutdown();
        self.clean_start
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(spec.path.clone())
            .or_insert(clean);
        if brick.replay.torn_tail_bytes > 0 {
            tracing::warn!(
                "brick {spec}: cut {} bytes of torn index records left by a crash",
                brick.replay.torn_tail_bytes
            );
        }
        let brick = Arc::new(brick);
        bricks.insert(spec.path.clone(), brick.clone());
        Ok(brick)
    }

    fn is_clean_start(&self, path: &str) -> bool {
        self.clean_start
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .copied()
            .unwrap_or(false)
    }

    /// The volume's bricks as the dataplane serves them, by member index (a brick's position
    /// in the volume), local ones with their open bricks.
    fn members(
        &self,
        vol: &Volume,
        nodes: &[Node],
    ) -> Result<Vec<MemberSpec>, (ErrorCode, String)> {
        let mut members = Vec::new();
        // A set taken out stays open here: no map places it, so its copies are freed.
        for spec in &vol.bricks {
            let brick = if spec.node == self.node {
                match self.open_brick(vol, spec) {
                    Ok(b) => Some(b),
                    Err((_, why)) => {
                        tracing::error!(
                            "volume {}: brick {spec} cannot be served: {why}",
                            vol.name
                        );
                        None
                    }
                }
            } else {
                None
            };
            members.push(MemberSpec {
                node: spec.node.clone(),
                path: spec.path.clone(),
                addr: nodes
                    .iter()
                    .find(|n| n.name == spec.node)
                    .map(|n| n.addr.clone())
                    .unwrap_or_default(),
                clean_start: self.is_clean_start(&spec.path),
                brick,
            });
        }
        Ok(members)
    }

    /// What the dataplane should serve now, from the cluster state.
    /// Also keeps what opening any started volume needs (`volume_open` answers from it).
    pub async fn serve_state(&self) -> Result<ServeState, (ErrorCode, String)> {
        let nodes = self.cluster.list_nodes().await.map_err(cluster_err)?;
        let mut volumes = HashMap::new();
        let mut view = View {
            volumes: HashMap::new(),
            nodes: nodes.clone(),
        };
        for vol in self.cluster.list_volumes().await.map_err(cluster_err)? {
            if vol.status != VolumeStatus::Started {
                continue;
            }
            let maps = self.cluster.pg_maps(&vol).await.map_err(cluster_err)?;
            // Every PG's map, or none if one is missing.
            let complete: Option<Vec<PgMap>> = maps.into_iter().collect();
            if let Some(maps) = &complete {
                view.volumes
                    .insert(vol.name.clone(), (vol.clone(), maps.clone()));
            }
            if !vol.bricks.iter().any(|b| b.node == self.node) {
                continue;
            }
            let members = self.members(&vol, &nodes)?;
            if members.iter().all(|m| m.brick.is_none()) {
                continue;
            }
            let pg_maps = match complete {
                Some(maps) => maps,
                None => self
                    .cluster
                    .ensure_pg_maps(&vol)
                    .await
                    .map_err(cluster_err)?,
            };
            volumes.insert(
                vol.id,
                Arc::new(ServedVolume {
                    id: vol.id,
                    name: vol.name.clone(),
                    io_mode: IoMode::parse(&vol.option("io.mode")).unwrap_or(IoMode::Auto),
                    direct_min_bytes: vol.direct_min_bytes(),
                    heal_rate_bytes: vol.heal_rate_bytes(),
                    members,
                    pg_maps,
                }),
            );
        }
        let mut users = HashMap::new();
        for u in self.cluster.list_users().await.map_err(cluster_err)? {
            if let Some(key) = u.key() {
                users.insert(
                    u.name.clone(),
                    User {
                        key,
                        admin: u.admin,
                        peer: false,
                    },
                );
            }
        }
        let node_key = self.cluster.node_key().await.map_err(cluster_err)?;
        users.insert(
            NODE_USER.to_string(),
            User {
                key: node_key,
                admin: false,
                peer: true,
            },
        );
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(view);
        Ok(ServeState {
            node: self.node.clone(),
            volumes,
            users,
            node_key,
        })
    }

    /// Opens a started volume from what this node last read of the cluster state, without
    /// asking the store (`None`: not known started here; the store decides). The maps may be
    /// a few milliseconds old: a member that is no longer primary redirects the client.
    pub fn volume_open_from_view(&self, name: &str) -> Option<Result<VolumeHandle, MgmtError>> {
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (vol, maps) = view.volumes.get(name)?;
        Some(self.volume_handle(vol, &view.nodes, maps.clone()))
    }

    fn volume_handle(
        &self,
        vol: &Volume,
        nodes: &[Node],
        pg_maps: Vec<PgMap>,
    ) -> Result<VolumeHandle, MgmtError> {
        // Bricks of a set taken out keep their place (members are positions), with no address.
        let members = vol
            .bricks
            .iter()
            .enumerate()
            .map(|(index, b)| MemberRoute {
                node: b.node.clone(),
                addr: nodes
                    .iter()
                    .find(|n| n.name == b.node && !vol.is_removed_set(vol.set_of_brick(index)))
                    .map(|n| n.addr.clone())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(VolumeHandle {
            id: vol.id,
            name: vol.name.clone(),
            pg_count: vol.pg_count,
            epoch: vol.epoch,
            members,
            pg_maps,
            replica: vol.replica,
        })
    }

    /// Applies one request. Returns the reply and whether the served state may have changed.
    pub async fn handle(&self, op: MgmtOp, caller: &str, admin: bool) -> (MgmtResult, bool) {
        let secret = matches!(op, MgmtOp::ShareUsers(_) | MgmtOp::UserList(_));
        // An SMB gateway hosted by a node (`brickd serve --smb`) logs in as the node; the
        // passwords it fetches are sealed under the node key, which every node holds anyway.
        let node_gateway = caller == NODE_USER && matches!(op, MgmtOp::ShareUsers(_));
        if secret && !admin && !node_gateway {
            return (
                Err((
                    ErrorCode::Access,
                    "this operation needs an admin user".into(),
                )),
                false,
            );
        }
        let mutating = !secret
            && !matches!(
                op,
                MgmtOp::VolumeInfo(_)
                    | MgmtOp::PgUsage(_)
                    | MgmtOp::PgDigest(_)
                    | MgmtOp::VolumeStatus(_)
                    | MgmtOp::VolumeList(_)
                    | MgmtOp::PeerList(_)
                    | MgmtOp::VolumeOpen(_)
                    | MgmtOp::HealLocal(_)
                    | MgmtOp::NodeCanStop(_)
            );
        let internal = matches!(op, MgmtOp::PgUsage(_) | MgmtOp::PgDigest(_));
        if internal && !admin && caller != NODE_USER {
            return (
                Err((
                    ErrorCode::Access,
                    "this operation is for nodes and admins".into(),
                )),
                false,
            );
        }
        if mutating && !admin {
            return (
                Err((
                    ErrorCode::Access,
                    "this operation needs an admin user".into(),
                )),
                false,
            );
        }
        (self.apply(op, caller).await, mutating)
    }

    async fn apply(&self, op: MgmtOp, caller: &str) -> MgmtResult {
        match op {
            MgmtOp::UserAdd(r) => encode::<op::UserAdd>(self.user_add(caller, r).await),
            MgmtOp::UserPasswd(r) => encode::<op::UserPasswd>(self.user_passwd(caller, r).await),
            MgmtOp::UserRemove(r) => encode::<op::UserRemove>(self.user_remove(caller, r).await),
            MgmtOp::UserList(_) => encode::<op::UserList>(self.user_list().await),
            MgmtOp::ShareUsers(r) => encode::<op::ShareUsers>(self.share_users(caller, r).await),
            MgmtOp::VolumeCreate(r) => encode::<op::VolumeCreate>(self.volume_create(r).await),
            MgmtOp::VolumeStart(r) => encode::<op::VolumeStart>(self.volume_start(r).await),
            MgmtOp::VolumeStop(r) => encode::<op::VolumeStop>(self.volume_stop(r).await),
            MgmtOp::VolumeDelete(r) => encode::<op::VolumeDelete>(self.volume_delete(r).await),
            MgmtOp::VolumeInfo(r) => encode::<op::VolumeInfo>(self.volume_info(r).await),
            MgmtOp::VolumeStatus(r) => encode::<op::VolumeStatus>(self.volume_status(r).await),
            MgmtOp::VolumeList(_) => encode::<op::VolumeList>(self.volume_list().await),
            MgmtOp::VolumeReplaceBrick(r) => {
                encode::<op::VolumeReplaceBrick>(self.volume_replace_brick(r).await)
            }
            MgmtOp::VolumeSet(r) => encode::<op::VolumeSet>(self.volume_set(r).await),
            MgmtOp::VolumeAddBrick(r) => {
                encode::<op::VolumeAddBrick>(self.volume_add_brick(r).await)
            }
            MgmtOp::VolumeRemoveBrick(r) => {
                encode::<op::VolumeRemoveBrick>(crate::rebalance::remove_brick(self, r).await)
            }
            MgmtOp::VolumeRebalance(r) => {
                encode::<op::VolumeRebalance>(crate::rebalance::rebalance(self, r).await)
            }
            MgmtOp::PgUsage(r) => encode::<op::PgUsage>(self.pg_usage(r).await),
            MgmtOp::PgDigest(r) => encode::<op::PgDigest>(self.pg_digest(r).await),
            MgmtOp::PeerAdd(r) => encode::<op::PeerAdd>(self.peer_add(r).await),
            MgmtOp::PeerList(_) => encode::<op::PeerList>(self.peer_list().await),
            MgmtOp::PeerRemove(r) => encode::<op::PeerRemove>(self.peer_remove(r).await),
            MgmtOp::NodeCanStop(r) => encode::<op::NodeCanStop>(self.can_stop(&r.node).await),
            MgmtOp::HealLocal(_) => Err((
                ErrorCode::Invalid,
                "heal status is answered by the node's dataplane".into(),
            )),
            MgmtOp::VolumeOpen(r) => encode::<op::VolumeOpen>(self.volume_open(r).await),
        }
    }

    async fn volume_create(&self, r: op::VolumeCreate) -> Result<VolumeConfig, MgmtError> {
        let c = &self.cluster;
        let specs = r
            .bricks
            .iter()
            .map(|b| BrickSpec::parse(b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(cluster_err)?;
        let nodes = c.list_nodes().await.map_err(cluster_err)?;
        for s in &specs {
            if !nodes.iter().any(|n| n.name == s.node) {
                return Err((
                    ErrorCode::Invalid,
                    format!("brick {s}: node {:?} is not a peer of this cluster", s.node),
                ));
            }
        }
        let vol = c
            .create_volume(&r.name, r.replica, specs, r.pg_count)
            .await
            .map_err(cluster_err)?;
        Ok(self.info(&vol))
    }

    async fn volume_start(&self, r: op::VolumeStart) -> Result<VolumeConfig, MgmtError> {
        let c = &self.cluster;
        let vol = c.volume(&r.name).await.map_err(cluster_err)?;
        for spec in &vol.bricks {
            if spec.node == self.node {
                self.open_brick(&vol, spec)?;
            }
        }
        c.ensure_pg_maps(&vol).await.map_err(cluster_err)?;
        let vol = c
            .update_volume(&r.name, |v| {
                v.status = VolumeStatus::Started;
                Ok(())
            })
            .await
            .map_err(cluster_err)?;
        Ok(self.info(&vol))
    }

    async fn volume_stop(&self, r: op::VolumeStop) -> Result<VolumeConfig, MgmtError> {
        let vol = self
            .cluster
            .update_volume(&r.name, |v| {
                v.status = VolumeStatus::Stopped;
                Ok(())
            })
            .await
            .map_err(cluster_err)?;
        Ok(self.info(&vol))
    }

    async fn volume_delete(&self, r: op::VolumeDelete) -> Result<VolumeDeleted, MgmtError> {
        let c = &self.cluster;
        let vol = c.volume(&r.name).await.map_err(cluster_err)?;
        c.delete_volume(&r.name).await.map_err(cluster_err)?;
        c.delete_pg_maps(&vol).await.map_err(cluster_err)?;
        Ok(VolumeDeleted {
            deleted: r.name,
            note: "brick directories are left on disk untouched".into(),
        })
    }

    async fn volume_info(&self, r: op::VolumeInfo) -> Result<VolumeDetail, MgmtError> {
        let c = &self.cluster;
        let vol = c.volume(&r.name).await.map_err(cluster_err)?;
        let maps = c.pg_maps(&vol).await.map_err(cluster_err)?;
        Ok(VolumeDetail {
            volume: self.info(&vol),
            pgs: pg_summary(&vol, &maps),
        })
    }

    async fn volume_status(&self, r: op::VolumeStatus) -> Result<VolumeStatusReply, MgmtError> {
        let vol = self.cluster.volume(&r.name).await.map_err(cluster_err)?;
        self.status(&vol).await
    }

    async fn volume_list(&self) -> Result<Volumes, MgmtError> {
        let vols = self.cluster.list_volumes().await.map_err(cluster_err)?;
        Ok(Volumes {
            volumes: vols
                .iter()
                .map(|v| VolumeListEntry {
                    name: v.name.clone(),
                    id: v.id,
                    replica: v.replica,
                    status: v.status,
                    bricks: v.bricks.len() as u32,
                })
                .collect(),
        })
    }

    async fn volume_add_brick(&self, r: op::VolumeAddBrick) -> Result<VolumeConfig, MgmtError> {
        let c = &self.cluster;
        let specs: Vec<BrickSpec> = r
            .bricks
            .iter()
            .map(|b| BrickSpec::parse(b).map_err(cluster_err))
            .collect::<Result<_, _>>()?;
        let nodes = c.list_nodes().await.map_err(cluster_err)?;
        for b in &specs {
            if !nodes.iter().any(|n| n.name == b.node) {
                return Err((
                    ErrorCode::Invalid,
                    format!("brick {b}: node {:?} is not a peer of this cluster", b.node),
                ));
            }
        }
        let vol = c.add_bricks(&r.name, &specs).await.map_err(cluster_err)?;
        Ok(self.info(&vol))
    }

    /// The open brick of member `m` of a volume, if it is on this node.
    fn local_brick(&self, vol: &Volume, m: u8) -> Result<Arc<Brick>, MgmtError> {
        let spec = vol.bricks.get(m as usize).ok_or_else(|| {
            (
                ErrorCode::NotFound,
                format!("volume {} has no brick {m}", vol.name),
            )
        })?;
        if spec.node != self.node {
            return Err((
                ErrorCode::NotFound,
                format!("brick {spec} is not on node {}", self.node),
            ));
        }
        self.open_brick(vol, spec)
    }

    async fn pg_usage(&self, r: op::PgUsage) -> Result<op::PgUsageReply, MgmtError> {
        let vol = self.cluster.volume(&r.volume).await.map_err(cluster_err)?;
        let brick = self.local_brick(&vol, r.member)?;
        let pg = r.pg;
        tokio::task::spawn_blocking(move || {
            let (files, bytes) = brick.pg_usage(pg);
            let fs = brick
                .statfs()
                .map_err(|e| (e.code, format!("statfs: {}", e.message)))?;
            Ok(op::PgUsageReply {
                files,
                bytes,
                capacity_bytes: fs.total_bytes,
                free_bytes: fs.avail_bytes,
            })
        })
        .await
        .map_err(|e| (ErrorCode::Io, e.to_string()))?
    }

    async fn pg_digest(&self, r: op::PgDigest) -> Result<op::PgDigestReply, MgmtError> {
        let vol = self.cluster.volume(&r.volume).await.map_err(cluster_err)?;
        let brick = self.local_brick(&vol, r.member)?;
        let (pg, skip) = (r.pg, r.skip_recent_ms);
        tokio::task::spawn_blocking(move || {
            let d = brick.pg_digest(pg, std::time::Duration::from_millis(skip));
            Ok(op::PgDigestReply {
                files: d.files,
                bytes: d.bytes,
                digest: d.digest,
                skipped: d.skipped,
            })
        })
        .await
        .map_err(|e| (ErrorCode::Io, e.to_string()))?
    }

    async fn volume_replace_brick(
        &self,
        r: op::VolumeReplaceBrick,
    ) -> Result<BrickReplaced, MgmtError> {
        let c = &self.cluster;
        let (old, new) = (
            BrickSpec::parse(&r.old).map_err(cluster_err)?,
            BrickSpec::parse(&r.new).map_err(cluster_err)?,
        );
        let nodes = c.list_nodes().await.map_err(cluster_err)?;
        if !nodes.iter().any(|n| n.name == new.node) {
            return Err((
                ErrorCode::Invalid,
                format!(
                    "brick {new}: node {:?} is not a peer of this cluster",
                    new.node
                ),
            ));
        }
        let vol = c
            .replace_brick(&r.name, &old, &new)
            .await
            .map_err(cluster_err)?;
        let maps = c.pg_maps(&vol).await.map_err(cluster_err)?;
        Ok(BrickReplaced {
            volume: self.info(&vol),
            replaced: ReplacedBrick {
                old: old.to_string(),
                new: new.to_string(),
            },
            pgs: pg_summary(&vol, &maps),
        })
    }

    async fn volume_set(&self, r: op::VolumeSet) -> Result<VolumeConfig, MgmtError> {
        let op::VolumeSet { name, key, value } = r;
        validate_option(&key, &value).map_err(cluster_err)?;
        let vol = self
            .cluster
            .update_volume(&name, |v| {
                if key.starts_with(ACCESS_OPTION_PREFIX) && value == "none" {
                    v.options.remove(&key);
                } else {
                    v.options.insert(key.clone(), value.clone());
                }
                Ok(())
            })
            .await
            .map_err(cluster_err)?;
        Ok(self.info(&vol))
    }

    async fn peer_add(&self, r: op::PeerAdd) -> Result<PeerAdded, MgmtError> {
        let c = &self.cluster;
        let op::PeerAdd { name, addr } = r;
        if !c.describe_store().starts_with("etcd") {
            return Err((
                ErrorCode::NotSupported,
                format!(
                    "cannot add peer {name:?}: this node runs on the embedded single-node store ({}); \
                     multi-node clusters use `brickd serve --store etcd://...`",
                    c.describe_store()
                ),
            ));
        }
        addr.parse::<std::net::SocketAddr>().map_err(|_| {
            (
                ErrorCode::Invalid,
                format!("peer address {addr:?} is not HOST:PORT"),
            )
        })?;
        // The node registers itself (and its current address) when it starts; adding it
        // first lets volumes name it before it has joined.
        c.put_node(&Node {
            name: name.clone(),
            addr: addr.clone(),
        })
        .await
        .map_err(cluster_err)?;
        Ok(PeerAdded { added: name, addr })
    }

    async fn peer_list(&self) -> Result<Peers, MgmtError> {
        let c = &self.cluster;
        let nodes = c.list_nodes().await.map_err(cluster_err)?;
        let alive = c.alive_nodes().await.map_err(cluster_err)?;
        Ok(Peers {
            store: c.describe_store(),
            peers: nodes
                .into_iter()
                .map(|n| Peer {
                    is_self: n.name == self.node,
                    alive: alive.contains(&n.name),
                    name: n.name,
                    addr: n.addr,
                })
                .collect(),
        })
    }

    async fn peer_remove(&self, r: op::PeerRemove) -> Result<PeerRemoved, MgmtError> {
        if r.name == self.node {
            return Err((ErrorCode::Invalid, "a node cannot remove itself".into()));
        }
        self.cluster
            .remove_node(&r.name)
            .await
            .map_err(cluster_err)?;
        Ok(PeerRemoved { removed: r.name })
    }

    async fn volume_open(&self, r: op::VolumeOpen) -> Result<VolumeHandle, MgmtError> {
        if let Some(handle) = self.volume_open_from_view(&r.name) {
            return handle;
        }
        let c = &self.cluster;
        let vol = c.volume(&r.name).await.map_err(cluster_err)?;
        if vol.status != VolumeStatus::Started {
            return Err((
                ErrorCode::VolumeStopped,
                format!("volume {} is not started", r.name),
            ));
        }
        let nodes = c.list_nodes().await.map_err(cluster_err)?;
        let pg_maps = c.ensure_pg_maps(&vol).await.map_err(cluster_err)?;
        self.volume_handle(&vol, &nodes, pg_maps)
    }

    /// This node's part of `brick heal status`: the PGs of `name` with members behind, from
    /// the cluster state, and the heals this node's cores run (their primaries).
    pub async fn heal_local(
        &self,
        name: &str,
        reports: Vec<brick_dataplane::HealReport>,
        disks: Vec<brick_dataplane::FailingDisk>,
    ) -> Result<HealLocalReply, MgmtError> {
        let c = &self.cluster;
        let vol = c.volume(name).await.map_err(cluster_err)?;
        let maps = c.pg_maps(&vol).await.map_err(cluster_err)?;
        let bricks: Vec<String> = vol.bricks.iter().map(|b| b.to_string()).collect();
        let behind = maps
            .iter()
            .enumerate()
            .filter_map(|(pg, m)| m.map(|m| (pg, m)))
            .filter(|(_, m)| m.up_to_date != m.placed)
            .map(|(pg, m)| PgBehind {
                pg: pg as u32,
                epoch: m.epoch,
                primary: m.primary(),
                healing: members_in(m.healing),
                absent: members_in(m.absent()),
            })
            .collect();
        let reports = reports
            .into_iter()
            .filter(|r| r.volume == vol.name)
            .map(heal_report)
            .collect();
        Ok(HealLocalReply {
            node: self.node.clone(),
            volume: vol.name,
            bricks,
            pg_count: vol.pg_count,
            behind,
            reports,
            failing_disks: disks
                .into_iter()
                .filter(|d| d.volume == name)
                .map(|d| FailingDiskReport {
                    brick: d.brick,
                    error: d.error,
                    failing_s: d.since.elapsed().as_secs(),
                    failures: d.failures,
                })
                .collect(),
        })
    }

    /// `brick node can-stop NODE`: no if stopping it would leave a PG without an up-to-date
    /// copy or below `min_size`.
    async fn can_stop(&self, node: &str) -> Result<CanStop, MgmtError> {
        let c = &self.cluster;
        if !c
            .list_nodes()
            .await
            .map_err(cluster_err)?
            .iter()
            .any(|n| n.name == node)
        {
            return Err((ErrorCode::NotFound, format!("node {node:?} is not a peer")));
        }
        let mut reasons = Vec::new();
        let mut blocked_pgs = 0u64;
        for vol in c.list_volumes().await.map_err(cluster_err)? {
            if vol.status != VolumeStatus::Started {
                continue;
            }
            let set = &vol.bricks;
            let mine = set
                .iter()
                .enumerate()
                .filter(|(_, b)| b.node == node)
                .fold(0u8, |acc, (m, _)| acc | (1 << m));
            if mine == 0 {
                continue;
            }
            let bricks = |mask: u8| -> Vec<String> {
                members_in(mask)
                    .iter()
                    .filter_map(|&m| set.get(m as usize).map(|b| b.to_string()))
                    .collect()
            };
            for (pg, map) in c
                .pg_maps(&vol)
                .await
                .map_err(cluster_err)?
                .iter()
                .enumerate()
            {
                let Some(map) = map else { continue };
                let left = map.up_to_date & !mine;
                let why = if map.up_to_date & mine == 0 {
                    continue;
                } else if left == 0 {
                    "holds the only up-to-date copy".to_string()
                } else if left.count_ones() < map.min_size as u32 {
                    format!(
                        "would leave {} up-to-date copies, below min_size {} (writes would stop)",
                        left.count_ones(),
                        map.min_size
                    )
                } else {
                    continue;
                };
                blocked_pgs += 1;
                if reasons.len() < CAN_STOP_REASONS_MAX {
                    reasons.push(CanStopReason {
                        volume: vol.name.clone(),
                        pg: pg as u32,
                        reason: why,
                        up_to_date: bricks(map.up_to_date),
                        healing: bricks(map.healing),
                    });
                }
            }
        }
        Ok(CanStop {
            node: node.to_string(),
            can_stop: blocked_pgs == 0,
            blocked_pgs,
            reasons,
        })
    }

    fn info(&self, v: &Volume) -> VolumeConfig {
        VolumeConfig {
            name: v.name.clone(),
            id: v.id,
            status: v.status,
            replica: v.replica,
            min_size: v.min_size,
            pg_count: v.pg_count,
            epoch: v.epoch,
            replica_sets: v
                .replica_sets()
                .iter()
                .enumerate()
                .filter(|(s, _)| !v.is_removed_set(*s))
                .map(|(_, set)| set.iter().map(|b| b.to_string()).collect())
                .collect(),
            copies_stored: v.replica,
            replication: REPLICATION_NOTE.to_string(),
            options: VOLUME_OPTIONS
                .iter()
                .map(|(k, _)| (k.to_string(), v.option(k)))
                .collect(),
            store: self.cluster.describe_store(),
        }
    }

    async fn status(&self, v: &Volume) -> Result<VolumeStatusReply, MgmtError> {
        let alive = self.cluster.alive_nodes().await.map_err(cluster_err)?;
        let maps = self.cluster.pg_maps(v).await.map_err(cluster_err)?;
        let mut bricks = Vec::new();
        for (m, b) in v.bricks.iter().enumerate() {
            let open = self
                .bricks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&b.path)
                .cloned();
            let primary_of = maps
                .iter()
                .flatten()
                .filter(|map| map.primary() == Some(m as u8))
                .count();
            let up_to_date_in = maps
                .iter()
                .flatten()
                .filter(|map| map.is_up_to_date(m as u8))
                .count();
            let mut entry = BrickStatus {
                brick: b.to_string(),
                member: m as u32,
                online: v.status == VolumeStatus::Started && alive.contains(&b.node),
                primary_of_pgs: primary_of as u32,
                up_to_date_in_pgs: up_to_date_in as u32,
                total_bytes: None,
                avail_bytes: None,
                files_indexed: None,
            };
            if let Some(brick) = open.filter(|_| b.node == self.node) {
                if let Ok(s) = brick.statfs() {
                    entry.total_bytes = Some(s.total_bytes);
                    entry.avail_bytes = Some(s.avail_bytes);
                }
                entry.files_indexed = Some(brick.file_count() as u64);
            }
            bricks.push(entry);
        }
        Ok(VolumeStatusReply {
            name: v.name.clone(),
            status: v.status,
            epoch: v.epoch,
            pg_count: v.pg_count,
            bricks,
        })
    }

    pub async fn register_self(&self, addr: &str) -> Result<(), ClusterError> {
        self.cluster
            .put_node(&Node {
                name: self.node.clone(),
                addr: addr.to_string(),
            })
            .await
    }

    /// Makes every open brick's index durable and marks it cleanly stopped (shutdown, after
    /// the dataplane stopped writing).
    pub fn sync_bricks(&self) {
        for (path, b) in self.bricks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if let Err(e) = b.sync_all() {
                tracing::warn!("brick {path}: final sync failed: {e}");
                continue;
            }
            if let Err(e) = b.mark_clean_shutdown() {
                tracing::warn!("brick {path}: {e}");
            }
        }
    }

    /// Serves a replication core's request for the cluster store.
    /// Whether a store warning may be logged now (one per `STORE_WARN_INTERVAL_MS`: every PG
    /// fails alike while the store is away).
    fn store_warning_due(&self) -> bool {
        let mut last = self.store_warned.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let due = last.is_none_or(|t| {
            now.duration_since(t) >= std::time::Duration::from_millis(STORE_WARN_INTERVAL_MS)
        });
        if due {
            *last = Some(now);
        }
        due
    }

    pub async fn map_request(&self, req: brick_dataplane::MapRequest) {
        use brick_dataplane::MapRequest;
        match req {
            MapRequest::Propose {
                volume,
                pg,
                map,
                reply,
            } => {
                let result = match self.cluster.propose_pg_map(&volume, pg, &map).await {
                    Ok((installed, true)) => Ok(installed),
                    Ok((current, false)) => Err(Some(current)),
                    Err(e) => {
                        if self.store_warning_due() {
                            tracing::warn!(
                                "volume {volume} pg {pg}: proposing epoch {}: {e} (PGs propose \
                                 again every {STORE_RETRY_MS} ms until the store answers)",
                                map.epoch
                            );
                        }
                        // The PG proposes again once answered: not at every tick of its core.
                        tokio::time::sleep(std::time::Duration::from_millis(STORE_RETRY_MS)).await;
                        Err(None)
                    }
                };
                if result.is_ok() {
                    tracing::info!(
                        "volume {volume} pg {pg}: epoch {} installed (up to date: {:#b})",
                        map.epoch,
                        map.up_to_date
                    );
                }
                let _ = reply.send(result);
            }
            MapRequest::Fetch { volume, pg, reply } => {
                let map = self.cluster.pg_map(&volume, pg).await.ok().flatten();
                let _ = reply.send(map);
            }
        }
    }
}

/// Reasons `node can-stop` lists (the count of blocked PGs is always complete).
const CAN_STOP_REASONS_MAX: usize = 100;

fn members_in(mask: u8) -> Vec<u8> {
    (0..8).filter(|m| mask & (1 << m) != 0).collect()
}

/// Each PG's map epoch, primary and up-to-date bricks, as `volume info` shows them.
fn pg_summary(vol: &Volume, maps: &[Option<PgMap>]) -> Vec<PgSummary> {
    let brick = |m: u8| {
        vol.bricks
            .get(m as usize)
            .map(|b| b.to_string())
            .unwrap_or_default()
    };
    maps.iter()
        .enumerate()
        .map(|(pg, m)| match m {
            None => PgSummary {
                pg: pg as u32,
                epoch: None,
                primary: None,
                up_to_date: Vec::new(),
                writable: false,
            },
            Some(m) => PgSummary {
                pg: pg as u32,
                epoch: Some(m.epoch),
                primary: m.primary().map(brick),
                up_to_date: m.acting().map(brick).collect(),
                writable: m.writable(),
            },
        })
        .collect()
}

/// The dataplane's heal progress of one PG, as `heal_local` replies carry it.
fn heal_report(r: brick_dataplane::HealReport) -> PgHealReport {
    PgHealReport {
        pg: r.pg,
        epoch: r.epoch,
        source_member: r.source_member,
        copied_total_bytes: r.copied_total_bytes,
        targets: r
            .targets
            .into_iter()
            .map(|t| HealTargetReport {
                member: t.member,
                state: t.state.to_string(),
                bytes_left: t.bytes_left,
                bytes_copied: t.bytes_copied,
                rate_bytes_s: t.rate_bytes_s,
                namespace_pending: t.namespace_pending,
                error: t.error,
                files: t
                    .files
                    .into_iter()
                    .map(|f| HealFileReport {
                        fid: format!("{:#x}", f.fid),
                        path: f.path,
                        bytes_left: f.bytes_left,
                        bytes_copied: f.bytes_copied,
                    })
                    .collect(),
            })
            .collect(),
    }
}
