//! [`InferenceService`]: a [`Backend`] on its own engine thread, fed by a bounded queue.
//!
//! Callers on the replica's I/O thread resolve model names and read signatures directly (they
//! are fixed and cheap), then hand each inference to the engine thread: one bounded channel
//! send, answered through a oneshot ([`InferenceService::infer`], for async handlers) or a
//! callback run on the engine thread ([`InferenceService::submit`], for the INFER frames of
//! Python workers: the reply frame is written from there, so the I/O thread is not woken for
//! it). A full queue fails at once with [`InferenceError::Overloaded`] rather than waiting.
//!
//! **Quick models run where they are called.** Handing a job to another thread costs two or
//! three context switches, 7 to 25 us of a core, which is several times what a small model
//! (iris: 3 us) takes to run, and what the replica paid before the service existed was only
//! the model's own time. So when the engine thread is idle with nothing queued and the
//! model's measured cost for this much input is under [`ServiceConfig::inline_below`]
//! (50 us by default), the caller runs it on its own thread, which the model then holds no
//! longer than parsing a large request would. Everything else, including the first run of
//! each model (its cost is not known yet) and every run while the engine thread is busy, goes
//! through the queue, so a slow model never holds up the I/O thread and requests that arrive
//! together still meet in the queue, where the batching dispatcher will take them. The cost is
//! learnt per model as nanoseconds per input byte (an average over the last runs), so a
//! request much larger than usual is estimated dearer and goes to the engine thread.
//!
//! One engine thread runs every model, one inference at a time: the concurrency the replica
//! had when inference ran inline on its single I/O thread, and what ONNX Runtime allows per
//! session anyway (a model's session sits behind a mutex). This queue is where the batching
//! dispatcher will sit: it will take several queued requests for one model and run them as
//! one batch.
//!
//! Waking a thread is what the hop costs (a context switch each way when the replica shares a
//! core, a cross-core wake-up otherwise), so under load each side is woken once per run of
//! back-to-back jobs rather than once per job:
//!
//! - the engine thread sleeps only when the queue is empty, and runs as `SCHED_BATCH` (Linux):
//!   the job that wakes it does not preempt the I/O thread, which goes on reading and queueing
//!   the other requests it has, and the engine thread then runs them all. The queue is a mutex
//!   and a condition variable, signalled only when the engine thread sleeps, rather than
//!   `std::sync::mpsc`, whose receiver spins and yields before it sleeps (on a shared core,
//!   giving the core away and taking it back);
//! - the outputs of async callers whose jobs ran back to back are handed back together (at
//!   most `HAND_BACK_WITHIN` after the first is ready): one caller is woken with all of them
//!   and hands the others theirs on its own thread, where tokio's wake-ups are cheap. A caller
//!   dropped meanwhile still hands them on (`Awaiting`'s `Drop`).
//!
//! With the replica on one core (as `bench/onnx_bench.py` runs it), a model API at
//! concurrency 64 then takes about 0.4 context switches per request instead of 2.5, and keeps
//! its requests/s. A request alone still pays the hop: two or three context switches (about
//! 7 us in `examples/inference_hop.rs`, which measures the hop by itself).

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gyrus_engine::{ShapePolicy, Tensor};
use tokio::sync::oneshot;

use super::batch;
use super::cost::{input_bytes, Cost};
use super::queue::{Awaiting, Done, Job, Outputs, Queue, Reply};
use super::stats::{Counters, ModelStats};
use super::{Backend, BatchPolicy, InferenceError, ModelInfo};

/// How many inferences may wait for the engine thread before new ones are refused
/// ([`InferenceError::Overloaded`]). As many as `max_replica_concurrency`'s default, so a model
/// API with the default is refused by its concurrency gate (each request queues one inference)
/// before its queue fills.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// [`ServiceConfig::inline_below`]'s default. See the module documentation.
pub const DEFAULT_INLINE_BELOW: Duration = Duration::from_micros(50);

