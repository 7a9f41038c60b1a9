//! The NFSv3 procedures our own layer answers instead of nfsserve: READ and WRITE (the data
//! path, straight to the native client), WRITE's unstable replies and COMMIT (which nfsserve
//! lacks), FSSTAT (real numbers from the bricks), RMDIR (nfsserve treats it as REMOVE), and
//! MKNOD and LINK (NOTSUPP rather than an RPC-level PROC_UNAVAIL).

use crate::fs::{name_of, status_of, status_of_handle_op, BrickFs, IO_BYTES_MAX};
use crate::rpc::{accepted, accepted_open, finish, Xdr, ACCEPT_GARBAGE_ARGS, ACCEPT_SUCCESS};
use nfsserve::nfs::{nfsstat3, post_op_attr, wcc_data};
use nfsserve::xdr::XDR;

pub const PROC_READ: u32 = 6;
pub const PROC_WRITE: u32 = 7;
pub const PROC_MKNOD: u32 = 11;
pub const PROC_RMDIR: u32 = 13;
pub const PROC_LINK: u32 = 15;
pub const PROC_FSSTAT: u32 = 18;
pub const PROC_COMMIT: u32 = 21;

/// Whether our layer answers this NFSv3 procedure.
pub fn is_ours(proc_: u32) -> bool {
    matches!(
        proc_,
        PROC_READ | PROC_WRITE | PROC_MKNOD | PROC_RMDIR | PROC_LINK | PROC_FSSTAT | PROC_COMMIT
    )
}

const UNSTABLE: u32 = 0;
const FILE_SYNC: u32 = 2;

/// Runs one of our procedures; returns the framed reply.
pub async fn run(fs: &BrickFs, xid: u32, proc_: u32, record: &[u8], at: usize) -> Vec<u8> {
    let x = Xdr::new(record, at);
    let reply = match proc_ {
        PROC_READ => return read(fs, xid, x).await.unwrap_or_else(|| garbage(xid)),
        PROC_WRITE => write(fs, x).await,
        PROC_COMMIT => commit(fs, x).await,
        PROC_FSSTAT => fsstat(fs, x).await,
        PROC_RMDIR => rmdir(fs, x).await,
        PROC_MKNOD => Some(Reply::Fail(nfsstat3::NFS3ERR_NOTSUPP, Tail::Wcc)),
        PROC_LINK => Some(Reply::Fail(nfsstat3::NFS3ERR_NOTSUPP, Tail::AttrWcc)),
        _ => None,
    };
    match reply {
        None => garbage(xid),
        Some(r) => r.encode(xid),
    }
}

fn garbage(xid: u32) -> Vec<u8> {
    accepted(xid, ACCEPT_GARBAGE_ARGS)
}

/// What follows the status in a failed result (RFC 1813's `resfail` arms).
enum Tail {
    Attr,
    Wcc,
    AttrWcc,
}

enum Reply {
    Ok(Vec<u8>),
    Fail(nfsstat3, Tail),
}

impl Reply {
    fn encode(self, xid: u32) -> Vec<u8> {
        let mut out = accepted_open(xid, ACCEPT_SUCCESS);
        // Writing into a Vec cannot fail.
        match self {
            Reply::Ok(body) => {
                let _ = nfsstat3::NFS3_OK.serialize(&mut out);
                out.extend_from_slice(&body);
            }
            Reply::Fail(status, tail) => {
                let _ = status.serialize(&mut out);
                match tail {
                    Tail::Attr => {
                        let _ = post_op_attr::Void.serialize(&mut out);
                    }
                    Tail::Wcc => {
                        let _ = wcc_data::default().serialize(&mut out);
                    }
                    Tail::AttrWcc => {
                        let _ = post_op_attr::Void.serialize(&mut out);
                        let _ = wcc_data::default().serialize(&mut out);
                    }
                }
            }
        }
        finish(out)
    }
}

fn put<T: XDR>(out: &mut Vec<u8>, v: &T) {
    let _ = v.serialize(out);
}

