//! Request and reply payloads. Requests borrow from the frame payload (no copy of write data).

use crate::codec::{Dec, DecodeError, Enc};
use brick_tuning::{IO_BYTES_MAX, MGMT_DOC_BYTES_MAX, READDIR_ENTRIES_MAX};

pub type FileId = u64;
pub type VolumeId = u32;

/// The root directory of every volume.
pub const ROOT_FILE_ID: FileId = 1;

/// Bits of a file id below its placement group number: a file id is `pg << 48 | random`.
pub const FID_PG_SHIFT: u32 = 48;

/// The placement group a file id belongs to (fixed when the id is minted).
pub fn pg_of(fid: FileId) -> u32 {
    (fid >> FID_PG_SHIFT) as u32
}

/// The core (shard) that owns a file id's placement group on a node with `cores` cores.
pub fn core_of(fid: FileId, cores: usize) -> usize {
    pg_of(fid) as usize % cores.max(1)
}

pub mod op {
    pub const HELLO: u16 = 0x0001;
    pub const AUTH: u16 = 0x0002;
    pub const MGMT: u16 = 0x0010;
    pub const LOOKUP: u16 = 0x0100;
    pub const GETATTR: u16 = 0x0101;
    pub const SETATTR: u16 = 0x0102;
    pub const CREATE: u16 = 0x0103;
    pub const MKDIR: u16 = 0x0104;
    pub const UNLINK: u16 = 0x0105;
    pub const RMDIR: u16 = 0x0106;
    pub const RENAME: u16 = 0x0107;
    pub const READDIR: u16 = 0x0108;
    pub const READ: u16 = 0x0109;
    pub const WRITE: u16 = 0x010A;
    pub const FSYNC: u16 = 0x010B;
    pub const SYMLINK: u16 = 0x010C;
    pub const READLINK: u16 = 0x010D;
    pub const STATFS: u16 = 0x010E;
    /// Replication traffic between nodes (docs/replication.md); only nodes may send it.
    pub const REPL: u16 = 0x0200;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FileKind {
    File = 1,
    Dir = 2,
    Symlink = 3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub fid: FileId,
    pub kind: FileKind,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub used_bytes: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    /// Birth time, from the primary's brick; where its filesystem keeps none, the earlier of
    /// mtime and ctime. Not replicated: a copy made by a heal is born at the heal.
    pub btime: Time,
}

/// How SETATTR changes a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    Keep,
    Now,
    To(Time),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: TimeSet,
    pub mtime: TimeSet,
}

impl SetAttr {
    pub const NONE: SetAttr = SetAttr {
        mode: None,
        uid: None,
        gid: None,
        size: None,
        atime: TimeSet::Keep,
        mtime: TimeSet::Keep,
    };
}

/// WRITE flag: the data must be durable before the reply (forced unit access).
pub const WRITE_FLAG_FUA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    Hello {
        version_min: u8,
        version_max: u8,
        user: &'a str,
        client_nonce: [u8; 16],
    },
    Auth {
        proof: [u8; 32],
    },
    Mgmt {
        doc: &'a [u8],
    },
    Lookup {
        vol: VolumeId,
        parent: FileId,
        name: &'a str,
    },
    GetAttr {
        vol: VolumeId,
        fid: FileId,
    },
    SetAttr {
        vol: VolumeId,
        fid: FileId,
        attr: SetAttr,
    },
    Create {
        vol: VolumeId,
        parent: FileId,
        name: &'a str,
        mode: u32,
        exclusive: bool,
    },
    Mkdir {
        vol: VolumeId,
        parent: FileId,
        name: &'a str,
        mode: u32,
    },
    Unlink {
        vol: VolumeId,
        parent: FileId,
        name: &'a str,
    },
    Rmdir {
        vol: VolumeId,
        parent: FileId,
        name: &'a str,
    },
    Rename {
        vol: VolumeId,
        src_parent: FileId,
        src_name: &'a str,
        dst_parent: FileId,
        dst_name: &'a str,
        /// `RENAME_NOREPLACE`: fail with Exists instead of replacing an existing target.
        flags: u8,
    },
    ReadDir {
        vol: VolumeId,
        fid: FileId,
        cookie: u64,
        max_entries: u32,
    },
    Read {
        vol: VolumeId,
        fid: FileId,
        offset: u64,
        len: u32,
    },
    Write {
        vol: VolumeId,
        fid: FileId,
        offset: u64,
        flags: u32,
        data: &'a [u8],
    },
    Fsync {
        vol: VolumeId,
        fid: FileId,
    },
    Symlink {
        vol: VolumeId,
        parent: FileId,
        name: &'a str,
        target: &'a str,
    },
    Readlink {
        vol: VolumeId,
        fid: FileId,
    },
    Statfs {
        vol: VolumeId,
        /// The brick (member index) to report on; `None`: the PG 0 primary's brick.
        member: Option<u8>,
    },
}

