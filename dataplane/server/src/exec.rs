//! Executing one decoded request on the core that owns it.

use crate::conn::Session;
use crate::core::{CoreCtx, Forward};
use crate::files;
use crate::repl::{self, PreparedData};
use crate::{MgmtRequest, ServedVolume};
use brick_replication::LockKey;
use brick_store::{Brick, FsError, FsResult};
use brick_tuning::IO_BYTES_MAX;
use brick_wire::{
    begin_response, error_frame, op, pg_of, response_frame, response_head, seal_response, Dec,
    DecodeError, Enc, ErrorCode, FileId, FileKind, Header, Request, SetAttr, TimeSet, WriteReply,
    HEADER_BYTES, RENAME_NOREPLACE, WRITE_FIELDS_BYTES, WRITE_FLAG_FUA,
};
use glommio::io::{DmaBuffer, ReadResult};
use std::rc::Rc;
use std::sync::Arc;

fn error_reply(request_id: u64, opcode: u16, code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    error_frame(&mut out, request_id, opcode, code, message);
    out
}

fn decode_error_code(e: &DecodeError) -> ErrorCode {
    match e {
        DecodeError::UnknownOpcode(_) => ErrorCode::UnknownOp,
        _ => ErrorCode::Malformed,
    }
}

fn fs_error_reply(request_id: u64, opcode: u16, e: FsError) -> Vec<u8> {
    error_reply(request_id, opcode, e.code, &e.message)
}

/// Entry point for requests read from a connection on this core.
pub(crate) async fn dispatch(
    ctx: &Rc<CoreCtx>,
    session: &Session,
    header: Header,
    payload: Vec<u8>,
) -> Vec<u8> {
    let (id, opcode) = (header.request_id, header.opcode);
    if opcode == op::REPL {
        if !session.peer {
            return error_reply(
                id,
                opcode,
                ErrorCode::AuthFailed,
                "only nodes may send REPL",
            );
        }
        let Some(pg) = repl::repl_pg(&payload) else {
            return error_reply(id, opcode, ErrorCode::Malformed, "short REPL frame");
        };
        return route(ctx, pg, header, Rc::new(payload), PreparedData::default()).await;
    }
    let pg = match Request::decode(opcode, &payload) {
        Err(e) => return error_reply(id, opcode, decode_error_code(&e), &e.to_string()),
        Ok(Request::Hello { .. }) | Ok(Request::Auth { .. }) => {
            return error_reply(
                id,
                opcode,
                ErrorCode::Malformed,
                "handshake already completed",
            )
        }
        Ok(Request::Mgmt { doc }) => return mgmt(ctx, session, id, doc.to_vec()).await,
        Ok(req) => req.pg(),
    };
    route(ctx, pg, header, Rc::new(payload), PreparedData::default()).await
}

/// A reply as it goes to a socket: a whole frame, or a READ's header and its data as the disk
/// returned it (O_DIRECT), written after the header without being copied into a frame.
pub(crate) enum Reply {
    Frame(Vec<u8>),
    Read {
        head: [u8; HEADER_BYTES],
        data: ReadResult,
    },
}

/// A request from a socket connection: a READ of an O_DIRECT file that this core serves is
/// answered with the DMA buffer it was read into (`perf` put the 1 MiB copy into a frame at a
/// quarter of a core's time during a download); everything else goes through `dispatch`.
pub(crate) async fn dispatch_socket(
    ctx: &Rc<CoreCtx>,
    session: &Session,
    header: Header,
    payload: Vec<u8>,
) -> Reply {
    if header.opcode == op::READ {
        if let Some(reply) = read_direct(ctx, &header, &payload).await {
            return reply;
        }
    }
    Reply::Frame(dispatch(ctx, session, header, payload).await)
}

