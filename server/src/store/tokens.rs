//! API bearer tokens. Only the SHA-256 of a token is stored: a database dump does not
//! leak usable credentials.

use super::{audit, conflict_or, ms_to_rfc3339, new_id, now_ms, Actor, Store, StoreError};
use serde::Serialize;
use sqlx::Row;

#[derive(Debug, Clone, Serialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// Unix milliseconds after which the token is refused (`None`: never).
    #[serde(skip)]
    pub expires_ms: Option<i64>,
}

impl TokenRecord {
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_ms.is_some_and(|at| now_ms >= at)
    }
}

impl Store {
    pub async fn insert_token(
        &self,
        actor: &Actor,
        name: &str,
        token_sha256: &str,
        scopes: &[String],
    ) -> Result<TokenRecord, StoreError> {
        self.insert_expiring_token(actor, name, token_sha256, scopes, None)
            .await
    }

    /// A token refused from `expires_ms` on (`None`: never); audited with its expiry.
    pub async fn insert_expiring_token(
        &self,
        actor: &Actor,
        name: &str,
        token_sha256: &str,
        scopes: &[String],
        expires_ms: Option<i64>,
    ) -> Result<TokenRecord, StoreError> {
        let id = new_id("tok");
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO api_tokens (id, name, token_sha256, scopes, created_ms, expires_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(name)
        .bind(token_sha256)
        .bind(scopes.join(" "))
        .bind(now_ms())
        .bind(expires_ms)
        .execute(&mut *tx)
        .await
        .map_err(conflict_or(
            "token",
            "token value already registered".to_owned(),
        ))?;
        audit::record(
            &mut tx,
            actor,
            "token.create",
            &id,
            serde_json::json!({ "name": name, "scopes": scopes,
                                "expires_at": expires_ms.map(ms_to_rfc3339) }),
        )
        .await?;
        tx.commit().await?;
        Ok(TokenRecord {
            id,
            name: name.to_owned(),
            scopes: scopes.to_vec(),
            expires_ms,
        })
    }

    /// The not revoked token with this hash (expired or not: see
    /// [`TokenRecord::expired`]).
    pub async fn find_token(&self, token_sha256: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, scopes, expires_ms FROM api_tokens \
             WHERE token_sha256 = $1 AND revoked_ms IS NULL",
        )
        .bind(token_sha256)
        .fetch_optional(self.pool())
        .await?;
        row.map(|row| {
            let scopes: String = row.try_get("scopes")?;
            Ok(TokenRecord {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                scopes: scopes.split_whitespace().map(str::to_owned).collect(),
                expires_ms: row.try_get("expires_ms")?,
            })
        })
        .transpose()
        .map_err(|e: sqlx::Error| e.into())
    }

    /// Every token, oldest first (never the secret: only its hash is stored, and not
    /// shown either).
    /// Revokes a live token (audited); a revoked token is a conflict, an unknown one
    /// not found.
    pub async fn revoke_token(&self, actor: &Actor, id: &str) -> Result<TokenInfo, StoreError> {
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE api_tokens SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            let exists = sqlx::query("SELECT id FROM api_tokens WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            return Err(if exists {
                StoreError::Conflict {
                    entity: "token",
                    detail: format!("{id} is already revoked"),
                }
            } else {
                StoreError::NotFound {
                    entity: "token",
                    id: id.to_owned(),
                }
            });
        }
        audit::record(&mut tx, actor, "token.revoke", id, serde_json::json!({})).await?;
        let row = sqlx::query(
            "SELECT id, name, scopes, created_ms, revoked_ms, expires_ms FROM api_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let info = token_info(&row)?;
        tx.commit().await?;
        Ok(info)
    }
}

/// A token as listed: never its value.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Token)]
pub struct TokenInfo {
    #[schema(value_type = crate::api::validate::schema::TokenId)]
    pub id: String,
    /// A name for the audit log (any text given to `ota-server tokens create`).
    pub name: String,
    #[schema(value_type = Vec<crate::tokens::Scope>)]
    pub scopes: Vec<String>,
    #[schema(value_type = crate::api::validate::schema::Timestamp)]
    pub created_at: String,
    #[schema(value_type = Option<crate::api::validate::schema::Timestamp>)]
    pub revoked_at: Option<String>,
    /// Null for a token that does not expire.
    #[schema(value_type = Option<crate::api::validate::schema::Timestamp>)]
    pub expires_at: Option<String>,
}

pub(super) fn token_info(row: &sqlx::any::AnyRow) -> Result<TokenInfo, sqlx::Error> {
    let scopes: String = row.try_get("scopes")?;
    Ok(TokenInfo {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        created_at: ms_to_rfc3339(row.try_get("created_ms")?),
        revoked_at: row
            .try_get::<Option<i64>, _>("revoked_ms")?
            .map(ms_to_rfc3339),
        expires_at: row
            .try_get::<Option<i64>, _>("expires_ms")?
            .map(ms_to_rfc3339),
    })
}
