//! The engine thread's bounded queue of jobs, and how answers go back to async callers
//! (together, for jobs that ran back to back). See `service` for why it is built this way.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gyrus_engine::{ShapePolicy, Tensor};
use tokio::sync::oneshot;

use super::InferenceError;

/// How long the outputs of async callers may wait on the engine thread for the jobs queued
/// behind theirs, so that they are handed back together. This bounds the latency the
/// coalescing adds; outputs of runs longer than this are handed back one by one.
pub(super) const HAND_BACK_WITHIN: Duration = Duration::from_micros(100);

pub(super) type Outputs = Result<Vec<Tensor>, InferenceError>;

/// What the engine thread hands an async caller: its outputs, and those of the callers whose
/// jobs ran right after its own, for it to hand on.
pub(super) struct Delivery {
    pub(super) outputs: Outputs,
    pub(super) others: Vec<(oneshot::Sender<Delivery>, Outputs)>,
}

impl Delivery {
    /// Hands the others their outputs and returns this caller's.
    pub(super) fn hand_on(self) -> Outputs {
        for (tx, outputs) in self.others {
            let _ = tx.send(Delivery {
                outputs,
                others: Vec::new(),
            });
        }
        self.outputs
    }
}

/// An async caller's end of its oneshot. If the caller goes away after the engine thread
/// handed it a delivery, dropping this still hands the others theirs.
pub(super) struct Awaiting(pub(super) oneshot::Receiver<Delivery>);

impl Drop for Awaiting {
    fn drop(&mut self) {
        self.0.close();
        if let Ok(delivery) = self.0.try_recv() {
            let _ = delivery.hand_on();
        }
    }
}

/// Outputs waiting on the engine thread to be handed back to async callers together.
#[derive(Default)]
pub(super) struct Done {
    outputs: Vec<(oneshot::Sender<Delivery>, Outputs)>,
    since: Option<Instant>,
}

impl Done {
    pub(super) fn push(&mut self, tx: oneshot::Sender<Delivery>, outputs: Outputs) {
        self.since.get_or_insert_with(Instant::now);
        self.outputs.push((tx, outputs));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }

    pub(super) fn overdue(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= HAND_BACK_WITHIN)
    }

    /// Wakes the first caller still waiting, with everyone's outputs.
    pub(super) fn hand_back(&mut self) {
        self.since = None;
        let mut outputs = std::mem::take(&mut self.outputs).into_iter();
        while let Some((tx, mine)) = outputs.next() {
            let delivery = Delivery {
                outputs: mine,
                others: outputs.collect(),
            };
            match tx.send(delivery) {
                Ok(()) => return,
                // That caller is gone: the next one takes the lot.
                Err(delivery) => outputs = delivery.others.into_iter(),
            }
        }
    }
}

/// How the engine thread answers a job.
pub(super) enum Reply {
    /// An async caller awaiting the other end.
    Wait(oneshot::Sender<Delivery>),
    /// A callback, run on the engine thread.
    Call(Box<dyn FnOnce(Outputs) + Send>),
}

impl Reply {
    /// Whether nobody waits for the answer any more (the HTTP client went away): the job is
    /// skipped rather than run.
    pub(super) fn abandoned(&self) -> bool {
        matches!(self, Reply::Wait(tx) if tx.is_closed())
    }
}

pub(super) struct Job {
    pub(super) model: String,
    /// The model's index in the backend's list; `None` for a name it does not serve (the
    /// backend answers those itself).
    pub(super) index: Option<usize>,
    pub(super) inputs: Vec<Tensor>,
    pub(super) policy: ShapePolicy,
    pub(super) reply: Reply,
    /// When it was queued: a batched model's `max_latency` counts from here.
    pub(super) queued: Instant,
    /// Its inputs were checked (and its queue time counted) when a batch was gathered that it
    /// could not join; it was put back at the head of the queue since.
    pub(super) checked: bool,
}

/// The bounded queue of jobs for the engine thread. See the module documentation.
pub(super) struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when a job arrives for an engine thread that sleeps, or on close.
    ready: Condvar,
    pub(super) capacity: usize,
    /// Per model (by index), how many of its jobs may wait at once (`max_queue_size` of a
    /// batched model); `None`: only the queue's capacity.
    limits: Vec<Option<usize>>,
}

pub(super) struct QueueState {
    jobs: VecDeque<Job>,
    /// No job will arrive any more: the last `InferenceService` is gone.
    closed: bool,
    /// The engine thread waits on `ready` and nobody has signalled it yet.
    sleeping: bool,
    /// A caller is running a quick model on its own thread (at most one does at a time).
    inline: bool,
    /// Jobs waiting, per model index.
    waiting: Vec<usize>,
    /// The engine thread waits for more jobs of a batched model (`max_queue_delay`): a caller
    /// must not run a model inline meanwhile.
    gathering: bool,
}

