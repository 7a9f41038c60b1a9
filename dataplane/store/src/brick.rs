//! A brick: `<brick>/data/` mirrors the volume namespace as plain files (recoverable with `cp`),
//! `<brick>/.brickd/` holds the identity and the namespace index.
//!
//! Namespace operations are synchronous syscalls made under the brick's index lock, so the
//! file-system change and its index record are one step for every core. Data I/O (read, write,
//! fsync) does not come through here: the dataplane does it with io_uring on the owning core.

use crate::index::{Index, ReplayReport};
use brick_tuning::{NAME_BYTES_MAX, PATH_DEPTH_MAX};
use brick_wire::{
    Attr, DirEntry, DirPage, ErrorCode, FileId, FileKind, SetAttr, StatFs, Time, TimeSet,
    ROOT_FILE_ID,
};
use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

pub const FORMAT_VERSION: u32 = 1;
pub use brick_wire::{pg_of, FID_PG_SHIFT};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsError {
    pub code: ErrorCode,
    pub message: String,
}

impl FsError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> FsError {
        FsError {
            code,
            message: message.into(),
        }
    }
    fn io(what: &str, err: io::Error) -> FsError {
        FsError::new(ErrorCode::from_io(&err), format!("{what}: {err}"))
    }
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for FsError {}

pub type FsResult<T> = Result<T, FsError>;

/// FNV-1a: stable across processes and versions, which placement and cookies depend on.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Readdir cursor of an entry: its name hash, never 0 (0 means "from the start").
pub fn dir_cookie(name: &str) -> u64 {
    fnv1a(&[name.as_bytes()]).max(1)
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BrickIdentity {
    pub format: u32,
    pub brick_id: String,
    pub volume: String,
}

pub struct Brick {
    pub root: PathBuf,
    pub data: PathBuf,
    pub identity: BrickIdentity,
    pub replay: ReplayReport,
    index: Mutex<Index>,
    /// Held by the one `sync_all` running; the index lock is not held across its fsyncs.
    syncing: Mutex<()>,
    pg_count: u32,
    /// Bumped whenever a file id stops naming the file it named (unlink, rename over it), so
    /// per-core open-file caches know to revalidate without taking the index lock per I/O.
    generation: AtomicU64,
    /// The machine restarted since the brick was last opened and the daemon had not stopped
    /// cleanly: writes it had not synced (data in the page cache, log records) may be lost.
    power_lost: bool,
    /// Names given to files moved into the trash by this process.
    trashed: AtomicU64,
    /// Files in the trash, kept as limbo (about: `empty_trash`).
    trash_count: AtomicUsize,
    /// Files a namespace repair created empty (`reconcile_dir`): their data PGs must heal them
    /// (`take_lost`). Mirrored in `.brickd/lost.log` until taken.
    lost: Mutex<BTreeSet<FileId>>,
    lost_count: AtomicUsize,
}

fn meta_dir(root: &Path) -> PathBuf {
    root.join(".brickd")
}

const CLEAN_SHUTDOWN_MARK: &str = "clean-shutdown";
/// Under `.brickd/`: files removed from the volume whose blocks are not freed yet.
const TRASH_DIR: &str = "trash";

/// Files moved out of the volume under the index lock, freed by `empty` once it is released:
/// the kernel frees a file's blocks in its last unlink (0.4 s for 2 GiB on this VM's ext4 with
/// `discard`, seconds under load), and cores take the lock for lookups, getattr and readdir.
#[derive(Default)]
struct Trash(Vec<PathBuf>);

impl Trash {
    /// Frees what was moved here. A file that cannot be removed now stays in the trash until
    /// the brick is opened again.
    fn empty(self) {
        for path in self.0 {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Files in limbo are named by id; others in the trash are being freed.
const LIMBO_PREFIX: &str = "f-";
const TEMP_PREFIX: &str = "t-";
/// Under `.brickd/`: ids of files a repair created empty (12-byte records: id, crc32c).
const LOST_LOG: &str = "lost.log";
const LOST_RECORD_BYTES: usize = 12;

fn is_limbo_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(LIMBO_PREFIX))
}

fn limbo_fid(name: &std::ffi::OsStr) -> Option<FileId> {
    let hex = name.to_str()?.strip_prefix(LIMBO_PREFIX)?;
    u64::from_str_radix(hex, 16).ok()
}

/// Creates `.brickd/trash/` if missing, frees what a crash left being freed (`t-*`), and
/// counts what is in limbo (kept across restarts: a repair may still bring it back).
fn open_trash(meta: &Path) -> FsResult<usize> {
    let dir = meta.join(TRASH_DIR);
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(FsError::io("creating the trash", e)),
    }
    let mut limbo = 0;
    for entry in fs::read_dir(&dir).map_err(|e| FsError::io("reading the trash", e))? {
        let entry = entry.map_err(|e| FsError::io("reading the trash", e))?;
        if limbo_fid(&entry.file_name()).is_some() {
            limbo += 1;
        } else {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(limbo)
}

fn lost_record(fid: FileId) -> [u8; LOST_RECORD_BYTES] {
    let mut rec = [0u8; LOST_RECORD_BYTES];
    rec[..8].copy_from_slice(&fid.to_le_bytes());
    let crc = crc32c::crc32c(&rec[..8]);
    rec[8..].copy_from_slice(&crc.to_le_bytes());
    rec
}

/// The lost files a log holds; a torn or damaged record is skipped (the repair that wrote
/// it had not finished: it runs again).
fn read_lost(path: &Path) -> FsResult<BTreeSet<FileId>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(FsError::io("lost files", e)),
    };
    Ok(bytes
        .chunks_exact(LOST_RECORD_BYTES)
        .filter_map(|rec| {
            let fid = u64::from_le_bytes(rec[..8].try_into().ok()?);
            let crc = u32::from_le_bytes(rec[8..].try_into().ok()?);
            (crc32c::crc32c(&rec[..8]) == crc).then_some(fid)
        })
        .collect())
}

fn append_lost(path: &Path, fid: FileId) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(&lost_record(fid))
}

fn write_lost(path: &Path, lost: &BTreeSet<FileId>) -> io::Result<()> {
    let tmp = path.with_extension("log.tmp");
    let bytes: Vec<u8> = lost.iter().flat_map(|&f| lost_record(f)).collect();
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// A descriptor to set the size of the regular file at `path` (never through a symlink).
fn open_for_resize(path: &Path, meta: &fs::Metadata) -> FsResult<fs::File> {
    if meta.is_dir() {
        return Err(FsError::new(
            ErrorCode::IsDir,
            "cannot set the size of a directory",
        ));
    }
    if !meta.is_file() {
        return Err(FsError::new(
            ErrorCode::Invalid,
            "only regular files have a size to set",
        ));
    }
    fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| FsError::io("truncate", e))
}
const BOOT_ID_FILE: &str = "boot-id";

/// The kernel's id of this boot, new at every start of the machine.
fn current_boot_id() -> Option<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string()).filter(|id| !id.is_empty())
}

/// Records this boot's id in `meta`; returns whether a different one was recorded before (the
/// machine restarted since the brick was last opened). A brick seen for the first time, or a
/// kernel without boot ids, counts as not restarted.
fn record_boot(meta: &Path) -> FsResult<bool> {
    let Some(now) = current_boot_id() else {
        return Ok(false);
    };
    let path = meta.join(BOOT_ID_FILE);
    let before = fs::read_to_string(&path).ok();
    if before.as_deref().map(str::trim) == Some(now.as_str()) {
        return Ok(false);
    }
    let tmp = meta.join(format!("{BOOT_ID_FILE}.tmp"));
    fs::write(&tmp, format!("{now}\n")).map_err(|e| FsError::io("boot id", e))?;
    fs::rename(&tmp, &path).map_err(|e| FsError::io("boot id", e))?;
    fs::File::open(meta)
        .and_then(|d| d.sync_all())
        .map_err(|e| FsError::io("boot id", e))?;
    Ok(before.is_some())
}