impl<'a> Request<'a> {
    pub fn opcode(&self) -> u16 {
        match self {
            Request::Hello { .. } => op::HELLO,
            Request::Auth { .. } => op::AUTH,
            Request::Mgmt { .. } => op::MGMT,
            Request::Lookup { .. } => op::LOOKUP,
            Request::GetAttr { .. } => op::GETATTR,
            Request::SetAttr { .. } => op::SETATTR,
            Request::Create { .. } => op::CREATE,
            Request::Mkdir { .. } => op::MKDIR,
            Request::Unlink { .. } => op::UNLINK,
            Request::Rmdir { .. } => op::RMDIR,
            Request::Rename { .. } => op::RENAME,
            Request::ReadDir { .. } => op::READDIR,
            Request::Read { .. } => op::READ,
            Request::Write { .. } => op::WRITE,
            Request::Fsync { .. } => op::FSYNC,
            Request::Symlink { .. } => op::SYMLINK,
            Request::Readlink { .. } => op::READLINK,
            Request::Statfs { .. } => op::STATFS,
        }
    }

    /// The file whose placement group decides which core serves the request, if any.
    /// Name-based operations route by their parent directory.
    pub fn routing_fid(&self) -> Option<FileId> {
        match *self {
            Request::Lookup { parent, .. }
            | Request::Create { parent, .. }
            | Request::Mkdir { parent, .. }
            | Request::Unlink { parent, .. }
            | Request::Rmdir { parent, .. }
            | Request::Symlink { parent, .. } => Some(parent),
            Request::Rename { src_parent, .. } => Some(src_parent),
            Request::GetAttr { fid, .. }
            | Request::SetAttr { fid, .. }
            | Request::ReadDir { fid, .. }
            | Request::Read { fid, .. }
            | Request::Write { fid, .. }
            | Request::Fsync { fid, .. }
            | Request::Readlink { fid, .. } => Some(fid),
            _ => None,
        }
    }

    /// The placement group whose primary executes the request. Namespace operations all go
    /// through PG 0, so that every replica applies them in one order; file operations go to
    /// the file's own PG.
    pub fn pg(&self) -> u32 {
        match *self {
            Request::GetAttr { fid, .. }
            | Request::SetAttr { fid, .. }
            | Request::Read { fid, .. }
            | Request::Write { fid, .. }
            | Request::Fsync { fid, .. }
            | Request::Readlink { fid, .. } => pg_of(fid),
            _ => 0,
        }
    }

    /// Operations that change the namespace (serialized through PG 0, applied on the primary
    /// first so that what is forwarded carries the file id it minted).
    pub fn is_namespace_change(&self) -> bool {
        matches!(
            self,
            Request::Create { .. }
                | Request::Mkdir { .. }
                | Request::Symlink { .. }
                | Request::Unlink { .. }
                | Request::Rmdir { .. }
                | Request::Rename { .. }
        )
    }

    pub fn volume(&self) -> Option<VolumeId> {
        match *self {
            Request::Lookup { vol, .. }
            | Request::GetAttr { vol, .. }
            | Request::SetAttr { vol, .. }
            | Request::Create { vol, .. }
            | Request::Mkdir { vol, .. }
            | Request::Unlink { vol, .. }
            | Request::Rmdir { vol, .. }
            | Request::Rename { vol, .. }
            | Request::ReadDir { vol, .. }
            | Request::Read { vol, .. }
            | Request::Write { vol, .. }
            | Request::Fsync { vol, .. }
            | Request::Symlink { vol, .. }
            | Request::Readlink { vol, .. }
            | Request::Statfs { vol, .. } => Some(vol),
            _ => None,
        }
    }

