//! The native client library. One connection per server core (learned in the handshake);
//! requests go straight to the core that owns their placement group, many in flight at once;
//! lost connections are re-established and idempotent requests retried.
//!
//! Used by the `brick` CLI and bench today, and by the NFS, SMB, NBD and FUSE front ends.

mod conn;
pub mod readahead;

use brick_cluster::mgmt::{self, MemberRoute, MgmtCall, MgmtOp, VolumeHandle, VolumeOpen};
use brick_cluster::PgMap;
use brick_tuning::{CLIENT_RETRIES_MAX, READDIR_ENTRIES_MAX};
use brick_wire::{
    auth, core_of, Attr, Dec, DirEntry, DirPage, ErrorCode, FileId, Request, SetAttr, StatFs,
    WriteReply, RENAME_NOREPLACE, ROOT_FILE_ID, WRITE_FLAG_FUA,
};
use conn::Conn;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("{message} ({code})")]
    Server { code: ErrorCode, message: String },
    #[error("disconnected: {0}")]
    Disconnected(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("no server reachable: {0}")]
    NoServer(String),
    #[error("{0}")]
    Usage(String),
}

impl ClientError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether `req` may be sent again after this error. A timed-out request may still be
    /// executing on the server, so only requests that change nothing are retried after a
    /// timeout: a late WRITE must not land after a newer one. (Retrying a write after a lost
    /// connection has the same window in principle; epoch fencing closes it with replication.)
    fn is_retriable_for(&self, req: &Request<'_>) -> bool {
        match self {
            ClientError::Disconnected(_)
            | ClientError::Server {
                code: ErrorCode::Unavailable,
                ..
            } => req.is_idempotent(),
            ClientError::Timeout(_) => req.is_read_only(),
            _ => false,
        }
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Bootstrap addresses; any one reachable server is enough.
    pub servers: Vec<String>,
    pub user: String,
    pub password: String,
}

struct Inner {
    cfg: ClientConfig,
    key: [u8; 32],
    /// The cores of the node bootstrap reached (management requests go there first).
    shards: RwLock<Vec<Arc<Conn>>>,
    /// Every node's cores, by the node's address: volume requests go to their PG's primary.
    nodes: Mutex<HashMap<String, Vec<Arc<Conn>>>>,
    /// One reconnect at a time per node address.
    connecting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// How long a write refused for too few up-to-date members keeps waiting for one to
    /// return (at most `FAILOVER_WAIT_MS`; see `set_below_min_size_wait`).
    below_min_size_wait_ms: AtomicU64,
}

/// How often a request waiting on a silent primary checks whether its PG moved.
const STALL_CHECK_MS: u64 = 250;
/// How long one node gets to connect and answer a map refresh before the next is tried.
const NODE_ATTEMPT_MS: u64 = 700;
/// How long a volume request keeps following failovers before giving up.
const FAILOVER_WAIT_MS: u64 = 30_000;
/// Map refreshes closer together than this are served by the last one.
const REFRESH_INTERVAL_MS: u64 = 50;