/// READ builds its reply around the data with a single copy of it.
async fn read(fs: &BrickFs, xid: u32, mut x: Xdr<'_>) -> Option<Vec<u8>> {
    let fh = x.fh()?;
    let offset = x.u64()?;
    let count = x.u32()?.min(IO_BYTES_MAX);
    let fid = match fs.fid_of(fh) {
        Ok(f) => f,
        Err(s) => return Some(Reply::Fail(s, Tail::Attr).encode(xid)),
    };
    Some(match fs.readahead.read(&fs.vol, fid, offset, count).await {
        Ok(data) => {
            let mut out = accepted_open(xid, ACCEPT_SUCCESS);
            out.reserve(data.len() + 24);
            put(&mut out, &nfsstat3::NFS3_OK);
            put(&mut out, &post_op_attr::Void);
            put(&mut out, &(data.len() as u32));
            put(&mut out, &(data.len() < count as usize));
            put(&mut out, &(data.len() as u32));
            out.extend_from_slice(&data);
            out.resize(out.len() + (4 - data.len() % 4) % 4, 0);
            finish(out)
        }
        Err(e) => Reply::Fail(status_of_handle_op(&e), Tail::Attr).encode(xid),
    })
}

async fn write(fs: &BrickFs, mut x: Xdr<'_>) -> Option<Reply> {
    let fh = x.fh()?;
    let offset = x.u64()?;
    let count = x.u32()?;
    let stable = x.u32()?;
    let data = x.opaque(IO_BYTES_MAX as usize)?;
    if stable > FILE_SYNC || data.len() != count as usize {
        return None;
    }
    let fid = match fs.fid_of(fh) {
        Ok(f) => f,
        Err(s) => return Some(Reply::Fail(s, Tail::Wcc)),
    };
    fs.readahead.invalidate(fid);
    // Sampled before the write: a server restart after this changes the COMMIT's verifier.
    let verifier = fs.write_verifier();
    let durable = stable != UNSTABLE;
    Some(match fs.vol.write(fid, offset, data, durable).await {
        Ok(written) => {
            let mut body = Vec::with_capacity(40);
            put(&mut body, &wcc_data::default());
            put(&mut body, &written);
            put(&mut body, &if durable { FILE_SYNC } else { UNSTABLE });
            body.extend_from_slice(&verifier);
            Reply::Ok(body)
        }
        Err(e) => Reply::Fail(status_of_handle_op(&e), Tail::Wcc),
    })
}

async fn commit(fs: &BrickFs, mut x: Xdr<'_>) -> Option<Reply> {
    let fh = x.fh()?;
    x.u64()?;
    x.u32()?;
    let fid = match fs.fid_of(fh) {
        Ok(f) => f,
        Err(s) => return Some(Reply::Fail(s, Tail::Wcc)),
    };
    fs.readahead.invalidate(fid);
    Some(match fs.vol.fsync(fid).await {
        Ok(()) => {
            let mut body = Vec::with_capacity(40);
            put(&mut body, &wcc_data::default());
            // Sampled after the sync: it covers every write acknowledged with the same value.
            body.extend_from_slice(&fs.write_verifier());
            Reply::Ok(body)
        }
        Err(e) => Reply::Fail(status_of_handle_op(&e), Tail::Wcc),
    })
}

async fn fsstat(fs: &BrickFs, mut x: Xdr<'_>) -> Option<Reply> {
    let fh = x.fh()?;
    let fid = match fs.fid_of(fh) {
        Ok(f) => f,
        Err(s) => return Some(Reply::Fail(s, Tail::Attr)),
    };
    let attr = fs.post_op(fid).await;
    Some(match fs.vol.statfs().await {
        Ok(st) => {
            let mut body = Vec::with_capacity(160);
            put(&mut body, &attr);
            for v in [
                st.total_bytes,
                st.free_bytes,
                st.avail_bytes,
                st.total_files,
                st.free_files,
                st.free_files,
            ] {
                put(&mut body, &v);
            }
            put(&mut body, &0u32); // invarsec: the numbers change at any time
            Reply::Ok(body)
        }
        Err(e) => Reply::Fail(status_of_handle_op(&e), Tail::Attr),
    })
}

async fn rmdir(fs: &BrickFs, mut x: Xdr<'_>) -> Option<Reply> {
    let fh = x.fh()?;
    let name = x.name()?;
    let dir = match fs.fid_of(fh) {
        Ok(f) => f,
        Err(s) => return Some(Reply::Fail(s, Tail::Wcc)),
    };
    let name = match name_of(name) {
        Ok(n) => n,
        Err(s) => return Some(Reply::Fail(s, Tail::Wcc)),
    };
    Some(match fs.vol.rmdir(dir, name).await {
        Ok(()) => {
            let mut body = Vec::with_capacity(120);
            let after = fs.post_op(dir).await;
            put(
                &mut body,
                &wcc_data {
                    before: Default::default(),
                    after,
                },
            );
            Reply::Ok(body)
        }
        Err(e) => Reply::Fail(status_of(&e), Tail::Wcc),
    })
}