    /// Requests that change nothing on the server.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::Lookup { .. }
                | Request::GetAttr { .. }
                | Request::ReadDir { .. }
                | Request::Read { .. }
                | Request::Readlink { .. }
                | Request::Statfs { .. }
        )
    }

    /// Requests that can be sent again after a lost connection without changing the outcome.
    pub fn is_idempotent(&self) -> bool {
        self.is_read_only()
            || matches!(
                self,
                Request::Write { .. } | Request::Fsync { .. } | Request::SetAttr { .. }
            )
    }

    pub fn encode(&self, e: &mut Enc) {
        match *self {
            Request::Hello {
                version_min,
                version_max,
                user,
                client_nonce,
            } => {
                e.u8(version_min)
                    .u8(version_max)
                    .str(user)
                    .raw(&client_nonce);
            }
            Request::Auth { proof } => {
                e.raw(&proof);
            }
            Request::Mgmt { doc } => {
                e.raw(doc);
            }
            Request::Lookup { vol, parent, name }
            | Request::Unlink { vol, parent, name }
            | Request::Rmdir { vol, parent, name } => {
                e.u32(vol).u64(parent).str(name);
            }
            Request::GetAttr { vol, fid }
            | Request::Fsync { vol, fid }
            | Request::Readlink { vol, fid } => {
                e.u32(vol).u64(fid);
            }
            Request::SetAttr { vol, fid, attr } => {
                e.u32(vol).u64(fid);
                encode_setattr(e, &attr);
            }
            Request::Create {
                vol,
                parent,
                name,
                mode,
                exclusive,
            } => {
                e.u32(vol).u64(parent).str(name).u32(mode).bool(exclusive);
            }
            Request::Mkdir {
                vol,
                parent,
                name,
                mode,
            } => {
                e.u32(vol).u64(parent).str(name).u32(mode);
            }
            Request::Rename {
                vol,
                src_parent,
                src_name,
                dst_parent,
                dst_name,
                flags,
            } => {
                e.u32(vol)
                    .u64(src_parent)
                    .str(src_name)
                    .u64(dst_parent)
                    .str(dst_name);
                // Absent means 0: a RENAME without flags is the same bytes as before them.
                if flags != 0 {
                    e.u8(flags);
                }
            }
            Request::ReadDir {
                vol,
                fid,
                cookie,
                max_entries,
            } => {
                e.u32(vol).u64(fid).u64(cookie).u32(max_entries);
            }
            Request::Read {
                vol,
                fid,
                offset,
                len,
            } => {
                e.u32(vol).u64(fid).u64(offset).u32(len);
            }
            Request::Write {
                vol,
                fid,
                offset,
                flags,
                data,
            } => {
                e.u32(vol).u64(fid).u64(offset).u32(flags).raw(data);
            }
            Request::Symlink {
                vol,
                parent,
                name,
                target,
            } => {
                e.u32(vol).u64(parent).str(name).str(target);
            }
            Request::Statfs { vol, member } => {
                e.u32(vol);
                if let Some(m) = member {
                    e.u8(m);
                }
            }
        }
    }

    pub fn decode(opcode: u16, payload: &'a [u8]) -> Result<Request<'a>, DecodeError> {
        let mut d = Dec::new(payload);
        let req = match opcode {
            op::HELLO => Request::Hello {
                version_min: d.u8("version_min")?,
                version_max: d.u8("version_max")?,
                user: d.str("user", 256)?,
                client_nonce: d.array("client nonce")?,
            },
            op::AUTH => Request::Auth {
                proof: d.array("proof")?,
            },
            op::MGMT => {
                let doc = d.rest();
                if doc.len() > MGMT_DOC_BYTES_MAX {
                    return Err(DecodeError::TooLong(
                        "mgmt document",
                        doc.len(),
                        MGMT_DOC_BYTES_MAX,
                    ));
                }
                Request::Mgmt { doc }
            }
            op::LOOKUP => Request::Lookup {
                vol: d.u32("volume")?,
                parent: d.u64("parent")?,
                name: d.name("name")?,
            },
            op::UNLINK => Request::Unlink {
                vol: d.u32("volume")?,
                parent: d.u64("parent")?,
                name: d.name("name")?,
            },
            op::RMDIR => Request::Rmdir {
                vol: d.u32("volume")?,
                parent: d.u64("parent")?,
                name: d.name("name")?,
            },
            op::GETATTR => Request::GetAttr {
                vol: d.u32("volume")?,
                fid: d.u64("fid")?,
            },
            op::FSYNC => Request::Fsync {
                vol: d.u32("volume")?,
                fid: d.u64("fid")?,
            },
            op::READLINK => Request::Readlink {
                vol: d.u32("volume")?,
                fid: d.u64("fid")?,
            },
            op::SETATTR => Request::SetAttr {
                vol: d.u32("volume")?,
                fid: d.u64("fid")?,
                attr: decode_setattr(&mut d)?,
            },
            op::CREATE => Request::Create {
                vol: d.u32("volume")?,
                parent: d.u64("parent")?,
                name: d.name("name")?,
                mode: d.u32("mode")?,
                exclusive: d.bool("exclusive")?,
            },
            op::MKDIR => Request::Mkdir {
                vol: d.u32("volume")?,
                parent: d.u64("parent")?,
                name: d.name("name")?,
                mode: d.u32("mode")?,
            },
            op::RENAME => Request::Rename {
                vol: d.u32("volume")?,
                src_parent: d.u64("source parent")?,
                src_name: d.name("source name")?,
                dst_parent: d.u64("target parent")?,
                dst_name: d.name("target name")?,
                flags: match d.remaining() {
                    0 => 0,
                    _ => match d.u8("rename flags")? {
                        f if f & !RENAME_NOREPLACE == 0 => f,
                        f => return Err(DecodeError::BadValue("rename flags", f as u64)),
                    },
                },
            },
            op::READDIR => Request::ReadDir {
                vol: d.u32("volume")?,
                fid: d.u64("fid")?,
                cookie: d.u64("cookie")?,
                max_entries: bounded(d.u32("max entries")?, 1, READDIR_ENTRIES_MAX, "max entries")?,
            },
            op::READ => Request::Read {
                vol: d.u32("volume")?,
                fid: d.u64("fid")?,
                offset: d.u64("offset")?,
                len: bounded(d.u32("length")?, 0, IO_BYTES_MAX, "read length")?,
            },
            op::WRITE => {
                let vol = d.u32("volume")?;
                let fid = d.u64("fid")?;
                let offset = d.u64("offset")?;
                let flags = d.u32("flags")?;
                let data = d.rest();
                if data.len() > IO_BYTES_MAX as usize {
                    return Err(DecodeError::TooLong(
                        "write data",
                        data.len(),
                        IO_BYTES_MAX as usize,
                    ));
                }
                Request::Write {
                    vol,
                    fid,
                    offset,
                    flags,
                    data,
                }
            }
            op::SYMLINK => Request::Symlink {
                vol: d.u32("volume")?,
                parent: d.u64("parent")?,
                name: d.name("name")?,
                target: d.symlink_target()?,
            },
            op::STATFS => Request::Statfs {
                vol: d.u32("volume")?,
                member: match d.remaining() {
                    0 => None,
                    _ => Some(d.u8("member")?),
                },
            },
            other => return Err(DecodeError::UnknownOpcode(other)),
        };
        d.finish()?;
        Ok(req)
    }
}