/// A handle to the cluster; cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    pub async fn connect(cfg: ClientConfig) -> ClientResult<Client> {
        if cfg.servers.is_empty() {
            return Err(ClientError::Usage("no server addresses given".into()));
        }
        let key = auth::password_key(&cfg.user, &cfg.password);
        Client::connect_with_key(cfg.servers, &cfg.user, key).await
    }

    /// Like `connect`, with the user's password key instead of the password (a gateway hosted
    /// by brickd logs in as the node, whose key is all it has).
    pub async fn connect_with_key(
        servers: Vec<String>,
        user: &str,
        key: [u8; 32],
    ) -> ClientResult<Client> {
        if servers.is_empty() {
            return Err(ClientError::Usage("no server addresses given".into()));
        }
        let cfg = ClientConfig {
            servers,
            user: user.to_string(),
            password: String::new(),
        };
        let client = Client {
            inner: Arc::new(Inner {
                cfg,
                key,
                shards: RwLock::new(Vec::new()),
                nodes: Mutex::new(HashMap::new()),
                connecting: Mutex::new(HashMap::new()),
                below_min_size_wait_ms: AtomicU64::new(FAILOVER_WAIT_MS),
            }),
        };
        client.bootstrap().await?;
        Ok(client)
    }

    /// How long a write to a PG with fewer than `min_size` members up to date waits for one to
    /// come back before it fails with `BelowMinSize` (default and upper limit: the failover
    /// wait, 30 s; zero: the refusal is returned at once, for tools that would rather fail).
    pub fn set_below_min_size_wait(&self, wait: Duration) {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.inner
            .below_min_size_wait_ms
            .store(ms.min(FAILOVER_WAIT_MS), Ordering::Relaxed);
    }

    fn below_min_size_wait(&self) -> Duration {
        Duration::from_millis(self.inner.below_min_size_wait_ms.load(Ordering::Relaxed))
    }

    /// Connects to the first reachable server and then to every one of its cores.
    async fn bootstrap(&self) -> ClientResult<()> {
        let mut errors = Vec::new();
        for server in &self.inner.cfg.servers {
            match self.open_node(server).await {
                Ok(shards) => {
                    *self.inner.shards.write().unwrap_or_else(|p| p.into_inner()) = shards;
                    return Ok(());
                }
                Err(e @ ClientError::Auth(_)) => return Err(e),
                Err(e) => errors.push(format!("{server}: {e}")),
            }
        }
        Err(ClientError::NoServer(errors.join("; ")))
    }

    /// Connects to one node and every one of its cores.
    async fn open_node(&self, addr: &str) -> ClientResult<Vec<Arc<Conn>>> {
        let (first, welcome) = Conn::open(addr, &self.inner.cfg.user, &self.inner.key).await?;
        let first = Arc::new(first);
        let mut shards = Vec::with_capacity(welcome.shard_addrs.len());
        for (core, shard_addr) in welcome.shard_addrs.iter().enumerate() {
            if core as u32 == first.core {
                shards.push(first.clone());
            } else {
                let (c, _) = Conn::open(shard_addr, &self.inner.cfg.user, &self.inner.key).await?;
                shards.push(Arc::new(c));
            }
        }
        Ok(shards)
    }

    fn cached_conn(&self, addr: &str, pg: u32) -> Option<Arc<Conn>> {
        let nodes = self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let shards = nodes.get(addr)?;
        let conn = shards.get(pg as usize % shards.len().max(1))?;
        conn.is_alive().then(|| conn.clone())
    }

    /// The connection to the core of node `addr` that owns `pg`, (re)connecting if needed.
    async fn node_conn(&self, addr: &str, pg: u32) -> ClientResult<Arc<Conn>> {
        if let Some(c) = self.cached_conn(addr, pg) {
            return Ok(c);
        }
        let gate = self
            .inner
            .connecting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr.to_string())
            .or_default()
            .clone();
        let _one_at_a_time = gate.lock().await;
        if let Some(c) = self.cached_conn(addr, pg) {
            return Ok(c);
        }
        let limit = Duration::from_millis(NODE_ATTEMPT_MS);
        let shards = tokio::time::timeout(limit, self.open_node(addr))
            .await
            .map_err(|_| {
                ClientError::Disconnected(format!("{addr}: no handshake within {limit:?}"))
            })??;
        let conn = shards
            .get(pg as usize % shards.len().max(1))
            .cloned()
            .ok_or_else(|| ClientError::NoServer(format!("{addr} announced no cores")))?;
        self.inner
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr.to_string(), shards);
        Ok(conn)
    }

    /// The connection to the core owning `fid` (core 0 for requests without one), if known.
    fn shard_now(&self, fid: Option<FileId>) -> Option<Arc<Conn>> {
        let shards = self.inner.shards.read().unwrap_or_else(|p| p.into_inner());
        let core = fid.map(|f| core_of(f, shards.len())).unwrap_or(0);
        shards.get(core).cloned()
    }

    async fn shard(&self, fid: Option<FileId>) -> ClientResult<Arc<Conn>> {
        let conn = self.shard_now(fid);
        match conn {
            Some(c) if c.is_alive() => Ok(c),
            _ => {
                self.bootstrap().await?;
                self.shard_now(fid)
                    .ok_or_else(|| ClientError::NoServer("server announced no cores".into()))
            }
        }
    }

    /// Sends a request to the core owning it; retries idempotent ones across reconnects.
    pub async fn call(&self, req: &Request<'_>) -> ClientResult<Vec<u8>> {
        let retries = if req.is_idempotent() {
            CLIENT_RETRIES_MAX
        } else {
            0
        };
        let mut attempt = 0;
        loop {
            let result = match self.shard(req.routing_fid()).await {
                Ok(conn) => conn.call(req).await,
                Err(e) => Err(e),
            };
            match result {
                Err(e) if e.is_retriable_for(req) && attempt < retries => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
                }
                other => return other,
            }
        }
    }

    /// A management request, answered by the node this client bootstrapped from. The reply is
    /// parsed as the request's own reply type: a field missing or unknown is a protocol error
    /// naming the op and the field.
    pub async fn mgmt<C: MgmtCall>(&self, req: &C) -> ClientResult<C::Reply> {
        let doc = mgmt_request(req)?;
        let reply = self.call(&Request::Mgmt { doc: &doc }).await?;
        mgmt::decode_reply::<C>(&reply).map_err(ClientError::Protocol)
    }

    pub async fn open_volume(&self, name: &str) -> ClientResult<Volume> {
        let handle = self
            .mgmt(&VolumeOpen {
                name: name.to_string(),
            })
            .await?;
        Ok(Volume {
            client: self.clone(),
            id: handle.id,
            name: handle.name.clone(),
            routes: Arc::new(Routes::new(handle)),
        })
    }

    /// A management request to one node (`brick heal status` asks each node for its part).
    pub async fn mgmt_node<C: MgmtCall>(&self, req: &C, addr: &str) -> ClientResult<C::Reply> {
        self.mgmt_any(req, &[addr.to_string()]).await
    }

    /// A management request to the first node of `addrs` that answers within
    /// `NODE_ATTEMPT_MS` (a frozen node must not stall a client that needs a fresh map).
    async fn mgmt_any<C: MgmtCall>(&self, req: &C, addrs: &[String]) -> ClientResult<C::Reply> {
        let doc = mgmt_request(req)?;
        let limit = Duration::from_millis(NODE_ATTEMPT_MS);
        let mut errors = Vec::new();
        for addr in addrs {
            let attempt = async {
                let conn = self.node_conn(addr, 0).await?;
                conn.call(&Request::Mgmt { doc: &doc }).await
            };
            match tokio::time::timeout(limit, attempt).await {
                Ok(Ok(reply)) => {
                    return mgmt::decode_reply::<C>(&reply).map_err(ClientError::Protocol)
                }
                Ok(Err(e @ ClientError::Server { .. })) => return Err(e),
                Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
                Err(_) => errors.push(format!("{addr}: no answer within {limit:?}")),
            }
        }
        Err(ClientError::NoServer(errors.join("; ")))
    }
}

