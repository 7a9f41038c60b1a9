//! NBD server over the native client library: each export is a regular file of a volume,
//! named by its path (`nbd://host:port/images/vm.img`). QEMU, qemu-img, qemu-nbd, libnbd
//! (nbdinfo, nbdcopy) and fio's `nbd` engine speak it natively. The gateway holds no data:
//! every request becomes native READ/WRITE/FSYNC calls, so it can run on any host.
//!
//! Protocol: fixed newstyle handshake (`NBD_OPT_EXPORT_NAME`, `NBD_OPT_LIST`, `NBD_OPT_INFO`,
//! `NBD_OPT_GO`, `NBD_OPT_ABORT`; anything else is answered `NBD_REP_ERR_UNSUP`), then simple
//! replies to READ, WRITE (with FUA), FLUSH, TRIM, WRITE_ZEROES and DISC, pipelined and
//! answered out of order. Byte layout, limits and error mapping: docs/nbd.md.

use brick_client::{ClientError, Volume};
use brick_wire::local::{NbdExport, NbdHandoff, NbdSessionEnd, NbdUnanswered, ToCore};
use brick_wire::nbd::*;
use brick_wire::{FileId, FileKind, ROOT_FILE_ID};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

/// Connections served at once; more wait in the listen backlog.
pub const CONNECTIONS_MAX: usize = 256;
pub use brick_wire::nbd::{IN_FLIGHT_BYTES_MAX, REQUEST_BYTES_MAX};
/// Read buffer of a connection's request stream (WRITE data larger than what is buffered is
/// read straight into its own buffer).
const REQUEST_READ_BUFFER_BYTES: usize = 64 << 10;
/// Options one handshake may send before choosing an export.
const OPTIONS_MAX: usize = 64;
/// Data of one option (export names are at most 4096 bytes).
const OPTION_BYTES_MAX: u32 = 16 << 10;
/// Exports `NBD_OPT_LIST` names at most (the regular files at the volume root).
const LIST_EXPORTS_MAX: usize = 1000;
/// Native requests carry at most this much (`brick_tuning::IO_BYTES_MAX`).
const NATIVE_IO_BYTES_MAX: u32 = 4 << 20;
/// WRITE_ZEROES writes zeros in pieces of this size.
const ZERO_CHUNK_BYTES: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
enum NbdError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
}

type NbdResult<T> = Result<T, NbdError>;

/// The file a connection serves.
#[derive(Debug, Clone)]
struct Export {
    fid: FileId,
    size: u64,
}

/// Serves `vol` on `listener` until `shutdown` turns true; connections open then are closed.
pub async fn serve(
    listener: TcpListener,
    vol: Volume,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = shutdown.changed() => break,
        };
        let vol = vol.clone();
        conns.spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, vol).await {
                tracing::info!(%peer, "nbd connection closed: {e}");
            }
        });
        while conns.try_join_next().is_some() {}
    }
    conns.shutdown().await;
    Ok(())
}

async fn connection(mut stream: TcpStream, vol: Volume) -> NbdResult<()> {
    stream.set_nodelay(true)?;
    let Some(export) = handshake(&mut stream, &vol).await? else {
        return Ok(());
    };
    match hand_to_core(stream, &vol, &export).await? {
        Handed::Finished => Ok(()),
        Handed::Back(stream, resume) => transmission(stream, vol, export, resume).await,
    }
}

/// Where a connection is after `hand_to_core`.
enum Handed {
    /// A core served it to its end.
    Finished,
    /// Served here: from its start, or from where the core left it.
    Back(TcpStream, Resume),
}

/// What a core did not answer before handing a connection back.
#[derive(Default)]
struct Resume {
    buffered: Vec<u8>,
    unanswered: Vec<NbdUnanswered>,
}

