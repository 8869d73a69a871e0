//! Full images: metadata rows; the bytes live content-addressed in the blob store.

use super::{audit, conflict_or, ms_to_rfc3339, new_id, now_ms, Actor, Store, StoreError};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(as = Image)]
pub struct ImageRecord {
    #[schema(value_type = crate::api::validate::schema::ImageId)]
    pub id: String,
    #[schema(value_type = crate::api::validate::schema::ImageName)]
    pub name: String,
    #[schema(value_type = crate::api::validate::schema::Name)]
    pub hardware_id: String,
    #[schema(value_type = crate::api::validate::schema::Name)]
    pub version: String,
    #[schema(value_type = crate::api::validate::schema::Count)]
    pub length: u64,
    #[schema(value_type = crate::api::validate::schema::Sha256Hex)]
    pub sha256: String,
    #[schema(value_type = crate::api::validate::schema::Timestamp)]
    pub created_at: String,
}

#[derive(Debug, Clone)]
pub struct NewImage {
    pub name: String,
    pub hardware_id: String,
    pub version: String,
    pub length: u64,
    pub sha256: String,
}

pub(super) fn image_from_row(row: &AnyRow) -> Result<ImageRecord, sqlx::Error> {
    Ok(ImageRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        hardware_id: row.try_get("hardware_id")?,
        version: row.try_get("version")?,
        length: row.try_get::<i64, _>("length")?.max(0) as u64,
        sha256: row.try_get("sha256")?,
        created_at: ms_to_rfc3339(row.try_get("created_ms")?),
    })
}

pub(super) const IMAGE_COLUMNS: &str = "id, name, hardware_id, version, length, sha256, created_ms";

impl Store {
    pub async fn insert_image(
        &self,
        actor: &Actor,
        image: NewImage,
    ) -> Result<ImageRecord, StoreError> {
        let id = new_id("img");
        let created = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO images (id, name, hardware_id, version, length, sha256, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(&image.name)
        .bind(&image.hardware_id)
        .bind(&image.version)
        .bind(image.length as i64)
        .bind(&image.sha256)
        .bind(created)
        .execute(&mut *tx)
        .await
        .map_err(conflict_or(
            "image",
            format!(
                "hardware id {:?} already has version {:?}",
                image.hardware_id, image.version
            ),
        ))?;
        audit::record(
            &mut tx,
            actor,
            "image.upload",
            &id,
            serde_json::json!({
                "hardware_id": image.hardware_id, "version": image.version,
                "sha256": image.sha256, "length": image.length,
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(ImageRecord {
            id,
            name: image.name,
            hardware_id: image.hardware_id,
            version: image.version,
            length: image.length,
            sha256: image.sha256,
            created_at: ms_to_rfc3339(created),
        })
    }

    pub async fn get_image(&self, id: &str) -> Result<ImageRecord, StoreError> {
        let row = sqlx::query(&format!("SELECT {IMAGE_COLUMNS} FROM images WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound {
                entity: "image",
                id: id.to_owned(),
            })?;
        Ok(image_from_row(&row)?)
    }

    pub async fn list_images(
        &self,
        hardware_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ImageRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE ($1 = '' OR hardware_id = $1) \
             ORDER BY created_ms, id LIMIT $2"
        ))
        .bind(hardware_id.unwrap_or(""))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(image_from_row).collect::<Result<_, _>>()?)
    }

    /// Whether `hardware_id` already has an image of `version` (checked before an
    /// upload's body is read; the unique constraint still decides a race).
    pub async fn image_version_exists(
        &self,
        hardware_id: &str,
        version: &str,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT id FROM images WHERE hardware_id = $1 AND version = $2")
            .bind(hardware_id)
            .bind(version)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.is_some())
    }

    /// Whether any image (or built delta) has this content, for blob authorisation.
    pub async fn image_by_sha256(&self, sha256: &str) -> Result<Option<ImageRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE sha256 = $1 ORDER BY created_ms LIMIT 1"
        ))
        .bind(sha256)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(image_from_row).transpose()?)
    }
}
