//! Delta builds: a durable job table (see `store::deltas`) drained by a bounded pool of
//! workers. Jobs are idempotent per (source, target), claimed atomically, and any job a
//! crash left `running` is re-queued at startup.
//!
//! Workers call the delta engine through [`DeltaEngine`] ([`BuilderEngine`] in
//! production, on the blocking pool); a job whose delta is not worth shipping is
//! `skipped`, and the director then sends the full image.

use crate::blobs::BlobStore;
use crate::store::{DeltaJobStatus, Store, StoreError};
use ota_core::encoding::Sha256Digest;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// What a delta build produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaOutcome {
    /// The delta was written to `out`.
    Built,
    /// Not meaningfully smaller than the full image: ship the full image instead.
    NotWorthIt,
}

#[derive(Debug, thiserror::Error)]
pub enum DeltaBuildError {
    #[error("delta engine unavailable: {0}")]
    Unavailable(String),
    #[error("delta build failed: {0}")]
    Failed(String),
    #[error("delta build I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The boundary to the delta engine. Blocking and CPU-heavy: called on the blocking pool.
pub trait DeltaEngine: Send + Sync + fmt::Debug + 'static {
    fn build_delta(
        &self,
        old: &Path,
        new: &Path,
        out: &Path,
    ) -> Result<DeltaOutcome, DeltaBuildError>;
}

/// The delta engine of `crate::delta`: suffix-array bsdiff matching, zstd streams, the
/// full-image fallback when a delta is not at least `min_saving_percent` smaller.
#[derive(Debug, Clone, Default)]
pub struct BuilderEngine {
    pub options: crate::delta::BuildOptions,
}

impl BuilderEngine {
    /// The production builder as the server's `[delta]` settings configure it.
    pub fn from_settings(delta: &crate::settings::DeltaSettings) -> BuilderEngine {
        BuilderEngine {
            options: crate::delta::BuildOptions {
                min_saving_percent: delta.min_saving_percent,
                lzma: delta.lzma,
                scan: delta.scan.profile(),
                one_stream: delta.one_stream,
                eh_table: delta.eh_table,
                detached_digests: delta.detached_digests,
                ..crate::delta::BuildOptions::default()
            },
        }
    }
}

impl DeltaEngine for BuilderEngine {
    fn build_delta(
        &self,
        old: &Path,
        new: &Path,
        out: &Path,
    ) -> Result<DeltaOutcome, DeltaBuildError> {
        let report = crate::delta::build_delta_file(old, new, out, &self.options)
            .map_err(|e| DeltaBuildError::Failed(format!("{e:#}")))?;
        tracing::info!(
            algorithm = report.algorithm.name(),
            container_len = report.container_len,
            delta_container_len = report.delta_container_len,
            scan = report.scan.name(),
            candidates = ?report.candidates,
            "delta built"
        );
        Ok(match report.algorithm {
            ota_core::delta::Algorithm::BsdiffZstd
            | ota_core::delta::Algorithm::BsdiffZstdTransformed(_)
            | ota_core::delta::Algorithm::BsdiffLzma(_)
            | ota_core::delta::Algorithm::BsdiffOneStream(_) => DeltaOutcome::Built,
            // The builder chose the full image: vehicles download the image itself.
            ota_core::delta::Algorithm::FullZstd => DeltaOutcome::NotWorthIt,
        })
    }
}

/// What one worker iteration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Idle,
    Built { job: String, delta_sha256: String },
    Skipped { job: String },
    Failed { job: String, error: String },
}

