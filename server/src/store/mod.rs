//! Storage: every table the server keeps, behind one [`Store`].
//!
//! Backend choice: one `sqlx::AnyPool` over portable SQL rather than an enum of
//! `SqlitePool`/`PgPool` with two copies of every query. The schemas in
//! `migrations/{sqlite,postgres}` are kept column-for-column identical and use only
//! `TEXT` and `BIGINT` (the types the Any driver maps on both sides); placeholders are
//! `$1, $2, ...`, which both SQLite and PostgreSQL accept. The backend is picked from the
//! URL scheme, and the matching migration folder is embedded and applied at startup.
//!
//! Architecture invariant: only the server talks to the database, and every mutating
//! API call writes its audit entry in the same transaction as the change.

mod audit;
mod checkins;
mod deletions;
mod deltas;
mod deployments;
mod images;
mod lists;
mod outbox;
mod progress;
mod releases;
mod rollouts;
mod tallies;
mod tokens;
mod vehicle_changes;
mod vehicles;

use ota_core::encoding::Sha256Digest;

pub use audit::AuditEntry;
pub use deltas::{BuiltDelta, DeltaJob, DeltaJobStatus};
pub use deployments::{DeploymentChange, DeploymentEvent, DeploymentQuery, OutcomeEvent};
pub use images::{ImageRecord, NewImage};
pub use lists::{AuditFilter, ImageFilter, Keyset, VehicleListFilter, VehicleOrder};
pub use outbox::OutboxRow;
pub use releases::{NewRelease, ReleaseImage, ReleaseRecord};
pub use rollouts::{
    AssignmentWrite, ChangeError, DeploymentRecord, DeploymentUpdate, NewRollout, PhaseCounts,
    RolloutRecord,
};
pub use tallies::{fold as fold_tallies, Aggregates, Tally, COMPACT_ABOVE};
pub use tokens::{TokenInfo, TokenRecord};
pub use vehicles::{
    CheckinWrite, DeviceKeyRecord, EcuRecord, NewVehicle, VehicleFilter, VehicleRecord,
};

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Transaction};
use std::time::Duration;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");
/// A pooled connection idle at least this long is pinged before it is handed out.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(5);

