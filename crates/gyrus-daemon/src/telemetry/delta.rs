//! What a replica counted between two of its reports: the difference of two cumulative
//! reports, where a count that went down means the replica started over (all of it is new).

use std::collections::{BTreeMap, BTreeSet};

use gyrus_launch::telemetry::{
    HistogramSnapshot, RejectReason, RequestStats, Route, MAX_TRACKED_CLASSES, OTHER_CLASS,
};
use gyrus_launch::ModelStats;

#[derive(Debug, Default, PartialEq)]
pub(super) struct Delta {
    pub routes: Vec<RouteDelta>,
    pub rejected: BTreeMap<RejectReason, u64>,
    pub worker: HistogramSnapshot,
    pub models: Vec<ModelDelta>,
    pub classes: BTreeMap<String, u64>,
    /// Regression values: (bucket, count, sum).
    pub values: Vec<(i32, u64, f64)>,
    pub invalid: u64,
}

#[derive(Debug, PartialEq)]
pub(super) struct RouteDelta {
    pub route: Route,
    pub answered: u64,
    pub client_errors: u64,
    pub server_errors: u64,
    pub latency: HistogramSnapshot,
}

#[derive(Debug, PartialEq)]
pub(super) struct ModelDelta {
    pub model: String,
    pub requests: u64,
    pub run_seconds: HistogramSnapshot,
    pub queue_seconds: HistogramSnapshot,
    pub batch_rows: HistogramSnapshot,
}

fn diff(now: u64, before: u64) -> u64 {
    if now >= before {
        now - before
    } else {
        now
    }
}

impl Delta {
    pub(super) fn between(
        before_models: &[ModelStats],
        before: Option<&RequestStats>,
        models: &[ModelStats],
        now: &RequestStats,
    ) -> Delta {
        let empty = RequestStats::default();
        let before = before.unwrap_or(&empty);
        let mut d = Delta::default();
        for r in &now.routes {
            let prev = before.routes.iter().find(|p| p.route == r.route);
            d.routes.push(RouteDelta {
                route: r.route,
                answered: diff(r.answered, prev.map_or(0, |p| p.answered)),
                client_errors: diff(r.client_errors, prev.map_or(0, |p| p.client_errors)),
                server_errors: diff(r.server_errors, prev.map_or(0, |p| p.server_errors)),
                latency: prev.map_or(r.latency.clone(), |p| r.latency.since(&p.latency)),
            });
        }
        for (reason, n) in &now.rejected {
            let new = diff(*n, before.rejected.get(reason).copied().unwrap_or(0));
            if new > 0 {
                *d.rejected.entry(*reason).or_default() += new;
            }
        }
        if let Some(w) = &now.worker {
            d.worker = match &before.worker {
                Some(p) => w.since(p),
                None => w.clone(),
            };
        }
        for m in models {
            let prev = before_models.iter().find(|p| p.model == m.model);
            let since = |now: &HistogramSnapshot, f: fn(&ModelStats) -> &HistogramSnapshot| {
                prev.map_or(now.clone(), |p| now.since(f(p)))
            };
            let shed_full = diff(m.shed_queue_full, prev.map_or(0, |p| p.shed_queue_full));
            let shed_late = diff(m.shed_deadline, prev.map_or(0, |p| p.shed_deadline));
            if shed_full > 0 {
                *d.rejected.entry(RejectReason::QueueFull).or_default() += shed_full;
            }
            if shed_late > 0 {
                *d.rejected.entry(RejectReason::Deadline).or_default() += shed_late;
            }
            d.models.push(ModelDelta {
                model: m.model.clone(),
                requests: diff(m.requests, prev.map_or(0, |p| p.requests)),
                run_seconds: since(&m.run_seconds, |p| &p.run_seconds),
                queue_seconds: since(&m.queue_seconds, |p| &p.queue_seconds),
                batch_rows: since(&m.batch_rows, |p| &p.batch_rows),
            });
        }
        if let Some(t) = &now.tracker {
            let prev = before.tracker.as_ref();
            for (class, n) in &t.classes {
                let old = prev
                    .and_then(|p| p.classes.get(class))
                    .copied()
                    .unwrap_or(0);
                let new = diff(*n, old);
                if new > 0 {
                    d.classes.insert(class.clone(), new);
                }
            }
            d.invalid = diff(t.invalid, prev.map_or(0, |p| p.invalid));
            for &(bucket, count, sum) in &t.values {
                let old = prev
                    .and_then(|p| p.values.iter().find(|v| v.0 == bucket))
                    .map_or((0, 0.0), |v| (v.1, v.2));
                let (count, sum) = if count >= old.0 {
                    (count - old.0, sum - old.1)
                } else {
                    (count, sum)
                };
                if count > 0 {
                    d.values.push((bucket, count, sum));
                }
            }
        }
        d
    }

