//! FUSE mount of a volume (`brick mount VOLUME MOUNTPOINT`) over the native client library,
//! through the `fuser` crate. Inode numbers are brickd's stable file ids (the root, id 1, is
//! FUSE's root inode too), so nothing maps between them and nothing goes stale.
//!
//! One fuser thread reads requests from /dev/fuse; each is answered by a task on the tokio
//! runtime, so requests run concurrently. Caching (docs/fuse.md): attributes and entries live
//! 1 s in the kernel; file data is cached between an open and its close and dropped at every
//! open (close-to-open), and writes go through to the volume before they are answered, so this
//! mount never returns data older than what it wrote itself.

use brick_client::{ClientError, Volume};
use brick_wire::{Attr, ErrorCode, FileId, FileKind, SetAttr, Time, TimeSet, ROOT_FILE_ID};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, IoctlFlags,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the kernel keeps attributes and directory entries.
pub const ATTR_TTL: Duration = Duration::from_secs(1);
/// Entries one READDIR asks the volume for (the kernel's buffer takes what fits).
const READDIR_BATCH: u32 = 256;
/// Requests answered at once; more wait in the kernel's queue.
const IN_FLIGHT_MAX: usize = 256;
/// The largest write the kernel sends (1 MiB: sequential writes in few requests).
const WRITE_BYTES_MAX: u32 = 1 << 20;

/// The filesystem: a volume and the runtime its requests run on.
pub struct BrickFs {
    vol: Volume,
    rt: tokio::runtime::Handle,
    slots: std::sync::Arc<tokio::sync::Semaphore>,
}

impl BrickFs {
    pub fn new(vol: Volume, rt: tokio::runtime::Handle) -> BrickFs {
        BrickFs {
            vol,
            rt,
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX)),
        }
    }

    /// Runs `f` on the runtime; its result goes to `done` (which sends the reply).
    fn run<T, F, Fut>(&self, f: F, done: impl FnOnce(Result<T, Errno>) + Send + 'static)
    where
        T: Send + 'static,
        F: FnOnce(Volume) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, ClientError>> + Send + 'static,
    {
        let (vol, slots) = (self.vol.clone(), self.slots.clone());
        self.rt.spawn(async move {
            let _slot = slots.acquire_owned().await;
            done(f(vol).await.map_err(|e| errno_of(&e)));
        });
    }
}

/// Mounts `vol` at `mountpoint`; unmounted when the session is dropped or joined.
pub fn mount(
    vol: Volume,
    rt: tokio::runtime::Handle,
    mountpoint: &Path,
) -> std::io::Result<fuser::BackgroundSession> {
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName(format!("brick:{}", vol.name)),
        fuser::MountOption::Subtype("brick".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
    ];
    cfg.acl = fuser::SessionACL::All;
    fuser::spawn_mount(BrickFs::new(vol, rt), mountpoint, &cfg)
}

fn fid_of(ino: INodeNo) -> FileId {
    // FUSE's root inode is 1, as brickd's root id is.
    ino.0
}

fn ino_of(fid: FileId) -> INodeNo {
    debug_assert!(fid != 0);
    INodeNo(fid)
}

fn system_time(t: Time) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::new(t.sec.unsigned_abs(), 0) + Duration::new(0, t.nsec)
    }
}

