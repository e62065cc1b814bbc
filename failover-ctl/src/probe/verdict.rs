//! The rise/fall verdict: a pure state machine that turns a stream of probe results into up/down transitions.
//!
//! A backend starts `Down` and needs `rise` consecutive successes to become `Up`; an `Up` backend
//! needs `fall` consecutive failures to become `Down`. A single result in the other direction resets
//! the streak, so a flapping backend whose streaks stay shorter than the thresholds never changes
//! state.
//!
//! Why start `Down` rather than `Up` or a third `Unknown` state: the controller must never steer
//! traffic to a backend that has not answered, so a freshly added backend earns its place with
//! `rise` successes (keepalived's `alpha` mode and HAProxy's `init-state down` take the same view).
//! An `Unknown` state would force every consumer to decide what unknown means for the data plane;
//! with two states that decision is made here, once. The first `Down -> Up` transition is reported
//! like any other, so the owner learns when a new backend becomes usable.

use std::time::Duration;

use rand::Rng;

/// Errors building [`Thresholds`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ThresholdsError {
    /// A zero threshold would make a transition happen without any evidence.
    #[error("health check thresholds must be at least 1 (rise {rise}, fall {fall})")]
    Zero { rise: u32, fall: u32 },
}

/// How many consecutive results change the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    rise: u32,
    fall: u32,
}

impl Thresholds {
    /// `rise` consecutive successes bring a backend up, `fall` consecutive failures take it down.
    pub fn new(rise: u32, fall: u32) -> Result<Self, ThresholdsError> {
        if rise == 0 || fall == 0 {
            return Err(ThresholdsError::Zero { rise, fall });
        }
        Ok(Self { rise, fall })
    }

    pub fn rise(&self) -> u32 {
        self.rise
    }

    pub fn fall(&self) -> u32 {
        self.fall
    }
}

impl Default for Thresholds {
    /// HAProxy's defaults: rise 2, fall 3.
    fn default() -> Self {
        Self { rise: 2, fall: 3 }
    }
}

/// The health of one backend as seen by its probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    Up,
    Down,
}

/// A change of [`Health`], reported once when it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: Health,
    pub to: Health,
}

/// The verdict on one backend: its health and the current streak of results against it.
#[derive(Debug, Clone)]
pub struct Verdict {
    thresholds: Thresholds,
    health: Health,
    /// Consecutive results that contradict `health`.
    streak: u32,
}

