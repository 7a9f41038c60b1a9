//! Executing one request on one local member's brick: reads for the primary, and the bodies
//! of replicated operations on every member (client requests, heal and resync bodies). The
//! bottom of the request path: no routing, no replication, only the brick and the core's
//! open-file cache.

use crate::files::{self, FileCache};
use crate::state::ServedVolume;
use brick_replication::body::{decode_catch_up, CatchUpWriter, ListedEntry};
use brick_replication::{BodyOp, LocalCopy, LockKey, LockKind};
use brick_store::{Brick, FsError, FsResult, HealEntry};
use brick_tuning::{APPLY_ATTEMPTS_MAX, IO_BYTES_MAX};
use brick_wire::{
    begin_response, error_frame, op, response_frame, seal_response, DecodeError, Enc, ErrorCode,
    FileId, FileKind, Request, SetAttr, TimeSet, WriteReply, HEADER_BYTES, RENAME_NOREPLACE,
    ROOT_FILE_ID, WRITE_FLAG_FUA,
};
use glommio::io::DmaBuffer;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashSet};
use std::rc::Rc;
use std::sync::Arc;

/// What a replicated operation applies on every member: a request as a client sent it (or a
/// heal or resync body), plus the file id the primary minted for a new entry (0: none).
#[derive(Clone)]
pub(crate) struct Body {
    pub op: BodyOp,
    pub minted: u64,
    pub payload: Rc<Vec<u8>>,
    /// A WRITE's data as it was read off the socket, in an aligned DMA buffer.
    pub data_dma: PreparedData,
}

impl Body {
    pub fn noop() -> Body {
        Body {
            op: BodyOp::Noop,
            minted: 0,
            payload: Rc::new(Vec::new()),
            data_dma: Default::default(),
        }
    }
}

/// A WRITE's data already in an aligned DMA buffer (read off the socket into it,
/// `dispatch::dispatch_bulk_write`), the same bytes as the data in `Body::payload`. The local
/// O_DIRECT write takes it instead of copying the payload into a new aligned buffer. Clones of
/// a body share it and the first local write takes it; every other use reads `payload`.
#[derive(Clone, Default)]
pub(crate) struct PreparedData(Option<Rc<Cell<Option<DmaBuffer>>>>);

impl PreparedData {
    pub fn new(data: DmaBuffer) -> Self {
        PreparedData(Some(Rc::new(Cell::new(Some(data)))))
    }

    pub fn take(&self) -> Option<DmaBuffer> {
        self.0.as_ref().and_then(|cell| cell.take())
    }
}

pub(crate) fn error_reply(request_id: u64, opcode: u16, code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    error_frame(&mut out, request_id, opcode, code, message);
    out
}

pub(crate) fn decode_error_code(e: &DecodeError) -> ErrorCode {
    match e {
        DecodeError::UnknownOpcode(_) => ErrorCode::UnknownOp,
        _ => ErrorCode::Malformed,
    }
}

pub(crate) fn fs_error_reply(request_id: u64, opcode: u16, e: FsError) -> Vec<u8> {
    error_reply(request_id, opcode, e.code, &e.message)
}

/// What a change excludes while it runs: its byte range, its whole file, or the namespace.
pub(crate) fn lock_of(req: &Request<'_>) -> LockKey {
    match *req {
        Request::Write {
            fid, offset, data, ..
        } => LockKey::range(fid, offset, data.len() as u64),
        Request::SetAttr { fid, .. } | Request::Fsync { fid, .. } => LockKey::whole_file(fid),
        _ => LockKey::NAMESPACE,
    }
}

/// What a read looks at, for `Replica::read_gate`: it waits for unacknowledged writes there.
pub(crate) fn read_lock_of(req: &Request<'_>) -> LockKey {
    match *req {
        Request::Read {
            fid, offset, len, ..
        } => LockKey::range(fid, offset, u64::from(len)),
        Request::GetAttr { fid, .. } => LockKey::whole_file(fid),
        _ => LockKey::NAMESPACE,
    }
}

