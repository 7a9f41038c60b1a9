//! `ShareBackend` over a volume: SMB paths are walked with LOOKUPs from the volume root, and
//! every open holds the file's stable id, so a handle keeps working across renames.

use crate::wildcard;
use async_trait::async_trait;
use brick_client::readahead::ReadAhead;
use brick_client::{ClientError, Volume};
use brick_tuning::{NAME_BYTES_MAX, SMB_READ_BYTES_MAX, SMB_WRITE_PIECE_BYTES};
use brick_wire::{Attr, ErrorCode, FileId, FileKind, SetAttr, Time, TimeSet, ROOT_FILE_ID};
use smb_server::{
    BackendCapabilities, Bytes, DirEntry, FileInfo, FileTimes, Handle, OpenAction, OpenIntent,
    OpenOptions, ShareBackend, SmbError, SmbPath, SmbResult, VolumeInfo,
};
use std::sync::Arc;

/// Seconds from 1601-01-01 (FILETIME's epoch) to 1970-01-01.
const FILETIME_UNIX_OFFSET_S: i64 = 11_644_473_600;
const FILETIME_TICKS_PER_S: i64 = 10_000_000;

const FILE_ATTRIBUTE_READONLY: u32 = 0x1;
const FILE_ATTRIBUTE_ARCHIVE: u32 = 0x20;
const FILE_ATTRIBUTE_NORMAL: u32 = 0x80;

pub(crate) fn to_smb(e: ClientError) -> SmbError {
    let Some(code) = e.code() else {
        return SmbError::Io(std::io::Error::other(e.to_string()));
    };
    match code {
        ErrorCode::NotFound | ErrorCode::Stale => SmbError::NotFound,
        ErrorCode::Exists => SmbError::Exists,
        ErrorCode::NotDir => SmbError::NotADirectory,
        ErrorCode::IsDir => SmbError::IsDirectory,
        ErrorCode::NotEmpty => SmbError::NotEmpty,
        ErrorCode::NoSpace | ErrorCode::FileTooBig => SmbError::DiskFull,
        ErrorCode::Access | ErrorCode::Perm | ErrorCode::ReadOnly | ErrorCode::AuthFailed => {
            SmbError::AccessDenied
        }
        ErrorCode::NameTooLong | ErrorCode::Invalid => SmbError::NameInvalid,
        ErrorCode::NotSupported => SmbError::NotSupported,
        ErrorCode::CrossDevice => SmbError::NotSameDevice,
        _ => SmbError::Io(std::io::Error::other(e.to_string())),
    }
}

fn filetime(t: Time) -> u64 {
    let ticks = (t.sec + FILETIME_UNIX_OFFSET_S) * FILETIME_TICKS_PER_S + i64::from(t.nsec / 100);
    u64::try_from(ticks).unwrap_or(0)
}

/// The time a FILETIME names; `None` for 0 and the "don't change" values (-1, -2).
fn from_filetime(ft: u64) -> Option<Time> {
    let ticks = i64::try_from(ft).ok().filter(|&t| t > 0)?;
    Some(Time {
        sec: ticks / FILETIME_TICKS_PER_S - FILETIME_UNIX_OFFSET_S,
        nsec: (ticks % FILETIME_TICKS_PER_S) as u32 * 100,
    })
}

fn file_info(name: &str, a: &Attr) -> FileInfo {
    let mut info = FileInfo::new(name);
    info.end_of_file = a.size;
    info.allocation_size = a.used_bytes.max(a.size.next_multiple_of(4096));
    info.creation_time = filetime(a.btime);
    info.last_access_time = filetime(a.atime);
    info.last_write_time = filetime(a.mtime);
    info.change_time = filetime(a.ctime);
    info.is_directory = a.kind == FileKind::Dir;
    info.read_only = a.kind == FileKind::File && a.mode & 0o222 == 0;
    info.file_index = a.fid;
    info
}

/// Whether an entry made through another path (NFS, the native client) can be named over SMB:
/// not "." or "..", no character Windows forbids in a name, no control character.
fn smb_visible(name: &str) -> bool {
    name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c < ' ' || matches!(c, '\\' | '/' | ':' | '*' | '?' | '"' | '<' | '>' | '|'))
}

/// A name the bricks can hold: at most NAME_BYTES_MAX bytes of UTF-8 (SMB counts UTF-16
/// units, so a name SMB accepts can still be too long).
fn check_name(name: &str) -> SmbResult<()> {
    if name.len() > NAME_BYTES_MAX {
        return Err(SmbError::NameInvalid);
    }
    Ok(())
}

/// A volume served as one share.
pub struct BrickShare {
    vol: Volume,
    /// Shared by every open: a change through one open drops what another fetched ahead.
    readahead: Arc<ReadAhead>,
}

