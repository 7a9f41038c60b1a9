//! `BrickFs`: nfsserve's `NFSFileSystem` over the native client library. The procedures that
//! nfsserve runs (LOOKUP, GETATTR, SETATTR, CREATE, MKDIR, SYMLINK, READLINK, REMOVE, RENAME,
//! READDIR, READDIRPLUS, ACCESS, FSINFO, PATHCONF, MOUNT) end up here; READ, WRITE, COMMIT,
//! FSSTAT and RMDIR are answered by our own layer (`ops.rs`) and use the same helpers.

use async_trait::async_trait;
use brick_client::{ClientError, Volume};
use brick_wire::{Attr, ErrorCode, FileId, FileKind, SetAttr, Time, TimeSet, ROOT_FILE_ID};
use nfsserve::nfs::{
    fattr3, fileid3, filename3, fsinfo3, ftype3, nfs_fh3, nfspath3, nfsstat3, nfstime3,
    post_op_attr, sattr3, set_atime, set_gid3, set_mode3, set_mtime, set_size3, set_uid3,
    specdata3,
};
use nfsserve::vfs::{DirEntry, NFSFileSystem, ReadDirResult, VFSCapabilities};
use std::collections::HashMap;
use std::sync::Mutex;

/// File handle layout (docs/nfs.md): magic, volume id, file id, crc32c of the first 16 bytes.
pub const HANDLE_MAGIC: [u8; 4] = *b"BKN1";
pub const HANDLE_BYTES: usize = 20;
/// Largest READ and WRITE payload advertised in FSINFO (clients split larger transfers).
pub const IO_BYTES_MAX: u32 = 1 << 20;
/// Directory positions remembered for resuming listings (nfsserve resumes after a file id).
const CURSORS_MAX: usize = 100_000;
/// Entries asked from the bricks per READDIR page at most.
const DIR_PAGE_ENTRIES_MAX: u32 = 1024;
/// Pages walked to find where a listing resumes when its position was forgotten.
const CURSOR_SCAN_PAGES_MAX: usize = 10_000;

pub struct BrickFs {
    pub vol: Volume,
    /// (directory, entry file id) -> the bricks' cookie just after that entry.
    cursors: Mutex<HashMap<(FileId, FileId), u64>>,
    /// Changes on every gateway start: part of the write verifier.
    boot_nonce: u64,
    pub readahead: brick_client::readahead::ReadAhead,
}

impl BrickFs {
    pub fn new(vol: Volume) -> BrickFs {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        BrickFs {
            vol,
            cursors: Mutex::new(HashMap::new()),
            boot_nonce: nanos ^ ((std::process::id() as u64) << 32),
            readahead: Default::default(),
        }
    }

