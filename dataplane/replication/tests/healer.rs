//! The healer's planner against a real `Replica` (the primary of one PG): what it copies, in
//! what order and size, what it does when a copy fails, the hand-off, and when it declares a
//! member healed. The seeded simulator (`sim.rs`) runs the same code under faults; these pin
//! down single behaviours so that a change to one shows which.

use brick_replication::dirt::DirtState;
use brick_replication::{
    Boot, Config, Dirt, HealConfig, HealEnv, Healer, LocalCopy, LockKey, LockKind, Member, Msg,
    OpId, Outcome, Output, PgMap, Replica, ResyncRead,
};
use std::collections::BTreeMap;

const CHUNK_BYTES: u64 = 64 * 1024;
const DATA_PG: u32 = 1;

/// File sizes of the primary's brick.
struct Files(BTreeMap<u64, u64>);

impl LocalCopy for Files {
    fn ids_in_pg(&self, _pg: u32) -> Vec<u64> {
        self.0.keys().copied().collect()
    }
    fn file_size(&self, fid: u64) -> Option<u64> {
        self.0.get(&fid).copied()
    }
}

fn map(epoch: u64, members: u8, up_to_date: u8, healing: u8) -> PgMap {
    PgMap {
        epoch,
        members,
        placed: brick_replication::mask_of(members),
        up_to_date,
        healing,
        min_size: 1,
        preferred: 0,
        fresh: 0,
    }
}

/// Member 0, the primary, with its healer; heal copies' reads and forwards are held until the
/// test lets them finish.
struct Primary {
    now_ms: u64,
    replica: Replica,
    healer: Healer,
    files: Files,
    env: HealEnv,
    /// Heal ops whose read was asked for: (op, lock).
    reads: Vec<(OpId, LockKey)>,
    /// Forwards sent: (to, epoch, op).
    forwards: Vec<(Member, u64, OpId)>,
    proposals: Vec<PgMap>,
    replies: Vec<(OpId, bool)>,
}

impl Primary {
    fn new(pg: u32, map: PgMap, cfg: HealConfig) -> Primary {
        let mut out = Vec::new();
        let boot = Boot {
            op_base: 1,
            restarted: false,
            activity: Vec::new(),
        };
        let replica = Replica::new(pg, 0, map, Config::default(), 0, boot, &mut out);
        assert!(replica.is_primary());
        let mut p = Primary {
            now_ms: 0,
            replica,
            healer: Healer::new(pg, 0, cfg, DirtState::default()),
            files: Files(BTreeMap::new()),
            env: HealEnv {
                namespace_healed: 0xff,
                rate_bytes_s: 0,
            },
            reads: Vec::new(),
            forwards: Vec::new(),
            proposals: Vec::new(),
            replies: Vec::new(),
        };
        p.run(out);
        p
    }

    /// Records `d` as missed by the members `absent`.
    fn dirt(&mut self, absent: u8, d: Dirt) {
        let _ = self.healer.record(absent, &[d]);
    }

    /// Member `m` answers a heartbeat and reports nothing in doubt (a heal finishes only
    /// after its report).
    fn report(&mut self, m: Member) {
        let mut out = Vec::new();
        let msg = Msg::HeartbeatAck {
            epoch: self.replica.map().epoch,
            in_doubt: Some(Vec::new()),
            echo_ms: 0,
        };
        self.replica.on_message(self.now_ms, m, msg, &mut out);
        self.run(out);
    }

    fn periodic(&mut self) {
        let mut out = Vec::new();
        let mut begins = 1;
        self.healer.periodic(
            self.now_ms,
            &mut self.replica,
            &self.env,
            &mut begins,
            &self.files,
            &mut out,
        );
        self.run(out);
    }

    fn install(&mut self, map: PgMap) {
        let mut out = Vec::new();
        self.replica.on_map(self.now_ms, map, &mut out);
        self.run(out);
    }

    fn run(&mut self, out: Vec<Output>) {
        for o in out {
            match o {
                Output::ReadForResync { op, lock } => self.reads.push((op, lock)),
                Output::Send {
                    to,
                    msg: Msg::Forward { epoch, op, .. },
                } => self.forwards.push((to, epoch, op)),
                Output::Propose { map } => self.proposals.push(map),
                Output::Reply { op, result } => {
                    self.replies.push((op, result.is_ok()));
                    self.healer.on_reply(self.now_ms, op, result.is_ok());
                    let mut more = Vec::new();
                    self.healer.pump(
                        self.now_ms,
                        &mut self.replica,
                        &self.env,
                        &self.files,
                        &mut more,
                    );
                    self.run(more);
                }
                _ => {}
            }
        }
    }

    /// The read of the oldest heal op asked for: what the healer says to read.
    fn read(&mut self) -> (OpId, ResyncRead) {
        assert!(!self.reads.is_empty(), "no heal op is waiting for its read");
        let (op, lock) = self.reads.remove(0);
        (op, self.healer.resync_read(op, lock, &self.replica))
    }

