//! The on-disk side of a brick (format: docs/disk-format.md).

pub mod brick;
pub mod index;

pub use brick::{
    attr_of, dir_cookie, fnv1a, pg_of, Brick, BrickIdentity, FsError, FsResult, HealEntry,
    FID_PG_SHIFT,
};