    /// The NFS write verifier: it changes when this gateway restarts or when any connection
    /// to a server had to be made again (a server that restarted may have lost writes it had
    /// not made durable). A client that sees it change between WRITE and COMMIT resends.
    pub fn write_verifier(&self) -> [u8; 8] {
        let opened = brick_client::connections_opened();
        (self.boot_nonce ^ opened.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_be_bytes()
    }

    pub fn handle_of(&self, fid: FileId) -> Vec<u8> {
        let mut h = Vec::with_capacity(HANDLE_BYTES);
        h.extend_from_slice(&HANDLE_MAGIC);
        h.extend_from_slice(&self.vol.id.to_be_bytes());
        h.extend_from_slice(&fid.to_be_bytes());
        let crc = crc32c::crc32c(&h);
        h.extend_from_slice(&crc.to_be_bytes());
        h
    }

    /// The file id in a handle: BADHANDLE if it is not one of ours, STALE if it names
    /// another volume.
    pub fn fid_of(&self, handle: &[u8]) -> Result<FileId, nfsstat3> {
        if handle.len() != HANDLE_BYTES || handle[0..4] != HANDLE_MAGIC {
            return Err(nfsstat3::NFS3ERR_BADHANDLE);
        }
        let crc = u32::from_be_bytes([handle[16], handle[17], handle[18], handle[19]]);
        if crc32c::crc32c(&handle[..16]) != crc {
            return Err(nfsstat3::NFS3ERR_BADHANDLE);
        }
        let vol = u32::from_be_bytes([handle[4], handle[5], handle[6], handle[7]]);
        if vol != self.vol.id {
            return Err(nfsstat3::NFS3ERR_STALE);
        }
        let mut fid = [0u8; 8];
        fid.copy_from_slice(&handle[8..16]);
        Ok(u64::from_be_bytes(fid))
    }

    pub fn fattr(&self, a: &Attr) -> fattr3 {
        fattr3 {
            ftype: match a.kind {
                FileKind::File => ftype3::NF3REG,
                FileKind::Dir => ftype3::NF3DIR,
                FileKind::Symlink => ftype3::NF3LNK,
            },
            mode: a.mode & 0o7777,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            used: a.used_bytes,
            rdev: specdata3::default(),
            fsid: self.vol.id as u64,
            fileid: a.fid,
            atime: nfs_time(a.atime),
            mtime: nfs_time(a.mtime),
            ctime: nfs_time(a.ctime),
        }
    }

    /// Attributes after an operation, when they can be had (`Void` otherwise).
    pub async fn post_op(&self, fid: FileId) -> post_op_attr {
        match self.vol.getattr(fid).await {
            Ok(a) => post_op_attr::attributes(self.fattr(&a)),
            Err(_) => post_op_attr::Void,
        }
    }

    /// The bricks' cookie to resume a listing of `dir` after entry `after` (0: the start).
    async fn cursor(&self, dir: FileId, after: FileId) -> Result<u64, nfsstat3> {
        if after == 0 {
            return Ok(0);
        }
        if let Some(c) = self.cursors().get(&(dir, after)) {
            return Ok(*c);
        }
        // Forgotten (gateway restarted, or the table was full): walk the listing.
        let mut cookie = 0;
        for _ in 0..CURSOR_SCAN_PAGES_MAX {
            let page = self
                .vol
                .readdir(dir, cookie, DIR_PAGE_ENTRIES_MAX)
                .await
                .map_err(|e| status_of_handle_op(&e))?;
            self.remember(dir, &page.entries);
            if let Some(e) = page.entries.iter().find(|e| e.attr.fid == after) {
                return Ok(e.cookie);
            }
            match page.entries.last() {
                Some(last) if !page.eof => cookie = last.cookie,
                _ => break,
            }
        }
        Err(nfsstat3::NFS3ERR_BAD_COOKIE)
    }

    fn remember(&self, dir: FileId, entries: &[brick_wire::DirEntry]) {
        let mut cursors = self.cursors();
        if cursors.len() + entries.len() > CURSORS_MAX {
            cursors.clear();
        }
        for e in entries {
            cursors.insert((dir, e.attr.fid), e.cookie);
        }
    }

    fn cursors(&self) -> std::sync::MutexGuard<'_, HashMap<(FileId, FileId), u64>> {
        self.cursors.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn nfs_time(t: Time) -> nfstime3 {
    nfstime3 {
        seconds: t.sec.clamp(0, u32::MAX as i64) as u32,
        nseconds: t.nsec,
    }
}

fn time_set_atime(t: set_atime) -> TimeSet {
    match t {
        set_atime::DONT_CHANGE => TimeSet::Keep,
        set_atime::SET_TO_SERVER_TIME => TimeSet::Now,
        set_atime::SET_TO_CLIENT_TIME(t) => TimeSet::To(Time {
            sec: t.seconds as i64,
            nsec: t.nseconds,
        }),
    }
}

fn time_set_mtime(t: set_mtime) -> TimeSet {
    match t {
        set_mtime::DONT_CHANGE => TimeSet::Keep,
        set_mtime::SET_TO_SERVER_TIME => TimeSet::Now,
        set_mtime::SET_TO_CLIENT_TIME(t) => TimeSet::To(Time {
            sec: t.seconds as i64,
            nsec: t.nseconds,
        }),
    }
}

pub fn set_attr_of(s: &sattr3) -> SetAttr {
    SetAttr {
        mode: match s.mode {
            set_mode3::mode(m) => Some(m & 0o7777),
            set_mode3::Void => None,
        },
        uid: match s.uid {
            set_uid3::uid(u) => Some(u),
            set_uid3::Void => None,
        },
        gid: match s.gid {
            set_gid3::gid(g) => Some(g),
            set_gid3::Void => None,
        },
        size: match s.size {
            set_size3::size(n) => Some(n),
            set_size3::Void => None,
        },
        atime: time_set_atime(s.atime),
        mtime: time_set_mtime(s.mtime),
    }
}

fn changes_anything(s: &SetAttr) -> bool {
    *s != SetAttr::NONE
}

/// The NFS status for a failed operation that names its object by file handle: an object
/// that no longer exists is STALE there (NOENT is for names looked up in a directory).
pub fn status_of_handle_op(e: &ClientError) -> nfsstat3 {
    match e.code() {
        Some(ErrorCode::NotFound) => nfsstat3::NFS3ERR_STALE,
        _ => status_of(e),
    }
}

/// The NFS status for a failed operation (RFC 1813's error list).
pub fn status_of(e: &ClientError) -> nfsstat3 {
    let Some(code) = e.code() else {
        tracing::warn!("nfs: {e}");
        // Cluster unreachable or overloaded: the client should retry, not fail the call.
        return match e {
            ClientError::Timeout(_) | ClientError::Disconnected(_) | ClientError::NoServer(_) => {
                nfsstat3::NFS3ERR_JUKEBOX
            }
            _ => nfsstat3::NFS3ERR_IO,
        };
    };
    match code {
        ErrorCode::Perm => nfsstat3::NFS3ERR_PERM,
        ErrorCode::NotFound => nfsstat3::NFS3ERR_NOENT,
        ErrorCode::Access | ErrorCode::AuthFailed => nfsstat3::NFS3ERR_ACCES,
        ErrorCode::Exists => nfsstat3::NFS3ERR_EXIST,
        ErrorCode::CrossDevice => nfsstat3::NFS3ERR_XDEV,
        ErrorCode::NotDir => nfsstat3::NFS3ERR_NOTDIR,
        ErrorCode::IsDir => nfsstat3::NFS3ERR_ISDIR,
        ErrorCode::Invalid => nfsstat3::NFS3ERR_INVAL,
        ErrorCode::FileTooBig => nfsstat3::NFS3ERR_FBIG,
        ErrorCode::NoSpace => nfsstat3::NFS3ERR_NOSPC,
        ErrorCode::ReadOnly | ErrorCode::BelowMinSize => nfsstat3::NFS3ERR_ROFS,
        ErrorCode::NameTooLong => nfsstat3::NFS3ERR_NAMETOOLONG,
        ErrorCode::NotEmpty => nfsstat3::NFS3ERR_NOTEMPTY,
        ErrorCode::NotSupported | ErrorCode::UnknownOp => nfsstat3::NFS3ERR_NOTSUPP,
        ErrorCode::Stale => nfsstat3::NFS3ERR_STALE,
        ErrorCode::Unavailable | ErrorCode::NotPrimary => nfsstat3::NFS3ERR_JUKEBOX,
        other => {
            tracing::warn!("nfs: {e} ({other:?})");
            nfsstat3::NFS3ERR_IO
        }
    }
}

pub fn name_of(name: &[u8]) -> Result<&str, nfsstat3> {
    if name.len() > 255 {
        return Err(nfsstat3::NFS3ERR_NAMETOOLONG);
    }
    std::str::from_utf8(name).map_err(|_| nfsstat3::NFS3ERR_INVAL)
}

#[async_trait]
impl NFSFileSystem for BrickFs {
    fn capabilities(&self) -> VFSCapabilities {
        VFSCapabilities::ReadWrite
    }

    fn root_dir(&self) -> fileid3 {
        ROOT_FILE_ID
    }

    async fn lookup(&self, dirid: fileid3, filename: &filename3) -> Result<fileid3, nfsstat3> {
        let name = name_of(filename)?;
        match name {
            "." => return Ok(dirid),
            ".." if dirid == ROOT_FILE_ID => return Ok(dirid),
            _ => {}
        }
        let attr = self
            .vol
            .lookup(dirid, name)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(attr.fid)
    }

    async fn getattr(&self, id: fileid3) -> Result<fattr3, nfsstat3> {
        let a = self
            .vol
            .getattr(id)
            .await
            .map_err(|e| status_of_handle_op(&e))?;
        Ok(self.fattr(&a))
    }

    async fn setattr(&self, id: fileid3, setattr: sattr3) -> Result<fattr3, nfsstat3> {
        self.readahead.invalidate(id);
        let a = self
            .vol
            .setattr(id, set_attr_of(&setattr))
            .await
            .map_err(|e| status_of_handle_op(&e))?;
        Ok(self.fattr(&a))
    }

    async fn read(
        &self,
        id: fileid3,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool), nfsstat3> {
        let count = count.min(IO_BYTES_MAX);
        let data = self
            .vol
            .read(id, offset, count)
            .await
            .map_err(|e| status_of_handle_op(&e))?;
        let eof = data.len() < count as usize;
        Ok((data, eof))
    }

    async fn write(&self, id: fileid3, offset: u64, data: &[u8]) -> Result<fattr3, nfsstat3> {
        self.readahead.invalidate(id);
        self.vol
            .write(id, offset, data, true)
            .await
            .map_err(|e| status_of_handle_op(&e))?;
        self.getattr(id).await
    }

    async fn create(
        &self,
        dirid: fileid3,
        filename: &filename3,
        attr: sattr3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        let name = name_of(filename)?;
        let mut set = set_attr_of(&attr);
        let mode = set.mode.take().unwrap_or(0o644);
        let created = self
            .vol
            .create(dirid, name, mode, false)
            .await
            .map_err(|e| status_of_handle_op(&e))?;
        let a = if changes_anything(&set) {
            self.vol
                .setattr(created.fid, set)
                .await
                .map_err(|e| status_of(&e))?
        } else {
            created
        };
        Ok((a.fid, self.fattr(&a)))
    }

    async fn create_exclusive(
        &self,
        dirid: fileid3,
        filename: &filename3,
    ) -> Result<fileid3, nfsstat3> {
        let name = name_of(filename)?;
        let a = self
            .vol
            .create(dirid, name, 0o644, true)
            .await
            .map_err(|e| status_of_handle_op(&e))?;
        Ok(a.fid)
    }

    async fn mkdir(
        &self,
        dirid: fileid3,
        dirname: &filename3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        let name = name_of(dirname)?;
        let a = self
            .vol
            .mkdir(dirid, name, 0o755)
            .await
            .map_err(|e| status_of_handle_op(&e))?;
        Ok((a.fid, self.fattr(&a)))
    }

    async fn remove(&self, dirid: fileid3, filename: &filename3) -> Result<(), nfsstat3> {
        let name = name_of(filename)?;
        self.vol
            .unlink(dirid, name)
            .await
            .map_err(|e| status_of(&e))
    }

    async fn rename(
        &self,
        from_dirid: fileid3,
        from_filename: &filename3,
        to_dirid: fileid3,
        to_filename: &filename3,
    ) -> Result<(), nfsstat3> {
        let from = name_of(from_filename)?;
        let to = name_of(to_filename)?;
        self.vol
            .rename(from_dirid, from, to_dirid, to)
            .await
            .map_err(|e| status_of(&e))
    }

    async fn readdir(
        &self,
        dirid: fileid3,
        start_after: fileid3,
        max_entries: usize,
    ) -> Result<ReadDirResult, nfsstat3> {
        let cookie = self.cursor(dirid, start_after).await?;
        let max = (max_entries as u32).clamp(1, DIR_PAGE_ENTRIES_MAX);
        let page = self
            .vol
            .readdir(dirid, cookie, max)
            .await
            .map_err(|e| status_of_handle_op(&e))?;
        self.remember(dirid, &page.entries);
        let entries = page
            .entries
            .iter()
            .map(|e| DirEntry {
                fileid: e.attr.fid,
                name: e.name.as_bytes().into(),
                attr: self.fattr(&e.attr),
            })
            .collect();
        Ok(ReadDirResult {
            entries,
            end: page.eof,
        })
    }

    async fn symlink(
        &self,
        dirid: fileid3,
        linkname: &filename3,
        symlink: &nfspath3,
        _attr: &sattr3,
    ) -> Result<(fileid3, fattr3), nfsstat3> {
        let name = name_of(linkname)?;
        let target = std::str::from_utf8(symlink).map_err(|_| nfsstat3::NFS3ERR_INVAL)?;
        let a = self
            .vol
            .symlink(dirid, name, target)
            .await
            .map_err(|e| status_of_handle_op(&e))?;
        Ok((a.fid, self.fattr(&a)))
    }

    async fn readlink(&self, id: fileid3) -> Result<nfspath3, nfsstat3> {
        let target = self
            .vol
            .readlink(id)
            .await
            .map_err(|e| status_of_handle_op(&e))?;
        Ok(target.into_bytes().into())
    }

    async fn fsinfo(&self, root_fileid: fileid3) -> Result<fsinfo3, nfsstat3> {
        Ok(fsinfo3 {
            obj_attributes: self.post_op(root_fileid).await,
            rtmax: IO_BYTES_MAX,
            rtpref: IO_BYTES_MAX,
            rtmult: 4096,
            wtmax: IO_BYTES_MAX,
            wtpref: IO_BYTES_MAX,
            wtmult: 4096,
            dtpref: 64 * 1024,
            maxfilesize: i64::MAX as u64,
            time_delta: nfstime3 {
                seconds: 0,
                nseconds: 1,
            },
            properties: nfsserve::nfs::FSF_SYMLINK
                | nfsserve::nfs::FSF_HOMOGENEOUS
                | nfsserve::nfs::FSF_CANSETTIME,
        })
    }

    fn id_to_fh(&self, id: fileid3) -> nfs_fh3 {
        nfs_fh3 {
            data: self.handle_of(id),
        }
    }

    fn fh_to_id(&self, id: &nfs_fh3) -> Result<fileid3, nfsstat3> {
        self.fid_of(&id.data)
    }

    fn serverid(&self) -> [u8; 8] {
        self.write_verifier()
    }
}
