//! Check-ins answered in batches. Each check-in alone used to cost its own round trips:
//! a read of the vehicle, a read of its deployments, its check-in write and, when it was
//! assigned something, the assignment write. A batch of check-ins costs one of each in
//! all: the vehicles in one read ([`Engine::verify_checkins`]), the check-in writes and
//! the assignments through their group commits (one transaction each for what is
//! queued together), the deployments in one read. The decisions themselves stay one
//! vehicle at a time, in arrival order, from one snapshot of the rollouts.
//!
//! A vehicle that appears twice in a batch is answered in two *rounds*: its second
//! check-in is recorded and decided only after the first was, exactly as if it had
//! arrived in the next batch (so it sees the deployments the first was assigned).

use super::assign::reported_view;
use super::{timestamp, Engine, NowMs, Rejected};
use crate::director::{self, Directive, DirectorIssue};
use crate::store::{CheckinWrite, StoreError, VehicleRecord};
use futures_util::future::join_all;
use ota_core::protocol::CheckIn;
use std::collections::HashMap;
use std::sync::Arc;

/// The round of each check-in in a batch, by the vehicles they come from in arrival
/// order: a vehicle's k-th check-in goes in round k, so no round holds two of one
/// vehicle and each vehicle's come in arrival order.
pub fn rounds(vehicles: &[&str]) -> Vec<usize> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(vehicles.len());
    vehicles
        .iter()
        .map(|vehicle| {
            let count = seen.entry(vehicle).or_insert(0);
            *count += 1;
            *count - 1
        })
        .collect()
}

/// A verified check-in waiting for its answer.
struct Verified {
    /// Its place in the batch.
    index: usize,
    vehicle: VehicleRecord,
    checkin: CheckIn,
}

impl Engine {
    /// Verifies and applies a check-in; returns the signed directive's wire bytes.
    pub async fn handle_checkin(
        &self,
        topic_vehicle: &str,
        bytes: &[u8],
        now: NowMs,
    ) -> Result<Vec<u8>, Rejected> {
        self.handle_checkins(&[(topic_vehicle, bytes)], now)
            .await
            .remove(0)
    }

    /// Verifies and applies many check-ins, each `(topic vehicle, signed bytes)`: each
    /// gets the answer [`Engine::handle_checkin`] would give it alone, after the
    /// check-ins before it in the batch.
    pub async fn handle_checkins(
        &self,
        messages: &[(&str, &[u8])],
        now: NowMs,
    ) -> Vec<Result<Vec<u8>, Rejected>> {
        let verified = match self.verify_checkins(messages, now).await {
            Ok(verified) => verified,
            Err(err) => {
                let err = Arc::new(err);
                return messages
                    .iter()
                    .map(|_| Err(Rejected::StoreBatch(err.clone())))
                    .collect();
            }
        };
        let mut answers: Vec<Result<Vec<u8>, Rejected>> = Vec::with_capacity(messages.len());
        let mut pending: Vec<Verified> = Vec::new();
        for (index, verified) in verified.into_iter().enumerate() {
            match verified {
                Ok((vehicle, checkin)) => {
                    // Replaced by the answer below.
                    answers.push(Ok(Vec::new()));
                    pending.push(Verified {
                        index,
                        vehicle,
                        checkin,
                    });
                }
                Err(rejected) => answers.push(Err(rejected)),
            }
        }
        let ids: Vec<&str> = pending.iter().map(|v| v.vehicle.id.as_str()).collect();
        let round_of = rounds(&ids);
        let mut rounds: Vec<Vec<Verified>> = Vec::new();
        for (verified, round) in pending.into_iter().zip(round_of) {
            if rounds.len() <= round {
                rounds.resize_with(round + 1, Vec::new);
            }
            rounds[round].push(verified);
        }
        for round in rounds {
            for (index, answer) in self.answer_round(round, now).await {
                answers[index] = answer;
            }
        }
        answers
    }

