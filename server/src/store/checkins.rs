//! Check-ins recorded in bulk: a pure plan of what a batch of check-ins does to the
//! vehicles it names, then two statements for the whole batch (read the rows under the
//! write lock, one `UPDATE … FROM (VALUES …)` of every accepted vehicle), instead of an `UPDATE`
//! per check-in. ECUs whose reported image changed are still one `UPDATE` each (rare:
//! only after an install).

use super::vehicles::{changed_ecus, update_ecus, CheckinWrite};
use super::{Store, StoreError};
use ota_core::protocol::EcuReport;
use sqlx::{Any, Row, Transaction};
use std::collections::HashMap;

/// Vehicles per `UPDATE` (6 parameters each).
const ROWS_PER_UPDATE: usize = 500;

/// What the database holds of a vehicle, as far as a check-in cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Current {
    pub last_sent_ms: Option<i64>,
    pub last_nonce: Option<String>,
    pub director_version: i64,
}

/// A vehicle's state after the batch, for one that accepted a check-in: the last
/// accepted check-in and the version it signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Final<'a> {
    pub last: Arrival<'a>,
    pub director_version: i64,
}

/// What one check-in of the batch comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Recorded, with the director version to sign.
    Recorded(u64),
    /// Not newer than the last accepted one.
    Replayed,
    /// No such vehicle.
    Unknown,
}

/// What a batch of check-ins does.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan<'a> {
    /// Per check-in, in order.
    pub outcomes: Vec<Outcome>,
    /// The accepted vehicles' final states, in the order each was first accepted.
    pub finals: Vec<Final<'a>>,
}

/// The fields of a check-in the rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arrival<'a> {
    pub vehicle_id: &'a str,
    pub now: i64,
    pub agent_state: &'a str,
    pub sent_ms: i64,
    pub nonce: &'a str,
    /// The director version the vehicle already trusts.
    pub trusted: u64,
}

impl<'a> Arrival<'a> {
    pub fn of(write: &'a CheckinWrite) -> Arrival<'a> {
        Arrival {
            vehicle_id: &write.checkin.vehicle_id,
            now: write.now,
            agent_state: &write.checkin.agent_state,
            sent_ms: write.checkin.sent_at.unix_seconds().saturating_mul(1000),
            nonce: &write.checkin.nonce,
            trusted: write.checkin.trusted.director,
        }
    }
}

/// Applies `arrivals` in order to `current`, each as the single-row rule would: a
/// check-in is accepted when it was sent later than the last accepted one, or in the
/// same millisecond with another nonce; an accepted one signs the next director version
/// above both the stored one and the one the vehicle trusts. A later check-in sees the
/// earlier ones' effect.
pub(crate) fn plan<'a>(
    mut current: HashMap<String, Current>,
    arrivals: &[Arrival<'a>],
) -> Plan<'a> {
    let mut plan = Plan::default();
    let mut final_index: HashMap<&'a str, usize> = HashMap::new();
    for a in arrivals {
        let Some(row) = current.get_mut(a.vehicle_id) else {
            plan.outcomes.push(Outcome::Unknown);
            continue;
        };
        let newer = match row.last_sent_ms {
            None => true,
            Some(last) => {
                last < a.sent_ms
                    || (last == a.sent_ms
                        && row.last_nonce.as_deref().is_some_and(|n| n != a.nonce))
            }
        };
        if !newer {
            plan.outcomes.push(Outcome::Replayed);
            continue;
        }
        // Stored as `i64`; the vehicle's claim is capped below `i64::MAX`, never wrapped.
        let trusted = i64::try_from(a.trusted.min(i64::MAX as u64 - 1)).unwrap_or(i64::MAX - 1);
        let version = if row.director_version > trusted {
            row.director_version.saturating_add(1)
        } else {
            trusted + 1
        };
        row.last_sent_ms = Some(a.sent_ms);
        row.last_nonce = Some(a.nonce.to_owned());
        row.director_version = version;
        plan.outcomes
            .push(Outcome::Recorded(u64::try_from(version).unwrap_or(0)));
        let state = Final {
            last: *a,
            director_version: version,
        };
        match final_index.get(a.vehicle_id) {
            Some(&i) => plan.finals[i] = state,
            None => {
                final_index.insert(a.vehicle_id, plan.finals.len());
                plan.finals.push(state);
            }
        }
    }
    plan
}

