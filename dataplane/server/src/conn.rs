//! One client connection: handshake, then a read loop that spawns one task per request (up to
//! a limit) and a writer task that coalesces replies into as few socket writes as it can.

use crate::ctx::CoreCtx;
use crate::dispatch::{Reply, Session};
use brick_tuning::{
    BULK_WRITE_BYTES_MIN, COALESCE_BYTES_MAX, REQUEST_OVERHEAD_BYTES, SMALL_REPLY_BYTES_MAX,
};
use brick_tuning::{
    CONNECTION_INFLIGHT_BYTES_MAX, HANDSHAKE_PAYLOAD_BYTES_MAX, HANDSHAKE_TIMEOUT_MS, IO_BYTES_MAX,
};
use brick_tuning::{CONNECTION_INFLIGHT_MAX, FRAME_PAYLOAD_BYTES_MAX};
use brick_wire::frame::{verify_crc, verify_crc_parts, VERSION_MAX, VERSION_MIN};
use brick_wire::local::{LocalConnect, LocalRequest};
use brick_wire::WRITE_FIELDS_BYTES;
use brick_wire::{
    auth, error_frame, op, response_frame, Enc, ErrorCode, Header, HelloReply, Kind, Request,
    Welcome, HEADER_BYTES,
};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::io::{DmaBuffer, ReadResult};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use glommio::sync::StaticPermit;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

pub(crate) async fn serve(ctx: Rc<CoreCtx>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (reader, mut writer) = futures_lite::io::split(stream);
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let handshake_limit = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    let handshake = glommio::timer::timeout(handshake_limit, async {
        Ok(handshake(&ctx, &mut reader, &mut writer).await)
    })
    .await
    .unwrap_or_else(|_| Err(format!("no handshake within {handshake_limit:?}")));
    let session = match handshake {
        Ok(s) => Rc::new(s),
        Err(why) => {
            tracing::info!(core = ctx.core(), %peer, "handshake refused: {why}");
            return;
        }
    };
    let outbox = Rc::new(Outbox::default());
    let writer_task = glommio::spawn_local(write_and_close(writer, outbox.clone()));
    let budget = Rc::new(Semaphore::new(CONNECTION_INFLIGHT_BYTES_MAX));
    loop {
        let (header, header_bytes) = match read_header(&mut reader).await {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(reply) => {
                outbox.push(reply);
                break;
            }
        };
        // The budget is taken before the payload is allocated and given back only once the
        // reply has been written: it bounds this connection's memory whatever the peer does.
        // Every request costs at least 1/CONNECTION_INFLIGHT_MAX of it, which caps their count.
        let request_cost =
            (header.payload_len as u64 + REQUEST_OVERHEAD_BYTES).max(REQUEST_COST_MIN);
        let Ok(request_permit) = budget.acquire_static_permit(request_cost).await else {
            break;
        };
        let body = if is_bulk_write(&header) {
            read_bulk_write(&mut reader, &header)
                .await
                .map(Body::BulkWrite)
        } else {
            read_payload(&mut reader, &header).await.map(Body::Whole)
        };
        let Some(body) = body else { break };
        if let Err(e) = body.verify_crc(&header_bytes) {
            let mut out = Vec::new();
            error_frame(
                &mut out,
                header.request_id,
                header.opcode,
                ErrorCode::Malformed,
                &e.to_string(),
            );
            outbox.push(out);
            break; // the stream can no longer be trusted to be in frame
        }
        let needed =
            header.payload_len as u64 + REQUEST_OVERHEAD_BYTES + body.read_reply_bytes(&header);
        let reply_permit = match needed.saturating_sub(request_cost) {
            0 => None,
            extra => match budget.acquire_static_permit(extra).await {
                Ok(p) => Some(p),
                Err(_) => break,
            },
        };
        let permits = (request_permit, reply_permit);
        let (ctx, session, outbox) = (ctx.clone(), session.clone(), outbox.clone());
        glommio::spawn_local(async move {
            let reply = match body {
                Body::Whole(payload) => {
                    crate::dispatch::dispatch_socket(&ctx, &session, header, payload).await
                }
                Body::BulkWrite((fields, data)) => Reply::Frame(
                    crate::dispatch::dispatch_bulk_write(&ctx, header, fields, data).await,
                ),
            };
            outbox.push_with(reply, permits);
        })
        .detach();
    }
    // Let in-flight requests finish and their replies go out, then close.
    let _ = budget.acquire(CONNECTION_INFLIGHT_BYTES_MAX).await;
    outbox.close();
    let _ = writer_task.await;
}