/// Claims and builds one job.
pub async fn run_one(
    store: &Store,
    blobs: &BlobStore,
    engine: Arc<dyn DeltaEngine>,
) -> Result<JobOutcome, StoreError> {
    let Some(job) = store.claim_delta_job().await? else {
        return Ok(JobOutcome::Idle);
    };
    let (Ok(source), Ok(target)) = (
        Sha256Digest::parse(&job.source_sha256),
        Sha256Digest::parse(&job.target_sha256),
    ) else {
        let error = "job names a malformed digest".to_owned();
        store
            .finish_delta_job(&job.id, DeltaJobStatus::Failed, None, Some(&error))
            .await?;
        return Ok(JobOutcome::Failed { job: job.id, error });
    };
    // Both images as local files: the store's own (local backend) or copies streamed
    // into the scratch directory (object storage), deleted when the build is done.
    let inputs = (
        blobs.local_file(&source).await,
        blobs.local_file(&target).await,
    );
    let out = blobs.temp_path();
    let built = match inputs {
        (Ok(Some(old)), Ok(Some(new))) => {
            let out = out.clone();
            tokio::task::spawn_blocking(move || {
                engine.build_delta(old.path(), new.path(), &out)
                // `old` and `new` are dropped here, deleting any copies.
            })
            .await
            .unwrap_or_else(|join| {
                Err(DeltaBuildError::Failed(format!("builder panicked: {join}")))
            })
        }
        (old, new) => {
            let missing = |which: &str, sha: &Sha256Digest, got: Result<Option<_>, _>| match got {
                Ok(Some(_)) => None,
                Ok(None) => Some(format!(
                    "reading the {which} image failed: blob {sha} is not in the blob store"
                )),
                Err(err) => Some(format!("reading the {which} image failed: {err}")),
            };
            let reason = missing("old", &source, old)
                .or_else(|| missing("new", &target, new))
                .unwrap_or_default();
            Err(DeltaBuildError::Failed(reason))
        }
    };
    let outcome = match built {
        Ok(DeltaOutcome::Built) => match blobs.import_file(&out).await {
            Ok(blob) => {
                let sha = blob.sha256.to_hex();
                store
                    .finish_delta_job(
                        &job.id,
                        DeltaJobStatus::Done,
                        Some((&sha, blob.length)),
                        None,
                    )
                    .await?;
                JobOutcome::Built {
                    job: job.id,
                    delta_sha256: sha,
                }
            }
            Err(err) => {
                let error = err.to_string();
                store
                    .finish_delta_job(&job.id, DeltaJobStatus::Failed, None, Some(&error))
                    .await?;
                JobOutcome::Failed { job: job.id, error }
            }
        },
        Ok(DeltaOutcome::NotWorthIt) => {
            store
                .finish_delta_job(&job.id, DeltaJobStatus::Skipped, None, None)
                .await?;
            JobOutcome::Skipped { job: job.id }
        }
        Err(err) => {
            let error = err.to_string();
            store
                .finish_delta_job(&job.id, DeltaJobStatus::Failed, None, Some(&error))
                .await?;
            JobOutcome::Failed { job: job.id, error }
        }
    };
    let _ = tokio::fs::remove_file(&out).await;
    metrics::counter!("ota_delta_jobs_total", "outcome" => match &outcome {
        JobOutcome::Built { .. } => "built",
        JobOutcome::Skipped { .. } => "skipped",
        JobOutcome::Failed { .. } => "failed",
        JobOutcome::Idle => "idle",
    })
    .increment(1);
    Ok(outcome)
}

/// One worker: builds jobs until the queue is empty, then waits for a notification (or
/// polls every few seconds, for jobs enqueued by other replicas). Shutdown is checked
/// between jobs, so a job in progress always finishes.
pub async fn worker(
    store: Store,
    blobs: BlobStore,
    engine: Arc<dyn DeltaEngine>,
    notify: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        if *shutdown.borrow() {
            return;
        }
        match run_one(&store, &blobs, engine.clone()).await {
            Ok(JobOutcome::Idle) => {
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.changed() => return,
                }
            }
            Ok(outcome) => {
                backoff = Duration::from_millis(500);
                tracing::info!(?outcome, "delta job finished");
            }
            Err(err) => {
                tracing::warn!(%err, retry_in = ?backoff, "delta worker store error");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::DeltaSettings;

    #[test]
    fn the_builder_takes_the_saving_a_delta_must_make_from_the_settings() {
        let delta = DeltaSettings {
            min_saving_percent: 42,
            lzma: false,
            scan: crate::delta::ScanChoice::Eager,
            one_stream: false,
            eh_table: false,
            detached_digests: false,
            ..DeltaSettings::default()
        };
        let options = BuilderEngine::from_settings(&delta).options;
        assert_eq!(
            (
                options.min_saving_percent,
                options.lzma,
                options.scan,
                options.one_stream,
                options.eh_table,
                options.detached_digests
            ),
            (
                42,
                false,
                Some(crate::delta::ScanProfile::Eager),
                false,
                false,
                false
            )
        );
        assert!(
            BuilderEngine::from_settings(&DeltaSettings::default())
                .options
                .eh_table
        );
        assert!(
            BuilderEngine::from_settings(&DeltaSettings::default())
                .options
                .detached_digests,
            "the server ships detached digests by default: its agents have them signed"
        );
        assert!(
            BuilderEngine::from_settings(&DeltaSettings::default())
                .options
                .one_stream
        );
        assert_eq!(
            BuilderEngine::from_settings(&DeltaSettings::default())
                .options
                .scan,
            None,
            "every profile by default"
        );
        assert!(
            BuilderEngine::from_settings(&DeltaSettings::default())
                .options
                .lzma
        );
        assert_eq!(
            BuilderEngine::from_settings(&DeltaSettings::default())
                .options
                .min_saving_percent,
            crate::delta::builder::DEFAULT_MIN_SAVING_PERCENT
        );
    }
}
