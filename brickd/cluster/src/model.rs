//! The cluster data model and its typed access over any `ClusterStore`.
//!
//! A volume has a replica count R and bricks listed replica set by replica set; files map to
//! placement groups (PGs) by hash; each PG's map records the bricks that hold it (one replica
//! set, two while it moves; PG 0, the namespace, is on every brick), placed by
//! `placement::plan`. A member of a PG is a brick by its position in the volume's brick list.
//! Every change of a volume bumps its epoch.

use crate::placement;
use crate::store::{ClusterStore, StoreError, TxnOp};
pub use brick_replication::{mask_of, PgMap, MEMBERS_MAX};
use brick_tuning::{
    CLUSTER_VOLUMES_MAX, DIRECT_IO_SIZE_MIN_DEFAULT, REPLICA_COUNT_MAX, VOLUME_BRICKS_MAX,
    VOLUME_PGS_DEFAULT, VOLUME_PGS_MAX,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("the cluster state changed concurrently too many times; retry")]
    Contended,
}

pub type ClusterResult<T> = Result<T, ClusterError>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickSpec {
    pub node: String,
    pub path: String,
}

impl BrickSpec {
    /// Parses `NODE:DIR`; DIR must be absolute.
    pub fn parse(s: &str) -> ClusterResult<BrickSpec> {
        let (node, path) = s
            .split_once(':')
            .ok_or_else(|| ClusterError::Invalid(format!("brick {s:?} is not NODE:DIR")))?;
        validate_name("node", node)?;
        if !path.starts_with('/') || path.contains('\0') || path.len() > 4096 {
            return Err(ClusterError::Invalid(format!(
                "brick directory {path:?} must be an absolute path"
            )));
        }
        Ok(BrickSpec {
            node: node.to_string(),
            path: path.trim_end_matches('/').to_string(),
        })
    }
}

impl std::fmt::Display for BrickSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.node, self.path)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeStatus {
    Created,
    Started,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: u32,
    pub name: String,
    pub replica: u32,
    pub min_size: u32,
    pub pg_count: u32,
    pub bricks: Vec<BrickSpec>,
    pub status: VolumeStatus,
    pub epoch: u64,
    pub options: BTreeMap<String, String>,
    /// Replica sets taken out by `remove-brick commit`: their bricks stay listed (a member is
    /// a brick by its position) and hold nothing; `add_bricks` reuses their places.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_sets: Vec<u32>,
}

/// The rebalance of a volume, as stored under `rebalance/<volume>`: what it moves where, and
/// how far it got. Every step of a move is a PG map change, so the maps say where each PG
/// is; this document says where each should go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceDoc {
    /// "running", "stopped", "done", "failed".
    pub state: String,
    /// The set each PG goes to (index: PG; PG 0 is everywhere and unused).
    pub target: Vec<u16>,
    /// Sets being drained (remove-brick), by index.
    pub removing: Vec<u32>,
    /// Wall-clock start and end, ms since the epoch.
    pub started_ms: u64,
    pub finished_ms: u64,
    /// Every PG the rebalance moves, with what it holds.
    pub pgs: BTreeMap<u32, PgMoveDoc>,
    pub verified_in_flux: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgMoveDoc {
    pub files: u64,
    pub bytes: u64,
    /// The files and bytes above were measured on the source.
    pub measured: bool,
    /// The move was committed (the PG is on its target set only).
    pub done: bool,
}

/// Options `volume set` accepts, with their defaults.
pub const VOLUME_OPTIONS: &[(&str, &str)] = &[
    ("io.mode", "auto"),
    ("io.direct_min_bytes", "1048576"),
    ("heal.rate", "adaptive"),
    ("smb.encrypt", "off"),
    ("smb.leases", "off"),
];

/// `heal.rate`: "adaptive" (0), or bytes per second with an optional K, M or G (binary)
/// suffix and an optional "/s": "50M", "1048576", "200MiB/s".
pub fn parse_heal_rate(value: &str) -> Option<u64> {
    let v = value.trim();
    if v == "adaptive" {
        return Some(0);
    }
    let v = v.strip_suffix("/s").unwrap_or(v);
    let v = v
        .strip_suffix("iB")
        .or_else(|| v.strip_suffix('B'))
        .unwrap_or(v);
    let (digits, unit) = match v.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => v.split_at(at),
        None => (v, ""),
    };
    let n: u64 = digits.parse().ok()?;
    let scale = match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale).filter(|&r| r > 0)
}

pub fn default_min_size(replica: u32) -> u32 {
    match replica {
        1 => 1,
        2 => 1,
        r => r / 2 + 1,
    }
}

impl Volume {
    pub fn replica_sets(&self) -> Vec<&[BrickSpec]> {
        self.bricks.chunks(self.replica as usize).collect()
    }

    /// Whether replica set `set` was taken out of the volume (`remove-brick commit`).
    pub fn is_removed_set(&self, set: usize) -> bool {
        self.removed_sets.contains(&(set as u32))
    }

    /// The replica sets that hold data or can take it (not taken out).
    pub fn live_sets(&self) -> Vec<usize> {
        (0..self.replica_sets().len())
            .filter(|&s| !self.is_removed_set(s))
            .collect()
    }

    /// The set brick `index` (a member) belongs to.
    pub fn set_of_brick(&self, index: usize) -> usize {
        index / self.replica.max(1) as usize
    }

