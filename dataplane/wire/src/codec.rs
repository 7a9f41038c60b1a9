//! Bounds-checked little-endian field encoding shared by every message.

use brick_tuning::{NAME_BYTES_MAX, SYMLINK_TARGET_BYTES_MAX};

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum DecodeError {
    #[error("message truncated while reading {0}")]
    Truncated(&'static str),
    #[error("{0}: length {1} exceeds its limit of {2}")]
    TooLong(&'static str, usize, usize),
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("invalid name: {0}")]
    BadName(&'static str),
    #[error("invalid value for {0}: {1}")]
    BadValue(&'static str, u64),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("unknown opcode 0x{0:04x}")]
    UnknownOpcode(u16),
}

pub struct Dec<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Dec<'a> {
        Dec { buf, at: 0 }
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError::Truncated(what))?;
        let bytes = self
            .buf
            .get(self.at..end)
            .ok_or(DecodeError::Truncated(what))?;
        self.at = end;
        Ok(bytes)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::BadValue(what, other as u64)),
        }
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(self.u64(what)? as i64)
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    /// Bytes prefixed by a u32 length, refused above `max`.
    pub fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(DecodeError::TooLong(what, len, max));
        }
        self.take(len, what)
    }

    pub fn str(&mut self, what: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes(what, max)?).map_err(|_| DecodeError::NotUtf8(what))
    }

    /// A single path component: non-empty, no '/', no NUL, not "." or "..".
    pub fn name(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let name = self.str(what, NAME_BYTES_MAX)?;
        validate_name(name)?;
        Ok(name)
    }

    pub fn symlink_target(&mut self) -> Result<&'a str, DecodeError> {
        let target = self.str("symlink target", SYMLINK_TARGET_BYTES_MAX)?;
        if target.is_empty() || target.contains('\0') {
            return Err(DecodeError::BadName("symlink target is empty or holds NUL"));
        }
        Ok(target)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.at..];
        self.at = self.buf.len();
        rest
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.at
    }

    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

pub fn validate_name(name: &str) -> Result<(), DecodeError> {
    if name.is_empty() {
        return Err(DecodeError::BadName("empty"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(DecodeError::TooLong("name", name.len(), NAME_BYTES_MAX));
    }
    if name == "." || name == ".." {
        return Err(DecodeError::BadName("\".\" and \"..\" are not entries"));
    }
    if name.contains('/') || name.contains('\0') {
        return Err(DecodeError::BadName("holds '/' or NUL"));
    }
    Ok(())
}

#[derive(Default)]
pub struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub fn with_capacity(n: usize) -> Enc {
        Enc {
            buf: Vec::with_capacity(n),
        }
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(v as u8)
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.u64(v as u64)
    }
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.raw(v)
    }
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
}