/// The request document of `req`, within the size the server accepts.
fn mgmt_request<C: MgmtCall>(req: &C) -> ClientResult<Vec<u8>> {
    let op: MgmtOp = req.clone().into();
    let doc = op.encode().map_err(ClientError::Usage)?;
    if doc.len() > brick_tuning::MGMT_DOC_BYTES_MAX {
        return Err(ClientError::Usage(format!(
            "management request {} of {} bytes exceeds the limit of {}",
            op.name(),
            doc.len(),
            brick_tuning::MGMT_DOC_BYTES_MAX
        )));
    }
    Ok(doc)
}

/// How many connections to servers this process has opened so far (see `conn.rs`): unchanged
/// between two moments means no server connection was lost and re-made in between.
pub fn connections_opened() -> u64 {
    conn::CONNECTIONS_OPENED.load(Ordering::Relaxed)
}

/// Getattrs a directory page sends at once to refresh entries whose data is on other bricks.
const ATTR_REFRESH_PARALLEL: usize = 32;

fn check_io_len(len: usize) -> ClientResult<()> {
    if len > brick_tuning::IO_BYTES_MAX as usize {
        return Err(ClientError::Usage(format!(
            "one request carries at most {} bytes, not {len}; split it",
            brick_tuning::IO_BYTES_MAX
        )));
    }
    Ok(())
}