    /// The members (brick positions) of replica set `set`, as a mask; 0 for a set taken out.
    pub fn set_mask(&self, set: usize) -> u8 {
        if self.is_removed_set(set) {
            return 0;
        }
        let r = self.replica as usize;
        (set * r..(set + 1) * r)
            .filter(|&b| b < self.bricks.len() && b < MEMBERS_MAX as usize)
            .fold(0u8, |m, b| m | (1 << b))
    }

    /// Every brick of the volume, as a mask (where PG 0, the namespace, lives).
    pub fn all_mask(&self) -> u8 {
        (0..self.replica_sets().len()).fold(0, |m, s| m | self.set_mask(s))
    }

    /// The replica sets wholly placed in a map: one for a PG at rest, two while it moves
    /// (every set for PG 0 of a volume of several sets).
    pub fn sets_of_map(&self, map: &PgMap) -> Vec<usize> {
        (0..self.replica_sets().len())
            .filter(|&s| self.set_mask(s) != 0 && map.placed & self.set_mask(s) == self.set_mask(s))
            .collect()
    }

    /// The initial placement of data PGs (equal weights: capacities are weighed by rebalance).
    pub fn initial_plan(&self) -> Vec<usize> {
        let sets = self.replica_sets().len().max(1);
        let weights: Vec<u64> = (0..sets)
            .map(|s| u64::from(!self.is_removed_set(s)))
            .collect();
        placement::plan(&vec![None; self.pg_count as usize], &weights)
    }

    /// The first map of PG `pg` given the initial plan.
    pub fn initial_map(&self, pg: u32, plan: &[usize]) -> PgMap {
        let min_size = (self.min_size.min(self.replica) as u8).max(1);
        if pg == 0 || self.replica_sets().len() == 1 {
            let all = if pg == 0 {
                self.all_mask()
            } else {
                self.set_mask(0)
            };
            return PgMap::initial_on(all, min_size, (pg % self.replica) as u8);
        }
        PgMap::initial_on(
            self.set_mask(plan[pg as usize]),
            min_size,
            (pg % self.replica) as u8,
        )
    }

    /// The users given access to this volume's share, and their access.
    pub fn share_access(&self) -> Vec<(String, ShareAccess)> {
        self.options
            .iter()
            .filter_map(|(k, v)| {
                let user = k.strip_prefix(ACCESS_OPTION_PREFIX)?;
                Some((user.to_string(), ShareAccess::parse(v)?))
            })
            .collect()
    }

    pub fn option(&self, key: &str) -> String {
        self.options.get(key).cloned().unwrap_or_else(|| {
            VOLUME_OPTIONS
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
                .unwrap_or_default()
        })
    }

    /// Bytes per second a heal copies per PG; 0: adaptive.
    pub fn heal_rate_bytes(&self) -> u64 {
        parse_heal_rate(&self.option("heal.rate")).unwrap_or(0)
    }

    pub fn direct_min_bytes(&self) -> u64 {
        self.option("io.direct_min_bytes")
            .parse()
            .unwrap_or(DIRECT_IO_SIZE_MIN_DEFAULT)
    }
}

pub fn validate_name(what: &str, name: &str) -> ClusterResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.');
    if !ok {
        return Err(ClusterError::Invalid(format!(
            "{what} name {name:?} must be 1-64 characters of A-Z a-z 0-9 - _ . and not start with '.'"
        )));
    }
    Ok(())
}

