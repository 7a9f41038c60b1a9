//! NBD connections served on the core that owns their export's file. The NBD gateway does the
//! handshake (it needs the namespace) and then, when the file's primary is a core of this very
//! process, hands the socket over (brick_wire::local::NbdHandoff): from then on every request
//! is read, executed and answered on this core, with no thread hop and no native framing in
//! between, the way one core serves one shard. Anything the core cannot finish here (it is no
//! longer the primary, the PG is unavailable) goes back to the gateway with the bytes it has
//! not answered, and the gateway's native client follows the failover (docs/nbd.md).

use crate::conn::{local_session, Outbox};
use crate::ctx::CoreCtx;
use crate::dispatch::Session;
use brick_tuning::{
    IO_BYTES_MAX, NBD_SMALL_READ_BYTES_MAX, NBD_STREAM_BUFFER_BYTES as STREAM_BUFFER_BYTES,
    NBD_ZERO_CHUNK_BYTES as ZERO_CHUNK_BYTES,
};
use brick_wire::local::{NbdHandoff, NbdSessionEnd, NbdUnanswered};
use brick_wire::nbd::{self, Request as NbdRequest};
use brick_wire::{
    op, write_fields, Enc, ErrorCode, Header, Kind, Request, WriteReply, HEADER_BYTES,
};
use brick_wire::{WRITE_FIELDS_BYTES, WRITE_FLAG_FUA};
use futures_lite::io::{AsyncRead, AsyncReadExt};
use glommio::net::TcpStream;
use glommio::sync::{Semaphore, StaticPermit};
use std::cell::{Cell, RefCell};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;

/// READ replies up to this size (native frame) are copied into the shared reply buffer.
const SMALL_READ_FRAME_BYTES: usize = HEADER_BYTES + NBD_SMALL_READ_BYTES_MAX;

/// How a request ended on this core.
enum Outcome {
    /// Answered (success or an error the client should see).
    Reply(Vec<u8>, Option<Vec<u8>>),
    /// The gateway must retry it: this core cannot serve it any more. A WRITE's data goes
    /// back with it (empty for other requests).
    HandBack(Vec<u8>),
}

/// The state the request tasks share with the reader.
struct Shared {
    ctx: Rc<CoreCtx>,
    session: Session,
    vol: u32,
    fid: u64,
    outbox: Rc<Outbox>,
    /// Requests to hand back; once one is, the reader stops reading.
    handing_back: RefCell<Vec<NbdUnanswered>>,
    hand_back_now: Cell<bool>,
    wake_reader: glommio::sync::Semaphore,
}

pub(crate) async fn serve(ctx: Rc<CoreCtx>, handoff: NbdHandoff) {
    let NbdHandoff {
        user,
        key,
        socket,
        export,
        ended,
    } = handoff;
    let session = match local_session(&ctx, &user, &key) {
        Ok(s) => s,
        Err(why) => {
            tracing::info!(core = ctx.core(), "NBD handoff refused: {why}");
            let _ = ended.send(NbdSessionEnd::untouched());
            return;
        }
    };
    if let Err(e) = socket.set_nonblocking(false) {
        tracing::warn!(core = ctx.core(), "NBD handoff: {e}");
        let _ = ended.send(NbdSessionEnd::untouched());
        return;
    }
    tracing::info!(
        core = ctx.core(),
        fid = export.fid,
        "NBD connection served on core"
    );
    // SAFETY: the descriptor was a connected TCP socket owned by `socket`, now owned here.
    let stream = unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) };
    let (mut reader, writer) = futures_lite::io::split(stream);
    let outbox = Rc::new(Outbox::default());
    let writer_task = glommio::spawn_local(crate::conn::write_loop(writer, outbox.clone()));
    let shared = Rc::new(Shared {
        ctx,
        session,
        vol: export.vol,
        fid: export.fid,
        outbox: outbox.clone(),
        handing_back: RefCell::new(Vec::new()),
        hand_back_now: Cell::new(false),
        wake_reader: Semaphore::new(0),
    });
    let budget = Rc::new(Semaphore::new(nbd::IN_FLIGHT_BYTES_MAX as u64));
    let mut stream_buf = StreamBuf::default();
    let reading = read_requests(&shared, &mut reader, &mut stream_buf, &budget, export.size).await;
    // Let the requests in flight finish (and be answered, or handed back) before deciding.
    let _ = budget.acquire(nbd::IN_FLIGHT_BYTES_MAX as u64).await;
    outbox.close();
    let written = writer_task.await.is_some();
    let end = if shared.hand_back_now.get() && reading.is_ok() && written {
        let unanswered = std::mem::take(&mut *shared.handing_back.borrow_mut());
        tracing::info!(
            core = shared.ctx.core(),
            requests = unanswered.len(),
            "NBD connection handed back to the gateway"
        );
        NbdSessionEnd::HandBack {
            buffered: stream_buf.unread(),
            unanswered,
        }
    } else {
        if let Err(why) = reading {
            tracing::info!(core = shared.ctx.core(), "NBD connection closed: {why}");
        }
        NbdSessionEnd::Closed
    };
    let _ = ended.send(end);
}

