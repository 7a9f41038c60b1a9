//! Per-core open-file cache and the io_uring data path (glommio DmaFile for O_DIRECT,
//! BufferedFile for the page cache).

use crate::state::{IoMode, ServeState, ServedVolume};
use brick_store::{Brick, FsError, FsResult};
use brick_tuning::{CORE_OPEN_FILES_MAX, DIRECT_IO_ALIGN_BYTES};
use brick_wire::{ErrorCode, FileId};
use glommio::io::{BufferedFile, DmaBuffer, DmaFile, OpenOptions};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::rc::Rc;

pub(crate) struct OpenFile {
    /// Present when the file is served with O_DIRECT.
    dma: RefCell<Option<Rc<DmaFile>>>,
    /// `io.mode auto` and smaller than `direct_min_bytes` when opened: the first write of at
    /// least that size (aligned) opens the O_DIRECT descriptor, so a large file being written
    /// from empty (an upload) takes the direct path too.
    direct_later: Cell<bool>,
    direct_min_bytes: u64,
    /// Always present: unaligned writes go through the page cache even for direct files.
    pub buffered: BufferedFile,
    /// Brick generation at which this entry was last known to name a live file.
    generation: Cell<u64>,
    /// The brick the file is on: a member whose brick was replaced keeps its number.
    brick_id: String,
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        // Freeing a deleted file's blocks happens in the last close, which would otherwise
        // be this core's (see `closer`).
        if !has_name(&self.buffered) {
            // SAFETY: `buffered` owns this descriptor and is open until after this returns.
            let fd = unsafe { BorrowedFd::borrow_raw(self.buffered.as_raw_fd()) };
            crate::closer::defer_last_close(fd);
        }
    }
}

/// (volume, member, file): on one node several members of a volume may share a core.
type CacheKey = (u32, u8, FileId);

#[derive(Default)]
pub(crate) struct FileCache {
    map: HashMap<CacheKey, Rc<OpenFile>>,
    order: VecDeque<CacheKey>,
}

impl FileCache {
    pub fn retain_volumes(&mut self, state: &ServeState) {
        self.map
            .retain(|(vol, _, _), _| state.volumes.contains_key(vol));
        self.order
            .retain(|(vol, _, _)| state.volumes.contains_key(vol));
    }

    /// Drops the entries of files that no longer have a name (unlinked, or replaced by a
    /// rename): their descriptors would keep the space of a deleted file, and for buffered
    /// files its page cache, until the entry happened to be evicted. Returns how many.
    pub fn release_unlinked(&mut self) -> usize {
        let before = self.map.len();
        self.map.retain(|_, f| has_name(&f.buffered));
        let map = &self.map;
        self.order.retain(|key| map.contains_key(key));
        before - self.map.len()
    }

    fn get(&self, key: CacheKey) -> Option<Rc<OpenFile>> {
        self.map.get(&key).cloned()
    }

    fn remove(&mut self, key: CacheKey) {
        if self.map.remove(&key).is_some() {
            self.order.retain(|k| *k != key);
        }
    }

    fn insert(&mut self, key: CacheKey, f: Rc<OpenFile>) {
        while self.map.len() >= CORE_OPEN_FILES_MAX {
            match self.order.pop_front() {
                Some(key) => {
                    self.map.remove(&key);
                }
                None => break,
            }
        }
        if self.map.insert(key, f).is_none() {
            self.order.push_back(key);
        }
    }
}

/// Whether the file behind `file` still has a link (stat through /proc/self/fd follows the
/// descriptor, not a path). An error counts as no: the entry is dropped and reopened if used.
fn has_name(file: &BufferedFile) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/self/fd/{}", file.as_raw_fd())).is_ok_and(|m| m.nlink() > 0)
}

pub(crate) fn io_err(what: &str, e: impl Into<std::io::Error>) -> FsError {
    let e: std::io::Error = e.into();
    FsError::new(ErrorCode::from_io(&e), format!("{what}: {e}"))
}