/// An in-process connection (brick_wire::local): a client in this process, usually a gateway
/// hosted by brickd. The same budget, dispatch and replies as a socket connection; the frames
/// arrive as messages, so there is no stream to keep in frame and no crc32c to check.
pub(crate) async fn serve_local(ctx: Rc<CoreCtx>, connect: LocalConnect) {
    let session = match local_session(&ctx, &connect.user, &connect.key) {
        Ok(s) => Rc::new(s),
        Err(why) => {
            tracing::info!(core = ctx.core(), user = %connect.user, "in-process connection refused: {why}");
            let _ = connect.welcome.send(Err((ErrorCode::AuthFailed, why)));
            return;
        }
    };
    let welcome = Welcome {
        core: ctx.core() as u32,
        shard_addrs: ctx.shard_addrs().to_vec(),
    };
    if connect.welcome.send(Ok(welcome)).is_err() {
        return;
    }
    let budget = Rc::new(Semaphore::new(CONNECTION_INFLIGHT_BYTES_MAX));
    while let Ok(LocalRequest { header, payload }) = connect.requests.recv_async().await {
        if header.kind != Kind::Request
            || header.payload_len as usize != payload.len()
            || header.payload_len > FRAME_PAYLOAD_BYTES_MAX
        {
            tracing::warn!(
                core = ctx.core(),
                "in-process connection sent a malformed frame"
            );
            break;
        }
        let request_cost =
            (header.payload_len as u64 + REQUEST_OVERHEAD_BYTES).max(REQUEST_COST_MIN);
        let reply_bytes = read_reply_bytes(&header, &payload);
        let needed = header.payload_len as u64 + REQUEST_OVERHEAD_BYTES + reply_bytes;
        let Ok(permit) = budget.acquire_static_permit(needed.max(request_cost)).await else {
            break;
        };
        let (ctx, session, replies) = (ctx.clone(), session.clone(), connect.replies.clone());
        glommio::spawn_local(async move {
            let frame = crate::dispatch::dispatch(&ctx, &session, header, payload).await;
            if !frame.is_empty() {
                let _ = replies.send(frame);
            }
            drop(permit);
        })
        .detach();
    }
    let _ = budget.acquire(CONNECTION_INFLIGHT_BYTES_MAX).await;
}

/// The session of an in-process client: the user must exist and the key must be the one the
/// handshake's proof would have been made with.
pub(crate) fn local_session(ctx: &CoreCtx, user: &str, key: &[u8; 32]) -> Result<Session, String> {
    let state = ctx.state();
    match state.users.get(user) {
        Some(u) if auth::keys_equal(&u.key, key) => Ok(Session {
            user: user.to_string(),
            admin: u.admin,
            peer: u.peer,
        }),
        _ => Err(format!("unknown user or wrong password ({user:?})")),
    }
}

/// Replies waiting to be written. Small replies are appended to one buffer so that many go out
/// in one write; large ones (read data) are queued as they are, never copied. The budget
/// permits of each reply travel with it and are released once it is written.
#[derive(Default)]
pub(crate) struct Outbox {
    queue: RefCell<VecDeque<Queued>>,
    permits: RefCell<Vec<StaticPermit>>,
    closed: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// What the writer writes next.
enum Queued {
    /// Bytes from an offset (a reply sent from inside a larger buffer).
    Bytes(Vec<u8>, usize),
    /// A READ's data in the DMA buffer it was read into, after its header.
    Data(ReadResult),
}

/// The least a request costs, so that at most CONNECTION_INFLIGHT_MAX are in flight.
const REQUEST_COST_MIN: u64 = CONNECTION_INFLIGHT_BYTES_MAX / CONNECTION_INFLIGHT_MAX as u64;

impl Outbox {
    fn push_with(&self, reply: Reply, (request, permit): (StaticPermit, Option<StaticPermit>)) {
        let mut permits = self.permits.borrow_mut();
        permits.push(request);
        permits.extend(permit);
        drop(permits);
        match reply {
            Reply::Frame(frame) => self.push(frame),
            Reply::Read { head, data } => {
                self.push(head.to_vec());
                self.queue.borrow_mut().push_back(Queued::Data(data));
            }
        }
    }

