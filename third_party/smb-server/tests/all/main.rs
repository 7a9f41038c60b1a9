//! brickd: the integration tests, one module per former test target, built as one
//! binary: each target compiled the helpers and linked the crate and tokio on its own,
//! which took most of 7 minutes on CI's 2 cores. `transport_accept`, `transport_frames`
//! and `request_length_fields` (in `tests/`) stay their own binaries: the first lowers
//! RLIMIT_NOFILE and measures the CPU time of the whole process, the other two install a
//! `#[global_allocator]`, and `transport_frames` counts the whole process's allocations.

#[path = "../common/mod.rs"]
mod common;

mod auth_commands;
mod auth_encryption;
mod auth_guest;
mod auth_ioctl;
mod auth_negotiate;
mod auth_sessions;
mod auth_signing;
mod auth_spnego;
mod auth_throttle;
mod auth_tree_connect;
mod config_concurrency;
mod files_change_notify;
mod files_create_action;
mod files_create_validation;
mod files_delete_pending;
mod files_durable;
mod files_io;
mod files_lease_breaks;
mod files_lease_write;
mod files_leases;
mod files_limits;
mod files_locks;
mod files_revocation;
mod files_set_info;
mod files_sharing;
mod files_teardown;
#[cfg(feature = "localfs")]
mod integration_localfs;
#[cfg(feature = "localfs")]
mod integration_localfs_write;
#[cfg(feature = "localfs")]
mod integration_negotiate;
mod queries_directory;
mod queries_info;
mod share_listing;
mod transport_compound;
mod transport_credits;
mod transport_dispatch;
mod transport_limits;
mod transport_negotiate;
mod transport_shutdown;
mod transport_socket;