/// Applies a replicated operation to one local member's copy; returns its reply frame.
/// A hand-off is not applied to the brick: the replication driver records it.
pub(crate) async fn apply(
    files: &RefCell<FileCache>,
    vol: &ServedVolume,
    member: u8,
    id: u64,
    body: &Body,
) -> Vec<u8> {
    let code = body.op.code();
    let opcode = match body.op {
        BodyOp::Noop | BodyOp::Handoff => return ok_payload(id, code, |_| {}),
        BodyOp::CatchUp => {
            let applied = match local_brick(vol, member) {
                Ok(brick) => {
                    let payload = body.payload.as_ref().clone();
                    off_core(&brick, move |b| apply_catch_up(b, &payload)).await
                }
                Err(e) => Err(e),
            };
            return match applied {
                Ok(()) => ok_payload(id, code, |_| {}),
                Err(e) => fs_error_reply(id, code, e),
            };
        }
        BodyOp::Request(opcode) => opcode,
        BodyOp::Copy(opcode) => return apply_copy(files, vol, member, id, body, opcode).await,
    };
    let minted = (body.minted != 0).then_some(body.minted);
    for attempt in 0..=APPLY_ATTEMPTS_MAX {
        let req = match Request::decode(opcode, &body.payload) {
            Ok(r) => r,
            Err(e) => return error_reply(id, opcode, decode_error_code(&e), &e.to_string()),
        };
        match execute(files, id, vol, member, req, minted, &body.data_dma).await {
            Ok(frame) => return frame,
            // The namespace changed while a file was being opened: resolve it again.
            Err(e) if e.code == ErrorCode::Unavailable && attempt < APPLY_ATTEMPTS_MAX => {}
            Err(e) => return fs_error_reply(id, opcode, e),
        }
    }
    error_reply(
        id,
        opcode,
        ErrorCode::Unavailable,
        "the namespace kept changing",
    )
}

/// A heal's or a new primary's copy (`BodyOp::Copy`): applied as its request, except that a
/// file removed from this brick's namespace gets it in limbo (if it is there: a repair may
/// bring it back and its data must match), or not at all.
async fn apply_copy(
    files: &RefCell<FileCache>,
    vol: &ServedVolume,
    member: u8,
    id: u64,
    body: &Body,
    opcode: u16,
) -> Vec<u8> {
    let request = Body {
        op: BodyOp::Request(opcode),
        ..body.clone()
    };
    let frame = Box::pin(apply(files, vol, member, id, &request)).await;
    let missing = [ErrorCode::Stale.code(), ErrorCode::NotFound.code()];
    let head: Option<&[u8; HEADER_BYTES]> =
        frame.get(..HEADER_BYTES).and_then(|h| h.try_into().ok());
    let status = head
        .and_then(|h| brick_wire::Header::parse(h).ok())
        .map_or(0, |h| h.status);
    if !missing.contains(&status) {
        return frame;
    }
    let brick = match local_brick(vol, member) {
        Ok(b) => b,
        Err(e) => return fs_error_reply(id, opcode, e),
    };
    let payload = body.payload.as_ref().clone();
    let into_limbo = off_core(&brick, move |b| match Request::decode(opcode, &payload) {
        Ok(Request::Write {
            fid, offset, data, ..
        }) => b.write_limbo(fid, offset, data),
        Ok(Request::SetAttr { fid, attr, .. }) => b.setattr_limbo(fid, &attr),
        _ => Ok(()),
    })
    .await;
    match into_limbo {
        Ok(()) => ok_payload(id, opcode, |_| {}),
        Err(e) => fs_error_reply(id, opcode, e),
    }
}