impl BrickShare {
    pub fn new(vol: Volume) -> BrickShare {
        BrickShare {
            vol,
            readahead: Arc::default(),
        }
    }

    /// The attributes of the directory holding `path`'s last component: PathNotFound if a
    /// directory on the way is missing.
    async fn parent_of(&self, path: &SmbPath) -> SmbResult<Attr> {
        let parts = path.components();
        let mut attr = self.vol.getattr(ROOT_FILE_ID).await.map_err(to_smb)?;
        for name in &parts[..parts.len().saturating_sub(1)] {
            check_name(name)?;
            attr = match self.vol.lookup(attr.fid, name).await {
                Ok(a) if a.kind == FileKind::Dir => a,
                Ok(_) => return Err(SmbError::PathNotFound),
                Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                    return Err(SmbError::PathNotFound)
                }
                Err(e) => return Err(to_smb(e)),
            };
        }
        Ok(attr)
    }

    /// `path`'s parent and last component, or `None` for the root.
    async fn split(&self, path: &SmbPath) -> SmbResult<Option<(Attr, String)>> {
        let Some(name) = path.file_name() else {
            return Ok(None);
        };
        check_name(name)?;
        let name = name.to_string();
        Ok(Some((self.parent_of(path).await?, name)))
    }

    async fn lookup_opt(&self, parent: FileId, name: &str) -> SmbResult<Option<Attr>> {
        match self.vol.lookup(parent, name).await {
            Ok(a) => Ok(Some(a)),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(to_smb(e)),
        }
    }

    fn handle(&self, name: &str, attr: &Attr) -> Box<dyn Handle> {
        Box::new(BrickHandle {
            vol: self.vol.clone(),
            readahead: self.readahead.clone(),
            fid: attr.fid,
            is_dir: attr.kind == FileKind::Dir,
            name: name.to_string(),
        })
    }

    async fn open_existing(
        &self,
        name: &str,
        attr: Attr,
        opts: OpenOptions,
    ) -> SmbResult<(Box<dyn Handle>, OpenAction)> {
        if attr.kind == FileKind::Dir {
            if opts.non_directory {
                return Err(SmbError::IsDirectory);
            }
            return match opts.intent {
                OpenIntent::Open | OpenIntent::OpenOrCreate => {
                    Ok((self.handle(name, &attr), OpenAction::Opened))
                }
                OpenIntent::Create => Err(SmbError::Exists),
                _ => Err(SmbError::IsDirectory),
            };
        }
        if opts.intent == OpenIntent::Create {
            return Err(SmbError::Exists);
        }
        if attr.kind == FileKind::Symlink {
            // Symlinks made through NFS or the native client are not followed over SMB.
            return Err(SmbError::NotSupported);
        }
        if opts.directory {
            return Err(SmbError::NotADirectory);
        }
        let overwrite = matches!(
            opts.intent,
            OpenIntent::Truncate | OpenIntent::OverwriteOrCreate
        );
        if (opts.write || overwrite) && attr.mode & 0o222 == 0 {
            return Err(SmbError::AccessDenied);
        }
        if overwrite {
            let cut = SetAttr {
                size: Some(0),
                ..SetAttr::NONE
            };
            self.readahead.invalidate(attr.fid);
            let cut = self.vol.setattr(attr.fid, cut).await;
            self.readahead.invalidate(attr.fid);
            let attr = cut.map_err(to_smb)?;
            return Ok((self.handle(name, &attr), OpenAction::Overwritten));
        }
        Ok((self.handle(name, &attr), OpenAction::Opened))
    }
}

#[async_trait]
impl ShareBackend for BrickShare {
    async fn open(
        &self,
        path: &SmbPath,
        opts: OpenOptions,
    ) -> SmbResult<(Box<dyn Handle>, OpenAction)> {
        let Some((parent, name)) = self.split(path).await? else {
            let root = self.vol.getattr(ROOT_FILE_ID).await.map_err(to_smb)?;
            return self.open_existing("", root, opts).await;
        };
        if let Some(attr) = self.lookup_opt(parent.fid, &name).await? {
            return self.open_existing(&name, attr, opts).await;
        }
        if matches!(opts.intent, OpenIntent::Open | OpenIntent::Truncate) {
            return Err(SmbError::NotFound);
        }
        let created = if opts.directory {
            self.vol.mkdir(parent.fid, &name, 0o755).await
        } else {
            self.vol.create(parent.fid, &name, 0o644, true).await
        };
        match created {
            Ok(attr) => Ok((self.handle(&name, &attr), OpenAction::Created)),
            // Another client created it in between: open what it made, as FILE_OPEN_IF would.
            Err(e) if e.code() == Some(ErrorCode::Exists) && opts.intent != OpenIntent::Create => {
                let attr = self.vol.lookup(parent.fid, &name).await.map_err(to_smb)?;
                self.open_existing(&name, attr, opts).await
            }
            Err(e) => Err(to_smb(e)),
        }
    }

