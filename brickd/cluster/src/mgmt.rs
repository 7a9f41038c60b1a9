//! Management requests and their replies: JSON documents carried in MGMT frames (docs/wire.md
//! §7). Not on the data path, so readability wins over compactness here.
//!
//! Each op has a request struct (what its `MgmtOp` variant carries) and a reply type, tied
//! together by `MgmtCall`: brickd serializes exactly that type and every caller (CLI, client
//! library, gateways, benches, tests) deserializes exactly that type. Replies deny unknown
//! fields and have no defaults, so a field renamed or dropped on one side fails loudly on the
//! other, naming the op and the field, instead of silently reading as zero. Optional reply
//! fields are `Option`s.

use crate::model::{ShareAccess, VolumeStatus as VolumeState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A management request with its reply type.
pub trait MgmtCall: Clone + Into<MgmtOp> {
    /// The request's `op` tag on the wire.
    const OP: &'static str;
    type Reply: Serialize + DeserializeOwned;
}

/// Every management request, as the wire carries it: `{"op": "volume_create", ...fields}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MgmtOp {
    VolumeCreate(VolumeCreate),
    VolumeStart(VolumeStart),
    VolumeStop(VolumeStop),
    VolumeDelete(VolumeDelete),
    VolumeInfo(VolumeInfo),
    VolumeStatus(VolumeStatus),
    VolumeList(VolumeList),
    VolumeSet(VolumeSet),
    VolumeReplaceBrick(VolumeReplaceBrick),
    VolumeAddBrick(VolumeAddBrick),
    VolumeRemoveBrick(VolumeRemoveBrick),
    VolumeRebalance(VolumeRebalance),
    PgUsage(PgUsage),
    PgDigest(PgDigest),
    PeerAdd(PeerAdd),
    PeerList(PeerList),
    PeerRemove(PeerRemove),
    VolumeOpen(VolumeOpen),
    HealLocal(HealLocal),
    NodeCanStop(NodeCanStop),
    UserAdd(UserAdd),
    UserPasswd(UserPasswd),
    UserRemove(UserRemove),
    UserList(UserList),
    ShareUsers(ShareUsers),
}

/// Ties each request to its `MgmtOp` variant, its `op` tag and its reply type. The tags are
/// spelled out because serde derives them from the variant names; a test checks they agree.
macro_rules! mgmt_calls {
    ($($req:ident => $op:literal, $reply:ty;)*) => {
        $(
            impl MgmtCall for $req {
                const OP: &'static str = $op;
                type Reply = $reply;
            }

            impl From<$req> for MgmtOp {
                fn from(req: $req) -> MgmtOp {
                    MgmtOp::$req(req)
                }
            }
        )*

        impl MgmtOp {
            /// The `op` tag, for messages about this request.
            pub fn name(&self) -> &'static str {
                match self {
                    $(MgmtOp::$req(_) => $op,)*
                }
            }
        }
    };
}

mgmt_calls! {
    VolumeCreate => "volume_create", VolumeConfig;
    VolumeStart => "volume_start", VolumeConfig;
    VolumeStop => "volume_stop", VolumeConfig;
    VolumeDelete => "volume_delete", VolumeDeleted;
    VolumeInfo => "volume_info", VolumeDetail;
    VolumeStatus => "volume_status", VolumeStatusReply;
    VolumeList => "volume_list", Volumes;
    VolumeSet => "volume_set", VolumeConfig;
    VolumeReplaceBrick => "volume_replace_brick", BrickReplaced;
    VolumeAddBrick => "volume_add_brick", VolumeConfig;
    VolumeRemoveBrick => "volume_remove_brick", RebalanceStatus;
    VolumeRebalance => "volume_rebalance", RebalanceStatus;
    PgUsage => "pg_usage", PgUsageReply;
    PgDigest => "pg_digest", PgDigestReply;
    PeerAdd => "peer_add", PeerAdded;
    PeerList => "peer_list", Peers;
    PeerRemove => "peer_remove", PeerRemoved;
    VolumeOpen => "volume_open", VolumeHandle;
    HealLocal => "heal_local", HealLocalReply;
    NodeCanStop => "node_can_stop", CanStop;
    UserAdd => "user_add", UserAdded;
    UserPasswd => "user_passwd", PasswordChanged;
    UserRemove => "user_remove", UserRemoved;
    UserList => "user_list", Users;
    ShareUsers => "share_users", ShareSettings;
}