/// What a new primary forwards to make an in-doubt range identical on every member: the
/// range's bytes as a WRITE, a whole file's attributes as a SETATTR. (The namespace is
/// resynced by directory listings, in `repl.rs`.)
pub(crate) async fn resync_body(
    files: &RefCell<FileCache>,
    vol: &ServedVolume,
    member: u8,
    lock: LockKey,
) -> Result<Body, FsError> {
    let noop = Body::noop;
    let gone = |e: &FsError| {
        matches!(
            e.code,
            ErrorCode::Stale | ErrorCode::NotFound | ErrorCode::IsDir | ErrorCode::Invalid
        )
    };
    let whole_file = match lock.kind() {
        LockKind::WholeFile(_) => true,
        LockKind::Range { .. } => false,
        LockKind::Namespace | LockKind::Everything | LockKind::Handoff => return Ok(noop()),
    };
    let brick = local_brick(vol, member)?;
    let mut e = Enc::default();
    if whole_file {
        // A file in limbo is still the PG's data (a repair may bring it back).
        let a = match brick.getattr(lock.fid) {
            Ok(a) => a,
            Err(err) if gone(&err) => match brick.limbo_attr(lock.fid) {
                Ok(a) => a,
                Err(_) => return Ok(noop()),
            },
            Err(err) => return Err(err),
        };
        let attr = SetAttr {
            mode: Some(a.mode & 0o7777),
            uid: Some(a.uid),
            gid: Some(a.gid),
            size: (a.kind == FileKind::File).then_some(a.size),
            atime: TimeSet::To(a.atime),
            mtime: TimeSet::To(a.mtime),
        };
        Request::SetAttr {
            vol: vol.id,
            fid: lock.fid,
            attr,
        }
        .encode(&mut e);
        return Ok(Body {
            op: BodyOp::Copy(op::SETATTR),
            minted: 0,
            payload: Rc::new(e.buf),
            data_dma: Default::default(),
        });
    }
    let len = (lock.end - lock.start).min(IO_BYTES_MAX as u64) as u32;
    let data = match files::open(files, vol, member, &brick, lock.fid).await {
        Ok(f) => {
            let mut data = Vec::with_capacity(len as usize);
            files::read(&f, lock.start, len, &mut data).await?;
            data
        }
        Err(err) if gone(&err) && brick.limbo_path(lock.fid).is_some() => {
            let (fid, start) = (lock.fid, lock.start);
            off_core(&brick, move |b| b.read_limbo(fid, start, len)).await?
        }
        Err(err) if gone(&err) => return Ok(noop()),
        Err(err) => return Err(err),
    };
    Request::Write {
        vol: vol.id,
        fid: lock.fid,
        offset: lock.start,
        flags: 0,
        data: &data,
    }
    .encode(&mut e);
    Ok(Body {
        op: BodyOp::Copy(op::WRITE),
        minted: 0,
        payload: Rc::new(e.buf),
        data_dma: Default::default(),
    })
}

/// Runs a namespace change on the core's blocking thread. Such syscalls wait for the file
/// system's journal, and the last unlink or a truncate frees blocks in the calling thread (a
/// second for a GiB on a `discard` mount under load): on the core that would hold every
/// client it serves and its heartbeats, and the PGs it serves would lose members. Changes of
/// one core still run one at a time, in order, as they did on the core.
pub(crate) async fn off_core<T: Send + 'static>(
    brick: &Arc<Brick>,
    change: impl FnOnce(&Brick) -> FsResult<T> + Send + 'static,
) -> FsResult<T> {
    let brick = brick.clone();
    glommio::executor()
        .spawn_blocking(move || change(&brick))
        .await
}

pub(crate) fn local_brick(vol: &ServedVolume, member: u8) -> Result<Arc<Brick>, FsError> {
    vol.members
        .get(member as usize)
        .and_then(|m| m.brick.clone())
        .ok_or_else(|| {
            FsError::new(
                ErrorCode::VolumeStopped,
                format!("member {member} of volume {} is not on this node", vol.name),
            )
        })
}

pub(crate) fn ok_payload(id: u64, opcode: u16, encode: impl FnOnce(&mut Enc)) -> Vec<u8> {
    let mut e = Enc::with_capacity(128);
    encode(&mut e);
    let mut out = Vec::with_capacity(e.buf.len() + 32);
    response_frame(&mut out, id, opcode, 0, &e.buf);
    out
}