fn decode<T>(r: Result<T, brick_wire::DecodeError>) -> ClientResult<T> {
    r.map_err(|e| ClientError::Protocol(e.to_string()))
}

/// Where a volume's requests go: each PG's map and the members' node addresses, refreshed
/// from any reachable node when a primary stops answering or says it is not the primary.
struct Routes {
    state: RwLock<(Vec<MemberRoute>, Vec<PgMap>)>,
    /// Bricks per replica set (the members are listed set by set).
    replica: std::sync::atomic::AtomicU32,
    /// When the last refresh ran and whether it reached a node.
    refresh_gate: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl Routes {
    fn new(handle: VolumeHandle) -> Routes {
        Routes {
            replica: std::sync::atomic::AtomicU32::new(handle.replica),
            state: RwLock::new((handle.members, handle.pg_maps)),
            refresh_gate: tokio::sync::Mutex::new(None),
        }
    }

    /// The primary's node address and the map epoch for `pg` (`None`: no map, or no primary).
    fn primary(&self, pg: u32) -> Option<(String, u64)> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let map = state.1.get(pg as usize)?;
        let member = state.0.get(map.primary()? as usize)?;
        Some((member.addr.clone(), map.epoch))
    }

    /// Whether attributes a namespace request (PG 0) returned for `attr` may be stale: a
    /// regular file whose data PG is not on the brick of PG 0's primary, which then holds
    /// only its name (an empty file). Its size and times are its data PG's.
    fn attr_elsewhere(&self, attr: &Attr) -> bool {
        if attr.kind != brick_wire::FileKind::File {
            return false;
        }
        let pg = brick_wire::pg_of(attr.fid);
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let (Some(ns), Some(data)) = (state.1.first(), state.1.get(pg as usize)) else {
            return false;
        };
        pg != 0 && ns.primary().is_some_and(|p| !data.is_placed(p))
    }

    /// The volume's replica sets as (member index, address) lists.
    fn sets(&self) -> Vec<Vec<(u8, String)>> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let r = match self.replica.load(Ordering::Relaxed) as usize {
            0 => state.0.len().max(1),
            r => r,
        };
        let members: Vec<(u8, String)> = state
            .0
            .iter()
            .enumerate()
            .map(|(m, route)| (m as u8, route.addr.clone()))
            .collect();
        // A set taken out of the volume keeps its places with no address.
        members
            .chunks(r)
            .filter(|c| c.iter().any(|(_, a)| !a.is_empty()))
            .map(|c| c.to_vec())
            .collect()
    }

    fn addrs(&self) -> Vec<String> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let mut addrs: Vec<String> = state.0.iter().map(|m| m.addr.clone()).collect();
        addrs.dedup();
        addrs
    }
}

/// Why a volume request is sent again.
enum Retry {
    /// The request may have been executed (connection lost, primary replaced under it):
    /// changes that cannot simply be repeated are checked by the caller.
    Ambiguous,
    /// Certainly not executed (the server is not the primary).
    NotExecuted,
}

/// A core of this process, and the login to present to it.
pub struct InProcessPrimary {
    pub core: flume::Sender<brick_wire::local::ToCore>,
    pub user: String,
    pub key: [u8; 32],
}

/// Operations on one volume, by file id.
#[derive(Clone)]
pub struct Volume {
    pub client: Client,
    pub id: u32,
    pub name: String,
    routes: Arc<Routes>,
}

impl Volume {
    async fn attr(&self, req: Request<'_>) -> ClientResult<Attr> {
        decode(Attr::decode_whole(&self.call(&req).await?))
    }

    async fn unit(&self, req: Request<'_>) -> ClientResult<()> {
        self.call(&req).await.map(|_| ())
    }

