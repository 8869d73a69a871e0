//! The vehicle's device identity: the Ed25519 key that signs check-ins, progress events
//! and blob credentials.
//!
//! Two key stores implement [`DeviceSigner`]:
//! - `pkcs11`: the key generated inside the vehicle's token, never exportable, signing
//!   with `CKM_EDDSA` (production);
//! - `file`: a seed in a 0600 file, for development and the fleet simulator only (loudly
//!   labelled wherever it is used).
//!
//! Everything the agent signs goes through [`sign_envelope`], so the two stores produce
//! byte-identical wire messages.

use ota_core::encoding::encode_base64;
use ota_core::envelope::{pae, Envelope, EnvelopeSignature};
use ota_core::key::{PublicKey, SigningKey};
use std::fmt::Debug;

/// Why the device key could not sign.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("device key: {0}")]
    Backend(String),
}

/// The vehicle's device key, wherever it lives.
pub trait DeviceSigner: Send + Sync + Debug {
    /// The public key registered with the server (`otactl vehicle register`).
    fn public_key(&self) -> PublicKey;
    /// An Ed25519 signature over `message`.
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], SignError>;
}

/// A device key held in process memory (file key store, simulator).
#[derive(Debug)]
pub struct MemoryKey(pub SigningKey);

impl DeviceSigner for MemoryKey {
    fn public_key(&self) -> PublicKey {
        self.0.public_key()
    }
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], SignError> {
        Ok(self.0.sign(message))
    }
}

/// Signs `payload` as a DSSE envelope of `payload_type` with the device key; the wire
/// bytes.
pub fn sign_envelope(
    payload_type: &str,
    payload: Vec<u8>,
    signer: &dyn DeviceSigner,
) -> Result<Vec<u8>, SignError> {
    let signature = signer.sign(&pae(payload_type, &payload))?;
    let envelope = Envelope {
        payload_type: payload_type.to_owned(),
        payload,
        signatures: vec![EnvelopeSignature {
            keyid: signer.public_key().key_id().as_str().to_owned(),
            sig: encode_base64(&signature),
        }],
    };
    Ok(envelope.to_json_bytes())
}

/// The `Authorization` header for blob and metadata downloads (PROTOCOL.md §7).
pub fn blob_credential(
    vehicle_id: &str,
    unix_seconds: i64,
    signer: &dyn DeviceSigner,
) -> Result<String, SignError> {
    let message = ota_core::protocol::blob_auth_message(vehicle_id, unix_seconds);
    let signature = signer.sign(&message)?;
    Ok(format!(
        "Vehicle {vehicle_id}.{unix_seconds}.{}",
        encode_base64(&signature)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_core::protocol::{open_message, sign_message, PAYLOAD_TYPE_CHECKIN};

    #[test]
    fn device_envelopes_equal_the_reference_signer_and_open_with_the_device_key() {
        let key = SigningKey::from_seed(&[7u8; 32]);
        let payload = br#"{"vehicle_id":"veh-1"}"#.to_vec();
        let ours = sign_envelope(
            PAYLOAD_TYPE_CHECKIN,
            payload.clone(),
            &MemoryKey(key.clone()),
        )
        .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        let reference = sign_message(PAYLOAD_TYPE_CHECKIN, &value, &key);
        assert_eq!(
            ours, reference,
            "both signers must produce the same wire bytes"
        );
        let opened: serde_json::Value =
            open_message(&ours, PAYLOAD_TYPE_CHECKIN, &key.public_key()).unwrap();
        assert_eq!(opened["vehicle_id"], "veh-1");
    }

    #[test]
    fn blob_credential_matches_the_protocol_helper() {
        let key = SigningKey::from_seed(&[8u8; 32]);
        assert_eq!(
            blob_credential("veh-2", 1_800_000_000, &MemoryKey(key.clone())).unwrap(),
            ota_core::protocol::blob_auth_header("veh-2", 1_800_000_000, &key)
        );
    }
}