/// The READ in `payload` answered from its DMA buffer; `None` sends it the general way (another
/// core's PG, a file without O_DIRECT, or anything amiss before the read, which the general
/// path then reports). Checks as `serve` does for reads: the volume, and that this node holds
/// the PG's primary.
async fn read_direct(ctx: &Rc<CoreCtx>, header: &Header, payload: &[u8]) -> Option<Reply> {
    let Ok(
        req @ Request::Read {
            vol,
            fid,
            offset,
            len,
        },
    ) = Request::decode(header.opcode, payload)
    else {
        return None;
    };
    let pg = req.pg();
    if len == 0 || pg as usize % ctx.ncores.max(1) != ctx.core {
        return None;
    }
    let vol = volume(ctx, vol).ok()?;
    let member = repl::local_primary(ctx, &vol, pg).ok()?;
    let brick = local_brick(&vol, member).ok()?;
    let f = files::open(&ctx.files, &vol, member, &brick, fid)
        .await
        .ok()?;
    let dma = files::direct(&f)?;
    let (id, opcode) = (header.request_id, header.opcode);
    Some(match dma.read_at(offset, len as usize).await {
        Ok(data) => Reply::Read {
            head: response_head(id, opcode, &data),
            data,
        },
        Err(e) => Reply::Frame(fs_error_reply(id, opcode, files::io_err("read", e))),
    })
}

/// Serves a request on the core owning its PG (here, or through that core's channel).
async fn route(
    ctx: &Rc<CoreCtx>,
    pg: u32,
    header: Header,
    payload: Rc<Vec<u8>>,
    data_dma: PreparedData,
) -> Vec<u8> {
    let core = pg as usize % ctx.ncores.max(1);
    if core != ctx.core {
        // A DMA buffer stays on the core that allocated it; the owner copies the payload.
        drop(data_dma);
        // Another core's channel takes an owned buffer: copied only if the caller kept a share.
        let payload = Rc::try_unwrap(payload).unwrap_or_else(|shared| (*shared).clone());
        return forward(ctx, core, header, payload).await;
    }
    serve(ctx, header.request_id, header.opcode, payload, data_dma).await
}

/// A WRITE whose data was read straight into a DMA buffer (see conn.rs).
pub(crate) async fn dispatch_bulk_write(
    ctx: &Rc<CoreCtx>,
    header: Header,
    fields: [u8; WRITE_FIELDS_BYTES],
    data: DmaBuffer,
) -> Vec<u8> {
    let mut d = Dec::new(&fields);
    let (Ok(_vol), Ok(fid)) = (d.u32("volume"), d.u64("fid")) else {
        return error_reply(
            header.request_id,
            header.opcode,
            ErrorCode::Malformed,
            "write fields",
        );
    };
    // Replication forwards the bytes to the other members and logs them, so they are needed
    // as a plain buffer; the local O_DIRECT write takes the DMA buffer itself.
    let mut payload = Vec::with_capacity(fields.len() + data.len());
    payload.extend_from_slice(&fields);
    payload.extend_from_slice(data.as_bytes());
    let data_dma = PreparedData::new(data);
    route(ctx, pg_of(fid), header, Rc::new(payload), data_dma).await
}

async fn forward(ctx: &CoreCtx, core: usize, header: Header, payload: Vec<u8>) -> Vec<u8> {
    let (reply_tx, reply_rx) = flume::bounded(1);
    let f = Forward {
        opcode: header.opcode,
        request_id: header.request_id,
        payload,
        reply: reply_tx,
    };
    if ctx.peers[core].send_async(f).await.is_err() {
        return error_reply(
            header.request_id,
            header.opcode,
            ErrorCode::Unavailable,
            "owning core is gone",
        );
    }
    match reply_rx.recv_async().await {
        Ok(frame) => frame,
        Err(_) => error_reply(
            header.request_id,
            header.opcode,
            ErrorCode::Unavailable,
            "owning core dropped the request",
        ),
    }
}

async fn mgmt(ctx: &CoreCtx, session: &Session, id: u64, doc: Vec<u8>) -> Vec<u8> {
    let (reply_tx, reply_rx) = flume::bounded(1);
    let req = MgmtRequest {
        user: session.user.clone(),
        admin: session.admin,
        doc,
        reply: reply_tx,
    };
    if ctx.mgmt.send_async(req).await.is_err() {
        return error_reply(
            id,
            op::MGMT,
            ErrorCode::Unavailable,
            "management plane is shutting down",
        );
    }
    match reply_rx.recv_async().await {
        Ok(Ok(doc)) => {
            let mut out = Vec::new();
            response_frame(&mut out, id, op::MGMT, 0, &doc);
            out
        }
        Ok(Err((code, message))) => error_reply(id, op::MGMT, code, &message),
        Err(_) => error_reply(
            id,
            op::MGMT,
            ErrorCode::Unavailable,
            "management plane dropped the request",
        ),
    }
}