fn bounded(v: u32, min: u32, max: u32, what: &'static str) -> Result<u32, DecodeError> {
    if v < min || v > max {
        return Err(DecodeError::BadValue(what, v as u64));
    }
    Ok(v)
}

fn encode_opt_u32(e: &mut Enc, v: Option<u32>) {
    match v {
        Some(v) => e.u8(1).u32(v),
        None => e.u8(0).u32(0),
    };
}

fn encode_timeset(e: &mut Enc, t: TimeSet) {
    match t {
        TimeSet::Keep => e.u8(0).i64(0).u32(0),
        TimeSet::Now => e.u8(1).i64(0).u32(0),
        TimeSet::To(t) => e.u8(2).i64(t.sec).u32(t.nsec),
    };
}

fn decode_opt_u32(d: &mut Dec, what: &'static str) -> Result<Option<u32>, DecodeError> {
    let set = d.bool(what)?;
    let v = d.u32(what)?;
    Ok(set.then_some(v))
}

fn decode_timeset(d: &mut Dec, what: &'static str) -> Result<TimeSet, DecodeError> {
    let how = d.u8(what)?;
    let sec = d.i64(what)?;
    let nsec = d.u32(what)?;
    if nsec >= 1_000_000_000 {
        return Err(DecodeError::BadValue(what, nsec as u64));
    }
    match how {
        0 => Ok(TimeSet::Keep),
        1 => Ok(TimeSet::Now),
        2 => Ok(TimeSet::To(Time { sec, nsec })),
        other => Err(DecodeError::BadValue(what, other as u64)),
    }
}

