//! Message intake: what makes a vehicle message acceptable before anything is applied —
//! the topic names the signer, the signature verifies with the registered device key,
//! the send time is within the window, the deployment is the vehicle's own.

use super::{Engine, NowMs};
use crate::director::DeploymentStatus;
use crate::store::{DeploymentRecord, DeploymentUpdate, StoreError, VehicleRecord};
use ota_core::encoding::parse_lower_hex;
use ota_core::key::PublicKey;
use ota_core::protocol::{
    claimed_vehicle_id, open_message, CheckIn, MessageError, ProgressEvent, ProgressPhase,
    PAYLOAD_TYPE_CHECKIN, PAYLOAD_TYPE_PROGRESS,
};
use ota_core::time::Timestamp;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};

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
    /// A store failure that stopped a whole batch of messages, this one among them.
    #[error("{0}")]
    StoreBatch(std::sync::Arc<StoreError>),
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
            Rejected::Store(_) | Rejected::StoreBatch(_) => "store_error",
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

/// [`check_topic`] for each message, and the distinct vehicles of those that pass (what
/// a batch reads from the store).
fn claimed_vehicles<'a>(
    messages: &[(&'a str, &[u8])],
) -> (Vec<Result<(), Rejected>>, Vec<&'a str>) {
    let claimed: Vec<Result<(), Rejected>> = messages
        .iter()
        .map(|(topic, bytes)| check_topic(topic, bytes))
        .collect();
    let mut vehicles: Vec<&str> = messages
        .iter()
        .zip(&claimed)
        .filter(|(_, claimed)| claimed.is_ok())
        .map(|((vehicle, _), _)| *vehicle)
        .collect();
    vehicles.sort_unstable();
    vehicles.dedup();
    (claimed, vehicles)
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

fn device_key(public_key_hex: &str) -> Result<PublicKey, Rejected> {
    parse_lower_hex::<32>(public_key_hex)
        .ok()
        .and_then(|raw| PublicKey::from_bytes(&raw).ok())
        .ok_or(Rejected::Message(MessageError::BadSignature))
}

/// Most device keys [`KeyMemo`] holds; past it, it starts again empty.
const KEY_MEMO_CAPACITY: usize = 1 << 18;

/// Parsed device keys by their stored text. Parsing one decompresses a curve point
/// (about a tenth of a signature check); every message from the vehicle needs it. A
/// memo of a pure function: a rotated key is different text, so nothing goes stale.
#[derive(Default)]
pub(super) struct KeyMemo {
    keys: std::sync::Mutex<HashMap<String, PublicKey>>,
}

impl KeyMemo {
    fn get(&self, public_key_hex: &str) -> Result<PublicKey, Rejected> {
        let lock = || self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(key) = lock().get(public_key_hex) {
            return Ok(*key);
        }
        // Parsed outside the lock; a key that does not parse is not kept.
        let key = device_key(public_key_hex)?;
        let mut keys = lock();
        if keys.len() >= KEY_MEMO_CAPACITY {
            keys.clear();
        }
        keys.insert(public_key_hex.to_owned(), key);
        Ok(key)
    }
}

/// Most progress messages [`VerifiedMemo`] remembers; past it, the oldest is forgotten.
/// The consumer reads an event a moment after the gateway verified it, so this covers
/// a backlog of seconds at thousands of events per second.
const VERIFIED_MEMO_CAPACITY: usize = 1 << 15;
/// Most signed bytes the remembered messages may add up to (an event is no larger than
/// its message): a vehicle sending validly signed messages of the broker's maximum size
/// must not make the memo hold gigabytes. Progress messages are about 600 bytes, so the
/// count binds first.
const VERIFIED_MEMO_MAX_BYTES: usize = 32 << 20;

/// Progress messages this process has verified, by SHA-256 of (device key ‖ signed
/// bytes), with what they said. With Kafka each message is opened twice, by the gateway
/// and again by the consumer (which trusts nothing read from Kafka); when both run in
/// one process the second opening finds the first here instead of checking the Ed25519
/// signature again. The outcome of opening is a pure function of the key and the bytes,
/// so a remembered one is exactly what checking again would give: a record whose bytes
/// differ by one bit, or a vehicle whose key was rotated since, misses and is checked in
/// full. Only successes are remembered.
pub(super) struct VerifiedMemo {
    inner: std::sync::Mutex<VerifiedInner>,
    capacity: usize,
    max_bytes: usize,
    /// Signatures checked (not remembered), for tests.
    checked: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct VerifiedInner {
    events: HashMap<[u8; 32], ProgressEvent>,
    /// Insertion order with each message's length, for forgetting the oldest.
    order: VecDeque<([u8; 32], usize)>,
    /// Sum of the remembered messages' lengths.
    bytes: usize,
}

impl Default for VerifiedMemo {
    fn default() -> Self {
        VerifiedMemo::with_limits(VERIFIED_MEMO_CAPACITY, VERIFIED_MEMO_MAX_BYTES)
    }
}

impl VerifiedMemo {
    /// At most `capacity` messages of at most `max_bytes` in all.
    pub(super) fn with_limits(capacity: usize, max_bytes: usize) -> Self {
        VerifiedMemo {
            inner: std::sync::Mutex::new(VerifiedInner::default()),
            capacity: capacity.max(1),
            max_bytes,
            checked: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn digest(key: &PublicKey, bytes: &[u8]) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(key.to_bytes());
        hash.update(bytes);
        hash.finalize().into()
    }

    /// [`open_message`] for a progress message, or what it gave for the same key and
    /// bytes before.
    pub(super) fn open(
        &self,
        bytes: &[u8],
        key: &PublicKey,
    ) -> Result<ProgressEvent, MessageError> {
        let digest = Self::digest(key, bytes);
        let lock = || self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(event) = lock().events.get(&digest) {
            metrics::counter!("ota_progress_signature_checks_total", "outcome" => "remembered")
                .increment(1);
            return Ok(event.clone());
        }
        metrics::counter!("ota_progress_signature_checks_total", "outcome" => "checked")
            .increment(1);
        self.checked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Checked outside the lock.
        let event: ProgressEvent = open_message(bytes, PAYLOAD_TYPE_PROGRESS, key)?;
        if bytes.len() > self.max_bytes {
            return Ok(event);
        }
        let mut inner = lock();
        if inner.events.insert(digest, event.clone()).is_none() {
            inner.order.push_back((digest, bytes.len()));
            inner.bytes += bytes.len();
            while inner.order.len() > self.capacity || inner.bytes > self.max_bytes {
                let Some((oldest, len)) = inner.order.pop_front() else {
                    break;
                };
                inner.events.remove(&oldest);
                inner.bytes -= len;
            }
        }
        Ok(event)
    }

    #[cfg(test)]
    fn checked(&self) -> u64 {
        self.checked.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Engine {
    /// A verified, fresh check-in from a registered vehicle, with its stored record.
    pub async fn verify_checkin(
        &self,
        topic_vehicle: &str,
        bytes: &[u8],
        now: NowMs,
    ) -> Result<(VehicleRecord, CheckIn), Rejected> {
        self.verify_checkins(&[(topic_vehicle, bytes)], now)
            .await?
            .remove(0)
    }

    /// Verifies many check-ins, each `(topic vehicle, signed bytes)`, with one store read
    /// in all (the vehicles with their ECUs): each gets the answer
    /// [`Engine::verify_checkin`] gives it alone. `Err` only for a store failure.
    pub async fn verify_checkins(
        &self,
        messages: &[(&str, &[u8])],
        now: NowMs,
    ) -> Result<Vec<Result<(VehicleRecord, CheckIn), Rejected>>, StoreError> {
        let (claimed, ids) = claimed_vehicles(messages);
        let vehicles = self.inner.store.vehicles_by_ids(&ids).await?;
        let window_seconds = self.inner.settings.director.expiry_seconds;
        Ok(messages
            .iter()
            .zip(claimed)
            .map(|((topic, bytes), claimed)| {
                claimed?;
                let vehicle = match vehicles.get(*topic) {
                    None => return Err(Rejected::UnknownVehicle((*topic).to_owned())),
                    Some(v) if v.decommissioned_at.is_some() => {
                        return Err(Rejected::Decommissioned((*topic).to_owned()))
                    }
                    Some(v) => v,
                };
                let checkin: CheckIn = open_message(
                    bytes,
                    PAYLOAD_TYPE_CHECKIN,
                    &self.inner.device_keys.get(&vehicle.public_key)?,
                )?;
                check_fresh(checkin.sent_at, now, window_seconds)?;
                if checkin.vehicle_id != vehicle.id {
                    return Err(Rejected::TopicMismatch {
                        topic: vehicle.id.clone(),
                        claimed: checkin.vehicle_id,
                    });
                }
                Ok((vehicle.clone(), checkin))
            })
            .collect())
    }

    /// A verified progress event about one of the vehicle's own deployments.
    pub async fn verify_progress(
        &self,
        topic_vehicle: &str,
        bytes: &[u8],
    ) -> Result<(ProgressEvent, DeploymentRecord), Rejected> {
        self.verify_progress_batch(&[(topic_vehicle, bytes)])
            .await?
            .remove(0)
    }

    /// Verifies many progress messages, each `(topic vehicle, signed bytes)`, with two
    /// store reads in all (the device keys, then the deployments): each message gets
    /// the answer [`Engine::verify_progress`] gives it alone. `Err` only for a store
    /// failure.
    pub async fn verify_progress_batch(
        &self,
        messages: &[(&str, &[u8])],
    ) -> Result<Vec<Result<(ProgressEvent, DeploymentRecord), Rejected>>, StoreError> {
        let (claimed, vehicles) = claimed_vehicles(messages);
        let keys = self.inner.store.device_keys(&vehicles).await?;
        let opened: Vec<Result<ProgressEvent, Rejected>> = messages
            .iter()
            .zip(claimed)
            .map(|((vehicle, bytes), claimed)| {
                claimed?;
                let key = match keys.get(*vehicle) {
                    None => return Err(Rejected::UnknownVehicle((*vehicle).to_owned())),
                    Some(k) if k.decommissioned => {
                        return Err(Rejected::Decommissioned((*vehicle).to_owned()))
                    }
                    Some(k) => self.inner.device_keys.get(&k.public_key)?,
                };
                Ok(self.inner.verified_progress.open(bytes, &key)?)
            })
            .collect();
        // Repeated ids are read once (`Store::fetch_in`).
        let ids: Vec<&str> = opened
            .iter()
            .filter_map(|event| event.as_ref().ok())
            .map(|event| event.deployment_id.as_str())
            .collect();
        let deployments: HashMap<String, DeploymentRecord> = self
            .inner
            .store
            .deployments_by_ids(&ids)
            .await?
            .into_iter()
            .map(|d| (d.id.clone(), d))
            .collect();
        Ok(messages
            .iter()
            .zip(opened)
            .map(|((vehicle, _), opened)| {
                let event = opened?;
                // Only the vehicle's own deployment: another's id is as good as unknown.
                let deployment = deployments
                    .get(&event.deployment_id)
                    .filter(|d| d.vehicle_id == *vehicle)
                    .cloned()
                    .ok_or_else(|| Rejected::UnknownDeployment(event.deployment_id.clone()))?;
                Ok((event, deployment))
            })
            .collect())
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

    /// Applies verified progress events in one transaction, in order, without
    /// supervising (the Kafka consumer's batch). Returns, per event, whether it changed
    /// anything.
    pub async fn record_progress_batch(
        &self,
        verified: &[(ProgressEvent, DeploymentRecord)],
        now: NowMs,
    ) -> Result<Vec<bool>, StoreError> {
        let updates: Vec<DeploymentUpdate> = verified
            .iter()
            .map(|(event, deployment)| progress_update(event, deployment))
            .collect();
        self.inner.store.update_deployments(&updates, now).await
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
        let update = progress_update(event, deployment);
        Ok(self.inner.store.update_deployments(&[update], now).await?[0])
    }
}

/// The store write a verified progress event makes.
fn progress_update<'a>(
    event: &'a ProgressEvent,
    deployment: &'a DeploymentRecord,
) -> DeploymentUpdate<'a> {
    DeploymentUpdate {
        deployment_id: &deployment.id,
        vehicle_id: &deployment.vehicle_id,
        status: progress_status(event.phase),
        sequence: event.sequence,
        reason_code: event.reason_code.as_deref(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_core::key::SigningKey;
    use ota_core::protocol::{sign_message, TrustedVersions};

    #[test]
    fn the_key_memo_answers_as_parsing_does_and_keeps_no_bad_key() {
        let memo = KeyMemo::default();
        let first = SigningKey::from_seed(&[1; 32]).public_key();
        let rotated = SigningKey::from_seed(&[2; 32]).public_key();
        for _ in 0..2 {
            assert_eq!(memo.get(&first.to_hex()).unwrap(), first);
            assert_eq!(memo.get(&rotated.to_hex()).unwrap(), rotated);
        }
        // Not hex, not lower-case hex, of small order (the identity): refused each
        // time, never kept.
        let identity = "01".to_owned() + &"00".repeat(31);
        for bad in ["zz", &first.to_hex().to_uppercase(), &identity] {
            for _ in 0..2 {
                assert!(matches!(
                    memo.get(bad),
                    Err(Rejected::Message(MessageError::BadSignature))
                ));
            }
        }
        assert_eq!(memo.keys.lock().unwrap().len(), 2);
    }

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

    fn progress(key: &SigningKey, sequence: u64) -> Vec<u8> {
        let event = ProgressEvent {
            vehicle_id: "veh-a".to_owned(),
            deployment_id: "dep-1".to_owned(),
            sequence,
            phase: ProgressPhase::Downloading,
            bytes_done: 0,
            bytes_total: 10,
            reason_code: None,
            at: Timestamp::parse("2027-01-01T00:00:00Z").unwrap(),
        };
        sign_message(PAYLOAD_TYPE_PROGRESS, &event, key)
    }

    #[test]
    fn a_progress_message_opened_again_is_remembered_not_checked_again() {
        let memo = VerifiedMemo::with_limits(8, 1 << 20);
        let key = SigningKey::from_seed(&[7; 32]);
        let bytes = progress(&key, 1);
        let first = memo.open(&bytes, &key.public_key()).unwrap();
        assert_eq!(memo.checked(), 1);
        let again = memo.open(&bytes, &key.public_key()).unwrap();
        assert_eq!(again, first, "what checking gave");
        assert_eq!(memo.checked(), 1, "the second opening checks no signature");
    }

    #[test]
    fn the_verified_memo_answers_as_checking_does_for_changed_bytes_and_rotated_keys() {
        let memo = VerifiedMemo::with_limits(8, 1 << 20);
        let key = SigningKey::from_seed(&[7; 32]);
        let bytes = progress(&key, 1);
        memo.open(&bytes, &key.public_key()).unwrap();
        // One bit flipped in the signed payload: checked, refused.
        let text = String::from_utf8(bytes.clone()).unwrap();
        let payload_start = text.find("\"payload\":\"").unwrap() + 11;
        let mut tampered = bytes.clone();
        tampered[payload_start + 4] ^= 0x01;
        assert!(memo.open(&tampered, &key.public_key()).is_err());
        assert_eq!(memo.checked(), 2, "different bytes are checked");
        // The same bytes after the vehicle's key was rotated: refused, as checking
        // with the new key refuses them.
        let rotated = SigningKey::from_seed(&[8; 32]).public_key();
        assert!(matches!(
            memo.open(&bytes, &rotated),
            Err(MessageError::BadSignature)
        ));
        // Failures are not remembered: each is checked again.
        let checked = memo.checked();
        assert!(memo.open(&bytes, &rotated).is_err());
        assert_eq!(memo.checked(), checked + 1);
    }

    #[test]
    fn the_verified_memo_forgets_the_oldest_past_its_capacity() {
        let memo = VerifiedMemo::with_limits(2, 1 << 20);
        let key = SigningKey::from_seed(&[7; 32]);
        let messages: Vec<Vec<u8>> = (1..=3).map(|s| progress(&key, s)).collect();
        for bytes in &messages {
            memo.open(bytes, &key.public_key()).unwrap();
        }
        assert_eq!(memo.checked(), 3);
        assert_eq!(memo.inner.lock().unwrap().events.len(), 2);
        // The two newest are remembered, the oldest is checked again.
        memo.open(&messages[2], &key.public_key()).unwrap();
        memo.open(&messages[1], &key.public_key()).unwrap();
        assert_eq!(memo.checked(), 3);
        memo.open(&messages[0], &key.public_key()).unwrap();
        assert_eq!(memo.checked(), 4);
    }

    #[test]
    fn the_verified_memo_holds_no_more_bytes_than_its_limit() {
        let key = SigningKey::from_seed(&[7; 32]);
        let messages: Vec<Vec<u8>> = (1..=3).map(|s| progress(&key, s)).collect();
        let len = messages[0].len();
        // Room for two messages' bytes, however many it may count.
        let memo = VerifiedMemo::with_limits(100, 2 * len + len / 2);
        for bytes in &messages {
            memo.open(bytes, &key.public_key()).unwrap();
        }
        let inner = memo.inner.lock().unwrap();
        assert_eq!(inner.events.len(), 2);
        assert!(inner.bytes <= 2 * len + len / 2);
        drop(inner);
        // A message larger than the whole limit is checked, answered and not kept.
        let tiny = VerifiedMemo::with_limits(100, len - 1);
        tiny.open(&messages[0], &key.public_key()).unwrap();
        tiny.open(&messages[0], &key.public_key()).unwrap();
        assert_eq!(tiny.checked(), 2);
        assert_eq!(tiny.inner.lock().unwrap().bytes, 0);
    }
}
