//! The placement-group map: which members of a replica set hold every acknowledged write (up to
//! date) and which one is the primary, numbered by an epoch that only ever grows.

use serde::{Deserialize, Serialize};

/// The position of a brick in its replica set.
pub type Member = u8;
pub type Epoch = u64;

/// Replica sets hold at most this many members (the members are a bit mask).
pub const MEMBERS_MAX: u8 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "PgMapDoc")]
pub struct PgMap {
    pub epoch: Epoch,
    /// Member slots: a member is a brick of the volume by its position in the volume's brick
    /// list, so this is at least one more than the highest member in `placed`.
    pub members: u8,
    /// Bit i set: member i holds (or, when fresh, is being given) this PG. A PG lives on one
    /// replica set, or on two while it moves from one to the other; PG 0, the namespace, is
    /// on every brick. Every other mask is a subset of this one.
    pub placed: u8,
    /// Bit i set: member i holds every acknowledged write and takes part in new ones.
    /// A member whose bit is clear is absent: it missed writes and needs healing.
    pub up_to_date: u8,
    /// Bit i set: member i came back and is being healed. It receives every operation started
    /// since it joined (so it accumulates no new dirt) but is neither read from nor counted
    /// for `min_size` until the heal finishes and it moves to `up_to_date`.
    #[serde(default)]
    pub healing: u8,
    /// The PG refuses writes while fewer members than this are up to date.
    pub min_size: u8,
    /// The member asked to be primary while it is up to date (spreads primaries over a set).
    pub preferred: Member,
    /// Bit i set: member i is a new brick (`volume replace-brick`) that holds nothing yet.
    /// Every up-to-date member records everything as missed for it (a full heal through the
    /// same machinery); the bit clears when it becomes up to date.
    #[serde(default)]
    pub fresh: u8,
}

/// The stored form: maps written before volumes had several replica sets have no `placed`
/// (every member slot holds the PG).
#[derive(Deserialize)]
struct PgMapDoc {
    epoch: Epoch,
    members: u8,
    #[serde(default)]
    placed: u8,
    up_to_date: u8,
    #[serde(default)]
    healing: u8,
    min_size: u8,
    preferred: Member,
    #[serde(default)]
    fresh: u8,
}

impl From<PgMapDoc> for PgMap {
    fn from(d: PgMapDoc) -> PgMap {
        PgMap {
            epoch: d.epoch,
            members: d.members,
            placed: if d.placed == 0 {
                mask_of(d.members)
            } else {
                d.placed
            },
            up_to_date: d.up_to_date,
            healing: d.healing,
            min_size: d.min_size,
            preferred: d.preferred,
            fresh: d.fresh,
        }
    }
}

impl PgMap {
    /// The first map of a PG held by every one of `members` slots: every member up to date.
    pub fn initial(members: u8, min_size: u8, preferred: Member) -> PgMap {
        assert!((1..=MEMBERS_MAX).contains(&members));
        PgMap::initial_on(mask_of(members), min_size, preferred)
    }

    /// The first map of a PG held by the members in `placed`, every one up to date; the
    /// primary is the `preferred`-th of them (counted modulo their number).
    pub fn initial_on(placed: u8, min_size: u8, preferred: u8) -> PgMap {
        let count = placed.count_ones() as u8;
        assert!(count >= 1);
        assert!((1..=count).contains(&min_size));
        PgMap {
            epoch: 1,
            members: slots_of(placed),
            placed,
            up_to_date: placed,
            healing: 0,
            min_size,
            preferred: nth_member(placed, preferred % count),
            fresh: 0,
        }
    }

    pub fn is_valid(&self) -> bool {
        self.members >= 1
            && self.members <= MEMBERS_MAX
            && self.placed & !mask_of(self.members) == 0
            && self.min_size >= 1
            && self.min_size as u32 <= self.placed.count_ones()
            && self.preferred < self.members
            && self.placed & (1 << self.preferred) != 0
            && self.up_to_date & !self.placed == 0
            && self.healing & !self.placed == 0
            && self.healing & self.up_to_date == 0
            && self.fresh & !self.placed == 0
            && self.fresh & self.up_to_date == 0
            && self.up_to_date != 0
    }

    /// The members that hold the PG (or are being given it).
    pub fn all(&self) -> u8 {
        self.placed
    }

    pub fn is_placed(&self, m: Member) -> bool {
        m < self.members && self.placed & (1 << m) != 0
    }

    pub fn is_up_to_date(&self, m: Member) -> bool {
        m < self.members && self.up_to_date & (1 << m) != 0
    }

