//! The REPL message codec (docs/wire.md, "Replication"): a replication message between two
//! members of a PG, with a forward's body, as the payload of a REPL frame. Every length is
//! checked before anything is allocated, and a payload that does not decode is refused.
//!
//! Payload: `vol u32 | pg u32 | from u8 | to u8 | kind u8 | fields of the kind`.

use crate::body::BodyOp;
use crate::lock::LockKey;
use crate::map::{Member, PgMap, MEMBERS_MAX};
use crate::replica::{Msg, Outcome};
use brick_tuning::{FRAME_PAYLOAD_BYTES_MAX, IN_DOUBT_REPORT_KEYS_MAX};
use brick_wire::{encode_frame, op, Dec, DecodeError, Enc, Header, Kind, HEADER_BYTES};

const KIND_FORWARD: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_NACK: u8 = 3;
const KIND_HEARTBEAT: u8 = 4;
const KIND_HEARTBEAT_ACK: u8 = 5;
const KIND_QUERY: u8 = 6;
const KIND_IN_DOUBT: u8 = 7;
const KIND_MAP: u8 = 8;

/// A forward's body as it is sent.
#[derive(Debug, Clone, Copy)]
pub struct BodyRef<'a> {
    pub op: BodyOp,
    /// The file id the primary minted for a new entry (0: none).
    pub minted: u64,
    pub payload: &'a [u8],
}

/// A forward's body as it was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedBody {
    pub op: BodyOp,
    pub minted: u64,
    pub payload: Vec<u8>,
}

/// One decoded REPL payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplMessage {
    pub vol: u32,
    pub pg: u32,
    pub from: Member,
    pub to: Member,
    pub msg: Msg,
    /// Present exactly for forwards.
    pub body: Option<OwnedBody>,
}

