//! Management requests: JSON documents carried in MGMT frames (docs/wire.md). Not on the data
//! path, so readability wins over compactness here.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MgmtOp {
    VolumeCreate {
        name: String,
        replica: u32,
        bricks: Vec<String>,
        #[serde(default)]
        pg_count: Option<u32>,
    },
    VolumeStart {
        name: String,
    },
    VolumeStop {
        name: String,
    },
    VolumeDelete {
        name: String,
    },
    VolumeInfo {
        name: String,
    },
    VolumeStatus {
        name: String,
    },
    VolumeList,
    VolumeSet {
        name: String,
        key: String,
        value: String,
    },
    /// Puts the empty brick `new` (NODE:DIR) in the place of `old`; it gets a full heal.
    VolumeReplaceBrick {
        name: String,
        old: String,
        new: String,
    },
    PeerAdd {
        name: String,
        addr: String,
    },
    PeerList,
    PeerRemove {
        name: String,
    },
    /// Resolves a volume name to the id data requests carry.
    VolumeOpen {
        name: String,
    },
    /// What this node knows of a volume's heal: the PGs with members behind (cluster state)
    /// and the progress of the heals this node runs. `brick heal status` asks every node.
    HealLocal {
        name: String,
    },
    /// Whether stopping a node keeps every PG writable and every acknowledged write on an
    /// up-to-date copy elsewhere (from the cluster state's maps).
    NodeCanStop {
        node: String,
    },
    /// Adds a user. The password travels sealed (`auth::seal`, purpose `SEAL_IN_TRANSIT`)
    /// under the password key of the admin sending the request, in hex.
    UserAdd {
        name: String,
        password_sealed_hex: String,
        #[serde(default)]
        admin: bool,
    },
    /// Sets a user's password (sealed as for `UserAdd`).
    UserPasswd {
        name: String,
        password_sealed_hex: String,
    },
    UserRemove {
        name: String,
    },
    /// Every user with the volumes they have access to.
    UserList,
    /// The users with access to VOLUME's share, with their passwords sealed under the password
    /// key of the admin asking (for SMB gateways, which need them for NTLMv2).
    ShareUsers {
        volume: String,
    },
}

/// One entry of the reply to `ShareUsers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareUser {
    pub name: String,
    pub access: crate::ShareAccess,
    pub password_sealed_hex: String,
}

/// Reply to `ShareUsers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareUsers {
    pub users: Vec<ShareUser>,
    /// Volume option `smb.encrypt`: every tree connect to the share must be encrypted.
    pub encrypt: bool,
    /// Volume option `smb.leases`: grant leases and durable handles. Only safe while this
    /// gateway is the only way the volume is written (docs/smb.md).
    #[serde(default)]
    pub leases: bool,
}

/// Reply to `VolumeOpen`: what a client needs to send each request to its PG's primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeHandle {
    pub id: u32,
    pub name: String,
    pub pg_count: u32,
    pub epoch: u64,
    /// The replica set's members, by member index.
    #[serde(default)]
    pub members: Vec<MemberRoute>,
    /// Every PG's map, by PG number.
    #[serde(default)]
    pub pg_maps: Vec<crate::PgMap>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRoute {
    pub node: String,
    /// The node's dataplane address (core 0; the handshake names the other cores).
    pub addr: String,
}
