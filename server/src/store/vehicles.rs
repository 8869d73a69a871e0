//! Vehicles: identity (opaque id, device public key), ECUs, installed images, check-ins.

use super::{audit, conflict_or, ms_to_rfc3339, now_ms, optional_digest, Actor, Store, StoreError};
use ota_core::encoding::Sha256Digest;
use ota_core::metadata::TargetsBinding;
use ota_core::protocol::{CheckIn, EcuReport, InstalledImage};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(as = Ecu)]
pub struct EcuRecord {
    #[schema(value_type = crate::api::validate::schema::Name)]
    pub ecu: String,
    #[schema(value_type = crate::api::validate::schema::Name)]
    pub hardware_id: String,
    /// Null until the vehicle has reported what it runs.
    #[schema(value_type = Option<crate::api::validate::schema::Name>)]
    pub installed_version: Option<String>,
    #[schema(value_type = Option<crate::api::validate::schema::Sha256Hex>)]
    pub installed_sha256: Option<Sha256Digest>,
    #[schema(value_type = Option<crate::api::validate::schema::Count>)]
    pub installed_length: Option<u64>,
}

/// A vehicle's registered device key and whether it was decommissioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKeyRecord {
    /// Hex of the raw Ed25519 device public key.
    pub public_key: String,
    pub decommissioned: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Vehicle)]
