//! The API's lists, one page at a time: keyset pagination (a page starts after the
//! sort key of the previous page's last row, so rows added meanwhile neither shift nor
//! repeat a page) with each list's filters. Every query is assembled from fixed SQL
//! fragments; values are always bound parameters.

use super::audit::audit_from_row;
use super::deltas::job_from_row;
use super::images::{image_from_row, IMAGE_COLUMNS};
use super::rollouts::rollout_from_row;
use super::tokens::token_info;
use super::{
    AuditEntry, DeltaJob, DeltaJobStatus, ImageRecord, ReleaseRecord, RolloutRecord, Store,
    StoreError, TokenInfo, VehicleRecord,
};
use crate::rollout::RolloutState;
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::Any;

/// Where a page starts and which way it runs, over (creation time, id).
#[derive(Debug, Clone, Default)]
pub struct Keyset {
    /// The previous page's last (creation time in ms, id).
    pub after: Option<(i64, String)>,
    /// Newest first instead of oldest first.
    pub descending: bool,
    /// Rows to read (the API asks one more than it shows, to know whether more exist).
    pub limit: i64,
}

/// A value bound to a query.
#[derive(Debug, Clone)]
enum Param {
    Text(String),
    Int(i64),
}

/// A `WHERE … ORDER BY … LIMIT` under construction, numbering its parameters.
#[derive(Debug, Default)]
struct Filter {
    conditions: Vec<String>,
    params: Vec<Param>,
}

impl Filter {
    fn next(&mut self, param: Param) -> String {
        self.params.push(param);
        format!("${}", self.params.len())
    }

    /// `column = value` when a value is given.
    fn equals(&mut self, column: &str, value: Option<&str>) {
        if let Some(value) = value {
            let p = self.next(Param::Text(value.to_owned()));
            self.conditions.push(format!("{column} = {p}"));
        }
    }

    fn condition(&mut self, template: &str, param: Param) {
        let p = self.next(param);
        self.conditions.push(template.replace("{}", &p));
    }

    /// The keyset condition over (`time`, `id`) and the matching order and limit.
    fn keyset(&mut self, time: &str, id: &str, keyset: &Keyset) -> String {
        let (cmp, dir) = if keyset.descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        if let Some((at, last)) = &keyset.after {
            let a = self.next(Param::Int(*at));
            let b = self.next(Param::Text(last.clone()));
            self.conditions.push(format!(
                "({time} {cmp} {a} OR ({time} = {a} AND {id} {cmp} {b}))"
            ));
        }
        let limit = self.next(Param::Int(keyset.limit));
        format!("ORDER BY {time} {dir}, {id} {dir} LIMIT {limit}")
    }

    fn sql(&self, select: &str, tail: &str) -> String {
        if self.conditions.is_empty() {
            format!("{select} {tail}")
        } else {
            format!("{select} WHERE {} {tail}", self.conditions.join(" AND "))
        }
    }

    fn bind<'q>(
        &self,
        mut query: Query<'q, Any, AnyArguments<'q>>,
    ) -> Query<'q, Any, AnyArguments<'q>> {
        for param in &self.params {
            query = match param {
                Param::Text(t) => query.bind(t.clone()),
                Param::Int(i) => query.bind(*i),
            };
        }
        query
    }
}

/// Filters of the image list.
#[derive(Debug, Clone, Default)]
pub struct ImageFilter {
    pub hardware_id: Option<String>,
    pub version: Option<String>,
}

/// Filters of the vehicle list: every given condition holds (all of `tags`).
#[derive(Debug, Clone, Default)]
pub struct VehicleListFilter {
    pub hardware_id: Option<String>,
    pub tags: Vec<String>,
    pub installed_version: Option<String>,
    pub order: VehicleOrder,
    pub limit: i64,
}

/// The vehicle list's order and where a page starts in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VehicleOrder {
    /// By id; `after` is the previous page's last id.
    Id {
        descending: bool,
        after: Option<String>,
    },
    /// By last check-in (never-seen vehicles first, as the oldest), then id; `after`
    /// is the previous page's last (last check-in in ms or -1, id).
    LastSeen {
        descending: bool,
        after: Option<(i64, String)>,
    },
}

impl Default for VehicleOrder {
    fn default() -> Self {
        VehicleOrder::Id {
            descending: false,
            after: None,
        }
    }
}

/// Filters of the audit log, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// The entry's subject: the id of what was changed.
    pub target: Option<String>,
    /// `since_ms <= at < until_ms`.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only entries older than this id (the cursor).
    pub before_id: Option<i64>,
    pub limit: i64,
}

impl Store {
    pub async fn image_page(
        &self,
        filter: &ImageFilter,
        keyset: &Keyset,
    ) -> Result<Vec<ImageRecord>, StoreError> {
        let mut f = Filter::default();
        f.equals("hardware_id", filter.hardware_id.as_deref());
        f.equals("version", filter.version.as_deref());
        let tail = f.keyset("created_ms", "id", keyset);
        let sql = f.sql(&format!("SELECT {IMAGE_COLUMNS} FROM images"), &tail);
        let rows = f.bind(sqlx::query(&sql)).fetch_all(self.pool()).await?;
        Ok(rows.iter().map(image_from_row).collect::<Result<_, _>>()?)
    }