pub(crate) async fn open(
    cache: &std::cell::RefCell<FileCache>,
    vol: &ServedVolume,
    member: u8,
    brick: &Brick,
    fid: FileId,
) -> FsResult<Rc<OpenFile>> {
    let key = (vol.id, member, fid);
    let generation = brick.generation();
    let cached = cache.borrow().get(key);
    if let Some(f) = cached.filter(|f| f.brick_id == brick.identity.brick_id) {
        if f.generation.get() == generation {
            return Ok(f);
        }
        // Something was unlinked or replaced since: make sure this id still names a file.
        match brick.path_of(fid) {
            Ok(path) if path.exists() => {
                f.generation.set(generation);
                return Ok(f);
            }
            _ => {
                cache.borrow_mut().remove(key);
                return Err(FsError::new(
                    ErrorCode::Stale,
                    format!("file id {fid:#x} no longer exists"),
                ));
            }
        }
    }
    let path = brick.path_of(fid)?;
    let meta = std::fs::symlink_metadata(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            FsError::new(
                ErrorCode::Stale,
                format!("file id {fid:#x} no longer exists"),
            )
        } else {
            io_err("stat", e)
        }
    })?;
    if meta.is_dir() {
        return Err(FsError::new(ErrorCode::IsDir, "is a directory"));
    }
    if !meta.is_file() {
        return Err(FsError::new(ErrorCode::Invalid, "not a regular file"));
    }
    let direct = match vol.io_mode {
        IoMode::Direct => true,
        IoMode::Buffered => false,
        IoMode::Auto => meta.len() >= vol.direct_min_bytes,
    };
    let buffered = OpenOptions::new()
        .read(true)
        .write(true)
        .buffered_open(&path)
        .await
        .map_err(|e| io_err("open", e))?;
    let dma = if direct {
        match OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(&path)
            .await
        {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(
                    "O_DIRECT open of {} failed ({e}); using the page cache",
                    path.display()
                );
                None
            }
        }
    } else {
        None
    };
    if brick.generation() != generation {
        // Something was unlinked or renamed over while we opened: the path may now name
        // another file. Resolve again rather than risk writing into the wrong one.
        return Err(FsError::new(
            ErrorCode::Unavailable,
            "namespace changed while opening; retry",
        ));
    }
    let f = Rc::new(OpenFile {
        direct_later: Cell::new(vol.io_mode == IoMode::Auto && dma.is_none() && !direct),
        direct_min_bytes: vol.direct_min_bytes,
        dma: RefCell::new(dma.map(Rc::new)),
        buffered,
        generation: Cell::new(generation),
        brick_id: brick.identity.brick_id.clone(),
    });
    cache.borrow_mut().insert(key, f.clone());
    Ok(f)
}

fn aligned(offset: u64, len: usize) -> bool {
    offset.is_multiple_of(DIRECT_IO_ALIGN_BYTES)
        && (len as u64).is_multiple_of(DIRECT_IO_ALIGN_BYTES)
}

/// The file's O_DIRECT descriptor, if it is served with one.
pub(crate) fn direct(f: &OpenFile) -> Option<Rc<DmaFile>> {
    f.dma.borrow().clone()
}

/// Reads into `out` (appending); short at end of file.
pub(crate) async fn read(f: &OpenFile, offset: u64, len: u32, out: &mut Vec<u8>) -> FsResult<()> {
    if len == 0 {
        return Ok(());
    }
    let dma = f.dma.borrow().clone();
    let data = match dma {
        Some(dma) => dma.read_at(offset, len as usize).await,
        None => f.buffered.read_at(offset, len as usize).await,
    }
    .map_err(|e| io_err("read", e))?;
    out.extend_from_slice(&data);
    Ok(())
}

/// The O_DIRECT descriptor a write of `len` bytes at `offset` should use, opening it now for a
/// file that qualifies (see `direct_later`). The descriptor is opened through
/// /proc/self/fd of the buffered one, so it is the same inode even if the file was renamed.
async fn direct_for_write(f: &OpenFile, offset: u64, len: usize) -> Option<Rc<DmaFile>> {
    let current = f.dma.borrow().clone();
    if current.is_some() || !f.direct_later.get() {
        return current;
    }
    if (len as u64) < f.direct_min_bytes || !aligned(offset, len) {
        return None;
    }
    f.direct_later.set(false); // one attempt; concurrent writes meanwhile use the page cache
    let path = format!("/proc/self/fd/{}", f.buffered.as_raw_fd());
    match OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(&path)
        .await
    {
        Ok(dma) => {
            let dma = Rc::new(dma);
            *f.dma.borrow_mut() = Some(dma.clone());
            Some(dma)
        }
        Err(e) => {
            tracing::warn!("O_DIRECT reopen of {path} failed ({e}); using the page cache");
            None
        }
    }
}

/// Writes `data` at `offset`. `prepared`, when given, holds the same bytes as `data` in an
/// aligned buffer: an O_DIRECT write then uses it as it is instead of copying `data`.
pub(crate) async fn write(
    f: &OpenFile,
    offset: u64,
    data: &[u8],
    prepared: Option<DmaBuffer>,
    durable: bool,
) -> FsResult<u32> {
    let dma = direct_for_write(f, offset, data.len()).await;
    let written = match &dma {
        Some(dma) if aligned(offset, data.len()) && !data.is_empty() => {
            let buf = match prepared {
                Some(buf) if buf.len() == data.len() => {
                    debug_assert!(
                        buf.as_bytes() == data,
                        "prepared bytes differ from the data"
                    );
                    buf
                }
                _ => {
                    let mut buf = dma.alloc_dma_buffer(data.len());
                    buf.as_bytes_mut().copy_from_slice(data);
                    buf
                }
            };
            dma.write_at(buf, offset)
                .await
                .map_err(|e| io_err("write", e))?
        }
        _ if data.is_empty() => 0,
        _ => f
            .buffered
            .write_at(data.to_vec(), offset)
            .await
            .map_err(|e| io_err("write", e))?,
    };
    if durable {
        sync(f).await?;
    }
    Ok(written as u32)
}

/// fdatasync on either descriptor flushes the inode's dirty pages and its O_DIRECT writes.
pub(crate) async fn sync(f: &OpenFile) -> FsResult<()> {
    let dma = f.dma.borrow().clone();
    match dma {
        Some(dma) => dma.fdatasync().await,
        None => f.buffered.fdatasync().await,
    }
    .map_err(|e| io_err("fdatasync", e))
}