/// Which database the URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn from_url(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl {
                scheme: url.split(':').next().unwrap_or_default().to_owned(),
            })
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{entity} {id:?} not found")]
    NotFound { entity: &'static str, id: String },
    #[error("{entity} conflicts with an existing one: {detail}")]
    Conflict {
        entity: &'static str,
        detail: String,
    },
    #[error("database URL scheme {scheme:?} is not supported (use sqlite: or postgres://)")]
    UnsupportedUrl { scheme: String },
    /// A value the database cannot hold without loss (it stores signed 64-bit
    /// integers); the API refuses such values first, this is the last line.
    #[error("{field} = {value} does not fit a signed 64-bit column")]
    OutOfRange { field: &'static str, value: u64 },
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("applying migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        StoreError::Database(err)
    }
}

/// `$1, $2, …, $n`: the bind placeholders of an `IN (…)` list of `n` values.
pub(crate) fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `SET` item that puts a deployment handed out (again) in its rollout's current
/// breaker window (`deployments.window_ms`; see `store/tallies.rs`).
macro_rules! window_now {
    () => {
        "window_ms = (SELECT window_start_ms FROM rollouts WHERE rollouts.id = deployments.rollout_id)"
    };
}
pub(crate) use window_now;

/// `($1, …, $w), ($w+1, …), …`: the bind placeholders of a multi-row `VALUES` list of
/// `rows` rows of `width` values each.
pub(crate) fn values_rows(rows: usize, width: usize) -> String {
    values_rows_from(1, rows, width)
}

/// [`values_rows`] with the first placeholder `$first` instead of `$1`.
pub(crate) fn values_rows_from(first: usize, rows: usize, width: usize) -> String {
    (0..rows)
        .map(|k| {
            let row: Vec<String> = (0..width)
                .map(|i| format!("${}", first + width * k + i))
                .collect();
            format!("({})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `UPDATE table SET c = v.column2, …{also} FROM (VALUES (…), …) AS v WHERE table.id =
/// v.column1 AND table.id IN (…)` for `rows` rows: row k's parameters start at `first + k * (columns.len() +
/// 1)`, its id first, then one per column in order. One statement sets each row to its
/// own values, joined by id: its cost grows with the rows, where a `CASE id WHEN …` per
/// column (what this built until session 11) compared every row with every arm.
pub(crate) fn update_by_id_sql(
    table: &str,
    columns: &[&str],
    also: &str,
    rows: usize,
    first: usize,
) -> String {
    let width = columns.len() + 1;
    let set: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, column)| format!("{column} = v.column{}", i + 2))
        .collect();
    // The ids again, as an `IN` list: without it PostgreSQL joins the `VALUES` list to a
    // sequential scan of the whole table (a hash join: a cost that grows with the table,
    // checked with `EXPLAIN`); with it, to an index scan of these rows.
    let ids: Vec<String> = (0..rows)
        .map(|k| format!("${}", first + k * width))
        .collect();
    format!(
        "UPDATE {table} SET {}{also} FROM (VALUES {}) AS v WHERE {table}.id = v.column1 \
         AND {table}.id IN ({})",
        set.join(", "),
        values_rows_from(first, rows, width),
        ids.join(", ")
    )
}

impl Store {
    /// The rows of `select` (`SELECT … FROM table WHERE id IN`) for `ids`, inside `tx`,
    /// locked until it ends: PostgreSQL locks the rows read, in id order (two writers
    /// never deadlock); SQLite's write lock is held from `BEGIN IMMEDIATE` anyway.
    /// Nothing changes them between a plan made from them and its writes.
    pub(crate) async fn locked_by_id(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        select: &str,
        mut ids: Vec<&str>,
    ) -> Result<Vec<sqlx::any::AnyRow>, StoreError> {
        ids.sort_unstable();
        ids.dedup();
        let lock = match self.backend {
            Backend::Postgres => " ORDER BY id FOR UPDATE",
            Backend::Sqlite => "",
        };
        let sql = format!("{select} ({}){lock}", placeholders(ids.len()));
        let mut query = sqlx::query(&sql);
        for id in &ids {
            query = query.bind(*id);
        }
        Ok(query.fetch_all(&mut **tx).await?)
    }

    /// The rows of `select` (a query ending in `WHERE <column> IN`) for `ids` (each id
    /// once, whatever `ids` repeats), in one round trip; no ids, no query. See
    /// [`keyed_lookup_sql`] for the statement.
    pub(crate) async fn fetch_in(
        &self,
        select: &str,
        ids: &[&str],
    ) -> Result<Vec<sqlx::any::AnyRow>, StoreError> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = keyed_lookup_sql(self.backend, select, ids.len());
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(id);
        }
        Ok(query.fetch_all(self.pool()).await?)
    }
}

/// The statement of [`Store::fetch_in`] for `n` ids (pure). SQLite: `select ($1, …)`.
/// PostgreSQL: one index lookup per id, whatever the table's statistics say, as a
/// lateral join over a `VALUES` list (`OFFSET 0` keeps the planner from flattening it
/// into a hash join). An `IN` list was planned as a scan of the whole table while a
/// table filled by a rollout had no statistics yet (measured: `deployments`, 50,000
/// rows never analyzed, 256 ids: a sequential scan; the lateral form: 256 index scans).
pub(crate) fn keyed_lookup_sql(backend: Backend, select: &str, n: usize) -> String {
    match (backend, select.strip_suffix(" IN")) {
        (Backend::Postgres, Some(lookup)) => {
            let values: Vec<String> = (1..=n).map(|i| format!("(${i})")).collect();
            format!(
                "SELECT q.* FROM (VALUES {}) AS v CROSS JOIN LATERAL \
                 ({lookup} = v.column1 OFFSET 0) AS q",
                values.join(", ")
            )
        }
        _ => format!("{select} ({})", placeholders(n)),
    }
}

/// `value` as the signed 64-bit integer the database stores, never wrapped.
pub(crate) fn to_i64(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { field, value })
}

/// Maps a unique-constraint violation to `Conflict`, anything else to `Database`.
pub(crate) fn conflict_or(
    entity: &'static str,
    detail: String,
) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |err| {
        let unique = err
            .as_database_error()
            .is_some_and(|db| db.is_unique_violation());
        if unique {
            StoreError::Conflict { entity, detail }
        } else {
            StoreError::Database(err)
        }
    }
}

/// Who made a change, for the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The API token's name, or `"system"` for the server itself.
    pub name: String,
    pub request_id: Option<String>,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            name: "system".to_owned(),
            request_id: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Unix milliseconds as RFC 3339 for API responses.
pub fn ms_to_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A random identifier with a type prefix, e.g. `rel_3f9a...` (64 random bits).
/// A stored SHA-256 column, typed; a value that is not one is a corrupt store.
pub(crate) fn digest(what: &'static str, text: &str) -> Result<Sha256Digest, StoreError> {
    Sha256Digest::parse(text).map_err(|reason| StoreError::Corrupt { what, reason })
}

/// An optional stored SHA-256 column, typed.
pub(crate) fn optional_digest(
    what: &'static str,
    text: Option<String>,
) -> Result<Option<Sha256Digest>, StoreError> {
    text.map(|t| digest(what, &t)).transpose()
}

pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    // getrandom only fails when the OS has no entropy source at all; an id from the clock
    // is then still unique enough for one process.
    if getrandom::getrandom(&mut bytes).is_err() {
        bytes = (now_ms() as u64).to_be_bytes();
    }
    format!("{prefix}_{}", hex::encode(bytes))
}

