//! Documents the `brick` CLI computes itself and prints with `--json` (the replies it prints
//! as they come are in `mgmt`). They live here, beside the replies they are built from, so
//! tests and benchmarks read the CLI's output into the same types the CLI writes it from.
//! As for replies: unknown fields are errors, missing ones too unless they are `Option`s.
//! Field names are an interface (../shared/BRIEF.md, bench/*.sh): add fields, never rename.

use crate::mgmt::{FailingDiskReport, HealTargetReport};
use brick_wire::{Attr, FileKind};
use serde::{Deserialize, Serialize};

/// `brick heal status VOLUME --json`: every node's `heal_local` part merged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealStatus {
    pub volume: String,
    /// No PG has a member behind (then `bytes_left` is 0).
    pub healed: bool,
    /// Since each primary started: what heals copied in all, finished ones included.
    pub copied_total_bytes: u64,
    pub bytes_left: u64,
    pub bytes_copied: u64,
    pub rate_bytes_s: u64,
    /// None while nothing is being copied.
    pub eta_s: Option<u64>,
    pub pgs_behind: u64,
    pub pgs: Vec<HealPgStatus>,
    pub unreachable_nodes: Vec<UnreachableNode>,
    /// Bricks whose disk fails: out of their PGs, healed back once their disk works.
    #[serde(default)]
    pub failing_disks: Vec<FailingDiskReport>,
}

/// A PG with members behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealPgStatus {
    pub pg: u32,
    pub epoch: u64,
    /// The brick copying; None while the primary has not reported.
    pub source: Option<String>,
    /// The PG's primary answered with its heal progress (false: node down?).
    pub reported: bool,
    pub healing: Vec<String>,
    pub absent: Vec<String>,
    pub targets: Vec<HealTargetStatus>,
}

/// A heal target as its primary reported it, with its brick's name and an ETA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealTargetStatus {
    #[serde(flatten)]
    pub report: HealTargetReport,
    pub brick: String,
    /// None while nothing is being copied to it.
    pub eta_s: Option<u64>,
}

/// A node that did not answer `heal_local`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnreachableNode {
    pub node: String,
    pub error: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttrKind {
    File,
    Dir,
    Symlink,
}

impl From<FileKind> for AttrKind {
    fn from(k: FileKind) -> AttrKind {
        match k {
            FileKind::File => AttrKind::File,
            FileKind::Dir => AttrKind::Dir,
            FileKind::Symlink => AttrKind::Symlink,
        }
    }
}

/// `brick stat --json`, and a file's attributes in the other file commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAttrs {
    /// The file id in hex (`0x` and 16 digits).
    pub fid: String,
    /// The placement group: `volume info` names its primary and members.
    pub pg: u32,
    pub kind: AttrKind,
    /// Permission bits in octal.
    pub mode: String,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub used_bytes: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
}

impl From<&Attr> for FileAttrs {
    fn from(a: &Attr) -> FileAttrs {
        FileAttrs {
            fid: format!("{:#018x}", a.fid),
            pg: brick_wire::pg_of(a.fid),
            kind: a.kind.into(),
            mode: format!("{:o}", a.mode & 0o7777),
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            used_bytes: a.used_bytes,
            mtime: a.mtime.sec,
            mtime_nsec: a.mtime.nsec,
        }
    }
}

/// One entry of `brick ls --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListEntry {
    pub name: String,
    #[serde(flatten)]
    pub attr: FileAttrs,
}

/// `brick ls VOLUME/PATH --json`: a directory's entries by name, or the one file named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listing {
    pub path: String,
    pub entries: Vec<ListEntry>,
}

/// `brick put LOCAL VOLUME/PATH --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutSummary {
    /// VOLUME/PATH written.
    pub put: String,
    pub bytes: u64,
    pub attr: FileAttrs,
}

/// `brick get VOLUME/PATH LOCAL --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetSummary {
    /// VOLUME/PATH read.
    pub get: String,
    pub bytes: u64,
    pub local: String,
}

/// `brick rm VOLUME/PATH --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmSummary {
    pub removed: String,
    /// Files and directories removed, the one named included.
    pub entries: u64,
}

/// `brick mkdir VOLUME/PATH --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MkdirSummary {
    pub created: String,
    pub attr: FileAttrs,
}

/// What any `brick ... --json` prints on stdout when it fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorReport {
    pub error: String,
}