    pub async fn release_page(
        &self,
        version: Option<&str>,
        keyset: &Keyset,
    ) -> Result<Vec<ReleaseRecord>, StoreError> {
        let mut f = Filter::default();
        f.equals("version", version);
        let tail = f.keyset("created_ms", "id", keyset);
        let sql = f.sql("SELECT * FROM releases", &tail);
        let rows = f.bind(sqlx::query(&sql)).fetch_all(self.pool()).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(self.release_from_row(row).await?);
        }
        Ok(out)
    }

    pub async fn rollout_page(
        &self,
        state: Option<RolloutState>,
        release_id: Option<&str>,
        keyset: &Keyset,
    ) -> Result<Vec<RolloutRecord>, StoreError> {
        let mut f = Filter::default();
        f.equals("state", state.map(|s| s.as_str()));
        f.equals("release_id", release_id);
        let tail = f.keyset("created_ms", "id", keyset);
        let sql = f.sql("SELECT * FROM rollouts", &tail);
        let rows = f.bind(sqlx::query(&sql)).fetch_all(self.pool()).await?;
        rows.iter().map(rollout_from_row).collect()
    }

    pub async fn delta_job_page(
        &self,
        rollout_id: Option<&str>,
        status: Option<DeltaJobStatus>,
        keyset: &Keyset,
    ) -> Result<Vec<DeltaJob>, StoreError> {
        let mut f = Filter::default();
        f.equals("rollout_id", rollout_id);
        f.equals("status", status.map(|s| s.as_str()));
        let tail = f.keyset("created_ms", "id", keyset);
        let sql = f.sql("SELECT * FROM delta_jobs", &tail);
        let rows = f.bind(sqlx::query(&sql)).fetch_all(self.pool()).await?;
        rows.iter().map(job_from_row).collect()
    }

    /// API tokens (never their values).
    pub async fn token_page(&self, keyset: &Keyset) -> Result<Vec<TokenInfo>, StoreError> {
        let mut f = Filter::default();
        let tail = f.keyset("created_ms", "id", keyset);
        let sql = f.sql(
            "SELECT id, name, scopes, created_ms, revoked_ms, expires_ms FROM api_tokens",
            &tail,
        );
        let rows = f.bind(sqlx::query(&sql)).fetch_all(self.pool()).await?;
        rows.iter()
            .map(token_info)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Vehicles by id.
    pub async fn vehicle_page(
        &self,
        filter: &VehicleListFilter,
    ) -> Result<Vec<VehicleRecord>, StoreError> {
        let mut f = Filter::default();
        if let Some(hw) = &filter.hardware_id {
            f.condition(
                "EXISTS (SELECT 1 FROM vehicle_ecus e WHERE e.vehicle_id = v.id AND e.hardware_id = {})",
                Param::Text(hw.clone()),
            );
        }
        // Tags are a JSON array of strings; matching the quoted tag inside it is exact
        // because tags are validated to contain no quote characters.
        for tag in &filter.tags {
            f.condition("v.tags LIKE {}", Param::Text(format!("%\"{tag}\"%")));
        }
        if let Some(version) = &filter.installed_version {
            f.condition(
                "EXISTS (SELECT 1 FROM vehicle_ecus e WHERE e.vehicle_id = v.id AND e.installed_version = {})",
                Param::Text(version.clone()),
            );
        }
        let tail = match &filter.order {
            VehicleOrder::Id { descending, after } => {
                let (cmp, dir) = if *descending {
                    ("<", "DESC")
                } else {
                    (">", "ASC")
                };
                if let Some(after) = after {
                    f.condition(&format!("v.id {cmp} {{}}"), Param::Text(after.clone()));
                }
                let limit = f.next(Param::Int(filter.limit));
                format!("ORDER BY v.id {dir} LIMIT {limit}")
            }
            VehicleOrder::LastSeen { descending, after } => f.keyset(
                "COALESCE(v.last_seen_ms, -1)",
                "v.id",
                &Keyset {
                    after: after.clone(),
                    descending: *descending,
                    limit: filter.limit,
                },
            ),
        };
        let sql = f.sql("SELECT * FROM vehicles v", &tail);
        let rows = f.bind(sqlx::query(&sql)).fetch_all(self.pool()).await?;
        self.vehicles_from_rows(&rows).await
    }

    /// Audit entries, newest first.
    pub async fn audit_page(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let mut f = Filter::default();
        f.equals("actor", filter.actor.as_deref());
        f.equals("action", filter.action.as_deref());
        f.equals("subject", filter.target.as_deref());
        if let Some(since) = filter.since_ms {
            f.condition("at_ms >= {}", Param::Int(since));
        }
        if let Some(until) = filter.until_ms {
            f.condition("at_ms < {}", Param::Int(until));
        }
        if let Some(before) = filter.before_id {
            f.condition("id < {}", Param::Int(before));
        }
        let limit = f.next(Param::Int(filter.limit));
        let sql = f.sql(
            "SELECT id, at_ms, actor, action, subject, detail, request_id FROM audit_log",
            &format!("ORDER BY id DESC LIMIT {limit}"),
        );
        let rows = f.bind(sqlx::query(&sql)).fetch_all(self.pool()).await?;
        rows.iter()
            .map(audit_from_row)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_number_their_parameters_and_page_by_keyset() {
        let mut f = Filter::default();
        f.equals("a", Some("x"));
        f.equals("b", None);
        let tail = f.keyset(
            "t",
            "id",
            &Keyset {
                after: Some((5, "k".to_owned())),
                descending: true,
                limit: 3,
            },
        );
        assert_eq!(
            f.sql("SELECT * FROM r", &tail),
            "SELECT * FROM r WHERE a = $1 AND (t < $2 OR (t = $2 AND id < $3)) \
             ORDER BY t DESC, id DESC LIMIT $4"
        );
        assert_eq!(f.params.len(), 4);
        let mut f = Filter::default();
        let tail = f.keyset(
            "t",
            "id",
            &Keyset {
                limit: 2,
                ..Keyset::default()
            },
        );
        assert_eq!(
            f.sql("SELECT * FROM r", &tail),
            "SELECT * FROM r ORDER BY t ASC, id ASC LIMIT $1"
        );
    }
}