fn volume(ctx: &CoreCtx, vol: u32) -> Result<Arc<ServedVolume>, FsError> {
    ctx.state().volumes.get(&vol).cloned().ok_or_else(|| {
        FsError::new(
            ErrorCode::VolumeStopped,
            format!("volume {vol} is not served by this node (not started?)"),
        )
    })
}

/// A request handed over by another core (it owns this request's PG here).
pub(crate) async fn execute_payload(
    ctx: &Rc<CoreCtx>,
    opcode: u16,
    id: u64,
    payload: Vec<u8>,
) -> Vec<u8> {
    serve(ctx, id, opcode, Rc::new(payload), PreparedData::default()).await
}

/// A data request built on this core by a protocol it serves itself (NBD): the payload is
/// shared, so the caller still has it if the request has to go elsewhere.
pub(crate) async fn dispatch_shared(
    ctx: &Rc<CoreCtx>,
    header: Header,
    payload: Rc<Vec<u8>>,
) -> Vec<u8> {
    let (id, opcode) = (header.request_id, header.opcode);
    let pg = match Request::decode(opcode, &payload) {
        Ok(req) if req.volume().is_some() => req.pg(),
        Ok(_) => return error_reply(id, opcode, ErrorCode::UnknownOp, "not a volume operation"),
        Err(e) => return error_reply(id, opcode, decode_error_code(&e), &e.to_string()),
    };
    route(ctx, pg, header, payload, PreparedData::default()).await
}

/// Serves one request on the core that owns its PG: replication traffic, reads on the PG's
/// primary, and writes and namespace changes through the replication core.
async fn serve(
    ctx: &Rc<CoreCtx>,
    id: u64,
    opcode: u16,
    payload: Rc<Vec<u8>>,
    data_dma: PreparedData,
) -> Vec<u8> {
    if opcode == op::REPL {
        return match repl::on_peer_frame(ctx, &payload) {
            Ok(()) => Vec::new(), // one-way: no reply
            Err(e) => error_reply(id, opcode, ErrorCode::Malformed, &e.to_string()),
        };
    }
    let req = match Request::decode(opcode, &payload) {
        Ok(r) => r,
        Err(e) => return error_reply(id, opcode, decode_error_code(&e), &e.to_string()),
    };
    let Some(vol_id) = req.volume() else {
        return error_reply(id, opcode, ErrorCode::UnknownOp, "not a volume operation");
    };
    let vol = match volume(ctx, vol_id) {
        Ok(v) => v,
        Err(e) => return fs_error_reply(id, opcode, e),
    };
    let pg = req.pg();
    if req.is_read_only() {
        let member = match repl::local_primary(ctx, &vol, pg) {
            Ok(m) => m,
            Err(why) => return error_reply(id, opcode, ErrorCode::NotPrimary, &why),
        };
        return match execute(ctx, id, &vol, member, req, None, &PreparedData::default()).await {
            Ok(frame) => frame,
            Err(e) => fs_error_reply(id, opcode, e),
        };
    }
    let lock = lock_of(&req);
    let local_first = req.is_namespace_change();
    let sub = repl::Submission {
        request_id: id,
        body: repl::Body {
            opcode,
            minted: 0,
            payload,
            data_dma,
        },
        lock,
        local_first,
    };
    repl::submit(ctx, &vol, pg, sub).await
}

/// What a change excludes while it runs: its byte range, its whole file, or the namespace.
fn lock_of(req: &Request<'_>) -> LockKey {
    match *req {
        Request::Write {
            fid, offset, data, ..
        } => LockKey::range(fid, offset, data.len() as u64),
        Request::SetAttr { fid, .. } | Request::Fsync { fid, .. } => LockKey::whole_file(fid),
        _ => LockKey::NAMESPACE,
    }
}

/// Applies a replicated operation to one local member's copy; returns its reply frame.
pub(crate) async fn apply(
    ctx: &CoreCtx,
    vol: &ServedVolume,
    member: u8,
    id: u64,
    body: &repl::Body,
) -> Vec<u8> {
    if body.opcode == repl::NOOP {
        return ok_payload(id, body.opcode, |_| {});
    }
    if body.opcode == crate::heal::HEAL_NAMESPACE {
        let applied = match local_brick(vol, member) {
            Ok(brick) => {
                let payload = body.payload.as_ref().clone();
                off_core(&brick, move |b| crate::heal::apply_catch_up(b, &payload)).await
            }
            Err(e) => Err(e),
        };
        return match applied {
            Ok(()) => ok_payload(id, body.opcode, |_| {}),
            Err(e) => fs_error_reply(id, body.opcode, e),
        };
    }
    let minted = (body.minted != 0).then_some(body.minted);
    for attempt in 0.. {
        let req = match Request::decode(body.opcode, &body.payload) {
            Ok(r) => r,
            Err(e) => return error_reply(id, body.opcode, decode_error_code(&e), &e.to_string()),
        };
        match execute(ctx, id, vol, member, req, minted, &body.data_dma).await {
            Ok(frame) => return frame,
            // The namespace changed while a file was being opened: resolve it again.
            Err(e) if e.code == ErrorCode::Unavailable && attempt < APPLY_ATTEMPTS_MAX => {}
            Err(e) => return fs_error_reply(id, body.opcode, e),
        }
    }
    unreachable!("the loop returns")
}