/// Reads and starts requests until DISC, end of stream, a broken request, or a hand-back.
async fn read_requests<R: AsyncRead + Unpin>(
    shared: &Rc<Shared>,
    reader: &mut R,
    buf: &mut StreamBuf,
    budget: &Rc<Semaphore>,
    export_size: u64,
) -> Result<(), String> {
    loop {
        let wait_for_header = buf.fill(reader, nbd::REQUEST_BYTES);
        let hand_back = async {
            let _ = shared.wake_reader.acquire(1).await;
            Ok(false)
        };
        // Reading a header is safe to abandon: what was read stays in `buf`.
        if !futures_lite::future::or(wait_for_header, hand_back)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(()); // end of stream, or handing back
        }
        if shared.hand_back_now.get() {
            return Ok(());
        }
        let head: [u8; nbd::REQUEST_BYTES] = buf.take_array();
        let req = NbdRequest::parse(&head).ok_or("bad request magic")?;
        let weight = nbd::request_weight(req.length) as u64;
        let permit = budget
            .acquire_static_permit(weight)
            .await
            .map_err(|e| e.to_string())?;
        let in_range = req
            .offset
            .checked_add(req.length as u64)
            .is_some_and(|end| end <= export_size);
        let reply_now = |errno: u32| {
            shared
                .outbox
                .push(nbd::simple_reply(errno, req.cookie).to_vec());
        };
        match req.command {
            nbd::CMD_DISC => return Ok(()),
            nbd::CMD_READ | nbd::CMD_WRITE if req.length > nbd::REQUEST_BYTES_MAX => {
                reply_now(nbd::EOVERFLOW);
                if req.command == nbd::CMD_WRITE {
                    return Err(format!("write of {} bytes", req.length));
                }
            }
            nbd::CMD_WRITE => {
                let data = buf
                    .read_vec(reader, WRITE_FIELDS_BYTES, req.length as usize)
                    .await
                    .map_err(|e| e.to_string())?;
                if in_range {
                    spawn_request(shared, permit, req, data);
                } else {
                    reply_now(nbd::ENOSPC);
                }
            }
            nbd::CMD_READ if !in_range => reply_now(nbd::EINVAL),
            nbd::CMD_READ | nbd::CMD_FLUSH => spawn_request(shared, permit, req, Vec::new()),
            // Trimming is advisory: the bytes stay as they were, which the protocol allows.
            nbd::CMD_TRIM if in_range => reply_now(0),
            nbd::CMD_WRITE_ZEROES if in_range => spawn_request(shared, permit, req, Vec::new()),
            nbd::CMD_TRIM | nbd::CMD_WRITE_ZEROES => reply_now(nbd::ENOSPC),
            _ => reply_now(nbd::EINVAL),
        }
    }
}