impl Verdict {
    /// A verdict starting `Down` (see the module documentation for why).
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            health: Health::Down,
            streak: 0,
        }
    }

    /// A verdict starting at a known `health`: a restarted controller continues from the
    /// health bits it finds in the maps instead of failing every backend over.
    pub fn starting(thresholds: Thresholds, health: Health) -> Self {
        Self {
            thresholds,
            health,
            streak: 0,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Feeds one probe result; returns a transition only when the health changes.
    pub fn observe(&mut self, success: bool) -> Option<Transition> {
        let agrees = match self.health {
            Health::Up => success,
            Health::Down => !success,
        };
        if agrees {
            self.streak = 0;
            return None;
        }
        self.streak = self.streak.saturating_add(1);
        let (needed, next) = match self.health {
            Health::Down => (self.thresholds.rise, Health::Up),
            Health::Up => (self.thresholds.fall, Health::Down),
        };
        if self.streak < needed {
            return None;
        }
        let transition = Transition {
            from: self.health,
            to: next,
        };
        self.health = next;
        self.streak = 0;
        Some(transition)
    }
}

/// The delay before the next probe: uniform in `[interval * (1 - jitter), interval * (1 + jitter)]`.
///
/// Jitter keeps probes of many backends from firing in lockstep after a restart. `jitter` is a
/// fraction clamped to `[0, 1]`; a non-finite value counts as no jitter.
pub fn next_delay<R: Rng + ?Sized>(interval: Duration, jitter: f64, rng: &mut R) -> Duration {
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    if jitter == 0.0 {
        return interval;
    }
    let factor = rng.random_range((1.0 - jitter)..=(1.0 + jitter));
    interval.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    /// Replays `results` and returns the index of every transition with its target.
    fn replay(thresholds: Thresholds, results: &[bool]) -> Vec<(usize, Health)> {
        let mut verdict = Verdict::new(thresholds);
        results
            .iter()
            .enumerate()
            .filter_map(|(index, &success)| verdict.observe(success).map(|t| (index, t.to)))
            .collect()
    }

    fn parse(pattern: &str) -> Vec<bool> {
        pattern.chars().map(|c| c == '+').collect()
    }

    #[test]
    fn zero_threshold_is_rejected() {
        assert_eq!(
            Thresholds::new(0, 3),
            Err(ThresholdsError::Zero { rise: 0, fall: 3 })
        );
        assert!(Thresholds::new(2, 0).is_err());
    }

    #[test]
    fn starts_down() {
        let verdict = Verdict::new(Thresholds::default());
        assert_eq!(verdict.health(), Health::Down);
    }

    #[test]
    fn flapping_below_rise_never_comes_up() {
        let thresholds = Thresholds::new(2, 3).unwrap();
        assert_eq!(replay(thresholds, &parse("+-+-+-+-+-+--+-")), vec![]);
    }

    #[test]
    fn flapping_below_fall_never_goes_down() {
        let thresholds = Thresholds::new(2, 3).unwrap();
        // Up at index 1, then failure streaks of at most 2 never reach fall 3.
        let results = parse("++--+--+-+--++-");
        assert_eq!(replay(thresholds, &results), vec![(1, Health::Up)]);
    }

    #[test]
    fn haproxy_defaults_transition_points() {
        let thresholds = Thresholds::new(2, 3).unwrap();
        //                     0123456789012
        let results = parse("-+-++++---+++");
        assert_eq!(
            replay(thresholds, &results),
            vec![(4, Health::Up), (9, Health::Down), (11, Health::Up)]
        );
    }

    #[test]
    fn rise_one_fall_one_follows_every_change() {
        let thresholds = Thresholds::new(1, 1).unwrap();
        //                     012345
        let results = parse("-++-+-");
        assert_eq!(
            replay(thresholds, &results),
            vec![
                (1, Health::Up),
                (3, Health::Down),
                (4, Health::Up),
                (5, Health::Down)
            ]
        );
    }

    #[test]
    fn transition_names_both_states() {
        let mut verdict = Verdict::new(Thresholds::new(1, 1).unwrap());
        assert_eq!(
            verdict.observe(true),
            Some(Transition {
                from: Health::Down,
                to: Health::Up
            })
        );
        assert_eq!(verdict.observe(true), None);
    }

    #[test]
    fn jitter_stays_in_bounds_and_centres_on_interval() {
        let interval = Duration::from_millis(1000);
        let jitter = 0.2;
        let mut rng = StdRng::seed_from_u64(7);
        let draws = 10_000u32;
        let mut total = Duration::ZERO;
        for _ in 0..draws {
            let delay = next_delay(interval, jitter, &mut rng);
            assert!(delay >= Duration::from_millis(800), "{delay:?}");
            assert!(delay <= Duration::from_millis(1200), "{delay:?}");
            total += delay;
        }
        let mean = total / draws;
        let error = mean.as_secs_f64() / interval.as_secs_f64() - 1.0;
        assert!(error.abs() < 0.02, "mean {mean:?}");
    }

    #[test]
    fn no_jitter_gives_the_interval() {
        let mut rng = StdRng::seed_from_u64(1);
        let interval = Duration::from_millis(250);
        assert_eq!(next_delay(interval, 0.0, &mut rng), interval);
        assert_eq!(next_delay(interval, f64::NAN, &mut rng), interval);
    }
}