    async fn unlink(&self, path: &SmbPath) -> SmbResult<()> {
        let Some((parent, name)) = self.split(path).await? else {
            return Err(SmbError::AccessDenied);
        };
        let attr = self.vol.lookup(parent.fid, &name).await.map_err(to_smb)?;
        let removed = if attr.kind == FileKind::Dir {
            self.vol.rmdir(parent.fid, &name).await
        } else {
            self.vol.unlink(parent.fid, &name).await
        };
        removed.map_err(to_smb)
    }

    async fn rename(&self, from: &SmbPath, to: &SmbPath, replace_if_exists: bool) -> SmbResult<()> {
        let (Some((src_dir, src_name)), Some((dst_dir, dst_name))) =
            (self.split(from).await?, self.split(to).await?)
        else {
            return Err(SmbError::NameInvalid);
        };
        let source = self
            .vol
            .lookup(src_dir.fid, &src_name)
            .await
            .map_err(to_smb)?;
        if let Some(target) = self.lookup_opt(dst_dir.fid, &dst_name).await? {
            if target.fid == source.fid {
                if src_dir.fid == dst_dir.fid && src_name == dst_name {
                    return Ok(());
                }
            } else if !replace_if_exists {
                return Err(SmbError::Exists);
            } else if target.kind == FileKind::Dir {
                return Err(SmbError::AccessDenied);
            }
        }
        let renamed = if replace_if_exists {
            self.vol
                .rename(src_dir.fid, &src_name, dst_dir.fid, &dst_name)
                .await
        } else {
            self.vol
                .rename_noreplace(src_dir.fid, &src_name, dst_dir.fid, &dst_name)
                .await
        };
        renamed.map_err(to_smb)
    }

    fn capabilities(&self) -> BackendCapabilities {
        let mut caps = BackendCapabilities::default();
        caps.is_read_only = false;
        caps.case_sensitive = true;
        caps
    }

    async fn volume_info(&self) -> SmbResult<VolumeInfo> {
        let fs = self.vol.statfs().await.map_err(to_smb)?;
        let unit = u64::from(fs.block_bytes.max(512));
        let mut info = VolumeInfo::default();
        info.total_allocation_units = fs.total_bytes / unit;
        info.caller_available_allocation_units = fs.avail_bytes / unit;
        info.actual_available_allocation_units = fs.free_bytes / unit;
        info.sectors_per_allocation_unit = 1;
        info.bytes_per_sector = unit as u32;
        info.max_name_length = fs.name_bytes_max.max(1);
        Ok(info)
    }
}

/// Runs `futures` concurrently on the calling task; their outputs in order.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *output = Some(v),
                    std::task::Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

struct BrickHandle {
    vol: Volume,
    readahead: Arc<ReadAhead>,
    fid: FileId,
    is_dir: bool,
    name: String,
}

impl BrickHandle {
    /// Writes `data` as native writes of at most `SMB_WRITE_PIECE_BYTES`, all in flight at
    /// once (the crate hands us one WRITE at a time; its pieces need not wait for each other).
    /// Answers only once every piece is written; on a failure, the bytes written without a gap
    /// from `offset` (an error if there are none).
    async fn write_chunks(&self, offset: u64, data: &[u8]) -> SmbResult<u32> {
        let piece = SMB_WRITE_PIECE_BYTES as usize;
        let writes = data.chunks(piece).enumerate().map(|(i, chunk)| {
            let at = offset + (i * piece) as u64;
            self.vol.write(self.fid, at, chunk, false)
        });
        let results = join_all(writes.collect()).await;
        let mut done = 0usize;
        for (result, chunk) in results.into_iter().zip(data.chunks(piece)) {
            match result {
                Ok(n) if n as usize == chunk.len() => done += chunk.len(),
                Ok(n) => return Ok((done + n as usize) as u32),
                Err(e) if done == 0 => return Err(to_smb(e)),
                Err(_) => break,
            }
        }
        Ok(done as u32)
    }

    /// Drops what was read ahead before and after the change: a read overlapping the call
    /// may have fetched the old bytes.
    async fn setattr(&self, attr: SetAttr) -> SmbResult<Attr> {
        self.readahead.invalidate(self.fid);
        let result = self.vol.setattr(self.fid, attr).await;
        self.readahead.invalidate(self.fid);
        result.map_err(to_smb)
    }
}

#[async_trait]
impl Handle for BrickHandle {
    async fn read(&self, offset: u64, len: u32) -> SmbResult<Bytes> {
        let len = len.min(SMB_READ_BYTES_MAX);
        let data = self
            .readahead
            .read(&self.vol, self.fid, offset, len)
            .await
            .map_err(to_smb)?;
        Ok(Bytes::from(data))
    }