fn spawn_request(shared: &Rc<Shared>, permit: StaticPermit, req: NbdRequest, data: Vec<u8>) {
    let shared = shared.clone();
    glommio::spawn_local(async move {
        let outcome = match req.command {
            nbd::CMD_READ => read(&shared, req).await,
            nbd::CMD_WRITE => write(&shared, req, data).await,
            nbd::CMD_FLUSH => fsync(&shared, req).await,
            _ => write_zeroes(&shared, req).await,
        };
        match outcome {
            Outcome::Reply(mut head, Some(frame)) if frame.len() <= SMALL_READ_FRAME_BYTES => {
                // Small replies share one buffer and one send with their neighbours.
                head.extend_from_slice(&frame[HEADER_BYTES..]);
                shared.outbox.push(head);
            }
            Outcome::Reply(head, body) => {
                shared.outbox.push(head);
                if let Some(frame) = body {
                    shared.outbox.push_from(frame, HEADER_BYTES);
                }
            }
            Outcome::HandBack(data) => {
                shared
                    .handing_back
                    .borrow_mut()
                    .push(NbdUnanswered { request: req, data });
                if !shared.hand_back_now.replace(true) {
                    shared.wake_reader.signal(1);
                }
            }
        }
        drop(permit);
    })
    .detach();
}

/// Runs one native request on this core (routed to the owning core if need be) and returns
/// its reply frame's status and frame.
async fn native(
    shared: &Shared,
    req: &Request<'_>,
    capacity: usize,
) -> (Result<(), ErrorCode>, Vec<u8>) {
    let mut e = Enc::with_capacity(capacity);
    req.encode(&mut e);
    let header = Header::new(Kind::Request, req.opcode(), 0, e.buf.len() as u32, 0);
    let frame = crate::dispatch::dispatch(&shared.ctx, &shared.session, header, e.buf).await;
    (frame_status(&frame), frame)
}

fn frame_status(frame: &[u8]) -> Result<(), ErrorCode> {
    let status = frame
        .get(..HEADER_BYTES)
        .and_then(|b| <[u8; HEADER_BYTES]>::try_from(b).ok())
        .and_then(|b| Header::parse(&b).ok())
        .map(|h| h.status)
        .unwrap_or(ErrorCode::Io.code());
    match status {
        0 => Ok(()),
        status => Err(ErrorCode::from_code(status)),
    }
}

/// What a failed native request becomes: handed back when another node or a later epoch can
/// still serve it (too few members up to date: the gateway waits for the heal or failover),
/// the protocol's errno otherwise.
fn failed(shared: &Shared, req: NbdRequest, code: ErrorCode, why: &str) -> Outcome {
    if matches!(
        code,
        ErrorCode::NotPrimary | ErrorCode::Unavailable | ErrorCode::BelowMinSize
    ) {
        return Outcome::HandBack(Vec::new());
    }
    tracing::warn!(
        core = shared.ctx.core(),
        command = req.command,
        offset = req.offset,
        "nbd request failed: {code:?}: {why}"
    );
    Outcome::Reply(
        nbd::simple_reply(nbd::errno_for(code), req.cookie).to_vec(),
        None,
    )
}

/// The message of an error reply frame.
fn message_of(frame: &[u8]) -> String {
    String::from_utf8_lossy(frame.get(HEADER_BYTES..).unwrap_or_default()).into_owned()
}

fn ok(req: NbdRequest) -> Outcome {
    Outcome::Reply(nbd::simple_reply(0, req.cookie).to_vec(), None)
}

