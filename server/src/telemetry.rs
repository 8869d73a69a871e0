//! Structured logs (text or JSON) via `tracing`, and the Prometheus recorder.

use crate::settings::{LogFormat, LogSettings};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls (tests building several apps) are
/// no-ops.
pub fn init_logging(settings: &LogSettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Every histogram's buckets unless it has its own: request durations
/// (`ota_http_request_duration_seconds`) in seconds, 1 ms to 30 s (longer ones, such as
/// image uploads, land in `+Inf`).
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Check-ins (or assignments) written per group commit: 1 to 4,096, the largest
/// `director.checkin_batch` allowed.
const BATCH_BUCKETS: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// Histograms as Prometheus histograms (`_bucket{le=...}` series) rather than the
/// exporter's default summaries: buckets from two replicas add up into fleet-wide
/// quantiles (`histogram_quantile` over `sum by (le)`), where each replica's summary
/// quantiles cannot be combined; and rendering `/metrics` reads counters instead of
/// computing quantiles over a sketch per series on every scrape. `Err` only for an
/// empty bucket list.
fn with_buckets(builder: PrometheusBuilder) -> Result<PrometheusBuilder, BuildError> {
    builder
        .set_buckets(&DURATION_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("ota_checkin_batch_size".to_owned()),
            &BATCH_BUCKETS,
        )
}

/// The process-wide Prometheus recorder. `metrics` has one global recorder, so every
/// `Application` in a process (tests start many) shares it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = with_buckets(PrometheusBuilder::new())
                .unwrap_or_else(|err| {
                    tracing::error!(%err, "histogram buckets refused; exporting summaries");
                    PrometheusBuilder::new()
                })
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then our handle renders
            // nothing, which /metrics tests would catch.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
