//! One client connection: handshake, then a read loop that spawns one task per request (up to
//! a limit) and a writer task that coalesces replies into as few socket writes as it can.

use crate::core::CoreCtx;
use brick_tuning::CONNECTION_INFLIGHT_MAX;
use brick_wire::frame::{verify_crc, VERSION_MAX, VERSION_MIN};
use brick_wire::{auth, error_frame, op, response_frame, Enc, ErrorCode, Header, HelloReply, Kind, Request, Welcome, HEADER_BYTES};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use std::rc::Rc;

/// Replies smaller than this are copied into one buffer and written together.
const COALESCE_BYTES_MAX: usize = 256 * 1024;

pub(crate) struct Session {
    pub user: String,
    pub admin: bool,
}

pub(crate) async fn serve(ctx: Rc<CoreCtx>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let (reader, mut writer) = futures_lite::io::split(stream);
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let session = match handshake(&ctx, &mut reader, &mut writer).await {
        Ok(s) => Rc::new(s),
        Err(why) => {
            tracing::info!(core = ctx.core, %peer, "handshake refused: {why}");
            return;
        }
    };
    let (out_tx, out_rx) = flume::unbounded::<Vec<u8>>();
    let writer_task = glommio::spawn_local(write_loop(writer, out_rx));
    let inflight = Rc::new(Semaphore::new(CONNECTION_INFLIGHT_MAX as u64));
    loop {
        let (header, header_bytes, payload) = match read_frame(&mut reader).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(reply) => {
                let _ = out_tx.send(reply);
                break;
            }
        };
        if let Err(e) = verify_crc(&header_bytes, &payload) {
            let mut out = Vec::new();
            error_frame(&mut out, header.request_id, header.opcode, ErrorCode::Malformed, &e.to_string());
            let _ = out_tx.send(out);
            break; // the stream can no longer be trusted to be in frame
        }
        let Ok(permit) = inflight.acquire_static_permit(1).await else {
            break;
        };
        let (ctx, session, out_tx) = (ctx.clone(), session.clone(), out_tx.clone());
        glommio::spawn_local(async move {
            let frame = crate::exec::dispatch(&ctx, &session, header, payload).await;
            let _ = out_tx.send(frame);
            drop(permit);
        })
        .detach();
    }
    drop(out_tx);
    let _ = writer_task.await;
}

/// Reads one frame. `Ok(None)`: the peer closed (or cut the connection mid-frame).
/// `Err(reply)`: a header that must end the connection, with the error frame to send first.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<(Header, [u8; HEADER_BYTES], Vec<u8>)>, Vec<u8>> {
    let mut header_bytes = [0u8; HEADER_BYTES];
    if reader.read_exact(&mut header_bytes).await.is_err() {
        return Ok(None);
    }
    let header = match Header::parse(&header_bytes) {
        Ok(h) if h.kind == Kind::Request => h,
        Ok(h) => return Err(malformed(h.request_id, h.opcode, "a client sent a response frame")),
        Err(e) => {
            let request_id = u64::from_le_bytes(header_bytes[8..16].try_into().unwrap_or([0; 8]));
            return Err(malformed(request_id, 0, &e.to_string()));
        }
    };
    let mut payload = vec![0u8; header.payload_len as usize];
    if reader.read_exact(&mut payload).await.is_err() {
        tracing::info!("connection cut in the middle of a frame");
        return Ok(None);
    }
    Ok(Some((header, header_bytes, payload)))
}

fn malformed(request_id: u64, opcode: u16, why: &str) -> Vec<u8> {
    let mut out = Vec::new();
    error_frame(&mut out, request_id, opcode, ErrorCode::Malformed, why);
    out
}