/// How an [`InferenceService`] runs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// How many inferences may wait for the engine thread (at least 1).
    pub queue_capacity: usize,
    /// Inferences estimated to take less than this run on the caller's thread when the
    /// engine thread is idle; `Duration::ZERO` sends every one to the engine thread.
    pub inline_below: Duration,
    /// The models whose requests are batched (by name), and how (see `dispatch`).
    pub batching: Vec<(String, BatchPolicy)>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            inline_below: DEFAULT_INLINE_BELOW,
            batching: Vec::new(),
        }
    }
}

/// The version of a model that has no versions (ONNX models; SavedModels without version
/// directories).
pub const MODEL_VERSION: &str = "1";

/// A [`Backend`] served by a dedicated engine thread. See the module documentation.
///
/// Cheap to clone (clones share the thread). The thread ends once every clone is dropped and
/// the jobs already queued are answered.
#[derive(Clone)]
pub struct InferenceService {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    queue: Arc<Queue>,
    /// One per model, in the backend's order; shared with the engine thread.
    costs: Arc<[Cost]>,
    /// One per model, in the backend's order; shared with the engine thread.
    stats: Arc<[Counters]>,
    /// Per model, whether its requests are batched.
    batched: Vec<bool>,
    inline_below: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl std::fmt::Debug for InferenceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceService")
            .field("models", &self.inner.backend.names())
            .field("capacity", &self.inner.queue.capacity)
            .finish()
    }
}

impl InferenceService {
    /// Starts the engine thread for `backend`. Fails only if the thread cannot be created.
    pub fn start(backend: Arc<dyn Backend>, config: ServiceConfig) -> std::io::Result<Self> {
        let batching: Vec<Option<BatchPolicy>> = backend
            .models()
            .iter()
            .map(|m| {
                config
                    .batching
                    .iter()
                    .find(|(name, _)| *name == m.name)
                    .map(|(_, policy)| *policy)
            })
            .collect();
        let limits = batching
            .iter()
            .map(|b| b.map(|p| p.max_queue_size.max(1)))
            .collect();
        // The per-model bounds are what refuses a batched model's requests, with its name:
        // the queue as a whole holds at least all of them.
        let limited: usize = batching
            .iter()
            .flatten()
            .map(|p| p.max_queue_size.max(1))
            .sum();
        let capacity = config.queue_capacity.max(limited).max(1);
        let queue = Arc::new(Queue::new(capacity, limits));
        let costs: Arc<[Cost]> = backend.models().iter().map(|_| Cost::new()).collect();
        let stats: Arc<[Counters]> = backend
            .models()
            .iter()
            .map(|_| Counters::default())
            .collect();
        let batched = batching.iter().map(Option::is_some).collect();
        let engine = Engine {
            backend: backend.clone(),
            jobs: queue.clone(),
            costs: costs.clone(),
            stats: stats.clone(),
            batching,
        };
        std::thread::Builder::new()
            .name("gyrus-engine".into())
            .spawn(move || engine.serve())?;
        Ok(InferenceService {
            inner: Arc::new(Inner {
                backend,
                queue,
                costs,
                stats,
                batched,
                inline_below: config.inline_below,
            }),
        })
    }

    /// The served models, in the API's order.
    pub fn models(&self) -> &[ModelInfo] {
        self.inner.backend.models()
    }

    /// The names of the served models, in order.
    pub fn names(&self) -> Vec<String> {
        self.inner.backend.names()
    }

    /// What the service did for each model since it started, in the backend's order.
    pub fn stats(&self) -> Vec<ModelStats> {
        let inner = &*self.inner;
        inner
            .backend
            .models()
            .iter()
            .enumerate()
            .map(|(i, m)| {
                inner.stats[i].snapshot(&m.name, inner.batched[i], inner.queue.waiting(i))
            })
            .collect()
    }

    /// How many inferences may wait for the engine thread.
    pub fn capacity(&self) -> usize {
        self.inner.queue.capacity
    }