    /// Records, decides and signs one round (no vehicle twice); each answer with its
    /// place in the batch.
    async fn answer_round(
        &self,
        round: Vec<Verified>,
        now: NowMs,
    ) -> Vec<(usize, Result<Vec<u8>, Rejected>)> {
        let writes = round.iter().map(|v| {
            self.inner.checkins.record(CheckinWrite {
                checkin: v.checkin.clone(),
                known: v.vehicle.ecus.clone(),
                now,
            })
        });
        let versions = join_all(writes).await;
        let mut answers = Vec::with_capacity(round.len());
        let mut accepted = Vec::with_capacity(round.len());
        for (v, version) in round.into_iter().zip(versions) {
            match version {
                Ok(Some(version)) => accepted.push((v, version)),
                Ok(None) => answers.push((
                    v.index,
                    Err(Rejected::Replayed {
                        nonce: v.checkin.nonce,
                    }),
                )),
                Err(err) => answers.push((v.index, Err(err.into()))),
            }
        }
        if accepted.is_empty() {
            return answers;
        }
        let shared = async {
            let snapshot = self.snapshot(now).await?;
            let ids: Vec<&str> = accepted
                .iter()
                .map(|(v, _)| v.vehicle.id.as_str())
                .collect();
            let deployments = self.inner.store.deployments_for_vehicles(&ids).await?;
            Ok::<_, StoreError>((snapshot, deployments))
        };
        let (snapshot, mut deployments) = match shared.await {
            Ok(shared) => shared,
            Err(err) => {
                let err = Arc::new(err);
                answers.extend(
                    accepted
                        .into_iter()
                        .map(|(v, _)| (v.index, Err(Rejected::StoreBatch(err.clone())))),
                );
                return answers;
            }
        };
        // Decided one at a time, in arrival order: each counts against the rate limit
        // before the next is decided.
        let mut decided = Vec::with_capacity(accepted.len());
        for (v, version) in accepted {
            let view = reported_view(&v.vehicle, &v.checkin);
            let theirs = deployments.remove(&v.vehicle.id).unwrap_or_default();
            match self.decide(&view, theirs, &snapshot, now).await {
                Ok((directive, assignment)) => decided.push((v, version, directive, assignment)),
                Err(err) => answers.push((v.index, Err(err.into()))),
            }
        }
        let recorded = join_all(decided.iter().map(|(_, _, _, assignment)| async move {
            match assignment {
                Some(assignment) => self.inner.assignments.record(assignment.clone()).await,
                None => Ok(()),
            }
        }))
        .await;
        for ((v, version, directive, _), recorded) in decided.into_iter().zip(recorded) {
            if let Err(err) = recorded {
                answers.push((v.index, Err(err.into())));
                continue;
            }
            let envelope = director::sign_directive(
                &directive,
                &v.vehicle.id,
                DirectorIssue {
                    version,
                    targets: snapshot.targets,
                },
                timestamp(now),
                self.inner.settings.director.expiry_seconds,
                &self.inner.keys.director,
            );
            let outcome = match &directive {
                Directive::Nothing { .. } => "nothing",
                Directive::Assign {
                    new_deployments, ..
                } if new_deployments.is_empty() => "resent",
                Directive::Assign { .. } => "assigned",
            };
            metrics::counter!("ota_directives_total", "outcome" => outcome).increment(1);
            answers.push((v.index, Ok(envelope.to_json_bytes())));
        }
        answers
    }
}

#[cfg(test)]
mod tests {
    use super::rounds;

    #[test]
    fn a_vehicle_checking_in_twice_in_a_batch_is_answered_in_two_rounds() {
        assert_eq!(rounds(&[]), Vec::<usize>::new());
        assert_eq!(rounds(&["a", "b", "c"]), vec![0, 0, 0]);
        assert_eq!(
            rounds(&["a", "b", "a", "a", "b", "c"]),
            vec![0, 0, 1, 2, 1, 0]
        );
    }
}