    async fn write(&self, offset: u64, data: &[u8]) -> SmbResult<u32> {
        // Dropped before and after: a read overlapping the write may fetch the old bytes.
        self.readahead.invalidate(self.fid);
        let written = self.write_chunks(offset, data).await;
        self.readahead.invalidate(self.fid);
        written
    }

    async fn flush(&self) -> SmbResult<()> {
        if self.is_dir {
            return Ok(());
        }
        self.vol.fsync(self.fid).await.map_err(to_smb)
    }

    async fn stat(&self) -> SmbResult<FileInfo> {
        let attr = self.vol.getattr(self.fid).await.map_err(to_smb)?;
        Ok(file_info(&self.name, &attr))
    }

    async fn set_times(&self, times: FileTimes) -> SmbResult<()> {
        let set = |ft: Option<u64>| {
            ft.and_then(from_filetime)
                .map_or(TimeSet::Keep, TimeSet::To)
        };
        let attr = SetAttr {
            atime: set(times.last_access_time),
            mtime: set(times.last_write_time),
            ..SetAttr::NONE
        };
        if attr.atime == TimeSet::Keep && attr.mtime == TimeSet::Keep {
            return Ok(());
        }
        self.setattr(attr).await.map(drop)
    }

    async fn set_attributes(&self, attributes: u32) -> SmbResult<()> {
        let stored = FILE_ATTRIBUTE_READONLY | FILE_ATTRIBUTE_ARCHIVE | FILE_ATTRIBUTE_NORMAL;
        if attributes & !stored != 0 || (self.is_dir && attributes & FILE_ATTRIBUTE_READONLY != 0) {
            return Err(SmbError::NotSupported);
        }
        if self.is_dir {
            return Ok(());
        }
        let mode = self.vol.getattr(self.fid).await.map_err(to_smb)?.mode;
        let wanted = if attributes & FILE_ATTRIBUTE_READONLY != 0 {
            mode & !0o222
        } else {
            mode | 0o200
        };
        if wanted != mode {
            self.setattr(SetAttr {
                mode: Some(wanted),
                ..SetAttr::NONE
            })
            .await?;
        }
        Ok(())
    }

    async fn truncate(&self, len: u64) -> SmbResult<()> {
        self.setattr(SetAttr {
            size: Some(len),
            ..SetAttr::NONE
        })
        .await
        .map(drop)
    }

    async fn list_dir(&self, pattern: Option<&str>) -> SmbResult<Vec<DirEntry>> {
        let pattern = pattern.filter(|p| *p != "*");
        if let Some(name) = pattern.filter(|p| !wildcard::has_wildcards(p)) {
            // "." and ".." are the server's to add; other names the bricks could not hold
            // match nothing.
            if !smb_visible(name) || name.len() > NAME_BYTES_MAX {
                return Ok(Vec::new());
            }
            return match self.vol.lookup(self.fid, name).await {
                Ok(a) if a.kind != FileKind::Symlink => Ok(vec![DirEntry {
                    info: file_info(name, &a),
                }]),
                Ok(_) => Ok(Vec::new()),
                Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(Vec::new()),
                Err(e) => Err(to_smb(e)),
            };
        }
        let entries = self.vol.readdir_all(self.fid).await.map_err(to_smb)?;
        Ok(entries
            .into_iter()
            .filter(|e| e.attr.kind != FileKind::Symlink && smb_visible(&e.name))
            .filter(|e| pattern.is_none_or(|p| wildcard::matches(p, &e.name)))
            .map(|e| DirEntry {
                info: file_info(&e.name, &e.attr),
            })
            .collect())
    }

    async fn close(self: Box<Self>) -> SmbResult<()> {
        Ok(())
    }

    async fn link_count(&self) -> SmbResult<u32> {
        let attr = self.vol.getattr(self.fid).await;
        match attr {
            Ok(a) => Ok(a.nlink.max(1)),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(0),
            Err(e) => Err(to_smb(e)),
        }
    }

    async fn dir_is_empty(&self) -> SmbResult<bool> {
        let page = self.vol.readdir(self.fid, 0, 1).await.map_err(to_smb)?;
        Ok(page.entries.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filetime_round_trips_and_skips_sentinels() {
        let t = Time {
            sec: 1_700_000_000,
            nsec: 123_456_700,
        };
        assert_eq!(from_filetime(filetime(t)), Some(t));
        assert_eq!(from_filetime(0), None);
        assert_eq!(from_filetime(u64::MAX), None);
        assert_eq!(from_filetime(u64::MAX - 1), None);
        assert_eq!(filetime(Time { sec: 0, nsec: 0 }), 116_444_736_000_000_000);
    }
}