pub struct VehicleRecord {
    #[schema(value_type = crate::api::validate::schema::VehicleId)]
    pub id: String,
    /// Hex of the raw Ed25519 device public key.
    #[schema(value_type = crate::api::validate::schema::PublicKeyHex)]
    pub public_key: String,
    #[schema(value_type = Vec<crate::api::validate::schema::Name>)]
    pub tags: Vec<String>,
    pub ecus: Vec<EcuRecord>,
    #[schema(value_type = crate::api::validate::schema::Timestamp)]
    pub created_at: String,
    /// Null until the first check-in.
    #[schema(value_type = Option<crate::api::validate::schema::Timestamp>)]
    pub last_seen_at: Option<String>,
    /// The state the agent last reported; null until it reports one.
    pub agent_state: Option<String>,
    #[schema(value_type = crate::api::validate::schema::Counter)]
    pub director_version: u64,
    /// When it was taken out of service (its messages are refused since); null while in
    /// service.
    #[schema(value_type = Option<crate::api::validate::schema::Timestamp>)]
    pub decommissioned_at: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewVehicle {
    pub id: String,
    pub public_key: String,
    pub tags: Vec<String>,
    /// (ecu, hardware id)
    pub ecus: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct VehicleFilter {
    pub hardware_id: Option<String>,
    pub tag: Option<String>,
    pub installed_version: Option<String>,
    pub limit: i64,
}

impl Store {
    pub async fn insert_vehicle(
        &self,
        actor: &Actor,
        vehicle: NewVehicle,
    ) -> Result<VehicleRecord, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO vehicles (id, public_key, tags, created_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(&vehicle.id)
        .bind(&vehicle.public_key)
        .bind(serde_json::to_string(&vehicle.tags).unwrap_or_default())
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(conflict_or(
            "vehicle",
            format!("vehicle {:?} is already registered", vehicle.id),
        ))?;
        for (ecu, hardware_id) in &vehicle.ecus {
            sqlx::query(
                "INSERT INTO vehicle_ecus (vehicle_id, ecu, hardware_id) VALUES ($1, $2, $3)",
            )
            .bind(&vehicle.id)
            .bind(ecu)
            .bind(hardware_id)
            .execute(&mut *tx)
            .await?;
        }
        audit::record(
            &mut tx,
            actor,
            "vehicle.register",
            &vehicle.id,
            serde_json::json!({ "ecus": vehicle.ecus, "tags": vehicle.tags }),
        )
        .await?;
        tx.commit().await?;
        self.get_vehicle(&vehicle.id).await
    }

    /// Registers every vehicle of `vehicles` in one transaction, or none: the first id
    /// already registered is a `Conflict` naming its index (`vehicles[i].id`). One audit
    /// entry (`vehicle.register_bulk`) lists the ids. Returns how many were registered.
    pub async fn insert_vehicles(
        &self,
        actor: &Actor,
        vehicles: &[NewVehicle],
    ) -> Result<u64, StoreError> {
        /// Rows per multi-row INSERT: 4 parameters each stays far below SQLite's 32,766
        /// and PostgreSQL's 65,535 bind parameters.
        const CHUNK: usize = 500;
        let mut tx = self.begin().await?;
        for (chunk_index, chunk) in vehicles.chunks(CHUNK).enumerate() {
            let sql = format!(
                "SELECT id FROM vehicles WHERE id IN ({})",
                super::placeholders(chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for vehicle in chunk {
                query = query.bind(&vehicle.id);
            }
            let taken: std::collections::HashSet<String> = query
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| row.try_get::<String, _>("id"))
                .collect::<Result<_, _>>()?;
            if let Some(i) = chunk.iter().position(|v| taken.contains(&v.id)) {
                let index = chunk_index * CHUNK + i;
                return Err(StoreError::Conflict {
                    entity: "vehicle",
                    detail: format!(
                        "vehicles[{index}].id: vehicle {:?} is already registered",
                        chunk[i].id
                    ),
                });
            }
        }
        let now = now_ms();
        for chunk in vehicles.chunks(CHUNK) {
            let rows = (0..chunk.len())
                .map(|i| {
                    let b = i * 4;
                    format!("(${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4)
                })
                .collect::<Vec<_>>()
                .join(", ");
            let sql =
                format!("INSERT INTO vehicles (id, public_key, tags, created_ms) VALUES {rows}");
            let mut query = sqlx::query(&sql);
            for vehicle in chunk {
                query = query
                    .bind(&vehicle.id)
                    .bind(&vehicle.public_key)
                    .bind(serde_json::to_string(&vehicle.tags).unwrap_or_default())
                    .bind(now);
            }
            // A concurrent registration of one of these ids lands here.
            query.execute(&mut *tx).await.map_err(conflict_or(
                "vehicle",
                "a vehicle in the batch was registered concurrently".to_owned(),
            ))?;
        }
        let ecus: Vec<(&str, &str, &str)> = vehicles
            .iter()
            .flat_map(|v| {
                v.ecus
                    .iter()
                    .map(|(ecu, hw)| (v.id.as_str(), ecu.as_str(), hw.as_str()))
            })
            .collect();
        for chunk in ecus.chunks(CHUNK) {
            let rows = (0..chunk.len())
                .map(|i| {
                    let b = i * 3;
                    format!("(${}, ${}, ${})", b + 1, b + 2, b + 3)
                })
                .collect::<Vec<_>>()
                .join(", ");
            let sql =
                format!("INSERT INTO vehicle_ecus (vehicle_id, ecu, hardware_id) VALUES {rows}");
            let mut query = sqlx::query(&sql);
            for (vehicle, ecu, hardware_id) in chunk {
                query = query.bind(*vehicle).bind(*ecu).bind(*hardware_id);
            }
            query.execute(&mut *tx).await?;
        }
        let ids: Vec<&str> = vehicles.iter().map(|v| v.id.as_str()).collect();
        audit::record(
            &mut tx,
            actor,
            "vehicle.register_bulk",
            &format!("{} vehicles", vehicles.len()),
            serde_json::json!({ "count": vehicles.len(), "ids": ids }),
        )
        .await?;
        tx.commit().await?;
        Ok(vehicles.len() as u64)
    }

    /// Vehicles from rows of `vehicles` columns, with their ECUs read in one query per
    /// thousand vehicles.
    pub(super) async fn vehicles_from_rows(
        &self,
        rows: &[AnyRow],
    ) -> Result<Vec<VehicleRecord>, StoreError> {
        let ids: Vec<String> = rows
            .iter()
            .map(|row| row.try_get("id"))
            .collect::<Result<_, _>>()?;
        let mut ecus: HashMap<String, Vec<EcuRecord>> = HashMap::new();
        for chunk in ids.chunks(1000) {
            let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let ecu_rows = self
                .fetch_in(
                    "SELECT vehicle_id, ecu, hardware_id, installed_version, installed_sha256, \
                       installed_length FROM vehicle_ecus WHERE vehicle_id IN",
                    &chunk,
                )
                .await?;
            for row in &ecu_rows {
                ecus.entry(row.try_get("vehicle_id")?)
                    .or_default()
                    .push(ecu_from_row(row)?);
            }
        }
        rows.iter()
            .zip(&ids)
            .map(|(row, id)| {
                let mut ecus = ecus.remove(id).unwrap_or_default();
                ecus.sort_by(|a, b| a.ecu.cmp(&b.ecu));
                vehicle_with_ecus(row, ecus)
            })
            .collect()
    }

    /// What verifying a vehicle's messages needs, for many vehicles in one query
    /// (unknown ids are absent).
    pub async fn device_keys(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<String, DeviceKeyRecord>, StoreError> {
        self.fetch_in(
            "SELECT id, public_key, decommissioned_ms FROM vehicles WHERE id IN",
            ids,
        )
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.try_get("id")?,
                DeviceKeyRecord {
                    public_key: row.try_get("public_key")?,
                    decommissioned: row
                        .try_get::<Option<i64>, _>("decommissioned_ms")?
                        .is_some(),
                },
            ))
        })
        .collect()
    }

    /// The vehicle with its ECUs.
    pub async fn get_vehicle(&self, id: &str) -> Result<VehicleRecord, StoreError> {
        self.vehicles_by_ids(&[id])
            .await?
            .remove(id)
            .ok_or_else(|| StoreError::NotFound {
                entity: "vehicle",
                id: id.to_owned(),
            })
    }

    /// Vehicles with their ECUs by id, in two queries (every batch of check-ins reads
    /// it); unknown ids are absent. Not one `LEFT JOIN`: on PostgreSQL, before the
    /// statistics of a freshly registered fleet exist, that join was planned as a hash
    /// join over every ECU row (measured: a sequential scan of 50,000 rows per batch),
    /// while each of the two lookups ([`Store::fetch_in`]) is index lookups whatever the
    /// statistics say.
    pub async fn vehicles_by_ids(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<String, VehicleRecord>, StoreError> {
        let rows = self
            .fetch_in("SELECT * FROM vehicles WHERE id IN", ids)
            .await?;
        Ok(self
            .vehicles_from_rows(&rows)
            .await?
            .into_iter()
            .map(|v| (v.id.clone(), v))
            .collect())
    }

    pub async fn list_vehicles(
        &self,
        filter: &VehicleFilter,
    ) -> Result<Vec<VehicleRecord>, StoreError> {
        // Tags are a JSON array of strings; matching the quoted tag inside it is exact
        // because tags are validated to contain no quote characters.
        let rows = sqlx::query(
            "SELECT * FROM vehicles v WHERE \
               ($1 = '' OR EXISTS (SELECT 1 FROM vehicle_ecus e WHERE e.vehicle_id = v.id AND e.hardware_id = $1)) \
               AND ($2 = '' OR v.tags LIKE $3) \
               AND ($4 = '' OR EXISTS (SELECT 1 FROM vehicle_ecus e WHERE e.vehicle_id = v.id AND e.installed_version = $4)) \
             ORDER BY v.id LIMIT $5",
        )
        .bind(filter.hardware_id.clone().unwrap_or_default())
        .bind(filter.tag.clone().unwrap_or_default())
        .bind(format!("%\"{}\"%", filter.tag.clone().unwrap_or_default()))
        .bind(filter.installed_version.clone().unwrap_or_default())
        .bind(if filter.limit > 0 { filter.limit } else { 1000 })
        .fetch_all(self.pool())
        .await?;
        self.vehicles_from_rows(&rows).await
    }

    /// Every vehicle in service, for director decisions over a fleet (bounded by
    /// `limit`); decommissioned vehicles are never assigned anything.
    pub async fn all_vehicles(&self, limit: i64) -> Result<Vec<VehicleRecord>, StoreError> {
        let mut vehicles = self
            .list_vehicles(&VehicleFilter {
                limit,
                ..VehicleFilter::default()
            })
            .await?;
        vehicles.retain(|v| v.decommissioned_at.is_none());
        Ok(vehicles)
    }

    /// Records a verified check-in and reserves the director metadata version to answer
    /// it with, in one write: last seen, agent state, replay guard, and the next director
    /// version (above both what the server issued and what the vehicle says it trusts, so
    /// versions only ever grow). Installed images are written only for ECUs whose report
    /// differs from `known` (what the store last held); reports for ECUs the vehicle was
    /// not provisioned with are ignored.
    ///
    /// A check-in is accepted only if it was sent after the newest accepted one, or in the
    /// same second with another nonce (send times have whole-second resolution).
    /// Returns `None` for a replay.
    pub async fn record_checkin(
        &self,
        checkin: &CheckIn,
        known: &[EcuRecord],
        now: i64,
    ) -> Result<Option<u64>, StoreError> {
        let write = CheckinWrite {
            checkin: checkin.clone(),
            known: known.to_vec(),
            now,
        };
        self.record_checkins(std::slice::from_ref(&write))
            .await?
            .pop()
            .unwrap_or(Ok(None))
    }
}

/// One ECU from a row of `vehicle_ecus` columns.
fn ecu_from_row(row: &AnyRow) -> Result<EcuRecord, StoreError> {
    let sha: Option<String> = row.try_get("installed_sha256")?;
    Ok(EcuRecord {
        ecu: row.try_get("ecu")?,
        hardware_id: row.try_get("hardware_id")?,
        installed_version: row.try_get("installed_version")?,
        installed_sha256: optional_digest("ecu installed_sha256", sha)?,
        installed_length: row
            .try_get::<Option<i64>, _>("installed_length")?
            .map(|l| l.max(0) as u64),
    })
}

/// A vehicle from a row of `vehicles` columns and its ECUs.
fn vehicle_with_ecus(row: &AnyRow, ecus: Vec<EcuRecord>) -> Result<VehicleRecord, StoreError> {
    let tags: String = row.try_get("tags")?;
    Ok(VehicleRecord {
        ecus,
        id: row.try_get("id")?,
        public_key: row.try_get("public_key")?,
        tags: super::parse_json("vehicle tags", &tags)?,
        created_at: ms_to_rfc3339(row.try_get("created_ms")?),
        last_seen_at: row
            .try_get::<Option<i64>, _>("last_seen_ms")?
            .map(ms_to_rfc3339),
        agent_state: row.try_get("agent_state")?,
        director_version: row.try_get::<i64, _>("director_version")?.max(0) as u64,
        decommissioned_at: row
            .try_get::<Option<i64>, _>("decommissioned_ms")?
            .map(ms_to_rfc3339),
    })
}

/// One check-in to record (see [`Store::record_checkin`]).
#[derive(Debug, Clone)]
pub struct CheckinWrite {
    pub checkin: CheckIn,
    pub known: Vec<EcuRecord>,
    pub now: i64,
}

/// The ECUs whose reported image differs from what was stored (`known`).
pub(super) fn changed_ecus<'a>(checkin: &'a CheckIn, known: &[EcuRecord]) -> Vec<&'a EcuReport> {
    checkin
        .ecus
        .iter()
        .filter(|report| {
            known.iter().any(|k| {
                k.ecu == report.ecu && k.installed() != report.installed.as_ref().map(image_key)
            })
        })
        .collect()
}

