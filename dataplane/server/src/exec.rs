//! Executing one decoded request on the core that owns it.

use crate::conn::Session;
use crate::core::{CoreCtx, Forward};
use crate::files;
use crate::{MgmtRequest, ServedVolume};
use brick_store::FsError;
use brick_wire::{
    begin_response, core_of, error_frame, op, response_frame, seal_response, Dec, DecodeError, Enc,
    ErrorCode, Header, Request, WriteReply, WRITE_FIELDS_BYTES, WRITE_FLAG_FUA,
};
use glommio::io::DmaBuffer;
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
    ctx: &CoreCtx,
    session: &Session,
    header: Header,
    payload: Vec<u8>,
) -> Vec<u8> {
    let (id, opcode) = (header.request_id, header.opcode);
    let req = match Request::decode(opcode, &payload) {
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
        Ok(req) => req,
    };
    match req.routing_fid().map(|fid| core_of(fid, ctx.ncores)) {
        Some(core) if core != ctx.core => forward(ctx, core, header, payload).await,
        _ => match execute(ctx, id, req).await {
            Ok(frame) => frame,
            Err(e) => fs_error_reply(id, opcode, e),
        },
    }
}

/// A WRITE whose data was read straight into a DMA buffer (see conn.rs).
pub(crate) async fn dispatch_bulk_write(
    ctx: &CoreCtx,
    header: Header,
    fields: [u8; WRITE_FIELDS_BYTES],
    data: DmaBuffer,
) -> Vec<u8> {
    let (id, opcode) = (header.request_id, header.opcode);
    let mut d = Dec::new(&fields);
    let (Ok(vol), Ok(fid), Ok(offset), Ok(flags)) = (
        d.u32("volume"),
        d.u64("fid"),
        d.u64("offset"),
        d.u32("flags"),
    ) else {
        return error_reply(id, opcode, ErrorCode::Malformed, "write fields");
    };
    let core = core_of(fid, ctx.ncores);
    if core != ctx.core {
        let mut payload = fields.to_vec();
        payload.extend_from_slice(data.as_bytes());
        return forward(ctx, core, header, payload).await;
    }
    let result = async {
        let vol = volume(ctx, vol)?;
        offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| FsError::new(ErrorCode::FileTooBig, "offset + length overflows"))?;
        let f = files::open(&ctx.files, &vol, fid).await?;
        files::write_dma(&f, offset, data, flags & WRITE_FLAG_FUA != 0).await
    }
    .await;
    match result {
        Ok(written) => ok_payload(id, opcode, |e| WriteReply { written }.encode(e)),
        Err(e) => fs_error_reply(id, opcode, e),
    }
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

pub(crate) async fn execute_payload(
    ctx: &CoreCtx,
    opcode: u16,
    id: u64,
    payload: &[u8],
) -> Vec<u8> {
    let req = match Request::decode(opcode, payload) {
        Ok(r) => r,
        Err(e) => return error_reply(id, opcode, decode_error_code(&e), &e.to_string()),
    };
    match execute(ctx, id, req).await {
        Ok(frame) => frame,
        Err(e) => fs_error_reply(id, opcode, e),
    }
}

fn ok_payload(id: u64, opcode: u16, encode: impl FnOnce(&mut Enc)) -> Vec<u8> {
    let mut e = Enc::with_capacity(128);
    encode(&mut e);
    let mut out = Vec::with_capacity(e.buf.len() + 32);
    response_frame(&mut out, id, opcode, 0, &e.buf);
    out
}

async fn execute(ctx: &CoreCtx, id: u64, req: Request<'_>) -> Result<Vec<u8>, FsError> {
    let opcode = req.opcode();
    let Some(vol_id) = req.volume() else {
        return Err(FsError::new(ErrorCode::UnknownOp, "not a volume operation"));
    };
    let vol = volume(ctx, vol_id)?;
    let brick = &vol.brick;
    let attr_reply = |a: brick_wire::Attr| ok_payload(id, opcode, |e| a.encode(e));
    let empty = || ok_payload(id, opcode, |_| {});
    Ok(match req {
        Request::Read {
            fid, offset, len, ..
        } => {
            let f = files::open(&ctx.files, &vol, fid).await?;
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
            let f = files::open(&ctx.files, &vol, fid).await?;
            offset
                .checked_add(data.len() as u64)
                .ok_or_else(|| FsError::new(ErrorCode::FileTooBig, "offset + length overflows"))?;
            let written = files::write(&f, offset, data, flags & WRITE_FLAG_FUA != 0).await?;
            ok_payload(id, opcode, |e| WriteReply { written }.encode(e))
        }
        Request::Fsync { fid, .. } => {
            let f = files::open(&ctx.files, &vol, fid).await;
            match f {
                Ok(f) => files::sync(&f).await?,
                // Directories and symlinks have no data to sync; their namespace is synced below.
                Err(e) if e.code == ErrorCode::IsDir || e.code == ErrorCode::Invalid => {}
                Err(e) => return Err(e),
            }
            brick.sync_namespace(fid)?;
            empty()
        }
        Request::Lookup { parent, name, .. } => attr_reply(brick.lookup(parent, name)?),
        Request::GetAttr { fid, .. } => attr_reply(brick.getattr(fid)?),
        Request::SetAttr { fid, attr, .. } => attr_reply(brick.setattr(fid, &attr)?),
        Request::Create {
            parent,
            name,
            mode,
            exclusive,
            ..
        } => attr_reply(brick.create(parent, name, mode, exclusive)?),
        Request::Mkdir {
            parent, name, mode, ..
        } => attr_reply(brick.mkdir(parent, name, mode)?),
        Request::Symlink {
            parent,
            name,
            target,
            ..
        } => attr_reply(brick.symlink(parent, name, target)?),
        Request::Readlink { fid, .. } => {
            let target = brick.readlink(fid)?;
            ok_payload(id, opcode, |e| {
                e.str(&target);
            })
        }
        Request::Unlink { parent, name, .. } => {
            brick.remove(parent, name, false)?;
            empty()
        }
        Request::Rmdir { parent, name, .. } => {
            brick.remove(parent, name, true)?;
            empty()
        }
        Request::Rename {
            src_parent,
            src_name,
            dst_parent,
            dst_name,
            ..
        } => {
            brick.rename(src_parent, src_name, dst_parent, dst_name)?;
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
