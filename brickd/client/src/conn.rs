//! One authenticated connection to one core: a writer task that batches frames into few
//! writes, a reader task that matches replies to requests by id (replies come out of order).

use crate::ClientError;
use brick_tuning::FRAME_PAYLOAD_BYTES_MAX;
use brick_tuning::{CLIENT_CONNECT_TIMEOUT_MS, CLIENT_INFLIGHT_MAX};
use brick_wire::frame::{verify_crc, VERSION_MAX, VERSION_MIN};
use brick_wire::local::{LocalConnect, LocalRequest, ToCore};
use brick_wire::{
    auth, request_frame, write_frame_head, Enc, ErrorCode, Header, HelloReply, Kind, Request,
    Welcome, HEADER_BYTES, WRITE_FIELDS_BYTES,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify, Semaphore};

/// A reply frame: status 0 and its payload, or a server error.
pub type ReplyResult = Result<Vec<u8>, ClientError>;

struct Waiter {
    tx: oneshot::Sender<ReplyResult>,
    sent_at: Instant,
}

/// Requests waiting for their reply. Once `closed` is set (under the same lock) no waiter is
/// added any more, so none can be left behind by the final `fail_all`.
#[derive(Default)]
struct PendingMap {
    waiters: HashMap<u64, Waiter>,
    closed: bool,
}

type Pending = Arc<Mutex<PendingMap>>;

/// Frames waiting to be written, appended in place by callers; the writer task swaps the whole
/// buffer out and writes it with one syscall, so many requests share one wakeup and one write.
struct Outbox {
    buf: Mutex<Vec<u8>>,
    notify: Notify,
    /// The socket, shared by the writer task and callers writing bulk data directly.
    socket: tokio::sync::Mutex<OwnedWriteHalf>,
}

/// Connections this process opened to servers. A server that restarted lost what it had not
/// made durable; reaching it again needs a new connection, so a change of this count is how
/// gateways (NFS write verifiers) learn that unsynced writes may be gone.
pub(crate) static CONNECTIONS_OPENED: AtomicU64 = AtomicU64::new(0);

/// WRITE data at least this large is written to the socket straight from the caller's buffer.
const DIRECT_WRITE_BYTES_MIN: usize = 64 * 1024;

/// How frames reach the server: a socket, or a channel to a core of this very process
/// (brick_wire::local; a gateway hosted by brickd).
enum Transport {
    Socket(Arc<Outbox>),
    Local(flume::Sender<LocalRequest>),
}

pub(crate) struct Conn {
    pub addr: String,
    pub core: u32,
    transport: Transport,
    pending: Pending,
    alive: Arc<AtomicBool>,
    next_id: AtomicU64,
    inflight: Arc<Semaphore>,
}

