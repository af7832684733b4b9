//! The latency histograms of `/metrics`: HTTP requests by route and status class, plugin calls by
//! plugin, journal appends. Kept by `prometheus-client` in one registry per process (several
//! nodes in one test process share it) and rendered after the node's hand-written counters and
//! gauges (`api/ops.rs`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::time::Duration;

/// The smallest bucket, in seconds: half a millisecond, about a cached state read.
const BUCKET_START_SECS: f64 = 0.000_5;
/// Buckets double from [`BUCKET_START_SECS`]: the last finite one is about 8 s, past the default
/// ask timeout.
const BUCKET_COUNT: u16 = 15;

/// The route label of a request no route matched: one series for all of them, so a client
/// probing paths cannot grow the histogram.
pub const UNMATCHED_ROUTE: &str = "unmatched";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    /// The route's template (`/entities/{entity_type}/{entity_id}`), never the raw path.
    route: String,
    /// `2xx`, `4xx`, `5xx`…
    status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

struct Latencies {
    registry: Registry,
    requests: Histograms<RequestLabels>,
    plugin_calls: Histograms<PluginLabels>,
    journal_appends: Histogram,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(BUCKET_START_SECS, 2.0, BUCKET_COUNT))
}

static LATENCIES: LazyLock<Latencies> = LazyLock::new(|| {
    let requests: Histograms<RequestLabels> = Family::new_with_constructor(latency_histogram);
    let plugin_calls: Histograms<PluginLabels> = Family::new_with_constructor(latency_histogram);
    let journal_appends = latency_histogram();
    let mut registry = Registry::default();
    registry.register(
        "weft_http_request_duration_seconds",
        "Time from a request's arrival to its response's headers, by method, route and status class.",
        requests.clone(),
    );
    registry.register(
        "weft_plugin_call_duration_seconds",
        "Time of one call into a plugin (a batch of commands, a run of events, a snapshot), by plugin.",
        plugin_calls.clone(),
    );
    registry.register(
        "weft_journal_append_duration_seconds",
        "Time of one conditional append of a batch of events to the journal.",
        journal_appends.clone(),
    );
    Latencies {
        registry,
        requests,
        plugin_calls,
        journal_appends,
    }
});

/// Records a served request. `route` is the matched route's template or [`UNMATCHED_ROUTE`].
pub fn observe_request(method: &str, route: &str, status: u16, took: Duration) {
    let labels = RequestLabels {
        method: method.to_owned(),
        route: route.to_owned(),
        status_class: format!("{}xx", status / 100),
    };
    LATENCIES
        .requests
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
}

/// Records one call into the plugin named `plugin`.
pub fn observe_plugin_call(plugin: &str, took: Duration) {
    let labels = PluginLabels {
        plugin: plugin.to_owned(),
    };
    LATENCIES
        .plugin_calls
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
}

/// Records one journal append, whatever its outcome.
pub fn observe_journal_append(took: Duration) {
    LATENCIES.journal_appends.observe(took.as_secs_f64());
}

/// Appends the histograms to `text` in the Prometheus text format.
pub fn render(text: &mut String) {
    // Writing to a String cannot fail; an encoding error would mean a bad metric name, which
    // the unit test below catches.
    let _ = prometheus_client::encoding::text::encode_registry(text, &LATENCIES.registry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_renders_as_a_histogram_with_buckets_count_and_sum() {
        observe_request(
            "POST",
            "/entities/{entity_type}/{entity_id}",
            200,
            Duration::from_millis(3),
        );
        let mut text = String::new();
        render(&mut text);
        assert!(
            text.contains("# TYPE weft_http_request_duration_seconds histogram"),
            "{text}"
        );
        let series =
            r#"method="POST",route="/entities/{entity_type}/{entity_id}",status_class="2xx""#;
        for suffix in ["_bucket", "_count", "_sum"] {
            let name = format!("weft_http_request_duration_seconds{suffix}");
            assert!(
                text.lines()
                    .any(|line| line.starts_with(&name) && line.contains(series)),
                "no {name} for {series} in\n{text}"
            );
        }
        assert!(!text.contains("# EOF"), "{text}");
    }
}