fn wire_time(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(st) => TimeSet::To(match st.duration_since(UNIX_EPOCH) {
            Ok(d) => Time {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            },
            Err(e) => Time {
                sec: -(e.duration().as_secs_f64().ceil() as i64),
                nsec: 0,
            },
        }),
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let kind = match a.kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
    };
    FileAttr {
        ino: ino_of(a.fid),
        size: a.size,
        blocks: a.used_bytes.div_ceil(512),
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: system_time(a.btime),
        kind,
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink.max(1),
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn errno_of(e: &ClientError) -> Errno {
    let Some(code) = e.code() else {
        tracing::warn!("fuse: {e}");
        return Errno::EIO;
    };
    match code {
        ErrorCode::Perm => Errno::EPERM,
        ErrorCode::NotFound | ErrorCode::Stale => Errno::ENOENT,
        ErrorCode::Access | ErrorCode::AuthFailed => Errno::EACCES,
        ErrorCode::Exists => Errno::EEXIST,
        ErrorCode::CrossDevice => Errno::EXDEV,
        ErrorCode::NotDir => Errno::ENOTDIR,
        ErrorCode::IsDir => Errno::EISDIR,
        ErrorCode::Invalid | ErrorCode::Malformed => Errno::EINVAL,
        ErrorCode::FileTooBig => Errno::EFBIG,
        ErrorCode::NoSpace => Errno::ENOSPC,
        ErrorCode::ReadOnly => Errno::EROFS,
        ErrorCode::NameTooLong => Errno::ENAMETOOLONG,
        ErrorCode::NotEmpty => Errno::ENOTEMPTY,
        ErrorCode::NotSupported | ErrorCode::UnknownOp => Errno::EOPNOTSUPP,
        other => {
            tracing::warn!("fuse: {e} ({other:?})");
            Errno::EIO
        }
    }
}

fn name_of(name: &OsStr) -> Result<String, Errno> {
    name.to_str().map(str::to_string).ok_or(Errno::EINVAL)
}

fn entry(reply: ReplyEntry) -> impl FnOnce(Result<Attr, Errno>) + Send + 'static {
    move |r| match r {
        Ok(a) => reply.entry(&ATTR_TTL, &file_attr(&a), Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty) -> impl FnOnce(Result<(), Errno>) + Send + 'static {
    move |r| match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for BrickFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        use fuser::InitFlags;
        // Parallel direct I/O (a VM image opened O_DIRECT at queue depth 32 needs it),
        // parallel lookups and creates in one directory, and attributes with listings.
        let wanted = InitFlags::FUSE_ASYNC_DIO
            | InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_MAX_PAGES;
        let available = wanted & config.capabilities();
        if let Err(missing) = config.add_capabilities(available) {
            tracing::warn!("fuse: kernel lacks {missing:?}");
        }
        let _ = config.set_max_write(WRITE_BYTES_MAX);
        let _ = config.set_max_background(IN_FLIGHT_MAX as u16);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let parent = fid_of(parent);
        self.run(
            move |v| async move { v.lookup(parent, &name).await },
            entry(reply),
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let fid = fid_of(ino);
        self.run(
            move |v| async move { v.getattr(fid).await },
            move |r| match r {
                Ok(a) => reply.attr(&ATTR_TTL, &file_attr(&a)),
                Err(e) => reply.error(e),
            },
        );
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
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let fid = fid_of(ino);
        let attr = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map_or(TimeSet::Keep, wire_time),
            mtime: mtime.map_or(TimeSet::Keep, wire_time),
        };
        self.run(
            move |v| async move { v.setattr(fid, attr).await },
            move |r| match r {
                Ok(a) => reply.attr(&ATTR_TTL, &file_attr(&a)),
                Err(e) => reply.error(e),
            },
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let fid = fid_of(ino);
        self.run(
            move |v| async move { v.readlink(fid).await },
            move |r| match r {
                Ok(target) => reply.data(target.as_bytes()),
                Err(e) => reply.error(e),
            },
        );
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
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let (parent, mode) = (fid_of(parent), mode & !umask & 0o7777);
        self.run(
            move |v| async move { v.mkdir(parent, &name, mode).await },
            entry(reply),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let parent = fid_of(parent);
        self.run(
            move |v| async move { v.unlink(parent, &name).await },
            empty(reply),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let parent = fid_of(parent);
        self.run(
            move |v| async move { v.rmdir(parent, &name).await },
            empty(reply),
        );
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, target) = match (name_of(link_name), name_of(target.as_os_str())) {
            (Ok(n), Ok(t)) => (n, t),
            _ => return reply.error(Errno::EINVAL),
        };
        let parent = fid_of(parent);
        self.run(
            move |v| async move { v.symlink(parent, &name, &target).await },
            entry(reply),
        );
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
        let noreplace = flags == RenameFlags::RENAME_NOREPLACE;
        if !flags.is_empty() && !noreplace {
            return reply.error(Errno::EINVAL); // RENAME_EXCHANGE, RENAME_WHITEOUT: not offered
        }
        let (name, newname) = match (name_of(name), name_of(newname)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return reply.error(Errno::EINVAL),
        };
        let (from, to) = (fid_of(parent), fid_of(newparent));
        self.run(
            move |v| async move {
                if noreplace {
                    v.rename_noreplace(from, &name, to, &newname).await
                } else {
                    v.rename(from, &name, to, &newname).await
                }
            },
            empty(reply),
        );
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No KEEP_CACHE: the kernel drops this file's cached pages at every open.
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fid = fid_of(ino);
        self.run(
            move |v| async move { v.read(fid, offset, size).await },
            move |r| match r {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(e),
            },
        );
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let fid = fid_of(ino);
        let data = data.to_vec();
        let durable = flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0;
        self.run(
            move |v| async move { v.write(fid, offset, &data, durable).await },
            move |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            },
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok(); // writes were sent through before they were answered
    }

    /// No ioctls: "not a terminal", what a regular file answers (Python's `open` asks each
    /// file whether it is a tty; fuser's default logs a warning per call).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _d: bool, reply: ReplyEmpty) {
        let fid = fid_of(ino);
        self.run(move |v| async move { v.fsync(fid).await }, empty(reply));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let fid = fid_of(ino);
        // The offset of an entry is the volume's cursor after it (a name hash).
        self.run(
            move |v| async move { v.readdir(fid, offset, READDIR_BATCH).await },
            move |r| match r {
                Ok(page) => {
                    for e in &page.entries {
                        let kind = file_attr(&e.attr).kind;
                        if reply.add(ino_of(e.attr.fid), e.cookie, kind, &e.name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(e),
            },
        );
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let fid = fid_of(ino);
        self.run(
            move |v| async move { v.readdir(fid, offset, READDIR_BATCH).await },
            move |r| match r {
                Ok(page) => {
                    for e in &page.entries {
                        let attr = file_attr(&e.attr);
                        let (ino, cookie) = (ino_of(e.attr.fid), e.cookie);
                        if reply.add(ino, cookie, &e.name, &ATTR_TTL, &attr, Generation(0)) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(e),
            },
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.run(
            move |v| async move { v.statfs().await },
            move |r| match r {
                Ok(s) => {
                    let bsize = s.block_bytes.max(512);
                    let blocks = |bytes: u64| bytes / bsize as u64;
                    reply.statfs(
                        blocks(s.total_bytes),
                        blocks(s.free_bytes),
                        blocks(s.avail_bytes),
                        s.total_files,
                        s.free_files,
                        bsize,
                        s.name_bytes_max,
                        bsize,
                    );
                }
                Err(e) => reply.error(e),
            },
        );
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
        let name = match name_of(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let (parent, mode) = (fid_of(parent), mode & !umask & 0o7777);
        let exclusive = flags & libc::O_EXCL != 0;
        self.run(
            move |v| async move { v.create(parent, &name, mode, exclusive).await },
            move |r| match r {
                Ok(a) => reply.created(
                    &ATTR_TTL,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(0),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(e),
            },
        );
    }
}

/// The root must be FUSE's root inode for the identity mapping above to hold.
const _: () = assert!(ROOT_FILE_ID == 1);
