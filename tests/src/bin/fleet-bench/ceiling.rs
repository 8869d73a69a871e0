//! What the signatures alone allow on this machine, measured in the same run as the
//! broker and the server.
//!
//! Every check-in costs four Ed25519 operations that no server design removes: the
//! vehicle signs it, the server checks it (`verify_strict`), the server signs the
//! directive, the vehicle checks that. A progress event costs two: the vehicle signs
//! it, the server checks it (once per process: `VerifiedMemo`). fleet-bench's check-ins
//! are signed and checked on the same cores as the server while it measures, so their
//! rate can never exceed the cores divided by all four operations' CPU time, whatever
//! else is free. Its progress events are signed before the clock starts (a real fleet
//! signs on its own CPUs), so what caps their measured rate is the server's check alone.
//!
//! The operations are timed on messages of the run's shapes (a fleet-bench check-in, a
//! directive assigning one image with a delta, serialised and signed as the server does
//! for each check-in, a progress event), one thread, median of several rounds: a noisy
//! machine shows up as spread between runs, not as a bias. The vehicle's check of a
//! directive is timed as `open_message` (parse the envelope, `verify_strict` over the
//! one director signature, parse the document), the work `verify_threshold` does with a
//! root whose director role has one key.

use anyhow::{Context, Result};
use ota_core::encoding::Sha256Digest;
use ota_core::envelope::Envelope;
use ota_core::key::SigningKey;
use ota_core::metadata::{Assignment, DeltaRef, DirectorMetadata, ImageRef, Role, TargetsBinding};
use ota_core::protocol::{
    open_message, sign_message, CheckIn, ProgressEvent, ProgressPhase, PAYLOAD_TYPE_CHECKIN,
    PAYLOAD_TYPE_PROGRESS,
};
use ota_core::time::Timestamp;
use std::hint::black_box;
use std::time::Instant;

/// Rounds per operation; the median is kept.
const ROUNDS: usize = 5;
/// Operations per round.
const PER_ROUND: u32 = 400;

/// CPU time per message of each party's signature work, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignatureCost {
    /// Server, per check-in: check the check-in, sign the directive.
    pub server_checkin_us: f64,
    /// Vehicle, per check-in: sign the check-in, check the directive.
    pub vehicle_checkin_us: f64,
    /// Server, per progress event: check it.
    pub server_progress_us: f64,
    /// Vehicle, per progress event: sign it.
    pub vehicle_progress_us: f64,
}

/// The most messages per second `cores` cores can take when each message costs
/// `us_per_message` microseconds of CPU and nothing else (pure).
pub fn ceiling_per_second(cores: usize, us_per_message: f64) -> f64 {
    if us_per_message <= 0.0 {
        return f64::INFINITY;
    }
    cores as f64 * 1e6 / us_per_message
}

impl SignatureCost {
    /// Check-ins per second with the vehicles' signatures on the same cores, and with
    /// the server's alone (vehicles elsewhere).
    pub fn checkin_ceilings(&self, cores: usize) -> (f64, f64) {
        (
            ceiling_per_second(cores, self.server_checkin_us + self.vehicle_checkin_us),
            ceiling_per_second(cores, self.server_checkin_us),
        )
    }

    /// Progress events per second, the same two ways (fleet-bench signs its events
    /// before the clock starts: the second is the one its measured rate meets).
    pub fn progress_ceilings(&self, cores: usize) -> (f64, f64) {
        (
            ceiling_per_second(cores, self.server_progress_us + self.vehicle_progress_us),
            ceiling_per_second(cores, self.server_progress_us),
        )
    }

