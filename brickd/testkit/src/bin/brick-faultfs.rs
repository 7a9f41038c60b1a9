//! `brick-faultfs BACKING MOUNTPOINT CONTROL_SOCKET`: a FUSE passthrough of BACKING for tests
//! that need a disk that fails or loses power (this machine's kernel has no device-mapper, so
//! no dm-error, dm-flakey or dm-log-writes).
//!
//! Commands, one line each on the Unix socket CONTROL_SOCKET, answered with one line:
//! - `fail OP PATH_PART ERRNO [COUNT]`: OP (`read`, `write`, `fsync`, `open`, `create`,
//!   `mkdir`, `unlink`, `rename`, `setattr`, `lookup`, `getattr`, `readdir`, `statfs`, `any`)
//!   on a path containing PATH_PART (`*` for every path) fails with ERRNO (`EIO`, `ENOSPC` or a
//!   number), COUNT times (forever without it);
//! - `clear`: no more failures;
//! - `cut`: a power cut. Every write (and truncate) that no fsync or fdatasync of its file made
//!   durable is undone, newest first, so each file holds what it held at its last sync, as
//!   LazyFS does for Jepsen. Namespace changes (create, rename, unlink) are kept: this models a
//!   journalling file system that committed its metadata but not the file data. From then on
//!   every operation fails with EIO (the disk is off) until `exit`. Answers
//!   `ok forgot BYTES bytes in FILES files`;
//! - `stats`: `ok writes=N synced=N unsynced_bytes=N injected=N`;
//! - `exit`: unmounts and exits.
//!
//! There is no write-back cache: every write reaches the rules above and BACKING at once, and
//! the mount holds no dirty pages a power cut would have to drop (mapped pages excepted: what
//! the kernel writes back after a cut fails). Reads may be served from the kernel's page
//! cache, so a `fail read` rule first drops the cached pages of every file. Bricks on it run
//! in either I/O mode (O_DIRECT opens work and reach BACKING directly). Files are not opened
//! with FOPEN_DIRECT_IO: io_uring reads of such a file past its end returned its first bytes
//! again instead of stopping short (Linux 6.18).

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{File, Metadata, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TTL: Duration = Duration::from_secs(1);
/// The most bytes a single undo record keeps (a truncate of a bigger tail is kept in part and
/// counted as `undo_incomplete`).
const UNDO_RECORD_MAX_BYTES: u64 = 256 << 20;
/// A control line longer than this is refused.
const CONTROL_LINE_MAX_BYTES: usize = 4096;

struct Rule {
    op: String,
    path_part: String,
    errno: i32,
    left: Option<u64>,
}

/// What a write or truncate replaced: put back by a power cut.
struct Undo {
    offset: u64,
    old: Vec<u8>,
    old_len: u64,
    /// How many bytes the undone write (or truncate) changed: what a power cut forgets.
    changed: u64,
}

struct Unsynced {
    file: Arc<File>,
    undo: Vec<Undo>,
}

#[derive(Default)]
struct Stats {
    writes: u64,
    synced: u64,
    injected: u64,
    undo_incomplete: u64,
}

struct Open {
    file: Arc<File>,
    ino: u64,
}

#[derive(Default)]
struct State {
    /// FUSE inode -> path under the backing root ("" for the root).
    paths: HashMap<u64, PathBuf>,
    open: HashMap<u64, Open>,
    next_fh: u64,
    rules: Vec<Rule>,
    unsynced: HashMap<u64, Unsynced>,
    stats: Stats,
    /// After a cut every operation fails with EIO: what the kernel still writes back (pages
    /// of a killed process's mappings) is lost, as it would be.
    powered_off: bool,
}

/// Cloned for the control thread: both clones share the state.
#[derive(Clone)]
struct FaultFs {
    root: PathBuf,
    root_ino: u64,
    state: Arc<Mutex<State>>,
    /// Held across "read what is there, then write": the undo records of one file are then in
    /// the order of its writes.
    write_lock: Arc<Mutex<()>>,
    /// Drops the kernel's cached pages (set once mounted).
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
}

fn errno_of(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH
    }
}

