//! WRITE handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::proto::header::Smb2Header;
use crate::proto::messages::{Dialect, WriteRequest, WriteResponse};

use crate::access_mask::{FILE_APPEND_DATA, FILE_WRITE_DATA};
use crate::conn::state::{Connection, Open};
use crate::dispatch::HandlerResponse;
use crate::files::Trigger;
use crate::handlers::create::{FILE_NO_INTERMEDIATE_BUFFERING, WRITE_THROUGH_OPTIONS};
use crate::handlers::shared::{
    channel_is_valid, lookup_open, lookup_session_tree, restore_fixed_times,
};
use crate::handlers::{Outcome, Pending};
use crate::ntstatus;
use crate::server::ServerState;

/// Largest DataOffset of a WRITE that carries its data inline (MS-SMB2
/// 3.3.5.13).
const MAX_DATA_OFFSET: u16 = 0x100;

/// brickd: a WRITE of at least this many bytes is answered asynchronously
/// (MS-SMB2 3.3.4.2: an interim STATUS_PENDING, the final response when the
/// data is written), so the connection reads its next request meanwhile and
/// a client's pipelined WRITEs are written at once rather than one by one.
pub(crate) const ASYNC_WRITE_BYTES_MIN: u32 = 64 * 1024;

pub async fn handle(
    server: &Arc<ServerState>,
    conn: &Arc<Connection>,
    hdr: &Smb2Header,
    body: &bytes::Bytes,
    retained: usize,
) -> Outcome {
    match prepare(server, conn, hdr, body).await {
        Err(response) => Outcome::Done(response),
        Ok(ready) if ready.req.length < ASYNC_WRITE_BYTES_MIN => Outcome::Done(ready.run().await),
        Ok(ready) => {
            // Past the process's or the connection's limits the WRITE runs
            // here, as before.
            let Some(held) = AsyncWriteBytes::take(retained) else {
                return Outcome::Done(ready.run().await);
            };
            let Some((op, _stop)) = conn.pending.reserve(hdr, Some(ready.req.file_id), retained)
            else {
                return Outcome::Done(ready.run().await);
            };
            // A CANCEL or CLOSE does not stop a write under way: its data may
            // already be on disk, and the final response says what was written.
            let work = async move {
                let response = ready.run().await;
                drop(held);
                response
            };
            Outcome::Pending(Pending {
                op,
                work: Box::pin(work),
            })
        }
    }
}

/// brickd: request bytes all asynchronous WRITEs of the process may hold at
/// once, whatever the number of connections (each may hold up to
/// `MAX_PENDING_BYTES`).
const ASYNC_WRITE_BYTES_MAX: usize = 256 << 20;

static ASYNC_WRITE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// A share of `ASYNC_WRITE_BYTES_MAX`, given back when dropped.
struct AsyncWriteBytes(usize);

impl AsyncWriteBytes {
    fn take(bytes: usize) -> Option<Self> {
        ASYNC_WRITE_BYTES
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held + bytes <= ASYNC_WRITE_BYTES_MAX).then_some(held + bytes)
            })
            .ok()?;
        Some(Self(bytes))
    }
}

impl Drop for AsyncWriteBytes {
    fn drop(&mut self) {
        ASYNC_WRITE_BYTES.fetch_sub(self.0, Ordering::AcqRel);
    }
}

/// A WRITE that passed its checks, holding its open until it is answered (a
/// CLOSE waits for it).
struct Ready {
    req: WriteRequest,
    /// The data, a slice of the request frame.
    data: bytes::Bytes,
    open: tokio::sync::OwnedRwLockReadGuard<Open>,
    write_through: bool,
}