pub fn validate_option(key: &str, value: &str) -> ClusterResult<()> {
    if let Some(user) = key.strip_prefix(ACCESS_OPTION_PREFIX) {
        validate_name("user", user)?;
        return match value {
            "ro" | "rw" | "none" => Ok(()),
            _ => Err(ClusterError::Invalid(format!(
                "{key} must be ro, rw or none"
            ))),
        };
    }
    match key {
        "smb.encrypt" | "smb.leases" if ["on", "off"].contains(&value) => Ok(()),
        "smb.encrypt" | "smb.leases" => {
            Err(ClusterError::Invalid(format!("{key} must be on or off")))
        }
        "io.mode" if ["auto", "direct", "buffered"].contains(&value) => Ok(()),
        "io.mode" => Err(ClusterError::Invalid(
            "io.mode must be auto, direct or buffered".into(),
        )),
        "heal.rate" => parse_heal_rate(value).map(|_| ()).ok_or_else(|| {
            ClusterError::Invalid(
                "heal.rate must be \"adaptive\" or bytes per second such as 50M or 200MiB/s".into(),
            )
        }),
        "io.direct_min_bytes" => value
            .parse::<u64>()
            .map(|_| ())
            .map_err(|_| ClusterError::Invalid("io.direct_min_bytes must be a byte count".into())),
        _ => Err(ClusterError::Invalid(format!(
            "unknown volume option {key:?}; known: {}",
            VOLUME_OPTIONS
                .iter()
                .map(|(k, _)| *k)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// Native protocol address of the node's core 0.
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// `auth::password_key(user, password)` in hex: what the handshake proof is checked against.
    pub key_hex: String,
    pub admin: bool,
    /// The password sealed (`auth::seal`, purpose [`SEAL_AT_REST`]) under the cluster's seal
    /// key, in hex. NTLMv2 (SMB) needs a password equivalent on the server; see docs/smb.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_sealed_hex: Option<String>,
}

/// `auth::seal` purpose of passwords in the cluster state.
pub const SEAL_AT_REST: &str = "user-password-at-rest";
/// `auth::seal` purpose of passwords in management requests and replies, sealed under the
/// password key of the user the request runs as.
pub const SEAL_IN_TRANSIT: &str = "user-password-in-transit";

/// Access a user has to a volume's share (volume option `access.USER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareAccess {
    Ro,
    Rw,
}

impl ShareAccess {
    pub fn parse(value: &str) -> Option<ShareAccess> {
        match value {
            "ro" => Some(ShareAccess::Ro),
            "rw" => Some(ShareAccess::Rw),
            _ => None,
        }
    }
}

/// Prefix of the per-user access options of a volume.
pub const ACCESS_OPTION_PREFIX: &str = "access.";

impl UserRecord {
    pub fn key(&self) -> Option<[u8; 32]> {
        let bytes = hex_decode(&self.key_hex)?;
        bytes.try_into().ok()
    }
}

pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

const CAS_RETRIES_MAX: usize = 16;
/// Keys one transaction checks or writes at most (etcd refuses more than 128 operations).
const TXN_KEYS_MAX: usize = 120;
/// Refused PGs an error message lists at most.
const REFUSALS_LISTED_MAX: usize = 8;

/// Typed access to the cluster state.
#[derive(Clone)]
pub struct Cluster {
    store: Arc<dyn ClusterStore>,
}

fn vol_key(name: &str) -> String {
    format!("volumes/{name}")
}

fn pg_key(volume: &str, pg: u32) -> String {
    format!("pgmaps/{volume}/{pg:05}")
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("model types serialize")
}

fn from_json<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> ClusterResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{key}: {e}")).into())
}

impl Cluster {
    pub fn new(store: Arc<dyn ClusterStore>) -> Cluster {
        Cluster { store }
    }

    pub fn describe_store(&self) -> String {
        self.store.describe()
    }

    pub async fn create_volume(
        &self,
        name: &str,
        replica: u32,
        bricks: Vec<BrickSpec>,
        pg_count: Option<u32>,
    ) -> ClusterResult<Volume> {
        validate_name("volume", name)?;
        if replica == 0 || replica > REPLICA_COUNT_MAX {
            return Err(ClusterError::Invalid(format!(
                "replica must be 1..={REPLICA_COUNT_MAX}"
            )));
        }
        if bricks.is_empty()
            || !bricks.len().is_multiple_of(replica as usize)
            || bricks.len() > VOLUME_BRICKS_MAX
        {
            return Err(ClusterError::Invalid(format!(
                "{} bricks given; a replica {replica} volume needs a non-zero multiple of {replica} (at most {VOLUME_BRICKS_MAX})",
                bricks.len()
            )));
        }
        if bricks.len() > MEMBERS_MAX as usize {
            return Err(ClusterError::Invalid(format!(
                "{} bricks given; a volume has at most {MEMBERS_MAX} bricks in this build (PG 0, \
                 the namespace, is on every brick and a PG has at most {MEMBERS_MAX} members)",
                bricks.len()
            )));
        }
        for (i, b) in bricks.iter().enumerate() {
            if bricks[..i].contains(b) {
                return Err(ClusterError::Invalid(format!("brick {b} is listed twice")));
            }
        }
        let pg_count = pg_count.unwrap_or(VOLUME_PGS_DEFAULT);
        if pg_count == 0 || pg_count > VOLUME_PGS_MAX {
            return Err(ClusterError::Invalid(format!(
                "pg count must be 1..={VOLUME_PGS_MAX}"
            )));
        }
        if self.store.get(&vol_key(name)).await?.is_some() {
            return Err(ClusterError::Exists(format!("volume {name}")));
        }
        for other in self.list_volumes().await? {
            if let Some(b) = other.bricks.iter().find(|b| bricks.contains(b)) {
                return Err(ClusterError::Invalid(format!(
                    "brick {b} already belongs to volume {}",
                    other.name
                )));
            }
        }
        for _ in 0..CAS_RETRIES_MAX {
            let volumes = self.list_volumes().await?;
            if volumes.len() >= CLUSTER_VOLUMES_MAX {
                return Err(ClusterError::Invalid(format!(
                    "the cluster already has {CLUSTER_VOLUMES_MAX} volumes"
                )));
            }
            let counter = self.store.get("meta/next_volume_id").await?;
            let id = match &counter {
                Some(b) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(1),
                None => 1u32,
            };
            let vol = Volume {
                id,
                name: name.to_string(),
                replica,
                min_size: default_min_size(replica),
                pg_count,
                bricks: bricks.clone(),
                status: VolumeStatus::Created,
                epoch: 1,
                options: BTreeMap::new(),
                removed_sets: Vec::new(),
            };
            let ok = self
                .store
                .txn(
                    &[
                        (vol_key(name), None),
                        ("meta/next_volume_id".into(), counter.clone()),
                    ],
                    &[
                        TxnOp::Put(vol_key(name), to_json(&vol)),
                        TxnOp::Put(
                            "meta/next_volume_id".into(),
                            (id + 1).to_string().into_bytes(),
                        ),
                    ],
                )
                .await?;
            if ok {
                return Ok(vol);
            }
            if self.store.get(&vol_key(name)).await?.is_some() {
                return Err(ClusterError::Exists(format!("volume {name}")));
            }
        }
        Err(ClusterError::Contended)
    }

    pub async fn volume(&self, name: &str) -> ClusterResult<Volume> {
        let key = vol_key(name);
        match self.store.get(&key).await? {
            Some(b) => from_json(&key, &b),
            None => Err(ClusterError::NotFound(format!("volume {name}"))),
        }
    }

    pub async fn list_volumes(&self) -> ClusterResult<Vec<Volume>> {
        let mut out = Vec::new();
        for (k, v) in self.store.list("volumes/").await? {
            out.push(from_json(&k, &v)?);
        }
        Ok(out)
    }

    /// Read-modify-write of one volume with compare-and-set; bumps the epoch.
    pub async fn update_volume(
        &self,
        name: &str,
        change: impl Fn(&mut Volume) -> ClusterResult<()>,
    ) -> ClusterResult<Volume> {
        let key = vol_key(name);
        for _ in 0..CAS_RETRIES_MAX {
            let Some(old) = self.store.get(&key).await? else {
                return Err(ClusterError::NotFound(format!("volume {name}")));
            };
            let mut vol: Volume = from_json(&key, &old)?;
            change(&mut vol)?;
            vol.epoch += 1;
            if self
                .store
                .txn(
                    &[(key.clone(), Some(old))],
                    &[TxnOp::Put(key.clone(), to_json(&vol))],
                )
                .await?
            {
                return Ok(vol);
            }
        }
        Err(ClusterError::Contended)
    }

    /// Replaces brick `old` of a volume by the empty brick `new` in one transaction: the
    /// volume lists `new` in `old`'s place, and in every PG of that replica set the member is
    /// absent and fresh (its new brick is filled by a full heal). Refused when a PG would lose
    /// its last up-to-date copy or drop below `min_size`. Idempotent: when `new` is already in
    /// `old`'s place, returns the volume as it is.
    pub async fn replace_brick(
        &self,
        name: &str,
        old: &BrickSpec,
        new: &BrickSpec,
    ) -> ClusterResult<Volume> {
        let key = vol_key(name);
        for _ in 0..CAS_RETRIES_MAX {
            let Some(vol_bytes) = self.store.get(&key).await? else {
                return Err(ClusterError::NotFound(format!("volume {name}")));
            };
            let mut vol: Volume = from_json(&key, &vol_bytes)?;
            if vol.bricks.contains(new) {
                if vol.bricks.contains(old) || old == new {
                    return Err(ClusterError::Exists(format!(
                        "brick {new} in volume {name}"
                    )));
                }
                return Ok(vol); // done by an earlier attempt
            }
            let Some(index) = vol.bricks.iter().position(|b| b == old) else {
                return Err(ClusterError::NotFound(format!(
                    "brick {old} in volume {name}"
                )));
            };
            let m = index as u8;
            let mut checks = vec![(key.clone(), Some(vol_bytes))];
            let mut ops = Vec::new();
            let mut refused = Vec::new();
            for (k, bytes) in self.store.list(&format!("pgmaps/{name}/")).await? {
                let Some(pg) = k.rsplit('/').next().and_then(|p| p.parse::<u32>().ok()) else {
                    continue;
                };
                let map: PgMap = from_json(&k, &bytes)?;
                if !map.is_placed(m) {
                    continue;
                }
                match map.with_replaced(m) {
                    None => refused.push(format!("PG {pg}: {old} holds its only up-to-date copy")),
                    Some(next) if (next.up_to_date_count() as u32) < vol.min_size => {
                        refused.push(format!(
                            "PG {pg}: would keep {} up-to-date copies, below min_size {}",
                            next.up_to_date_count(),
                            vol.min_size
                        ))
                    }
                    Some(next) => ops.push(TxnOp::Put(k.clone(), to_json(&next))),
                }
                checks.push((k, Some(bytes)));
            }
            if !refused.is_empty() {
                refused.truncate(REFUSALS_LISTED_MAX);
                return Err(ClusterError::Invalid(format!(
                    "replacing {old} would lose data or writability: {}",
                    refused.join("; ")
                )));
            }
            if checks.len() > TXN_KEYS_MAX {
                return Err(ClusterError::Invalid(format!(
                    "replace-brick changes {} PG maps in one transaction; this build allows at \
                     most {} (fewer PGs per replica set)",
                    checks.len() - 1,
                    TXN_KEYS_MAX - 1
                )));
            }
            vol.bricks[index] = new.clone();
            vol.epoch += 1;
            ops.push(TxnOp::Put(key.clone(), to_json(&vol)));
            if self.store.txn(&checks, &ops).await? {
                return Ok(vol);
            }
        }
        Err(ClusterError::Contended)
    }

    /// Adds whole replica sets to a volume, in one transaction with PG 0's map (the namespace
    /// is on every brick: the new bricks join it fresh, and its heal gives them every name).
    /// Data PGs move to them with `rebalance`. Idempotent when `new` is already there.
    pub async fn add_bricks(&self, name: &str, new: &[BrickSpec]) -> ClusterResult<Volume> {
        let key = vol_key(name);
        for _ in 0..CAS_RETRIES_MAX {
            let Some(vol_bytes) = self.store.get(&key).await? else {
                return Err(ClusterError::NotFound(format!("volume {name}")));
            };
            let mut vol: Volume = from_json(&key, &vol_bytes)?;
            let serving = |b: &BrickSpec| {
                vol.bricks
                    .iter()
                    .position(|x| x == b)
                    .is_some_and(|i| !vol.is_removed_set(vol.set_of_brick(i)))
            };
            if !new.is_empty() && new.iter().all(serving) {
                return Ok(vol); // done by an earlier attempt
            }
            let r = vol.replica as usize;
            if new.is_empty() || !new.len().is_multiple_of(r) {
                return Err(ClusterError::Invalid(format!(
                    "{} bricks given; volume {name} (replica {r}) grows by whole replica sets of {r}",
                    new.len()
                )));
            }
            let reusable = vol.removed_sets.len() * r;
            if vol.bricks.len() + new.len().saturating_sub(reusable) > MEMBERS_MAX as usize {
                return Err(ClusterError::Invalid(format!(
                    "volume {name} would have {} bricks; at most {MEMBERS_MAX} in this build",
                    vol.bricks.len() + new.len()
                )));
            }
            for (i, b) in new.iter().enumerate() {
                if new[..i].contains(b) || vol.bricks.contains(b) {
                    return Err(ClusterError::Invalid(format!("brick {b} is listed twice")));
                }
            }
            for other in self.list_volumes().await? {
                if let Some(b) = other.bricks.iter().find(|b| new.contains(b)) {
                    return Err(ClusterError::Invalid(format!(
                        "brick {b} already belongs to volume {}",
                        other.name
                    )));
                }
            }
            // A set taken out earlier gives its places to a new one.
            let reuse = vol.removed_sets.first().copied().filter(|_| new.len() == r);
            let first = match reuse {
                Some(set) => {
                    let at = set as usize * r;
                    vol.bricks[at..at + r].clone_from_slice(new);
                    vol.removed_sets.retain(|&s| s != set);
                    at
                }
                None => {
                    let at = vol.bricks.len();
                    vol.bricks.extend(new.iter().cloned());
                    at
                }
            };
            vol.epoch += 1;
            let added = (first..first + new.len()).fold(0u8, |m, b| m | (1 << b));
            let mut checks = vec![(key.clone(), Some(vol_bytes))];
            let mut ops = vec![TxnOp::Put(key.clone(), to_json(&vol))];
            let ns_key = pg_key(name, 0);
            if let Some(bytes) = self.store.get(&ns_key).await? {
                let map: PgMap = from_json(&ns_key, &bytes)?;
                let next = map.with_added(added).ok_or_else(|| {
                    ClusterError::Invalid(format!("PG 0 of {name} cannot take bricks {added:#b}"))
                })?;
                checks.push((ns_key.clone(), Some(bytes)));
                ops.push(TxnOp::Put(ns_key, to_json(&next)));
            }
            if self.store.txn(&checks, &ops).await? {
                return Ok(vol);
            }
        }
        Err(ClusterError::Contended)
    }

    /// Takes replica set `set` out of a volume once no PG is on it any more: PG 0 leaves its
    /// bricks in the same transaction. Its bricks stay listed as taken out (members are bricks
    /// by position), until `add_bricks` puts a new set in their place.
    pub async fn remove_set(&self, name: &str, set: usize) -> ClusterResult<Volume> {
        let key = vol_key(name);
        for _ in 0..CAS_RETRIES_MAX {
            let Some(vol_bytes) = self.store.get(&key).await? else {
                return Err(ClusterError::NotFound(format!("volume {name}")));
            };
            let mut vol: Volume = from_json(&key, &vol_bytes)?;
            let mask = vol.set_mask(set);
            if mask == 0 || vol.live_sets().len() < 2 {
                return Err(ClusterError::Invalid(format!(
                    "replica set {set} of {name} cannot be taken out (it is the last, or out already)"
                )));
            }
            let mut checks = vec![(key.clone(), Some(vol_bytes))];
            let mut ops = Vec::new();
            let mut holding = Vec::new();
            for (k, bytes) in self.store.list(&format!("pgmaps/{name}/")).await? {
                let Some(pg) = k.rsplit('/').next().and_then(|p| p.parse::<u32>().ok()) else {
                    continue;
                };
                let map: PgMap = from_json(&k, &bytes)?;
                if map.placed & mask == 0 {
                    continue;
                }
                if pg != 0 {
                    holding.push(pg);
                    continue;
                }
                let next = map.with_removed(mask).ok_or_else(|| {
                    ClusterError::Invalid(format!(
                        "PG 0 (the namespace) of {name} is not up to date on the other bricks yet"
                    ))
                })?;
                checks.push((k.clone(), Some(bytes)));
                ops.push(TxnOp::Put(k, to_json(&next)));
            }
            if !holding.is_empty() {
                holding.truncate(REFUSALS_LISTED_MAX);
                return Err(ClusterError::Invalid(format!(
                    "replica set {set} of {name} still holds PGs {holding:?}; \
                     run remove-brick start and wait for status to say done"
                )));
            }
            // Listed still, so that its nodes free what it holds (PG 0 leaves it in this
            // transaction); `add_bricks` reuses its places.
            vol.removed_sets.push(set as u32);
            vol.removed_sets.sort_unstable();
            vol.epoch += 1;
            ops.push(TxnOp::Put(key.clone(), to_json(&vol)));
            if self.store.txn(&checks, &ops).await? {
                return Ok(vol);
            }
        }
        Err(ClusterError::Contended)
    }

    /// The volume's rebalance document and its stored bytes (for a compare-and-set).
    pub async fn rebalance(&self, name: &str) -> ClusterResult<Option<(RebalanceDoc, Vec<u8>)>> {
        let key = format!("rebalance/{name}");
        match self.store.get(&key).await? {
            Some(bytes) => Ok(Some((from_json(&key, &bytes)?, bytes))),
            None => Ok(None),
        }
    }

    /// Replaces the rebalance document if it is still `old` (`None`: there was none).
    pub async fn put_rebalance(
        &self,
        name: &str,
        old: Option<Vec<u8>>,
        doc: &RebalanceDoc,
    ) -> ClusterResult<bool> {
        let key = format!("rebalance/{name}");
        Ok(self
            .store
            .txn(&[(key.clone(), old)], &[TxnOp::Put(key, to_json(doc))])
            .await?)
    }

    pub async fn delete_volume(&self, name: &str) -> ClusterResult<()> {
        let vol = self.volume(name).await?;
        if vol.status == VolumeStatus::Started {
            return Err(ClusterError::Invalid(format!(
                "volume {name} is started; stop it first"
            )));
        }
        let key = vol_key(name);
        let old = to_json(&vol);
        if !self
            .store
            .txn(&[(key.clone(), Some(old))], &[TxnOp::Delete(key)])
            .await?
        {
            return Err(ClusterError::Contended);
        }
        Ok(())
    }

    pub async fn put_node(&self, node: &Node) -> ClusterResult<()> {
        validate_name("node", &node.name)?;
        self.store
            .txn(
                &[],
                &[TxnOp::Put(format!("nodes/{}", node.name), to_json(node))],
            )
            .await?;
        Ok(())
    }

    pub async fn list_nodes(&self) -> ClusterResult<Vec<Node>> {
        let mut out = Vec::new();
        for (k, v) in self.store.list("nodes/").await? {
            out.push(from_json(&k, &v)?);
        }
        Ok(out)
    }

    pub async fn remove_node(&self, name: &str) -> ClusterResult<()> {
        for v in self.list_volumes().await? {
            if v.bricks.iter().any(|b| b.node == name) {
                return Err(ClusterError::Invalid(format!(
                    "node {name} holds bricks of volume {}",
                    v.name
                )));
            }
        }
        let key = format!("nodes/{name}");
        if self.store.get(&key).await?.is_none() {
            return Err(ClusterError::NotFound(format!("node {name}")));
        }
        self.store.txn(&[], &[TxnOp::Delete(key)]).await?;
        Ok(())
    }

    /// Marks `node` alive for as long as this process runs (etcd: a lease of `ttl_ms`).
    pub async fn register_alive(&self, node: &str, ttl_ms: u64) -> ClusterResult<()> {
        validate_name("node", node)?;
        self.store
            .put_alive(&format!("alive/{node}"), node.as_bytes().to_vec(), ttl_ms)
            .await?;
        Ok(())
    }

    /// Names of the nodes whose liveness key is present.
    pub async fn alive_nodes(&self) -> ClusterResult<Vec<String>> {
        Ok(self
            .store
            .list("alive/")
            .await?
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix("alive/").map(str::to_string))
            .collect())
    }

    pub async fn watch(&self, prefix: &str) -> ClusterResult<tokio::sync::watch::Receiver<u64>> {
        Ok(self.store.watch(prefix).await?)
    }

    /// Creates the first map of every PG of a volume that has none yet: every member up to
    /// date, PGs on the sets of `Volume::initial_plan` (PG 0 on every brick), primaries spread
    /// over each set (`pg % R`). Idempotent, and the same plan from any node.
    pub async fn ensure_pg_maps(&self, vol: &Volume) -> ClusterResult<Vec<PgMap>> {
        let existing = self.pg_maps(vol).await?;
        let plan = vol.initial_plan();
        let mut out = Vec::with_capacity(vol.pg_count as usize);
        for pg in 0..vol.pg_count {
            if let Some(m) = existing.get(pg as usize).copied().flatten() {
                out.push(m);
                continue;
            }
            let map = vol.initial_map(pg, &plan);
            let key = pg_key(&vol.name, pg);
            let created = self
                .store
                .txn(
                    &[(key.clone(), None)],
                    &[TxnOp::Put(key.clone(), to_json(&map))],
                )
                .await?;
            if created {
                out.push(map);
            } else {
                let bytes = self.store.get(&key).await?.ok_or(ClusterError::Contended)?;
                out.push(from_json(&key, &bytes)?);
            }
        }
        Ok(out)
    }

    /// The map of every PG of a volume, by PG number (`None`: not created yet).
    pub async fn pg_maps(&self, vol: &Volume) -> ClusterResult<Vec<Option<PgMap>>> {
        let mut out = vec![None; vol.pg_count as usize];
        for (k, v) in self.store.list(&format!("pgmaps/{}/", vol.name)).await? {
            let Some(pg) = k.rsplit('/').next().and_then(|p| p.parse::<usize>().ok()) else {
                continue;
            };
            let map: PgMap = from_json(&k, &v)?;
            if !map.is_valid() || map.members as usize > vol.bricks.len() {
                return Err(StoreError::Corrupt(format!("{k}: invalid map {map:?}")).into());
            }
            if let Some(slot) = out.get_mut(pg) {
                *slot = Some(map);
            }
        }
        Ok(out)
    }

    /// Installs `next` as the map of one PG if the installed one is still `next.epoch - 1`
    /// (the epoch change is one etcd transaction). Returns the map installed afterwards and
    /// whether it is `next`.
    pub async fn propose_pg_map(
        &self,
        volume: &str,
        pg: u32,
        next: &PgMap,
    ) -> ClusterResult<(PgMap, bool)> {
        let key = pg_key(volume, pg);
        let Some(bytes) = self.store.get(&key).await? else {
            return Err(ClusterError::NotFound(format!(
                "map of pg {pg} of volume {volume}"
            )));
        };
        let current: PgMap = from_json(&key, &bytes)?;
        if current.epoch + 1 != next.epoch || !next.is_valid() {
            return Ok((current, false));
        }
        let ok = self
            .store
            .txn(
                &[(key.clone(), Some(bytes))],
                &[TxnOp::Put(key.clone(), to_json(next))],
            )
            .await?;
        if ok {
            return Ok((*next, true));
        }
        let bytes = self.store.get(&key).await?.ok_or(ClusterError::Contended)?;
        Ok((from_json(&key, &bytes)?, false))
    }

    /// The map of one PG (`None`: not created).
    pub async fn pg_map(&self, volume: &str, pg: u32) -> ClusterResult<Option<PgMap>> {
        let key = pg_key(volume, pg);
        match self.store.get(&key).await? {
            Some(bytes) => Ok(Some(from_json(&key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// The key nodes authenticate to each other with (user `@node`), created on first use.
    pub async fn node_key(&self) -> ClusterResult<[u8; 32]> {
        self.secret("secrets/node-key").await
    }

    /// The key user passwords are sealed under in the cluster state, created on first use.
    pub async fn seal_key(&self) -> ClusterResult<[u8; 32]> {
        self.secret("secrets/user-seal-key").await
    }

    /// A random 32-byte secret stored under `key`, created on first use.
    async fn secret(&self, key: &str) -> ClusterResult<[u8; 32]> {
        let key = key.to_string();
        if self.store.get(&key).await?.is_none() {
            let fresh: [u8; 32] = rand::random();
            // Loses to a concurrent creator; everybody then reads the winner's key.
            self.store
                .txn(
                    &[(key.clone(), None)],
                    &[TxnOp::Put(key.clone(), hex_encode(&fresh).into_bytes())],
                )
                .await?;
        }
        let bytes = self.store.get(&key).await?.ok_or(ClusterError::Contended)?;
        let decoded = std::str::from_utf8(&bytes)
            .ok()
            .and_then(hex_decode)
            .and_then(|v| <[u8; 32]>::try_from(v).ok());
        decoded.ok_or_else(|| StoreError::Corrupt(format!("{key}: not a 32-byte hex key")).into())
    }

    pub async fn delete_pg_maps(&self, vol: &Volume) -> ClusterResult<()> {
        for (k, _) in self.store.list(&format!("pgmaps/{}/", vol.name)).await? {
            self.store.txn(&[], &[TxnOp::Delete(k)]).await?;
        }
        Ok(())
    }

    pub async fn put_user(&self, user: &UserRecord) -> ClusterResult<()> {
        validate_name("user", &user.name)?;
        self.store
            .txn(
                &[],
                &[TxnOp::Put(format!("users/{}", user.name), to_json(user))],
            )
            .await?;
        Ok(())
    }

    /// Puts a new user; Exists if the name is taken, also by a concurrent creator.
    pub async fn create_user(&self, user: &UserRecord) -> ClusterResult<()> {
        validate_name("user", &user.name)?;
        let key = format!("users/{}", user.name);
        let created = self
            .store
            .txn(&[(key.clone(), None)], &[TxnOp::Put(key, to_json(user))])
            .await?;
        if !created {
            return Err(ClusterError::Exists(format!("user {}", user.name)));
        }
        Ok(())
    }

    /// Replaces an existing user's record with what `change` makes of it; NotFound if there is
    /// none (also if it is removed concurrently: a removed user is never brought back).
    pub async fn update_user(
        &self,
        name: &str,
        change: impl Fn(&UserRecord) -> UserRecord,
    ) -> ClusterResult<UserRecord> {
        let key = format!("users/{name}");
        for _ in 0..CAS_RETRIES_MAX {
            let Some(bytes) = self.store.get(&key).await? else {
                return Err(ClusterError::NotFound(format!("user {name}")));
            };
            let old: UserRecord = from_json(&key, &bytes)?;
            let new = change(&old);
            let check = (key.clone(), Some(bytes));
            if self
                .store
                .txn(&[check], &[TxnOp::Put(key.clone(), to_json(&new))])
                .await?
            {
                return Ok(new);
            }
        }
        Err(ClusterError::Contended)
    }

    pub async fn remove_user(&self, name: &str) -> ClusterResult<()> {
        if self.user(name).await?.is_none() {
            return Err(ClusterError::NotFound(format!("user {name}")));
        }
        self.store
            .txn(&[], &[TxnOp::Delete(format!("users/{name}"))])
            .await?;
        Ok(())
    }

    pub async fn user(&self, name: &str) -> ClusterResult<Option<UserRecord>> {
        let key = format!("users/{name}");
        match self.store.get(&key).await? {
            Some(b) => Ok(Some(from_json(&key, &b)?)),
            None => Ok(None),
        }
    }

    pub async fn list_users(&self) -> ClusterResult<Vec<UserRecord>> {
        let mut out = Vec::new();
        for (k, v) in self.store.list("users/").await? {
            out.push(from_json(&k, &v)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    fn bricks(n: usize) -> Vec<BrickSpec> {
        (0..n)
            .map(|i| BrickSpec::parse(&format!("n1:/b/{i}")).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn replace_brick_marks_the_member_fresh_in_one_step() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cluster::new(Arc::new(EmbeddedStore::open(dir.path()).unwrap()));
        let v = c.create_volume("v", 2, bricks(2), Some(4)).await.unwrap();
        c.ensure_pg_maps(&v).await.unwrap();
        let (old, new) = (&bricks(2)[1], BrickSpec::parse("n2:/b/new").unwrap());
        let missing = BrickSpec::parse("n9:/nowhere").unwrap();
        assert!(matches!(
            c.replace_brick("v", &missing, &new).await,
            Err(ClusterError::NotFound(_))
        ));
        let after = c.replace_brick("v", old, &new).await.unwrap();
        assert_eq!(after.bricks[1], new);
        assert_eq!(after.epoch, v.epoch + 1);
        for map in c.pg_maps(&after).await.unwrap().into_iter().flatten() {
            assert_eq!((map.epoch, map.up_to_date, map.fresh), (2, 0b01, 0b10));
        }
        let again = c.replace_brick("v", old, &new).await.unwrap();
        assert_eq!(
            again.epoch, after.epoch,
            "a repeated request changes nothing"
        );
        let err = c
            .replace_brick("v", &bricks(2)[0], &BrickSpec::parse("n3:/b/x").unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("only up-to-date copy"), "{err}");
    }

    #[tokio::test]
    async fn volumes_are_validated_created_and_updated() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cluster::new(Arc::new(EmbeddedStore::open(dir.path()).unwrap()));
        assert!(c.create_volume("v", 3, bricks(4), None).await.is_err());
        assert!(c
            .create_volume("bad name", 1, bricks(1), None)
            .await
            .is_err());
        let v = c.create_volume("v", 3, bricks(6), None).await.unwrap();
        assert_eq!(v.replica_sets().len(), 2);
        assert_eq!(v.min_size, 2);
        assert!(matches!(
            c.create_volume("v", 3, bricks(3), None).await,
            Err(ClusterError::Exists(_))
        ));
        assert!(
            c.create_volume("w", 1, bricks(1), None).await.is_err(),
            "brick reuse must be refused"
        );
        let w = c
            .create_volume("w", 1, vec![BrickSpec::parse("n1:/other").unwrap()], None)
            .await
            .unwrap();
        assert_ne!(w.id, v.id);
        let v2 = c
            .update_volume("v", |v| {
                v.status = VolumeStatus::Started;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(v2.epoch, v.epoch + 1);
        assert!(
            c.delete_volume("v").await.is_err(),
            "started volumes are not deleted"
        );
        assert!(validate_option("io.mode", "sideways").is_err());
        assert!(validate_option("nope", "1").is_err());
    }

    #[test]
    fn share_access_options_are_checked_and_listed() {
        assert!(validate_option("access.alice", "ro").is_ok());
        assert!(validate_option("access.alice", "none").is_ok());
        assert!(validate_option("access.alice", "admin").is_err());
        assert!(validate_option("access.@node", "rw").is_err());
        assert!(validate_option("access.", "rw").is_err());
        assert!(validate_option("smb.encrypt", "on").is_ok());
        assert!(validate_option("smb.leases", "maybe").is_err());
        let mut v = Volume {
            id: 1,
            name: "v".into(),
            replica: 1,
            min_size: 1,
            pg_count: 1,
            bricks: bricks(1),
            status: VolumeStatus::Created,
            epoch: 1,
            options: BTreeMap::new(),
            removed_sets: Vec::new(),
        };
        v.options.insert("access.alice".into(), "ro".into());
        v.options.insert("access.bob".into(), "rw".into());
        v.options.insert("io.mode".into(), "auto".into());
        assert_eq!(
            v.share_access(),
            vec![
                ("alice".to_string(), ShareAccess::Ro),
                ("bob".to_string(), ShareAccess::Rw)
            ]
        );
        assert_eq!(v.option("smb.leases"), "off");
    }

    #[tokio::test]
    async fn users_are_removed_and_secrets_kept() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cluster::new(Arc::new(EmbeddedStore::open(dir.path()).unwrap()));
        let seal = c.seal_key().await.unwrap();
        assert_eq!(c.seal_key().await.unwrap(), seal, "created once, then kept");
        assert_ne!(c.node_key().await.unwrap(), seal);
        let u = UserRecord {
            name: "alice".into(),
            key_hex: "00".repeat(32),
            admin: false,
            password_sealed_hex: Some("ab".into()),
        };
        c.create_user(&u).await.unwrap();
        assert!(matches!(
            c.create_user(&u).await,
            Err(ClusterError::Exists(_))
        ));
        assert_eq!(c.user("alice").await.unwrap(), Some(u.clone()));
        let promoted = c
            .update_user("alice", |old| UserRecord {
                admin: true,
                ..old.clone()
            })
            .await
            .unwrap();
        assert!(promoted.admin);
        c.remove_user("alice").await.unwrap();
        assert!(matches!(
            c.update_user("alice", |old| old.clone()).await,
            Err(ClusterError::NotFound(_))
        ));
        assert_eq!(c.user("alice").await.unwrap(), None);
        assert!(matches!(
            c.remove_user("alice").await,
            Err(ClusterError::NotFound(_))
        ));
    }

    #[test]
    fn brick_specs_parse() {
        assert!(BrickSpec::parse("node1:/data/b1").is_ok());
        assert!(BrickSpec::parse("node1:relative").is_err());
        assert!(BrickSpec::parse("nocolon").is_err());
    }
}