    /// Times each party's operations on messages shaped like the run's: `sign_checkin`
    /// is the vehicle signing a check-in (its first result is the sample checked).
    pub fn measure(
        vehicle: &SigningKey,
        sign_checkin: impl Fn() -> Vec<u8>,
    ) -> Result<SignatureCost> {
        let director = SigningKey::from_seed(&[0x5e; 32]);
        let metadata = sample_directive();
        let sign_directive = || -> Result<Vec<u8>> {
            let payload = serde_json::to_vec(&metadata).context("directive sample")?;
            Ok(
                Envelope::sign(Role::Director.payload_type(), payload, &[&director])
                    .to_json_bytes(),
            )
        };
        let checkin = sign_checkin();
        let directive = sign_directive()?;
        let event = sample_progress(vehicle);
        let vehicle_public = vehicle.public_key();
        let director_public = director.public_key();
        let check_checkin =
            || open_message::<CheckIn>(&checkin, PAYLOAD_TYPE_CHECKIN, &vehicle_public);
        let check_directive = || {
            open_message::<DirectorMetadata>(
                &directive,
                Role::Director.payload_type(),
                &director_public,
            )
        };
        let check_progress =
            || open_message::<ProgressEvent>(&event, PAYLOAD_TYPE_PROGRESS, &vehicle_public);
        // Each sample must pass before it is timed: a failing check costs less.
        check_checkin().context("the check-in sample does not verify")?;
        check_directive().context("the directive sample does not verify")?;
        check_progress().context("the progress sample does not verify")?;

        Ok(SignatureCost {
            server_checkin_us: median_us(|| {
                black_box(check_checkin().is_ok());
            }) + median_us(|| {
                black_box(sign_directive().is_ok());
            }),
            vehicle_checkin_us: median_us(|| {
                black_box(sign_checkin());
            }) + median_us(|| {
                black_box(check_directive().is_ok());
            }),
            server_progress_us: median_us(|| {
                black_box(check_progress().is_ok());
            }),
            vehicle_progress_us: median_us(|| {
                black_box(sample_progress(vehicle));
            }),
        })
    }
}

/// The median over [`ROUNDS`] rounds of one call's time, in microseconds.
fn median_us(mut op: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..PER_ROUND {
                op();
            }
            started.elapsed().as_secs_f64() * 1e6 / f64::from(PER_ROUND)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

/// A directive as a rollout sends it: one ECU, one image, a delta.
fn sample_directive() -> DirectorMetadata {
    let sha = |s: &str| Sha256Digest::of(s.as_bytes());
    DirectorMetadata::new(
        7,
        Timestamp::from_datetime(chrono::Utc::now()),
        "fb00000-00000",
        TargetsBinding::of_payload(3, b"targets"),
        vec![Assignment {
            ecu: "main".to_owned(),
            hardware_id: super::HARDWARE_ID.to_owned(),
            deployment_id: "dep-0123456789abcdef0123456789abcdef".to_owned(),
            image: ImageRef {
                name: "fleet-bench-firmware".to_owned(),
                version: "2.0.0".to_owned(),
                length: 4_194_304,
                sha256: sha("image"),
                url: "http://127.0.0.1:8080/v1/blobs/images/0123456789abcdef".to_owned(),
            },
            delta: Some(DeltaRef {
                source_sha256: sha("source"),
                source_length: 4_194_304,
                length: 65_536,
                sha256: sha("delta"),
                url: "http://127.0.0.1:8080/v1/blobs/deltas/0123456789abcdef".to_owned(),
            }),
            preconditions: None,
        }],
        60,
    )
}

/// A signed progress event as `--progress` sends it.
fn sample_progress(key: &SigningKey) -> Vec<u8> {
    let event = ProgressEvent {
        vehicle_id: "fb00000-00000".to_owned(),
        deployment_id: "dep-0123456789abcdef0123456789abcdef".to_owned(),
        sequence: 3,
        phase: ProgressPhase::Installing,
        bytes_done: 65_536,
        bytes_total: 65_536,
        reason_code: None,
        at: Timestamp::from_datetime(chrono::Utc::now()),
    };
    sign_message(PAYLOAD_TYPE_PROGRESS, &event, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ceiling_is_the_cores_over_the_cost() {
        assert_eq!(ceiling_per_second(2, 100.0), 20_000.0);
        assert_eq!(ceiling_per_second(1, 250.0), 4_000.0);
        assert!(ceiling_per_second(2, 0.0).is_infinite());
        let cost = SignatureCost {
            server_checkin_us: 80.0,
            vehicle_checkin_us: 120.0,
            server_progress_us: 60.0,
            vehicle_progress_us: 40.0,
        };
        assert_eq!(cost.checkin_ceilings(2), (10_000.0, 25_000.0));
        assert_eq!(cost.progress_ceilings(2), (20_000.0, 2e6 / 60.0));
    }

    #[test]
    fn a_check_in_that_does_not_verify_is_not_timed() {
        let key = SigningKey::from_seed(&[1; 32]);
        let other = SigningKey::from_seed(&[2; 32]);
        let err =
            SignatureCost::measure(&key, || super::super::checkin_bytes(&other, "fb-test-0", 0))
                .unwrap_err();
        assert!(err.to_string().contains("check-in sample"), "{err:#}");
        let cost =
            SignatureCost::measure(&key, || super::super::checkin_bytes(&key, "fb-test-0", 1))
                .unwrap();
        assert!(cost.server_checkin_us > 0.0 && cost.vehicle_checkin_us > 0.0);
        assert!(cost.server_progress_us > 0.0 && cost.vehicle_progress_us > 0.0);
    }
}