impl FaultFs {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// FUSE's root is inode 1; the backing root keeps its own number elsewhere, so the two swap.
    fn fuse_ino(&self, st_ino: u64) -> u64 {
        if st_ino == self.root_ino {
            1
        } else if st_ino == 1 {
            self.root_ino
        } else {
            st_ino
        }
    }

    fn rel(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        if ino.0 == 1 {
            return Ok(PathBuf::new());
        }
        self.lock().paths.get(&ino.0).cloned().ok_or(Errno::ESTALE)
    }

    fn abs(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    /// The errno a rule injects for `op` on `rel`, if one matches (and counts it).
    fn fault(&self, op: &str, rel: &Path) -> Result<(), Errno> {
        let path = rel.to_string_lossy();
        let mut st = self.lock();
        if st.powered_off {
            return Err(Errno::EIO);
        }
        let mut hit = None;
        for r in st.rules.iter_mut() {
            let op_matches = r.op == "any" || r.op == op;
            let path_matches = r.path_part == "*" || path.contains(&r.path_part);
            if op_matches && path_matches && r.left != Some(0) {
                if let Some(n) = r.left.as_mut() {
                    *n -= 1;
                }
                hit = Some(r.errno);
                break;
            }
        }
        match hit {
            Some(errno) => {
                st.stats.injected += 1;
                Err(Errno::from_i32(errno))
            }
            None => Ok(()),
        }
    }

    fn attr(&self, m: &Metadata) -> FileAttr {
        let kind = match m.mode() & libc::S_IFMT {
            libc::S_IFDIR => FileType::Directory,
            libc::S_IFLNK => FileType::Symlink,
            libc::S_IFIFO => FileType::NamedPipe,
            libc::S_IFSOCK => FileType::Socket,
            libc::S_IFCHR => FileType::CharDevice,
            libc::S_IFBLK => FileType::BlockDevice,
            _ => FileType::RegularFile,
        };
        FileAttr {
            ino: INodeNo(self.fuse_ino(m.ino())),
            size: m.size(),
            blocks: m.blocks(),
            atime: system_time(m.atime(), m.atime_nsec()),
            mtime: system_time(m.mtime(), m.mtime_nsec()),
            ctime: system_time(m.ctime(), m.ctime_nsec()),
            crtime: system_time(m.ctime(), m.ctime_nsec()),
            kind,
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: m.blksize() as u32,
            flags: 0,
        }
    }

    /// Stats `rel`, remembers its inode's path, and answers its attributes.
    fn entry(&self, rel: PathBuf) -> Result<FileAttr, Errno> {
        let m = std::fs::symlink_metadata(self.abs(&rel)).map_err(errno_of)?;
        let attr = self.attr(&m);
        if attr.ino.0 != 1 {
            self.lock().paths.insert(attr.ino.0, rel);
        }
        Ok(attr)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        if name.as_bytes().contains(&b'/') {
            return Err(Errno::EINVAL);
        }
        Ok(self.rel(parent)?.join(name))
    }

    fn new_fh(&self, file: File, ino: u64) -> FileHandle {
        let mut st = self.lock();
        st.next_fh += 1;
        let fh = st.next_fh;
        st.open.insert(
            fh,
            Open {
                file: Arc::new(file),
                ino,
            },
        );
        FileHandle(fh)
    }

    fn open_file(&self, fh: FileHandle) -> Result<(Arc<File>, u64), Errno> {
        let st = self.lock();
        let o = st.open.get(&fh.0).ok_or(Errno::EBADF)?;
        Ok((o.file.clone(), o.ino))
    }

    /// Records what `[offset, offset+len)` of `file` holds now (and its length), to be put back
    /// by a power cut unless the file is synced first.
    fn record_undo(&self, ino: u64, file: &Arc<File>, offset: u64, len: u64) -> Result<(), Errno> {
        let old_len = file.metadata().map_err(errno_of)?.len();
        if trace() {
            eprintln!("undo ino {ino} offset {offset} len {len} old_len {old_len}");
        }
        let end = (offset.saturating_add(len)).min(old_len);
        let keep = end.saturating_sub(offset);
        let take = keep.min(UNDO_RECORD_MAX_BYTES);
        let mut old = vec![0u8; take as usize];
        if take > 0 {
            file.read_exact_at(&mut old, offset).map_err(errno_of)?;
        }
        let mut st = self.lock();
        if take < keep {
            st.stats.undo_incomplete += 1;
        }
        let u = st.unsynced.entry(ino).or_insert_with(|| Unsynced {
            file: file.clone(),
            undo: Vec::new(),
        });
        u.undo.push(Undo {
            offset,
            old,
            old_len,
            changed: len,
        });
        Ok(())
    }

    fn synced(&self, ino: u64) {
        if trace() {
            eprintln!("synced ino {ino}");
        }
        let mut st = self.lock();
        st.unsynced.remove(&ino);
        st.stats.synced += 1;
    }

    fn writable_for(&self, ino: INodeNo) -> Result<Arc<File>, Errno> {
        let rel = self.rel(ino)?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.abs(&rel))
            .map_err(errno_of)?;
        Ok(Arc::new(f))
    }