pub fn encode_setattr(e: &mut Enc, a: &SetAttr) {
    encode_opt_u32(e, a.mode);
    encode_opt_u32(e, a.uid);
    encode_opt_u32(e, a.gid);
    match a.size {
        Some(s) => e.u8(1).u64(s),
        None => e.u8(0).u64(0),
    };
    encode_timeset(e, a.atime);
    encode_timeset(e, a.mtime);
}

fn decode_setattr(d: &mut Dec) -> Result<SetAttr, DecodeError> {
    let mode = decode_opt_u32(d, "mode")?;
    let uid = decode_opt_u32(d, "uid")?;
    let gid = decode_opt_u32(d, "gid")?;
    let size_set = d.bool("size")?;
    let size = d.u64("size")?;
    Ok(SetAttr {
        mode,
        uid,
        gid,
        size: size_set.then_some(size),
        atime: decode_timeset(d, "atime")?,
        mtime: decode_timeset(d, "mtime")?,
    })
}

/// RENAME flag: fail with Exists if the target exists instead of replacing it.
pub const RENAME_NOREPLACE: u8 = 0x1;

pub const ATTR_BYTES: usize = 8 + 1 + 4 * 4 + 8 * 2 + 12 * 4;

impl Attr {
    pub fn encode(&self, e: &mut Enc) {
        e.u64(self.fid)
            .u8(self.kind as u8)
            .u32(self.mode)
            .u32(self.nlink)
            .u32(self.uid)
            .u32(self.gid)
            .u64(self.size)
            .u64(self.used_bytes);
        for t in [self.atime, self.mtime, self.ctime, self.btime] {
            e.i64(t.sec).u32(t.nsec);
        }
    }

    pub fn decode(d: &mut Dec) -> Result<Attr, DecodeError> {
        let fid = d.u64("fid")?;
        let kind = match d.u8("kind")? {
            1 => FileKind::File,
            2 => FileKind::Dir,
            3 => FileKind::Symlink,
            other => return Err(DecodeError::BadValue("kind", other as u64)),
        };
        let mut a = Attr {
            fid,
            kind,
            mode: d.u32("mode")?,
            nlink: d.u32("nlink")?,
            uid: d.u32("uid")?,
            gid: d.u32("gid")?,
            size: d.u64("size")?,
            used_bytes: d.u64("used")?,
            atime: Time::default(),
            mtime: Time::default(),
            ctime: Time::default(),
            btime: Time::default(),
        };
        for t in [&mut a.atime, &mut a.mtime, &mut a.ctime, &mut a.btime] {
            *t = Time {
                sec: d.i64("time")?,
                nsec: d.u32("time")?,
            };
        }
        Ok(a)
    }

    pub fn decode_whole(payload: &[u8]) -> Result<Attr, DecodeError> {
        let mut d = Dec::new(payload);
        let a = Attr::decode(&mut d)?;
        d.finish()?;
        Ok(a)
    }