async fn read(shared: &Shared, req: NbdRequest) -> Outcome {
    if req.length <= IO_BYTES_MAX {
        let native_req = read_request(shared, req.offset, req.length);
        let (status, mut frame) = native(shared, &native_req, 32).await;
        if let Err(code) = status {
            return failed(shared, req, code, &message_of(&frame));
        }
        frame.resize(HEADER_BYTES + req.length as usize, 0); // past the file's end: zeros
        return Outcome::Reply(nbd::simple_reply(0, req.cookie).to_vec(), Some(frame));
    }
    let mut out = vec![0u8; HEADER_BYTES];
    out.reserve(req.length as usize);
    let end = req.offset + req.length as u64;
    let mut at = req.offset;
    while at < end {
        let len = (end - at).min(IO_BYTES_MAX as u64) as u32;
        let (status, frame) = native(shared, &read_request(shared, at, len), 32).await;
        if let Err(code) = status {
            return failed(shared, req, code, &message_of(&frame));
        }
        let got = &frame[HEADER_BYTES..];
        out.extend_from_slice(got);
        if got.len() < len as usize {
            break; // past the file's end: zeros, as a sparse image reads
        }
        at += len as u64;
    }
    out.resize(HEADER_BYTES + req.length as usize, 0);
    Outcome::Reply(nbd::simple_reply(0, req.cookie).to_vec(), Some(out))
}

fn read_request(shared: &Shared, offset: u64, len: u32) -> Request<'static> {
    Request::Read {
        vol: shared.vol,
        fid: shared.fid,
        offset,
        len,
    }
}

/// `payload` is the WRITE's data behind `WRITE_FIELDS_BYTES` of room for the native fields:
/// a WRITE that fits one native request is executed from that very buffer, no copy.
async fn write(shared: &Shared, req: NbdRequest, mut payload: Vec<u8>) -> Outcome {
    let flags = if req.flags & nbd::CMD_FLAG_FUA != 0 {
        WRITE_FLAG_FUA
    } else {
        0
    };
    let len = payload.len() - WRITE_FIELDS_BYTES;
    if len > IO_BYTES_MAX as usize {
        let data = &payload[WRITE_FIELDS_BYTES..];
        for (i, chunk) in data.chunks(IO_BYTES_MAX as usize).enumerate() {
            let offset = req.offset + i as u64 * IO_BYTES_MAX as u64;
            match write_chunk(shared, req, offset, flags, chunk).await {
                None => {}
                Some(Outcome::HandBack(_)) => return Outcome::HandBack(data.to_vec()),
                Some(outcome) => return outcome,
            }
        }
        return ok(req);
    }
    let fields = write_fields(shared.vol, shared.fid, req.offset, flags);
    payload[..WRITE_FIELDS_BYTES].copy_from_slice(&fields);
    let payload = Rc::new(payload);
    let header = Header::new(Kind::Request, op::WRITE, 0, payload.len() as u32, 0);
    let frame = crate::dispatch::dispatch_shared(&shared.ctx, header, payload.clone()).await;
    match written(shared, req, len, &frame) {
        None => ok(req),
        Some(Outcome::HandBack(_)) => {
            // The replication path may still hold the payload: copy it only then.
            let mut data = Rc::try_unwrap(payload).unwrap_or_else(|shared| (*shared).clone());
            data.drain(..WRITE_FIELDS_BYTES);
            Outcome::HandBack(data)
        }
        Some(outcome) => outcome,
    }
}

/// What a native WRITE's reply frame means: `None` when all `len` bytes were written.
fn written(shared: &Shared, req: NbdRequest, len: usize, frame: &[u8]) -> Option<Outcome> {
    if let Err(code) = frame_status(frame) {
        return Some(failed(shared, req, code, &message_of(frame)));
    }
    match WriteReply::decode(&frame[HEADER_BYTES..]) {
        Ok(r) if r.written as usize == len => None,
        _ => Some(failed(shared, req, ErrorCode::Io, "short write")),
    }
}

/// One native WRITE; `None` when all of it was written.
async fn write_chunk(
    shared: &Shared,
    req: NbdRequest,
    offset: u64,
    flags: u32,
    data: &[u8],
) -> Option<Outcome> {
    let native_req = Request::Write {
        vol: shared.vol,
        fid: shared.fid,
        offset,
        flags,
        data,
    };
    let (_, frame) = native(shared, &native_req, WRITE_FIELDS_BYTES + data.len()).await;
    written(shared, req, data.len(), &frame)
}