    fn truncate(&self, ino: INodeNo, fh: Option<FileHandle>, size: u64) -> Result<(), Errno> {
        let file = match fh.map(|fh| self.open_file(fh)) {
            Some(Ok((f, _))) => f,
            _ => self.writable_for(ino)?,
        };
        let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old_len = file.metadata().map_err(errno_of)?.len();
        if size < old_len {
            self.record_undo(ino.0, &file, size, old_len - size)?;
        } else {
            self.record_undo(ino.0, &file, old_len, 0)?;
        }
        file.set_len(size).map_err(errno_of)
    }

    /// Puts back every unsynced write, newest first; answers (bytes, files) forgotten.
    fn cut(&self) -> (u64, u64) {
        let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let unsynced: Vec<Unsynced> = {
            let mut st = self.lock();
            st.powered_off = true;
            st.unsynced.drain().map(|(_, u)| u).collect()
        };
        let (mut bytes, files) = (0u64, unsynced.len() as u64);
        for u in unsynced {
            for undo in u.undo.iter().rev() {
                if trace() {
                    eprintln!(
                        "cut: put back {} bytes at {} and length {}",
                        undo.old.len(),
                        undo.offset,
                        undo.old_len
                    );
                }
                if !undo.old.is_empty() {
                    if let Err(e) = u.file.write_all_at(&undo.old, undo.offset) {
                        eprintln!("brick-faultfs: cut: put back failed: {e}");
                    }
                }
                if let Err(e) = u.file.set_len(undo.old_len) {
                    eprintln!("brick-faultfs: cut: length put back failed: {e}");
                }
                bytes += undo.changed;
            }
        }
        (bytes, files)
    }

    /// Drops the kernel's cached pages of every file seen, so that reads reach the rules.
    fn drop_cached_pages(&self) {
        let Some(n) = self.notifier.get() else {
            return;
        };
        let inos: Vec<u64> = self.lock().paths.keys().copied().collect();
        for ino in inos {
            let _ = n.inval_inode(INodeNo(ino), 0, 0);
        }
    }

    fn rename_paths(&self, from: &Path, to: &Path) {
        let mut st = self.lock();
        for p in st.paths.values_mut() {
            if let Ok(rest) = p.strip_prefix(from) {
                *p = if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                };
            }
        }
    }
}

/// `BRICK_FAULTFS_TRACE=1`: every recorded write, truncate and sync on stderr.
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("BRICK_FAULTFS_TRACE").is_some())
}

fn cstring(p: &Path) -> Result<CString, Errno> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            }
        }
    }
}

