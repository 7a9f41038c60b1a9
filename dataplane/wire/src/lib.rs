//! The brickd native protocol (byte-level spec: docs/wire.md).
//!
//! Layers: `frame` (header, crc32c, size limit), `codec` (bounds-checked fields), `msg`
//! (requests and replies), `auth` (handshake proof), `error` (status codes).

pub mod auth;
pub mod codec;
pub mod error;
pub mod frame;
pub mod msg;

pub use codec::{DecodeError, Dec, Enc};
pub use error::ErrorCode;
pub use frame::{decode_frame, encode_frame, Frame, FrameError, Header, Kind, HEADER_BYTES};
pub use msg::*;

/// Builds a complete request frame.
pub fn request_frame(out: &mut Vec<u8>, request_id: u64, req: &Request) {
    let mut e = Enc::with_capacity(64);
    req.encode(&mut e);
    let header = Header {
        version: frame::VERSION_MAX,
        kind: Kind::Request,
        opcode: req.opcode(),
        request_id,
        payload_len: e.buf.len() as u32,
        status: 0,
    };
    encode_frame(out, header, &e.buf);
}

/// Builds a complete response frame; `status` 0 means success.
pub fn response_frame(out: &mut Vec<u8>, request_id: u64, opcode: u16, status: u32, payload: &[u8]) {
    let header = Header {
        version: frame::VERSION_MAX,
        kind: Kind::Response,
        opcode,
        request_id,
        payload_len: payload.len() as u32,
        status,
    };
    encode_frame(out, header, payload);
}

/// Starts a response frame whose payload the caller appends in place (saves a copy of read
/// data); finish it with `seal_response`.
pub fn begin_response(capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + capacity);
    out.resize(HEADER_BYTES, 0);
    out
}

pub fn seal_response(out: &mut [u8], request_id: u64, opcode: u16) {
    assert!(out.len() >= HEADER_BYTES);
    let header = Header {
        version: frame::VERSION_MAX,
        kind: Kind::Response,
        opcode,
        request_id,
        payload_len: (out.len() - HEADER_BYTES) as u32,
        status: 0,
    };
    let bytes = header.encode(&out[HEADER_BYTES..]);
    out[..HEADER_BYTES].copy_from_slice(&bytes);
}

/// Error replies carry a short UTF-8 message after the status code.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

pub fn error_frame(out: &mut Vec<u8>, request_id: u64, opcode: u16, code: ErrorCode, message: &str) {
    let mut end = message.len().min(ERROR_MESSAGE_BYTES_MAX);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    response_frame(out, request_id, opcode, code.code(), &message.as_bytes()[..end]);
}

#[cfg(test)]
mod tests;