    pub fn is_healing(&self, m: Member) -> bool {
        m < self.members && self.healing & (1 << m) != 0
    }

    /// The next map with the members in `to` (none of them placed yet) added as fresh: they
    /// get the PG by a full heal while the present members keep serving it.
    pub fn with_added(&self, to: u8) -> Option<PgMap> {
        if to == 0 || to & self.placed != 0 || slots_of(self.placed | to) > MEMBERS_MAX {
            return None;
        }
        Some(PgMap {
            epoch: self.epoch + 1,
            members: self.members.max(slots_of(self.placed | to)),
            placed: self.placed | to,
            fresh: self.fresh | to,
            ..*self
        })
    }

    /// The next map without the members in `from`: the PG then lives on the others alone.
    /// `None` unless every other placed member is up to date (nothing of the PG is then only
    /// on the members that go) and at least `min_size` of them remain.
    pub fn with_removed(&self, from: u8) -> Option<PgMap> {
        let rest = self.placed & !from;
        if from & self.placed != from
            || from == 0
            || rest == 0
            || self.up_to_date & rest != rest
            || (rest.count_ones() as u8) < self.min_size
        {
            return None;
        }
        let count = rest.count_ones() as u8;
        // Primaries stay spread over the set: the same position in the new set.
        let position = self.preferred_position() % count;
        Some(PgMap {
            epoch: self.epoch + 1,
            placed: rest,
            up_to_date: rest,
            healing: 0,
            fresh: 0,
            preferred: nth_member(rest, position),
            ..*self
        })
    }

    /// The position of `preferred` among the placed members.
    fn preferred_position(&self) -> u8 {
        (self.placed & ((1u16 << self.preferred) as u8).wrapping_sub(1)).count_ones() as u8
    }

    /// Members that take part in new operations: the up-to-date ones and those being healed.
    pub fn receivers(&self) -> u8 {
        self.up_to_date | self.healing
    }

    pub fn up_to_date_count(&self) -> u8 {
        self.up_to_date.count_ones() as u8
    }

    /// Whether member `m` holds the only up-to-date copy.
    pub fn is_last_copy(&self, m: Member) -> bool {
        self.is_up_to_date(m) && self.up_to_date_count() == 1
    }

    /// The primary: the first up-to-date member at or after `preferred` (in slot order).
    pub fn primary(&self) -> Option<Member> {
        (0..self.members)
            .map(|i| (self.preferred + i) % self.members)
            .find(|&m| self.is_up_to_date(m))
    }

    pub fn writable(&self) -> bool {
        self.up_to_date_count() >= self.min_size
    }

    /// Members that are up to date, in member order.
    pub fn acting(&self) -> impl Iterator<Item = Member> + '_ {
        (0..self.members).filter(|&m| self.is_up_to_date(m))
    }

    /// Bit mask of the absent members (what a write made now must be remembered for).
    pub fn absent(&self) -> u8 {
        self.placed & !self.receivers()
    }

    /// The next map without the members in `gone` (up to date or healing); `None` if nobody
    /// up to date would be left or nothing changes.
    pub fn without(&self, gone: u8) -> Option<PgMap> {
        let up_to_date = self.up_to_date & !gone;
        let healing = self.healing & !gone;
        if up_to_date == 0 || (up_to_date == self.up_to_date && healing == self.healing) {
            return None;
        }
        Some(PgMap {
            epoch: self.epoch + 1,
            up_to_date,
            healing,
            ..*self
        })
    }

    /// The next map with absent member `m` being healed.
    pub fn with_healing(&self, m: Member) -> Option<PgMap> {
        if !self.is_placed(m) || self.absent() & (1 << m) == 0 {
            return None;
        }
        Some(PgMap {
            epoch: self.epoch + 1,
            healing: self.healing | (1 << m),
            ..*self
        })
    }

    /// The next map with healing member `m` up to date again.
    pub fn with_healed(&self, m: Member) -> Option<PgMap> {
        if !self.is_healing(m) {
            return None;
        }
        Some(PgMap {
            epoch: self.epoch + 1,
            healing: self.healing & !(1 << m),
            up_to_date: self.up_to_date | (1 << m),
            fresh: self.fresh & !(1 << m),
            ..*self
        })
    }

    /// The next map once member `m`'s brick is replaced by an empty one: absent and fresh.
    /// `None` if `m` holds the last up-to-date copy.
    pub fn with_replaced(&self, m: Member) -> Option<PgMap> {
        if !self.is_placed(m) {
            return None;
        }
        let bit = 1 << m;
        let up_to_date = self.up_to_date & !bit;
        if up_to_date == 0 {
            return None;
        }
        Some(PgMap {
            epoch: self.epoch + 1,
            up_to_date,
            healing: self.healing & !bit,
            fresh: self.fresh | bit,
            ..*self
        })
    }
}

