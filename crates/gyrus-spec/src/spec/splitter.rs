//! Cortex's `TrafficSplitter`: an endpoint with no predictor of its own, whose requests are
//! shared among realtime APIs by weight, with at most one shadow API that gets a copy of a
//! share of them (its answers are dropped).

use serde::{Deserialize, Serialize};

/// One `kind: TrafficSplitter` item, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitterSpec {
    pub name: String,
    /// Always `TrafficSplitter`; serialized so that a list of APIs and splitters reads back.
    pub kind: SplitterKind,
    /// Always starts with `/`.
    pub endpoint: String,
    /// The APIs in the order written. The weights of those that are not the shadow sum to
    /// 100; the shadow's weight is the share of requests copied to it.
    pub apis: Vec<SplitTarget>,
}

/// The one value of [`SplitterSpec::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum SplitterKind {
    #[default]
    TrafficSplitter,
}

/// One entry of a splitter's `apis`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitTarget {
    /// A realtime API, in the same file or already deployed.
    pub name: String,
    /// Percent of the requests (0 to 100).
    pub weight: u32,
    #[serde(default)]
    pub shadow: bool,
}

impl SplitterSpec {
    /// The APIs that answer (every entry but the shadow), with their weights.
    pub fn answering(&self) -> impl Iterator<Item = &SplitTarget> {
        self.apis.iter().filter(|t| !t.shadow)
    }

    /// The API that gets copies, if one is marked `shadow: true`.
    pub fn shadow(&self) -> Option<&SplitTarget> {
        self.apis.iter().find(|t| t.shadow)
    }
}
