//! The batching dispatcher: how the engine thread runs a job of a batched model.
//!
//! When the engine thread takes a job of a model with a [`BatchPolicy`], it gathers the
//! model's other jobs already queued (they arrived while the engine was busy), checks each
//! against the signature, and runs those whose non-batch dimensions agree as one batch of at
//! most `max_batch_size` rows ([`batch::concat`], one `Backend::infer`, [`batch::split`]). It
//! waits for more only when `max_queue_delay` says so (zero by default): a request that finds
//! the engine idle runs at once, alone. Jobs that cannot join (other shapes, no room left) go
//! back to the head of the queue, in their order, to lead the next batches (still bounded by
//! the queue and counted). A job that waited past `max_latency` is answered
//! [`InferenceError::DeadlineExceeded`] without running.
//!
//! A batch whose run fails on the request's side (values the model refuses) runs again one
//! request at a time, so that only the request at fault fails; so does one whose outputs
//! cannot be split (a model that reduces over the batch axis).

use super::batch;
use super::queue::{Done, Job};
use super::service::{answer, run_one, Engine};
use super::{BatchPolicy, InferenceError};

impl Engine {
    /// Runs `first` (a job of a batched model), with whatever can join it.
    pub(super) fn run_batched(&mut self, first: Job, policy: BatchPolicy, done: &mut Done) {
        let Some(index) = first.index else {
            return self.run_alone(first, done);
        };
        let Some(first) = self.admit(first, policy, done) else {
            return;
        };
        let first_rows = batch::rows(&first.inputs).unwrap_or(usize::MAX);
        if first_rows >= policy.max_batch_size {
            return self.run_alone(first, done);
        }
        let mut total = first_rows;
        let mut group = vec![first];
        // Jobs taken that cannot join (another shape, no room left): back at the head of the
        // queue once the batch is gathered, in their order, to lead the next batches.
        let mut leftovers = Vec::new();
        let gather_until = group[0].queued + policy.max_queue_delay;
        loop {
            let room = policy.max_batch_size - total;
            for job in self.jobs.take_model(index, room) {
                if job.reply.abandoned() {
                    continue;
                }
                let Some(job) = self.admit(job, policy, done) else {
                    continue;
                };
                let rows = batch::rows(&job.inputs);
                let fits = rows.is_some_and(|r| total + r <= policy.max_batch_size);
                if fits && batch::compatible(&group[0].inputs, &job.inputs) {
                    total += rows.unwrap_or(0);
                    group.push(job);
                } else {
                    leftovers.push(job);
                }
            }
            if total >= policy.max_batch_size || policy.max_queue_delay.is_zero() {
                break;
            }
            // Answers already made must not wait for this batch's window.
            if !done.is_empty() {
                done.hand_back();
            }
            if !self.jobs.wait_for_model(index, gather_until) {
                break;
            }
        }
        self.jobs.put_back(leftovers);
        if group.len() == 1 {
            let job = group.pop();
            return job.into_iter().for_each(|j| self.run_alone(j, done));
        }
        self.run_group(group, done);
    }

    /// Checks a job before it joins a batch: its deadline, then its inputs (put in the
    /// model's order, with leading dimensions added as its policy says). Answers the job
    /// itself and returns `None` when it fails either.
    fn admit(&self, mut job: Job, policy: BatchPolicy, done: &mut Done) -> Option<Job> {
        let stats = job.index.map(|i| &self.stats[i]);
        let waited = job.queued.elapsed();
        if let Some(stats) = stats.filter(|_| !job.checked) {
            stats.dequeued(waited);
        }
        if let Some(max_latency) = policy.max_latency {
            if waited > max_latency {
                if let Some(stats) = stats {
                    stats.deadline();
                }
                let error = InferenceError::DeadlineExceeded {
                    model: job.model,
                    waited,
                    max_latency,
                };
                answer(job.reply, Err(error), done);
                return None;
            }
        }
        if job.checked {
            return Some(job);
        }
        match self.backend.check(&job.model, &mut job.inputs, job.policy) {
            Ok(()) => {
                job.checked = true;
                Some(job)
            }
            Err(e) => {
                answer(job.reply, Err(e), done);
                None
            }
        }
    }

    /// Runs one job by itself and answers it.
    pub(super) fn run_alone(&self, job: Job, done: &mut Done) {
        let cost = job.index.map(|i| &self.costs[i]);
        let stats = job.index.map(|i| &self.stats[i]);
        let outputs = run_one(
            &*self.backend,
            cost,
            stats,
            &job.model,
            job.inputs,
            job.policy,
        );
        answer(job.reply, outputs, done);
    }

    /// Runs checked, compatible jobs as one batch and answers each with its rows.
    fn run_group(&self, group: Vec<Job>, done: &mut Done) {
        let model = group[0].model.clone();
        let mut replies = Vec::with_capacity(group.len());
        let mut inputs = Vec::with_capacity(group.len());
        // Kept to run the requests one by one if the batch cannot be answered as one.
        let mut originals = Vec::with_capacity(group.len());
        for job in group {
            originals.push((job.inputs.clone(), job.policy, job.index));
            inputs.push(job.inputs);
            replies.push(job.reply);
        }
        let index = originals[0].2;
        let (batch, rows) = batch::concat(inputs);
        let started = std::time::Instant::now();
        let outputs = run_one(
            &*self.backend,
            None,
            None,
            &model,
            batch,
            gyrus_engine::ShapePolicy::Exact,
        );
        let took = started.elapsed();
        let parts = match outputs {
            Ok(outputs) => batch::split(outputs, &rows),
            Err(e) if !e.is_client_error() => {
                for reply in replies {
                    answer(reply, Err(e.clone()), done);
                }
                return;
            }
            Err(_) => None,
        };
        match parts {
            Some(parts) => {
                // Counted only when answered as a batch: a batch run again one by one is
                // counted by those runs.
                if let Some(stats) = index.map(|i| &self.stats[i]) {
                    stats.run(rows.len(), rows.iter().sum(), took);
                }
                for (reply, part) in replies.into_iter().zip(parts) {
                    answer(reply, Ok(part), done);
                }
            }
            None => {
                for (reply, (inputs, policy, index)) in replies.into_iter().zip(originals) {
                    let cost = index.map(|i| &self.costs[i]);
                    let stats = index.map(|i| &self.stats[i]);
                    let outputs = run_one(&*self.backend, cost, stats, &model, inputs, policy);
                    answer(reply, outputs, done);
                }
            }
        }
    }
}
