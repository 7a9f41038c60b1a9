//! LOCK handler: byte-range locks (MS-SMB2 3.3.5.14).
//!
//! brickd: a request for one lock without SMB2_LOCKFLAG_FAIL_IMMEDIATELY that
//! conflicts waits for its range (MS-SMB2 3.3.5.14.2): it is answered
//! asynchronously, with an interim STATUS_PENDING, and takes the lock once
//! the range is free. CANCEL ends the wait with STATUS_CANCELLED; a CLOSE,
//! tree disconnect or logoff with STATUS_RANGE_NOT_LOCKED. Requests for
//! several locks must all fail immediately, so they never wait.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::proto::header::Smb2Header;
use crate::proto::messages::{LockElement, LockRequest, LockResponse};

use crate::conn::pending::{Stop, stopped};
use crate::conn::state::{Connection, LockSequences, Open};
use crate::dispatch::HandlerResponse;
use crate::files::Trigger;
use crate::handlers::shared::{lookup_open, lookup_session_tree};
use crate::handlers::{Outcome, Pending};
use crate::ntstatus;
use crate::proto::messages::{Dialect, FileId};
use crate::server::ServerState;

const SHARED: u32 = LockElement::FLAG_SHARED_LOCK;
const EXCLUSIVE: u32 = LockElement::FLAG_EXCLUSIVE_LOCK;
const UNLOCK: u32 = LockElement::FLAG_UNLOCK;
const FAIL_IMMEDIATELY: u32 = LockElement::FLAG_FAIL_IMMEDIATELY;

pub async fn handle(
    server: &Arc<ServerState>,
    conn: &Arc<Connection>,
    hdr: &Smb2Header,
    body: &[u8],
    retained: usize,
) -> Outcome {
    let (response, waits) = lock_now(server, conn, hdr, body).await;
    let Some(wait) = waits else {
        return Outcome::Done(response);
    };
    // MS-SMB2 3.3.4.2: past the connection's limits the request fails now.
    let Some((op, mut stop)) = conn.pending.reserve(hdr, Some(wait.file_id), retained) else {
        return Outcome::Done(response);
    };
    let (server, conn, hdr) = (Arc::clone(server), Arc::clone(conn), *hdr);
    let work = async move {
        loop {
            let mut changes = match wait.try_lock(&server, &conn, &hdr).await {
                Ok(response) => return response,
                Err(changes) => changes,
            };
            tokio::select! {
                biased;
                why = stopped(&mut stop) => {
                    if why == Stop::Cancelled {
                        return HandlerResponse::err(ntstatus::STATUS_CANCELLED);
                    }
                }
                _ = changes.changed() => {}
            }
        }
    };
    Outcome::Pending(Pending {
        op,
        work: Box::pin(work),
    })
}

/// A lock request waiting for its range.
struct Waiting {
    lock_sequence: u32,
    dialect: Option<Dialect>,
    file_id: FileId,
    offset: u64,
    length: u64,
    exclusive: bool,
}

impl Waiting {
    /// Tries the lock again, looking its open up anew; the answer, or a wait
    /// for the next change on the file, taken before the try so that no
    /// release is missed.
    async fn try_lock(
        &self,
        server: &Arc<ServerState>,
        conn: &Arc<Connection>,
        hdr: &Smb2Header,
    ) -> Result<HandlerResponse, crate::files::BreakWait> {
        let gone = || Ok(HandlerResponse::err(ntstatus::STATUS_RANGE_NOT_LOCKED));
        let Ok(tree_arc) = lookup_session_tree(conn, hdr).await else {
            return gone();
        };
        let Some(open_arc) = lookup_open(&tree_arc, self.file_id).await else {
            return gone();
        };
        let open = open_arc.read().await;
        let Some(file) = open.file.as_ref() else {
            return gone();
        };
        let changes = file.changes();
        let limit = server.max_locks_per_open.load(Ordering::Relaxed);
        match file.lock_range(self.offset, self.length, self.exclusive, limit) {
            Ok(()) => {
                if let Some((entry, number)) =
                    sequence_entry(&open, self.dialect, self.lock_sequence)
                {
                    entry.store(number, Ordering::Release);
                }
                Ok(lock_granted())
            }
            Err(ntstatus::STATUS_LOCK_NOT_GRANTED) => Err(changes),
            Err(status) => Ok(HandlerResponse::err(status)),
        }
    }
}

/// brickd: the lock sequence entry a request names, when the open's requests
/// are checked: resilient or durable opens, on any dialect but 2.0.2.
fn sequence_entry(
    open: &Open,
    dialect: Option<Dialect>,
    lock_sequence: u32,
) -> Option<(&std::sync::atomic::AtomicU8, u8)> {
    let checked = open.resilient.load(Ordering::Acquire) || open.durable.is_some();
    if !checked || matches!(dialect, None | Some(Dialect::Smb202)) {
        return None;
    }
    open.lock_sequences.entry(lock_sequence)
}