impl MgmtOp {
    /// Parses a request document. The error names the op when the document has one, so a
    /// misspelled field reads as "management request volume_create: unknown field `pgs`".
    pub fn parse(doc: &[u8]) -> Result<MgmtOp, String> {
        serde_json::from_slice(doc).map_err(|e| {
            #[derive(Deserialize)]
            struct Tag {
                op: String,
            }
            match serde_json::from_slice::<Tag>(doc) {
                Ok(t) => format!("management request {}: {e}", t.op),
                Err(_) => format!("management request: {e}"),
            }
        })
    }

    pub fn encode(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(self)
            .map_err(|e| format!("encoding management request {}: {e}", self.name()))
    }
}

/// The reply document to a `C` request.
pub fn encode_reply<C: MgmtCall>(reply: &C::Reply) -> Result<Vec<u8>, String> {
    serde_json::to_vec(reply).map_err(|e| format!("encoding the reply to {}: {e}", C::OP))
}

/// Parses the reply to a `C` request; the error names the op and, from serde, the field.
pub fn decode_reply<C: MgmtCall>(doc: &[u8]) -> Result<C::Reply, String> {
    serde_json::from_slice(doc).map_err(|e| format!("management reply to {}: {e}", C::OP))
}

// ---- Requests ----------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreate {
    pub name: String,
    pub replica: u32,
    /// NODE:DIR, replica set by replica set.
    pub bricks: Vec<String>,
    /// Placement groups; the default when absent.
    #[serde(default)]
    pub pg_count: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeStart {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeStop {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeDelete {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeInfo {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeStatus {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeList {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSet {
    pub name: String,
    pub key: String,
    pub value: String,
}

/// Puts the empty brick `new` (NODE:DIR) in the place of `old`; it gets a full heal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeReplaceBrick {
    pub name: String,
    pub old: String,
    pub new: String,
}

/// Adds whole replica sets (NODE:DIR, set by set) to a volume; `volume_rebalance start`
/// then moves their share of the PGs to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeAddBrick {
    pub name: String,
    pub bricks: Vec<String>,
}

/// `start` drains the replica set of `bricks` (its PGs move to the other sets), `status`
/// and `stop` follow or stop that, `commit` takes the set out of the volume once it holds
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRemoveBrick {
    pub name: String,
    pub bricks: Vec<String>,
    pub action: String,
}

/// `start`, `stop` or `status` of the volume's rebalance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRebalance {
    pub name: String,
    pub action: String,
}

/// Node-internal (admin or node): the files and bytes of one PG on one local brick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgUsage {
    pub volume: String,
    pub pg: u32,
    /// The brick's member index (its position in the volume).
    pub member: u8,
}

/// Node-internal (admin or node): a digest of one PG's files (ids, sizes, crc32c of the
/// contents) on one local brick, leaving out files modified less than `skip_recent_ms` ago.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgDigest {
    pub volume: String,
    pub pg: u32,
    pub member: u8,
    pub skip_recent_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerAdd {
    pub name: String,
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerList {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRemove {
    pub name: String,
}

/// Resolves a volume name to the id data requests carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeOpen {
    pub name: String,
}

/// What this node knows of a volume's heal: the PGs with members behind (cluster state)
/// and the progress of the heals this node runs. `brick heal status` asks every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealLocal {
    pub name: String,
}

/// Whether stopping a node keeps every PG writable and every acknowledged write on an
/// up-to-date copy elsewhere (from the cluster state's maps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeCanStop {
    pub node: String,
}

/// Adds a user. The password travels sealed (`auth::seal`, purpose `SEAL_IN_TRANSIT`)
/// under the password key of the admin sending the request, in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserAdd {
    pub name: String,
    pub password_sealed_hex: String,
    #[serde(default)]
    pub admin: bool,
}

/// Sets a user's password (sealed as for `UserAdd`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPasswd {
    pub name: String,
    pub password_sealed_hex: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRemove {
    pub name: String,
}

/// Every user with the volumes they have access to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserList {}

/// The users with access to VOLUME's share, with their passwords sealed under the password
/// key of the admin asking (for SMB gateways, which need them for NTLMv2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareUsers {
    pub volume: String,
}

// ---- Replies: volumes --------------------------------------------------------------------