impl Brick {
    /// Opens (formatting on first use) the brick at `root` for `volume`.
    pub fn open(root: &Path, volume: &str, pg_count: u32) -> FsResult<Brick> {
        assert!(pg_count > 0 && pg_count < (1 << 16));
        let data = root.join("data");
        let meta = meta_dir(root);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&data)
            .map_err(|e| FsError::io("creating data dir", e))?;
        // Metadata is the daemon's alone: the process runs with umask 0, so say so explicitly.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&meta)
            .map_err(|e| FsError::io("creating .brickd dir", e))?;
        let identity = load_or_create_identity(&meta, volume)?;
        if identity.volume != volume {
            return Err(FsError::new(
                ErrorCode::Invalid,
                format!(
                    "brick {} belongs to volume {:?}, not {volume:?}",
                    root.display(),
                    identity.volume
                ),
            ));
        }
        write_probe_file(&meta)?;
        let clean_mark = meta.join(CLEAN_SHUTDOWN_MARK).exists();
        let trash_count = open_trash(&meta)?;
        let lost = read_lost(&meta.join(LOST_LOG))?;
        let rebooted = record_boot(&meta)?;
        let (index, replay) =
            Index::open(&meta.join("index.log")).map_err(|e| FsError::io("opening index", e))?;
        Ok(Brick {
            root: root.to_path_buf(),
            data,
            identity,
            replay,
            index: Mutex::new(index),
            syncing: Mutex::new(()),
            pg_count,
            generation: AtomicU64::new(1),
            power_lost: rebooted && !clean_mark,
            trashed: AtomicU64::new(0),
            trash_count: AtomicUsize::new(trash_count),
            lost_count: AtomicUsize::new(lost.len()),
            lost: Mutex::new(lost),
        })
    }

    /// Whether the machine lost power (or otherwise restarted without the daemon stopping
    /// cleanly) since this brick was last open: what was not synced may be gone, so logs of
    /// what was written cannot be trusted to be complete.
    pub fn power_lost(&self) -> bool {
        self.power_lost
    }

    /// Whether `root` already holds a brick (it was opened before, by any process).
    pub fn is_formatted(root: &Path) -> bool {
        meta_dir(root).is_dir()
    }

    /// Records that the daemon stopped cleanly after its last write to this brick: on the next
    /// start its copy counts as complete (a crashed member's copy may have missed writes).
    pub fn mark_clean_shutdown(&self) -> FsResult<()> {
        let path = meta_dir(&self.root).join(CLEAN_SHUTDOWN_MARK);
        fs::write(&path, b"clean\n").map_err(|e| FsError::io("clean-shutdown mark", e))?;
        fs::File::open(meta_dir(&self.root))
            .and_then(|d| d.sync_all())
            .map_err(|e| FsError::io("clean-shutdown mark", e))
    }

    /// Whether the last run ended with `mark_clean_shutdown`; removes the mark (durably), so a
    /// crash of this run is not mistaken for a clean stop.
    pub fn take_clean_shutdown(&self) -> bool {
        let path = meta_dir(&self.root).join(CLEAN_SHUTDOWN_MARK);
        if fs::remove_file(&path).is_err() {
            return false;
        }
        fs::File::open(meta_dir(&self.root))
            .and_then(|d| d.sync_all())
            .is_ok()
    }

    /// A small non-empty file every core opens with O_DIRECT first (see docs/ARCHITECTURE.md,
    /// glommio's io-poll probe).
    pub fn probe_path(&self) -> PathBuf {
        meta_dir(&self.root).join("probe")
    }

    pub fn pg_count(&self) -> u32 {
        self.pg_count
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn path_in(&self, idx: &Index, fid: FileId) -> FsResult<PathBuf> {
        let mut names = Vec::new();
        let mut at = fid;
        while at != ROOT_FILE_ID {
            let loc = idx.location(at).ok_or_else(|| {
                FsError::new(
                    ErrorCode::Stale,
                    format!("file id {fid:#x} is not known to this brick"),
                )
            })?;
            names.push(loc.name.as_str());
            at = loc.parent;
            if names.len() > PATH_DEPTH_MAX {
                return Err(FsError::new(
                    ErrorCode::Io,
                    format!("file id {fid:#x}: parent chain too deep"),
                ));
            }
        }
        let mut path = self.data.clone();
        for name in names.iter().rev() {
            path.push(name);
        }
        Ok(path)
    }

    pub fn path_of(&self, fid: FileId) -> FsResult<PathBuf> {
        self.path_in(&self.lock(), fid)
    }

    fn mint_fid(&self, idx: &Index, parent: FileId, name: &str) -> FileId {
        let pg = fnv1a(&[&parent.to_le_bytes(), name.as_bytes()]) % self.pg_count as u64;
        loop {
            let low = rand::random::<u64>() & ((1u64 << FID_PG_SHIFT) - 1);
            let fid = (pg << FID_PG_SHIFT) | low;
            if fid > ROOT_FILE_ID && !idx.contains(fid) {
                return fid;
            }
        }
    }

    /// The id of (parent, name) if it exists on disk; ids are minted for entries that appear
    /// on disk without one (copied in by hand, or created just before a crash).
    fn child_in(
        &self,
        idx: &mut Index,
        parent: FileId,
        name: &str,
    ) -> FsResult<(FileId, fs::Metadata)> {
        self.child_as(idx, parent, name, None)
    }

    /// Like `child_in`, but an entry without an id gets `wanted` if it is usable: replicas
    /// give a new entry the id its primary minted.
    fn child_as(
        &self,
        idx: &mut Index,
        parent: FileId,
        name: &str,
        wanted: Option<FileId>,
    ) -> FsResult<(FileId, fs::Metadata)> {
        let path = self.path_in(idx, parent)?.join(name);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                if e.kind() == io::ErrorKind::NotFound {
                    if let Some(stale) = idx.child(parent, name) {
                        idx.unlink(stale).map_err(|e| FsError::io("index", e))?;
                    }
                }
                return Err(FsError::io(&format!("lookup {name:?}"), e));
            }
        };
        if let Some(fid) = idx.child(parent, name) {
            return Ok((fid, meta));
        }
        let fid = match wanted {
            Some(w) if w > ROOT_FILE_ID && pg_of(w) < self.pg_count && !idx.contains(w) => w,
            _ => self.mint_fid(idx, parent, name),
        };
        idx.link(fid, parent, name)
            .map_err(|e| FsError::io("index", e))?;
        Ok((fid, meta))
    }

    fn parent_dir(&self, idx: &Index, parent: FileId) -> FsResult<PathBuf> {
        let path = self.path_in(idx, parent)?;
        let meta = fs::symlink_metadata(&path).map_err(|e| FsError::io("parent", e))?;
        if !meta.is_dir() {
            return Err(FsError::new(
                ErrorCode::NotDir,
                format!("{} is not a directory", path.display()),
            ));
        }
        Ok(path)
    }

    pub fn lookup(&self, parent: FileId, name: &str) -> FsResult<Attr> {
        let mut idx = self.lock();
        self.parent_dir(&idx, parent)?;
        let (fid, meta) = self.child_in(&mut idx, parent, name)?;
        Ok(attr_of(fid, &meta))
    }

    pub fn getattr(&self, fid: FileId) -> FsResult<Attr> {
        let path = self.path_of(fid)?;
        let meta = fs::symlink_metadata(&path).map_err(|e| stale_if_missing(fid, e))?;
        Ok(attr_of(fid, &meta))
    }

    /// Under the namespace lock, so that a concurrent rename cannot swap another file in
    /// between resolving the id and changing the file; never follows a symlink. A new size is
    /// set through a descriptor opened under the lock but outside it: shrinking a large file
    /// frees its blocks in that call, and cores take the lock for lookups.
    pub fn setattr(&self, fid: FileId, set: &SetAttr) -> FsResult<Attr> {
        let resize = {
            let idx = self.lock();
            let path = self.path_in(&idx, fid)?;
            let meta = fs::symlink_metadata(&path).map_err(|e| stale_if_missing(fid, e))?;
            let is_symlink = meta.file_type().is_symlink();
            if let Some(mode) = set.mode {
                if !is_symlink {
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))
                        .map_err(|e| FsError::io("chmod", e))?;
                }
            }
            if set.uid.is_some() || set.gid.is_some() {
                std::os::unix::fs::lchown(&path, set.uid, set.gid)
                    .map_err(|e| FsError::io("chown", e))?;
            }
            match set.size {
                Some(size) => Some((open_for_resize(&path, &meta)?, size)),
                None => None,
            }
        };
        if let Some((f, size)) = resize {
            f.set_len(size).map_err(|e| FsError::io("truncate", e))?;
        }
        // After the size: a truncate sets the modification time itself.
        if set.atime != TimeSet::Keep || set.mtime != TimeSet::Keep {
            let idx = self.lock();
            set_times(&self.path_in(&idx, fid)?, set.atime, set.mtime)?;
        }
        self.getattr(fid)
    }

    pub fn create(&self, parent: FileId, name: &str, mode: u32, exclusive: bool) -> FsResult<Attr> {
        self.create_as(parent, name, mode, exclusive, None)
    }

    /// `create` giving a new file the id `fid` (minted by the primary copy), if still free.
    pub fn create_as(
        &self,
        parent: FileId,
        name: &str,
        mode: u32,
        exclusive: bool,
        fid: Option<FileId>,
    ) -> FsResult<Attr> {
        let wanted = fid;
        let mut idx = self.lock();
        let path = self.parent_dir(&idx, parent)?.join(name);
        let mut opts = fs::OpenOptions::new();
        // O_NOFOLLOW: a symlink planted under this name must not make us create or open a
        // file somewhere else on the host.
        opts.write(true)
            .mode(mode & 0o7777)
            .custom_flags(libc::O_NOFOLLOW);
        if exclusive {
            opts.create_new(true);
        } else {
            opts.create(true);
        }
        opts.open(&path)
            .map_err(|e| FsError::io(&format!("create {name:?}"), e))?;
        idx.mark_dir_unsynced(parent);
        let (fid, meta) = self.child_as(&mut idx, parent, name, wanted)?;
        if !meta.is_file() {
            return Err(FsError::new(
                ErrorCode::IsDir,
                format!("{name:?} exists and is not a file"),
            ));
        }
        Ok(attr_of(fid, &meta))
    }

    pub fn mkdir(&self, parent: FileId, name: &str, mode: u32) -> FsResult<Attr> {
        self.mkdir_as(parent, name, mode, None)
    }

    pub fn mkdir_as(
        &self,
        parent: FileId,
        name: &str,
        mode: u32,
        wanted: Option<FileId>,
    ) -> FsResult<Attr> {
        let mut idx = self.lock();
        let path = self.parent_dir(&idx, parent)?.join(name);
        fs::DirBuilder::new()
            .mode(mode & 0o7777)
            .create(&path)
            .map_err(|e| FsError::io(&format!("mkdir {name:?}"), e))?;
        idx.mark_dir_unsynced(parent);
        let (fid, meta) = self.child_as(&mut idx, parent, name, wanted)?;
        Ok(attr_of(fid, &meta))
    }

    pub fn symlink(&self, parent: FileId, name: &str, target: &str) -> FsResult<Attr> {
        self.symlink_as(parent, name, target, None)
    }

    pub fn symlink_as(
        &self,
        parent: FileId,
        name: &str,
        target: &str,
        wanted: Option<FileId>,
    ) -> FsResult<Attr> {
        let mut idx = self.lock();
        let path = self.parent_dir(&idx, parent)?.join(name);
        std::os::unix::fs::symlink(target, &path)
            .map_err(|e| FsError::io(&format!("symlink {name:?}"), e))?;
        idx.mark_dir_unsynced(parent);
        let (fid, meta) = self.child_as(&mut idx, parent, name, wanted)?;
        Ok(attr_of(fid, &meta))
    }

    pub fn readlink(&self, fid: FileId) -> FsResult<String> {
        let path = self.path_of(fid)?;
        let target = fs::read_link(&path).map_err(|e| FsError::io("readlink", e))?;
        target
            .into_os_string()
            .into_string()
            .map_err(|_| FsError::new(ErrorCode::Io, "symlink target is not UTF-8"))
    }

    /// Removes a file or symlink (`dir` false) or an empty directory (`dir` true). A file
    /// leaves the volume under the lock (moved to the trash) and its blocks are freed after
    /// it (`Trash`).
    pub fn remove(&self, parent: FileId, name: &str, dir: bool) -> FsResult<()> {
        let mut trash = Trash::default();
        {
            let mut idx = self.lock();
            let path = self.parent_dir(&idx, parent)?.join(name);
            let result = if dir {
                fs::remove_dir(&path)
            } else {
                self.discard(&path, idx.child(parent, name), &mut trash)
            };
            result.map_err(|e| FsError::io(&format!("remove {name:?}"), e))?;
            idx.mark_dir_unsynced(parent);
            if let Some(fid) = idx.child(parent, name) {
                idx.unlink(fid).map_err(|e| FsError::io("index", e))?;
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
        }
        trash.empty();
        Ok(())
    }

    /// Moves the file at `path` out of the volume. A regular file with an id goes to limbo
    /// (`.brickd/trash/` under its id, data kept) until `empty_trash`: a namespace repair may
    /// still bring it back whole. Any other is freed by `Trash::empty` once the index lock is
    /// released. Removed at once if it cannot be moved (another file system).
    fn discard(&self, path: &Path, fid: Option<FileId>, trash: &mut Trash) -> io::Result<()> {
        let meta = fs::symlink_metadata(path)?;
        if meta.is_dir() {
            // An unlink of a directory fails, as unlink(2) does (a rename would not).
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        let to = match fid.filter(|_| meta.is_file()) {
            Some(fid) => self.limbo_name(fid),
            None => self.trash_name(),
        };
        match fs::rename(path, &to) {
            Ok(()) => {
                if fid.is_some() && to.starts_with(self.limbo_dir()) && is_limbo_name(&to) {
                    self.trash_count.fetch_add(1, Ordering::AcqRel);
                } else {
                    trash.0.push(to);
                }
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => fs::remove_file(path),
            Err(e) => Err(e),
        }
    }

    /// Keeps the file at `path` (id `fid`) in limbo under its id before a rename replaces it:
    /// its blocks are not freed under the lock, and a repair that undoes the rename can bring
    /// it back. Nothing is kept if it is no regular file or cannot be linked.
    fn keep_replaced(&self, path: &Path, fid: Option<FileId>) {
        let Some(fid) = fid else { return };
        if !fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
            return;
        }
        let to = self.limbo_name(fid);
        let _ = fs::remove_file(&to);
        if fs::hard_link(path, &to).is_ok() {
            self.trash_count.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn limbo_dir(&self) -> PathBuf {
        meta_dir(&self.root).join(TRASH_DIR)
    }

    fn limbo_name(&self, fid: FileId) -> PathBuf {
        self.limbo_dir().join(format!("{LIMBO_PREFIX}{fid:016x}"))
    }

    fn trash_name(&self) -> PathBuf {
        let n = self.trashed.fetch_add(1, Ordering::Relaxed);
        self.limbo_dir()
            .join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()))
    }

    /// Where file `fid`, removed from the namespace, keeps its data while it is in limbo.
    pub fn limbo_path(&self, fid: FileId) -> Option<PathBuf> {
        let path = self.limbo_name(fid);
        path.exists().then_some(path)
    }

    /// The attributes of file `fid` in limbo.
    pub fn limbo_attr(&self, fid: FileId) -> FsResult<Attr> {
        let path = self.limbo_path(fid).ok_or_else(|| gone(fid))?;
        let meta = fs::symlink_metadata(&path).map_err(|e| stale_if_missing(fid, e))?;
        Ok(attr_of(fid, &meta))
    }

    /// Bytes of file `fid` in limbo (a heal copies what the PG holds, removed or not).
    pub fn read_limbo(&self, fid: FileId, offset: u64, len: u32) -> FsResult<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let path = self.limbo_path(fid).ok_or_else(|| gone(fid))?;
        let f = fs::File::open(&path).map_err(|e| stale_if_missing(fid, e))?;
        let mut buf = vec![0u8; len as usize];
        let mut got = 0;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FsError::io("read limbo", e)),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// A heal's copy into file `fid` in limbo (removed here by a change that may be undone):
    /// its data must match the others' if it comes back. Nothing if it is not in limbo.
    pub fn write_limbo(&self, fid: FileId, offset: u64, data: &[u8]) -> FsResult<()> {
        use std::os::unix::fs::FileExt;
        let Some(path) = self.limbo_path(fid) else {
            return Ok(());
        };
        let f = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| FsError::io("write limbo", e))?;
        f.write_all_at(data, offset)
            .map_err(|e| FsError::io("write limbo", e))
    }

    /// A heal's copy of attributes onto file `fid` in limbo (see `write_limbo`).
    pub fn setattr_limbo(&self, fid: FileId, set: &SetAttr) -> FsResult<()> {
        let Some(path) = self.limbo_path(fid) else {
            return Ok(());
        };
        if let Some(mode) = set.mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| FsError::io("chmod limbo", e))?;
        }
        if let Some(size) = set.size {
            let meta = fs::symlink_metadata(&path).map_err(|e| FsError::io("limbo", e))?;
            open_for_resize(&path, &meta)?
                .set_len(size)
                .map_err(|e| FsError::io("truncate limbo", e))?;
        }
        if set.atime != TimeSet::Keep || set.mtime != TimeSet::Keep {
            set_times(&path, set.atime, set.mtime)?;
        }
        Ok(())
    }

    /// Whether anything is in limbo (cheap: no file system access).
    pub fn has_limbo(&self) -> bool {
        self.trash_count.load(Ordering::Acquire) > 0
    }

    /// Frees the files in limbo (all, or those that went there more than `older_than` ago):
    /// once no namespace change of the brick's PG 0 member is in doubt, no repair can bring
    /// them back. Without the index lock: the kernel frees their blocks in these unlinks.
    /// Returns how many were freed.
    pub fn empty_trash(&self, older_than: Option<std::time::Duration>) -> usize {
        let Ok(entries) = fs::read_dir(self.limbo_dir()) else {
            return 0;
        };
        let now = std::time::SystemTime::now();
        let mut freed = 0;
        let mut kept = 0;
        for entry in entries.flatten() {
            let old_enough = older_than.is_none_or(|age| {
                entry
                    .metadata()
                    .ok()
                    .map(|m| {
                        std::time::UNIX_EPOCH
                            + std::time::Duration::from_secs(m.ctime().max(0) as u64)
                    })
                    .and_then(|changed| now.duration_since(changed).ok())
                    .is_some_and(|d| d >= age)
            });
            if old_enough && fs::remove_file(entry.path()).is_ok() {
                freed += 1;
            } else {
                kept += 1;
            }
        }
        self.trash_count.store(kept, Ordering::Release);
        if freed > 0 {
            // Descriptors the cores hold on these files are released by a sweep that runs when
            // the generation moves: without this, files freed after the last sweep stayed open
            // (and their blocks allocated) until the next unlink.
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        freed
    }

    /// Takes the files of placement group `pg` that a namespace repair created empty here:
    /// the caller (that PG's member) makes sure its heal brings their data back.
    pub fn take_lost(&self, pg: u32) -> Vec<FileId> {
        if self.lost_count.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        let taken: Vec<FileId> = lost.iter().copied().filter(|&f| pg_of(f) == pg).collect();
        if taken.is_empty() {
            return taken;
        }
        for f in &taken {
            lost.remove(f);
        }
        self.lost_count.store(lost.len(), Ordering::Release);
        if let Err(e) = write_lost(&meta_dir(&self.root).join(LOST_LOG), &lost) {
            // Kept in memory: lost again only if this process dies before the heal.
            let _ = e;
        }
        taken
    }

    /// Records that a repair created file `fid` empty here (before it is created).
    fn record_lost(&self, fid: FileId) -> FsResult<()> {
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        if lost.insert(fid) {
            append_lost(&meta_dir(&self.root).join(LOST_LOG), fid)
                .map_err(|e| FsError::io("lost files", e))?;
            self.lost_count.store(lost.len(), Ordering::Release);
        }
        Ok(())
    }

    pub fn rename(
        &self,
        src_parent: FileId,
        src_name: &str,
        dst_parent: FileId,
        dst_name: &str,
        replace: bool,
    ) -> FsResult<()> {
        let mut idx = self.lock();
        let src = self.parent_dir(&idx, src_parent)?.join(src_name);
        let dst = self.parent_dir(&idx, dst_parent)?.join(dst_name);
        let (fid, _) = self.child_in(&mut idx, src_parent, src_name)?;
        // Under the index lock every namespace change of the brick waits, so the target
        // cannot appear between this check and the rename.
        if !replace && src != dst && fs::symlink_metadata(&dst).is_ok() {
            return Err(FsError::new(
                ErrorCode::Exists,
                format!("rename target {dst_name:?} exists"),
            ));
        }
        if src != dst {
            self.keep_replaced(&dst, idx.child(dst_parent, dst_name));
        }
        fs::rename(&src, &dst)
            .map_err(|e| FsError::io(&format!("rename {src_name:?} to {dst_name:?}"), e))?;
        idx.mark_dir_unsynced(src_parent);
        idx.mark_dir_unsynced(dst_parent);
        if let Some(replaced) = idx.child(dst_parent, dst_name) {
            if replaced != fid {
                idx.unlink(replaced).map_err(|e| FsError::io("index", e))?;
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
        }
        idx.link(fid, dst_parent, dst_name)
            .map_err(|e| FsError::io("index", e))?;
        Ok(())
    }

    /// Entries in cookie (name hash) order after `cookie`; stable under concurrent changes.
    pub fn readdir(&self, fid: FileId, cookie: u64, max_entries: u32) -> FsResult<DirPage> {
        let mut idx = self.lock();
        let path = self.parent_dir(&idx, fid)?;
        let mut names: Vec<(u64, String)> = Vec::new();
        for entry in fs::read_dir(&path).map_err(|e| FsError::io("readdir", e))? {
            let entry = entry.map_err(|e| FsError::io("readdir", e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue; // not representable on the wire; see docs/wire.md (names are UTF-8)
            };
            if name.len() > NAME_BYTES_MAX {
                continue;
            }
            let c = dir_cookie(&name);
            if c > cookie {
                names.push((c, name));
            }
        }
        names.sort_unstable();
        let eof = names.len() <= max_entries as usize;
        let mut entries = Vec::with_capacity(names.len().min(max_entries as usize));
        for (c, name) in names.into_iter().take(max_entries as usize) {
            match self.child_in(&mut idx, fid, &name) {
                Ok((child, meta)) => entries.push(DirEntry {
                    name,
                    cookie: c,
                    attr: attr_of(child, &meta),
                }),
                Err(e) if e.code == ErrorCode::NotFound => continue, // removed meanwhile
                Err(e) => return Err(e),
            }
        }
        Ok(DirPage { entries, eof })
    }

    pub fn statfs(&self) -> FsResult<StatFs> {
        let c = CString::new(self.data.as_os_str().as_bytes())
            .map_err(|_| FsError::new(ErrorCode::Invalid, "path"))?;
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: c is a valid NUL-terminated path and s a properly sized out-parameter.
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return Err(FsError::io("statfs", io::Error::last_os_error()));
        }
        let frsize = s.f_frsize as u64;
        Ok(StatFs {
            total_bytes: s.f_blocks as u64 * frsize,
            free_bytes: s.f_bfree as u64 * frsize,
            avail_bytes: s.f_bavail as u64 * frsize,
            total_files: s.f_files as u64,
            free_files: s.f_ffree as u64,
            block_bytes: s.f_bsize as u32,
            name_bytes_max: NAME_BYTES_MAX as u32,
        })
    }

    /// Makes `fid` reachable after a crash, with the id it has now. Every directory whose
    /// entries changed is fsynced before the index log, so the index is never durable ahead of
    /// the directory state it describes (a rename recorded but lost would otherwise point an id
    /// at the old file). On ext4 and XFS one journal commit covers most of these fsyncs. Done
    /// under the namespace lock so a concurrent caller cannot return before the fsync it
    /// relies on.
    pub fn sync_namespace(&self, _fid: FileId) -> FsResult<()> {
        self.sync_all()
    }

    /// Makes every pending namespace change durable: changed directories first, then the index.
    ///
    /// The fsyncs run without the index lock: under heavy writeback one can take seconds, and
    /// every namespace change of the brick would wait for it. Syncers take turns instead, so a
    /// caller that finds nothing left to sync returns only after the syncer before it (which
    /// took its changes) has finished.
    pub fn sync_all(&self) -> FsResult<()> {
        let _turn = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        let dirs: Vec<(FileId, PathBuf)> = {
            let mut idx = self.lock();
            let drained = idx.drain_unsynced_dirs();
            // A directory removed since has no path; its parent carries the change.
            drained
                .into_iter()
                .filter_map(|d| self.path_in(&idx, d).ok().map(|p| (d, p)))
                .collect()
        };
        for (dir, path) in &dirs {
            if let Err(e) = self.sync_dir(*dir, path) {
                let mut idx = self.lock();
                dirs.iter().for_each(|(d, _)| idx.mark_dir_unsynced(*d));
                return Err(FsError::io("dir sync", e));
            }
        }
        let log = self.lock().take_sync_handle();
        let log = log.map_err(|e| FsError::io("index sync", e))?;
        if let Some(log) = log {
            if let Err(e) = log.sync_data() {
                self.lock().mark_log_unsynced();
                return Err(FsError::io("index sync", e));
            }
        }
        Ok(())
    }

    /// fsyncs the directory `dir`, found at `path` a moment ago or, if it moved since, where
    /// the index says it is now.
    fn sync_dir(&self, dir: FileId, path: &Path) -> std::io::Result<()> {
        match fs::File::open(path) {
            Ok(d) => d.sync_all(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let now = {
                    let idx = self.lock();
                    self.path_in(&idx, dir)
                };
                match now {
                    Ok(p) => fs::File::open(p).and_then(|d| d.sync_all()),
                    Err(_) => Ok(()), // removed: its parent carries the change
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Directories with entry changes not yet fsynced.
    pub fn unsynced_dir_count(&self) -> usize {
        self.lock().unsynced_dir_count()
    }

    pub fn file_count(&self) -> usize {
        self.lock().len()
    }

    /// A file under the brick's private metadata directory (`.brickd/`).
    pub fn meta_path(&self, name: &str) -> PathBuf {
        meta_dir(&self.root).join(name)
    }

    /// Every entry of directory `fid` with its id, sorted by name: what a heal's namespace
    /// catch-up makes the same directory on another replica hold.
    pub fn dir_listing(&self, fid: FileId) -> FsResult<Vec<HealEntry>> {
        let mut idx = self.lock();
        let path = self.parent_dir(&idx, fid)?;
        let mut out = Vec::new();
        for entry in fs::read_dir(&path).map_err(|e| FsError::io("readdir", e))? {
            let entry = entry.map_err(|e| FsError::io("readdir", e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue; // not representable on the wire (docs/wire.md)
            };
            if name.len() > NAME_BYTES_MAX {
                continue;
            }
            let (child, meta) = match self.child_in(&mut idx, fid, &name) {
                Ok(found) => found,
                Err(e) if e.code == ErrorCode::NotFound => continue,
                Err(e) => return Err(e),
            };
            let attr = attr_of(child, &meta);
            let target = if attr.kind == FileKind::Symlink {
                fs::read_link(path.join(&name))
                    .map_err(|e| FsError::io("readlink", e))?
                    .into_os_string()
                    .into_string()
                    .unwrap_or_default()
            } else {
                String::new()
            };
            out.push(HealEntry {
                name,
                fid: child,
                kind: attr.kind,
                mode: attr.mode & 0o7777,
                target,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// How deep directory `fid` is below the root (parents heal before their children).
    pub fn depth_of(&self, fid: FileId) -> FsResult<usize> {
        let idx = self.lock();
        let path = self.path_in(&idx, fid)?;
        Ok(path.components().count() - self.data.components().count())
    }

    /// Every directory, parents first (a full namespace heal).
    pub fn all_dirs(&self) -> FsResult<Vec<FileId>> {
        let mut out = vec![ROOT_FILE_ID];
        let mut at = 0;
        while at < out.len() {
            let dir = out[at];
            at += 1;
            match self.dir_listing(dir) {
                Ok(entries) => out.extend(
                    entries
                        .iter()
                        .filter(|e| e.kind == FileKind::Dir)
                        .map(|e| e.fid),
                ),
                Err(e) if e.code == ErrorCode::Stale || e.code == ErrorCode::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The ids of every file whose data lives in placement group `pg` (a full heal), those
    /// in limbo too (a repair may bring them back, so their data is the PG's).
    pub fn ids_in_pg(&self, pg: u32) -> Vec<FileId> {
        let mut ids: Vec<FileId> = {
            let idx = self.lock();
            idx.ids().filter(|&f| pg_of(f) == pg).collect()
        };
        if self.has_limbo() {
            if let Ok(entries) = fs::read_dir(self.limbo_dir()) {
                ids.extend(
                    entries
                        .flatten()
                        .filter_map(|e| limbo_fid(&e.file_name()))
                        .filter(|&f| pg_of(f) == pg),
                );
            }
        }
        ids
    }

    /// Frees this brick's copy of placement group `pg`'s data after the PG moved to other
    /// bricks: every regular file of the PG is cut to size 0 (its name stays: the namespace,
    /// PG 0, is on every brick) and its limbo copies are removed. `keep_going` is asked before
    /// each file; the sweep stops when it says no. Returns (files cut, bytes freed).
    pub fn drop_pg_data(&self, pg: u32, keep_going: impl Fn() -> bool) -> (u64, u64) {
        let (mut files, mut bytes) = (0u64, 0u64);
        for fid in self.ids_in_pg(pg) {
            if !keep_going() {
                break;
            }
            if let Some(limbo) = self.limbo_path(fid) {
                if let Ok(meta) = fs::symlink_metadata(&limbo) {
                    if fs::remove_file(&limbo).is_ok() {
                        files += 1;
                        bytes += meta.len();
                    }
                }
            }
            let Ok(path) = self.path_of(fid) else {
                continue;
            };
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.is_file() || meta.len() == 0 && meta.blocks() == 0 {
                continue;
            }
            if let Ok(f) = open_for_resize(&path, &meta) {
                if f.set_len(0).is_ok() {
                    files += 1;
                    bytes += meta.len();
                }
            }
        }
        (files, bytes)
    }

    /// A digest of placement group `pg`'s files here: crc32c over (id, size, crc32c of the
    /// contents) of every regular file with a name, in id order; files modified less than
    /// `skip_recent` ago are left out (and counted). Two copies of a PG are equal when their
    /// digests are.
    pub fn pg_digest(&self, pg: u32, skip_recent: std::time::Duration) -> PgDigest {
        use std::io::Read;
        let mut ids = self.ids_in_pg(pg);
        ids.sort_unstable();
        ids.dedup();
        let now = std::time::SystemTime::now();
        let mut d = PgDigest::default();
        let mut buf = vec![0u8; 1 << 20];
        for fid in ids {
            let Ok(path) = self.path_of(fid) else {
                continue;
            };
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let recent = !skip_recent.is_zero()
                && meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_none_or(|age| age < skip_recent);
            if recent {
                d.skipped += 1;
                continue;
            }
            let mut crc = 0u32;
            let Ok(mut f) = fs::File::open(&path) else {
                continue;
            };
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => crc = crc32c::crc32c_append(crc, &buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let mut rec = [0u8; 20];
            rec[..8].copy_from_slice(&fid.to_le_bytes());
            rec[8..16].copy_from_slice(&meta.len().to_le_bytes());
            rec[16..].copy_from_slice(&crc.to_le_bytes());
            d.digest = crc32c::crc32c_append(d.digest, &rec);
            d.files += 1;
            d.bytes += meta.len();
        }
        d
    }

    /// Bytes of placement group `pg`'s file data on this brick, and its file count (the
    /// allocated size of every regular file of the PG: what a move of the PG copies).
    pub fn pg_usage(&self, pg: u32) -> (u64, u64) {
        let (mut files, mut bytes) = (0u64, 0u64);
        for fid in self.ids_in_pg(pg) {
            let Ok(path) = self.path_of(fid) else {
                continue;
            };
            if let Ok(meta) = fs::symlink_metadata(&path) {
                if meta.is_file() {
                    files += 1;
                    bytes += meta.len();
                }
            }
        }
        (files, bytes)
    }

    /// Makes directory `fid` hold exactly `entries` (a heal target catching up): entries that
    /// differ or are not wanted are removed (with their subtrees), a wanted id that lives
    /// elsewhere on this brick is moved here (a rename it missed), missing ones are created
    /// empty with their ids (their data follows through the data heal). An entry whose id is
    /// in `placed_later` (wanted in a directory reconciled later) is kept for that move, under
    /// a temporary name if its name is wanted here.
    pub fn reconcile_dir(
        &self,
        fid: FileId,
        entries: &[HealEntry],
        placed_later: &std::collections::HashSet<FileId>,
    ) -> FsResult<()> {
        let mut idx = self.lock();
        let dir = self.parent_dir(&idx, fid)?;
        let wanted: std::collections::HashMap<&str, &HealEntry> =
            entries.iter().map(|e| (e.name.as_str(), e)).collect();
        let mut present = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| FsError::io("readdir", e))? {
            let entry = entry.map_err(|e| FsError::io("readdir", e))?;
            if let Ok(name) = entry.file_name().into_string() {
                present.push(name);
            }
        }
        for name in present {
            let (keep, child) = match (
                wanted.get(name.as_str()),
                self.child_in(&mut idx, fid, &name),
            ) {
                (Some(w), Ok((child, meta))) => (
                    child == w.fid && attr_of(child, &meta).kind == w.kind,
                    Some(child),
                ),
                (_, Ok((child, _))) => (false, Some(child)),
                (_, Err(e)) if e.code == ErrorCode::NotFound => continue,
                (_, Err(_)) => (false, None),
            };
            match child {
                _ if keep => {}
                Some(c) if placed_later.contains(&c) && wanted.contains_key(name.as_str()) => {
                    let parked = format!("{HEAL_PARKED_PREFIX}{c:x}");
                    fs::rename(dir.join(&name), dir.join(&parked))
                        .map_err(|e| FsError::io("heal park", e))?;
                    idx.link(c, fid, &parked)
                        .map_err(|e| FsError::io("index", e))?;
                }
                Some(c) if placed_later.contains(&c) => {}
                _ => self.remove_tree(&mut idx, fid, &dir, &name)?,
            }
        }
        for w in entries {
            let path = dir.join(&w.name);
            if fs::symlink_metadata(&path).is_ok() {
                continue;
            }
            self.place_entry(&mut idx, fid, &path, w)?;
        }
        idx.mark_dir_unsynced(fid);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Removes what a heal parked in directory `fid` and did not place.
    pub fn reconcile_dir_parked(&self, fid: FileId) -> FsResult<()> {
        let mut idx = self.lock();
        let Ok(dir) = self.parent_dir(&idx, fid) else {
            return Ok(()); // removed by the catch-up itself
        };
        let mut parked = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| FsError::io("readdir", e))? {
            let entry = entry.map_err(|e| FsError::io("readdir", e))?;
            if let Ok(name) = entry.file_name().into_string() {
                if name.starts_with(HEAL_PARKED_PREFIX) {
                    parked.push(name);
                }
            }
        }
        for name in parked {
            self.remove_tree(&mut idx, fid, &dir, &name)?;
        }
        Ok(())
    }

    fn place_entry(
        &self,
        idx: &mut Index,
        parent: FileId,
        path: &Path,
        w: &HealEntry,
    ) -> FsResult<()> {
        if let Ok(old) = self.path_in(idx, w.fid) {
            let same_kind =
                fs::symlink_metadata(&old).is_ok_and(|m| attr_of(w.fid, &m).kind == w.kind);
            if same_kind && !path.starts_with(&old) {
                fs::rename(&old, path).map_err(|e| FsError::io("heal rename", e))?;
                if let Some(loc) = idx.location(w.fid) {
                    idx.mark_dir_unsynced(loc.parent);
                }
                return idx
                    .link(w.fid, parent, &w.name)
                    .map_err(|e| FsError::io("index", e));
            }
        }
        if w.kind == FileKind::File {
            if let Some(kept) = self.limbo_path(w.fid) {
                // Removed here by a change now undone: it comes back whole.
                fs::rename(&kept, path).map_err(|e| FsError::io("heal restore", e))?;
                self.trash_count.fetch_sub(1, Ordering::AcqRel);
                idx.unlink(w.fid).map_err(|e| FsError::io("index", e))?;
                return idx
                    .link(w.fid, parent, &w.name)
                    .map_err(|e| FsError::io("index", e));
            }
            // Created empty: its data PG must bring the data.
            self.record_lost(w.fid)?;
        }
        let made = match w.kind {
            FileKind::File => fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(w.mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map(drop),
            FileKind::Dir => fs::DirBuilder::new().mode(w.mode).create(path),
            FileKind::Symlink => std::os::unix::fs::symlink(&w.target, path),
        };
        made.map_err(|e| FsError::io(&format!("heal create {:?}", w.name), e))?;
        if w.kind != FileKind::Symlink {
            fs::set_permissions(path, fs::Permissions::from_mode(w.mode))
                .map_err(|e| FsError::io("heal chmod", e))?;
        }
        idx.unlink(w.fid).map_err(|e| FsError::io("index", e))?;
        idx.link(w.fid, parent, &w.name)
            .map_err(|e| FsError::io("index", e))
    }

    /// Removes (parent, name) and everything below it, and their ids.
    fn remove_tree(&self, idx: &mut Index, parent: FileId, dir: &Path, name: &str) -> FsResult<()> {
        let path = dir.join(name);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(FsError::io("heal stat", e)),
        };
        let child = idx.child(parent, name);
        if meta.is_dir() {
            let mut names = Vec::new();
            for entry in fs::read_dir(&path).map_err(|e| FsError::io("readdir", e))? {
                let entry = entry.map_err(|e| FsError::io("readdir", e))?;
                names.push(entry.file_name());
            }
            for n in names {
                match (child, n.into_string()) {
                    (Some(c), Ok(n)) => self.remove_tree(idx, c, &path, &n)?,
                    (_, n) => {
                        let p = path.join(n.unwrap_or_else(|raw| raw.to_string_lossy().into()));
                        let gone = if p.is_dir() {
                            fs::remove_dir_all(&p)
                        } else {
                            fs::remove_file(&p)
                        };
                        gone.map_err(|e| FsError::io("heal remove", e))?;
                    }
                }
            }
            fs::remove_dir(&path).map_err(|e| FsError::io("heal rmdir", e))?;
        } else {
            // Into limbo: a later repair may bring it back whole. (Freed below the lock only
            // when it has no id, which is rare: a file copied in by hand.)
            let mut trash = Trash::default();
            self.discard(&path, child, &mut trash)
                .map_err(|e| FsError::io("heal remove", e))?;
            trash.empty();
        }
        if let Some(c) = child {
            idx.unlink(c).map_err(|e| FsError::io("index", e))?;
        }
        idx.mark_dir_unsynced(parent);
        Ok(())
    }
}

/// Entries a heal moved out of the way (their name was wanted by another entry) until their
/// own directory is reconciled; such names never exist on a healthy replica.
pub const HEAL_PARKED_PREFIX: &str = ".brickd-heal-parked-";

/// One directory entry as a heal copies it to another replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealEntry {
    pub name: String,
    pub fid: FileId,
    pub kind: FileKind,
    /// Permission bits (files and directories).
    pub mode: u32,
    /// Symlinks: where it points.
    pub target: String,
}

fn gone(fid: FileId) -> FsError {
    FsError::new(
        ErrorCode::Stale,
        format!("file id {fid:#x} no longer exists"),
    )
}

fn stale_if_missing(fid: FileId, e: io::Error) -> FsError {
    if e.kind() == io::ErrorKind::NotFound {
        FsError::new(
            ErrorCode::Stale,
            format!("file id {fid:#x} no longer exists"),
        )
    } else {
        FsError::io("stat", e)
    }
}

/// `Brick::pg_digest`'s result.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PgDigest {
    pub files: u64,
    pub bytes: u64,
    pub digest: u32,
    pub skipped: u64,
}

pub fn attr_of(fid: FileId, m: &fs::Metadata) -> Attr {
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::File
    };
    Attr {
        fid,
        kind,
        mode: m.mode(),
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        size: m.size(),
        used_bytes: m.blocks() * 512,
        atime: Time {
            sec: m.atime(),
            nsec: m.atime_nsec() as u32,
        },
        mtime: Time {
            sec: m.mtime(),
            nsec: m.mtime_nsec() as u32,
        },
        ctime: Time {
            sec: m.ctime(),
            nsec: m.ctime_nsec() as u32,
        },
        btime: birth_time(m),
    }
}

/// statx's birth time, or the earlier of mtime and ctime where the filesystem keeps none.
fn birth_time(m: &fs::Metadata) -> Time {
    let since_epoch = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    match since_epoch {
        Some(d) => Time {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        None => {
            let mtime = Time {
                sec: m.mtime(),
                nsec: m.mtime_nsec() as u32,
            };
            let ctime = Time {
                sec: m.ctime(),
                nsec: m.ctime_nsec() as u32,
            };
            if (mtime.sec, mtime.nsec) <= (ctime.sec, ctime.nsec) {
                mtime
            } else {
                ctime
            }
        }
    }
}

fn set_times(path: &Path, atime: TimeSet, mtime: TimeSet) -> FsResult<()> {
    fn spec(t: TimeSet) -> libc::timespec {
        match t {
            TimeSet::Keep => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            TimeSet::Now => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            TimeSet::To(t) => libc::timespec {
                tv_sec: t.sec as libc::time_t,
                tv_nsec: t.nsec as libc::c_long,
            },
        }
    }
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| FsError::new(ErrorCode::Invalid, "path"))?;
    let times = [spec(atime), spec(mtime)];
    // SAFETY: valid path and a two-element timespec array as utimensat requires.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(FsError::io("utimensat", io::Error::last_os_error()));
    }
    Ok(())
}

fn write_probe_file(meta: &Path) -> FsResult<()> {
    let path = meta.join("probe");
    if fs::metadata(&path)
        .map(|m| m.len() >= 4096)
        .unwrap_or(false)
    {
        return Ok(());
    }
    fs::write(&path, vec![0x5Au8; 4096]).map_err(|e| FsError::io("probe file", e))
}

/// `brick.json` is one JSON line followed by a `crc32c:XXXXXXXX` line over that JSON.
fn load_or_create_identity(meta: &Path, volume: &str) -> FsResult<BrickIdentity> {
    let path = meta.join("brick.json");
    match fs::read_to_string(&path) {
        Ok(text) => parse_identity(&text).map_err(|why| {
            FsError::new(
                ErrorCode::Io,
                format!(
                    "{}: {why}; refusing to guess the brick's identity",
                    path.display()
                ),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let identity = BrickIdentity {
                format: FORMAT_VERSION,
                brick_id: format!(
                    "{:016x}{:016x}",
                    rand::random::<u64>(),
                    rand::random::<u64>()
                ),
                volume: volume.to_string(),
            };
            let json = serde_json::to_string(&identity)
                .map_err(|e| FsError::new(ErrorCode::Internal, e.to_string()))?;
            let text = format!("{json}\ncrc32c:{:08x}\n", crc32c::crc32c(json.as_bytes()));
            let tmp = meta.join("brick.json.tmp");
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| FsError::io("identity", e))?;
            f.write_all(text.as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| FsError::io("identity", e))?;
            fs::rename(&tmp, &path).map_err(|e| FsError::io("identity", e))?;
            fs::File::open(meta)
                .and_then(|d| d.sync_all())
                .map_err(|e| FsError::io("identity", e))?;
            Ok(identity)
        }
        Err(e) => Err(FsError::io("identity", e)),
    }
}

fn parse_identity(text: &str) -> Result<BrickIdentity, String> {
    let mut lines = text.lines();
    let json = lines.next().ok_or("empty file")?;
    let crc_line = lines.next().ok_or("missing crc line")?;
    let crc_hex = crc_line
        .strip_prefix("crc32c:")
        .ok_or("malformed crc line")?;
    let crc = u32::from_str_radix(crc_hex, 16).map_err(|_| "malformed crc value")?;
    if crc32c::crc32c(json.as_bytes()) != crc {
        return Err("crc32c mismatch".into());
    }
    let identity: BrickIdentity = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if identity.format != FORMAT_VERSION {
        return Err(format!("unsupported brick format {}", identity.format));
    }
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brick() -> (tempfile::TempDir, Brick) {
        let dir = tempfile::tempdir().unwrap();
        let b = Brick::open(dir.path(), "v", 64).unwrap();
        (dir, b)
    }

    #[test]
    fn a_restart_of_the_machine_without_a_clean_stop_is_a_power_loss() {
        let dir = tempfile::tempdir().unwrap();
        let b = Brick::open(dir.path(), "v", 64).unwrap();
        assert!(!b.power_lost(), "a new brick");
        drop(b);
        let b = Brick::open(dir.path(), "v", 64).unwrap();
        assert!(
            !b.power_lost(),
            "a crash of the daemon alone keeps the page cache"
        );
        drop(b);
        if current_boot_id().is_none() {
            return; // a kernel without boot ids: nothing more to tell apart
        }
        let boot_id = dir.path().join(".brickd").join(BOOT_ID_FILE);
        std::fs::write(&boot_id, "another-boot\n").unwrap();
        let b = Brick::open(dir.path(), "v", 64).unwrap();
        assert!(
            b.power_lost(),
            "the machine restarted under a running daemon"
        );
        b.mark_clean_shutdown().unwrap();
        drop(b);
        let b = Brick::open(dir.path(), "v", 64).unwrap();
        assert!(!b.power_lost(), "the same boot again");
        drop(b);
        std::fs::write(&boot_id, "another-boot\n").unwrap();
        let b = Brick::open(dir.path(), "v", 64).unwrap();
        assert!(
            !b.power_lost(),
            "restarted after a clean stop: everything was synced"
        );
    }

    #[test]
    fn ids_are_stable_across_reopen() {
        let (dir, b) = brick();
        let d = b.mkdir(ROOT_FILE_ID, "docs", 0o755).unwrap();
        let f = b.create(d.fid, "a.txt", 0o644, true).unwrap();
        b.rename(d.fid, "a.txt", ROOT_FILE_ID, "b.txt", true)
            .unwrap();
        b.sync_namespace(f.fid).unwrap();
        drop(b);
        let b = Brick::open(dir.path(), "v", 64).unwrap();
        assert_eq!(b.lookup(ROOT_FILE_ID, "b.txt").unwrap().fid, f.fid);
        assert_eq!(b.path_of(f.fid).unwrap(), dir.path().join("data/b.txt"));
        assert_eq!(b.lookup(ROOT_FILE_ID, "docs").unwrap().fid, d.fid);
    }

    #[test]
    fn fsync_makes_every_changed_directory_durable_before_the_index() {
        let (_dir, b) = brick();
        let a = b.mkdir(ROOT_FILE_ID, "a", 0o755).unwrap();
        let ab = b.mkdir(a.fid, "b", 0o755).unwrap();
        let f = b.create(ab.fid, "f", 0o644, true).unwrap();
        assert_eq!(b.unsynced_dir_count(), 3, "root, a and a/b changed");
        let c = b.mkdir(ROOT_FILE_ID, "c", 0o755).unwrap();
        b.create(c.fid, "g", 0o644, true).unwrap();
        b.rename(c.fid, "g", ab.fid, "g2", true).unwrap();
        assert_eq!(b.unsynced_dir_count(), 4, "root, a, a/b and c changed");
        // Any fsync makes every recorded change durable, the rename's source directory c too,
        // because the index records describing them become durable with it.
        b.sync_namespace(f.fid).unwrap();
        assert_eq!(b.unsynced_dir_count(), 0);
    }

    #[test]
    fn symlinks_never_redirect_create_or_truncate() {
        let (dir, b) = brick();
        let outside = dir.path().join("outside.txt");
        fs::write(&outside, b"precious").unwrap();
        let link = b
            .symlink(ROOT_FILE_ID, "link", outside.to_str().unwrap())
            .unwrap();
        let err = b
            .setattr(
                link.fid,
                &SetAttr {
                    size: Some(0),
                    ..SetAttr::NONE
                },
            )
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Invalid);
        assert_eq!(fs::read(&outside).unwrap(), b"precious");
        let target = dir.path().join("created-through-link");
        b.symlink(ROOT_FILE_ID, "dangling", target.to_str().unwrap())
            .unwrap();
        assert!(b.create(ROOT_FILE_ID, "dangling", 0o4777, false).is_err());
        assert!(
            !target.exists(),
            "create followed a symlink out of the brick"
        );
    }

    #[test]
    fn metadata_is_private_to_the_daemon() {
        let (dir, b) = brick();
        b.create(ROOT_FILE_ID, "f", 0o644, true).unwrap();
        let mode = |p: &str| fs::metadata(dir.path().join(p)).unwrap().mode() & 0o777;
        assert_eq!(mode(".brickd"), 0o700);
        assert_eq!(mode(".brickd/brick.json"), 0o600);
        assert_eq!(mode(".brickd/index.log"), 0o600);
    }

    #[test]
    fn errors_map_to_filesystem_codes() {
        let (_dir, b) = brick();
        let d = b.mkdir(ROOT_FILE_ID, "d", 0o755).unwrap();
        let f = b.create(d.fid, "f", 0o644, true).unwrap();
        assert_eq!(
            b.create(d.fid, "f", 0o644, true).unwrap_err().code,
            ErrorCode::Exists
        );
        assert_eq!(b.create(d.fid, "f", 0o644, false).unwrap().fid, f.fid);
        assert_eq!(
            b.lookup(ROOT_FILE_ID, "nope").unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            b.remove(ROOT_FILE_ID, "d", true).unwrap_err().code,
            ErrorCode::NotEmpty
        );
        assert_eq!(b.lookup(f.fid, "x").unwrap_err().code, ErrorCode::NotDir);
        assert_eq!(
            b.remove(ROOT_FILE_ID, "d", false).unwrap_err().code,
            ErrorCode::IsDir
        );
        b.remove(d.fid, "f", false).unwrap();
        assert_eq!(b.getattr(f.fid).unwrap_err().code, ErrorCode::Stale);
        b.remove(ROOT_FILE_ID, "d", true).unwrap();
    }

    #[test]
    fn readdir_pages_resume_from_the_cookie() {
        let (_dir, b) = brick();
        for i in 0..2500 {
            b.create(ROOT_FILE_ID, &format!("file-{i}"), 0o644, true)
                .unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        let mut cookie = 0;
        loop {
            let page = b.readdir(ROOT_FILE_ID, cookie, 1000).unwrap();
            for e in &page.entries {
                assert!(seen.insert(e.name.clone()), "duplicate {}", e.name);
                cookie = e.cookie;
            }
            if page.eof {
                break;
            }
        }
        assert_eq!(seen.len(), 2500);
    }

    #[test]
    fn files_copied_in_by_hand_get_ids() {
        let (dir, b) = brick();
        fs::write(dir.path().join("data/manual"), b"hello").unwrap();
        let a = b.lookup(ROOT_FILE_ID, "manual").unwrap();
        assert_eq!(a.size, 5);
        assert_eq!(b.lookup(ROOT_FILE_ID, "manual").unwrap().fid, a.fid);
    }

    #[test]
    fn setattr_changes_size_mode_and_times() {
        let (_dir, b) = brick();
        let f = b.create(ROOT_FILE_ID, "f", 0o600, true).unwrap();
        let a = b
            .setattr(
                f.fid,
                &SetAttr {
                    mode: Some(0o640),
                    size: Some(5 << 30),
                    mtime: TimeSet::To(Time { sec: 1000, nsec: 5 }),
                    ..SetAttr::NONE
                },
            )
            .unwrap();
        assert_eq!(a.size, 5 << 30);
        assert_eq!(a.mode & 0o7777, 0o640);
        assert_eq!(a.mtime, Time { sec: 1000, nsec: 5 });
    }

    #[test]
    fn corrupt_identity_is_refused() {
        let (dir, b) = brick();
        drop(b);
        let p = dir.path().join(".brickd/brick.json");
        let text = fs::read_to_string(&p).unwrap().replace("\"v\"", "\"w\"");
        fs::write(&p, text).unwrap();
        let err = Brick::open(dir.path(), "v", 64).err().unwrap();
        assert!(err.message.contains("crc32c mismatch"), "{err}");
    }

    #[test]
    fn rename_without_replace_refuses_an_existing_target() {
        let (_dir, b) = brick();
        b.create(ROOT_FILE_ID, "a", 0o644, true).unwrap();
        b.create(ROOT_FILE_ID, "b", 0o644, true).unwrap();
        let err = b
            .rename(ROOT_FILE_ID, "a", ROOT_FILE_ID, "b", false)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Exists);
        assert!(b.lookup(ROOT_FILE_ID, "a").is_ok(), "the source stays");
        b.rename(ROOT_FILE_ID, "a", ROOT_FILE_ID, "c", false)
            .unwrap();
        assert!(b.lookup(ROOT_FILE_ID, "c").is_ok());
        b.rename(ROOT_FILE_ID, "c", ROOT_FILE_ID, "c", false)
            .unwrap();
        b.rename(ROOT_FILE_ID, "c", ROOT_FILE_ID, "b", true)
            .unwrap();
        assert!(b.lookup(ROOT_FILE_ID, "c").is_err());
    }
}
