//! Which replica set holds each placement group: a deterministic plan from the current
//! placement and the sets' weights (their capacity) that moves as few PGs as possible.
//!
//! PG 0 is the namespace and lives on every brick; the plan covers PGs 1.. only. Each set's
//! quota is its share of those PGs by weight (largest remainders, ties to the lower set). A PG
//! stays where it is while its set is within quota; the PGs a set holds beyond its quota,
//! and PGs with no set, go to the sets below quota. Which PGs of a set leave, and which set
//! below quota a PG goes to, follow a hash of (PG, set), so that the PGs that move are spread
//! over the PG numbers, and the same inputs always give the same plan.

/// A set's weight: its smallest brick's capacity in bytes (a set is as large as its smallest
/// copy). Weight 0: the set takes no PGs (it is being drained).
pub type Weight = u64;

/// The set each PG (index = PG number) should be on; `plan[0]` is unused (PG 0 is everywhere)
/// and set to 0. `current[pg]` is the set the PG is on now (`None`: no set yet, or a set that
/// no longer exists). At least one weight must be non-zero.
pub fn plan(current: &[Option<usize>], weights: &[Weight]) -> Vec<usize> {
    let pg_count = current.len();
    assert!(weights.iter().any(|&w| w > 0), "no set can take PGs");
    let quotas = quotas(pg_count.saturating_sub(1), weights);
    let mut plan = vec![usize::MAX; pg_count];
    let mut held = vec![0usize; weights.len()];
    // PGs already placed, each set's in hash order: the first `quota` stay.
    let mut order: Vec<usize> = (1..pg_count).collect();
    order.sort_by_key(|&pg| (score(pg, current[pg].unwrap_or(0)), pg));
    for &pg in &order {
        if let Some(set) = current[pg].filter(|&s| s < weights.len()) {
            if held[set] < quotas[set] {
                plan[pg] = set;
                held[set] += 1;
            }
        }
    }
    for &pg in &order {
        if plan[pg] != usize::MAX {
            continue;
        }
        let set = (0..weights.len())
            .filter(|&s| held[s] < quotas[s])
            .max_by_key(|&s| (quotas[s] - held[s], score(pg, s)))
            .expect("quotas add up to the PGs placed");
        plan[pg] = set;
        held[set] += 1;
    }
    if pg_count > 0 {
        plan[0] = 0;
    }
    plan
}

/// PGs per set, proportional to the weights, adding up to `pgs`.
fn quotas(pgs: usize, weights: &[Weight]) -> Vec<usize> {
    let total: u128 = weights.iter().map(|&w| w as u128).sum();
    let exact: Vec<u128> = weights.iter().map(|&w| pgs as u128 * w as u128).collect();
    let mut q: Vec<usize> = exact.iter().map(|&e| (e / total) as usize).collect();
    let mut left = pgs - q.iter().sum::<usize>();
    let mut by_remainder: Vec<usize> = (0..weights.len()).filter(|&s| weights[s] > 0).collect();
    by_remainder.sort_by_key(|&s| (std::cmp::Reverse(exact[s] % total), s));
    for &s in by_remainder.iter().cycle() {
        if left == 0 {
            break;
        }
        q[s] += 1;
        left -= 1;
    }
    q
}

/// A fixed pseudo-random rank of PG `pg` for set `set` (FNV-1a of both).
fn score(pg: usize, set: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in (pg as u64)
        .to_le_bytes()
        .iter()
        .chain((set as u64).to_le_bytes().iter())
    {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(plan: &[usize], sets: usize) -> Vec<usize> {
        let mut c = vec![0; sets];
        for &s in &plan[1..] {
            c[s] += 1;
        }
        c
    }

    #[test]
    fn a_new_set_takes_its_share_and_only_that_moves() {
        let first = plan(&vec![None; 257], &[1, 1]);
        assert_eq!(counts(&first, 2), vec![128, 128]);
        let current: Vec<Option<usize>> = first.iter().map(|&s| Some(s)).collect();
        let grown = plan(&current, &[1, 1, 1]);
        let c = counts(&grown, 3);
        assert!(c.iter().all(|&n| (85..=86).contains(&n)), "{c:?}");
        let moved = (1..257).filter(|&pg| grown[pg] != first[pg]).count();
        assert_eq!(moved, c[2], "only the PGs the new set takes move");
        assert_eq!(plan(&current, &[1, 1, 1]), grown, "deterministic");
        // The moved PGs are spread over the numbers, not a block.
        let to_new: Vec<usize> = (1..257).filter(|&pg| grown[pg] == 2).collect();
        assert!(to_new.first() < Some(&20) && to_new.last() > Some(&230));
    }

    #[test]
    fn weights_follow_capacity_and_a_drained_set_empties() {
        let p = plan(&vec![None; 301], &[100, 200]);
        assert_eq!(counts(&p, 2), vec![100, 200]);
        let current: Vec<Option<usize>> = p.iter().map(|&s| Some(s)).collect();
        let drained = plan(&current, &[100, 0]);
        assert_eq!(counts(&drained, 2), vec![300, 0]);
        let moved = (1..301).filter(|&pg| drained[pg] != p[pg]).count();
        assert_eq!(moved, 200);
    }
}
