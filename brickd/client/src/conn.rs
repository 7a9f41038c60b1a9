//! One authenticated connection to one core: a writer task that batches frames into few
//! writes, a reader task that matches replies to requests by id (replies come out of order).

use crate::ClientError;
use brick_tuning::{CLIENT_CONNECT_TIMEOUT_MS, CLIENT_INFLIGHT_MAX};
use brick_wire::frame::{verify_crc, VERSION_MAX, VERSION_MIN};
use brick_wire::{auth, request_frame, ErrorCode, Header, HelloReply, Kind, Request, Welcome, HEADER_BYTES};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// A reply frame: status 0 and its payload, or a server error.
pub type ReplyResult = Result<Vec<u8>, ClientError>;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<ReplyResult>>>>;

pub(crate) struct Conn {
    pub addr: String,
    pub core: u32,
    tx: mpsc::UnboundedSender<Vec<u8>>,
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
    pub async fn open(addr: &str, user: &str, key: &[u8; 32]) -> Result<(Conn, Welcome), ClientError> {
        let connect = TcpStream::connect(addr);
        let stream = tokio::time::timeout(Duration::from_millis(CLIENT_CONNECT_TIMEOUT_MS), connect)
            .await
            .map_err(|_| ClientError::Disconnected(format!("connect to {addr}: timed out")))?
            .map_err(|e| ClientError::Disconnected(format!("connect to {addr}: {e}")))?;
        stream.set_nodelay(true).ok();
        let (read_half, mut write_half) = stream.into_split();
        let mut reader = BufReader::with_capacity(256 * 1024, read_half);
        let welcome = handshake(&mut reader, &mut write_half, user, key).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let alive = Arc::new(AtomicBool::new(true));
        tokio::spawn(write_loop(write_half, rx, alive.clone(), pending.clone()));
        tokio::spawn(read_loop(reader, pending.clone(), alive.clone(), addr.to_string()));
        Ok((
            Conn {
                addr: addr.to_string(),
                core: welcome.core,
                tx,
                pending,
                alive,
                next_id: AtomicU64::new(1),
                inflight: Arc::new(Semaphore::new(CLIENT_INFLIGHT_MAX)),
            },
            welcome,
        ))
    }

    /// Sends one request and waits for its reply.
    pub async fn call(&self, req: &Request<'_>) -> ReplyResult {
        let _permit = self
            .inflight
            .acquire()
            .await
            .map_err(|_| ClientError::Disconnected("connection closed".into()))?;
        if !self.is_alive() {
            return Err(ClientError::Disconnected(format!("connection to {} is closed", self.addr)));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::with_capacity(HEADER_BYTES + 64);
        request_frame(&mut frame, id, req);
        let (reply_tx, reply_rx) = oneshot::channel();
        lock(&self.pending).insert(id, reply_tx);
        if self.tx.send(frame).is_err() {
            lock(&self.pending).remove(&id);
            return Err(ClientError::Disconnected(format!("connection to {} is closed", self.addr)));
        }
        let timeout = Duration::from_millis(brick_tuning::CLIENT_REQUEST_TIMEOUT_MS);
        match tokio::time::timeout(timeout, reply_rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(ClientError::Disconnected(format!("connection to {} closed", self.addr))),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(ClientError::Timeout(format!("no reply from {} within {timeout:?}", self.addr)))
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Release);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn fail_all(pending: &Pending, why: &str) {
    for (_, tx) in lock(pending).drain() {
        let _ = tx.send(Err(ClientError::Disconnected(why.to_string())));
    }
}

async fn write_loop(
    mut w: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    alive: Arc<AtomicBool>,
    pending: Pending,
) {
    let mut batch: Vec<u8> = Vec::with_capacity(256 * 1024);
    while let Some(first) = rx.recv().await {
        if !alive.load(Ordering::Acquire) {
            break;
        }
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < 1024 * 1024 {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if let Err(e) = w.write_all(&batch).await {
            alive.store(false, Ordering::Release);
            fail_all(&pending, &format!("write failed: {e}"));
            break;
        }
    }
    let _ = w.shutdown().await;
}

async fn read_loop(mut r: BufReader<OwnedReadHalf>, pending: Pending, alive: Arc<AtomicBool>, addr: String) {
    let why = loop {
        match read_reply(&mut r).await {
            Ok((header, payload)) => {
                let Some(tx) = lock(&pending).remove(&header.request_id) else {
                    continue; // timed out meanwhile
                };
                let result = if header.status == 0 {
                    Ok(payload)
                } else {
                    Err(server_error(header.status, &payload))
                };
                let _ = tx.send(result);
            }
            Err(e) => break e,
        }
        if !alive.load(Ordering::Acquire) {
            break "connection closed by client".to_string();
        }
    };
    alive.store(false, Ordering::Release);
    tracing::debug!("connection to {addr} ended: {why}");
    fail_all(&pending, &format!("connection to {addr} lost: {why}"));
}

pub(crate) fn server_error(status: u32, payload: &[u8]) -> ClientError {
    ClientError::Server {
        code: ErrorCode::from_code(status),
        message: String::from_utf8_lossy(&payload[..payload.len().min(brick_wire::ERROR_MESSAGE_BYTES_MAX)]).into_owned(),
    }
}

async fn read_reply<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<(Header, Vec<u8>), String> {
    let mut hb = [0u8; HEADER_BYTES];
    r.read_exact(&mut hb).await.map_err(|e| e.to_string())?;
    let header = Header::parse(&hb).map_err(|e| e.to_string())?;
    if header.kind != Kind::Response {
        return Err("server sent a request frame".into());
    }
    let mut payload = vec![0u8; header.payload_len as usize];
    r.read_exact(&mut payload).await.map_err(|e| e.to_string())?;
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
    let welcome = exchange(r, w, &Request::Auth { proof }).await.map_err(|e| match e {
        ClientError::Server { code: ErrorCode::AuthFailed, message } => ClientError::Auth(message),
        other => other,
    })?;
    Welcome::decode(&welcome).map_err(|e| ClientError::Protocol(e.to_string()))
}

async fn exchange(r: &mut BufReader<OwnedReadHalf>, w: &mut OwnedWriteHalf, req: &Request<'_>) -> ReplyResult {
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
        return Err(ClientError::Protocol(format!("handshake reply for opcode 0x{:04x}", header.opcode)));
    }
    if header.status != 0 {
        return Err(server_error(header.status, &payload));
    }
    Ok(payload)
}