/// Executes a request on one local member's copy. `minted`: the id a new entry gets (the
/// primary's choice, on the other members).
pub(crate) async fn execute(
    files: &RefCell<FileCache>,
    id: u64,
    vol: &ServedVolume,
    member: u8,
    req: Request<'_>,
    minted: Option<FileId>,
    data_dma: &PreparedData,
) -> Result<Vec<u8>, FsError> {
    let opcode = req.opcode();
    let brick = &local_brick(vol, member)?;
    let attr_reply = |a: brick_wire::Attr| ok_payload(id, opcode, |e| a.encode(e));
    let empty = || ok_payload(id, opcode, |_| {});
    Ok(match req {
        Request::Read {
            fid, offset, len, ..
        } => {
            let f = files::open(files, vol, member, brick, fid).await?;
            let mut out = begin_response(len as usize);
            files::read(&f, offset, len, &mut out).await?;
            seal_response(&mut out, id, opcode);
            out
        }
        Request::Write {
            fid,
            offset,
            flags,
            data,
            ..
        } => {
            let f = files::open(files, vol, member, brick, fid).await?;
            offset
                .checked_add(data.len() as u64)
                .ok_or_else(|| FsError::new(ErrorCode::FileTooBig, "offset + length overflows"))?;
            let fua = flags & WRITE_FLAG_FUA != 0;
            let written = files::write(&f, offset, data, data_dma.take(), fua).await?;
            ok_payload(id, opcode, |e| WriteReply { written }.encode(e))
        }
        Request::Fsync { fid, .. } => {
            let f = files::open(files, vol, member, brick, fid).await;
            match f {
                Ok(f) => files::sync(&f).await?,
                // Directories and symlinks have no data to sync; their namespace is synced below.
                Err(e) if e.code == ErrorCode::IsDir || e.code == ErrorCode::Invalid => {}
                Err(e) => return Err(e),
            }
            // Directory and index fsyncs are plain syscalls: off the core, which keeps
            // serving (handshakes, other PGs) while the disk catches up.
            let syncing = brick.clone();
            glommio::executor()
                .spawn_blocking(move || syncing.sync_namespace(fid))
                .await?;
            empty()
        }
        Request::Lookup { parent, name, .. } => attr_reply(brick.lookup(parent, name)?),
        Request::GetAttr { fid, .. } => attr_reply(brick.getattr(fid)?),
        Request::SetAttr { fid, attr, .. } => {
            attr_reply(off_core(brick, move |b| b.setattr(fid, &attr)).await?)
        }
        Request::Create {
            parent,
            name,
            mode,
            exclusive,
            ..
        } => {
            let name = name.to_owned();
            let create = move |b: &Brick| b.create_as(parent, &name, mode, exclusive, minted);
            attr_reply(off_core(brick, create).await?)
        }
        Request::Mkdir {
            parent, name, mode, ..
        } => {
            let name = name.to_owned();
            attr_reply(off_core(brick, move |b| b.mkdir_as(parent, &name, mode, minted)).await?)
        }
        Request::Symlink {
            parent,
            name,
            target,
            ..
        } => {
            let (name, target) = (name.to_owned(), target.to_owned());
            let link = move |b: &Brick| b.symlink_as(parent, &name, &target, minted);
            attr_reply(off_core(brick, link).await?)
        }
        Request::Readlink { fid, .. } => {
            let target = brick.readlink(fid)?;
            ok_payload(id, opcode, |e| {
                e.str(&target);
            })
        }
        Request::Unlink { parent, name, .. } => {
            let name = name.to_owned();
            off_core(brick, move |b| b.remove(parent, &name, false)).await?;
            empty()
        }
        Request::Rmdir { parent, name, .. } => {
            let name = name.to_owned();
            off_core(brick, move |b| b.remove(parent, &name, true)).await?;
            empty()
        }
        Request::Rename {
            src_parent,
            src_name,
            dst_parent,
            dst_name,
            flags,
            ..
        } => {
            let replace = flags & RENAME_NOREPLACE == 0;
            let (src_name, dst_name) = (src_name.to_owned(), dst_name.to_owned());
            off_core(brick, move |b| {
                b.rename(src_parent, &src_name, dst_parent, &dst_name, replace)
            })
            .await?;
            empty()
        }
        Request::ReadDir {
            fid,
            cookie,
            max_entries,
            ..
        } => {
            let page = brick.readdir(fid, cookie, max_entries)?;
            ok_payload(id, opcode, |e| page.encode(e))
        }
        Request::Statfs { .. } => {
            let s = brick.statfs()?;
            ok_payload(id, opcode, |e| s.encode(e))
        }
        Request::Hello { .. } | Request::Auth { .. } | Request::Mgmt { .. } => {
            return Err(FsError::new(ErrorCode::UnknownOp, "not a volume operation"))
        }
    })
}