    /// Heal op `op` was read here (`outcome`) and every target acknowledged it: returns the
    /// members it was forwarded to.
    fn complete(&mut self, op: OpId, outcome: Outcome) -> Vec<Member> {
        let mut out = Vec::new();
        self.replica
            .on_local_done(self.now_ms, op, outcome, &mut out);
        self.run(out);
        let acks: Vec<(Member, u64)> = self
            .forwards
            .iter()
            .filter(|f| f.2 == op)
            .map(|f| (f.0, f.1))
            .collect();
        self.forwards.retain(|f| f.2 != op);
        let targets = acks.iter().map(|a| a.0).collect();
        for (to, epoch) in acks {
            let mut out = Vec::new();
            let ack = Msg::Ack {
                epoch,
                op,
                outcome: Outcome::Ok,
            };
            self.replica.on_message(self.now_ms, to, ack, &mut out);
            self.run(out);
        }
        targets
    }

    /// Reads and completes every heal op asked for, oldest first, until none is left;
    /// returns the ranges copied.
    fn copy_all(&mut self) -> Vec<(u64, u64, u64)> {
        let mut copied = Vec::new();
        for _ in 0..1000 {
            if self.reads.is_empty() {
                return copied;
            }
            let lock = self.reads[0].1;
            let (op, read) = self.read();
            if let (ResyncRead::Range, LockKind::Range { fid, start, end }) = (read, lock.kind()) {
                copied.push((fid, start, end));
            }
            let _ = self.complete(op, Outcome::Ok);
        }
        panic!("heal copies never ended");
    }
}

fn cfg(window_max: usize) -> HealConfig {
    HealConfig {
        chunk_bytes: CHUNK_BYTES,
        window_max,
        ..HealConfig::default()
    }
}

#[test]
fn dirty_ranges_are_copied_in_chunks_within_the_window_then_the_member_is_healed() {
    let mut p = Primary::new(DATA_PG, map(1, 2, 0b01, 0b10), cfg(2));
    p.files.0.insert(7, 5 * CHUNK_BYTES);
    p.dirt(0b10, Dirt::range(7, 0, 5 * CHUNK_BYTES));
    p.report(1);
    p.periodic();
    // Two copies at a time, in chunk-sized pieces, in file order.
    assert_eq!(p.reads.len(), 2);
    let copied = p.copy_all();
    let want: Vec<(u64, u64, u64)> = (0..5)
        .map(|i| (7, i * CHUNK_BYTES, (i + 1) * CHUNK_BYTES))
        .collect();
    assert_eq!(copied, want);
    assert!(p.healer.dirt().members[1].is_empty());
    // Nothing left and nothing in flight: the member is proposed up to date.
    assert_eq!(p.proposals, vec![map(2, 2, 0b11, 0)]);
    let progress = p.healer.progress(p.now_ms, &p.replica).expect("primary");
    let target = progress
        .targets
        .iter()
        .find(|t| t.member == 1)
        .expect("member 1");
    assert_eq!(target.bytes_copied, 5 * CHUNK_BYTES);
    assert_eq!(target.bytes_left, 0);
}

#[test]
fn a_copy_that_fails_gives_its_range_back_and_the_heal_pauses_before_trying_again() {
    let heal = cfg(1);
    let mut p = Primary::new(DATA_PG, map(1, 2, 0b01, 0b10), heal);
    p.files.0.insert(7, CHUNK_BYTES);
    p.dirt(0b10, Dirt::range(7, 0, CHUNK_BYTES));
    p.report(1);
    p.periodic();
    let (op, read) = p.read();
    assert_eq!(read, ResyncRead::Range);
    // The read fails on this member (an I/O error): the copy did not happen.
    assert!(
        p.complete(op, Outcome::Failed).is_empty(),
        "a failed read was forwarded"
    );
    assert!(p.replies.contains(&(op, false)));
    assert!(
        !p.healer.dirt().members[1].is_empty(),
        "the range was dropped"
    );
    p.now_ms += heal.failed_copy_pause_ms - 1;
    p.periodic();
    assert!(
        p.reads.is_empty(),
        "a failed copy was retried within the pause"
    );
    assert!(p.proposals.is_empty(), "healed although a copy failed");
    p.now_ms += 1;
    p.periodic();
    assert_eq!(p.copy_all(), vec![(7, 0, CHUNK_BYTES)]);
    assert_eq!(p.proposals, vec![map(2, 2, 0b11, 0)]);
}

#[test]
fn a_range_to_the_end_of_a_truncated_file_is_copied_up_to_its_size_now() {
    let mut p = Primary::new(DATA_PG, map(1, 2, 0b01, 0b10), cfg(4));
    let size = 3 * 4096 + 100;
    p.files.0.insert(9, size);
    p.dirt(
        0b10,
        Dirt::Range {
            fid: 9,
            start: 4096,
            end: u64::MAX,
        },
    );
    p.report(1);
    p.periodic();
    assert_eq!(p.copy_all(), vec![(9, 4096, 4 * 4096)]);
}

