//! `/metrics`: the inference server's counters in the Prometheus text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub model: String,
    pub code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

/// Label for requests naming a model this node does not know, so that
/// arbitrary names cannot grow the metrics without bound.
pub const UNKNOWN_MODEL: &str = "_unknown";

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub errors: Family<ModelLabels, Counter>,
    pub latency: Family<ModelLabels, Histogram>,
    pub queue_depth: Family<ModelLabels, Gauge>,
    pub in_flight: Gauge,
    pub batch_size: Family<ModelLabels, Histogram>,
    pub queue_seconds: Family<ModelLabels, Histogram>,
    pub compute_seconds: Family<ModelLabels, Histogram>,
    pub inline_runs: Family<ModelLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 7))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("basalt_inference");
        let requests = Family::<RequestLabels, Counter>::default();
        let errors = Family::<ModelLabels, Counter>::default();
        let latency = Family::<ModelLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let queue_depth = Family::<ModelLabels, Gauge>::default();
        let in_flight = Gauge::default();
        let batch_size = Family::<ModelLabels, Histogram>::new_with_constructor(
            batch_histogram as fn() -> Histogram,
        );
        let queue_seconds = Family::<ModelLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let compute_seconds = Family::<ModelLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "requests",
            "Inference requests answered, by model and HTTP status",
            requests.clone(),
        );
        registry.register(
            "errors",
            "Inference requests answered with a 4xx or 5xx status",
            errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Wall time from request to response",
            latency.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting for a worker",
            queue_depth.clone(),
        );
        registry.register("in_flight", "Requests being run", in_flight.clone());
        registry.register(
            "batch_size",
            "Requests run together in one batch",
            batch_size.clone(),
        );
        registry.register(
            "queue_duration_seconds",
            "Wall time from joining the model's queue to a worker starting on it",
            queue_seconds.clone(),
        );
        registry.register(
            "compute_duration_seconds",
            "Wall time of the model run (of the whole batch, for each request in it)",
            compute_seconds.clone(),
        );
        let inline_runs = Family::<ModelLabels, Counter>::default();
        registry.register(
            "inline_runs",
            "Runs done on the server's own thread (a short model on an idle server), not handed to a worker thread",
            inline_runs.clone(),
        );
        Metrics {
            registry,
            requests,
            errors,
            latency,
            queue_depth,
            in_flight,
            batch_size,
            queue_seconds,
            compute_seconds,
            inline_runs,
        }
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn observe(&self, model: &str, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                model: model.to_string(),
                code,
            })
            .inc();
        let labels = ModelLabels {
            model: model.to_string(),
        };
        if code >= 400 {
            self.errors.get_or_create(&labels).inc();
        }
        self.latency.get_or_create(&labels).observe(seconds);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_text_format() {
        let m = Metrics::default();
        m.observe("magika", 200, 0.003);
        m.observe("magika", 200, 0.004);
        m.observe("magika", 429, 0.0001);
        let text = m.encode();
        assert!(
            text.contains("basalt_inference_requests_total{model=\"magika\",code=\"200\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("basalt_inference_errors_total{model=\"magika\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("basalt_inference_request_duration_seconds_count{model=\"magika\"} 3"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