/// The body of a namespace catch-up (`BodyOp::CatchUp`): the listings of `dirs` on this member
/// (every directory if `tree`), parents first, which the member being healed makes its own.
pub(crate) fn catch_up_body(brick: &Brick, dirs: &[FileId], tree: bool) -> Result<Body, String> {
    let listed: Vec<FileId> = if tree {
        brick.all_dirs().map_err(|e| e.message)?
    } else {
        dirs.iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let mut order: Vec<(usize, FileId)> = listed
        .into_iter()
        .filter_map(|dir| brick.depth_of(dir).ok().map(|depth| (depth, dir)))
        .collect(); // a directory gone here is dropped by its parent's listing
    order.sort_unstable();
    let mut w = CatchUpWriter::default();
    for (_, dir) in order {
        let entries = match brick.dir_listing(dir) {
            Ok(entries) => entries,
            Err(_) if dir != ROOT_FILE_ID => Vec::new(),
            Err(err) => return Err(err.message),
        };
        let listed: Vec<ListedEntry> = entries
            .into_iter()
            .map(|e| ListedEntry {
                name: e.name,
                fid: e.fid,
                kind: e.kind,
                mode: e.mode,
                target: e.target,
            })
            .collect();
        w.push(dir, &listed).map_err(|e| e.to_string())?;
    }
    Ok(Body {
        op: BodyOp::CatchUp,
        minted: 0,
        payload: Rc::new(w.finish()),
        data_dma: Default::default(),
    })
}

/// Applies a catch-up on the member being healed: every listed directory is made to hold
/// exactly its entries (`Brick::reconcile_dir`).
pub(crate) fn apply_catch_up(brick: &Brick, payload: &[u8]) -> Result<(), FsError> {
    let dirs = decode_catch_up(payload)
        .map_err(|e| FsError::new(ErrorCode::Malformed, format!("namespace catch-up: {e}")))?;
    // Ids listed anywhere in this catch-up: an entry holding one is moved to its place, not
    // removed, even when its directory is reconciled first (a rename across directories).
    let mut placed_later: HashSet<FileId> = dirs
        .iter()
        .flat_map(|(_, e)| e.iter().map(|e| e.fid))
        .collect();
    for (dir, listed) in &dirs {
        let entries: Vec<HealEntry> = listed
            .iter()
            .map(|e| HealEntry {
                name: e.name.clone(),
                fid: e.fid,
                kind: e.kind,
                mode: e.mode,
                target: e.target.clone(),
            })
            .collect();
        brick.reconcile_dir(*dir, &entries, &placed_later)?;
        for e in listed {
            placed_later.remove(&e.fid);
        }
    }
    // Anything still parked was wanted nowhere after all.
    for (dir, _) in &dirs {
        brick.reconcile_dir_parked(*dir)?;
    }
    Ok(())
}

/// What the healer reads of a member's own brick.
pub(crate) struct BrickCopy<'a>(pub &'a Brick);

impl LocalCopy for BrickCopy<'_> {
    fn ids_in_pg(&self, pg: u32) -> Vec<FileId> {
        self.0.ids_in_pg(pg)
    }

    fn file_size(&self, fid: FileId) -> Option<u64> {
        let attr = self.0.getattr(fid).or_else(|_| self.0.limbo_attr(fid));
        attr.ok().map(|a| a.size)
    }
}

/// A member with no brick on this node has nothing to read.
pub(crate) struct NoCopy;

impl LocalCopy for NoCopy {
    fn ids_in_pg(&self, _pg: u32) -> Vec<FileId> {
        Vec::new()
    }

    fn file_size(&self, _fid: FileId) -> Option<u64> {
        None
    }
}
