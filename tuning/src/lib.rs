//! Every limit and default of brickd in one place (TigerBeetle style: a limit on everything,
//! units last in names). Lower layers read these; nothing here depends on anything else.

/// Largest frame payload accepted from the network. Big enough for one 4 MiB data chunk plus
/// its request header; anything larger is refused before a single byte is allocated for it.
pub const FRAME_PAYLOAD_BYTES_MAX: u32 = 4 * 1024 * 1024 + 4096;

/// Largest data chunk of one READ or WRITE request.
pub const IO_BYTES_MAX: u32 = 4 * 1024 * 1024;

/// Longest file or directory name (one path component), as on Linux.
pub const NAME_BYTES_MAX: usize = 255;

/// Longest symlink target.
pub const SYMLINK_TARGET_BYTES_MAX: usize = 4096;

/// Deepest directory nesting a brick resolves (guards the parent walk against cycles).
pub const PATH_DEPTH_MAX: usize = 256;

/// Requests a server keeps in flight per connection before it stops reading that socket.
pub const CONNECTION_INFLIGHT_MAX: usize = 256;

/// Bytes one connection may have in flight: request payloads read plus replies not yet
/// written. A peer that stops reading its replies stalls itself, not the server's memory.
pub const CONNECTION_INFLIGHT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// HELLO and AUTH are small; anything bigger before authentication is refused unread.
pub const HANDSHAKE_PAYLOAD_BYTES_MAX: u32 = 1024;

/// How long a peer may take to complete the handshake.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Connections one core accepts at once; further ones are closed right after accept.
pub const CORE_CONNECTIONS_MAX: usize = 1024;

/// Open files one core caches (each holds up to two descriptors).
pub const CORE_OPEN_FILES_MAX: usize = 4096;

/// How often a core looks for cached descriptors of files unlinked since (only when a brick's
/// generation moved): a deleted file's space is freed within this time.
pub const UNLINKED_SWEEP_INTERVAL_MS: u64 = 500;

/// Each core checks its event loop's lateness this often, and logs a warning when a timer
/// fires `CORE_STALL_WARN_MS` late (a blocking call on the core).
pub const CORE_STALL_CHECK_INTERVAL_MS: u64 = 100;
pub const CORE_STALL_WARN_MS: u64 = 250;

/// How long the closer thread holds its copy of a dropped file's descriptor before closing it:
/// long enough for the core's own (asynchronous) close to go first, so that the last close,
/// which frees a deleted file's blocks, runs off the cores.
pub const DEFERRED_CLOSE_DELAY_MS: u64 = 1000;

/// Descriptor copies the closer thread holds at most (above this a core closes its last
/// descriptor itself): a bound on how many descriptors the process spends on deferral.
pub const DEFERRED_CLOSE_FDS_MAX: usize = 256;

/// Entries one READDIR reply carries at most.
pub const READDIR_ENTRIES_MAX: u32 = 1024;

/// Management (JSON) documents are small; cap them well below the frame limit.
pub const MGMT_DOC_BYTES_MAX: usize = 1024 * 1024;

/// Placement groups of a new volume unless `volume create` says otherwise.
pub const VOLUME_PGS_DEFAULT: u32 = 64;
pub const VOLUME_PGS_MAX: u32 = 4096;

/// Bricks one volume may have.
pub const VOLUME_BRICKS_MAX: usize = 256;

/// Volumes one cluster may have.
pub const CLUSTER_VOLUMES_MAX: usize = 1024;

/// Replica count bounds.
pub const REPLICA_COUNT_MAX: u32 = 5;

/// Files at or above this size use O_DIRECT (glommio DmaFile) when a volume's `io.mode` is `auto`.
pub const DIRECT_IO_SIZE_MIN_DEFAULT: u64 = 1024 * 1024;

/// Alignment O_DIRECT needs on the brick filesystems we support.
pub const DIRECT_IO_ALIGN_BYTES: u64 = 4096;

/// How long the client waits for one reply before failing the request (and the connection).
pub const CLIENT_REQUEST_TIMEOUT_MS: u64 = 30_000;

