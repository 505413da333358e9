//! The concurrency cap: at most `--max-running-jobs` Jobs run at once, and RecordingJobs beyond it
//! wait in creation order.
//!
//! Reconciles of different RecordingJobs run concurrently and the Job cache lags the API server by
//! a moment, so counting the Jobs in the cache is not enough: two reconciles could both see one free
//! slot. Admission is therefore decided under one lock, and a Job being created holds its slot
//! ("in flight") until the cache shows it. The cache stays the source of truth: reservations are
//! dropped once the Job is seen, and after [`RESERVATION_TTL`] whatever happened.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// How long a reservation for a Job that never showed up in the cache is kept.
pub const RESERVATION_TTL: Duration = Duration::from_secs(60);

/// The place of a RecordingJob in the queue: older first, then by namespace and name, so that
/// RecordingJobs created in the same second still have one order every replica agrees on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueKey {
    pub created: Option<Time>,
    pub namespace: String,
    pub name: String,
}

/// What the reconciler knows when it asks for a slot.
pub struct Census<'a> {
    /// Keys of the Jobs that run now (unfinished, not being deleted), from the cache.
    pub running: Vec<QueueKey>,
    /// RecordingJobs waiting for a slot: no Job yet, not finished, valid.
    pub waiting: &'a [QueueKey],
}

/// Admission under the cap. See the module docs.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    in_flight: Mutex<HashMap<(String, String), Instant>>,
}

/// A slot held for a Job being created. Call [`Slots::release`] if the create fails.
#[derive(Debug)]
pub struct Reservation {
    key: (String, String),
}

impl Slots {
    /// `max` of zero means no cap.
    pub fn new(max: usize) -> Self {
        Slots {
            max,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes a slot for `candidate` if one is free and no older RecordingJob waits for it.
    /// `census` is called under the lock, so it sees every reservation made before.
    pub fn try_admit<'a>(
        &self,
        candidate: &QueueKey,
        census: impl FnOnce() -> Census<'a>,
    ) -> Option<Reservation> {
        let key = (candidate.namespace.clone(), candidate.name.clone());
        if self.max == 0 {
            return Some(Reservation { key });
        }
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let census = census();
        in_flight.retain(|k, since| {
            since.elapsed() < RESERVATION_TTL
                && !census
                    .running
                    .iter()
                    .any(|r| r.namespace == k.0 && r.name == k.1)
        });
        let waiting: Vec<&QueueKey> = census
            .waiting
            .iter()
            .filter(|w| !in_flight.contains_key(&(w.namespace.clone(), w.name.clone())))
            .collect();
        if admits(
            candidate,
            census.running.len() + in_flight.len(),
            &waiting,
            self.max,
        ) {
            in_flight.insert(key.clone(), Instant::now());
            Some(Reservation { key })
        } else {
            None
        }
    }

    /// Gives a slot back (the Job could not be created).
    pub fn release(&self, reservation: Reservation) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        in_flight.remove(&reservation.key);
    }

    /// How many slots are free, counting reservations.
    pub fn free(&self, running: usize) -> usize {
        if self.max == 0 {
            return usize::MAX;
        }
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        self.max.saturating_sub(running + in_flight)
    }
}

/// Whether `candidate` may start: fewer than `max` Jobs are running, and fewer RecordingJobs than
/// there are free slots wait ahead of it.
pub fn admits(candidate: &QueueKey, running: usize, waiting: &[&QueueKey], max: usize) -> bool {
    if max == 0 {
        return true;
    }
    let free = max.saturating_sub(running);
    let ahead = waiting
        .iter()
        .filter(|w| **w < candidate && **w != candidate)
        .count();
    ahead < free
}

/// The first `n` waiting RecordingJobs, in queue order: the ones to wake when slots free up.
pub fn next_in_line(waiting: &mut [QueueKey], n: usize) -> &[QueueKey] {
    waiting.sort();
    &waiting[..n.min(waiting.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(second: i64, name: &str) -> QueueKey {
        QueueKey {
            created: Some(Time(jiff::Timestamp::from_second(second).unwrap())),
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[test]
    fn only_the_oldest_waiting_start_when_slots_free() {
        let waiting = [key(3, "c"), key(1, "a"), key(2, "b"), key(2, "a2")];
        let refs: Vec<&QueueKey> = waiting.iter().collect();
        // (candidate, running, max, admitted)
        let rows = [
            (key(1, "a"), 0, 2, true),
            (key(2, "a2"), 0, 2, true),
            (key(2, "b"), 0, 2, false),
            (key(1, "a"), 2, 2, false),
            (key(2, "a2"), 1, 2, false),
            (key(3, "c"), 0, 0, true),
            (key(3, "c"), 1, 5, true),
        ];
        for (candidate, running, max, admitted) in rows {
            assert_eq!(
                admits(&candidate, running, &refs, max),
                admitted,
                "{candidate:?} with {running} running of {max}"
            );
        }
    }

    #[test]
    fn reservations_hold_slots_until_the_cache_shows_the_job() {
        let slots = Slots::new(2);
        let waiting = [key(1, "a"), key(2, "b"), key(3, "c")];
        let census = || Census {
            running: vec![],
            waiting: &waiting,
        };
        let a = slots.try_admit(&key(1, "a"), census).expect("a starts");
        let _b = slots.try_admit(&key(2, "b"), census).expect("b starts");
        assert!(slots.try_admit(&key(3, "c"), census).is_none(), "cap of 2");
        assert_eq!(slots.free(0), 0);
        slots.release(a);
        // a's create failed: a is still first in line, so c still waits.
        let census_a_waits = || Census {
            running: vec![],
            waiting: &waiting,
        };
        assert!(slots.try_admit(&key(3, "c"), census_a_waits).is_none());
        // a's Job shows up in the cache as running: a's reservation is not double counted.
        let census_seen = || Census {
            running: vec![key(1, "a"), key(2, "b")],
            waiting: &waiting[2..],
        };
        assert!(slots.try_admit(&key(3, "c"), census_seen).is_none());
        let census_b_done = || Census {
            running: vec![key(1, "a")],
            waiting: &waiting[2..],
        };
        assert!(slots.try_admit(&key(3, "c"), census_b_done).is_some());
    }

    #[test]
    fn no_cap_admits_everyone() {
        let slots = Slots::new(0);
        let census = || Census {
            running: vec![key(1, "x"); 100],
            waiting: &[],
        };
        assert!(slots.try_admit(&key(9, "z"), census).is_some());
    }

    #[test]
    fn next_in_line_is_creation_order() {
        let mut waiting = vec![key(3, "c"), key(1, "b"), key(1, "a")];
        let next: Vec<&str> = next_in_line(&mut waiting, 2)
            .iter()
            .map(|k| k.name.as_str())
            .collect();
        assert_eq!(next, ["a", "b"]);
    }
}