impl Conn {
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Connects, authenticates, and returns the connection with the server's shard list.
    pub async fn open(
        addr: &str,
        user: &str,
        key: &[u8; 32],
    ) -> Result<(Conn, Welcome), ClientError> {
        if let Some(core) = brick_wire::local::lookup(addr) {
            return Conn::open_local(addr, core, user, key).await;
        }
        let connect = TcpStream::connect(addr);
        let stream =
            tokio::time::timeout(Duration::from_millis(CLIENT_CONNECT_TIMEOUT_MS), connect)
                .await
                .map_err(|_| ClientError::Disconnected(format!("connect to {addr}: timed out")))?
                .map_err(|e| ClientError::Disconnected(format!("connect to {addr}: {e}")))?;
        stream.set_nodelay(true).ok();
        let (read_half, mut write_half) = stream.into_split();
        let mut reader = BufReader::with_capacity(256 * 1024, read_half);
        let welcome = handshake(&mut reader, &mut write_half, user, key).await?;
        CONNECTIONS_OPENED.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox {
            buf: Mutex::new(Vec::with_capacity(256 * 1024)),
            notify: Notify::new(),
            socket: tokio::sync::Mutex::new(write_half),
        });
        let pending: Pending = Arc::new(Mutex::new(PendingMap::default()));
        let alive = Arc::new(AtomicBool::new(true));
        tokio::spawn(write_loop(outbox.clone(), alive.clone(), pending.clone()));
        tokio::spawn(read_loop(
            reader,
            pending.clone(),
            alive.clone(),
            addr.to_string(),
        ));
        tokio::spawn(watchdog(
            pending.clone(),
            alive.clone(),
            Some(outbox.clone()),
        ));
        let transport = Transport::Socket(outbox);
        Ok((
            Conn::new(addr, welcome.core, transport, pending, alive),
            welcome,
        ))
    }

    /// An in-process connection to a core of this process. The key stands in for the
    /// handshake's proof; the core checks it against its user table all the same.
    async fn open_local(
        addr: &str,
        core: flume::Sender<ToCore>,
        user: &str,
        key: &[u8; 32],
    ) -> Result<(Conn, Welcome), ClientError> {
        // In flight on this connection never exceeds CLIENT_INFLIGHT_MAX (the semaphore), so
        // neither channel ever fills.
        let (request_tx, requests) = flume::bounded(CLIENT_INFLIGHT_MAX);
        let (replies, reply_rx) = flume::bounded(CLIENT_INFLIGHT_MAX);
        let (welcome, welcome_rx) = flume::bounded(1);
        let connect = LocalConnect {
            user: user.to_string(),
            key: *key,
            requests,
            replies,
            welcome,
        };
        let gone = || ClientError::Disconnected(format!("{addr}: the core stopped"));
        core.send_async(ToCore::Connect(connect))
            .await
            .map_err(|_| gone())?;
        let limit = Duration::from_millis(CLIENT_CONNECT_TIMEOUT_MS);
        let welcome = tokio::time::timeout(limit, welcome_rx.recv_async())
            .await
            .map_err(|_| ClientError::Timeout(format!("{addr}: no welcome within {limit:?}")))?
            .map_err(|_| gone())?
            .map_err(|(code, message)| match code {
                ErrorCode::AuthFailed => ClientError::Auth(message),
                code => ClientError::Server { code, message },
            })?;
        CONNECTIONS_OPENED.fetch_add(1, Ordering::Relaxed);
        let pending: Pending = Arc::new(Mutex::new(PendingMap::default()));
        let alive = Arc::new(AtomicBool::new(true));
        tokio::spawn(local_read_loop(
            reply_rx,
            pending.clone(),
            alive.clone(),
            addr.to_string(),
        ));
        tokio::spawn(watchdog(pending.clone(), alive.clone(), None));
        let transport = Transport::Local(request_tx);
        Ok((
            Conn::new(addr, welcome.core, transport, pending, alive),
            welcome,
        ))
    }

    fn new(
        addr: &str,
        core: u32,
        transport: Transport,
        pending: Pending,
        alive: Arc<AtomicBool>,
    ) -> Conn {
        Conn {
            addr: addr.to_string(),
            core,
            transport,
            pending,
            alive,
            next_id: AtomicU64::new(1),
            inflight: Arc::new(Semaphore::new(CLIENT_INFLIGHT_MAX)),
        }
    }

    /// Sends one request and waits for its reply (or the watchdog's timeout).
    pub async fn call(&self, req: &Request<'_>) -> ReplyResult {
        let _permit = match self.inflight.try_acquire() {
            Ok(p) => p,
            Err(_) => self
                .inflight
                .acquire()
                .await
                .map_err(|_| ClientError::Disconnected("connection closed".into()))?,
        };
        if !self.is_alive() {
            return Err(ClientError::Disconnected(format!(
                "connection to {} is closed",
                self.addr
            )));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if pending.closed {
                return Err(ClientError::Disconnected(format!(
                    "connection to {} is closed",
                    self.addr
                )));
            }
            pending.waiters.insert(
                id,
                Waiter {
                    tx: reply_tx,
                    sent_at: Instant::now(),
                },
            );
        }
        match &self.transport {
            Transport::Socket(outbox) => self.send_socket(outbox, id, req).await,
            Transport::Local(requests) => self.send_local(requests, id, req).await,
        }
        match reply_rx.await {
            Ok(reply) => reply,
            Err(_) => Err(ClientError::Disconnected(format!(
                "connection to {} closed",
                self.addr
            ))),
        }
    }
}