/// How long the client waits to connect to one server.
pub const CLIENT_CONNECT_TIMEOUT_MS: u64 = 3_000;

/// Requests the client keeps in flight per connection; callers beyond it wait.
pub const CLIENT_INFLIGHT_MAX: usize = 1024;

/// Times an idempotent request is retried across reconnects.
pub const CLIENT_RETRIES_MAX: u32 = 5;

/// Memory glommio pre-registers with io_uring per core when the memlock limit allows it: enough
/// for 32 in-flight 1 MiB writes without touching the system allocator (whose fresh pages cost a
/// page fault and a clear per 4 KiB).
pub const CORE_IO_MEMORY_BYTES: usize = 64 * 1024 * 1024;
/// What a core registers when the memlock limit is low (non-root users often have 8 MiB in all;
/// glommio's own default exceeds it, see docs/ARCHITECTURE.md).
pub const CORE_IO_MEMORY_BYTES_MIN: usize = 1024 * 1024;

/// Initial size of a connection's reply buffer (replies are coalesced into it).
pub const COALESCE_BYTES_MAX: usize = 256 * 1024;
/// Replies up to this size are copied into the coalescing buffer; larger ones are queued as
/// they are.
pub const SMALL_REPLY_BYTES_MAX: usize = 16 * 1024;
/// Budget a connection charges per request beyond its payload (header, task, bookkeeping).
pub const REQUEST_OVERHEAD_BYTES: u64 = 256;
/// WRITEs with at least this much data are read off the socket straight into a DMA buffer.
pub const BULK_WRITE_BYTES_MIN: u32 = 64 * 1024;
/// A replicated op whose file was renamed while it was being opened is resolved again at
/// most this many times.
pub const APPLY_ATTEMPTS_MAX: u32 = 5;
/// NBD served on a core: bytes of the request stream read at once (pipelined headers arrive
/// together), READ replies copied into the shared reply buffer up to this size, and
/// WRITE_ZEROES written in pieces of this size.
pub const NBD_STREAM_BUFFER_BYTES: usize = 64 << 10;
pub const NBD_SMALL_READ_BYTES_MAX: usize = 16 << 10;
pub const NBD_ZERO_CHUNK_BYTES: u32 = 1 << 20;

/// Cross-core channel depth (requests forwarded to the owning core).
pub const CORE_CHANNEL_DEPTH: usize = 1024;

/// Embedded cluster store: largest single record, and log size that triggers compaction.
pub const STORE_RECORD_BYTES_MAX: usize = 16 * 1024 * 1024;
pub const STORE_LOG_COMPACT_BYTES: u64 = 4 * 1024 * 1024;

/// Brick namespace index: largest record and log size that triggers compaction on start.
pub const INDEX_RECORD_BYTES_MAX: usize = 64 + NAME_BYTES_MAX;
pub const INDEX_LOG_COMPACT_BYTES: u64 = 64 * 1024 * 1024;

/// Bench limits: every load loop is bounded in count and time.
pub const BENCH_SECONDS_MAX: u64 = 3600;
pub const BENCH_QD_MAX: u32 = 1024;
pub const BENCH_JOBS_MAX: u32 = 64;

/// How often each dataplane core gives its replicas the time (timeouts, heartbeats, resends).
pub const REPL_TICK_MS: u64 = 10;
/// Replication frames queued per peer link; beyond it messages are dropped (the protocol
/// resends what matters) rather than letting a frozen peer grow a queue without bound.
pub const PEER_QUEUE_FRAMES: usize = 8192;
/// How long a node waits for a peer's TCP connect and handshake.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 500;
/// Size of a PG member's activity log, mapped into memory (32-byte records; a full log is
/// compacted at once, otherwise every `ACTIVITY_REWRITE_INTERVAL_MS` while ops arrive).
pub const ACTIVITY_LOG_BYTES: usize = 1 << 20;
pub const ACTIVITY_REWRITE_INTERVAL_MS: u64 = 1000;
/// Bytes of queued replication frames written with one socket write.
pub const PEER_BATCH_BYTES_MAX: usize = 256 * 1024;
/// A replication link that failed is tried again after this.
pub const PEER_RECONNECT_DELAY_MS: u64 = 100;

