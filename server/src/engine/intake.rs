//! Message intake: what makes a vehicle message acceptable before anything is applied —
//! the topic names the signer, the signature verifies with the registered device key,
//! the send time is within the window, the deployment is the vehicle's own.

use super::{Engine, NowMs};
use crate::director::DeploymentStatus;
use crate::store::{DeploymentRecord, StoreError, VehicleRecord};
use ota_core::encoding::parse_lower_hex;
use ota_core::key::PublicKey;
use ota_core::protocol::{
    claimed_vehicle_id, open_message, CheckIn, MessageError, ProgressEvent, ProgressPhase,
    PAYLOAD_TYPE_CHECKIN, PAYLOAD_TYPE_PROGRESS,
};
use ota_core::time::Timestamp;

/// Why a vehicle message was dropped (each is counted in metrics).
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("vehicle {0:?} is not registered")]
    UnknownVehicle(String),
    #[error("topic names vehicle {topic:?} but the message claims {claimed:?}")]
    TopicMismatch { topic: String, claimed: String },
    #[error("bad message: {0}")]
    Message(#[from] MessageError),
    #[error("deployment {0:?} is not this vehicle's")]
    UnknownDeployment(String),
    #[error("message sent at {sent_at}, more than {window_seconds} s from the server's clock")]
    Stale {
        sent_at: Timestamp,
        window_seconds: i64,
    },
    #[error("check-in replayed: not newer than the last accepted one (nonce {nonce:?})")]
    Replayed { nonce: String },
    #[error("vehicle {0:?} is decommissioned")]
    Decommissioned(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Rejected {
    pub fn label(&self) -> &'static str {
        match self {
            Rejected::UnknownVehicle(_) => "unknown_vehicle",
            Rejected::TopicMismatch { .. } => "topic_mismatch",
            Rejected::Message(MessageError::BadSignature) => "bad_signature",
            Rejected::Message(_) => "malformed",
            Rejected::UnknownDeployment(_) => "unknown_deployment",
            Rejected::Stale { .. } => "stale",
            Rejected::Replayed { .. } => "replayed",
            Rejected::Decommissioned(_) => "decommissioned",
            Rejected::Store(_) => "store_error",
        }
    }
}

/// The message must claim the vehicle its topic names (checked before any lookup).
pub fn check_topic(topic_vehicle: &str, bytes: &[u8]) -> Result<(), Rejected> {
    let claimed = claimed_vehicle_id(bytes).ok_or(Rejected::Message(MessageError::Malformed(
        "no vehicle_id".to_owned(),
    )))?;
    if claimed != topic_vehicle {
        return Err(Rejected::TopicMismatch {
            topic: topic_vehicle.to_owned(),
            claimed,
        });
    }
    Ok(())
}

/// A captured check-in replayed much later must not move the vehicle's recorded state
/// backwards: its send time must be within `window_seconds` of `now` (either side).
pub fn check_fresh(sent_at: Timestamp, now: NowMs, window_seconds: i64) -> Result<(), Rejected> {
    if (sent_at.unix_seconds() - now.div_euclid(1000)).abs() > window_seconds {
        return Err(Rejected::Stale {
            sent_at,
            window_seconds,
        });
    }
    Ok(())
}

/// What a progress phase means for the deployment's status.
pub fn progress_status(phase: ProgressPhase) -> DeploymentStatus {
    match phase {
        ProgressPhase::Downloading | ProgressPhase::Downloaded | ProgressPhase::Verified => {
            DeploymentStatus::Downloading
        }
        ProgressPhase::Installing
        | ProgressPhase::Installed
        | ProgressPhase::Rebooting
        | ProgressPhase::HealthCheck => DeploymentStatus::Installed,
        ProgressPhase::Committed => DeploymentStatus::Committed,
        ProgressPhase::Failed => DeploymentStatus::Failed,
        ProgressPhase::RolledBack => DeploymentStatus::RolledBack,
    }
}

fn device_key(vehicle: &VehicleRecord) -> Result<PublicKey, Rejected> {
    parse_lower_hex::<32>(&vehicle.public_key)
        .ok()
        .and_then(|raw| PublicKey::from_bytes(&raw).ok())
        .ok_or(Rejected::Message(MessageError::BadSignature))
}

impl Engine {
    async fn registered(&self, vehicle_id: &str) -> Result<VehicleRecord, Rejected> {
        match self.inner.store.get_vehicle(vehicle_id).await {
            Ok(v) if v.decommissioned_at.is_some() => {
                Err(Rejected::Decommissioned(vehicle_id.to_owned()))
            }
            Ok(v) => Ok(v),
            Err(StoreError::NotFound { .. }) => {
                Err(Rejected::UnknownVehicle(vehicle_id.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A verified, fresh check-in from a registered vehicle, with its stored record.
    pub async fn verify_checkin(
        &self,
        topic_vehicle: &str,
        bytes: &[u8],
        now: NowMs,
    ) -> Result<(VehicleRecord, CheckIn), Rejected> {
        check_topic(topic_vehicle, bytes)?;
        let vehicle = self.registered(topic_vehicle).await?;
        let checkin: CheckIn = open_message(bytes, PAYLOAD_TYPE_CHECKIN, &device_key(&vehicle)?)?;
        check_fresh(
            checkin.sent_at,
            now,
            self.inner.settings.director.expiry_seconds,
        )?;
        if checkin.vehicle_id != vehicle.id {
            return Err(Rejected::TopicMismatch {
                topic: vehicle.id,
                claimed: checkin.vehicle_id,
            });
        }
        Ok((vehicle, checkin))
    }

    /// A verified progress event about one of the vehicle's own deployments.
    pub async fn verify_progress(
        &self,
        topic_vehicle: &str,
        bytes: &[u8],
    ) -> Result<(ProgressEvent, DeploymentRecord), Rejected> {
        check_topic(topic_vehicle, bytes)?;
        let vehicle = self.registered(topic_vehicle).await?;
        let event: ProgressEvent =
            open_message(bytes, PAYLOAD_TYPE_PROGRESS, &device_key(&vehicle)?)?;
        let deployment = self
            .inner
            .store
            .deployments_for_vehicle(&vehicle.id)
            .await?
            .into_iter()
            .find(|d| d.id == event.deployment_id)
            .ok_or_else(|| Rejected::UnknownDeployment(event.deployment_id.clone()))?;
        Ok((event, deployment))
    }

    /// Verifies and applies a progress event (the direct path, without Kafka).
    pub async fn handle_progress(
        &self,
        topic_vehicle: &str,
        bytes: &[u8],
        now: NowMs,
    ) -> Result<bool, Rejected> {
        let (event, deployment) = self.verify_progress(topic_vehicle, bytes).await?;
        Ok(self.apply_progress(&event, &deployment, now).await?)
    }

    /// Applies a verified progress event, then supervises that rollout at once so a
    /// breaker opens within the event's handling, not at the next tick. Idempotent: a
    /// duplicate or an out-of-order event (sequence not above the last applied one)
    /// changes nothing. Returns whether the event changed anything.
    pub async fn apply_progress(
        &self,
        event: &ProgressEvent,
        deployment: &DeploymentRecord,
        now: NowMs,
    ) -> Result<bool, StoreError> {
        let changed = self.record_progress(event, deployment, now).await?;
        if changed {
            self.supervise(&deployment.rollout_id, now).await?;
        }
        Ok(changed)
    }

    /// Applies a verified progress event without supervising its rollout: for a caller
    /// that applies many events and then supervises each rollout they touched once (the
    /// Kafka consumer). Returns whether the event changed anything.
    pub async fn record_progress(
        &self,
        event: &ProgressEvent,
        deployment: &DeploymentRecord,
        now: NowMs,
    ) -> Result<bool, StoreError> {
        self.inner
            .store
            .update_deployment(
                &deployment.id,
                &deployment.vehicle_id,
                progress_status(event.phase),
                event.sequence,
                event.reason_code.as_deref(),
                now,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_core::key::SigningKey;
    use ota_core::protocol::{sign_message, TrustedVersions};

    fn checkin(vehicle: &str) -> Vec<u8> {
        let key = SigningKey::from_seed(&[7; 32]);
        let message = CheckIn {
            vehicle_id: vehicle.to_owned(),
            sent_at: Timestamp::parse("2027-01-01T00:00:00Z").unwrap(),
            nonce: "n".to_owned(),
            agent_state: "idle".to_owned(),
            ecus: Vec::new(),
            trusted: TrustedVersions {
                root: 1,
                targets: 1,
                director: 0,
            },
        };
        sign_message(PAYLOAD_TYPE_CHECKIN, &message, &key)
    }

    #[test]
    fn a_message_claiming_another_vehicle_than_its_topic_is_refused() {
        assert!(check_topic("veh-a", &checkin("veh-a")).is_ok());
        let err = check_topic("veh-b", &checkin("veh-a")).unwrap_err();
        assert_eq!(err.label(), "topic_mismatch");
        assert_eq!(
            check_topic("veh-a", b"{}").unwrap_err().label(),
            "malformed"
        );
    }

    #[test]
    fn freshness_is_a_window_on_both_sides_of_now() {
        let sent = Timestamp::parse("2027-01-01T00:00:00Z").unwrap();
        let at = sent.unix_seconds() * 1000;
        assert!(check_fresh(sent, at + 300_000, 300).is_ok());
        assert!(check_fresh(sent, at - 300_000, 300).is_ok());
        assert_eq!(
            check_fresh(sent, at + 301_000, 300).unwrap_err().label(),
            "stale"
        );
        assert_eq!(
            check_fresh(sent, at - 301_000, 300).unwrap_err().label(),
            "stale"
        );
    }

    #[test]
    fn progress_phases_map_to_deployment_status() {
        assert_eq!(
            progress_status(ProgressPhase::Verified),
            DeploymentStatus::Downloading
        );
        assert_eq!(
            progress_status(ProgressPhase::HealthCheck),
            DeploymentStatus::Installed
        );
        assert_eq!(
            progress_status(ProgressPhase::Committed),
            DeploymentStatus::Committed
        );
        assert_eq!(
            progress_status(ProgressPhase::Failed),
            DeploymentStatus::Failed
        );
        assert_eq!(
            progress_status(ProgressPhase::RolledBack),
            DeploymentStatus::RolledBack
        );
    }
}