    pub(crate) fn push(&self, frame: Vec<u8>) {
        {
            let mut q = self.queue.borrow_mut();
            match q.back_mut() {
                Some(Queued::Bytes(last, _))
                    if frame.len() <= SMALL_REPLY_BYTES_MAX && last.len() < COALESCE_BYTES_MAX =>
                {
                    last.extend_from_slice(&frame)
                }
                _ => q.push_back(Queued::Bytes(frame, 0)),
            }
        }
        self.wake_writer();
    }

    /// Queues `bytes[from..]` as they are (never copied).
    pub(crate) fn push_from(&self, bytes: Vec<u8>, from: usize) {
        assert!(from <= bytes.len());
        self.queue
            .borrow_mut()
            .push_back(Queued::Bytes(bytes, from));
        self.wake_writer();
    }

    fn wake_writer(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub(crate) fn close(&self) {
        self.closed.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits until there is something to write (moved into `batch`, with its permits) or the
    /// outbox is closed.
    async fn take(&self, batch: &mut VecDeque<Queued>, permits: &mut Vec<StaticPermit>) -> bool {
        std::future::poll_fn(|cx| {
            let mut q = self.queue.borrow_mut();
            if !q.is_empty() {
                std::mem::swap(&mut *q, batch);
                std::mem::swap(&mut *self.permits.borrow_mut(), permits);
                return Poll::Ready(true);
            }
            if self.closed.get() {
                return Poll::Ready(false);
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// A request's payload as read from the socket.
enum Body {
    Whole(Vec<u8>),
    /// WRITE fields and data read straight into a DMA buffer, so O_DIRECT needs no copy.
    BulkWrite(([u8; WRITE_FIELDS_BYTES], DmaBuffer)),
}

impl Body {
    /// Bytes a READ's reply will need (the length it asks for); 0 for everything else.
    fn read_reply_bytes(&self, header: &Header) -> u64 {
        match self {
            Body::Whole(p) => read_reply_bytes(header, p),
            Body::BulkWrite(_) => 0,
        }
    }

    fn verify_crc(&self, header_bytes: &[u8; HEADER_BYTES]) -> Result<(), brick_wire::FrameError> {
        match self {
            Body::Whole(payload) => verify_crc(header_bytes, payload),
            Body::BulkWrite((fields, data)) => {
                verify_crc_parts(header_bytes, &[fields, data.as_bytes()])
            }
        }
    }
}

/// Bytes a READ's reply will need (the length it asks for); 0 for everything else.
fn read_reply_bytes(header: &Header, payload: &[u8]) -> u64 {
    if header.opcode != op::READ || payload.len() != 24 {
        return 0;
    }
    let len = u32::from_le_bytes([payload[20], payload[21], payload[22], payload[23]]);
    len.min(IO_BYTES_MAX) as u64
}

fn is_bulk_write(h: &Header) -> bool {
    h.opcode == op::WRITE
        && h.payload_len >= BULK_WRITE_BYTES_MIN + WRITE_FIELDS_BYTES as u32
        && h.payload_len - WRITE_FIELDS_BYTES as u32 <= IO_BYTES_MAX
}

/// Reads and validates a request header. `Ok(None)`: the peer closed. `Err(reply)`: a header
/// that must end the connection, with the error frame to send first.
async fn read_header<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<(Header, [u8; HEADER_BYTES])>, Vec<u8>> {
    let mut header_bytes = [0u8; HEADER_BYTES];
    if reader.read_exact(&mut header_bytes).await.is_err() {
        return Ok(None);
    }
    match Header::parse(&header_bytes) {
        Ok(h) if h.kind == Kind::Request => Ok(Some((h, header_bytes))),
        Ok(h) => Err(malformed(
            h.request_id,
            h.opcode,
            "a client sent a response frame",
        )),
        Err(e) => {
            let request_id = u64::from_le_bytes(header_bytes[8..16].try_into().unwrap_or([0; 8]));
            Err(malformed(request_id, 0, &e.to_string()))
        }
    }
}

/// `None` when the connection was cut in the middle of the payload.
async fn read_payload<R: AsyncRead + Unpin>(reader: &mut R, header: &Header) -> Option<Vec<u8>> {
    let mut payload = vec![0u8; header.payload_len as usize];
    if reader.read_exact(&mut payload).await.is_err() {
        tracing::info!("connection cut in the middle of a frame");
        return None;
    }
    Some(payload)
}

async fn read_bulk_write<R: AsyncRead + Unpin>(
    reader: &mut R,
    header: &Header,
) -> Option<([u8; WRITE_FIELDS_BYTES], DmaBuffer)> {
    let mut fields = [0u8; WRITE_FIELDS_BYTES];
    let mut data = glommio::allocate_dma_buffer(header.payload_len as usize - WRITE_FIELDS_BYTES);
    if reader.read_exact(&mut fields).await.is_err()
        || reader.read_exact(data.as_bytes_mut()).await.is_err()
    {
        tracing::info!("connection cut in the middle of a frame");
        return None;
    }
    Some((fields, data))
}

/// Reads one whole handshake frame; payloads above the handshake limit are refused unread.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<(Header, [u8; HEADER_BYTES], Vec<u8>)>, Vec<u8>> {
    let Some((header, header_bytes)) = read_header(reader).await? else {
        return Ok(None);
    };
    if header.payload_len > HANDSHAKE_PAYLOAD_BYTES_MAX {
        return Err(malformed(
            header.request_id,
            header.opcode,
            &format!(
                "{} payload bytes before authentication; at most {HANDSHAKE_PAYLOAD_BYTES_MAX}",
                header.payload_len
            ),
        ));
    }
    Ok(read_payload(reader, &header)
        .await
        .map(|p| (header, header_bytes, p)))
}

fn malformed(request_id: u64, opcode: u16, why: &str) -> Vec<u8> {
    let mut out = Vec::new();
    error_frame(&mut out, request_id, opcode, ErrorCode::Malformed, why);
    out
}

/// Writes what the outbox is given until it is closed; returns the writer then (`None` when
/// the peer went away), so the caller decides whether the stream ends with it.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    outbox: Rc<Outbox>,
) -> Option<W> {
    let mut batch = VecDeque::new();
    let mut permits = Vec::new();
    while outbox.take(&mut batch, &mut permits).await {
        for queued in batch.drain(..) {
            let bytes = match &queued {
                Queued::Bytes(frame, from) => &frame[*from..],
                Queued::Data(data) => &data[..],
            };
            if writer.write_all(bytes).await.is_err() {
                return None;
            }
        }
        if writer.flush().await.is_err() {
            return None;
        }
        permits.clear(); // written: give the budget back
    }
    Some(writer)
}

async fn write_and_close<W: AsyncWrite + Unpin>(writer: W, outbox: Rc<Outbox>) {
    if let Some(mut writer) = write_loop(writer, outbox).await {
        let _ = writer.close().await;
    }
}

/// HELLO (version + user) -> challenge, AUTH (proof) -> WELCOME with every core's address.
/// Nothing else is accepted before it completes.
async fn handshake<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    ctx: &CoreCtx,
    reader: &mut R,
    writer: &mut W,
) -> Result<Session, String> {
    let (h, payload) = next_handshake_frame(reader, writer, op::HELLO).await?;
    let (user, client_nonce, version_max) = match Request::decode(op::HELLO, &payload) {
        Ok(Request::Hello {
            version_min,
            version_max,
            user,
            client_nonce,
        }) => {
            if version_min > VERSION_MAX || version_max < VERSION_MIN {
                let why = format!("no common protocol version: client {version_min}..={version_max}, server {VERSION_MIN}..={VERSION_MAX}");
                reply_error(writer, h.request_id, op::HELLO, ErrorCode::Malformed, &why).await;
                return Err(why);
            }
            (user.to_string(), client_nonce, version_max)
        }
        Ok(_) => unreachable!("decode of HELLO yields HELLO"),
        Err(e) => {
            reply_error(
                writer,
                h.request_id,
                op::HELLO,
                ErrorCode::Malformed,
                &e.to_string(),
            )
            .await;
            return Err(e.to_string());
        }
    };
    let server_nonce: [u8; 16] = rand::random();
    let mut e = Enc::default();
    HelloReply {
        version: version_max.min(VERSION_MAX),
        server_nonce,
        node: ctx.state().node.clone(),
    }
    .encode(&mut e);
    send(writer, h.request_id, op::HELLO, &e.buf).await?;

    let (h, payload) = next_handshake_frame(reader, writer, op::AUTH).await?;
    let Ok(Request::Auth { proof }) = Request::decode(op::AUTH, &payload) else {
        reply_error(
            writer,
            h.request_id,
            op::AUTH,
            ErrorCode::Malformed,
            "malformed AUTH",
        )
        .await;
        return Err("malformed AUTH".into());
    };
    let state = ctx.state();
    let (admin, peer) = match state.users.get(&user) {
        Some(u) if auth::verify(&u.key, &user, &client_nonce, &server_nonce, &proof) => {
            (u.admin, u.peer)
        }
        _ => {
            reply_error(
                writer,
                h.request_id,
                op::AUTH,
                ErrorCode::AuthFailed,
                "unknown user or wrong password",
            )
            .await;
            return Err(format!("authentication failed for user {user:?}"));
        }
    };
    let mut e = Enc::default();
    Welcome {
        core: ctx.core() as u32,
        shard_addrs: ctx.shard_addrs().to_vec(),
    }
    .encode(&mut e);
    send(writer, h.request_id, op::AUTH, &e.buf).await?;
    Ok(Session { user, admin, peer })
}

/// The next handshake frame, crc-checked, with the expected opcode; anything else is answered
/// with an error frame and ends the handshake.
async fn next_handshake_frame<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut R,
    writer: &mut W,
    expected: u16,
) -> Result<(Header, Vec<u8>), String> {
    match read_frame(reader).await {
        Ok(Some((h, hb, p))) => {
            if let Err(e) = verify_crc(&hb, &p) {
                reply_error(
                    writer,
                    h.request_id,
                    h.opcode,
                    ErrorCode::Malformed,
                    &e.to_string(),
                )
                .await;
                return Err(e.to_string());
            }
            if h.opcode == expected {
                return Ok((h, p));
            }
            let why = format!("opcode 0x{:04x} before the handshake completed", h.opcode);
            reply_error(writer, h.request_id, h.opcode, ErrorCode::AuthFailed, &why).await;
            Err(why)
        }
        Ok(None) => Err("closed during handshake".into()),
        Err(reply) => {
            let _ = writer.write_all(&reply).await;
            let _ = writer.flush().await;
            Err("malformed frame during handshake".into())
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(
    writer: &mut W,
    request_id: u64,
    opcode: u16,
    payload: &[u8],
) -> Result<(), String> {
    let mut out = Vec::new();
    response_frame(&mut out, request_id, opcode, 0, payload);
    writer.write_all(&out).await.map_err(|e| e.to_string())?;
    writer.flush().await.map_err(|e| e.to_string())
}

async fn reply_error<W: AsyncWrite + Unpin>(
    writer: &mut W,
    request_id: u64,
    opcode: u16,
    code: ErrorCode,
    why: &str,
) {
    let mut out = Vec::new();
    error_frame(&mut out, request_id, opcode, code, why);
    let _ = writer.write_all(&out).await;
    let _ = writer.flush().await;
}