    async fn call(&self, req: &Request<'_>) -> ClientResult<Vec<u8>> {
        self.call_tracked(req).await.0
    }

    /// Reads the maps again from any node that answers, avoiding `avoid` (a node that stopped
    /// answering). Concurrent callers share one refresh. False when no node answered.
    async fn refresh(&self, avoid: Option<&str>) -> bool {
        let mut last = self.routes.refresh_gate.lock().await;
        if let Some((at, reached)) = *last {
            if at.elapsed() < Duration::from_millis(REFRESH_INTERVAL_MS) {
                return reached;
            }
        }
        let mut addrs: Vec<String> = self
            .routes
            .addrs()
            .into_iter()
            .chain(self.client.inner.cfg.servers.iter().cloned())
            .filter(|a| Some(a.as_str()) != avoid && !a.is_empty())
            .collect();
        addrs.dedup();
        if let Some(a) = avoid {
            addrs.push(a.to_string()); // last resort
        }
        let op = VolumeOpen {
            name: self.name.clone(),
        };
        let reached = match self.client.mgmt_any(&op, &addrs).await {
            Ok(h) => {
                self.routes.replica.store(h.replica, Ordering::Relaxed);
                *self.routes.state.write().unwrap_or_else(|p| p.into_inner()) =
                    (h.members, h.pg_maps);
                true
            }
            Err(e @ ClientError::Protocol(_)) => {
                tracing::warn!("volume {}: bad map reply: {e}", self.name);
                true
            }
            Err(e) => {
                tracing::debug!("volume {}: map refresh failed: {e}", self.name);
                !matches!(e, ClientError::NoServer(_))
            }
        };
        *last = Some((Instant::now(), reached));
        reached
    }

    /// Sends a request to its PG's primary and follows failovers: on "not the primary", a
    /// lost connection, or a primary silent for `STALL_CHECK_MS` whose PG has meanwhile moved,
    /// the maps are refreshed and the request goes to the new primary. A request is never
    /// sent twice to the same primary in the same epoch. Returns the result and whether an
    /// earlier attempt may have been executed.
    async fn call_tracked(&self, req: &Request<'_>) -> (ClientResult<Vec<u8>>, bool) {
        let pg = req.pg();
        let started = Instant::now();
        let deadline = started + Duration::from_millis(FAILOVER_WAIT_MS);
        let below_min_deadline = started + self.client.below_min_size_wait();
        let mut ambiguous = false;
        let mut attempt = 0u64;
        loop {
            let Some((addr, epoch)) = self.routes.primary(pg) else {
                // No map (an older server) or no primary yet: the bootstrap node routes.
                return (self.client.call(req).await, ambiguous);
            };
            let retry = match self.call_at(&addr, epoch, pg, req).await {
                Ok(reply) => return (Ok(reply), ambiguous),
                Err((e, _))
                    if e.code() == Some(ErrorCode::BelowMinSize)
                        && Instant::now() >= below_min_deadline =>
                {
                    return (Err(e), ambiguous)
                }
                Err((e, retry)) if Instant::now() < deadline => match retry {
                    Some(r) => r,
                    None => return (Err(e), ambiguous),
                },
                Err((e, _)) => return (Err(e), ambiguous),
            };
            ambiguous |= matches!(retry, Retry::Ambiguous);
            attempt += 1;
            let reached = self.refresh(Some(&addr)).await;
            if !reached && attempt > CLIENT_RETRIES_MAX as u64 {
                // No node of the cluster answers at all: not a failover, an outage.
                return (
                    Err(ClientError::NoServer(format!(
                        "no node of volume {} answers (last tried {addr})",
                        self.name
                    ))),
                    ambiguous,
                );
            }
            if self.routes.primary(pg) == Some((addr.clone(), epoch)) {
                // Nothing moved yet: wait before asking again.
                tokio::time::sleep(Duration::from_millis((20 * attempt).min(STALL_CHECK_MS))).await;
            }
        }
    }