/// When the export's primary is a core of this process (a gateway hosted by brickd), hands the
/// connection to that core, which serves it with no thread hop (docs/nbd.md); waits until the
/// core is done with it. `BRICK_NBD_ON_CORE=off` keeps every connection here.
async fn hand_to_core(stream: TcpStream, vol: &Volume, export: &Export) -> NbdResult<Handed> {
    let off = std::env::var("BRICK_NBD_ON_CORE").is_ok_and(|v| v == "off");
    let primary = match off {
        true => None,
        false => vol.in_process_primary(export.fid).await,
    };
    let Some(primary) = primary else {
        return Ok(Handed::Back(stream, Resume::default()));
    };
    // The core gets a duplicate of the socket; this one takes the connection back if needed.
    let socket = stream.into_std()?;
    let (ended, ended_rx) = flume::bounded(1);
    let handoff = NbdHandoff {
        user: primary.user,
        key: primary.key,
        socket: socket.try_clone()?,
        export: NbdExport {
            vol: vol.id,
            fid: export.fid,
            size: export.size,
        },
        ended,
    };
    let end = match primary.core.send_async(ToCore::Nbd(handoff)).await {
        Ok(()) => ended_rx.recv_async().await,
        Err(_) => Ok(NbdSessionEnd::untouched()),
    };
    match end {
        // A core that stopped took the connection with it: the node is shutting down.
        Ok(NbdSessionEnd::Closed) | Err(_) => Ok(Handed::Finished),
        Ok(NbdSessionEnd::HandBack {
            buffered,
            unanswered,
        }) => {
            socket.set_nonblocking(true)?;
            let resume = Resume {
                buffered,
                unanswered,
            };
            Ok(Handed::Back(TcpStream::from_std(socket)?, resume))
        }
    }
}

/// Fixed newstyle negotiation; `None` when the client aborted.
async fn handshake(s: &mut TcpStream, vol: &Volume) -> NbdResult<Option<Export>> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello).await?;
    let client_flags = s.read_u32().await?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(NbdError::Protocol(format!(
            "unknown client flags {client_flags:#x}"
        )));
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    for _ in 0..OPTIONS_MAX {
        if s.read_u64().await? != IHAVEOPT {
            return Err(NbdError::Protocol("option without IHAVEOPT".into()));
        }
        let option = s.read_u32().await?;
        let len = s.read_u32().await?;
        if len > OPTION_BYTES_MAX {
            // Its data cannot be skipped safely at any size: refuse and hang up.
            s.write_all(&option_reply(option, REP_ERR_TOO_BIG, b"option too large"))
                .await?;
            return Err(NbdError::Protocol(format!("option of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;
        match option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                // This option has no error reply: an unknown export closes the connection.
                let export = open_export(vol, &name)
                    .await
                    .map_err(|why| NbdError::Protocol(why.to_string()))?;
                let mut reply = Vec::with_capacity(10 + 124);
                reply.extend_from_slice(&export.size.to_be_bytes());
                reply.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                if !no_zeroes {
                    reply.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&reply).await?;
                return Ok(Some(export));
            }
            OPT_ABORT => {
                s.write_all(&option_reply(option, REP_ACK, &[])).await?;
                return Ok(None);
            }
            OPT_LIST => {
                s.write_all(&list_reply(vol, &data).await).await?;
            }
            OPT_INFO | OPT_GO => match info_or_go(vol, option, &data).await {
                (reply, Some(export)) if option == OPT_GO => {
                    s.write_all(&reply).await?;
                    return Ok(Some(export));
                }
                (reply, _) => s.write_all(&reply).await?,
            },
            _ => {
                s.write_all(&option_reply(option, REP_ERR_UNSUP, &[]))
                    .await?
            }
        }
    }
    Err(NbdError::Protocol(format!(
        "more than {OPTIONS_MAX} options without choosing an export"
    )))
}

enum ExportError {
    Unknown(String),
    Invalid(String),
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExportError::Unknown(s) | ExportError::Invalid(s) => f.write_str(s),
        }
    }
}

async fn open_export(vol: &Volume, name: &str) -> Result<Export, ExportError> {
    if name.trim_matches('/').is_empty() {
        return Err(ExportError::Unknown(
            "no default export: name a file of the volume (nbd://host:port/path/to/image)".into(),
        ));
    }
    let attr = vol
        .resolve(name)
        .await
        .map_err(|e| ExportError::Unknown(format!("export {name:?}: {e}")))?;
    if attr.kind != FileKind::File {
        return Err(ExportError::Invalid(format!(
            "export {name:?} is not a regular file"
        )));
    }
    Ok(Export {
        fid: attr.fid,
        size: attr.size,
    })
}