impl Filesystem for FaultFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // Shared mmap of FOPEN_DIRECT_IO files (brickd maps its activity logs); Linux 6.6+.
        let wanted = fuser::InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP;
        if config
            .add_capabilities(wanted & config.capabilities())
            .is_err()
            || !config.capabilities().contains(wanted)
        {
            eprintln!("brick-faultfs: the kernel cannot mmap direct-I/O files; mmap will fail");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self
            .child(parent, name)
            .and_then(|rel| self.fault("lookup", &rel).map(|_| rel))
            .and_then(|rel| self.entry(rel));
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = (|| {
            let rel = self.rel(ino)?;
            self.fault("getattr", &rel)?;
            if let Some(Ok((f, _))) = fh.map(|fh| self.open_file(fh)) {
                return f.metadata().map_err(errno_of);
            }
            std::fs::symlink_metadata(self.abs(&rel)).map_err(errno_of)
        })();
        match r {
            Ok(m) => reply.attr(&TTL, &self.attr(&m)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = (|| {
            let rel = self.rel(ino)?;
            self.fault("setattr", &rel)?;
            let path = self.abs(&rel);
            if let Some(size) = size {
                self.truncate(ino, fh, size)?;
            }
            if let Some(mode) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(errno_of)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid).map_err(errno_of)?;
            }
            if atime.is_some() || mtime.is_some() {
                let c = cstring(&path)?;
                let times = [timespec(atime), timespec(mtime)];
                // SAFETY: a valid C path and a two-element timespec array, as utimensat needs.
                let rc = unsafe {
                    libc::utimensat(
                        libc::AT_FDCWD,
                        c.as_ptr(),
                        times.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                };
                if rc != 0 {
                    return Err(errno_of(std::io::Error::last_os_error()));
                }
            }
            std::fs::symlink_metadata(&path).map_err(errno_of)
        })();
        match r {
            Ok(m) => reply.attr(&TTL, &self.attr(&m)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self
            .rel(ino)
            .and_then(|rel| std::fs::read_link(self.abs(&rel)).map_err(errno_of))
        {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let rel = self.child(parent, name)?;
            self.fault("mkdir", &rel)?;
            std::fs::create_dir(self.abs(&rel)).map_err(errno_of)?;
            std::fs::set_permissions(
                self.abs(&rel),
                std::fs::Permissions::from_mode(mode & !umask & 0o7777),
            )
            .map_err(errno_of)?;
            self.entry(rel)
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = (|| {
            let rel = self.child(parent, name)?;
            self.fault("unlink", &rel)?;
            std::fs::remove_file(self.abs(&rel)).map_err(errno_of)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = (|| {
            let rel = self.child(parent, name)?;
            self.fault("unlink", &rel)?;
            std::fs::remove_dir(self.abs(&rel)).map_err(errno_of)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let rel = self.child(parent, link_name)?;
            self.fault("create", &rel)?;
            std::os::unix::fs::symlink(target, self.abs(&rel)).map_err(errno_of)?;
            self.entry(rel)
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            let from = self.child(parent, name)?;
            let to = self.child(newparent, newname)?;
            self.fault("rename", &from)?;
            let (a, b) = (cstring(&self.abs(&from))?, cstring(&self.abs(&to))?);
            // SAFETY: two valid C paths; renameat2 reads them only.
            let rc = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    flags.bits(),
                )
            };
            if rc != 0 {
                return Err(errno_of(std::io::Error::last_os_error()));
            }
            self.rename_paths(&from, &to);
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let from = self.rel(ino)?;
            let to = self.child(newparent, newname)?;
            self.fault("create", &to)?;
            std::fs::hard_link(self.abs(&from), self.abs(&to)).map_err(errno_of)?;
            let m = std::fs::symlink_metadata(self.abs(&to)).map_err(errno_of)?;
            Ok(self.attr(&m))
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = (|| {
            let rel = self.rel(ino)?;
            self.fault("open", &rel)?;
            let f = OpenOptions::new()
                .read(true)
                .write(flags.0 & libc::O_ACCMODE != libc::O_RDONLY)
                .open(self.abs(&rel))
                .map_err(errno_of)?;
            Ok(self.new_fh(f, ino.0))
        })();
        match r {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = (|| {
            let rel = self.child(parent, name)?;
            self.fault("create", &rel)?;
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(flags & libc::O_TRUNC != 0)
                .custom_flags(flags & libc::O_EXCL)
                .mode(mode & !umask & 0o7777)
                .open(self.abs(&rel))
                .map_err(errno_of)?;
            let attr = self.entry(rel.clone())?;
            if trace() {
                eprintln!("create {} ino {}", rel.display(), attr.ino.0);
            }
            Ok((attr, self.new_fh(f, attr.ino.0)))
        })();
        match r {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = (|| {
            self.fault("read", &self.rel(ino).unwrap_or_default())?;
            let (f, _) = self.open_file(fh)?;
            let mut buf = vec![0u8; size as usize];
            let mut got = 0;
            while got < buf.len() {
                match f.read_at(&mut buf[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(errno_of(e)),
                }
            }
            buf.truncate(got);
            Ok(buf)
        })();
        match r {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = (|| {
            self.fault("write", &self.rel(ino).unwrap_or_default())?;
            let (f, file_ino) = self.open_file(fh)?;
            let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.record_undo(file_ino, &f, offset, data.len() as u64)?;
            f.write_all_at(data, offset).map_err(errno_of)?;
            self.lock().stats.writes += 1;
            Ok(data.len() as u32)
        })();
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.lock().open.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            self.fault("fsync", &self.rel(ino).unwrap_or_default())?;
            let (f, file_ino) = self.open_file(fh)?;
            let synced = if datasync {
                f.sync_data()
            } else {
                f.sync_all()
            };
            synced.map_err(errno_of)?;
            self.synced(file_ino);
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.rel(ino) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = (|| {
            let rel = self.rel(ino)?;
            self.fault("readdir", &rel)?;
            let mut names: Vec<(u64, FileType, std::ffi::OsString)> = vec![
                (ino.0, FileType::Directory, ".".into()),
                (1, FileType::Directory, "..".into()),
            ];
            for e in std::fs::read_dir(self.abs(&rel)).map_err(errno_of)? {
                let e = e.map_err(errno_of)?;
                let kind = match e.file_type() {
                    Ok(t) if t.is_dir() => FileType::Directory,
                    Ok(t) if t.is_symlink() => FileType::Symlink,
                    _ => FileType::RegularFile,
                };
                let st_ino = std::os::unix::fs::DirEntryExt::ino(&e);
                names.push((self.fuse_ino(st_ino), kind, e.file_name()));
            }
            Ok(names)
        })();
        match r {
            Ok(names) => {
                for (i, (ino, kind, name)) in names.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            let rel = self.rel(ino)?;
            self.fault("fsync", &rel)?;
            File::open(self.abs(&rel))
                .and_then(|d| d.sync_all())
                .map_err(errno_of)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let r = (|| {
            self.fault("statfs", Path::new(""))?;
            let c = cstring(&self.root)?;
            // SAFETY: statvfs is plain old data, written by the call below.
            let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: a valid C path and a statvfs to fill.
            if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
                return Err(errno_of(std::io::Error::last_os_error()));
            }
            Ok(s)
        })();
        match r {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            self.fault("write", &self.rel(ino).unwrap_or_default())?;
            let (f, file_ino) = self.open_file(fh)?;
            let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.record_undo(file_ino, &f, offset, length)?;
            use std::os::fd::AsRawFd;
            // SAFETY: an open descriptor; fallocate reads only its integer arguments.
            let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, length as i64) };
            if rc != 0 {
                return Err(errno_of(std::io::Error::last_os_error()));
            }
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

fn parse_errno(s: &str) -> Option<i32> {
    match s {
        "EIO" => Some(libc::EIO),
        "ENOSPC" => Some(libc::ENOSPC),
        "EROFS" => Some(libc::EROFS),
        "EDQUOT" => Some(libc::EDQUOT),
        n => n.parse().ok().filter(|n: &i32| *n > 0),
    }
}

fn command(fs: &FaultFs, line: &str) -> (String, bool) {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["fail", op, part, errno, rest @ ..] => {
            let Some(errno) = parse_errno(errno) else {
                return (format!("err unknown errno {errno}"), false);
            };
            let left = match rest {
                [] => None,
                [n] => match n.parse() {
                    Ok(n) => Some(n),
                    Err(_) => return (format!("err bad count {n}"), false),
                },
                _ => return ("err too many words".into(), false),
            };
            fs.lock().rules.push(Rule {
                op: op.to_string(),
                path_part: part.to_string(),
                errno,
                left,
            });
            if *op == "read" || *op == "any" {
                fs.drop_cached_pages();
            }
            ("ok".into(), false)
        }
        ["clear"] => {
            fs.lock().rules.clear();
            ("ok".into(), false)
        }
        ["cut"] => {
            let (bytes, files) = fs.cut();
            (format!("ok forgot {bytes} bytes in {files} files"), false)
        }
        ["stats"] => {
            let st = fs.lock();
            let unsynced = st
                .unsynced
                .values()
                .flat_map(|u| u.undo.iter())
                .map(|u| u.changed)
                .sum::<u64>();
            let s = &st.stats;
            (
                format!(
                    "ok writes={} synced={} unsynced_bytes={unsynced} injected={} undo_incomplete={}",
                    s.writes, s.synced, s.injected, s.undo_incomplete
                ),
                false,
            )
        }
        ["exit"] => ("ok".into(), true),
        _ => (format!("err unknown command {line:?}"), false),
    }
}

/// Serves control connections until `exit`.
fn control(fs: &FaultFs, listener: UnixListener) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let Ok(mut out) = conn.try_clone() else {
            continue;
        };
        let mut reader = BufReader::new(conn);
        let mut line = String::new();
        loop {
            line.clear();
            match reader
                .by_ref()
                .take(CONTROL_LINE_MAX_BYTES as u64)
                .read_line(&mut line)
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let (answer, exit) = command(fs, line.trim());
            let _ = writeln!(out, "{answer}");
            if exit {
                return;
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: brick-faultfs BACKING MOUNTPOINT CONTROL_SOCKET");
        std::process::exit(2);
    }
    let (backing, mountpoint, socket) = (&args[1], &args[2], &args[3]);
    let root = match std::fs::canonicalize(backing) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("brick-faultfs: backing directory {backing}: {e}");
            std::process::exit(1);
        }
    };
    let root_ino = match std::fs::metadata(&root) {
        Ok(m) => m.ino(),
        Err(e) => {
            eprintln!("brick-faultfs: {backing}: {e}");
            std::process::exit(1);
        }
    };
    let _ = std::fs::remove_file(socket);
    let listener = match UnixListener::bind(socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("brick-faultfs: control socket {socket}: {e}");
            std::process::exit(1);
        }
    };
    let state = Arc::new(Mutex::new(State::default()));
    let fs = FaultFs {
        root,
        root_ino,
        state,
        write_lock: Arc::new(Mutex::new(())),
        notifier: Arc::new(std::sync::OnceLock::new()),
    };
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName("brick-faultfs".into()),
        fuser::MountOption::Subtype("faultfs".into()),
    ];
    cfg.acl = fuser::SessionACL::All;
    cfg.n_threads = Some(4);
    let session = match fuser::spawn_mount(fs.clone(), mountpoint, &cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("brick-faultfs: mount on {mountpoint}: {e}");
            std::process::exit(1);
        }
    };
    let _ = fs.notifier.set(session.notifier());
    println!("brick-faultfs: serving {backing} on {mountpoint}");
    control(&fs, listener);
    drop(session);
}