impl Conn {
    async fn send_socket(&self, outbox: &Outbox, id: u64, req: &Request<'_>) {
        match *req {
            Request::Write {
                vol,
                fid,
                offset,
                flags,
                data,
            } if data.len() >= DIRECT_WRITE_BYTES_MIN => {
                let head = write_frame_head(id, vol, fid, offset, flags, data);
                let mut socket = outbox.socket.lock().await;
                let sent = match socket.write_all(&head).await {
                    Ok(()) => socket.write_all(data).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = sent {
                    self.alive.store(false, Ordering::Release);
                    fail_all(&self.pending, &format!("write failed: {e}"));
                }
            }
            _ => {
                let was_empty = {
                    let mut buf = lock(&outbox.buf);
                    let was_empty = buf.is_empty();
                    request_frame(&mut buf, id, req);
                    was_empty
                };
                if was_empty {
                    outbox.notify.notify_one();
                }
            }
        }
    }

    /// Hands the request to the core as a message: the payload encoded once, no header bytes,
    /// no crc32c (it never leaves this process's memory).
    async fn send_local(&self, requests: &flume::Sender<LocalRequest>, id: u64, req: &Request<'_>) {
        let capacity = match req {
            Request::Write { data, .. } => WRITE_FIELDS_BYTES + data.len(),
            _ => 64,
        };
        let mut e = Enc::with_capacity(capacity);
        req.encode(&mut e);
        let payload = e.buf;
        if payload.len() > FRAME_PAYLOAD_BYTES_MAX as usize {
            let too_big = ClientError::Usage(format!(
                "a {} byte request exceeds the frame limit",
                payload.len()
            ));
            if let Some(w) = lock(&self.pending).waiters.remove(&id) {
                let _ = w.tx.send(Err(too_big));
            }
            return;
        }
        let header = Header::new(Kind::Request, req.opcode(), id, payload.len() as u32, 0);
        if requests
            .send_async(LocalRequest { header, payload })
            .await
            .is_err()
        {
            self.alive.store(false, Ordering::Release);
            fail_all(&self.pending, "the core closed the connection");
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Release);
        if let Transport::Socket(outbox) = &self.transport {
            outbox.notify.notify_one();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn fail_all(pending: &Pending, why: &str) {
    let mut pending = lock(pending);
    pending.closed = true;
    for (_, w) in pending.waiters.drain() {
        let _ = w.tx.send(Err(ClientError::Disconnected(why.to_string())));
    }
}

async fn write_loop(outbox: Arc<Outbox>, alive: Arc<AtomicBool>, pending: Pending) {
    let mut spare: Vec<u8> = Vec::with_capacity(256 * 1024);
    loop {
        outbox.notify.notified().await;
        if !alive.load(Ordering::Acquire) {
            break;
        }
        loop {
            {
                let mut buf = lock(&outbox.buf);
                if buf.is_empty() {
                    break;
                }
                std::mem::swap(&mut *buf, &mut spare);
            }
            let mut w = outbox.socket.lock().await;
            if let Err(e) = w.write_all(&spare).await {
                alive.store(false, Ordering::Release);
                fail_all(&pending, &format!("write failed: {e}"));
                let _ = w.shutdown().await;
                return;
            }
            drop(w);
            spare.clear();
            if spare.capacity() > 8 << 20 {
                spare.shrink_to(256 * 1024);
            }
        }
    }
    let _ = outbox.socket.lock().await.shutdown().await;
}

/// Fails requests that got no reply in time; a connection that leaves one unanswered that long
/// is considered broken and closed, so callers reconnect.
async fn watchdog(pending: Pending, alive: Arc<AtomicBool>, outbox: Option<Arc<Outbox>>) {
    let timeout = Duration::from_millis(brick_tuning::CLIENT_REQUEST_TIMEOUT_MS);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while alive.load(Ordering::Acquire) {
        tick.tick().await;
        let expired = lock(&pending)
            .waiters
            .values()
            .any(|w| w.sent_at.elapsed() > timeout);
        if expired {
            alive.store(false, Ordering::Release);
            let mut pending = lock(&pending);
            pending.closed = true;
            for (_, w) in pending.waiters.drain() {
                let _ = w.tx.send(Err(ClientError::Timeout(format!(
                    "no reply within {timeout:?}"
                ))));
            }
            if let Some(outbox) = &outbox {
                outbox.notify.notify_one();
            }
        }
    }
}

async fn read_loop(
    mut r: BufReader<OwnedReadHalf>,
    pending: Pending,
    alive: Arc<AtomicBool>,
    addr: String,
) {
    let why = loop {
        match read_reply(&mut r).await {
            Ok((header, payload)) => deliver(&pending, header, payload),
            Err(e) => break e,
        }
        if !alive.load(Ordering::Acquire) {
            break "connection closed by client".to_string();
        }
    };
    connection_ended(&pending, &alive, &addr, &why);
}

/// A connection's reader stopped: the connection is dead and what waits on it fails.
fn connection_ended(pending: &Pending, alive: &AtomicBool, addr: &str, why: &str) {
    alive.store(false, Ordering::Release);
    tracing::debug!("connection to {addr} ended: {why}");
    fail_all(pending, &format!("connection to {addr} lost: {why}"));
}

/// Hands a reply to the request waiting for it (none if it timed out meanwhile).
fn deliver(pending: &Pending, header: Header, payload: Vec<u8>) {
    let Some(w) = lock(pending).waiters.remove(&header.request_id) else {
        return;
    };
    let result = if header.status == 0 {
        Ok(payload)
    } else {
        Err(server_error(header.status, &payload))
    };
    let _ = w.tx.send(result);
}

async fn local_read_loop(
    replies: flume::Receiver<Vec<u8>>,
    pending: Pending,
    alive: Arc<AtomicBool>,
    addr: String,
) {
    let why = loop {
        let Ok(frame) = replies.recv_async().await else {
            break "the core closed the connection".to_string();
        };
        match local_reply(frame) {
            Ok((header, payload)) => deliver(&pending, header, payload),
            Err(e) => break e,
        }
        if !alive.load(Ordering::Acquire) {
            break "connection closed by client".to_string();
        }
    };
    connection_ended(&pending, &alive, &addr, &format!("{why} (in-process)"));
}

/// A whole reply frame handed over in memory: its header checked, its payload moved to the
/// front of the same buffer.
fn local_reply(mut frame: Vec<u8>) -> Result<(Header, Vec<u8>), String> {
    let header_bytes: [u8; HEADER_BYTES] = frame
        .get(..HEADER_BYTES)
        .and_then(|b| b.try_into().ok())
        .ok_or("a reply shorter than a header")?;
    let header = Header::parse(&header_bytes).map_err(|e| e.to_string())?;
    if header.kind != Kind::Response || frame.len() != HEADER_BYTES + header.payload_len as usize {
        return Err("a malformed reply frame".into());
    }
    frame.drain(..HEADER_BYTES);
    Ok((header, frame))
}

pub(crate) fn server_error(status: u32, payload: &[u8]) -> ClientError {
    ClientError::Server {
        code: ErrorCode::from_code(status),
        message: String::from_utf8_lossy(
            &payload[..payload.len().min(brick_wire::ERROR_MESSAGE_BYTES_MAX)],
        )
        .into_owned(),
    }
}

async fn read_reply<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> Result<(Header, Vec<u8>), String> {
    let mut hb = [0u8; HEADER_BYTES];
    r.read_exact(&mut hb).await.map_err(|e| e.to_string())?;
    let header = Header::parse(&hb).map_err(|e| e.to_string())?;
    if header.kind != Kind::Response {
        return Err("server sent a request frame".into());
    }
    // Read into spare capacity: no zeroing of a READ's megabyte before it is overwritten.
    let len = header.payload_len as usize;
    let mut payload = Vec::with_capacity(len);
    r.take(len as u64)
        .read_to_end(&mut payload)
        .await
        .map_err(|e| e.to_string())?;
    if payload.len() != len {
        return Err(format!(
            "connection closed after {} of {len} reply bytes",
            payload.len()
        ));
    }
    verify_crc(&hb, &payload).map_err(|e| e.to_string())?;
    Ok((header, payload))
}

async fn handshake(
    r: &mut BufReader<OwnedReadHalf>,
    w: &mut OwnedWriteHalf,
    user: &str,
    key: &[u8; 32],
) -> Result<Welcome, ClientError> {
    let client_nonce: [u8; 16] = rand::random();
    let hello = exchange(
        r,
        w,
        &Request::Hello {
            version_min: VERSION_MIN,
            version_max: VERSION_MAX,
            user,
            client_nonce,
        },
    )
    .await?;
    let hello = HelloReply::decode(&hello).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let proof = auth::proof(key, user, &client_nonce, &hello.server_nonce);
    let welcome = exchange(r, w, &Request::Auth { proof })
        .await
        .map_err(|e| match e {
            ClientError::Server {
                code: ErrorCode::AuthFailed,
                message,
            } => ClientError::Auth(message),
            other => other,
        })?;
    Welcome::decode(&welcome).map_err(|e| ClientError::Protocol(e.to_string()))
}

async fn exchange(
    r: &mut BufReader<OwnedReadHalf>,
    w: &mut OwnedWriteHalf,
    req: &Request<'_>,
) -> ReplyResult {
    let mut frame = Vec::new();
    request_frame(&mut frame, 0, req);
    w.write_all(&frame)
        .await
        .map_err(|e| ClientError::Disconnected(format!("handshake: {e}")))?;
    let timeout = Duration::from_millis(CLIENT_CONNECT_TIMEOUT_MS);
    let (header, payload) = tokio::time::timeout(timeout, read_reply(r))
        .await
        .map_err(|_| ClientError::Timeout("handshake reply".into()))?
        .map_err(|e| ClientError::Disconnected(format!("handshake: {e}")))?;
    if header.opcode != req.opcode() && header.status == 0 {
        return Err(ClientError::Protocol(format!(
            "handshake reply for opcode 0x{:04x}",
            header.opcode
        )));
    }
    if header.status != 0 {
        return Err(server_error(header.status, &payload));
    }
    Ok(payload)
}