/// A volume's configuration: the reply to `volume_create`, `volume_start`, `volume_stop` and
/// `volume_set`, and the first part of `volume_info`'s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub name: String,
    pub id: u32,
    pub status: VolumeState,
    pub replica: u32,
    pub min_size: u32,
    pub pg_count: u32,
    pub epoch: u64,
    /// Bricks (NODE:DIR), replica set by replica set.
    pub replica_sets: Vec<Vec<String>>,
    pub copies_stored: u32,
    /// How the volume's copies are kept, in words.
    pub replication: String,
    /// Every option `volume set` takes, with its current value.
    pub options: BTreeMap<String, String>,
    /// The cluster store the node runs on.
    pub store: String,
}

/// One PG as `volume info` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgSummary {
    pub pg: u32,
    /// The map's epoch; None while the PG has no map yet (a volume never started).
    pub epoch: Option<u64>,
    /// The primary's brick; None without a map or without an up-to-date member.
    pub primary: Option<String>,
    /// The up-to-date bricks, in member order.
    pub up_to_date: Vec<String>,
    pub writable: bool,
}

/// Reply to `volume_info`: the configuration and every PG.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeDetail {
    #[serde(flatten)]
    pub volume: VolumeConfig,
    pub pgs: Vec<PgSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplacedBrick {
    pub old: String,
    pub new: String,
}

/// Reply to `volume_replace_brick`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrickReplaced {
    #[serde(flatten)]
    pub volume: VolumeConfig,
    pub replaced: ReplacedBrick,
    pub pgs: Vec<PgSummary>,
}

/// Reply to `pg_usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgUsageReply {
    pub files: u64,
    pub bytes: u64,
    /// The brick's file system: its size in bytes, and what is free.
    pub capacity_bytes: u64,
    pub free_bytes: u64,
}

/// Reply to `pg_digest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgDigestReply {
    pub files: u64,
    pub bytes: u64,
    /// crc32c over (id, size, crc32c of the contents) of every file, in id order.
    pub digest: u32,
    /// Files left out as modified too recently.
    pub skipped: u64,
}

/// One PG being moved by a rebalance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgMove {
    pub pg: u32,
    pub from: Vec<String>,
    pub to: Vec<String>,
    /// "copying" (the new bricks are healed), "verifying", "committing".
    pub phase: String,
    pub files: u64,
    pub bytes: u64,
}

/// Reply to `volume_rebalance` and `volume_remove_brick`: where the volume's rebalance is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebalanceStatus {
    pub volume: String,
    /// "idle", "running", "done", "stopped", "failed".
    pub state: String,
    /// The bricks being drained (remove-brick), empty for a rebalance.
    pub removing: Vec<String>,
    pub pgs_to_move: u64,
    pub pgs_moved: u64,
    pub files_left: u64,
    pub bytes_left: u64,
    pub files_moved: u64,
    pub bytes_moved: u64,
    pub rate_bytes_s: u64,
    pub eta_s: Option<u64>,
    pub elapsed_ms: u64,
    /// Files found still changing when their PG was verified (left to the replication that
    /// keeps both copies equal) over the whole run.
    pub verified_in_flux: u64,
    pub moving: Vec<PgMove>,
    pub error: Option<String>,
    pub note: String,
}

/// Reply to `volume_delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeDeleted {
    pub deleted: String,
    pub note: String,
}

/// One brick in the reply to `volume_status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrickStatus {
    pub brick: String,
    pub member: u32,
    pub online: bool,
    pub primary_of_pgs: u32,
    pub up_to_date_in_pgs: u32,
    /// Space and index size are known only for bricks on the node answering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avail_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_indexed: Option<u64>,
}

/// Reply to `volume_status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeStatusReply {
    pub name: String,
    pub status: VolumeState,
    pub epoch: u64,
    pub pg_count: u32,
    pub bricks: Vec<BrickStatus>,
}

/// One volume in the reply to `volume_list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeListEntry {
    pub name: String,
    pub id: u32,
    pub replica: u32,
    pub status: VolumeState,
    /// How many bricks the volume has.
    pub bricks: u32,
}

/// Reply to `volume_list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volumes {
    pub volumes: Vec<VolumeListEntry>,
}

/// Reply to `volume_open`: what a client needs to send each request to its PG's primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeHandle {
    pub id: u32,
    pub name: String,
    pub pg_count: u32,
    pub epoch: u64,
    /// The volume's bricks, by member index (a brick's position in the volume).
    pub members: Vec<MemberRoute>,
    /// Every PG's map, by PG number.
    pub pg_maps: Vec<crate::PgMap>,
    /// Bricks per replica set (0 from an older node: one set).
    #[serde(default)]
    pub replica: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRoute {
    pub node: String,
    /// The node's dataplane address (core 0; the handshake names the other cores).
    pub addr: String,
}

