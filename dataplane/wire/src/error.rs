//! Status codes carried in response headers. Filesystem errors reuse Linux errno numbers so the
//! NFS, SMB and FUSE front ends map them without a table per protocol; protocol-level errors
//! live above 1000.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Perm,
    NotFound,
    Io,
    Access,
    Exists,
    CrossDevice,
    NotDir,
    IsDir,
    Invalid,
    FileTooBig,
    NoSpace,
    ReadOnly,
    NameTooLong,
    NotEmpty,
    NotSupported,
    Stale,
    /// The request could not be decoded.
    Malformed,
    /// The peer has not authenticated (or failed to).
    AuthFailed,
    VolumeNotFound,
    VolumeStopped,
    /// The server is shutting down or overloaded; retry elsewhere or later.
    Unavailable,
    /// Operation code not known to this server.
    UnknownOp,
    Internal,
    /// The server does not hold the primary copy of the request's placement group (or no
    /// longer: the map changed). Fetch the volume's maps and retry at the primary.
    NotPrimary,
    /// Fewer up-to-date replicas than the volume's `min_size`: writes are refused rather than
    /// accepted with too few copies.
    BelowMinSize,
    /// A code this build does not know (from a newer peer).
    Other(u32),
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::Perm => 1,
            ErrorCode::NotFound => 2,
            ErrorCode::Io => 5,
            ErrorCode::Access => 13,
            ErrorCode::Exists => 17,
            ErrorCode::CrossDevice => 18,
            ErrorCode::NotDir => 20,
            ErrorCode::IsDir => 21,
            ErrorCode::Invalid => 22,
            ErrorCode::FileTooBig => 27,
            ErrorCode::NoSpace => 28,
            ErrorCode::ReadOnly => 30,
            ErrorCode::NameTooLong => 36,
            ErrorCode::NotEmpty => 39,
            ErrorCode::NotSupported => 95,
            ErrorCode::Stale => 116,
            ErrorCode::Malformed => 1001,
            ErrorCode::AuthFailed => 1002,
            ErrorCode::VolumeNotFound => 1003,
            ErrorCode::VolumeStopped => 1004,
            ErrorCode::Unavailable => 1005,
            ErrorCode::UnknownOp => 1006,
            ErrorCode::Internal => 1007,
            ErrorCode::NotPrimary => 1008,
            ErrorCode::BelowMinSize => 1009,
            ErrorCode::Other(code) => code,
        }
    }

    pub fn from_code(code: u32) -> ErrorCode {
        match code {
            1 => ErrorCode::Perm,
            2 => ErrorCode::NotFound,
            5 => ErrorCode::Io,
            13 => ErrorCode::Access,
            17 => ErrorCode::Exists,
            18 => ErrorCode::CrossDevice,
            20 => ErrorCode::NotDir,
            21 => ErrorCode::IsDir,
            22 => ErrorCode::Invalid,
            27 => ErrorCode::FileTooBig,
            28 => ErrorCode::NoSpace,
            30 => ErrorCode::ReadOnly,
            36 => ErrorCode::NameTooLong,
            39 => ErrorCode::NotEmpty,
            95 => ErrorCode::NotSupported,
            116 => ErrorCode::Stale,
            1001 => ErrorCode::Malformed,
            1002 => ErrorCode::AuthFailed,
            1003 => ErrorCode::VolumeNotFound,
            1004 => ErrorCode::VolumeStopped,
            1005 => ErrorCode::Unavailable,
            1006 => ErrorCode::UnknownOp,
            1007 => ErrorCode::Internal,
            1008 => ErrorCode::NotPrimary,
            1009 => ErrorCode::BelowMinSize,
            other => ErrorCode::Other(other),
        }
    }

    /// Maps an OS error from the brick filesystem to the code sent on the wire.
    pub fn from_io(err: &std::io::Error) -> ErrorCode {
        match err.raw_os_error() {
            Some(errno) => match ErrorCode::from_code(errno as u32) {
                ErrorCode::Other(_) => ErrorCode::Io,
                known => known,
            },
            None => match err.kind() {
                std::io::ErrorKind::NotFound => ErrorCode::NotFound,
                std::io::ErrorKind::AlreadyExists => ErrorCode::Exists,
                std::io::ErrorKind::PermissionDenied => ErrorCode::Access,
                std::io::ErrorKind::InvalidInput => ErrorCode::Invalid,
                _ => ErrorCode::Io,
            },
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            ErrorCode::Perm => "operation not permitted",
            ErrorCode::NotFound => "no such file or directory",
            ErrorCode::Io => "I/O error",
            ErrorCode::Access => "permission denied",
            ErrorCode::Exists => "file exists",
            ErrorCode::CrossDevice => "cross-device link",
            ErrorCode::NotDir => "not a directory",
            ErrorCode::IsDir => "is a directory",
            ErrorCode::Invalid => "invalid argument",
            ErrorCode::FileTooBig => "file too large",
            ErrorCode::NoSpace => "no space left on brick",
            ErrorCode::ReadOnly => "read-only",
            ErrorCode::NameTooLong => "name too long",
            ErrorCode::NotEmpty => "directory not empty",
            ErrorCode::NotSupported => "operation not supported",
            ErrorCode::Stale => "stale file id",
            ErrorCode::Malformed => "malformed request",
            ErrorCode::AuthFailed => "authentication failed",
            ErrorCode::VolumeNotFound => "no such volume",
            ErrorCode::VolumeStopped => "volume is not started",
            ErrorCode::Unavailable => "server unavailable",
            ErrorCode::UnknownOp => "unknown operation",
            ErrorCode::Internal => "internal server error",
            ErrorCode::NotPrimary => "not the primary of this placement group",
            ErrorCode::BelowMinSize => "too few up-to-date replicas to accept writes",
            ErrorCode::Other(_) => "unknown error",
        };
        write!(f, "{text} ({})", self.code())
    }
}
