//! Outgoing replication links: one TCP connection per (core, peer node), authenticated as
//! `NODE_USER` with the cluster's node key, carrying one-way REPL frames. A peer that is slow,
//! frozen or gone never blocks the core: frames beyond `PEER_QUEUE_FRAMES` are dropped, and so
//! is whatever queued while the link was down. The replication protocol resends what matters.

use crate::state::NODE_USER;
use brick_tuning::{
    HANDSHAKE_PAYLOAD_BYTES_MAX, PEER_BATCH_BYTES_MAX as BATCH_BYTES_MAX, PEER_CONNECT_TIMEOUT_MS,
    PEER_QUEUE_FRAMES, PEER_RECONNECT_DELAY_MS as RECONNECT_DELAY_MS,
};
use brick_wire::frame::{verify_crc, VERSION_MAX, VERSION_MIN};
use brick_wire::{auth, op, request_frame, Header, HelloReply, Kind, Request, HEADER_BYTES};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// The links of one core, by peer address.
pub(crate) struct PeerLinks {
    core: usize,
    links: RefCell<HashMap<String, flume::Sender<Vec<u8>>>>,
    /// The key this node proves itself with (the cluster's node key, from the served state).
    node_key: Cell<[u8; 32]>,
}

impl PeerLinks {
    pub fn new(core: usize) -> PeerLinks {
        PeerLinks {
            core,
            links: RefCell::new(HashMap::new()),
            node_key: Cell::new([0; 32]),
        }
    }

    pub fn set_node_key(&self, key: [u8; 32]) {
        self.node_key.set(key);
    }

    /// Queues one frame for the node at `addr`, starting its link on first use.
    pub fn send(self: &Rc<Self>, addr: &str, frame: Vec<u8>) {
        let existing = self.links.borrow().get(addr).cloned();
        let tx = match existing {
            Some(tx) => tx,
            None => {
                let (tx, rx) = flume::bounded(PEER_QUEUE_FRAMES);
                self.links.borrow_mut().insert(addr.to_string(), tx.clone());
                glommio::spawn_local(link(self.clone(), addr.to_string(), rx)).detach();
                tx
            }
        };
        let _ = tx.try_send(frame); // full: the peer is not keeping up; dropped
    }
}

async fn link(links: Rc<PeerLinks>, addr: String, rx: flume::Receiver<Vec<u8>>) {
    let mut failures = 0u32;
    let core = links.core;
    loop {
        match connect(&links.node_key.get(), &addr).await {
            Ok(stream) => {
                failures = 0;
                tracing::debug!(core, %addr, "replication link up");
                let why = pump(stream, &rx).await;
                tracing::info!(core, %addr, "replication link down: {why}");
            }
            Err(why) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(100) {
                    tracing::info!(core, %addr, "replication link: {why}");
                }
            }
        }
        while rx.try_recv().is_ok() {} // stale by the time the link is back
        glommio::timer::sleep(Duration::from_millis(RECONNECT_DELAY_MS)).await;
    }
}

/// Writes queued frames until the connection fails.
async fn pump(stream: TcpStream, rx: &flume::Receiver<Vec<u8>>) -> String {
    let (reader, mut writer) = futures_lite::io::split(stream);
    // The peer answers nothing on a healthy link; an error frame means it refused a frame.
    let closed = Rc::new(std::cell::Cell::new(false));
    let drain = glommio::spawn_local(drain_replies(reader, closed.clone()));
    let mut batch = Vec::with_capacity(BATCH_BYTES_MAX);
    let why = loop {
        let Ok(first) = rx.recv_async().await else {
            break "node shutting down".to_string();
        };
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(frame) => batch.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        if let Err(e) = writer.write_all(&batch).await {
            break e.to_string();
        }
        if let Err(e) = writer.flush().await {
            break e.to_string();
        }
        if closed.get() {
            break "peer closed the connection".to_string();
        }
    };
    drop(drain);
    why
}

async fn drain_replies<R: AsyncRead + Unpin>(mut reader: R, closed: Rc<std::cell::Cell<bool>>) {
    loop {
        match read_frame(&mut reader, brick_tuning::FRAME_PAYLOAD_BYTES_MAX).await {
            Ok((h, payload)) if h.status != 0 => tracing::warn!(
                "peer refused a replication frame: {} ({})",
                String::from_utf8_lossy(&payload),
                h.status
            ),
            Ok(_) => {}
            Err(_) => {
                closed.set(true);
                return;
            }
        }
    }
}

async fn connect(key: &[u8; 32], addr: &str) -> Result<TcpStream, String> {
    let limit = Duration::from_millis(PEER_CONNECT_TIMEOUT_MS);
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut stream = TcpStream::connect_timeout(sock, limit)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    glommio::timer::timeout(limit, async { Ok(handshake(&mut stream, key).await) })
        .await
        .map_err(|e| format!("handshake: {e}"))??;
    Ok(stream)
}

/// HELLO, AUTH as `NODE_USER`; the WELCOME's shard list is not needed (REPL frames reach
/// the right core through the server's own routing).
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &[u8; 32],
) -> Result<(), String> {
    let client_nonce: [u8; 16] = rand::random();
    let hello = Request::Hello {
        version_min: VERSION_MIN,
        version_max: VERSION_MAX,
        user: NODE_USER,
        client_nonce,
    };
    let reply = exchange(stream, 1, &hello).await?;
    let hello_reply = HelloReply::decode(&reply).map_err(|e| format!("HELLO reply: {e}"))?;
    let proof = auth::proof(key, NODE_USER, &client_nonce, &hello_reply.server_nonce);
    exchange(stream, 2, &Request::Auth { proof }).await?;
    Ok(())
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    id: u64,
    req: &Request<'_>,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    request_frame(&mut out, id, req);
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let (h, payload) = read_frame(stream, HANDSHAKE_PAYLOAD_BYTES_MAX).await?;
    if h.kind != Kind::Response || h.request_id != id {
        return Err("unexpected frame during the handshake".into());
    }
    if h.status != 0 {
        return Err(format!(
            "refused: {} ({})",
            String::from_utf8_lossy(&payload),
            h.status
        ));
    }
    if h.opcode != req.opcode() && req.opcode() != op::AUTH {
        return Err("reply to another request".into());
    }
    Ok(payload)
}

async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    payload_max: u32,
) -> Result<(Header, Vec<u8>), String> {
    let mut head = [0u8; HEADER_BYTES];
    reader
        .read_exact(&mut head)
        .await
        .map_err(|e| e.to_string())?;
    let h = Header::parse(&head).map_err(|e| e.to_string())?;
    if h.payload_len > payload_max {
        return Err(format!("reply of {} bytes", h.payload_len));
    }
    let mut payload = vec![0u8; h.payload_len as usize];
    reader
        .read_exact(&mut payload)
        .await
        .map_err(|e| e.to_string())?;
    verify_crc(&head, &payload).map_err(|e| e.to_string())?;
    Ok((h, payload))
}