    /// Holds the API's tracker classes to [`MAX_TRACKED_CLASSES`] across its replicas: a class
    /// not yet known once the set is full is counted as [`OTHER_CLASS`].
    pub(super) fn cap_classes(&mut self, known: &mut BTreeSet<String>) {
        let mut capped = BTreeMap::new();
        for (class, n) in std::mem::take(&mut self.classes) {
            let name = if known.contains(&class) {
                class
            } else if known.len() < MAX_TRACKED_CLASSES || class == OTHER_CLASS {
                known.insert(class.clone());
                class
            } else {
                known.insert(OTHER_CLASS.to_string());
                OTHER_CLASS.to_string()
            };
            *capped.entry(name).or_default() += n;
        }
        self.classes = capped;
    }

    /// Requests to the model routes (predict and infer): answered, 5xx, and their latency.
    pub(super) fn model_traffic(&self) -> (u64, u64, HistogramSnapshot) {
        let mut latency = HistogramSnapshot::default();
        let (mut requests, mut errors) = (0, 0);
        for r in self
            .routes
            .iter()
            .filter(|r| matches!(r.route, Route::Predict | Route::Infer))
        {
            requests += r.answered + r.client_errors + r.server_errors;
            errors += r.server_errors;
            latency.add(&r.latency);
        }
        (requests, errors, latency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gyrus_launch::telemetry::{Tally, TrackerStats};
    use std::time::Duration;

    #[test]
    fn differences_of_two_reports_and_of_a_restart() {
        let t = Tally::default();
        t.request(Route::Predict, 200, Duration::from_micros(300));
        t.rejected(RejectReason::ConcurrencyLimit);
        let first = t.snapshot();
        t.request(Route::Predict, 200, Duration::from_micros(300));
        t.request(Route::Predict, 500, Duration::from_millis(3));
        t.request(Route::Infer, 400, Duration::from_micros(50));
        let second = t.snapshot();
        let d = Delta::between(&[], Some(&first), &[], &second);
        let predict = &d.routes[0];
        assert_eq!(
            (
                predict.answered,
                predict.server_errors,
                predict.latency.count()
            ),
            (1, 1, 2)
        );
        assert_eq!(d.routes[1].client_errors, 1);
        assert!(d.rejected.is_empty());
        assert_eq!(d.model_traffic().0, 3);
        assert_eq!(d.model_traffic().1, 1);
        // A replica that started over: everything it reports is new.
        let fresh = Tally::default();
        fresh.request(Route::Predict, 200, Duration::from_micros(300));
        let d = Delta::between(&[], Some(&second), &[], &fresh.snapshot());
        assert_eq!(d.routes[0].answered, 1);
        assert_eq!(d.routes[0].latency.count(), 1);
    }

    #[test]
    fn models_and_tracker() {
        let m = |requests, shed| ModelStats {
            model: "m".into(),
            requests,
            shed_queue_full: shed,
            ..Default::default()
        };
        let before = RequestStats {
            tracker: Some(TrackerStats {
                classes: [("a".to_string(), 2)].into_iter().collect(),
                values: vec![(5, 1, 1.5)],
                invalid: 1,
            }),
            ..Default::default()
        };
        let mut now = before.clone();
        if let Some(t) = now.tracker.as_mut() {
            t.classes.insert("a".into(), 5);
            t.classes.insert("b".into(), 1);
            t.values = vec![(5, 3, 4.5), (9, 1, 10.0)];
            t.invalid = 1;
        }
        let d = Delta::between(&[m(10, 1)], Some(&before), &[m(15, 3)], &now);
        assert_eq!(d.models[0].requests, 5);
        assert_eq!(d.rejected.get(&RejectReason::QueueFull), Some(&2));
        assert_eq!(d.classes.get("a"), Some(&3));
        assert_eq!(d.classes.get("b"), Some(&1));
        assert_eq!(d.values, vec![(5, 2, 3.0), (9, 1, 10.0)]);
        assert_eq!(d.invalid, 0);
    }

    #[test]
    fn classes_are_capped_per_api() {
        let mut known = BTreeSet::new();
        let mut d = Delta::default();
        for i in 0..MAX_TRACKED_CLASSES + 3 {
            d.classes.insert(format!("c{i:03}"), 1);
        }
        d.cap_classes(&mut known);
        assert_eq!(d.classes.get(OTHER_CLASS), Some(&3));
        assert_eq!(known.len(), MAX_TRACKED_CLASSES + 1);
        let mut again = Delta::default();
        again.classes.insert("c000".into(), 2);
        again.classes.insert("new".into(), 1);
        again.cap_classes(&mut known);
        assert_eq!(again.classes.get("c000"), Some(&2));
        assert_eq!(again.classes.get(OTHER_CLASS), Some(&1));
    }
}
