//! One step of a rolling update, as a pure function of the replica counts: how many new
//! replicas to start and how many ready old ones may stop, within `max_surge` and
//! `max_unavailable` (Kubernetes' rules). The supervisor applies it each time a replica changes
//! state.

/// Replica counts of the two generations. "Alive" is starting, ready, or waiting to restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub desired: u32,
    pub surge: u32,
    pub unavailable: u32,
    pub old_alive: u32,
    pub old_ready: u32,
    pub new_alive: u32,
    pub new_ready: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// New replicas to start now.
    pub start: u32,
    /// Ready old replicas that may stop now (old ones not ready may always stop).
    pub stop_ready: u32,
}

pub fn step(c: Counts) -> Step {
    // Start new replicas while the total stays within desired + max_surge.
    let room = (c.desired + c.surge).saturating_sub(c.old_alive + c.new_alive);
    let start = room.min(c.desired.saturating_sub(c.new_alive));
    // Stop old ones while at least desired − max_unavailable replicas stay ready.
    let min_available = c.desired.saturating_sub(c.unavailable);
    let stop_ready = (c.old_ready + c.new_ready).saturating_sub(min_available);
    Step { start, stop_ready }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(
        desired: u32,
        surge: u32,
        unavailable: u32,
        old: (u32, u32),
        new: (u32, u32),
    ) -> Counts {
        Counts {
            desired,
            surge,
            unavailable,
            old_alive: old.0,
            old_ready: old.1,
            new_alive: new.0,
            new_ready: new.1,
        }
    }

    /// Drives a whole rollout the way the supervisor does (new replicas become ready one step
    /// after they start; old ones stop at once) and checks the invariants at every step.
    fn simulate(desired: u32, surge: u32, unavailable: u32) -> u32 {
        let (mut old, mut new_ready, mut new_starting) = (desired, 0u32, 0u32);
        for steps in 1..100 {
            // What started in the previous step is ready now.
            new_ready += std::mem::take(&mut new_starting);
            if new_ready >= desired {
                return steps;
            }
            let s = step(counts(
                desired,
                surge,
                unavailable,
                (old, old),
                (new_ready + new_starting, new_ready),
            ));
            new_starting += s.start;
            old -= old.min(s.stop_ready);
            assert!(
                old + new_ready + new_starting <= desired + surge,
                "surge exceeded"
            );
            assert!(
                old + new_ready >= desired.saturating_sub(unavailable),
                "too few ready: old {old} new {new_ready}"
            );
        }
        panic!("rollout of {desired} (surge {surge}, unavailable {unavailable}) never ends");
    }

    #[test]
    fn table() {
        // (desired, surge, unavailable, (old alive, old ready), (new alive, new ready)) → step
        let cases = [
            // Defaults for 1 replica: surge 1, unavailable 0: start one, stop nothing yet.
            ((1, 1, 0, (1, 1), (0, 0)), (1, 0)),
            // Its new replica is ready: the old one may go.
            ((1, 1, 0, (1, 1), (1, 1)), (0, 1)),
            // No surge, one unavailable: stop an old one first, start nothing.
            ((2, 0, 1, (2, 2), (0, 0)), (0, 1)),
            // ... then start one in its place.
            ((2, 0, 1, (1, 1), (0, 0)), (1, 0)),
            // 4 replicas, 25%/25%: one extra, one may be missing.
            ((4, 1, 1, (4, 4), (0, 0)), (1, 1)),
            // Surge 100%: all new at once, old stay until new are ready.
            ((3, 3, 0, (3, 3), (0, 0)), (3, 0)),
            ((3, 3, 0, (3, 3), (3, 2)), (0, 2)),
        ];
        for ((d, s, u, old, new), (start, stop)) in cases {
            let got = step(counts(d, s, u, old, new));
            assert_eq!(
                (got.start, got.stop_ready),
                (start, stop),
                "{d} {s} {u} {old:?} {new:?}"
            );
        }
    }

    #[test]
    fn every_strategy_finishes_within_its_bounds() {
        for desired in 1..8 {
            for surge in 0..4 {
                for unavailable in 0..4 {
                    if surge == 0 && unavailable == 0 {
                        continue; // refused by the spec
                    }
                    simulate(desired, surge, unavailable.min(desired));
                }
            }
        }
    }
}
