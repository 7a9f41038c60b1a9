//! Primary-copy replication of one placement group, as a sans-IO state machine (design
//! decision 4 of the brief): inputs are client operations, peer messages, disk completions,
//! maps from the cluster store and the time; outputs are what the driver must do. The glommio
//! dataplane drives it in production, `tests/sim.rs` under a seeded fault-injecting simulator.

pub mod map;
pub mod replica;

pub use map::{mask_of, Epoch, Member, PgMap, MEMBERS_MAX};
pub use replica::{Boot, Config, LockKey, Msg, OpError, OpId, Outcome, Output, Replica};