// ---- Replies: peers ----------------------------------------------------------------------

/// Reply to `peer_add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerAdded {
    pub added: String,
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub name: String,
    pub addr: String,
    /// The node answering.
    #[serde(rename = "self")]
    pub is_self: bool,
    /// Its liveness lease is current.
    pub alive: bool,
}

/// Reply to `peer_list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peers {
    pub store: String,
    pub peers: Vec<Peer>,
}

/// Reply to `peer_remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRemoved {
    pub removed: String,
}

// ---- Replies: heal and node questions ----------------------------------------------------

/// A PG with members behind, from the cluster state's map. Members are indexes into the
/// replica set (`HealLocalReply::bricks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgBehind {
    pub pg: u32,
    pub epoch: u64,
    pub primary: Option<u8>,
    pub healing: Vec<u8>,
    pub absent: Vec<u8>,
}

/// One file a heal target still misses bytes of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealFileReport {
    /// The file id in hex (`0x...`).
    pub fid: String,
    pub path: String,
    pub bytes_left: u64,
    pub bytes_copied: u64,
}

/// One member a PG's primary heals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealTargetReport {
    pub member: u8,
    /// "absent" (not back yet) or "healing".
    pub state: String,
    pub bytes_left: u64,
    pub bytes_copied: u64,
    pub rate_bytes_s: u64,
    pub namespace_pending: bool,
    pub error: Option<String>,
    /// The files with the most bytes left.
    pub files: Vec<HealFileReport>,
}

/// A PG's heal progress as its primary (on the node answering) last published it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgHealReport {
    pub pg: u32,
    pub epoch: u64,
    pub source_member: u8,
    /// Bytes this primary's heals copied since its process started, finished heals included.
    pub copied_total_bytes: u64,
    pub targets: Vec<HealTargetReport>,
}

/// Reply to `heal_local`: one node's part of `brick heal status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealLocalReply {
    pub node: String,
    pub volume: String,
    /// The replica set's bricks, by member index.
    pub bricks: Vec<String>,
    pub pg_count: u32,
    pub behind: Vec<PgBehind>,
    pub reports: Vec<PgHealReport>,
    /// This node's bricks of the volume whose disk fails (out of their PGs until a probe
    /// passes). Absent from nodes of an older build.
    #[serde(default)]
    pub failing_disks: Vec<FailingDiskReport>,
}

/// A brick whose disk failed an operation: its members left their PGs and are not healed
/// back until a probe of the disk (write, fdatasync, read back) passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailingDiskReport {
    pub brick: String,
    pub error: String,
    pub failing_s: u64,
    pub failures: u64,
}

/// A PG that stopping the node would leave without an up-to-date copy or below `min_size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanStopReason {
    pub volume: String,
    pub pg: u32,
    pub reason: String,
    pub up_to_date: Vec<String>,
    pub healing: Vec<String>,
}

/// Reply to `node_can_stop`, and what `brick node can-stop --json` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanStop {
    pub node: String,
    pub can_stop: bool,
    /// Every PG in the way (`reasons` lists the first of them).
    pub blocked_pgs: u64,
    pub reasons: Vec<CanStopReason>,
}

// ---- Replies: users ----------------------------------------------------------------------

/// Reply to `user_add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserAdded {
    pub added: String,
    pub admin: bool,
}

/// Reply to `user_passwd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChanged {
    pub changed: String,
}

/// Reply to `user_remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRemoved {
    pub removed: String,
}

/// One user in the reply to `user_list` (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub name: String,
    pub admin: bool,
    /// A password is kept for SMB logins.
    pub smb: bool,
    /// The volumes whose share the user may use, with the access.
    pub access: BTreeMap<String, ShareAccess>,
}

/// Reply to `user_list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Users {
    pub users: Vec<UserEntry>,
}

/// One entry of the reply to `share_users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareUser {
    pub name: String,
    pub access: ShareAccess,
    pub password_sealed_hex: String,
}

/// Reply to `share_users`: what an SMB gateway needs to serve the volume's share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareSettings {
    pub users: Vec<ShareUser>,
    /// Volume option `smb.encrypt`: every tree connect to the share must be encrypted.
    pub encrypt: bool,
    /// Volume option `smb.leases`: grant leases and durable handles. Only safe while this
    /// gateway is the only way the volume is written (docs/smb.md).
    pub leases: bool,
}

#[cfg(test)]
mod tests;