/// Member slots needed for the members in `mask`.
pub fn slots_of(mask: u8) -> u8 {
    8 - mask.leading_zeros() as u8
}

/// The `n`-th member (from 0) of `mask`, in slot order; the highest one if `n` is too large.
pub fn nth_member(mask: u8, n: u8) -> Member {
    let mut left = n;
    let mut last = 0;
    for m in 0..MEMBERS_MAX {
        if mask & (1 << m) != 0 {
            if left == 0 {
                return m;
            }
            left -= 1;
            last = m;
        }
    }
    last
}

pub fn mask_of(members: u8) -> u8 {
    if members >= 8 {
        0xff
    } else {
        (1u8 << members) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_member_is_fresh_until_healed() {
        let m = PgMap::initial(2, 1, 1);
        let r = m.with_replaced(1).unwrap();
        assert_eq!((r.epoch, r.up_to_date, r.fresh), (2, 0b01, 0b10));
        assert_eq!(r.primary(), Some(0));
        assert!(r.is_valid());
        assert!(
            r.with_replaced(0).is_none(),
            "the last up-to-date copy stays"
        );
        assert!(r.with_replaced(2).is_none());
        let healed = r.with_healing(1).unwrap().with_healed(1).unwrap();
        assert_eq!((healed.up_to_date, healed.fresh), (0b11, 0));
        assert!(
            !PgMap { fresh: 0b01, ..r }.is_valid(),
            "fresh and up to date"
        );
    }

    #[test]
    fn a_move_adds_fresh_members_and_removes_the_old_ones_once_they_are_up_to_date() {
        let m = PgMap::initial_on(0b0000_1100, 1, 1);
        assert_eq!((m.members, m.preferred, m.primary()), (4, 3, Some(3)));
        let moving = m.with_added(0b0011_0000).unwrap();
        assert!(moving.is_valid());
        assert_eq!(
            (moving.members, moving.fresh, moving.absent()),
            (6, 0b11_0000, 0b11_0000)
        );
        assert!(m.with_added(0b0000_0100).is_none(), "already placed");
        assert!(
            moving.with_removed(0b1100).is_none(),
            "the new set holds nothing yet"
        );
        let healed = moving
            .with_healing(4)
            .and_then(|h| h.with_healed(4))
            .and_then(|h| h.with_healing(5))
            .and_then(|h| h.with_healed(5))
            .unwrap();
        let moved = healed.with_removed(0b1100).unwrap();
        assert!(moved.is_valid());
        assert_eq!(
            (moved.placed, moved.up_to_date, moved.fresh),
            (0b11_0000, 0b11_0000, 0)
        );
        assert_eq!(moved.preferred, 5, "the same position in the new set");
        assert!(
            moved.with_removed(0b11_0000).is_none(),
            "nothing would hold it"
        );
        let doc = serde_json::json!({"epoch": 3, "members": 2, "up_to_date": 3, "min_size": 1,
            "preferred": 0});
        let old: PgMap = serde_json::from_value(doc).unwrap();
        assert_eq!(
            old.placed, 0b11,
            "a map from before placement holds every slot"
        );
    }

    #[test]
    fn primary_rotates_and_skips_absent_members() {
        let m = PgMap::initial(3, 2, 1);
        assert_eq!(m.primary(), Some(1));
        let m2 = m.without(0b010).unwrap();
        assert_eq!(m2.epoch, 2);
        assert_eq!(m2.primary(), Some(2));
        assert!(m2.writable());
        let m3 = m2.without(0b100).unwrap();
        assert_eq!(m3.primary(), Some(0));
        assert!(!m3.writable());
        assert!(m3.without(0b001).is_none(), "never remove the last member");
        assert_eq!(m3.absent(), 0b110);
        assert!(m3.is_valid());
        let m4 = m3.with_healing(1).unwrap();
        assert_eq!((m4.epoch, m4.absent(), m4.receivers()), (4, 0b100, 0b011));
        assert!(
            !m4.writable(),
            "a healing member does not count for min_size"
        );
        assert_eq!(m4.primary(), Some(0), "nor can it be primary");
        assert!(m4.with_healing(1).is_none());
        assert!(m4.is_valid());
        let m5 = m4.with_healed(1).unwrap();
        assert!(m5.writable() && m5.healing == 0 && m5.is_up_to_date(1));
        let m6 = m4.without(0b010).unwrap();
        assert_eq!((m6.healing, m6.up_to_date), (0, 0b001));
    }
}
