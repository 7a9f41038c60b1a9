//! Primary-copy replication of one placement group, as a sans-IO state machine (design
//! decision 4 of the brief): inputs are client operations, peer messages, disk completions,
//! maps from the cluster store and the time; outputs are what the driver must do. The glommio
//! dataplane drives it in production, `tests/sim.rs` under a seeded fault-injecting simulator.
//! The heal (`heal::Healer`), the dirt records and the REPL codec are here too, so that the
//! simulator runs exactly the code the dataplane runs.

pub mod body;
pub mod codec;
pub mod dirt;
pub mod heal;
pub mod lock;
pub mod map;
pub mod replica;

pub use body::BodyOp;
pub use dirt::{Dirt, DirtState, LogWrite};
pub use heal::{HealConfig, HealEnv, Healer, LocalCopy, ResyncRead};
pub use lock::{LockKey, LockKind};
pub use map::{mask_of, nth_member, slots_of, Epoch, Member, PgMap, MEMBERS_MAX};
pub use replica::{Boot, Config, Msg, OpError, OpId, Outcome, Output, ReadGate, Replica};