async fn list_reply(vol: &Volume, data: &[u8]) -> Vec<u8> {
    if !data.is_empty() {
        return option_reply(OPT_LIST, REP_ERR_INVALID, b"LIST takes no data");
    }
    let entries = match vol.readdir_all(ROOT_FILE_ID).await {
        Ok(e) => e,
        Err(e) => return option_reply(OPT_LIST, REP_ERR_INVALID, e.to_string().as_bytes()),
    };
    let mut out = Vec::new();
    let files = entries.iter().filter(|e| e.attr.kind == FileKind::File);
    for e in files.take(LIST_EXPORTS_MAX) {
        let mut d = Vec::with_capacity(4 + e.name.len());
        d.extend_from_slice(&(e.name.len() as u32).to_be_bytes());
        d.extend_from_slice(e.name.as_bytes());
        out.extend(option_reply(OPT_LIST, REP_SERVER, &d));
    }
    out.extend(option_reply(OPT_LIST, REP_ACK, &[]));
    out
}

/// The replies to `NBD_OPT_INFO`/`NBD_OPT_GO`, and the export when they succeeded.
async fn info_or_go(vol: &Volume, option: u32, data: &[u8]) -> (Vec<u8>, Option<Export>) {
    let invalid = |why: &str| (option_reply(option, REP_ERR_INVALID, why.as_bytes()), None);
    let Some((name, requests)) = parse_info_request(data) else {
        return invalid("malformed INFO/GO request");
    };
    let export = match open_export(vol, &name).await {
        Ok(e) => e,
        Err(ExportError::Unknown(why)) => {
            return (option_reply(option, REP_ERR_UNKNOWN, why.as_bytes()), None)
        }
        Err(ExportError::Invalid(why)) => return invalid(&why),
    };
    let mut info = Vec::with_capacity(12);
    info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    info.extend_from_slice(&export.size.to_be_bytes());
    info.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
    let mut out = option_reply(option, REP_INFO, &info);
    if requests.contains(&INFO_BLOCK_SIZE) {
        let mut b = Vec::with_capacity(14);
        b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        for v in [1u32, 4096, REQUEST_BYTES_MAX] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        out.extend(option_reply(option, REP_INFO, &b));
    }
    out.extend(option_reply(option, REP_ACK, &[]));
    (out, Some(export))
}

/// INFO/GO data: u32 name length, name, u16 count, count x u16 information requests.
fn parse_info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let name_len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(data.get(4..4usize.checked_add(name_len)?)?).ok()?;
    let rest = &data[4 + name_len..];
    let count = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    if rest.len() != 2 + 2 * count {
        return None;
    }
    let requests = rest[2..]
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some((name.to_string(), requests))
}

/// The errno an NBD client gets for a failed native call.
fn errno_of(e: &ClientError) -> u32 {
    e.code().map_or(EIO, errno_for)
}

