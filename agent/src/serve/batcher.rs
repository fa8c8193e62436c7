//! Dynamic batching: one queue per model. The batcher takes the first
//! waiting request, gathers more for up to [`super::Limits::batch_window`]
//! while the batch has rows to spare, waits for a worker, and runs the lot
//! as one batch. Under load the queue fills while workers are busy, so
//! batches grow by themselves; idle, a request waits at most the window.

use super::{Job, Limits};
use basalt_infer::Model;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

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

/// Starts the batcher of `model` and returns its queue.
pub fn start(
    model: Arc<Model>,
    limits: Arc<Limits>,
    workers: Arc<Semaphore>,
    metrics: Arc<super::metrics::Metrics>,
) -> mpsc::Sender<Job> {
    // Admission (threads + queue_capacity) is the limit; the channel only
    // needs room for everything admitted.
    let (tx, mut rx) = mpsc::channel::<Job>(limits.threads + limits.queue_capacity + 1);
    let batch_max = model.batch_max().max(1);
    tokio::spawn(async move {
        let labels = super::metrics::ModelLabels {
            model: model.name().to_string(),
        };
        let mut held: Option<Job> = None;
        loop {
            let first = match held.take() {
                Some(j) => j,
                None => match rx.recv().await {
                    Some(j) => j,
                    None => return,
                },
            };
            let mut total = rows(&first);
            let mut jobs = vec![first];
            if batch_max > 1 && total < batch_max {
                let deadline = tokio::time::Instant::now() + limits.batch_window;
                while total < batch_max {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(j)) => {
                            let r = rows(&j);
                            if total + r > batch_max {
                                held = Some(j);
                                break;
                            }
                            total += r;
                            jobs.push(j);
                        }
                        _ => break,
                    }
                }
            }
            let Ok(permit) = workers.clone().acquire_owned().await else {
                return;
            };
            metrics
                .queue_depth
                .get_or_create(&labels)
                .dec_by(jobs.len() as i64);
            // Requests whose caller has given up (timed out) are not run.
            jobs.retain(|j| !j.reply.is_closed());
            if jobs.is_empty() {
                continue;
            }
            metrics
                .batch_size
                .get_or_create(&labels)
                .observe(jobs.len() as f64);
            let model = model.clone();
            let in_flight = metrics.in_flight.clone();
            in_flight.inc();
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                if jobs.len() == 1 {
                    let j = jobs.pop().expect("one job");
                    let _ = j.reply.send(model.infer(&j.request));
                } else {
                    let requests: Vec<_> = jobs.iter().map(|j| &j.request).collect();
                    let results = model.infer_batch(&requests);
                    for (j, r) in jobs.into_iter().zip(results) {
                        let _ = j.reply.send(r);
                    }
                }
                in_flight.dec();
            });
        }
    });
    tx
}