async fn write_loop<W: AsyncWrite + Unpin>(mut writer: W, out_rx: flume::Receiver<Vec<u8>>) {
    let mut coalesced: Vec<u8> = Vec::with_capacity(COALESCE_BYTES_MAX);
    while let Ok(first) = out_rx.recv_async().await {
        let mut frames = vec![first];
        frames.extend(out_rx.drain());
        for frame in frames {
            if frame.len() >= COALESCE_BYTES_MAX / 4 {
                if !coalesced.is_empty() && writer.write_all(&coalesced).await.is_err() {
                    return;
                }
                coalesced.clear();
                if writer.write_all(&frame).await.is_err() {
                    return;
                }
            } else {
                coalesced.extend_from_slice(&frame);
            }
        }
        if !coalesced.is_empty() && writer.write_all(&coalesced).await.is_err() {
            return;
        }
        coalesced.clear();
        if writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.close().await;
}

/// HELLO (version + user) -> challenge, AUTH (proof) -> WELCOME with every core's address.
/// Nothing else is accepted before it completes.
async fn handshake<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    ctx: &CoreCtx,
    reader: &mut R,
    writer: &mut W,
) -> Result<Session, String> {
    let (h, hb, payload) = next_handshake_frame(reader, writer, op::HELLO).await?;
    verify_crc(&hb, &payload).map_err(|e| e.to_string())?;
    let (user, client_nonce) = match Request::decode(op::HELLO, &payload) {
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
            (user.to_string(), client_nonce)
        }
        Ok(_) => unreachable!("decode of HELLO yields HELLO"),
        Err(e) => {
            reply_error(writer, h.request_id, op::HELLO, ErrorCode::Malformed, &e.to_string()).await;
            return Err(e.to_string());
        }
    };
    let server_nonce: [u8; 16] = rand::random();
    let mut e = Enc::default();
    HelloReply {
        version: VERSION_MAX.min(VERSION_MAX),
        server_nonce,
        node: ctx.state().node.clone(),
    }
    .encode(&mut e);
    send(writer, h.request_id, op::HELLO, &e.buf).await?;

    let (h, hb, payload) = next_handshake_frame(reader, writer, op::AUTH).await?;
    verify_crc(&hb, &payload).map_err(|e| e.to_string())?;
    let Ok(Request::Auth { proof }) = Request::decode(op::AUTH, &payload) else {
        reply_error(writer, h.request_id, op::AUTH, ErrorCode::Malformed, "malformed AUTH").await;
        return Err("malformed AUTH".into());
    };
    let state = ctx.state();
    let admin = match state.users.get(&user) {
        Some(u) if auth::verify(&u.key, &user, &client_nonce, &server_nonce, &proof) => u.admin,
        _ => {
            reply_error(writer, h.request_id, op::AUTH, ErrorCode::AuthFailed, "unknown user or wrong password").await;
            return Err(format!("authentication failed for user {user:?}"));
        }
    };
    let mut e = Enc::default();
    Welcome {
        core: ctx.core as u32,
        shard_addrs: ctx.shard_addrs.clone(),
    }
    .encode(&mut e);
    send(writer, h.request_id, op::AUTH, &e.buf).await?;
    Ok(Session { user, admin })
}

async fn next_handshake_frame<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut R,
    writer: &mut W,
    expected: u16,
) -> Result<(Header, [u8; HEADER_BYTES], Vec<u8>), String> {
    match read_frame(reader).await {
        Ok(Some((h, hb, p))) if h.opcode == expected => Ok((h, hb, p)),
        Ok(Some((h, _, _))) => {
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

async fn send<W: AsyncWrite + Unpin>(writer: &mut W, request_id: u64, opcode: u16, payload: &[u8]) -> Result<(), String> {
    let mut out = Vec::new();
    response_frame(&mut out, request_id, opcode, 0, payload);
    writer.write_all(&out).await.map_err(|e| e.to_string())?;
    writer.flush().await.map_err(|e| e.to_string())
}

async fn reply_error<W: AsyncWrite + Unpin>(writer: &mut W, request_id: u64, opcode: u16, code: ErrorCode, why: &str) {
    let mut out = Vec::new();
    error_frame(&mut out, request_id, opcode, code, why);
    let _ = writer.write_all(&out).await;
    let _ = writer.flush().await;
}