/// A node whose liveness lease is not renewed for this long is considered down.
pub const NODE_LIVENESS_TTL_MS: u64 = 2000;

/// While the cluster store does not answer: a failed map proposal is reported this long after
/// it failed (its PG proposes again at this pace, not at every tick), and a node that cannot
/// load the cluster state at start tries again this often.
pub const STORE_RETRY_MS: u64 = 500;
/// ... and says so at most this often.
pub const STORE_WARN_INTERVAL_MS: u64 = 10_000;
/// Management requests waiting for the node's store worker; more are refused.
pub const MGMT_QUEUE_MAX: usize = 1024;
/// A stopping node waits this long for management requests in progress (each may wait for an
/// unreachable store), then drops them.
pub const SHUTDOWN_MGMT_WAIT_MS: u64 = 5000;

/// Default ports of `brickd dev`.
pub const DEV_NATIVE_PORT: u16 = 7700;
/// `brickd dev`'s NBD gateway: the port NBD clients try by default.
pub const DEV_NBD_PORT: u16 = 10809;
/// `brickd dev`'s NFSv3 gateway (NFS and MOUNT on one port): the standard NFS port.
pub const DEV_NFS_PORT: u16 = 2049;
/// `brickd dev`'s SMB gateway. Not 445: that needs root, and a host's Samba may hold it.
pub const DEV_SMB_PORT: u16 = 4445;

/// Longest user password, in bytes.
pub const PASSWORD_BYTES_MAX: usize = 256;
/// How often an SMB gateway fetches its share's users and their access again.
pub const SMB_USERS_REFRESH_MS: u64 = 2000;
/// An SMB gateway that has not heard from the cluster about its users for this long admits
/// nobody until it does (a user removed meanwhile must not keep access).
pub const SMB_USERS_STALE_MS: u64 = 60_000;
/// Largest SMB READ the gateway offers (at most the native protocol's largest I/O, 4 MiB).
pub const SMB_READ_BYTES_MAX: u32 = 1 << 20;
/// Largest SMB WRITE the gateway accepts (the crate's limit, 8 MiB): the crate answers one
/// request of a connection at a time, so a large WRITE is how an upload keeps several native
/// writes in flight.
pub const SMB_WRITE_BYTES_MAX: u32 = 8 << 20;
/// Native writes an SMB WRITE is split into, all sent at once.
pub const SMB_WRITE_PIECE_BYTES: u32 = 1 << 20;

// Replication of one PG (docs/replication.md). The defaults of `brick_replication::Config`.

/// A forward not acknowledged within this takes its member out of the write path.
pub const REPLICA_TIMEOUT_MS: u64 = 1000;
/// The primary sends heartbeats this often (to absent members too: their answer says they
/// are back to be healed).
pub const REPL_HEARTBEAT_MS: u64 = 150;
/// A member not heard from within this is suspected; a silent primary is replaced.
pub const FAILOVER_MS: u64 = 1000;
/// A primary answers reads while every other up-to-date member answered one of its
/// heartbeats sent less than `FAILOVER_MS` minus this ago (its read lease).
pub const READ_LEASE_MARGIN_MS: u64 = 200;
/// A read waits this long at most for its primary to confirm its lease (or for a write of
/// its range to be acknowledged) before answering "not the primary".
pub const READ_GATE_WAIT_MS: u64 = 1000;
/// How often a waiting read looks again.
pub const READ_GATE_POLL_MS: u64 = 1;
/// Unacknowledged forwards are sent again this often (lost messages).
pub const REPL_RESEND_MS: u64 = 250;
/// A forward refused for its epoch is sent again after this (the member is learning the map).
pub const REPL_NACK_RESEND_MS: u64 = 10;
/// Operations in flight or remembered for de-duplication, per PG.
pub const PG_WINDOW_OPS_MAX: u64 = 4096;
/// A tick this much later than the previous one means the member itself did not run.
pub const LOCAL_PAUSE_MS: u64 = 250;
/// Local pauses are excused from a budget that running time refills, up to this much.
pub const PAUSE_EXCUSE_MAX_MS: u64 = 10_000;
/// In-doubt ranges one heartbeat answer carries at most (more: "everything").
pub const IN_DOUBT_REPORT_KEYS_MAX: usize = 4096;

