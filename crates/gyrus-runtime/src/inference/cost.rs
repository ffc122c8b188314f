//! What a model costs to run, learnt from its runs: the estimate by which the inference
//! service decides whether a request runs on the caller's thread (see `service`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gyrus_engine::{Tensor, TensorData};

/// What one model costs to run, learnt from its runs: picoseconds per input byte, averaged
/// over the last runs (each new run weighs a quarter). `u64::MAX` until it has run once.
pub(super) struct Cost(AtomicU64);

impl Cost {
    const UNKNOWN: u64 = u64::MAX;

    pub(super) fn new() -> Cost {
        Cost(AtomicU64::new(Self::UNKNOWN))
    }

    /// The estimated time to run on `bytes` of input; `None` while unknown.
    pub(super) fn estimate(&self, bytes: u64) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            Self::UNKNOWN => None,
            per_byte => Some(Duration::from_nanos(
                per_byte.saturating_mul(bytes.max(1)) / 1000,
            )),
        }
    }

    pub(super) fn record(&self, bytes: u64, took: Duration) {
        let sample = (took.as_nanos().saturating_mul(1000) / u128::from(bytes.max(1)))
            .min(u128::from(Self::UNKNOWN - 1)) as u64;
        // Racing writers lose a sample at worst: this is an estimate.
        let average = match self.0.load(Ordering::Relaxed) {
            Self::UNKNOWN => sample,
            old => old - old / 4 + sample / 4,
        };
        self.0.store(average, Ordering::Relaxed);
    }
}

pub(super) fn input_bytes(inputs: &[Tensor]) -> u64 {
    inputs
        .iter()
        .map(|t| match &t.data {
            TensorData::Raw(bytes) => bytes.len() as u64,
            TensorData::Strings(strings) => strings.iter().map(|s| s.len() as u64 + 1).sum(),
        })
        .sum()
}
