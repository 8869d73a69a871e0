//! Releases: a set of images (one per hardware id) and their signed targets metadata.

use super::{
    audit, conflict_or, digest, ms_to_rfc3339, new_id, now_ms, to_i64, Actor, Store, StoreError,
};
use ota_core::encoding::Sha256Digest;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ReleaseImage {
    #[schema(value_type = crate::api::validate::schema::Name)]
    pub hardware_id: String,
    #[schema(value_type = crate::api::validate::schema::ImageId)]
    pub image_id: String,
    #[schema(value_type = crate::api::validate::schema::ImageName)]
    pub name: String,
    #[schema(value_type = crate::api::validate::schema::Name)]
    pub version: String,
    #[schema(value_type = crate::api::validate::schema::Count)]
    pub length: u64,
    #[schema(value_type = crate::api::validate::schema::Sha256Hex)]
    pub sha256: Sha256Digest,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Release)]
pub struct ReleaseRecord {
    #[schema(value_type = crate::api::validate::schema::ReleaseId)]
    pub id: String,
    #[schema(value_type = crate::api::validate::schema::Name)]
    pub name: String,
    #[schema(value_type = crate::api::validate::schema::Name)]
    pub version: String,
    #[schema(value_type = crate::api::validate::schema::Counter)]
    pub security_version: u64,
    #[schema(value_type = crate::api::validate::schema::Counter)]
    pub targets_version: u64,
    /// `"server"` (signed online, dev) or `"offline"` (uploaded pre-signed by otactl).
    pub signed_by: String,
    pub images: Vec<ReleaseImage>,
    /// The signed targets envelope, exactly as vehicles receive it.
    #[schema(value_type = Object)]
    pub targets: serde_json::Value,
    #[schema(value_type = crate::api::validate::schema::Timestamp)]
    pub created_at: String,
}

#[derive(Debug, Clone)]
pub struct NewRelease {
    pub name: String,
    pub version: String,
    pub security_version: u64,
    pub targets_version: u64,
    pub targets_envelope: String,
    pub signed_by: String,
    /// (hardware id, image id)
    pub images: Vec<(String, String)>,
}

impl Store {
    pub async fn insert_release(
        &self,
        actor: &Actor,
        release: NewRelease,
    ) -> Result<ReleaseRecord, StoreError> {
        let id = new_id("rel");
        let security_version = to_i64("security_version", release.security_version)?;
        let targets_version = to_i64("targets_version", release.targets_version)?;
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO releases (id, name, version, security_version, targets_version, \
             targets_envelope, signed_by, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(&release.name)
        .bind(&release.version)
        .bind(security_version)
        .bind(targets_version)
        .bind(&release.targets_envelope)
        .bind(&release.signed_by)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(conflict_or(
            "release",
            format!("a release named {:?} exists", release.name),
        ))?;
        for (hardware_id, image_id) in &release.images {
            sqlx::query("INSERT INTO release_images (release_id, hardware_id, image_id) VALUES ($1, $2, $3)")
                .bind(&id)
                .bind(hardware_id)
                .bind(image_id)
                .execute(&mut *tx)
                .await?;
        }
        audit::record(
            &mut tx,
            actor,
            "release.create",
            &id,
            serde_json::json!({
                "name": release.name, "version": release.version,
                "security_version": release.security_version, "signed_by": release.signed_by,
                "images": release.images.iter().map(|(_, image)| image).collect::<Vec<_>>(),
            }),
        )
        .await?;
        tx.commit().await?;
        self.get_release(&id).await
    }

    /// The newest signed targets envelope (the one with the highest version), if any.
    /// Every release's targets list every image released so far, so this one document
    /// is what vehicles verify any assignment against.
    pub async fn latest_targets(&self) -> Result<Option<(u64, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT targets_version, targets_envelope FROM releases \
             ORDER BY targets_version DESC LIMIT 1",
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(match row {
            Some(row) => Some((
                row.try_get::<i64, _>("targets_version")?.max(0) as u64,
                row.try_get::<String, _>("targets_envelope")?,
            )),
            None => None,
        })
    }

    async fn release_images(&self, release_id: &str) -> Result<Vec<ReleaseImage>, StoreError> {
        let rows = sqlx::query(
            "SELECT ri.hardware_id, ri.image_id, i.name, i.version, i.length, i.sha256 \
             FROM release_images ri JOIN images i ON i.id = ri.image_id \
             WHERE ri.release_id = $1 ORDER BY ri.hardware_id",
        )
        .bind(release_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ReleaseImage {
                    hardware_id: row.try_get("hardware_id")?,
                    image_id: row.try_get("image_id")?,
                    name: row.try_get("name")?,
                    version: row.try_get("version")?,
                    length: row.try_get::<i64, _>("length")?.max(0) as u64,
                    sha256: digest("image sha256", &row.try_get::<String, _>("sha256")?)?,
                })
            })
            .collect()
    }

    pub(super) async fn release_from_row(&self, row: &AnyRow) -> Result<ReleaseRecord, StoreError> {
        let id: String = row.try_get("id")?;
        let envelope: String = row.try_get("targets_envelope")?;
        Ok(ReleaseRecord {
            images: self.release_images(&id).await?,
            id,
            name: row.try_get("name")?,
            version: row.try_get("version")?,
            security_version: row.try_get::<i64, _>("security_version")?.max(0) as u64,
            targets_version: row.try_get::<i64, _>("targets_version")?.max(0) as u64,
            signed_by: row.try_get("signed_by")?,
            targets: super::parse_json("targets envelope", &envelope)?,
            created_at: ms_to_rfc3339(row.try_get("created_ms")?),
        })
    }

    pub async fn get_release(&self, id: &str) -> Result<ReleaseRecord, StoreError> {
        let row = sqlx::query("SELECT * FROM releases WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                entity: "release",
                id: id.to_owned(),
            })?;
        self.release_from_row(&row).await
    }

    /// The oldest `limit` releases.
    pub async fn list_releases(&self, limit: i64) -> Result<Vec<ReleaseRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM releases ORDER BY created_ms, id LIMIT $1")
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(self.release_from_row(row).await?);
        }
        Ok(out)
    }
}
