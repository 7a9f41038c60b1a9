//! Dispatching one decoded request: MGMT to the management plane, anything about a PG to the
//! core that owns it (here, or over that core's channel), then reads to the PG's primary copy
//! and changes through the replication driver.

use crate::apply::{
    decode_error_code, error_reply, execute, fs_error_reply, local_brick, lock_of, ok_payload,
    read_lock_of, Body, PreparedData,
};
use crate::ctx::{CoreCtx, Forward};
use crate::files;
use crate::repl::Submission;
use crate::state::{MgmtRequest, ServedVolume};
use brick_replication::codec::repl_pg;
use brick_replication::BodyOp;
use brick_store::FsError;
use brick_wire::{
    op, pg_of, response_frame, response_head, Dec, ErrorCode, Header, Request, HEADER_BYTES,
    WRITE_FIELDS_BYTES,
};
use glommio::io::{DmaBuffer, ReadResult};
use std::rc::Rc;
use std::sync::Arc;

/// Who is on the other end of a connection, once it authenticated.
pub(crate) struct Session {
    pub user: String,
    pub admin: bool,
    /// Another node: may send replication traffic (REPL).
    pub peer: bool,
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
        let Some(pg) = repl_pg(&payload) else {
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
    if len == 0 || ctx.owner_of(pg) != ctx.core() {
        return None;
    }
    let vol = volume(ctx, vol).ok()?;
    let member = ctx.repl().local_primary(&vol, pg).ok()?;
    let brick = local_brick(&vol, member).ok()?;
    let f = files::open(ctx.files(), &vol, member, &brick, fid)
        .await
        .ok()?;
    let dma = files::direct(&f)?;
    let (id, opcode) = (header.request_id, header.opcode);
    let lock = read_lock_of(&req);
    for _ in 0..READ_ATTEMPTS_MAX {
        if let Err(why) = ctx.repl().read_ready(&vol, pg, member, lock).await {
            return Some(Reply::Frame(error_reply(
                id,
                opcode,
                ErrorCode::NotPrimary,
                &why,
            )));
        }
        match dma.read_at(offset, len as usize).await {
            Ok(data) if read_settled(ctx, &vol, pg, member, lock) => {
                return Some(Reply::Read {
                    head: response_head(id, opcode, &data),
                    data,
                })
            }
            Ok(_) => continue,
            Err(e) => {
                let e = files::io_err("read", e);
                return Some(Reply::Frame(read_failed(
                    ctx, &vol, pg, member, id, opcode, e,
                )));
            }
        }
    }
    Some(Reply::Frame(unsettled_reply(id, opcode)))
}

/// A read is answered only if, once it has read the copy, the gate is still open: no write of
/// its range started meanwhile that is not acknowledged (it may be in what was read) and the
/// read lease held until after the read.
fn read_settled(
    ctx: &Rc<CoreCtx>,
    vol: &ServedVolume,
    pg: u32,
    member: u8,
    lock: brick_replication::LockKey,
) -> bool {
    ctx.repl().read_gate(vol, pg, member, &lock) == brick_replication::ReadGate::Serve
}

/// Reads at most this many times while writes of its range keep starting during the read.
const READ_ATTEMPTS_MAX: usize = 3;

fn unsettled_reply(id: u64, opcode: u16) -> Vec<u8> {
    let why = "writes of this range kept starting while it was read, or the primary stopped \
               being sure it still is; retry";
    error_reply(id, opcode, ErrorCode::NotPrimary, why)
}

/// The answer to a read the local copy failed. An I/O error is the disk failing: the member
/// steps down when another copy is up to date, and the client, told `Unavailable`, reads
/// there. Other errors (no such file...) are the answer.
fn read_failed(
    ctx: &Rc<CoreCtx>,
    vol: &ServedVolume,
    pg: u32,
    member: u8,
    id: u64,
    opcode: u16,
    e: FsError,
) -> Vec<u8> {
    if !crate::repl::is_disk_failure(e.code) {
        return fs_error_reply(id, opcode, e);
    }
    tracing::warn!(vol = vol.id, pg, member, "read failed on this brick: {e}");
    if !ctx
        .repl()
        .local_read_failed(vol, pg, member, &e.to_string())
    {
        return fs_error_reply(id, opcode, e);
    }
    let why = format!(
        "this brick's disk failed a read ({}); the member steps down, retry at the new primary",
        e.message
    );
    error_reply(id, opcode, ErrorCode::Unavailable, &why)
}

/// Serves a request on the core owning its PG (here, or through that core's channel).
async fn route(
    ctx: &Rc<CoreCtx>,
    pg: u32,
    header: Header,
    payload: Rc<Vec<u8>>,
    data_dma: PreparedData,
) -> Vec<u8> {
    let core = ctx.owner_of(pg);
    if core != ctx.core() {
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
    if !ctx.forward_to(core, f).await {
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
    if !ctx.send_mgmt(req).await {
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

/// STATFS of one brick of the volume, on its node (a volume of several replica sets has a
/// capacity per set; the client adds them up). Not replicated data: no primary involved.
fn statfs_of_member(id: u64, opcode: u16, vol: &ServedVolume, m: u8) -> Vec<u8> {
    let Some(brick) = vol.members.get(m as usize).and_then(|s| s.brick.as_ref()) else {
        let why = format!("brick {m} of volume {} is not on this node", vol.name);
        return error_reply(id, opcode, ErrorCode::NotFound, &why);
    };
    match brick.statfs() {
        Ok(s) => ok_payload(id, opcode, |e| s.encode(e)),
        Err(e) => fs_error_reply(id, opcode, e),
    }
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
        return match ctx.repl().on_peer_frame(&payload) {
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
    if let Request::Statfs {
        member: Some(m), ..
    } = req
    {
        return statfs_of_member(id, opcode, &vol, m);
    }
    let pg = req.pg();
    if req.is_read_only() {
        let member = match ctx.repl().local_primary(&vol, pg) {
            Ok(m) => m,
            Err(why) => return error_reply(id, opcode, ErrorCode::NotPrimary, &why),
        };
        let lock = read_lock_of(&req);
        for _ in 0..READ_ATTEMPTS_MAX {
            if let Err(why) = ctx.repl().read_ready(&vol, pg, member, lock).await {
                return error_reply(id, opcode, ErrorCode::NotPrimary, &why);
            }
            let none = PreparedData::default();
            match execute(ctx.files(), id, &vol, member, req.clone(), None, &none).await {
                Ok(frame) if read_settled(ctx, &vol, pg, member, lock) => return frame,
                Ok(_) => continue,
                Err(e) => return read_failed(ctx, &vol, pg, member, id, opcode, e),
            }
        }
        return unsettled_reply(id, opcode);
    }
    let lock = lock_of(&req);
    let local_first = req.is_namespace_change();
    let sub = Submission {
        request_id: id,
        body: Body {
            op: BodyOp::Request(opcode),
            minted: 0,
            payload,
            data_dma,
        },
        lock,
        local_first,
    };
    ctx.repl().submit(&vol, pg, sub).await
}