/// The PG a REPL payload is about (it decides the core), if the payload is long enough.
pub fn repl_pg(payload: &[u8]) -> Option<u32> {
    let bytes = payload.get(4..8)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn encode_lock(e: &mut Enc, k: &LockKey) {
    e.u64(k.fid).u64(k.start).u64(k.end);
}

fn decode_lock(d: &mut Dec) -> Result<LockKey, DecodeError> {
    let (fid, start, end) = (d.u64("lock fid")?, d.u64("lock start")?, d.u64("lock end")?);
    let key = LockKey { fid, start, end };
    if !key.is_well_formed() {
        return Err(DecodeError::BadValue("lock range (empty)", start));
    }
    Ok(key)
}

fn encode_keys(e: &mut Enc, keys: &[LockKey]) {
    e.u32(keys.len() as u32);
    for k in keys {
        encode_lock(e, k);
    }
}

fn decode_keys(d: &mut Dec) -> Result<Vec<LockKey>, DecodeError> {
    let n = d.u32("key count")?;
    if n as usize > IN_DOUBT_REPORT_KEYS_MAX {
        return Err(DecodeError::BadValue("in-doubt key count", n as u64));
    }
    let mut keys = Vec::with_capacity(n as usize);
    for _ in 0..n {
        keys.push(decode_lock(d)?);
    }
    Ok(keys)
}

/// The whole REPL frame (header and payload) for one message.
pub fn encode_repl(
    (vol, pg): (u32, u32),
    from: Member,
    to: Member,
    msg: &Msg,
    body: Option<BodyRef<'_>>,
) -> Vec<u8> {
    let body_len = body.map_or(0, |b| b.payload.len());
    let mut e = Enc::with_capacity(96 + body_len);
    e.u32(vol).u32(pg).u8(from).u8(to);
    match msg {
        Msg::Forward {
            epoch,
            op,
            lock,
            watermark,
            absent,
        } => {
            e.u8(KIND_FORWARD).u64(*epoch).u64(*op);
            encode_lock(&mut e, lock);
            e.u64(*watermark).u8(*absent);
            let b = body.unwrap_or(BodyRef {
                op: BodyOp::Noop,
                minted: 0,
                payload: &[],
            });
            e.u32(b.op.code() as u32).u64(b.minted).bytes(b.payload);
        }
        Msg::Ack { epoch, op, outcome } => {
            let (kind, code) = match outcome {
                Outcome::Ok => (0u8, 0u32),
                Outcome::Refused(c) => (1, *c),
                Outcome::Failed => (2, 0),
            };
            e.u8(KIND_ACK).u64(*epoch).u64(*op).u8(kind).u32(code);
        }
        Msg::Nack { epoch, op } => {
            e.u8(KIND_NACK).u64(*epoch).u64(*op);
        }
        Msg::Heartbeat {
            epoch,
            watermark,
            sent_ms,
        } => {
            e.u8(KIND_HEARTBEAT)
                .u64(*epoch)
                .u64(*watermark)
                .u64(*sent_ms);
        }
        Msg::HeartbeatAck {
            epoch,
            in_doubt,
            echo_ms,
        } => {
            e.u8(KIND_HEARTBEAT_ACK).u64(*epoch).u64(*echo_ms);
            match in_doubt {
                None => {
                    e.u8(0);
                }
                Some(keys) => {
                    e.u8(1);
                    encode_keys(&mut e, keys);
                }
            }
        }
        Msg::Query { epoch } => {
            e.u8(KIND_QUERY).u64(*epoch);
        }
        Msg::InDoubt { epoch, keys } => {
            e.u8(KIND_IN_DOUBT).u64(*epoch);
            encode_keys(&mut e, keys);
        }
        Msg::Map { map } => {
            e.u8(KIND_MAP)
                .u64(map.epoch)
                .u8(map.members)
                .u8(map.placed)
                .u8(map.up_to_date)
                .u8(map.healing)
                .u8(map.min_size)
                .u8(map.preferred)
                .u8(map.fresh);
        }
    }
    let header = Header::new(Kind::Request, op::REPL, 0, e.buf.len() as u32, 0);
    let mut out = Vec::with_capacity(HEADER_BYTES + e.buf.len());
    encode_frame(&mut out, header, &e.buf);
    out
}

/// Decodes a REPL payload; anything malformed is an error, never a panic or a guess.
pub fn decode_repl(payload: &[u8]) -> Result<ReplMessage, DecodeError> {
    let mut d = Dec::new(payload);
    let (vol, pg, from, to) = (d.u32("vol")?, d.u32("pg")?, d.u8("from")?, d.u8("to")?);
    if from >= MEMBERS_MAX || to >= MEMBERS_MAX || from == to {
        return Err(DecodeError::BadValue("member", from.max(to) as u64));
    }
    let mut body = None;
    let msg = match d.u8("kind")? {
        KIND_FORWARD => {
            let (epoch, op) = (d.u64("epoch")?, d.u64("op")?);
            let lock = decode_lock(&mut d)?;
            let watermark = d.u64("watermark")?;
            let absent = d.u8("absent")?;
            let code = u16::try_from(d.u32("opcode")?)
                .map_err(|_| DecodeError::BadValue("opcode", u16::MAX as u64 + 1))?;
            let minted = d.u64("minted")?;
            let bytes = d.bytes("body", FRAME_PAYLOAD_BYTES_MAX as usize)?;
            body = Some(OwnedBody {
                op: BodyOp::from_code(code),
                minted,
                payload: bytes.to_vec(),
            });
            Msg::Forward {
                epoch,
                op,
                lock,
                watermark,
                absent,
            }
        }
        KIND_ACK => {
            let (epoch, op) = (d.u64("epoch")?, d.u64("op")?);
            let outcome = match (d.u8("outcome")?, d.u32("code")?) {
                (0, _) => Outcome::Ok,
                (1, code) => Outcome::Refused(code),
                (2, _) => Outcome::Failed,
                (other, _) => return Err(DecodeError::BadValue("outcome", other as u64)),
            };
            Msg::Ack { epoch, op, outcome }
        }
        KIND_NACK => Msg::Nack {
            epoch: d.u64("epoch")?,
            op: d.u64("op")?,
        },
        KIND_HEARTBEAT => Msg::Heartbeat {
            epoch: d.u64("epoch")?,
            watermark: d.u64("watermark")?,
            sent_ms: d.u64("sent ms")?,
        },
        KIND_HEARTBEAT_ACK => {
            let epoch = d.u64("epoch")?;
            let echo_ms = d.u64("echo ms")?;
            let in_doubt = match d.u8("in-doubt flag")? {
                0 => None,
                1 => Some(decode_keys(&mut d)?),
                other => return Err(DecodeError::BadValue("in-doubt flag", other as u64)),
            };
            Msg::HeartbeatAck {
                epoch,
                in_doubt,
                echo_ms,
            }
        }
        KIND_QUERY => Msg::Query {
            epoch: d.u64("epoch")?,
        },
        KIND_IN_DOUBT => {
            let epoch = d.u64("epoch")?;
            let keys = decode_keys(&mut d)?;
            Msg::InDoubt { epoch, keys }
        }
        KIND_MAP => {
            let map = PgMap {
                epoch: d.u64("epoch")?,
                members: d.u8("members")?,
                placed: d.u8("placed mask")?,
                up_to_date: d.u8("up-to-date mask")?,
                healing: d.u8("healing mask")?,
                min_size: d.u8("min_size")?,
                preferred: d.u8("preferred")?,
                fresh: d.u8("fresh mask")?,
            };
            if !map.is_valid() {
                return Err(DecodeError::BadValue("pg map", map.epoch));
            }
            Msg::Map { map }
        }
        other => {
            return Err(DecodeError::BadValue(
                "replication message kind",
                other as u64,
            ))
        }
    };
    d.finish()?;
    Ok(ReplMessage {
        vol,
        pg,
        from,
        to,
        msg,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(msg: Msg, body: Option<BodyRef<'_>>) {
        let frame = encode_repl((7, 3), 1, 2, &msg, body);
        let payload = &frame[HEADER_BYTES..];
        assert_eq!(repl_pg(payload), Some(3));
        let m = decode_repl(payload).expect("decodes");
        assert_eq!((m.vol, m.pg, m.from, m.to), (7, 3, 1, 2));
        assert_eq!(m.msg, msg);
        assert_eq!(
            m.body.map(|b| (b.op, b.minted, b.payload)),
            body.map(|b| (b.op, b.minted, b.payload.to_vec()))
        );
    }

    #[test]
    fn every_message_kind_roundtrips() {
        let lock = LockKey::range(9 << 48, 4096, 4096);
        let forward = Msg::Forward {
            epoch: 4,
            op: 11,
            lock,
            watermark: 10,
            absent: 0b100,
        };
        roundtrip(
            forward.clone(),
            Some(BodyRef {
                op: BodyOp::Request(op::WRITE),
                minted: 0,
                payload: &[1, 2, 3],
            }),
        );
        roundtrip(
            forward,
            Some(BodyRef {
                op: BodyOp::CatchUp,
                minted: 5,
                payload: &[],
            }),
        );
        for outcome in [Outcome::Ok, Outcome::Refused(17), Outcome::Failed] {
            roundtrip(
                Msg::Ack {
                    epoch: 4,
                    op: 11,
                    outcome,
                },
                None,
            );
        }
        roundtrip(Msg::Nack { epoch: 5, op: 1 }, None);
        roundtrip(
            Msg::Heartbeat {
                epoch: 5,
                watermark: 3,
                sent_ms: 1_234_567,
            },
            None,
        );
        roundtrip(
            Msg::HeartbeatAck {
                epoch: 5,
                in_doubt: None,
                echo_ms: 1_234_567,
            },
            None,
        );
        roundtrip(
            Msg::HeartbeatAck {
                epoch: 5,
                in_doubt: Some(vec![lock, LockKey::NAMESPACE]),
                echo_ms: 0,
            },
            None,
        );
        roundtrip(Msg::Query { epoch: 6 }, None);
        roundtrip(
            Msg::InDoubt {
                epoch: 6,
                keys: vec![lock, LockKey::NAMESPACE, LockKey::whole_file(5)],
            },
            None,
        );
        let map = PgMap {
            epoch: 9,
            members: 3,
            placed: 0b111,
            up_to_date: 0b011,
            healing: 0b100,
            min_size: 2,
            preferred: 1,
            fresh: 0b100,
        };
        roundtrip(Msg::Map { map }, None);
        let invalid = PgMap {
            up_to_date: 0,
            ..map
        };
        let frame = encode_repl((1, 0), 0, 1, &Msg::Map { map: invalid }, None);
        assert!(
            decode_repl(&frame[HEADER_BYTES..]).is_err(),
            "a map nobody is up to date in"
        );
    }

    #[test]
    fn bad_payloads_are_refused_not_trusted() {
        let frame = encode_repl((1, 0), 0, 1, &Msg::Query { epoch: 1 }, None);
        let payload = &frame[HEADER_BYTES..];
        for cut in 0..payload.len() {
            assert!(decode_repl(&payload[..cut]).is_err(), "cut at {cut}");
        }
        let mut same_member = payload.to_vec();
        same_member[9] = 0; // to == from
        assert!(decode_repl(&same_member).is_err());
        let mut unknown = payload.to_vec();
        unknown[10] = 99;
        assert!(decode_repl(&unknown).is_err());
        let mut many = Enc::default();
        many.u32(1)
            .u32(0)
            .u8(0)
            .u8(1)
            .u8(KIND_IN_DOUBT)
            .u64(1)
            .u32(u32::MAX);
        assert!(decode_repl(&many.buf).is_err());
        let mut trailing = payload.to_vec();
        trailing.push(0);
        assert!(decode_repl(&trailing).is_err());
    }
}