/// Serves requests until DISC, a bad request header or the client hanging up. Requests run
/// concurrently and are answered as they finish; one writer task owns the socket's send side.
async fn transmission(
    stream: TcpStream,
    vol: Volume,
    export: Export,
    resume: Resume,
) -> NbdResult<()> {
    let (rd, wr) = stream.into_split();
    // Buffered: the request headers a client pipelines arrive in one read, not one each.
    let rd = std::io::Cursor::new(resume.buffered).chain(rd);
    let mut rd = BufReader::with_capacity(REQUEST_READ_BUFFER_BYTES, rd);
    let (replies, mut outbox) = mpsc::channel::<Reply>(256);
    let writer = tokio::spawn(async move {
        let mut wr = BufWriter::with_capacity(256 << 10, wr);
        while let Some((head, data)) = outbox.recv().await {
            // READ data larger than the buffer goes to the socket from where it was read.
            wr.write_all(&head).await?;
            wr.write_all(&data).await?;
            while let Ok((head, data)) = outbox.try_recv() {
                wr.write_all(&head).await?;
                wr.write_all(&data).await?;
            }
            wr.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let budget = Arc::new(Semaphore::new(IN_FLIGHT_BYTES_MAX as usize));
    for NbdUnanswered { request, data } in resume.unanswered {
        let permit = budget
            .clone()
            .acquire_many_owned(request_weight(request.length))
            .await
            .map_err(|e| NbdError::Protocol(e.to_string()))?;
        let op = Op {
            vol: &vol,
            export: &export,
            req: request,
        };
        if let Some(reply) = op.start(permit, &replies, data) {
            let _ = replies.send(reply).await;
        }
    }
    let result = requests(&mut rd, &vol, &export, &replies, &budget).await;
    // DISC (or an error): let the requests in flight finish and be answered first.
    let _all = budget.acquire_many(IN_FLIGHT_BYTES_MAX).await;
    drop(replies);
    match writer.await {
        Ok(Err(e)) => tracing::debug!("nbd reply writer: {e}"),
        Err(e) => tracing::warn!("nbd reply writer: {e}"),
        Ok(Ok(())) => {}
    }
    result
}

async fn requests<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    vol: &Volume,
    export: &Export,
    replies: &mpsc::Sender<Reply>,
    budget: &Arc<Semaphore>,
) -> NbdResult<()> {
    loop {
        let mut head = [0u8; REQUEST_BYTES];
        match rd.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let req =
            Request::parse(&head).ok_or_else(|| NbdError::Protocol("bad request magic".into()))?;
        let weight = request_weight(req.length);
        let permit = budget
            .clone()
            .acquire_many_owned(weight)
            .await
            .map_err(|e| NbdError::Protocol(e.to_string()))?;
        let mut data = Vec::new();
        match req.command {
            CMD_DISC => return Ok(()),
            CMD_WRITE if req.length > REQUEST_BYTES_MAX => {
                let _ = replies.send(failure(EOVERFLOW, req)).await;
                // Its payload follows and is not worth reading: hang up.
                return Err(NbdError::Protocol(format!("write of {} bytes", req.length)));
            }
            CMD_WRITE => {
                // Read into spare capacity: no zeroing of up to 32 MiB first.
                data.reserve_exact(req.length as usize);
                (&mut *rd)
                    .take(req.length as u64)
                    .read_to_end(&mut data)
                    .await?;
                if data.len() != req.length as usize {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
            }
            _ => {}
        }
        let op = Op { vol, export, req };
        if let Some(reply) = op.start(permit, replies, data) {
            if replies.send(reply).await.is_err() {
                return Ok(()); // the writer stopped: the client is gone
            }
        }
    }
}

fn failure(errno: u32, req: Request) -> Reply {
    (simple_reply(errno, req.cookie), Vec::new())
}

/// One request of a connection, read whole (a WRITE's data included).
struct Op<'a> {
    vol: &'a Volume,
    export: &'a Export,
    req: Request,
}

impl Op<'_> {
    /// Starts the request; returns the reply when it is answered at once.
    fn start(
        self,
        permit: tokio::sync::OwnedSemaphorePermit,
        replies: &mpsc::Sender<Reply>,
        data: Vec<u8>,
    ) -> Option<Reply> {
        let Op { vol, export, req } = self;
        let in_range = req
            .offset
            .checked_add(req.length as u64)
            .is_some_and(|end| end <= export.size);
        let (vol, fid) = (vol.clone(), export.fid);
        match req.command {
            CMD_READ if req.length > REQUEST_BYTES_MAX => Some(failure(EOVERFLOW, req)),
            CMD_WRITE if !in_range => Some(failure(ENOSPC, req)),
            CMD_WRITE => {
                spawn_op(permit, replies, req, write_op(vol, fid, req, data));
                None
            }
            CMD_READ if !in_range => Some(failure(EINVAL, req)),
            CMD_READ => {
                spawn_op(permit, replies, req, read_op(vol, fid, req));
                None
            }
            CMD_FLUSH => {
                spawn_op(permit, replies, req, async move {
                    vol.fsync(fid).await.map(|()| Vec::new())
                });
                None
            }
            // Trimming is advisory: the bytes stay as they were, which the protocol allows.
            CMD_TRIM if in_range => Some((simple_reply(0, req.cookie), Vec::new())),
            CMD_WRITE_ZEROES if in_range => {
                spawn_op(permit, replies, req, zero_op(vol, fid, req));
                None
            }
            CMD_TRIM | CMD_WRITE_ZEROES => Some(failure(ENOSPC, req)),
            _ => Some(failure(EINVAL, req)),
        }
    }
}

/// A simple reply's header and the data that follows it (a READ's; empty otherwise).
type Reply = ([u8; 16], Vec<u8>);

/// Runs one request and queues its reply (header, plus data for a READ).
fn spawn_op<F>(
    permit: tokio::sync::OwnedSemaphorePermit,
    replies: &mpsc::Sender<Reply>,
    req: Request,
    op: F,
) where
    F: std::future::Future<Output = Result<Vec<u8>, ClientError>> + Send + 'static,
{
    let replies = replies.clone();
    tokio::spawn(async move {
        let reply = match op.await {
            Ok(data) => (simple_reply(0, req.cookie), data),
            Err(e) => {
                tracing::warn!(
                    command = req.command,
                    offset = req.offset,
                    "nbd request failed: {e}"
                );
                (simple_reply(errno_of(&e), req.cookie), Vec::new())
            }
        };
        let _ = replies.send(reply).await;
        drop(permit);
    });
}

async fn read_op(vol: Volume, fid: FileId, req: Request) -> Result<Vec<u8>, ClientError> {
    if req.length <= NATIVE_IO_BYTES_MAX {
        // One native read: its buffer is the reply's data, no copy.
        let mut got = vol.read(fid, req.offset, req.length).await?;
        got.resize(req.length as usize, 0); // past the file's end: zeros
        return Ok(got);
    }
    let mut out = Vec::with_capacity(req.length as usize);
    let end = req.offset + req.length as u64;
    let mut at = req.offset;
    while at < end {
        let len = (end - at).min(NATIVE_IO_BYTES_MAX as u64) as u32;
        let got = vol.read(fid, at, len).await?;
        let short = got.len() < len as usize;
        out.extend_from_slice(&got);
        if short {
            break; // past the file's end: zeros, as a sparse image reads
        }
        at += len as u64;
    }
    out.resize(req.length as usize, 0);
    Ok(out)
}

async fn write_op(
    vol: Volume,
    fid: FileId,
    req: Request,
    data: Vec<u8>,
) -> Result<Vec<u8>, ClientError> {
    let fua = req.flags & CMD_FLAG_FUA != 0;
    for (i, chunk) in data.chunks(NATIVE_IO_BYTES_MAX as usize).enumerate() {
        let at = req.offset + i as u64 * NATIVE_IO_BYTES_MAX as u64;
        vol.write(fid, at, chunk, fua).await?;
    }
    Ok(Vec::new())
}

async fn zero_op(vol: Volume, fid: FileId, req: Request) -> Result<Vec<u8>, ClientError> {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES as usize];
    let end = req.offset + req.length as u64;
    let mut at = req.offset;
    while at < end {
        let len = (end - at).min(ZERO_CHUNK_BYTES as u64) as usize;
        vol.write(fid, at, &zeros[..len], false).await?;
        at += len as u64;
    }
    if req.flags & CMD_FLAG_FUA != 0 {
        vol.fsync(fid).await?;
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_requests_are_parsed_strictly() {
        let mut d = Vec::new();
        d.extend_from_slice(&6u32.to_be_bytes());
        d.extend_from_slice(b"vm.img");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        assert_eq!(
            parse_info_request(&d),
            Some(("vm.img".to_string(), vec![INFO_BLOCK_SIZE, INFO_EXPORT]))
        );
        for cut in 0..d.len() {
            assert!(parse_info_request(&d[..cut]).is_none(), "cut at {cut}");
        }
        let mut long = d.clone();
        long.push(0);
        assert!(parse_info_request(&long).is_none(), "trailing byte");
        let mut huge = d.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_info_request(&huge).is_none());
    }
}
