//! Deleting what no rollout uses: a release no rollout was created from (and not the one
//! holding the newest signed targets, which every director binds to), an image no
//! release lists. Each deletion and its audit entry are one transaction; it returns the
//! blobs that nothing references any more, for the caller to remove from the blob store
//! after the commit (a crash between the two leaves an unreferenced file, never a
//! reference to a missing one).

use super::{audit, Actor, Store, StoreError};
use ota_core::encoding::Sha256Digest;
use sqlx::{Any, Row, Transaction};

impl Store {
    /// Deletes a release, or says (409) which rollouts use it.
    pub async fn delete_release(&self, actor: &Actor, id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let release = sqlx::query("SELECT targets_version FROM releases WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                entity: "release",
                id: id.to_owned(),
            })?;
        let rollouts: Vec<String> =
            sqlx::query("SELECT id FROM rollouts WHERE release_id = $1 ORDER BY created_ms, id")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("id"))
                .collect::<Result<_, _>>()?;
        if !rollouts.is_empty() {
            return Err(StoreError::Conflict {
                entity: "release",
                detail: format!("{id} is used by rollout(s) {}", rollouts.join(", ")),
            });
        }
        let version: i64 = release.try_get("targets_version")?;
        let newest: i64 = sqlx::query("SELECT MAX(targets_version) AS v FROM releases")
            .fetch_one(&mut *tx)
            .await?
            .try_get("v")?;
        if version == newest {
            return Err(StoreError::Conflict {
                entity: "release",
                detail: format!(
                    "{id} holds the newest signed targets (version {version}), which vehicles are bound to; publish a newer release first"
                ),
            });
        }
        sqlx::query("DELETE FROM release_images WHERE release_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM releases WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        audit::record(&mut tx, actor, "release.delete", id, serde_json::json!({})).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes an image no release lists (409 naming the releases and their rollouts
    /// otherwise), with the delta builds from or to its bytes when no other image has
    /// them. Returns the blobs no image or delta references any more.
    pub async fn delete_image(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<Vec<Sha256Digest>, StoreError> {
        let mut tx = self.begin().await?;
        let image = sqlx::query("SELECT sha256 FROM images WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                entity: "image",
                id: id.to_owned(),
            })?;
        let sha: String = image.try_get("sha256")?;
        let users = sqlx::query(
            "SELECT ri.release_id AS release_id, r.id AS rollout_id FROM release_images ri \
             LEFT JOIN rollouts r ON r.release_id = ri.release_id \
             WHERE ri.image_id = $1 ORDER BY ri.release_id, r.id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        if !users.is_empty() {
            let mut releases = Vec::new();
            let mut rollouts = Vec::new();
            for row in &users {
                let release: String = row.try_get("release_id")?;
                if !releases.contains(&release) {
                    releases.push(release);
                }
                if let Some(rollout) = row.try_get::<Option<String>, _>("rollout_id")? {
                    rollouts.push(rollout);
                }
            }
            let used_by = if rollouts.is_empty() {
                String::new()
            } else {
                format!(" (used by rollout(s) {})", rollouts.join(", "))
            };
            return Err(StoreError::Conflict {
                entity: "image",
                detail: format!(
                    "{id} is listed by release(s) {}{used_by}",
                    releases.join(", ")
                ),
            });
        }
        sqlx::query("DELETE FROM images WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let mut candidates = vec![sha.clone()];
        if !referenced_by_image(&mut tx, &sha).await? {
            // Delta builds from or to these bytes serve no image any more.
            let jobs = sqlx::query(
                "DELETE FROM delta_jobs WHERE source_sha256 = $1 OR target_sha256 = $1 \
                 RETURNING delta_sha256",
            )
            .bind(&sha)
            .fetch_all(&mut *tx)
            .await?;
            for job in &jobs {
                if let Some(delta) = job.try_get::<Option<String>, _>("delta_sha256")? {
                    candidates.push(delta);
                }
            }
        }
        let mut garbage = Vec::new();
        for candidate in candidates {
            let by_delta = sqlx::query("SELECT id FROM delta_jobs WHERE delta_sha256 = $1 LIMIT 1")
                .bind(&candidate)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !by_delta && !referenced_by_image(&mut tx, &candidate).await? {
                garbage.push(super::digest("blob sha256", &candidate)?);
            }
        }
        audit::record(
            &mut tx,
            actor,
            "image.delete",
            id,
            serde_json::json!({ "sha256": sha, "blobs_removed": garbage.iter().map(|g| g.to_hex()).collect::<Vec<_>>() }),
        )
        .await?;
        tx.commit().await?;
        Ok(garbage)
    }
}

async fn referenced_by_image(
    tx: &mut Transaction<'static, Any>,
    sha: &str,
) -> Result<bool, StoreError> {
    Ok(
        sqlx::query("SELECT id FROM images WHERE sha256 = $1 LIMIT 1")
            .bind(sha)
            .fetch_optional(&mut **tx)
            .await?
            .is_some(),
    )
}
