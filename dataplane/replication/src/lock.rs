//! What an operation locks: a byte range of a file, a whole file, the namespace, or one of the
//! heal's own keys. Overlapping operations of a PG never run at once, so every member applies
//! them in the same order.

/// The part of the data an operation changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockKey {
    pub fid: u64,
    pub start: u64,
    pub end: u64,
}

/// What a lock key stands for (the special keys use file ids no file has).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// Namespace operations (create, unlink, rename...): one at a time per PG.
    Namespace,
    /// A heal's namespace catch-up: excludes every other operation of the PG while it runs.
    Everything,
    /// A heal's dirt hand-off to a member about to be up to date.
    Handoff,
    /// A whole file (setattr, fsync, truncate).
    WholeFile(u64),
    /// Bytes [start, end) of a file.
    Range { fid: u64, start: u64, end: u64 },
}

/// File id 0 is no file: the namespace key.
const NAMESPACE_FID: u64 = 0;
const EVERYTHING_FID: u64 = u64::MAX;
const HANDOFF_FID: u64 = u64::MAX - 1;

impl LockKey {
    pub const NAMESPACE: LockKey = LockKey {
        fid: NAMESPACE_FID,
        start: 0,
        end: u64::MAX,
    };

    pub const EVERYTHING: LockKey = LockKey {
        fid: EVERYTHING_FID,
        start: 0,
        end: u64::MAX,
    };

    /// Conflicts with no file or namespace operation (only with `EVERYTHING` and itself).
    pub const HANDOFF: LockKey = LockKey {
        fid: HANDOFF_FID,
        start: 0,
        end: 1,
    };

    pub fn whole_file(fid: u64) -> LockKey {
        LockKey {
            fid,
            start: 0,
            end: u64::MAX,
        }
    }

    pub fn range(fid: u64, offset: u64, len: u64) -> LockKey {
        LockKey {
            fid,
            start: offset,
            end: offset.saturating_add(len.max(1)),
        }
    }

    pub fn kind(&self) -> LockKind {
        match self.fid {
            NAMESPACE_FID => LockKind::Namespace,
            EVERYTHING_FID => LockKind::Everything,
            HANDOFF_FID => LockKind::Handoff,
            fid if self.start == 0 && self.end == u64::MAX => LockKind::WholeFile(fid),
            fid => LockKind::Range {
                fid,
                start: self.start,
                end: self.end,
            },
        }
    }

    /// A key a peer may send: a non-empty range (every key above is one).
    pub fn is_well_formed(&self) -> bool {
        self.start < self.end
    }

    pub fn conflicts(&self, other: &LockKey) -> bool {
        if self.fid == EVERYTHING_FID || other.fid == EVERYTHING_FID {
            return true;
        }
        self.fid == other.fid && self.start < other.end && other.start < self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_keys_are_typed_and_conflict_as_documented() {
        assert_eq!(LockKey::NAMESPACE.kind(), LockKind::Namespace);
        assert_eq!(LockKey::EVERYTHING.kind(), LockKind::Everything);
        assert_eq!(LockKey::HANDOFF.kind(), LockKind::Handoff);
        assert_eq!(LockKey::whole_file(9).kind(), LockKind::WholeFile(9));
        assert_eq!(
            LockKey::range(9, 4096, 10).kind(),
            LockKind::Range {
                fid: 9,
                start: 4096,
                end: 4106
            }
        );
        let file = LockKey::range(9, 0, 4096);
        assert!(LockKey::EVERYTHING.conflicts(&file) && file.conflicts(&LockKey::EVERYTHING));
        assert!(LockKey::EVERYTHING.conflicts(&LockKey::HANDOFF));
        assert!(
            !LockKey::HANDOFF.conflicts(&file) && !LockKey::HANDOFF.conflicts(&LockKey::NAMESPACE)
        );
        assert!(!LockKey::NAMESPACE.conflicts(&file));
        assert!(LockKey::whole_file(9).conflicts(&file));
        assert!(!LockKey::range(9, 4096, 1).conflicts(&file));
    }
}
