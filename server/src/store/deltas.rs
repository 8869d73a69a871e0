//! The durable delta job table: one row per (source, target) pair, built at most once.

use super::{digest, ms_to_rfc3339, new_id, now_ms, Store, StoreError};
use ota_core::encoding::Sha256Digest;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeltaJobStatus {
    Queued,
    Running,
    Done,
    /// The delta would not be meaningfully smaller than the full image: vehicles get the
    /// full image.
    Skipped,
    Failed,
}

impl DeltaJobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeltaJobStatus::Queued => "queued",
            DeltaJobStatus::Running => "running",
            DeltaJobStatus::Done => "done",
            DeltaJobStatus::Skipped => "skipped",
            DeltaJobStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Running,
            Self::Done,
            Self::Skipped,
            Self::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// A built delta: `sha256`/`length` describe the delta blob turning `source` into `target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltDelta {
    pub source: Sha256Digest,
    pub target: Sha256Digest,
    pub sha256: Sha256Digest,
    pub length: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeltaJob {
    #[schema(value_type = crate::api::validate::schema::DeltaJobId)]
    pub id: String,
    #[schema(value_type = Option<crate::api::validate::schema::RolloutId>)]
    pub rollout_id: Option<String>,
    #[schema(value_type = crate::api::validate::schema::Name)]
    pub hardware_id: String,
    #[schema(value_type = crate::api::validate::schema::Sha256Hex)]
    pub source_sha256: String,
    #[schema(value_type = crate::api::validate::schema::Sha256Hex)]
    pub target_sha256: String,
    pub status: DeltaJobStatus,
    pub attempts: u32,
    #[schema(value_type = Option<crate::api::validate::schema::Sha256Hex>)]
    pub delta_sha256: Option<String>,
    #[schema(value_type = Option<crate::api::validate::schema::Count>)]
    pub delta_length: Option<u64>,
    pub error: Option<String>,
    #[schema(value_type = crate::api::validate::schema::Timestamp)]
    pub created_at: String,
    #[schema(value_type = crate::api::validate::schema::Timestamp)]
    pub updated_at: String,
}

pub(super) fn job_from_row(row: &AnyRow) -> Result<DeltaJob, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(DeltaJob {
        id: row.try_get("id")?,
        rollout_id: row.try_get("rollout_id")?,
        hardware_id: row.try_get("hardware_id")?,
        source_sha256: row.try_get("source_sha256")?,
        target_sha256: row.try_get("target_sha256")?,
        status: DeltaJobStatus::parse(&status).ok_or_else(|| StoreError::Corrupt {
            what: "delta job status",
            reason: status.clone(),
        })?,
        attempts: row.try_get::<i64, _>("attempts")?.clamp(0, u32::MAX as i64) as u32,
        delta_sha256: row.try_get("delta_sha256")?,
        delta_length: row
            .try_get::<Option<i64>, _>("delta_length")?
            .map(|l| l.max(0) as u64),
        error: row.try_get("error")?,
        created_at: ms_to_rfc3339(row.try_get("created_ms")?),
        updated_at: ms_to_rfc3339(row.try_get("updated_ms")?),
    })
}