    /// The model a request names in its parameters (`?model=` of the simple API,
    /// `onnx_client.predict`'s `model_name`), as Cortex resolves it: with one model, that model
    /// whatever the name; with several, the one named, and a name is required.
    pub fn select(&self, name: Option<&str>) -> Result<&ModelInfo, InferenceError> {
        let models = self.models();
        match (name, models) {
            (_, [only]) => Ok(only),
            (None, _) => Err(InferenceError::ModelRequired {
                available: self.names(),
            }),
            (Some(name), all) => {
                all.iter()
                    .find(|m| m.name == name)
                    .ok_or_else(|| InferenceError::UnknownModel {
                        name: name.to_string(),
                        available: self.names(),
                    })
            }
        }
    }

    /// The model a request is addressed to (the Open Inference Protocol's
    /// `/v2/models/<name>[/versions/<version>]`): exactly `name`, and `version` if given must
    /// be the version it serves. Failures are [`ErrorKind::NotFound`](super::ErrorKind::NotFound).
    pub fn find(&self, name: &str, version: Option<&str>) -> Result<&ModelInfo, InferenceError> {
        let model = self
            .models()
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| InferenceError::ModelNotFound {
                name: name.to_string(),
                available: self.names(),
            })?;
        match version {
            Some(v) if v != model.version => Err(InferenceError::VersionNotFound {
                name: name.to_string(),
                version: v.to_string(),
                served: model.version.clone(),
            }),
            _ => Ok(model),
        }
    }

    /// Runs `model` (a name from [`InferenceService::models`], e.g. as resolved by `select` or
    /// `find`) on `inputs`: on the engine thread, or on this one if the model is quick and the
    /// engine idle (see the module documentation). Dropping the future before the engine thread
    /// takes the job up makes it skip the job.
    pub async fn infer(
        &self,
        model: &str,
        inputs: Vec<Tensor>,
        policy: ShapePolicy,
    ) -> Result<Vec<Tensor>, InferenceError> {
        let inputs = match self.run_inline(model, inputs, policy) {
            Ok(outputs) => return outputs,
            Err(inputs) => inputs,
        };
        let (tx, rx) = oneshot::channel();
        self.enqueue(Job {
            model: model.to_string(),
            index: self.index(model),
            inputs,
            policy,
            reply: Reply::Wait(tx),
            queued: Instant::now(),
            checked: false,
        })
        .map_err(|(e, _)| e)?;
        let mut awaiting = Awaiting(rx);
        match (&mut awaiting.0).await {
            Ok(delivery) => delivery.hand_on(),
            Err(_) => Err(InferenceError::Stopped),
        }
    }

    /// Like [`InferenceService::infer`], but `done` receives the result: on the engine thread
    /// once the model has run, or at once on the calling thread if the model ran there or the
    /// job cannot be queued ([`InferenceError::Overloaded`], [`InferenceError::Stopped`]). `done` is called exactly
    /// once; it should be quick (it holds up the engine thread).
    pub fn submit(
        &self,
        model: &str,
        inputs: Vec<Tensor>,
        policy: ShapePolicy,
        done: impl FnOnce(Result<Vec<Tensor>, InferenceError>) + Send + 'static,
    ) {
        let inputs = match self.run_inline(model, inputs, policy) {
            Ok(outputs) => return done(outputs),
            Err(inputs) => inputs,
        };
        let job = Job {
            model: model.to_string(),
            index: self.index(model),
            inputs,
            policy,
            reply: Reply::Call(Box::new(done)),
            queued: Instant::now(),
            checked: false,
        };
        if let Err((e, Reply::Call(done))) = self.enqueue(job) {
            done(Err(e));
        }
    }

    /// Runs `model` here if it is quick and the engine thread idle; otherwise gives the inputs
    /// back, for the queue.
    fn run_inline(
        &self,
        model: &str,
        inputs: Vec<Tensor>,
        policy: ShapePolicy,
    ) -> Result<Outputs, Vec<Tensor>> {
        let inner = &*self.inner;
        let Some(index) = inner.backend.models().iter().position(|m| m.name == model) else {
            return Err(inputs);
        };
        let bytes = input_bytes(&inputs);
        let quick = inner.costs[index]
            .estimate(bytes)
            .is_some_and(|cost| cost < inner.inline_below);
        if !quick || !inner.queue.claim_inline() {
            return Err(inputs);
        }
        let cost = Some(&inner.costs[index]);
        let stats = Some(&inner.stats[index]);
        let outputs = run_one(&*inner.backend, cost, stats, model, inputs, policy);
        inner.queue.release_inline();
        Ok(outputs)
    }

    fn index(&self, model: &str) -> Option<usize> {
        self.inner
            .backend
            .models()
            .iter()
            .position(|m| m.name == model)
    }

    /// Queues a job without waiting; a full queue is [`InferenceError::Overloaded`].
    fn enqueue(&self, job: Job) -> Result<(), (InferenceError, Reply)> {
        let index = job.index;
        let pushed = self.inner.queue.push(job);
        if let (Err((InferenceError::QueueFull { .. }, _)), Some(i)) = (&pushed, index) {
            self.inner.stats[i].queue_full();
        }
        pushed
    }
}