impl Store {
    /// Records several check-ins in one transaction (group commit: one commit, so one
    /// WAL flush, for the batch), in the order given, each as [`Store::record_checkin`]
    /// would alone. The outer error is a database failure, after which nothing of the
    /// batch was written; the inner results are each check-in's own (`None` for a
    /// replay, `NotFound` for an unknown vehicle).
    pub async fn record_checkins(
        &self,
        batch: &[CheckinWrite],
    ) -> Result<Vec<Result<Option<u64>, StoreError>>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let ids = batch
            .iter()
            .map(|w| w.checkin.vehicle_id.as_str())
            .collect();
        let rows = self
            .locked_by_id(
                &mut tx,
                "SELECT id, last_checkin_sent_ms, last_checkin_nonce, director_version \
                 FROM vehicles WHERE id IN",
                ids,
            )
            .await?;
        let mut current = HashMap::with_capacity(rows.len());
        for row in rows {
            current.insert(
                row.try_get::<String, _>("id")?,
                Current {
                    last_sent_ms: row.try_get("last_checkin_sent_ms")?,
                    last_nonce: row.try_get("last_checkin_nonce")?,
                    director_version: row.try_get("director_version")?,
                },
            );
        }
        let arrivals: Vec<Arrival<'_>> = batch.iter().map(Arrival::of).collect();
        let plan = plan(current, &arrivals);
        for rows in plan.finals.chunks(ROWS_PER_UPDATE) {
            update_rows(&mut tx, rows).await?;
        }
        let mut results = Vec::with_capacity(batch.len());
        let mut ecus = Vec::new();
        for (write, outcome) in batch.iter().zip(&plan.outcomes) {
            results.push(match outcome {
                Outcome::Recorded(version) => {
                    ecus.extend(
                        changed_ecus(&write.checkin, &write.known)
                            .into_iter()
                            .map(|ecu| (write.checkin.vehicle_id.as_str(), ecu)),
                    );
                    Ok(Some(*version))
                }
                Outcome::Replayed => Ok(None),
                Outcome::Unknown => Err(StoreError::NotFound {
                    entity: "vehicle",
                    id: write.checkin.vehicle_id.clone(),
                }),
            });
        }
        // In batch order, so a vehicle's later report in the batch is the one kept.
        update_ecus(&mut tx, &dedup_last(ecus)).await?;
        tx.commit().await?;
        Ok(results)
    }
}

/// The last report per (vehicle, ECU), in the order of those last reports: one
/// multi-row `UPDATE` may set each row once only.
fn dedup_last<'a>(reports: Vec<(&'a str, &'a EcuReport)>) -> Vec<(&'a str, &'a EcuReport)> {
    let last: HashMap<(&str, &str), usize> = reports
        .iter()
        .enumerate()
        .map(|(i, (vehicle, ecu))| ((*vehicle, ecu.ecu.as_str()), i))
        .collect();
    reports
        .iter()
        .enumerate()
        .filter(|(i, (vehicle, ecu))| last[&(*vehicle, ecu.ecu.as_str())] == *i)
        .map(|(_, report)| *report)
        .collect()
}

