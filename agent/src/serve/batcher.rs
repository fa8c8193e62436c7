//! Dynamic batching: one queue per model. Requests gather while they wait
//! for a worker: a request that finds a worker free runs at once, alone (on
//! a CPU, waiting for company only adds latency); requests that arrive while
//! every worker is busy pile up, and when a worker frees up it takes its
//! share of them as one batch, at most `batch_max` rows. The share is the
//! waiting rows divided among the free workers, so that a burst keeps every
//! core busy instead of filling one batch while the other cores idle.

use super::metrics::{Metrics, ModelLabels};
use super::{Job, Limits};
use basalt_infer::v2::{InferRequest, InferResponse};
use basalt_infer::{InferError, Model};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

/// What a model's runs have cost per input element, as a moving average:
/// the estimate of the next run that decides whether it may run inline
/// (see `serve::run`).
#[derive(Debug, Default)]
pub struct Cost {
    /// Nanoseconds per input element (the bits of an `f64`); 0: no run yet.
    ns_per_element: AtomicU64,
}

impl Cost {
    /// Records a run over `elements` input elements that took `took`.
    pub fn observe(&self, elements: usize, took: Duration) {
        let this = took.as_nanos() as f64 / elements.max(1) as f64;
        let before = f64::from_bits(self.ns_per_element.load(Ordering::Relaxed));
        // The first run sets it; later ones move it by an eighth.
        let next = if before == 0.0 {
            this
        } else {
            before + (this - before) / 8.0
        };
        self.ns_per_element
            .store(next.max(f64::MIN_POSITIVE).to_bits(), Ordering::Relaxed);
    }

    /// How long a run over `elements` input elements should take; `None`
    /// before the first run.
    pub fn estimate(&self, elements: usize) -> Option<Duration> {
        let ns = f64::from_bits(self.ns_per_element.load(Ordering::Relaxed));
        (ns > 0.0).then(|| Duration::from_nanos((ns * elements as f64) as u64))
    }
}

/// Input elements of a request (its declared shapes, already checked
/// against the server's limits when it was parsed).
pub fn elements(request: &InferRequest) -> usize {
    request
        .inputs
        .iter()
        .map(|i| i.shape.iter().map(|&d| d as usize).product::<usize>())
        .sum()
}

/// Where a request's time on the server went, for its `Server-Timing`
/// header (W3C Server Timing): the wait for a worker and the model run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    pub queue: Duration,
    pub compute: Duration,
}

impl Timing {
    /// The header's value, in milliseconds: the queue and compute times of
    /// a model run (when there was one) and the whole request's `total`.
    pub fn header(run: Option<Timing>, total: Duration) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let total = format!("total;dur={:.3}", ms(total));
        match run {
            Some(t) => format!(
                "queue;dur={:.3}, compute;dur={:.3}, {total}",
                ms(t.queue),
                ms(t.compute)
            ),
            None => total,
        }
    }
}

/// A request's answer and where its time went.
pub type Answer = (Result<InferResponse, InferError>, Timing);

/// Runs `requests` (one alone, several as a batch) on this thread and
/// records the wait since each was queued, the run's time and its cost.
pub fn run_now(
    model: &Model,
    requests: &[&InferRequest],
    queued: &[Instant],
    metrics: &Metrics,
    labels: &ModelLabels,
    cost: &Cost,
) -> Vec<Answer> {
    // Counted out also when the model panics.
    struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    metrics.in_flight.inc();
    let _in_flight = InFlight(&metrics.in_flight);
    let started = Instant::now();
    let waits: Vec<Duration> = queued
        .iter()
        .map(|q| started.saturating_duration_since(*q))
        .collect();
    {
        // Not held over the run: the family's lock is shared with every
        // other model's first request.
        let queue = metrics.queue_seconds.get_or_create(labels);
        for w in &waits {
            queue.observe(w.as_secs_f64());
        }
    }
    let results = match requests {
        [one] => vec![model.infer(one)],
        _ => model.infer_batch(requests),
    };
    let took = started.elapsed();
    cost.observe(requests.iter().map(|r| elements(r)).sum(), took);
    let computed = metrics.compute_seconds.get_or_create(labels);
    for _ in requests {
        computed.observe(took.as_secs_f64());
    }
    metrics
        .batch_size
        .get_or_create(labels)
        .observe(requests.len() as f64);
    results
        .into_iter()
        .zip(waits)
        .map(|(r, queue)| {
            (
                r,
                Timing {
                    queue,
                    compute: took,
                },
            )
        })
        .collect()
}

/// Rows a request adds to a batch: the leading dimension of its first input.
fn rows(job: &Job) -> usize {
    job.request
        .inputs
        .first()
        .and_then(|i| i.shape.first())
        .map(|&d| d as usize)
        .unwrap_or(1)
        .max(1)
}

/// How many rows the next batch takes: the waiting rows shared among the
/// free workers (this one included), at least one request, at most
/// `batch_max`.
fn share(waiting_rows: usize, free_workers: usize, batch_max: usize) -> usize {
    waiting_rows
        .div_ceil(free_workers.max(1))
        .clamp(1, batch_max.max(1))
}