async fn fsync(shared: &Shared, req: NbdRequest) -> Outcome {
    let native_req = Request::Fsync {
        vol: shared.vol,
        fid: shared.fid,
    };
    match native(shared, &native_req, 16).await {
        (Ok(()), _) => ok(req),
        (Err(code), frame) => failed(shared, req, code, &message_of(&frame)),
    }
}

async fn write_zeroes(shared: &Shared, req: NbdRequest) -> Outcome {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES as usize];
    let end = req.offset + req.length as u64;
    let mut at = req.offset;
    while at < end {
        let len = (end - at).min(ZERO_CHUNK_BYTES as u64) as usize;
        if let Some(outcome) = write_chunk(shared, req, at, 0, &zeros[..len]).await {
            return outcome;
        }
        at += len as u64;
    }
    if req.flags & nbd::CMD_FLAG_FUA != 0 {
        return fsync(shared, req).await;
    }
    ok(req)
}

/// The connection's receive buffer: requests are parsed from it; what is left in it when the
/// connection goes back to the gateway goes back with it.
#[derive(Default)]
struct StreamBuf {
    /// Allocated space; bytes `head..tail` are received and not yet parsed.
    bytes: Vec<u8>,
    head: usize,
    tail: usize,
}

impl StreamBuf {
    fn buffered(&self) -> usize {
        self.tail - self.head
    }

    /// Reads until `want` bytes are buffered; false at a clean end of stream (nothing
    /// buffered). `tail` moves only once a read has completed, so dropping this future while
    /// it waits loses nothing.
    async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        want: usize,
    ) -> std::io::Result<bool> {
        if self.bytes.len() < want.max(STREAM_BUFFER_BYTES) {
            self.bytes.resize(want.max(STREAM_BUFFER_BYTES), 0);
        }
        while self.buffered() < want {
            if self.bytes.len() - self.head < want {
                self.bytes.copy_within(self.head..self.tail, 0);
                self.tail -= self.head;
                self.head = 0;
            }
            match r.read(&mut self.bytes[self.tail..]).await? {
                0 if self.buffered() == 0 => return Ok(false),
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => self.tail += n,
            }
        }
        Ok(true)
    }

    fn take_array<const N: usize>(&mut self) -> [u8; N] {
        assert!(self.buffered() >= N);
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[self.head..self.head + N]);
        self.head += N;
        out
    }

    /// `room` zero bytes, then `len` bytes of the stream: what is buffered, then straight from
    /// the stream into the result.
    async fn read_vec<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        room: usize,
        len: usize,
    ) -> std::io::Result<Vec<u8>> {
        let from_buf = self.buffered().min(len);
        let mut out = Vec::with_capacity(room + len);
        out.resize(room, 0);
        out.extend_from_slice(&self.bytes[self.head..self.head + from_buf]);
        self.head += from_buf;
        out.resize(room + len, 0);
        r.read_exact(&mut out[room + from_buf..]).await?;
        Ok(out)
    }

    fn unread(&mut self) -> Vec<u8> {
        let rest = self.bytes[self.head..self.tail].to_vec();
        self.head = self.tail;
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its bytes a few at a time, then waits forever.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            if self.at == self.data.len() {
                return std::task::Poll::Pending;
            }
            let n = self.step.min(buf.len()).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn an_abandoned_fill_keeps_exactly_the_bytes_received() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut r = Trickle {
            data: data.clone(),
            at: 0,
            step: 7,
        };
        let mut buf = StreamBuf::default();
        futures_lite::future::block_on(async {
            assert!(buf.fill(&mut r, 28).await.expect("fill"));
            let head: [u8; 28] = buf.take_array();
            assert_eq!(&head[..], &data[..28]);
            // Wants more than will ever come: abandoned once the reader waits.
            let fill = buf.fill(&mut r, 200);
            let abandoned = futures_lite::future::or(async { fill.await.map(Some) }, async {
                futures_lite::future::yield_now().await;
                Ok(None)
            });
            assert!(abandoned.await.expect("no error").is_none());
        });
        assert_eq!(
            buf.unread(),
            data[28..].to_vec(),
            "every byte after the header"
        );
        assert!(buf.unread().is_empty());
    }
}