const APPLY_ATTEMPTS_MAX: u32 = 5;

/// What a new primary forwards to make an in-doubt range identical on every member: the
/// range's bytes as a WRITE, a whole file's attributes as a SETATTR. (The namespace is
/// resynced by directory listings, in `repl.rs`.)
pub(crate) async fn resync_body(
    ctx: &CoreCtx,
    vol: &ServedVolume,
    member: u8,
    lock: LockKey,
) -> Result<repl::Body, String> {
    let noop = repl::Body::noop;
    let gone = |e: &FsError| {
        matches!(
            e.code,
            ErrorCode::Stale | ErrorCode::NotFound | ErrorCode::IsDir | ErrorCode::Invalid
        )
    };
    if lock.fid == LockKey::NAMESPACE.fid {
        return Ok(noop());
    }
    let brick = local_brick(vol, member).map_err(|e| e.message)?;
    let mut e = Enc::default();
    if lock.end == u64::MAX {
        let a = match brick.getattr(lock.fid) {
            Ok(a) => a,
            Err(err) if gone(&err) => return Ok(noop()),
            Err(err) => return Err(err.message),
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
        return Ok(repl::Body {
            opcode: op::SETATTR,
            minted: 0,
            payload: Rc::new(e.buf),
            data_dma: Default::default(),
        });
    }
    let len = (lock.end - lock.start).min(IO_BYTES_MAX as u64) as u32;
    let f = match files::open(&ctx.files, vol, member, &brick, lock.fid).await {
        Ok(f) => f,
        Err(err) if gone(&err) => return Ok(noop()),
        Err(err) => return Err(err.message),
    };
    let mut data = Vec::with_capacity(len as usize);
    files::read(&f, lock.start, len, &mut data)
        .await
        .map_err(|e| e.message)?;
    Request::Write {
        vol: vol.id,
        fid: lock.fid,
        offset: lock.start,
        flags: 0,
        data: &data,
    }
    .encode(&mut e);
    Ok(repl::Body {
        opcode: op::WRITE,
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
async fn off_core<T: Send + 'static>(
    brick: &Arc<Brick>,
    change: impl FnOnce(&Brick) -> FsResult<T> + Send + 'static,
) -> FsResult<T> {
    let brick = brick.clone();
    glommio::executor()
        .spawn_blocking(move || change(&brick))
        .await
}

fn local_brick(vol: &ServedVolume, member: u8) -> Result<Arc<Brick>, FsError> {
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

fn ok_payload(id: u64, opcode: u16, encode: impl FnOnce(&mut Enc)) -> Vec<u8> {
    let mut e = Enc::with_capacity(128);
    encode(&mut e);
    let mut out = Vec::with_capacity(e.buf.len() + 32);
    response_frame(&mut out, id, opcode, 0, &e.buf);
    out
}

/// Executes a request on one local member's copy. `minted`: the id a new entry gets (the
/// primary's choice, on the other members).
async fn execute(
    ctx: &CoreCtx,
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
            let f = files::open(&ctx.files, vol, member, brick, fid).await?;
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
            let f = files::open(&ctx.files, vol, member, brick, fid).await?;
            offset
                .checked_add(data.len() as u64)
                .ok_or_else(|| FsError::new(ErrorCode::FileTooBig, "offset + length overflows"))?;
            let fua = flags & WRITE_FLAG_FUA != 0;
            let written = files::write(&f, offset, data, data_dma.take(), fua).await?;
            ok_payload(id, opcode, |e| WriteReply { written }.encode(e))
        }
        Request::Fsync { fid, .. } => {
            let f = files::open(&ctx.files, vol, member, brick, fid).await;
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