impl Store {
    /// Enqueues a build unless one exists for the pair (idempotent). Returns whether a
    /// new job was created.
    pub async fn enqueue_delta(
        &self,
        rollout_id: &str,
        hardware_id: &str,
        source_sha256: &str,
        target_sha256: &str,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO delta_jobs (id, rollout_id, hardware_id, source_sha256, target_sha256, status, \
             created_ms, updated_ms) VALUES ($1, $2, $3, $4, $5, 'queued', $6, $6) ON CONFLICT DO NOTHING",
        )
        .bind(new_id("dj"))
        .bind(rollout_id)
        .bind(hardware_id)
        .bind(source_sha256)
        .bind(target_sha256)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(inserted.rows_affected() > 0)
    }

    /// Claims the oldest queued job. The conditional update makes the claim atomic, so
    /// two workers (or replicas) never build the same job.
    pub async fn claim_delta_job(&self) -> Result<Option<DeltaJob>, StoreError> {
        loop {
            let Some(row) = sqlx::query(
                "SELECT * FROM delta_jobs WHERE status = 'queued' ORDER BY created_ms, id LIMIT 1",
            )
            .fetch_optional(self.pool())
            .await?
            else {
                return Ok(None);
            };
            let job = job_from_row(&row)?;
            let claimed = sqlx::query(
                "UPDATE delta_jobs SET status = 'running', attempts = attempts + 1, updated_ms = $1 \
                 WHERE id = $2 AND status = 'queued'",
            )
            .bind(now_ms())
            .bind(&job.id)
            .execute(self.pool())
            .await?;
            if claimed.rows_affected() == 1 {
                return self.get_delta_job(&job.id).await.map(Some);
            }
        }
    }

    /// Jobs left `running` by a crash go back to the queue (called at startup).
    pub async fn requeue_interrupted_delta_jobs(&self) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE delta_jobs SET status = 'queued', updated_ms = $1 WHERE status = 'running'",
        )
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected())
    }

    pub async fn finish_delta_job(
        &self,
        id: &str,
        status: DeltaJobStatus,
        delta: Option<(&str, u64)>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE delta_jobs SET status = $1, delta_sha256 = $2, delta_length = $3, error = $4, updated_ms = $5 \
             WHERE id = $6",
        )
        .bind(status.as_str())
        .bind(delta.map(|(sha, _)| sha.to_owned()))
        .bind(delta.map(|(_, len)| len as i64))
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn get_delta_job(&self, id: &str) -> Result<DeltaJob, StoreError> {
        let row = sqlx::query("SELECT * FROM delta_jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                entity: "delta job",
                id: id.to_owned(),
            })?;
        job_from_row(&row)
    }

    pub async fn list_delta_jobs(
        &self,
        rollout_id: Option<&str>,
    ) -> Result<Vec<DeltaJob>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM delta_jobs WHERE ($1 = '' OR rollout_id = $1) ORDER BY created_ms, id",
        )
        .bind(rollout_id.unwrap_or(""))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Built deltas to any of `targets` (the active rollouts' images): what the director
    /// may send instead of a full image.
    pub async fn built_deltas_to(
        &self,
        targets: &[Sha256Digest],
    ) -> Result<Vec<BuiltDelta>, StoreError> {
        let mut out = Vec::new();
        for target in targets {
            let rows = sqlx::query(
                "SELECT source_sha256, delta_sha256, delta_length FROM delta_jobs \
                 WHERE status = 'done' AND target_sha256 = $1",
            )
            .bind(target.to_hex())
            .fetch_all(self.pool())
            .await?;
            for row in &rows {
                let delta: Option<String> = row.try_get("delta_sha256")?;
                out.push(BuiltDelta {
                    source: digest(
                        "delta source_sha256",
                        &row.try_get::<String, _>("source_sha256")?,
                    )?,
                    target: *target,
                    sha256: digest("delta delta_sha256", delta.as_deref().unwrap_or_default())?,
                    length: row
                        .try_get::<Option<i64>, _>("delta_length")?
                        .unwrap_or(0)
                        .max(0) as u64,
                });
            }
        }
        Ok(out)
    }

    /// Whether a built delta has this content (blob authorisation).
    /// (source, target) of the built deltas whose blob is `sha256` (by the
    /// `delta_jobs_by_delta` index).
    pub async fn delta_pairs_of(
        &self,
        sha256: &Sha256Digest,
    ) -> Result<Vec<(Sha256Digest, Sha256Digest)>, StoreError> {
        let rows = sqlx::query(
            "SELECT source_sha256, target_sha256 FROM delta_jobs \
             WHERE delta_sha256 = $1 AND status = 'done'",
        )
        .bind(sha256.to_hex())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    digest(
                        "delta source_sha256",
                        &row.try_get::<String, _>("source_sha256")?,
                    )?,
                    digest(
                        "delta target_sha256",
                        &row.try_get::<String, _>("target_sha256")?,
                    )?,
                ))
            })
            .collect()
    }

    pub async fn is_delta_blob(&self, sha256: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM delta_jobs WHERE delta_sha256 = $1")
            .bind(sha256)
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }
}