    /// One attempt at the primary `addr` (map `epoch`). The error comes with how to retry
    /// (`None`: do not).
    async fn call_at(
        &self,
        addr: &str,
        epoch: u64,
        pg: u32,
        req: &Request<'_>,
    ) -> Result<Vec<u8>, (ClientError, Option<Retry>)> {
        let conn = match self.client.node_conn(addr, pg).await {
            Ok(c) => c,
            Err(e @ ClientError::Auth(_)) => return Err((e, None)),
            Err(e) => return Err((e, Some(Retry::NotExecuted))),
        };
        let call = conn.call(req);
        tokio::pin!(call);
        loop {
            tokio::select! {
                result = &mut call => {
                    return result.map_err(|e| {
                        let retry = match e.code() {
                            Some(ErrorCode::NotPrimary) => Some(Retry::NotExecuted),
                            // Too few members up to date is a failover or heal under way:
                            // the write waits for it (as long as `FAILOVER_WAIT_MS`) rather
                            // than failing. The primary may have applied it locally.
                            Some(ErrorCode::Unavailable | ErrorCode::BelowMinSize) => {
                                Some(Retry::Ambiguous)
                            }
                            Some(_) => None,
                            None => match e {
                                ClientError::Disconnected(_) | ClientError::Timeout(_) => {
                                    Some(Retry::Ambiguous)
                                }
                                _ => None,
                            },
                        };
                        (e, retry)
                    });
                }
                _ = tokio::time::sleep(Duration::from_millis(STALL_CHECK_MS)) => {
                    self.refresh(Some(addr)).await;
                    if self.routes.primary(pg) != Some((addr.to_string(), epoch)) {
                        let why = format!("PG {pg} moved away from {addr} (epoch {epoch})");
                        return Err((ClientError::Timeout(why), Some(Retry::Ambiguous)));
                    }
                }
            }
        }
    }

    /// The core of this very process that is the primary of `fid`'s PG, if there is one: a
    /// gateway hosted by brickd can hand it whole connections (the NBD gateway does). The
    /// user and key are this client's, for the core to check as an in-process login would.
    pub async fn in_process_primary(&self, fid: FileId) -> Option<InProcessPrimary> {
        let pg = brick_wire::pg_of(fid);
        let (addr, _epoch) = self.routes.primary(pg)?;
        let conn = self.client.node_conn(&addr, pg).await.ok()?;
        let core = brick_wire::local::lookup(&conn.addr)?;
        Some(InProcessPrimary {
            core,
            user: self.client.inner.cfg.user.clone(),
            key: self.client.inner.key,
        })
    }

    pub async fn lookup(&self, parent: FileId, name: &str) -> ClientResult<Attr> {
        let attr = self
            .attr(Request::Lookup {
                vol: self.id,
                parent,
                name,
            })
            .await?;
        Ok(self.fresh_attr(attr).await)
    }

    /// `attr` from a namespace request, with its size and times from the file's data PG when
    /// that PG is on other bricks than the namespace's primary (a volume of several sets).
    async fn fresh_attr(&self, attr: Attr) -> Attr {
        if !self.routes.attr_elsewhere(&attr) {
            return attr;
        }
        self.getattr(attr.fid).await.unwrap_or(attr)
    }

    /// `fresh_attr` for every entry of a directory page, concurrently.
    async fn fresh_entries(&self, entries: &mut [DirEntry]) {
        let stale: Vec<usize> = (0..entries.len())
            .filter(|&i| self.routes.attr_elsewhere(&entries[i].attr))
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in stale.chunks(ATTR_REFRESH_PARALLEL) {
            for &i in chunk {
                let (vol, fid) = (self.clone(), entries[i].attr.fid);
                tasks.spawn(async move { (i, vol.getattr(fid).await) });
            }
            while let Some(done) = tasks.join_next().await {
                if let Ok((i, Ok(attr))) = done {
                    entries[i].attr = attr;
                }
            }
        }
    }

    pub async fn getattr(&self, fid: FileId) -> ClientResult<Attr> {
        self.attr(Request::GetAttr { vol: self.id, fid }).await
    }

    pub async fn setattr(&self, fid: FileId, attr: SetAttr) -> ClientResult<Attr> {
        self.attr(Request::SetAttr {
            vol: self.id,
            fid,
            attr,
        })
        .await
    }

