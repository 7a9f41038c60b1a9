//! ONC RPC (RFC 5531) over TCP record marking: reading records with limits, decoding call
//! headers, building replies, and checking the arguments of every procedure we hand to
//! nfsserve before it sees them (its decoder trusts lengths from the wire).

use tokio::io::{AsyncRead, AsyncReadExt};

pub const PROG_PORTMAP: u32 = 100_000;
pub const PROG_NFS: u32 = 100_003;
pub const PROG_MOUNT: u32 = 100_005;
pub const NFS_V3: u32 = 3;
pub const MOUNT_V3: u32 = 3;

/// The largest call or reply record: a 1 MiB WRITE or READ plus headers.
pub const RECORD_BYTES_MAX: usize = (1 << 20) + 64 * 1024;
/// Fragments one record may be split into.
const FRAGMENTS_MAX: usize = 1024;
/// RFC 5531: credential and verifier bodies are at most 400 bytes.
const AUTH_BODY_BYTES_MAX: usize = 400;
pub const FH_BYTES_MAX: usize = 64;
/// Names longer than 255 bytes are answered NAMETOOLONG; longer than this is garbage.
const NAME_WIRE_BYTES_MAX: usize = 1024;
const PATH_BYTES_MAX: usize = 1024;
const AUTH_UNIX_GIDS_MAX: u32 = 16;
const MACHINE_NAME_BYTES_MAX: usize = 255;
/// READDIR(PLUS) byte counts are clamped to this, which bounds nfsserve's replies.
pub const DIR_REPLY_BYTES_MAX: u32 = 1 << 20;

pub const ACCEPT_SUCCESS: u32 = 0;
pub const ACCEPT_PROG_UNAVAIL: u32 = 1;
pub const ACCEPT_PROG_MISMATCH: u32 = 2;
pub const ACCEPT_PROC_UNAVAIL: u32 = 3;
pub const ACCEPT_GARBAGE_ARGS: u32 = 4;
pub const ACCEPT_SYSTEM_ERR: u32 = 5;

/// Reads one record (all its fragments). `Ok(None)` at a clean end of stream.
pub async fn read_record<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut record = Vec::new();
    for fragment in 0..FRAGMENTS_MAX {
        let mut head = [0u8; 4];
        match r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && fragment == 0 => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
        let head = u32::from_be_bytes(head);
        let len = (head & 0x7fff_ffff) as usize;
        if record.len() + len > limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "record of more than {limit} bytes ({} + {len})",
                    record.len()
                ),
            ));
        }
        // Read into spare capacity: no zeroing of up to 1 MiB per WRITE first.
        let start = record.len();
        record.reserve_exact(len);
        (&mut *r).take(len as u64).read_to_end(&mut record).await?;
        if record.len() != start + len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if head & 0x8000_0000 != 0 {
            return Ok(Some(record));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("record of more than {FRAGMENTS_MAX} fragments"),
    ))
}

/// A record as one last fragment: its 4-byte mark followed by the body.
pub fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(0x8000_0000 | body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Bounds-checked XDR reader; `None` means the bytes do not decode.
pub struct Xdr<'a> {
    buf: &'a [u8],
    pub pos: usize,
}

impl<'a> Xdr<'a> {
    pub fn new(buf: &'a [u8], pos: usize) -> Xdr<'a> {
        Xdr { buf, pos }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    pub fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_be_bytes(a))
    }

    pub fn bool(&mut self) -> Option<bool> {
        match self.u32()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    /// Fixed-length opaque data (padded to 4 bytes).
    pub fn fixed(&mut self, n: usize) -> Option<&'a [u8]> {
        let data = self.take(n)?;
        self.take((4 - n % 4) % 4)?;
        Some(data)
    }

    /// Variable-length opaque data of at most `max` bytes.
    pub fn opaque(&mut self, max: usize) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > max {
            return None;
        }
        self.fixed(n)
    }

    pub fn fh(&mut self) -> Option<&'a [u8]> {
        self.opaque(FH_BYTES_MAX)
    }

    pub fn name(&mut self) -> Option<&'a [u8]> {
        self.opaque(NAME_WIRE_BYTES_MAX)
    }

    fn time_how(&mut self) -> Option<()> {
        match self.u32()? {
            0 | 1 => Some(()),
            2 => self.take(8).map(|_| ()),
            _ => None,
        }
    }

    pub fn sattr3(&mut self) -> Option<()> {
        for width in [4, 4, 4, 8] {
            if self.bool()? {
                self.take(width)?;
            }
        }
        self.time_how()?;
        self.time_how()
    }

    pub fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }
}

/// The parts of a call header the gateway routes by.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    /// Where the procedure's arguments start in the record.
    pub args_at: usize,
}

pub enum BadCall {
    /// Not even an xid and a CALL: the stream is not RPC; close it.
    Unreadable,
    /// Answer this (already framed) and go on.
    Answer(Vec<u8>),
}