/// Takes the next batch off the front of `waiting`: whole requests while
/// they fit in `limit` rows, and always the first.
fn next_batch(waiting: &mut VecDeque<Job>, limit: usize) -> Vec<Job> {
    let mut jobs = Vec::new();
    let mut total = 0;
    while let Some(j) = waiting.front() {
        let r = rows(j);
        if !jobs.is_empty() && total + r > limit {
            break;
        }
        total += r;
        jobs.push(waiting.pop_front().expect("a front"));
    }
    jobs
}

/// Starts the batcher of `model` and returns its queue.
pub fn start(
    model: Arc<Model>,
    limits: Arc<Limits>,
    workers: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    cost: Arc<Cost>,
) -> mpsc::Sender<Job> {
    // Admission (threads + queue_capacity) is the limit; the channel only
    // needs room for everything admitted.
    let (tx, mut rx) = mpsc::channel::<Job>(limits.threads + limits.queue_capacity + 1);
    let batch_max = model.batch_max().max(1);
    tokio::spawn(async move {
        let labels = ModelLabels {
            model: model.name().to_string(),
        };
        let mut waiting: VecDeque<Job> = VecDeque::new();
        let mut open = true;
        loop {
            if waiting.is_empty() {
                match rx.recv().await {
                    Some(j) => waiting.push_back(j),
                    None => return,
                }
            }
            // A worker; until one is free, keep gathering.
            let permit = loop {
                while let Ok(j) = rx.try_recv() {
                    waiting.push_back(j);
                }
                if let Ok(p) = workers.clone().try_acquire_owned() {
                    break Some(p);
                }
                tokio::select! {
                    p = workers.clone().acquire_owned() => break p.ok(),
                    j = rx.recv(), if open => match j {
                        Some(j) => waiting.push_back(j),
                        None => open = false,
                    },
                }
            };
            let Some(permit) = permit else {
                return;
            };
            let limit = if batch_max > 1 {
                share(
                    waiting.iter().map(rows).sum(),
                    workers.available_permits() + 1,
                    batch_max,
                )
            } else {
                1
            };
            let mut jobs = next_batch(&mut waiting, limit);
            metrics
                .queue_depth
                .get_or_create(&labels)
                .dec_by(jobs.len() as i64);
            // Requests whose caller has given up (timed out) are not run.
            jobs.retain(|j| !j.reply.is_closed());
            if jobs.is_empty() {
                continue;
            }
            let model = model.clone();
            let metrics = metrics.clone();
            let labels = labels.clone();
            let cost = cost.clone();
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let requests: Vec<_> = jobs.iter().map(|j| &j.request).collect();
                let queued: Vec<_> = jobs.iter().map(|j| j.queued).collect();
                let results = run_now(&model, &requests, &queued, &metrics, &labels, &cost);
                for (j, r) in jobs.into_iter().zip(results) {
                    let _ = j.reply.send(r);
                }
            });
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_shared_among_the_free_workers() {
        // 8 waiting, 2 workers free: 4 each, not 8 on one core.
        assert_eq!(share(8, 2, 8), 4);
        assert_eq!(share(7, 2, 8), 4);
        // One worker free: everything that fits.
        assert_eq!(share(6, 1, 8), 6);
        assert_eq!(share(20, 1, 8), 8);
        // Never less than one request, never more than batch_max.
        assert_eq!(share(1, 4, 8), 1);
        assert_eq!(share(0, 0, 8), 1);
        assert_eq!(share(9, 1, 1), 1);
    }

    fn job(rows: u64) -> Job {
        let (reply, _) = tokio::sync::oneshot::channel();
        Job {
            queued: Instant::now(),
            request: basalt_infer::v2::InferRequest {
                id: None,
                parameters: None,
                inputs: vec![basalt_infer::v2::RequestInput {
                    name: "x".into(),
                    shape: vec![rows, 1],
                    datatype: basalt_infer::v2::Datatype::FP32,
                    parameters: None,
                    data: basalt_infer::v2::TensorData::Fp32(vec![0.0; rows as usize]),
                }],
                outputs: None,
            },
            reply,
        }
    }

    #[test]
    fn the_cost_estimate_follows_runs_and_grows_with_the_input() {
        let c = Cost::default();
        assert_eq!(c.estimate(4), None, "no run yet");
        c.observe(4, Duration::from_micros(20));
        assert_eq!(c.estimate(4), Some(Duration::from_micros(20)));
        // A request 2^18 times larger is expected to take that much longer
        // (well past INLINE_MAX, so it goes to a worker).
        assert_eq!(c.estimate(1 << 20), Some(Duration::from_micros(20 << 18)));
        assert!(c.estimate(1 << 20).unwrap() > crate::serve::INLINE_MAX);
        // Later runs move it by an eighth of the difference.
        c.observe(4, Duration::from_micros(100));
        assert_eq!(c.estimate(4), Some(Duration::from_micros(30)));
    }

    #[test]
    fn batches_take_whole_requests_in_order() {
        let mut w: VecDeque<Job> = [2, 3, 1, 4].into_iter().map(job).collect();
        let sizes = |b: Vec<Job>| b.iter().map(rows).collect::<Vec<_>>();
        assert_eq!(sizes(next_batch(&mut w, 5)), [2, 3]);
        // A request larger than the limit still runs, alone.
        assert_eq!(sizes(next_batch(&mut w, 0)), [1]);
        assert_eq!(sizes(next_batch(&mut w, 3)), [4]);
        assert!(w.is_empty());
    }
}
