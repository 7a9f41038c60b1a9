//! The placement-group map: which members of a replica set hold every acknowledged write (up to
//! date) and which one is the primary, numbered by an epoch that only ever grows.

use serde::{Deserialize, Serialize};

/// The position of a brick in its replica set.
pub type Member = u8;
pub type Epoch = u64;

/// Replica sets hold at most this many members (the members are a bit mask).
pub const MEMBERS_MAX: u8 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgMap {
    pub epoch: Epoch,
    /// Members of the replica set (R).
    pub members: u8,
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

impl PgMap {
    /// The first map of a PG: every member up to date.
    pub fn initial(members: u8, min_size: u8, preferred: Member) -> PgMap {
        assert!((1..=MEMBERS_MAX).contains(&members));
        assert!((1..=members).contains(&min_size));
        PgMap {
            epoch: 1,
            members,
            up_to_date: mask_of(members),
            healing: 0,
            min_size,
            preferred: preferred % members,
            fresh: 0,
        }
    }

    pub fn is_valid(&self) -> bool {
        self.members >= 1
            && self.members <= MEMBERS_MAX
            && self.min_size >= 1
            && self.min_size <= self.members
            && self.preferred < self.members
            && self.up_to_date & !mask_of(self.members) == 0
            && self.healing & !mask_of(self.members) == 0
            && self.healing & self.up_to_date == 0
            && self.fresh & !mask_of(self.members) == 0
            && self.fresh & self.up_to_date == 0
            && self.up_to_date != 0
    }

    pub fn is_up_to_date(&self, m: Member) -> bool {
        m < self.members && self.up_to_date & (1 << m) != 0
    }

    pub fn is_healing(&self, m: Member) -> bool {
        m < self.members && self.healing & (1 << m) != 0
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

    /// The primary: the first up-to-date member at or after `preferred`.
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
        mask_of(self.members) & !self.receivers()
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
        if m >= self.members || self.absent() & (1 << m) == 0 {
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
        if m >= self.members {
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
