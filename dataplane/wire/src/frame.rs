//! Frame layer: a fixed 28-byte header and a bounded payload, crc32c over both.
//! The byte-level layout is specified in docs/wire.md; keep the two in step.

use brick_tuning::FRAME_PAYLOAD_BYTES_MAX;

/// "BRKD" in ASCII, read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"BRKD");
pub const HEADER_BYTES: usize = 28;
pub const VERSION_MIN: u8 = 1;
pub const VERSION_MAX: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Request = 0,
    Response = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub kind: Kind,
    pub opcode: u16,
    pub request_id: u64,
    pub payload_len: u32,
    /// 0 in requests and successful responses, an `ErrorCode` otherwise.
    pub status: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum FrameError {
    #[error("bad magic 0x{0:08x}: not a brickd peer")]
    BadMagic(u32),
    #[error("unsupported protocol version {0} (this build speaks {VERSION_MIN}..={VERSION_MAX})")]
    BadVersion(u8),
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("frame payload of {0} bytes exceeds the limit of {FRAME_PAYLOAD_BYTES_MAX}")]
    TooLarge(u32),
    #[error("crc32c mismatch: frame says 0x{expected:08x}, bytes give 0x{actual:08x}")]
    BadCrc { expected: u32, actual: u32 },
}

impl Header {
    /// A header of the version this build sends.
    pub fn new(kind: Kind, opcode: u16, request_id: u64, payload_len: u32, status: u32) -> Header {
        Header {
            version: VERSION_MAX,
            kind,
            opcode,
            request_id,
            payload_len,
            status,
        }
    }

    /// Parses and validates a header. Only the crc needs the payload, see `verify_crc`.
    pub fn parse(bytes: &[u8; HEADER_BYTES]) -> Result<Header, FrameError> {
        let magic = u32::from_le_bytes(le4(bytes, 0));
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = bytes[4];
        if !(VERSION_MIN..=VERSION_MAX).contains(&version) {
            return Err(FrameError::BadVersion(version));
        }
        let kind = match bytes[5] {
            0 => Kind::Request,
            1 => Kind::Response,
            other => return Err(FrameError::BadKind(other)),
        };
        let payload_len = u32::from_le_bytes(le4(bytes, 16));
        if payload_len > FRAME_PAYLOAD_BYTES_MAX {
            return Err(FrameError::TooLarge(payload_len));
        }
        Ok(Header {
            version,
            kind,
            opcode: u16::from_le_bytes([bytes[6], bytes[7]]),
            request_id: u64::from_le_bytes(le8(bytes, 8)),
            payload_len,
            status: u32::from_le_bytes(le4(bytes, 20)),
        })
    }

    fn write_fields(&self, out: &mut [u8; HEADER_BYTES]) {
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4] = self.version;
        out[5] = self.kind as u8;
        out[6..8].copy_from_slice(&self.opcode.to_le_bytes());
        out[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        out[16..20].copy_from_slice(&self.payload_len.to_le_bytes());
        out[20..24].copy_from_slice(&self.status.to_le_bytes());
    }

    /// The header's first 24 bytes (everything but the crc), for senders that compute the crc
    /// over a payload held in several pieces.
    pub fn encode_fields(&self) -> [u8; 24] {
        let mut out = [0u8; HEADER_BYTES];
        self.write_fields(&mut out);
        let mut fields = [0u8; 24];
        fields.copy_from_slice(&out[..24]);
        fields
    }

    /// Encodes the header for `payload`, computing the crc over header fields and payload.
    pub fn encode(&self, payload: &[u8]) -> [u8; HEADER_BYTES] {
        assert_eq!(self.payload_len as usize, payload.len());
        assert!(self.payload_len <= FRAME_PAYLOAD_BYTES_MAX);
        let mut out = [0u8; HEADER_BYTES];
        self.write_fields(&mut out);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out[0..24]), payload);
        out[24..28].copy_from_slice(&crc.to_le_bytes());
        out
    }
}

/// Checks the crc stored in `header_bytes` against the header fields and `payload`.
pub fn verify_crc(header_bytes: &[u8; HEADER_BYTES], payload: &[u8]) -> Result<(), FrameError> {
    let expected = u32::from_le_bytes(le4(header_bytes, 24));
    let actual = crc32c::crc32c_append(crc32c::crc32c(&header_bytes[0..24]), payload);
    if expected != actual {
        return Err(FrameError::BadCrc { expected, actual });
    }
    Ok(())
}

/// `verify_crc` for a payload held in several pieces, in order.
pub fn verify_crc_parts(
    header_bytes: &[u8; HEADER_BYTES],
    parts: &[&[u8]],
) -> Result<(), FrameError> {
    let expected = u32::from_le_bytes(le4(header_bytes, 24));
    let actual = parts
        .iter()
        .fold(crc32c::crc32c(&header_bytes[0..24]), |crc, part| {
            crc32c::crc32c_append(crc, part)
        });
    if expected != actual {
        return Err(FrameError::BadCrc { expected, actual });
    }
    Ok(())
}

/// Appends one whole frame (header + payload) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, header: Header, payload: &[u8]) {
    out.extend_from_slice(&header.encode(payload));
    out.extend_from_slice(payload);
}

fn le4(b: &[u8], at: usize) -> [u8; 4] {
    [b[at], b[at + 1], b[at + 2], b[at + 3]]
}

fn le8(b: &[u8], at: usize) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&b[at..at + 8]);
    out
}

/// A decoded frame that owns its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub payload: Vec<u8>,
}

/// Incremental decoder over a byte buffer, for callers that read into a growable buffer.
/// Returns `Ok(None)` until a whole frame is buffered; never allocates beyond the frame limit.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < HEADER_BYTES {
        return Ok(None);
    }
    let mut header_bytes = [0u8; HEADER_BYTES];
    header_bytes.copy_from_slice(&buf[..HEADER_BYTES]);
    let header = Header::parse(&header_bytes)?;
    let total = HEADER_BYTES + header.payload_len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let payload = &buf[HEADER_BYTES..total];
    verify_crc(&header_bytes, payload)?;
    Ok(Some((
        Frame {
            header,
            payload: payload.to_vec(),
        },
        total,
    )))
}
