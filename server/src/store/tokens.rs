//! API bearer tokens. Only the SHA-256 of a token is stored: a database dump does not
//! leak usable credentials.

use super::{audit, conflict_or, new_id, now_ms, Actor, Store, StoreError};
use serde::Serialize;
use sqlx::Row;

#[derive(Debug, Clone, Serialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
}

impl Store {
    pub async fn insert_token(
        &self,
        actor: &Actor,
        name: &str,
        token_sha256: &str,
        scopes: &[String],
    ) -> Result<TokenRecord, StoreError> {
        let id = new_id("tok");
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO api_tokens (id, name, token_sha256, scopes, created_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(name)
        .bind(token_sha256)
        .bind(scopes.join(" "))
        .bind(now_ms())
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
            serde_json::json!({ "name": name, "scopes": scopes }),
        )
        .await?;
        tx.commit().await?;
        Ok(TokenRecord {
            id,
            name: name.to_owned(),
            scopes: scopes.to_vec(),
        })
    }

    /// The live (not revoked) token with this hash.
    pub async fn find_token(&self, token_sha256: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, scopes FROM api_tokens WHERE token_sha256 = $1 AND revoked_ms IS NULL",
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
            })
        })
        .transpose()
        .map_err(|e: sqlx::Error| e.into())
    }
}