/// ECU rows per multi-row `UPDATE` (5 parameters each).
const ECUS_PER_UPDATE: usize = 500;

/// Stores what ECUs reported they run, each `(vehicle id, report)`: one `UPDATE … FROM
/// (VALUES …)` per [`ECUS_PER_UPDATE`] (PostgreSQL and SQLite both name the columns of
/// a `VALUES` list `column1`, `column2`, …).
pub(super) async fn update_ecus(
    tx: &mut Transaction<'static, Any>,
    reports: &[(&str, &EcuReport)],
) -> Result<(), StoreError> {
    for chunk in reports.chunks(ECUS_PER_UPDATE) {
        // The vehicle ids again as an `IN` list, so PostgreSQL reads these rows by index
        // instead of joining the list to a scan of every ECU (see `update_by_id_sql`).
        let vehicles: Vec<String> = (0..chunk.len())
            .map(|k| format!("${}", 5 * k + 1))
            .collect();
        let sql = format!(
            "UPDATE vehicle_ecus SET installed_version = v.column3, installed_sha256 = v.column4, \
             installed_length = v.column5 FROM (VALUES {}) AS v \
             WHERE vehicle_ecus.vehicle_id = v.column1 AND vehicle_ecus.ecu = v.column2 \
             AND vehicle_ecus.vehicle_id IN ({})",
            super::values_rows(chunk.len(), 5),
            vehicles.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for (vehicle_id, ecu) in chunk {
            let (version, sha, length) = match &ecu.installed {
                Some(i) => (
                    Some(i.version.clone()),
                    Some(i.sha256.to_hex()),
                    Some(i.length as i64),
                ),
                None => (None, None, None),
            };
            query = query
                .bind(*vehicle_id)
                .bind(&ecu.ecu)
                .bind(version)
                .bind(sha)
                .bind(length);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

impl Store {
    /// How many ECUs of `hardware_id` the server last saw running `version` (one query,
    /// whatever the fleet's size).
    pub async fn count_installed(
        &self,
        hardware_id: &str,
        version: &str,
    ) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM vehicle_ecus WHERE hardware_id = $1 AND installed_version = $2",
        )
        .bind(hardware_id)
        .bind(version)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get::<i64, _>("n")?.max(0) as u64)
    }

    /// The binding to the newest targets document that every director must carry
    /// (PROTOCOL.md §4.3). With no targets document yet the binding has version 0, which
    /// no targets document has: such a director verifies nowhere, as no assignment could.
    pub async fn targets_binding(&self) -> Result<TargetsBinding, StoreError> {
        Ok(match self.latest_targets().await? {
            Some((_, envelope)) => {
                TargetsBinding::of_envelope(envelope.as_bytes()).map_err(|e| {
                    StoreError::Corrupt {
                        what: "targets envelope",
                        reason: e.to_string(),
                    }
                })?
            }
            None => TargetsBinding::of_payload(0, b""),
        })
    }
}

fn image_key(image: &InstalledImage) -> (&str, Sha256Digest, u64) {
    (&image.version, image.sha256, image.length)
}

impl EcuRecord {
    /// The installed image, when all three of its fields are known.
    pub fn installed(&self) -> Option<(&str, Sha256Digest, u64)> {
        match (
            &self.installed_version,
            self.installed_sha256,
            self.installed_length,
        ) {
            (Some(version), Some(sha256), Some(length)) => Some((version.as_str(), sha256, length)),
            _ => None,
        }
    }

    pub fn installed_image(&self) -> Option<InstalledImage> {
        self.installed()
            .map(|(version, sha256, length)| InstalledImage {
                version: version.to_owned(),
                sha256,
                length,
            })
    }
}