fn lock_granted() -> HandlerResponse {
    let mut buf = Vec::new();
    LockResponse::default().write_to(&mut buf).expect("encode");
    HandlerResponse::ok(buf)
}

/// Runs the request once; a lock that may wait for its range and could not be
/// taken comes back as a `Waiting` beside its LOCK_NOT_GRANTED.
async fn lock_now(
    server: &Arc<ServerState>,
    conn: &Arc<Connection>,
    hdr: &Smb2Header,
    body: &[u8],
) -> (HandlerResponse, Option<Waiting>) {
    let fail = |status| (HandlerResponse::err(status), None);
    let req = match LockRequest::parse(body) {
        Ok(r) => r,
        Err(_) => return fail(ntstatus::STATUS_INVALID_PARAMETER),
    };
    let tree_arc = match lookup_session_tree(conn, hdr).await {
        Ok(t) => t,
        Err(s) => return fail(s),
    };
    let Some(open_arc) = lookup_open(&tree_arc, req.file_id).await else {
        return fail(ntstatus::STATUS_FILE_CLOSED);
    };
    let Some(first) = req.locks.first() else {
        return fail(ntstatus::STATUS_INVALID_PARAMETER);
    };
    let open = open_arc.read().await;
    // MS-FSA 2.1.5.8: directories take no byte-range locks.
    if open.is_directory {
        return fail(ntstatus::STATUS_INVALID_PARAMETER);
    }
    let Some(file) = open.file.as_ref() else {
        return fail(ntstatus::STATUS_FILE_CLOSED);
    };
    // brickd: MS-SMB2 3.3.5.14, lock sequences of resilient and durable opens:
    // a replay of the last request applied at its index succeeds unapplied.
    let dialect = *conn.dialect.read().await;
    let sequence = sequence_entry(&open, dialect, req.lock_sequence);
    if let Some((entry, number)) = sequence {
        if entry.load(Ordering::Acquire) == number {
            return (lock_granted(), None);
        }
        entry.store(LockSequences::invalid(), Ordering::Release);
    }

    let result = if first.flags & UNLOCK != 0 {
        // MS-SMB2 3.3.5.14.1: unlocks done before a failure stay done.
        req.locks.iter().try_for_each(|l| {
            // brickd: an UNLOCK carries no other flag, FAIL_IMMEDIATELY
            // included (smb2.lock.valid-request; MS-SMB2 3.3.5.14.1).
            if l.flags != UNLOCK {
                return Err(ntstatus::STATUS_INVALID_PARAMETER);
            }
            file.unlock_range(l.offset, l.length)
        })
    } else {
        let valid = |flags: u32| {
            matches!(flags & !FAIL_IMMEDIATELY, SHARED | EXCLUSIVE)
                && (req.locks.len() == 1 || flags & FAIL_IMMEDIATELY != 0)
        };
        if !req.locks.iter().all(|l| valid(l.flags)) {
            return fail(ntstatus::STATUS_INVALID_PARAMETER);
        }
        // brickd: a lock breaks the caching of other opens as a write does
        // (MS-FSA 2.1.4.12, LOCK_CONTROL), level II oplocks included.
        file.break_leases(Trigger::Write);
        // MS-SMB2 3.3.5.14.2: a failed lock releases the ranges this request
        // locked before it.
        let limit = server.max_locks_per_open.load(Ordering::Relaxed);
        let mut taken = Vec::new();
        let mut result = Ok(());
        for l in &req.locks {
            match file.lock_range(l.offset, l.length, l.flags & EXCLUSIVE != 0, limit) {
                Ok(()) => taken.push(l),
                Err(status) => {
                    for t in &taken {
                        file.undo_lock(t.offset, t.length, t.flags & EXCLUSIVE != 0);
                    }
                    result = Err(status);
                    break;
                }
            }
        }
        result
    };
    if let (Ok(()), Some((entry, number))) = (&result, sequence) {
        entry.store(number, Ordering::Release);
    }
    drop(open);

    match result {
        Ok(()) => (lock_granted(), None),
        Err(ntstatus::STATUS_LOCK_NOT_GRANTED)
            if req.locks.len() == 1 && first.flags & FAIL_IMMEDIATELY == 0 =>
        {
            let waiting = Waiting {
                lock_sequence: req.lock_sequence,
                dialect,
                file_id: req.file_id,
                offset: first.offset,
                length: first.length,
                exclusive: first.flags & EXCLUSIVE != 0,
            };
            (
                HandlerResponse::err(ntstatus::STATUS_LOCK_NOT_GRANTED),
                Some(waiting),
            )
        }
        Err(status) => fail(status),
    }
}
