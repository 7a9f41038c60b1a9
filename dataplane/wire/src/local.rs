//! The in-process transport. A client running in the same process as a dataplane core (a
//! gateway hosted by `brickd`) hands its requests to the core over a channel instead of a
//! socket: no kernel copies, no TCP, no crc32c over bytes that never leave the process's
//! memory. The frames, the request ids, the replies and the limits are those of a socket
//! connection (docs/wire.md, "In-process connections").
//!
//! Each core registers the address it listens on; a client that connects to a registered
//! address gets an in-process connection, and to any other address a TCP one.

use crate::{ErrorCode, Header, Welcome};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

/// One request: its header (payload length, opcode, id) and its encoded payload.
pub struct LocalRequest {
    pub header: Header,
    pub payload: Vec<u8>,
}

/// What a core answers an in-process connection with: its shard list, or why not.
pub type LocalWelcome = Result<Welcome, (ErrorCode, String)>;

/// A client asking a core for an in-process connection.
pub struct LocalConnect {
    pub user: String,
    /// The user's password key, checked against the core's user table as a proof would be.
    pub key: [u8; 32],
    /// Requests, bounded by the sender's capacity.
    pub requests: flume::Receiver<LocalRequest>,
    /// Whole response frames (header included), as a socket would carry them.
    pub replies: flume::Sender<Vec<u8>>,
    pub welcome: flume::Sender<LocalWelcome>,
}

/// An NBD connection past its handshake, handed by the NBD gateway to the core that owns its
/// export's file (docs/nbd.md, "Connections served on the owning core").
pub struct NbdHandoff {
    pub user: String,
    pub key: [u8; 32],
    /// The connected socket; the gateway keeps a duplicate to take the connection back.
    pub socket: std::net::TcpStream,
    pub export: NbdExport,
    /// Told once how the core's session ended.
    pub ended: flume::Sender<NbdSessionEnd>,
}

/// The file an NBD connection serves.
#[derive(Debug, Clone, Copy)]
pub struct NbdExport {
    pub vol: u32,
    pub fid: u64,
    pub size: u64,
}

/// A request the core did not answer, handed back to the gateway.
pub struct NbdUnanswered {
    pub request: crate::nbd::Request,
    /// A WRITE's data (empty otherwise).
    pub data: Vec<u8>,
}

/// How a core's NBD session ended.
pub enum NbdSessionEnd {
    /// The client disconnected or broke the protocol; the connection is finished.
    Closed,
    /// The core cannot go on serving it (not the primary any more, the PG unavailable, the
    /// handoff refused): the gateway answers `unanswered` and reads the stream on from
    /// `buffered`. Every other request was answered and its reply written.
    HandBack {
        buffered: Vec<u8>,
        unanswered: Vec<NbdUnanswered>,
    },
}

impl NbdSessionEnd {
    /// The whole connection back, untouched: the core did not serve it at all.
    pub fn untouched() -> NbdSessionEnd {
        NbdSessionEnd::HandBack {
            buffered: Vec::new(),
            unanswered: Vec::new(),
        }
    }
}

/// What a core accepts through its registration.
pub enum ToCore {
    Connect(LocalConnect),
    Nbd(NbdHandoff),
}

type Registry = HashMap<SocketAddr, flume::Sender<ToCore>>;

static CORES: Mutex<Option<Registry>> = Mutex::new(None);

fn with_registry<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    let mut guard = CORES.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(HashMap::new))
}

/// Keeps a core's address registered; dropping it unregisters (the core stopped).
pub struct Registration {
    addr: SocketAddr,
    sender: flume::Sender<ToCore>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        with_registry(|r| {
            // Only our own entry: a later core on the same address keeps its registration.
            if r.get(&self.addr)
                .is_some_and(|s| s.same_channel(&self.sender))
            {
                r.remove(&self.addr);
            }
        });
    }
}

/// Registers the core listening on `addr`: connections to it from this process arrive on the
/// returned receiver.
pub fn register(addr: SocketAddr, depth: usize) -> (Registration, flume::Receiver<ToCore>) {
    let (tx, rx) = flume::bounded(depth);
    with_registry(|r| r.insert(addr, tx.clone()));
    (Registration { addr, sender: tx }, rx)
}

/// The core serving `addr` in this process, if there is one. `BRICK_LOCAL_TRANSPORT=off`
/// turns in-process connections off (to compare, or to test the socket path in-process).
pub fn lookup(addr: &str) -> Option<flume::Sender<ToCore>> {
    if std::env::var("BRICK_LOCAL_TRANSPORT").is_ok_and(|v| v == "off") {
        return None;
    }
    let addr: SocketAddr = addr.parse().ok()?;
    with_registry(|r| r.get(&addr).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_is_found_by_its_address_until_it_unregisters() {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("address");
        assert!(lookup("127.0.0.1:1").is_none());
        let (first, first_rx) = register(addr, 4);
        let found = lookup("127.0.0.1:1").expect("registered");
        assert!(found.same_channel(&first.sender));
        drop(found);
        assert!(lookup("127.0.0.2:1").is_none(), "another address");
        assert!(lookup("not an address").is_none());

        // A later core on the same address keeps its entry when the earlier one goes.
        let (second, _second_rx) = register(addr, 4);
        drop(first);
        let found = lookup("127.0.0.1:1").expect("still registered");
        assert!(found.same_channel(&second.sender));
        assert!(
            first_rx.is_disconnected(),
            "an unregistered core's channel has no sender left"
        );
        drop(second);
        assert!(lookup("127.0.0.1:1").is_none());
    }
}