pub fn parse_call(record: &[u8]) -> Result<Call, BadCall> {
    let mut x = Xdr::new(record, 0);
    let (Some(xid), Some(0)) = (x.u32(), x.u32()) else {
        return Err(BadCall::Unreadable);
    };
    let Some(rpcvers) = x.u32() else {
        return Err(BadCall::Answer(accepted(xid, ACCEPT_GARBAGE_ARGS)));
    };
    if rpcvers != 2 {
        return Err(BadCall::Answer(rpc_mismatch(xid)));
    }
    let header = (|| {
        let prog = x.u32()?;
        let vers = x.u32()?;
        let proc_ = x.u32()?;
        let cred_flavor = x.u32()?;
        let cred = x.opaque(AUTH_BODY_BYTES_MAX)?;
        x.u32()?;
        x.opaque(AUTH_BODY_BYTES_MAX)?;
        Some((prog, vers, proc_, cred_flavor, cred))
    })();
    let Some((prog, vers, proc_, cred_flavor, cred)) = header else {
        return Err(BadCall::Answer(accepted(xid, ACCEPT_GARBAGE_ARGS)));
    };
    const AUTH_UNIX: u32 = 1;
    if cred_flavor == AUTH_UNIX && !auth_unix_ok(cred) {
        return Err(BadCall::Answer(auth_error(xid)));
    }
    Ok(Call {
        xid,
        prog,
        vers,
        proc_,
        args_at: x.pos,
    })
}

/// AUTH_UNIX body: stamp, machine name, uid, gid, up to 16 groups, nothing after.
fn auth_unix_ok(body: &[u8]) -> bool {
    let mut x = Xdr::new(body, 0);
    let ok = (|| {
        x.u32()?;
        x.opaque(MACHINE_NAME_BYTES_MAX)?;
        x.u32()?;
        x.u32()?;
        let n = x.u32()?;
        if n > AUTH_UNIX_GIDS_MAX {
            return None;
        }
        for _ in 0..n {
            x.u32()?;
        }
        Some(())
    })();
    ok.is_some() && x.rest().is_empty()
}

fn reply_head(xid: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0u8; 4]); // record mark, set by `finish`
    out.extend_from_slice(&xid.to_be_bytes());
    out.extend_from_slice(&1u32.to_be_bytes()); // REPLY
}

/// Sets the record mark of a reply built by these helpers.
pub fn finish(mut out: Vec<u8>) -> Vec<u8> {
    let len = (out.len() - 4) as u32;
    out[0..4].copy_from_slice(&(0x8000_0000 | len).to_be_bytes());
    out
}

/// An accepted reply with `stat`; for SUCCESS the caller appends the results and `finish`es.
pub fn accepted_open(xid: u32, stat: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    reply_head(xid, &mut out);
    for word in [0u32, 0, 0, stat] {
        // MSG_ACCEPTED, verifier AUTH_NONE with an empty body, accept_stat
        out.extend_from_slice(&word.to_be_bytes());
    }
    out
}

pub fn accepted(xid: u32, stat: u32) -> Vec<u8> {
    finish(accepted_open(xid, stat))
}

pub fn prog_mismatch(xid: u32, low: u32, high: u32) -> Vec<u8> {
    let mut out = accepted_open(xid, ACCEPT_PROG_MISMATCH);
    out.extend_from_slice(&low.to_be_bytes());
    out.extend_from_slice(&high.to_be_bytes());
    finish(out)
}

fn rpc_mismatch(xid: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    reply_head(xid, &mut out);
    for word in [1u32, 0, 2, 2] {
        // MSG_DENIED, RPC_MISMATCH, low 2, high 2
        out.extend_from_slice(&word.to_be_bytes());
    }
    finish(out)
}

fn auth_error(xid: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    reply_head(xid, &mut out);
    for word in [1u32, 1, 1] {
        // MSG_DENIED, AUTH_ERROR, AUTH_BADCRED
        out.extend_from_slice(&word.to_be_bytes());
    }
    finish(out)
}

