//! The native client library. One connection per server core (learned in the handshake);
//! requests go straight to the core that owns their placement group, many in flight at once;
//! lost connections are re-established and idempotent requests retried.
//!
//! Used by the `brick` CLI and bench today, and by the NFS, SMB, NBD and FUSE front ends.

mod conn;

use brick_cluster::mgmt::{MgmtOp, VolumeHandle};
use brick_tuning::{CLIENT_RETRIES_MAX, READDIR_ENTRIES_MAX};
use brick_wire::{
    auth, core_of, Attr, Dec, DirEntry, DirPage, ErrorCode, FileId, Request, SetAttr, StatFs,
    WriteReply, ROOT_FILE_ID, WRITE_FLAG_FUA,
};
use conn::Conn;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

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
    shards: RwLock<Vec<Arc<Conn>>>,
}

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
        let client = Client {
            inner: Arc::new(Inner {
                cfg,
                key,
                shards: RwLock::new(Vec::new()),
            }),
        };
        client.bootstrap().await?;
        Ok(client)
    }

    /// Connects to the first reachable server and then to every one of its cores.
    async fn bootstrap(&self) -> ClientResult<()> {
        let mut errors = Vec::new();
        for server in &self.inner.cfg.servers {
            match Conn::open(server, &self.inner.cfg.user, &self.inner.key).await {
                Ok((first, welcome)) => {
                    let first = Arc::new(first);
                    let mut shards = Vec::with_capacity(welcome.shard_addrs.len());
                    for (core, addr) in welcome.shard_addrs.iter().enumerate() {
                        if core as u32 == first.core {
                            shards.push(first.clone());
                        } else {
                            let (c, _) =
                                Conn::open(addr, &self.inner.cfg.user, &self.inner.key).await?;
                            shards.push(Arc::new(c));
                        }
                    }
                    *self.inner.shards.write().unwrap_or_else(|p| p.into_inner()) = shards;
                    return Ok(());
                }
                Err(e @ ClientError::Auth(_)) => return Err(e),
                Err(e) => errors.push(format!("{server}: {e}")),
            }
        }
        Err(ClientError::NoServer(errors.join("; ")))
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

    pub async fn mgmt(&self, op: &MgmtOp) -> ClientResult<serde_json::Value> {
        let doc = serde_json::to_vec(op).map_err(|e| ClientError::Usage(e.to_string()))?;
        if doc.len() > brick_tuning::MGMT_DOC_BYTES_MAX {
            return Err(ClientError::Usage(format!(
                "management request of {} bytes exceeds the limit",
                doc.len()
            )));
        }
        let reply = self.call(&Request::Mgmt { doc: &doc }).await?;
        serde_json::from_slice(&reply)
            .map_err(|e| ClientError::Protocol(format!("management reply: {e}")))
    }

    pub async fn open_volume(&self, name: &str) -> ClientResult<Volume> {
        let v = self
            .mgmt(&MgmtOp::VolumeOpen {
                name: name.to_string(),
            })
            .await?;
        let handle: VolumeHandle =
            serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Volume {
            client: self.clone(),
            id: handle.id,
            name: handle.name,
        })
    }
}

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

/// Operations on one volume, by file id.
#[derive(Clone)]
pub struct Volume {
    pub client: Client,
    pub id: u32,
    pub name: String,
}

impl Volume {
    async fn attr(&self, req: Request<'_>) -> ClientResult<Attr> {
        decode(Attr::decode_whole(&self.client.call(&req).await?))
    }

    async fn unit(&self, req: Request<'_>) -> ClientResult<()> {
        self.client.call(&req).await.map(|_| ())
    }

    pub async fn lookup(&self, parent: FileId, name: &str) -> ClientResult<Attr> {
        self.attr(Request::Lookup {
            vol: self.id,
            parent,
            name,
        })
        .await
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
        self.attr(Request::Create {
            vol: self.id,
            parent,
            name,
            mode,
            exclusive,
        })
        .await
    }

    pub async fn mkdir(&self, parent: FileId, name: &str, mode: u32) -> ClientResult<Attr> {
        self.attr(Request::Mkdir {
            vol: self.id,
            parent,
            name,
            mode,
        })
        .await
    }

    pub async fn symlink(&self, parent: FileId, name: &str, target: &str) -> ClientResult<Attr> {
        self.attr(Request::Symlink {
            vol: self.id,
            parent,
            name,
            target,
        })
        .await
    }

    pub async fn readlink(&self, fid: FileId) -> ClientResult<String> {
        let reply = self
            .client
            .call(&Request::Readlink { vol: self.id, fid })
            .await?;
        let mut d = Dec::new(&reply);
        decode(
            d.str("target", brick_tuning::SYMLINK_TARGET_BYTES_MAX)
                .map(str::to_string),
        )
    }

    pub async fn unlink(&self, parent: FileId, name: &str) -> ClientResult<()> {
        self.unit(Request::Unlink {
            vol: self.id,
            parent,
            name,
        })
        .await
    }

    pub async fn rmdir(&self, parent: FileId, name: &str) -> ClientResult<()> {
        self.unit(Request::Rmdir {
            vol: self.id,
            parent,
            name,
        })
        .await
    }

    pub async fn rename(
        &self,
        src_parent: FileId,
        src_name: &str,
        dst_parent: FileId,
        dst_name: &str,
    ) -> ClientResult<()> {
        self.unit(Request::Rename {
            vol: self.id,
            src_parent,
            src_name,
            dst_parent,
            dst_name,
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
            .client
            .call(&Request::ReadDir {
                vol: self.id,
                fid,
                cookie,
                max_entries,
            })
            .await?;
        decode(DirPage::decode(&reply))
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
        self.client
            .call(&Request::Read {
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
            .client
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

    pub async fn statfs(&self) -> ClientResult<StatFs> {
        decode(StatFs::decode(
            &self.client.call(&Request::Statfs { vol: self.id }).await?,
        ))
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