impl Store {
    /// Connects (creating a SQLite file if needed) and applies the migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            // sqlx pings every connection it hands out by default: a round trip before
            // each query, which under load was a third of them. Only a connection that
            // sat idle (where a database restart would show) is pinged now; a busy one
            // that broke fails its query, which every caller already handles.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for < IDLE_BEFORE_PING {
                        return Ok(true);
                    }
                    Ok(sqlx::Connection::ping(conn).await.is_ok())
                })
            })
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: readers never wait for the writer, and a commit appends to
                        // the log instead of rewriting pages. NORMAL syncs at checkpoints
                        // only, which is durable against process crashes (a power loss
                        // may lose the last commits, never corrupt the file). The busy
                        // timeout makes a second writer wait instead of failing.
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA busy_timeout = 5000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let store = Store { pool, backend };
        match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&store.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&store.pool).await?,
        }
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begins a write transaction. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`, waiting up to the busy timeout for another writer): a deferred
    /// transaction that reads first and writes later fails at once with
    /// `SQLITE_BUSY_SNAPSHOT` whenever another connection committed in between (seen
    /// with bulk registration beside the rollout-events relay's lease renewal).
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// A trivial round trip, for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_by_id_joins_its_values_and_names_its_ids_for_the_index() {
        assert_eq!(
            update_by_id_sql(
                "deployments",
                &["status", "reason_code"],
                ", updated_ms = $1",
                2,
                2
            ),
            "UPDATE deployments SET status = v.column2, reason_code = v.column3, updated_ms = $1 \
             FROM (VALUES ($2, $3, $4), ($5, $6, $7)) AS v WHERE deployments.id = v.column1 \
             AND deployments.id IN ($2, $5)"
        );
    }

    #[test]
    fn keyed_lookups_are_index_lookups_per_key_on_postgres_and_in_lists_on_sqlite() {
        let select = "SELECT id, public_key FROM vehicles WHERE id IN";
        assert_eq!(
            keyed_lookup_sql(Backend::Postgres, select, 2),
            "SELECT q.* FROM (VALUES ($1), ($2)) AS v CROSS JOIN LATERAL \
             (SELECT id, public_key FROM vehicles WHERE id = v.column1 OFFSET 0) AS q"
        );
        assert_eq!(
            keyed_lookup_sql(Backend::Sqlite, select, 2),
            "SELECT id, public_key FROM vehicles WHERE id IN ($1, $2)"
        );
    }
    use sqlx::Row;

    #[tokio::test]
    async fn sqlite_runs_in_wal_mode_with_normal_sync() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("ota.db").display());
        let store = Store::connect(&url, 3).await.unwrap();
        let pragma = |name: &'static str| {
            let pool = store.pool().clone();
            async move {
                let row = sqlx::query(name).fetch_one(&pool).await.unwrap();
                match row.try_get::<String, _>(0) {
                    Ok(text) => text,
                    Err(_) => row.try_get::<i64, _>(0).unwrap().to_string(),
                }
            }
        };
        assert_eq!(pragma("PRAGMA journal_mode").await.to_lowercase(), "wal");
        // 1 = NORMAL (2 = FULL, the default).
        assert_eq!(pragma("PRAGMA synchronous").await, "1");
        assert_eq!(pragma("PRAGMA busy_timeout").await, "5000");
        store.close().await;
    }

    /// A write transaction that reads first must not fail when another connection
    /// writes meanwhile: the other waits for it (`BEGIN IMMEDIATE`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_write_transactions_hold_the_write_lock_from_their_start() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("ota.db").display());
        let store = Store::connect(&url, 3).await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(store.pool())
            .await
            .unwrap();
        let mut tx = store.begin().await.unwrap();
        sqlx::query("SELECT COUNT(*) FROM t")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let pool = store.pool().clone();
        let mut other = tokio::spawn(async move {
            sqlx::query("INSERT INTO t (x) VALUES (2)")
                .execute(&pool)
                .await
                .map(|_| ())
        });
        // The other writer is blocked while the transaction is open (it would commit at
        // once against a deferred transaction, and the write below would then fail).
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), &mut other)
                .await
                .is_err(),
            "another writer committed inside an open write transaction"
        );
        sqlx::query("INSERT INTO t (x) VALUES (1)")
            .execute(&mut *tx)
            .await
            .expect("the transaction's own write after its read");
        tx.commit().await.unwrap();
        other
            .await
            .unwrap()
            .expect("the other writer went after it");
        let rows = sqlx::query("SELECT x FROM t ORDER BY rowid")
            .fetch_all(store.pool())
            .await
            .unwrap();
        let order: Vec<i64> = rows.iter().map(|r| r.try_get(0).unwrap()).collect();
        assert_eq!(order, [1, 2]);
        store.close().await;
    }
}