    pub async fn create(
        &self,
        parent: FileId,
        name: &str,
        mode: u32,
        exclusive: bool,
    ) -> ClientResult<Attr> {
        let req = Request::Create {
            vol: self.id,
            parent,
            name,
            mode,
            exclusive,
        };
        self.creating(req, parent, name).await
    }

    /// A create-like request; if an attempt that may have run was retried and the retry
    /// finds the entry, the entry is the one the first attempt made.
    async fn creating(&self, req: Request<'_>, parent: FileId, name: &str) -> ClientResult<Attr> {
        match self.call_tracked(&req).await {
            (Ok(reply), _) => Ok(self.fresh_attr(decode(Attr::decode_whole(&reply))?).await),
            (Err(e), true) if e.code() == Some(ErrorCode::Exists) => {
                self.lookup(parent, name).await
            }
            (Err(e), _) => Err(e),
        }
    }

    /// A removing request; if an attempt that may have run was retried and the retry finds
    /// nothing to remove, the first attempt removed it.
    async fn removing(&self, req: Request<'_>) -> ClientResult<()> {
        match self.call_tracked(&req).await {
            (Ok(_), _) => Ok(()),
            (Err(e), true) if e.code() == Some(ErrorCode::NotFound) => Ok(()),
            (Err(e), _) => Err(e),
        }
    }

    pub async fn mkdir(&self, parent: FileId, name: &str, mode: u32) -> ClientResult<Attr> {
        let req = Request::Mkdir {
            vol: self.id,
            parent,
            name,
            mode,
        };
        self.creating(req, parent, name).await
    }

    pub async fn symlink(&self, parent: FileId, name: &str, target: &str) -> ClientResult<Attr> {
        let req = Request::Symlink {
            vol: self.id,
            parent,
            name,
            target,
        };
        self.creating(req, parent, name).await
    }

    pub async fn readlink(&self, fid: FileId) -> ClientResult<String> {
        let reply = self.call(&Request::Readlink { vol: self.id, fid }).await?;
        let mut d = Dec::new(&reply);
        decode(
            d.str("target", brick_tuning::SYMLINK_TARGET_BYTES_MAX)
                .map(str::to_string),
        )
    }

    pub async fn unlink(&self, parent: FileId, name: &str) -> ClientResult<()> {
        self.removing(Request::Unlink {
            vol: self.id,
            parent,
            name,
        })
        .await
    }

    pub async fn rmdir(&self, parent: FileId, name: &str) -> ClientResult<()> {
        self.removing(Request::Rmdir {
            vol: self.id,
            parent,
            name,
        })
        .await
    }

    /// Renames, replacing an existing target (POSIX rename).
    pub async fn rename(
        &self,
        src_parent: FileId,
        src_name: &str,
        dst_parent: FileId,
        dst_name: &str,
    ) -> ClientResult<()> {
        self.rename_with(src_parent, src_name, dst_parent, dst_name, 0)
            .await
    }

    /// Renames unless the target exists (Exists): the check and the rename are one step on
    /// the brick, so a target created concurrently is never replaced.
    pub async fn rename_noreplace(
        &self,
        src_parent: FileId,
        src_name: &str,
        dst_parent: FileId,
        dst_name: &str,
    ) -> ClientResult<()> {
        self.rename_with(src_parent, src_name, dst_parent, dst_name, RENAME_NOREPLACE)
            .await
    }

    async fn rename_with(
        &self,
        src_parent: FileId,
        src_name: &str,
        dst_parent: FileId,
        dst_name: &str,
        flags: u8,
    ) -> ClientResult<()> {
        self.removing(Request::Rename {
            vol: self.id,
            src_parent,
            src_name,
            dst_parent,
            dst_name,
            flags,
        })
        .await
    }

    pub async fn readdir(
        &self,
        fid: FileId,
        cookie: u64,
        max_entries: u32,
    ) -> ClientResult<DirPage> {
        let reply = self
            .call(&Request::ReadDir {
                vol: self.id,
                fid,
                cookie,
                max_entries,
            })
            .await?;
        let mut page = decode(DirPage::decode(&reply))?;
        self.fresh_entries(&mut page.entries).await;
        Ok(page)
    }

