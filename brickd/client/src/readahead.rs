//! Read-ahead for sequential readers, for the gateways. NFS and SMB clients such as libnfs
//! (`nfs-cp`) and the SMB servers' one-request-at-a-time handling read a file one piece at a
//! time, so each read would wait a full round trip to the bricks. Once a file is read
//! sequentially, the next `DEPTH` pieces of the same size are fetched in the background and
//! the following reads are answered from them.
//!
//! Consistency: a write, size or attribute change through the same gateway drops the file's
//! pieces (`invalidate`); a piece older than `FRESH_MS` is not used, so a change made through
//! another path is seen within that time (NFS clients already allow more in their attribute
//! caches; SMB clients without a lease have no cache to compare with).

use crate::{ClientResult, Volume};
use brick_wire::FileId;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Pieces fetched ahead per file.
const DEPTH: usize = 8;
/// Files followed at once; the least recently read is forgotten first. With 1 MiB READs this
/// bounds the memory held to `DEPTH * STREAMS_MAX` MiB (64 MiB).
const STREAMS_MAX: usize = 8;
/// A piece fetched longer ago than this is read again.
const FRESH_MS: u64 = 500;

/// Where a piece fetched ahead arrives. The fetching task hands over the bytes themselves (a
/// shared cell would have to be copied whenever the task still held it at the reader's turn).
type Arrival = oneshot::Receiver<ClientResult<Vec<u8>>>;
type Sender = oneshot::Sender<ClientResult<Vec<u8>>>;

struct Piece {
    offset: u64,
    len: u32,
    arrival: Arrival,
    fetched_at: Instant,
}

struct Stream {
    /// Where the next sequential READ starts, and its size.
    next: u64,
    len: u32,
    pieces: VecDeque<Piece>,
    touched: Instant,
    /// A read came back short: the end of the file; nothing more is fetched.
    at_end: bool,
}

#[derive(Default)]
pub struct ReadAhead {
    streams: Mutex<HashMap<FileId, Stream>>,
}

impl ReadAhead {
    pub async fn read(
        &self,
        vol: &Volume,
        fid: FileId,
        offset: u64,
        len: u32,
    ) -> ClientResult<Vec<u8>> {
        let (hit, fetch) = self.plan(fid, offset, len);
        for (off, done) in fetch {
            let vol = vol.clone();
            tokio::spawn(async move {
                let _ = done.send(vol.read(fid, off, len).await);
            });
        }
        let data = match hit {
            Some(arrival) => match arrival.await {
                Ok(fetched) => fetched,
                // The fetching task ended without an answer: read it now.
                Err(_) => vol.read(fid, offset, len).await,
            },
            None => vol.read(fid, offset, len).await,
        };
        if let Ok(d) = &data {
            if d.len() < len as usize {
                self.reached_end(fid);
            }
        }
        data
    }

    /// Forgets what was fetched for `fid` (it is being changed).
    pub fn invalidate(&self, fid: FileId) {
        self.lock().remove(&fid);
    }

    /// The piece answering this read, if fetched ahead, and the pieces to fetch now.
    fn plan(&self, fid: FileId, offset: u64, len: u32) -> (Option<Arrival>, Vec<(u64, Sender)>) {
        let now = Instant::now();
        let mut streams = self.lock();
        if !streams.contains_key(&fid) && streams.len() >= STREAMS_MAX {
            let oldest = streams
                .iter()
                .min_by_key(|(_, s)| s.touched)
                .map(|(f, _)| *f);
            if let Some(f) = oldest {
                streams.remove(&f);
            }
        }
        let s = streams.entry(fid).or_insert_with(|| Stream {
            next: u64::MAX,
            len,
            pieces: VecDeque::new(),
            touched: now,
            at_end: false,
        });
        let sequential = s.next == offset && s.len == len;
        s.touched = now;
        s.next = offset.saturating_add(len as u64);
        s.len = len;
        if !sequential {
            s.pieces.clear();
            s.at_end = false;
            return (None, Vec::new());
        }
        while s.pieces.front().is_some_and(|p| p.offset < offset) {
            s.pieces.pop_front();
        }
        let fresh = Duration::from_millis(FRESH_MS);
        let hit = match s.pieces.front() {
            Some(p) if p.offset == offset && p.len == len => {
                let p = s.pieces.pop_front();
                p.filter(|p| now.duration_since(p.fetched_at) < fresh)
                    .map(|p| p.arrival)
            }
            _ => None,
        };
        let mut fetch = Vec::new();
        if !s.at_end {
            let mut at = s
                .pieces
                .back()
                .map_or(s.next, |p| p.offset.saturating_add(len as u64));
            while s.pieces.len() < DEPTH {
                let (done, arrival) = oneshot::channel();
                s.pieces.push_back(Piece {
                    offset: at,
                    len,
                    arrival,
                    fetched_at: now,
                });
                fetch.push((at, done));
                at = at.saturating_add(len as u64);
            }
        }
        (hit, fetch)
    }

    fn reached_end(&self, fid: FileId) {
        if let Some(s) = self.lock().get_mut(&fid) {
            s.at_end = true;
            s.pieces.clear();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FileId, Stream>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}