/// One `UPDATE` setting each vehicle to its final state (`UPDATE … FROM (VALUES …)`).
async fn update_rows(
    tx: &mut Transaction<'static, Any>,
    rows: &[Final<'_>],
) -> Result<(), StoreError> {
    // Parameters, per row: id, then one per column.
    let sql = super::update_by_id_sql(
        "vehicles",
        &[
            "last_seen_ms",
            "agent_state",
            "last_checkin_sent_ms",
            "last_checkin_nonce",
            "director_version",
        ],
        "",
        rows.len(),
        1,
    );
    let mut query = sqlx::query(&sql);
    for row in rows {
        query = query
            .bind(row.last.vehicle_id)
            .bind(row.last.now)
            .bind(row.last.agent_state)
            .bind(row.last.sent_ms)
            .bind(row.last.nonce)
            .bind(row.director_version);
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ecu: &str, version: &str) -> EcuReport {
        EcuReport {
            ecu: ecu.to_owned(),
            hardware_id: "hw".to_owned(),
            installed: Some(ota_core::protocol::InstalledImage {
                version: version.to_owned(),
                sha256: ota_core::encoding::Sha256Digest::of(version.as_bytes()),
                length: 1,
            }),
            active_slot: "a".to_owned(),
        }
    }

    #[test]
    fn each_ecu_keeps_its_last_report_of_the_batch() {
        let (a1, a2, b1, main2) = (
            report("main", "1"),
            report("main", "2"),
            report("tcu", "1"),
            report("main", "2"),
        );
        let kept = dedup_last(vec![("v1", &a1), ("v1", &b1), ("v2", &main2), ("v1", &a2)]);
        let kept: Vec<(&str, &str, &str)> = kept
            .iter()
            .map(|(v, r)| {
                (
                    *v,
                    r.ecu.as_str(),
                    r.installed.as_ref().unwrap().version.as_str(),
                )
            })
            .collect();
        assert_eq!(
            kept,
            [("v1", "tcu", "1"), ("v2", "main", "2"), ("v1", "main", "2")]
        );
    }
    use proptest::prelude::*;

    fn arrival(
        vehicle_id: &'static str,
        sent_ms: i64,
        nonce: &'static str,
        trusted: u64,
    ) -> Arrival<'static> {
        Arrival {
            vehicle_id,
            now: 1,
            agent_state: "idle",
            sent_ms,
            nonce,
            trusted,
        }
    }

    fn fresh() -> Current {
        Current {
            last_sent_ms: None,
            last_nonce: None,
            director_version: 0,
        }
    }

    #[test]
    fn each_rule() {
        let current = HashMap::from([("v1".to_owned(), fresh()), ("v2".to_owned(), fresh())]);
        let plan = plan(
            current,
            &[
                arrival("v1", 1000, "a", 0),
                // The same check-in again, then an older one: replays.
                arrival("v1", 1000, "a", 0),
                arrival("v1", 500, "b", 0),
                // Same millisecond, another nonce: new.
                arrival("v1", 1000, "c", 0),
                // Signs above what the vehicle trusts.
                arrival("v2", 1000, "a", 10),
                arrival("nobody", 1000, "a", 0),
            ],
        );
        assert_eq!(
            plan.outcomes,
            [
                Outcome::Recorded(1),
                Outcome::Replayed,
                Outcome::Replayed,
                Outcome::Recorded(2),
                Outcome::Recorded(11),
                Outcome::Unknown
            ]
        );
        assert_eq!(
            plan.finals.len(),
            2,
            "one row per vehicle: {:?}",
            plan.finals
        );
        assert_eq!(
            (plan.finals[0].last.nonce, plan.finals[0].director_version),
            ("c", 2)
        );
        assert_eq!(plan.finals[1].director_version, 11);
    }

    /// The single-row rule as the `UPDATE … WHERE … RETURNING` that `record_checkin`
    /// ran until this module replaced it stated it, one check-in at a time against a
    /// table: the oracle the batch plan is held to.
    fn one_at_a_time(table: &mut HashMap<String, Current>, a: &Arrival<'_>) -> Outcome {
        let Some(row) = table.get_mut(a.vehicle_id) else {
            return Outcome::Unknown;
        };
        let newer = row.last_sent_ms.is_none()
            || row.last_sent_ms < Some(a.sent_ms)
            || (row.last_sent_ms == Some(a.sent_ms)
                && row.last_nonce.as_ref().is_some_and(|n| n != a.nonce));
        if !newer {
            return Outcome::Replayed;
        }
        let trusted = a.trusted.min(i64::MAX as u64 - 1) as i64;
        row.director_version = if row.director_version > trusted {
            row.director_version + 1
        } else {
            trusted + 1
        };
        row.last_sent_ms = Some(a.sent_ms);
        row.last_nonce = Some(a.nonce.to_owned());
        Outcome::Recorded(row.director_version as u64)
    }

    const VEHICLES: [&str; 4] = ["v0", "v1", "v2", "v3"];
    const NONCES: [&str; 3] = ["n0", "n1", "n2"];

    proptest! {
        /// A batch decides exactly as the same check-ins recorded one at a time, and
        /// its final rows are the table those leave behind.
        #[test]
        fn a_batch_decides_as_one_at_a_time(
            stored in proptest::collection::vec(
                proptest::option::of((0i64..4, 0usize..3, 0i64..20)), 3),
            arrivals in proptest::collection::vec(
                (0usize..4, 0i64..4, 0usize..3, 0u64..25), 0..24),
        ) {
            // v3 is not registered.
            let mut table: HashMap<String, Current> = HashMap::new();
            for (vehicle, row) in VEHICLES.iter().zip(&stored) {
                table.insert((*vehicle).to_owned(), match row {
                    None => fresh(),
                    Some((sent, nonce, version)) => Current {
                        last_sent_ms: Some(*sent * 1000),
                        last_nonce: Some(NONCES[*nonce].to_owned()),
                        director_version: *version,
                    },
                });
            }
            let arrivals: Vec<Arrival<'static>> = arrivals
                .iter()
                .map(|(v, sent, n, trusted)| arrival(VEHICLES[*v], sent * 1000, NONCES[*n], *trusted))
                .collect();
            let plan = plan(table.clone(), &arrivals);
            let mut model = table.clone();
            let expected: Vec<Outcome> = arrivals.iter().map(|a| one_at_a_time(&mut model, a)).collect();
            prop_assert_eq!(&plan.outcomes, &expected);
            let mut written = table;
            for f in &plan.finals {
                let row = written.get_mut(f.last.vehicle_id).unwrap();
                row.last_sent_ms = Some(f.last.sent_ms);
                row.last_nonce = Some(f.last.nonce.to_owned());
                row.director_version = f.director_version;
            }
            prop_assert_eq!(written, model);
        }
    }
}
