//! Reading the server's Prometheus `/metrics` text, for tests and benchmarks that watch
//! what the server did from outside.

/// The sum of the samples of a counter in Prometheus text (`name{labels}` prefix).
pub fn counter(metrics: &str, name_and_labels: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}