// Dirty tracking and heal (docs/heal.md). The defaults of `brick_replication::HealConfig`.

/// Ranges written while a member is away are recorded in whole blocks of this size (the
/// brief's 64 KiB default would copy 16x the data of 4 KiB random writes).
pub const DIRT_BLOCK_BYTES: u64 = 4096;
/// How often a PG's healer starts heals of members that came back and forgets the dirt of
/// members that are up to date again.
pub const HEAL_TICK_MS: u64 = 100;
/// One heal copy moves at most this much.
pub const HEAL_CHUNK_BYTES: u64 = 256 * 1024;
/// Heal copies in flight per healing member, at most (the adaptive throttle halves it).
pub const HEAL_WINDOW_MAX: usize = 2;
/// A heal that failed to start or finish is tried again after this (not in a loop of epochs).
pub const HEAL_RETRY_MS: u64 = 1000;
/// A member's heal pauses this long after a copy failed.
pub const HEAL_FAILED_COPY_PAUSE_MS: u64 = 100;
/// While clients suffer, each heal copy is followed by a pause this long.
pub const HEAL_SUFFER_PAUSE_MS: u64 = 2;
/// Weights of the client latency averages the adaptive throttle compares: the fast one moves
/// by this share of each new sample, the slow one by `HEAL_LATENCY_SLOW_WEIGHT`.
pub const HEAL_LATENCY_FAST_WEIGHT: f64 = 0.2;
pub const HEAL_LATENCY_SLOW_WEIGHT: f64 = 0.01;
/// Clients suffer when the fast latency average exceeds the slow one by this factor.
pub const HEAL_SUFFER_RATIO: f64 = 1.5;
/// PGs one core heals at once (each start and end is a map change).
pub const HEALING_PGS_PER_CORE_MAX: usize = 8;
/// A brick whose disk failed (an I/O error, a read-only file system) stays out of its PGs at
/// least this long, then until a probe (write, fdatasync, read back) passes.
pub const DISK_QUARANTINE_MS: u64 = 5_000;
/// How often the probe of failing disks runs.
pub const DISK_PROBE_INTERVAL_MS: u64 = 1_000;
/// How often a core publishes its heal progress for `brick heal status`.
pub const HEAL_REPORT_INTERVAL_MS: u64 = 500;
/// Files with the most left that a heal report names.
pub const HEAL_REPORT_FILES_MAX: usize = 16;
/// Namespace bodies a member keeps, so that the record of a member that left names the
/// directories of in-doubt namespace changes instead of the whole tree.
pub const RECENT_NAMESPACE_BODIES_MAX: usize = 1024;
/// Files removed from a brick's namespace stay in limbo (`.brickd/trash/`, data kept) while
/// a namespace change of the brick may still be undone by a repair; at most this long, and
/// looked at this often while a change stays in doubt.
pub const LIMBO_KEEP_MS: u64 = 10 * 60 * 1000;
pub const LIMBO_AGE_CHECK_MS: u64 = 60 * 1000;
/// PGs a rebalance moves at once (each is healed into its new set while the old one serves).
pub const REBALANCE_MOVES_MAX: usize = 2;
/// How often the rebalance leader looks at the PG maps and takes the next step.
pub const REBALANCE_TICK_MS: u64 = 300;
/// Digests of a moved PG compared before they must match (copies being written differ for a
/// moment) ...
pub const REBALANCE_VERIFY_ATTEMPTS: u32 = 3;
/// ... after which files modified this recently are left out on both sides (being written,
/// they are kept equal by replication, which forwards every write to both sets).
pub const REBALANCE_VERIFY_RECENT_MS: u64 = 5_000;
/// A PG whose copies still differ after this many verifications fails the rebalance.
pub const REBALANCE_VERIFY_FAILURES_MAX: u32 = 20;