/// The engine thread's side of the service.
pub(super) struct Engine {
    pub(super) backend: Arc<dyn Backend>,
    pub(super) jobs: Arc<Queue>,
    pub(super) costs: Arc<[Cost]>,
    pub(super) stats: Arc<[Counters]>,
    /// Per model (by index), how its requests are batched; `None`: one at a time.
    pub(super) batching: Vec<Option<BatchPolicy>>,
}

impl Engine {
    /// Runs jobs in order until the queue is closed and empty. A panic in the backend (or in a
    /// reply callback) fails that job only.
    fn serve(mut self) {
        batch_policy();
        let mut done = Done::default();
        loop {
            let job = if done.is_empty() {
                match self.jobs.pop() {
                    Some(job) => job,
                    None => return,
                }
            } else if done.overdue() {
                done.hand_back();
                continue;
            } else {
                match self.jobs.try_pop() {
                    Some(job) => job,
                    None => {
                        done.hand_back();
                        continue;
                    }
                }
            };
            if job.reply.abandoned() {
                continue;
            }
            let policy = job
                .index
                .and_then(|i| self.batching.get(i).copied().flatten());
            match policy {
                Some(policy) => self.run_batched(job, policy, &mut done),
                None => {
                    if let Some(stats) = job.index.map(|i| &self.stats[i]) {
                        stats.dequeued(job.queued.elapsed());
                    }
                    self.run_alone(job, &mut done);
                }
            }
        }
    }
}

/// Sends a job's outputs: into `done` for an async caller, or to its callback here.
pub(super) fn answer(reply: Reply, outputs: Outputs, done: &mut Done) {
    match reply {
        Reply::Wait(tx) => done.push(tx, outputs),
        Reply::Call(f) => {
            let _ = panic::catch_unwind(AssertUnwindSafe(|| f(outputs)));
        }
    }
}

/// Runs one inference and learns its model's cost (`None` for a name the backend does not
/// serve, which it answers itself). A panic in the backend fails this inference only.
pub(super) fn run_one(
    backend: &dyn Backend,
    cost: Option<&Cost>,
    stats: Option<&Counters>,
    model: &str,
    inputs: Vec<Tensor>,
    policy: ShapePolicy,
) -> Outputs {
    let bytes = input_bytes(&inputs);
    let started = Instant::now();
    let outputs = panic::catch_unwind(AssertUnwindSafe(|| backend.infer(model, inputs, policy)))
        .unwrap_or_else(|panic| {
            Err(InferenceError::Internal(format!(
                "inference on model \"{model}\" panicked: {}",
                panic_message(&*panic)
            )))
        });
    let took = started.elapsed();
    if let Some(cost) = cost {
        cost.record(bytes, took);
    }
    if let Some(stats) = stats {
        // The rows the model ran: its outputs' batch axis (the inputs may not have their
        // leading dimensions yet, which the engine adds).
        let rows = outputs
            .as_ref()
            .ok()
            .and_then(|o| batch::rows(o))
            .unwrap_or(1);
        stats.run(1, rows, took);
    }
    outputs
}

/// Makes the calling thread `SCHED_BATCH` (Linux): a wake-up of it no longer preempts the
/// running thread. Its share of CPU time is unchanged; if the call fails, only that is lost.
fn batch_policy() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sets the calling thread's own policy from a valid sched_param.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