impl QueueState {
    fn take(&mut self, job: &Job) {
        if let Some(n) = job.index.and_then(|i| self.waiting.get_mut(i)) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Queue {
    /// A queue of `capacity` jobs; `limits` bounds each model's jobs (by index).
    pub(super) fn new(capacity: usize, limits: Vec<Option<usize>>) -> Queue {
        Queue {
            state: Mutex::new(QueueState {
                jobs: VecDeque::with_capacity(capacity.min(64)),
                closed: false,
                sleeping: false,
                inline: false,
                waiting: vec![0; limits.len()],
                gathering: false,
            }),
            ready: Condvar::new(),
            capacity,
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Nothing runs under this lock that could leave the state half-changed.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job` without waiting: a full queue is [`InferenceError::Overloaded`]. A job
    /// refused gives its reply back.
    pub(super) fn push(&self, job: Job) -> Result<(), (InferenceError, Reply)> {
        let mut state = self.lock();
        if state.closed {
            return Err((InferenceError::Stopped, job.reply));
        }
        if state.jobs.len() >= self.capacity {
            let capacity = self.capacity;
            return Err((InferenceError::Overloaded { capacity }, job.reply));
        }
        if let Some(i) = job.index {
            if let Some(limit) = self.limits.get(i).copied().flatten() {
                if state.waiting[i] >= limit {
                    let error = InferenceError::QueueFull {
                        model: job.model,
                        limit,
                    };
                    return Err((error, job.reply));
                }
            }
            if let Some(n) = state.waiting.get_mut(i) {
                *n += 1;
            }
        }
        state.jobs.push_back(job);
        let wake = std::mem::replace(&mut state.sleeping, false);
        drop(state);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Takes the right to run one job on the caller's thread: only while the engine thread
    /// sleeps with nothing queued and nobody else runs one inline.
    pub(super) fn claim_inline(&self) -> bool {
        let mut state = self.lock();
        let idle = state.sleeping
            && state.jobs.is_empty()
            && !state.inline
            && !state.closed
            && !state.gathering;
        if idle {
            state.inline = true;
        }
        idle
    }

    pub(super) fn release_inline(&self) {
        self.lock().inline = false;
    }

    /// The next job, sleeping until there is one; `None` once closed and empty.
    pub(super) fn pop(&self) -> Option<Job> {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                state.take(&job);
                return Some(job);
            }
            if state.closed {
                return None;
            }
            state.sleeping = true;
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The next job if there is one.
    pub(super) fn try_pop(&self) -> Option<Job> {
        let mut state = self.lock();
        let job = state.jobs.pop_front()?;
        state.take(&job);
        Some(job)
    }

    /// Takes up to `max` queued jobs of model `index`, oldest first, leaving the others in
    /// their order.
    pub(super) fn take_model(&self, index: usize, max: usize) -> Vec<Job> {
        let mut state = self.lock();
        let mut taken = Vec::new();
        let mut i = 0;
        while i < state.jobs.len() && taken.len() < max {
            if state.jobs[i].index == Some(index) {
                if let Some(job) = state.jobs.remove(i) {
                    state.take(&job);
                    taken.push(job);
                }
            } else {
                i += 1;
            }
        }
        taken
    }

    /// How many jobs of model `index` wait now.
    pub(super) fn waiting(&self, index: usize) -> usize {
        self.lock().waiting.get(index).copied().unwrap_or(0)
    }

    /// Puts jobs taken by [`Queue::take_model`] back at the head of the queue, in their order
    /// (they were in the queue already, so its bounds do not apply).
    pub(super) fn put_back(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let mut state = self.lock();
        for job in jobs.into_iter().rev() {
            if let Some(n) = job.index.and_then(|i| state.waiting.get_mut(i)) {
                *n += 1;
            }
            state.jobs.push_front(job);
        }
    }

    /// Waits until a job of model `index` is queued or `until` passes; whether one is.
    pub(super) fn wait_for_model(&self, index: usize, until: Instant) -> bool {
        let mut state = self.lock();
        state.gathering = true;
        loop {
            let now = Instant::now();
            let found = state.waiting.get(index).is_some_and(|&n| n > 0);
            if found || state.closed || now >= until {
                state.gathering = false;
                return found;
            }
            state.sleeping = true;
            let (next, _) = self
                .ready
                .wait_timeout(state, until - now)
                .unwrap_or_else(|e| e.into_inner());
            state = next;
            state.sleeping = false;
        }
    }

    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }
}