    pub fn to_payload(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(ATTR_BYTES);
        self.encode(&mut e);
        e.buf
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub cookie: u64,
    pub attr: Attr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirPage {
    pub entries: Vec<DirEntry>,
    pub eof: bool,
}

impl DirPage {
    pub fn encode(&self, e: &mut Enc) {
        e.u32(self.entries.len() as u32).bool(self.eof);
        for entry in &self.entries {
            e.str(&entry.name).u64(entry.cookie);
            entry.attr.encode(e);
        }
    }

    pub fn decode(payload: &[u8]) -> Result<DirPage, DecodeError> {
        let mut d = Dec::new(payload);
        let n = d.u32("entry count")?;
        if n > READDIR_ENTRIES_MAX {
            return Err(DecodeError::TooLong(
                "entries",
                n as usize,
                READDIR_ENTRIES_MAX as usize,
            ));
        }
        let eof = d.bool("eof")?;
        let mut entries = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let name = d.name("entry name")?.to_string();
            let cookie = d.u64("cookie")?;
            let attr = Attr::decode(&mut d)?;
            entries.push(DirEntry { name, cookie, attr });
        }
        d.finish()?;
        Ok(DirPage { entries, eof })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteReply {
    pub written: u32,
}

impl WriteReply {
    pub fn encode(&self, e: &mut Enc) {
        e.u32(self.written);
    }
    pub fn decode(payload: &[u8]) -> Result<WriteReply, DecodeError> {
        let mut d = Dec::new(payload);
        let r = WriteReply {
            written: d.u32("written")?,
        };
        d.finish()?;
        Ok(r)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub avail_bytes: u64,
    pub total_files: u64,
    pub free_files: u64,
    pub block_bytes: u32,
    pub name_bytes_max: u32,
}

impl StatFs {
    pub fn encode(&self, e: &mut Enc) {
        e.u64(self.total_bytes)
            .u64(self.free_bytes)
            .u64(self.avail_bytes)
            .u64(self.total_files)
            .u64(self.free_files)
            .u32(self.block_bytes)
            .u32(self.name_bytes_max);
    }
    pub fn decode(payload: &[u8]) -> Result<StatFs, DecodeError> {
        let mut d = Dec::new(payload);
        let s = StatFs {
            total_bytes: d.u64("total")?,
            free_bytes: d.u64("free")?,
            avail_bytes: d.u64("avail")?,
            total_files: d.u64("files")?,
            free_files: d.u64("free files")?,
            block_bytes: d.u32("block size")?,
            name_bytes_max: d.u32("name max")?,
        };
        d.finish()?;
        Ok(s)
    }
}

/// Server's answer to HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloReply {
    pub version: u8,
    pub server_nonce: [u8; 16],
    pub node: String,
}

impl HelloReply {
    pub fn encode(&self, e: &mut Enc) {
        e.u8(self.version).raw(&self.server_nonce).str(&self.node);
    }
    pub fn decode(payload: &[u8]) -> Result<HelloReply, DecodeError> {
        let mut d = Dec::new(payload);
        let r = HelloReply {
            version: d.u8("version")?,
            server_nonce: d.array("server nonce")?,
            node: d.str("node", 256)?.to_string(),
        };
        d.finish()?;
        Ok(r)
    }
}

/// Server's answer to a successful AUTH: which core this connection landed on and the
/// addresses of every core, so the client can open one connection per core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub core: u32,
    pub shard_addrs: Vec<String>,
}

pub const SHARDS_MAX: usize = 1024;

impl Welcome {
    pub fn encode(&self, e: &mut Enc) {
        e.u32(self.core).u32(self.shard_addrs.len() as u32);
        for a in &self.shard_addrs {
            e.str(a);
        }
    }
    pub fn decode(payload: &[u8]) -> Result<Welcome, DecodeError> {
        let mut d = Dec::new(payload);
        let core = d.u32("core")?;
        let n = d.u32("shard count")? as usize;
        if n == 0 || n > SHARDS_MAX {
            return Err(DecodeError::BadValue("shard count", n as u64));
        }
        let mut shard_addrs = Vec::with_capacity(n);
        for _ in 0..n {
            shard_addrs.push(d.str("shard address", 256)?.to_string());
        }
        d.finish()?;
        Ok(Welcome { core, shard_addrs })
    }
}