    /// Every entry of a directory, following the cursor page by page.
    pub async fn readdir_all(&self, fid: FileId) -> ClientResult<Vec<DirEntry>> {
        let mut out = Vec::new();
        let mut cookie = 0;
        loop {
            let page = self.readdir(fid, cookie, READDIR_ENTRIES_MAX).await?;
            if let Some(last) = page.entries.last() {
                cookie = last.cookie;
            }
            out.extend(page.entries);
            if page.eof {
                return Ok(out);
            }
        }
    }

    pub async fn read(&self, fid: FileId, offset: u64, len: u32) -> ClientResult<Vec<u8>> {
        check_io_len(len as usize)?;
        self.call(&Request::Read {
            vol: self.id,
            fid,
            offset,
            len,
        })
        .await
    }

    pub async fn write(
        &self,
        fid: FileId,
        offset: u64,
        data: &[u8],
        durable: bool,
    ) -> ClientResult<u32> {
        check_io_len(data.len())?;
        let reply = self
            .call(&Request::Write {
                vol: self.id,
                fid,
                offset,
                flags: if durable { WRITE_FLAG_FUA } else { 0 },
                data,
            })
            .await?;
        Ok(decode(WriteReply::decode(&reply))?.written)
    }

    pub async fn fsync(&self, fid: FileId) -> ClientResult<()> {
        self.unit(Request::Fsync { vol: self.id, fid }).await
    }

    /// The volume's capacity and use: with several replica sets, the sum over the sets of one
    /// brick of each (the first that answers).
    pub async fn statfs(&self) -> ClientResult<StatFs> {
        let sets = self.routes.sets();
        if sets.len() <= 1 {
            let req = Request::Statfs {
                vol: self.id,
                member: None,
            };
            return decode(StatFs::decode(&self.call(&req).await?));
        }
        let mut total: Option<StatFs> = None;
        for set in sets {
            let mut last = None;
            let mut got = None;
            for (m, addr) in set {
                let req = Request::Statfs {
                    vol: self.id,
                    member: Some(m),
                };
                let reply = match self.client.node_conn(&addr, 0).await {
                    Ok(conn) => conn.call(&req).await,
                    Err(e) => Err(e),
                };
                match reply.and_then(|r| decode(StatFs::decode(&r))) {
                    Ok(s) => {
                        got = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let Some(s) = got else {
                return Err(last.unwrap_or_else(|| ClientError::NoServer("no brick".into())));
            };
            total = Some(match total {
                None => s,
                Some(t) => StatFs {
                    total_bytes: t.total_bytes + s.total_bytes,
                    free_bytes: t.free_bytes + s.free_bytes,
                    avail_bytes: t.avail_bytes + s.avail_bytes,
                    total_files: t.total_files + s.total_files,
                    free_files: t.free_files + s.free_files,
                    ..t
                },
            });
        }
        total.ok_or_else(|| ClientError::NoServer(format!("volume {} has no brick", self.name)))
    }

    /// Resolves a slash-separated path from the volume root.
    pub async fn resolve(&self, path: &str) -> ClientResult<Attr> {
        let mut attr = self.getattr(ROOT_FILE_ID).await?;
        for name in path.split('/').filter(|s| !s.is_empty()) {
            attr = self.lookup(attr.fid, name).await?;
        }
        Ok(attr)
    }

    /// Splits "a/b/c" into the parent directory's attributes and "c".
    pub async fn resolve_parent<'p>(&self, path: &'p str) -> ClientResult<(Attr, &'p str)> {
        let trimmed = path.trim_matches('/');
        let (dir, name) = match trimmed.rsplit_once('/') {
            Some((d, n)) => (d, n),
            None => ("", trimmed),
        };
        if name.is_empty() {
            return Err(ClientError::Usage(format!(
                "{path:?} names the volume root, not an entry"
            )));
        }
        Ok((self.resolve(dir).await?, name))
    }
}