/// Checks the arguments of an NFSv3 procedure that nfsserve runs; clamps READDIR(PLUS)
/// counts in place. `None`: garbage.
pub fn check_nfs_args(proc_: u32, record: &mut [u8], at: usize) -> Option<()> {
    let mut x = Xdr::new(record, at);
    match proc_ {
        0 => {}
        1 | 5 | 19 | 20 => {
            x.fh()?;
        }
        2 => {
            x.fh()?;
            x.sattr3()?;
            if x.bool()? {
                x.fixed(8)?;
            }
        }
        3 | 12 => {
            x.fh()?;
            x.name()?;
        }
        4 => {
            x.fh()?;
            x.u32()?;
        }
        8 => {
            x.fh()?;
            x.name()?;
            match x.u32()? {
                0 | 1 => x.sattr3()?,
                2 => {
                    x.fixed(8)?;
                }
                _ => return None,
            }
        }
        9 => {
            x.fh()?;
            x.name()?;
            x.sattr3()?;
        }
        10 => {
            x.fh()?;
            x.name()?;
            x.sattr3()?;
            x.opaque(PATH_BYTES_MAX)?;
        }
        14 => {
            x.fh()?;
            x.name()?;
            x.fh()?;
            x.name()?;
        }
        16 | 17 => {
            x.fh()?;
            x.u64()?;
            x.fixed(8)?;
            let counts = if proc_ == 16 { 1 } else { 2 };
            let start = x.pos;
            for _ in 0..counts {
                x.u32()?;
            }
            clamp_counts(&mut record[start..start + 4 * counts]);
        }
        _ => return None,
    }
    Some(())
}

fn clamp_counts(words: &mut [u8]) {
    for w in words.chunks_exact_mut(4) {
        let v = u32::from_be_bytes([w[0], w[1], w[2], w[3]]);
        w.copy_from_slice(&v.min(DIR_REPLY_BYTES_MAX).to_be_bytes());
    }
}

/// READDIRPLUS's `maxcount`, which nfsserve needs to be at least this large.
pub fn readdirplus_maxcount(record: &[u8], at: usize) -> Option<u32> {
    let mut x = Xdr::new(record, at);
    x.fh()?;
    x.u64()?;
    x.fixed(8)?;
    x.u32()?;
    x.u32()
}

/// Checks MOUNT v3 arguments: MNT and UMNT carry a path, the rest nothing.
pub fn check_mount_args(proc_: u32, record: &[u8], at: usize) -> Option<()> {
    let mut x = Xdr::new(record, at);
    match proc_ {
        0 | 2 | 4 | 5 => Some(()),
        1 | 3 => x.opaque(PATH_BYTES_MAX).map(|_| ()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(prog: u32, vers: u32, proc_: u32, cred: &[u8], args: &[u8]) -> Vec<u8> {
        let mut r = Vec::new();
        for w in [7u32, 0, 2, prog, vers, proc_, 1, cred.len() as u32] {
            r.extend_from_slice(&w.to_be_bytes());
        }
        r.extend_from_slice(cred);
        r.resize(r.len() + (4 - cred.len() % 4) % 4, 0);
        r.extend_from_slice(&[0u8; 8]);
        r.extend_from_slice(args);
        r
    }

    fn auth_unix(gids: u32) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [1u32, 4] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        b.extend_from_slice(b"host");
        for w in [0u32, 0, gids] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        for _ in 0..gids.min(20) {
            b.extend_from_slice(&0u32.to_be_bytes());
        }
        b
    }

    #[test]
    fn call_headers_decode_and_bad_ones_are_answered() {
        let ok = call(PROG_NFS, 3, 1, &auth_unix(2), &[0u8; 4]);
        let c = parse_call(&ok).ok().expect("decodes");
        assert_eq!((c.xid, c.prog, c.vers, c.proc_), (7, PROG_NFS, 3, 1));
        assert_eq!(c.args_at, ok.len() - 4);
        // Too many groups claimed: an auth error, not an allocation of the claimed size.
        let bad = call(PROG_NFS, 3, 1, &auth_unix(1 << 30), &[]);
        assert!(matches!(parse_call(&bad), Err(BadCall::Answer(_))));
        // Truncated header: GARBAGE_ARGS for that xid.
        let cut = &ok[..16];
        match parse_call(cut) {
            Err(BadCall::Answer(reply)) => {
                assert_eq!(&reply[4..8], &7u32.to_be_bytes());
                assert_eq!(&reply[24..28], &ACCEPT_GARBAGE_ARGS.to_be_bytes());
            }
            _ => panic!("a truncated header must be answered"),
        }
        assert!(matches!(parse_call(&[0, 0]), Err(BadCall::Unreadable)));
    }

    #[test]
    fn argument_checks_refuse_oversized_lengths_and_clamp_counts() {
        let mut lookup = Vec::new();
        lookup.extend_from_slice(&u32::MAX.to_be_bytes()); // handle length 4 GiB
        assert!(check_nfs_args(3, &mut lookup, 0).is_none());
        let mut readdir = Vec::new();
        readdir.extend_from_slice(&4u32.to_be_bytes());
        readdir.extend_from_slice(&[1, 2, 3, 4]);
        readdir.extend_from_slice(&[0u8; 16]); // cookie, verifier
        readdir.extend_from_slice(&u32::MAX.to_be_bytes());
        readdir.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(check_nfs_args(17, &mut readdir, 0).is_some());
        assert_eq!(readdirplus_maxcount(&readdir, 0), Some(DIR_REPLY_BYTES_MAX));
        assert!(check_nfs_args(99, &mut readdir, 0).is_none());
    }
}