#[test]
fn a_member_gets_the_dirt_of_the_members_still_away_before_it_counts_as_healed() {
    // Member 1 is being healed; member 2 is still away and missed a range of file 5.
    let mut p = Primary::new(DATA_PG, map(1, 3, 0b001, 0b010), cfg(2));
    p.files.0.insert(5, 4096);
    p.dirt(0b100, Dirt::range(5, 0, 4096));
    p.report(1);
    p.periodic();
    let (op, read) = p.read();
    let ResyncRead::Handoff { payload } = read else {
        panic!("expected the hand-off first, got {read:?}");
    };
    assert!(p.proposals.is_empty(), "healed before the hand-off landed");
    // Member 1 takes it: if it becomes primary it heals member 2 of the same range.
    let mut member1 = Healer::new(DATA_PG, 1, cfg(2), DirtState::default());
    member1
        .apply_handoff(&payload)
        .expect("the hand-off decodes");
    assert_eq!(member1.dirt().members[2], p.healer.dirt().members[2]);
    assert!(member1.dirt().members[0].is_empty());
    assert_eq!(
        p.complete(op, Outcome::Ok),
        vec![1],
        "the hand-off goes to member 1 only"
    );
    assert_eq!(p.proposals, vec![map(2, 3, 0b011, 0)]);
    // Member 2's dirt stays here: it is still away.
    assert!(!p.healer.dirt().members[2].is_empty());
}

#[test]
fn a_catch_up_clears_the_namespace_dirt_of_the_members_it_reached_only() {
    // Sim seed 5219: member 1 joined, its catch-up was read after member 2 had joined too;
    // that catch-up went to member 1 only, but cleared member 2's namespace dirt as well, and
    // member 2 was declared healed with an unlink the others had not made.
    let mut p = Primary::new(0, map(1, 3, 0b001, 0), cfg(2));
    p.dirt(0b110, Dirt::Tree);
    p.install(map(2, 3, 0b001, 0b010));
    p.install(map(3, 3, 0b001, 0b110));
    let (op, read) = p.read();
    assert_eq!(
        read,
        ResyncRead::CatchUp {
            dirs: Vec::new(),
            tree: true
        }
    );
    assert_eq!(p.complete(op, Outcome::Ok), vec![1]);
    assert!(!p.healer.dirt().members[1].tree);
    assert!(p.healer.dirt().members[2].tree, "member 2 never got it");
    // Member 2's own catch-up (started when it joined) lists the whole tree for it.
    let (op2, read2) = p.read();
    assert_eq!(
        read2,
        ResyncRead::CatchUp {
            dirs: Vec::new(),
            tree: true
        }
    );
    assert_eq!(p.complete(op2, Outcome::Ok), vec![2]);
    assert!(!p.healer.dirt().members[2].tree);
}

#[test]
fn the_window_shrinks_while_client_latency_rises() {
    let heal = cfg(4);
    let mut p = Primary::new(DATA_PG, map(1, 2, 0b01, 0b10), heal);
    p.files.0.insert(7, 16 * CHUNK_BYTES);
    p.dirt(0b10, Dirt::range(7, 0, 16 * CHUNK_BYTES));
    p.report(1);
    for _ in 0..100 {
        p.healer.note_client_latency(100.0);
    }
    p.periodic();
    assert_eq!(p.reads.len(), 4);
    // Clients now wait ten times longer than they did.
    for _ in 0..20 {
        p.healer.note_client_latency(1000.0);
    }
    for _ in 0..3 {
        let (op, _) = p.read();
        p.complete(op, Outcome::Ok);
    }
    // Each finished copy halved the window (4 -> 2 -> 1 -> 1) and paused the heal.
    p.now_ms += heal.suffer_pause_ms;
    p.periodic();
    assert_eq!(
        p.reads.len(),
        1,
        "one copy in flight is all a window of 1 allows"
    );
    let (op, _) = p.read();
    p.complete(op, Outcome::Ok);
    p.now_ms += heal.suffer_pause_ms;
    p.periodic();
    assert_eq!(p.reads.len(), 1);
}

#[test]
fn a_namespace_change_in_doubt_is_resynced_by_listing_every_directory() {
    // Sim seed 9342: the new primary never got the unlink in doubt, so it cannot know which
    // directory to list; the last namespace ops it saw did not include it.
    let mut p = Primary::new(0, map(1, 3, 0b111, 0), cfg(2));
    let read = p.healer.resync_read(1, LockKey::NAMESPACE, &p.replica);
    assert_eq!(
        read,
        ResyncRead::CatchUp {
            dirs: Vec::new(),
            tree: true
        }
    );
    assert!(!p.healer.owns(1), "a resync is not a heal copy");
}