/// Runs the WRITE's checks. `Err` is the answer when the WRITE ends here: an
/// error, or the success of a zero-length WRITE.
async fn prepare(
    _server: &Arc<ServerState>,
    conn: &Arc<Connection>,
    hdr: &Smb2Header,
    body: &bytes::Bytes,
) -> Result<Ready, HandlerResponse> {
    let (req, data) = match WriteRequest::parse_shared(body) {
        Ok(r) => r,
        Err(_) => return Err(HandlerResponse::err(ntstatus::STATUS_INVALID_PARAMETER)),
    };
    let max_write = *conn.max_write_size.read().await;
    if req.length > max_write {
        return Err(HandlerResponse::err(ntstatus::STATUS_INVALID_PARAMETER));
    }
    let tree_arc = match lookup_session_tree(conn, hdr).await {
        Ok(t) => t,
        Err(s) => return Err(HandlerResponse::err(s)),
    };
    let open_arc = match lookup_open(&tree_arc, req.file_id).await {
        Some(o) => o,
        None => return Err(HandlerResponse::err(ntstatus::STATUS_FILE_CLOSED)),
    };
    let dialect = *conn.dialect.read().await;
    if !channel_is_valid(dialect, req.channel) {
        return Err(HandlerResponse::err(ntstatus::STATUS_INVALID_PARAMETER));
    }
    if req.data_offset > MAX_DATA_OFFSET {
        return Err(HandlerResponse::err(ntstatus::STATUS_INVALID_PARAMETER));
    }

    let open = open_arc.read_owned().await;
    let Some(handle) = open.handle.as_ref() else {
        return Err(HandlerResponse::err(ntstatus::STATUS_FILE_CLOSED));
    };

    // MS-SMB2 3.3.5.13: a per-request write-through needs an unbuffered
    // write. UNBUFFERED is defined from 3.0.2 on.
    let unbuffered_dialect = matches!(dialect, Some(Dialect::Smb302 | Dialect::Smb311));
    let write_through_flag = req.flags & WriteRequest::FLAG_WRITE_THROUGH != 0;
    let unbuffered_flag =
        unbuffered_dialect && req.flags & WriteRequest::FLAG_WRITE_UNBUFFERED != 0;
    let unbuffered_open = open.create_options & FILE_NO_INTERMEDIATE_BUFFERING != 0;
    let checks_write_through = !matches!(dialect, None | Some(Dialect::Smb202));
    if checks_write_through && write_through_flag && !unbuffered_flag && !unbuffered_open {
        return Err(HandlerResponse::err(ntstatus::STATUS_INVALID_PARAMETER));
    }
    let write_through = (checks_write_through && write_through_flag)
        || unbuffered_flag
        || open.create_options & WRITE_THROUGH_OPTIONS != 0;

    // MS-SMB2 3.3.5.13: overwriting bytes needs FILE_WRITE_DATA and growing
    // the file needs FILE_APPEND_DATA.
    let can_write = open.granted_access & FILE_WRITE_DATA != 0;
    let can_append = open.granted_access & FILE_APPEND_DATA != 0;
    if !can_write && !can_append {
        return Err(HandlerResponse::err(ntstatus::STATUS_ACCESS_DENIED));
    }
    let length = u64::from(req.length);
    if req.length > 0 && !(can_write && can_append) {
        let size = match handle.stat().await {
            Ok(info) => info.end_of_file,
            Err(e) => return Err(HandlerResponse::err(e.to_nt_status())),
        };
        let overwrites = req.offset < size;
        let grows = req.offset.saturating_add(length) > size;
        if (overwrites && !can_write) || (grows && !can_append) {
            return Err(HandlerResponse::err(ntstatus::STATUS_ACCESS_DENIED));
        }
    }

    if req.length == 0 {
        let mut buf = Vec::new();
        WriteResponse::new(0)
            .write_to(&mut buf)
            .expect("encoding into a Vec cannot fail");
        return Err(HandlerResponse::ok(buf));
    }
    if let Some(file) = open.file.as_ref() {
        if let Err(status) = file.check_io(req.offset, length, true) {
            return Err(HandlerResponse::err(status));
        }
        file.break_leases(Trigger::Write);
    }

    Ok(Ready {
        req,
        data,
        open,
        write_through,
    })
}

impl Ready {
    async fn run(self) -> HandlerResponse {
        let Ready {
            req,
            data,
            open,
            write_through,
        } = self;
        let Some(handle) = open.handle.as_ref() else {
            return HandlerResponse::err(ntstatus::STATUS_FILE_CLOSED);
        };
        let mut result = handle.write_owned(req.offset, data).await;
        if result.is_ok() {
            open.wrote.store(true, Ordering::Release);
        }
        // A lease granted while the data was being written breaks now, so it
        // does not keep the old contents cached.
        if let Some(file) = open.file.as_ref() {
            file.break_leases(Trigger::Write);
        }
        if result.is_ok() && write_through {
            result = handle.flush().await.and(result);
        }
        if result.is_ok() {
            restore_fixed_times(&open).await;
        }
        drop(open);
        let count = match result {
            Ok(n) => n,
            Err(e) => return HandlerResponse::err(e.to_nt_status()),
        };
        let mut buf = Vec::new();
        WriteResponse::new(count)
            .write_to(&mut buf)
            .expect("encode");
        HandlerResponse::ok(buf)
    }
}
