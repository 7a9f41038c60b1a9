//! The brickd native protocol (byte-level spec: docs/wire.md).
//!
//! Layers: `frame` (header, crc32c, size limit), `codec` (bounds-checked fields), `msg`
//! (requests and replies), `auth` (handshake proof), `error` (status codes).

pub mod auth;
pub mod codec;
pub mod error;
pub mod frame;
pub mod local;
pub mod msg;
pub mod nbd;

pub use codec::{Dec, DecodeError, Enc};
pub use error::ErrorCode;
pub use frame::{decode_frame, encode_frame, Frame, FrameError, Header, Kind, HEADER_BYTES};
pub use msg::*;

/// Appends a complete request frame to `out`, encoding the payload in place (one copy of
/// write data, straight from the caller's buffer).
pub fn request_frame(out: &mut Vec<u8>, request_id: u64, req: &Request) {
    let start = out.len();
    out.resize(start + HEADER_BYTES, 0);
    let mut e = Enc {
        buf: std::mem::take(out),
    };
    req.encode(&mut e);
    *out = e.buf;
    seal_frame(
        &mut out[start..],
        Kind::Request,
        req.opcode(),
        request_id,
        0,
    );
}

/// Writes the header (with its crc) into the first `HEADER_BYTES` of `frame`, whose payload
/// follows in place.
fn seal_frame(frame: &mut [u8], kind: Kind, opcode: u16, request_id: u64, status: u32) {
    assert!(frame.len() >= HEADER_BYTES);
    let payload_len = frame.len() - HEADER_BYTES;
    assert!(
        payload_len <= brick_tuning::FRAME_PAYLOAD_BYTES_MAX as usize,
        "frame exceeds the payload limit"
    );
    let header = Header::new(kind, opcode, request_id, payload_len as u32, status);
    let bytes = header.encode(&frame[HEADER_BYTES..]);
    frame[..HEADER_BYTES].copy_from_slice(&bytes);
}

/// Bytes of a WRITE request before its data: volume, file id, offset, flags.
pub const WRITE_FIELDS_BYTES: usize = 24;

/// A WRITE payload's fields, which its data follows (docs/wire.md).
pub fn write_fields(
    vol: VolumeId,
    fid: FileId,
    offset: u64,
    flags: u32,
) -> [u8; WRITE_FIELDS_BYTES] {
    let mut e = Enc::with_capacity(WRITE_FIELDS_BYTES);
    e.u32(vol).u64(fid).u64(offset).u32(flags);
    let mut out = [0u8; WRITE_FIELDS_BYTES];
    out.copy_from_slice(&e.buf);
    out
}

/// Everything of a WRITE frame except its data, for senders that write the data straight from
/// the caller's buffer (no copy). Byte-identical to what `request_frame` produces.
pub fn write_frame_head(
    request_id: u64,
    vol: VolumeId,
    fid: FileId,
    offset: u64,
    flags: u32,
    data: &[u8],
) -> [u8; HEADER_BYTES + WRITE_FIELDS_BYTES] {
    let mut head = [0u8; HEADER_BYTES + WRITE_FIELDS_BYTES];
    let fields = write_fields(vol, fid, offset, flags);
    head[HEADER_BYTES..].copy_from_slice(&fields);
    let payload_len = WRITE_FIELDS_BYTES + data.len();
    assert!(
        payload_len <= brick_tuning::FRAME_PAYLOAD_BYTES_MAX as usize,
        "write exceeds the frame limit"
    );
    let header = Header::new(Kind::Request, op::WRITE, request_id, payload_len as u32, 0);
    let header_fields = header.encode_fields();
    let crc = crc32c::crc32c(&header_fields);
    let crc = crc32c::crc32c_append(crc32c::crc32c_append(crc, &fields), data);
    head[..24].copy_from_slice(&header_fields);
    head[24..28].copy_from_slice(&crc.to_le_bytes());
    head
}

/// Builds a complete response frame; `status` 0 means success.
pub fn response_frame(
    out: &mut Vec<u8>,
    request_id: u64,
    opcode: u16,
    status: u32,
    payload: &[u8],
) {
    let header = Header::new(
        Kind::Response,
        opcode,
        request_id,
        payload.len() as u32,
        status,
    );
    encode_frame(out, header, payload);
}

/// Starts a response frame whose payload the caller appends in place (saves a copy of read
/// data); finish it with `seal_response`.
pub fn begin_response(capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + capacity);
    out.resize(HEADER_BYTES, 0);
    out
}

/// The header of a success response whose payload is `payload`, for a payload sent from where
/// it is (a READ's data in its DMA buffer) rather than copied behind the header.
pub fn response_head(request_id: u64, opcode: u16, payload: &[u8]) -> [u8; HEADER_BYTES] {
    assert!(
        payload.len() <= brick_tuning::FRAME_PAYLOAD_BYTES_MAX as usize,
        "frame exceeds the payload limit"
    );
    Header::new(Kind::Response, opcode, request_id, payload.len() as u32, 0).encode(payload)
}

pub fn seal_response(out: &mut [u8], request_id: u64, opcode: u16) {
    seal_frame(out, Kind::Response, opcode, request_id, 0);
}

/// Error replies carry a short UTF-8 message after the status code.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

pub fn error_frame(
    out: &mut Vec<u8>,
    request_id: u64,
    opcode: u16,
    code: ErrorCode,
    message: &str,
) {
    let mut end = message.len().min(ERROR_MESSAGE_BYTES_MAX);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    response_frame(
        out,
        request_id,
        opcode,
        code.code(),
        &message.as_bytes()[..end],
    );
}

#[cfg(test)]
mod tests;
