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

pub mod file;
pub mod pkcs11;

use crate::config::{AgentConfig, ConfigError, KeyConfig};
use crate::hsm::HsmError;
use crate::trust_store::{FileTrustStore, HardwareBinding, TokenBinding};
use file::{FileKey, FileKeyError};
use ota_core::encoding::encode_base64;
use ota_core::envelope::{pae, Envelope, EnvelopeSignature};
use ota_core::key::{PublicKey, SigningKey};
use pkcs11::Pkcs11Key;
use std::fmt::Debug;
use std::sync::Arc;

/// Why the device key could not sign.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("device key: {0}")]
    Backend(String),
    #[error("request credential: {0}")]
    Request(#[from] ota_core::credential::CredentialError),
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

/// The `Authorization` header for one request to the server's vehicle routes
/// (PROTOCOL.md §10): signs `method` and `target` (path and query as sent).
pub fn request_credential(
    vehicle_id: &str,
    unix_seconds: i64,
    method: &str,
    target: &str,
    signer: &dyn DeviceSigner,
) -> Result<String, SignError> {
    let request =
        ota_core::credential::SignedRequest::new(vehicle_id, unix_seconds, method, target)?;
    let signature = signer.sign(&request.message())?;
    Ok(request.header(&signature))
}

/// Why the agent's identity could not be opened: it refuses to run.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("vehicle token: {0}")]
    Hsm(#[from] HsmError),
    #[error(transparent)]
    File(#[from] FileKeyError),
    #[error("agent config: anchor: a root anchor in a token needs key.store = \"pkcs11\"")]
    AnchorWithoutToken,
}

/// What the agent runs with: its device key and, when the config names one, the root
/// anchor key read from the same token and the trusted state's binding to it.
#[derive(Debug)]
pub struct DeviceIdentity {
    signer: Arc<dyn DeviceSigner>,
    token: Option<Arc<Pkcs11Key>>,
    root_anchor: Option<PublicKey>,
    state_binding: Option<Arc<dyn HardwareBinding>>,
}

impl DeviceIdentity {
    /// The device key, shareable across tasks.
    pub fn signer(&self) -> Arc<dyn DeviceSigner> {
        Arc::clone(&self.signer)
    }

    /// The root anchor key read from the token (`[anchor]` in the config).
    pub fn root_anchor(&self) -> Option<PublicKey> {
        self.root_anchor
    }

    /// The trusted state's binding to the token (with the anchor; `None`: development
    /// file store).
    pub fn state_binding(&self) -> Option<Arc<dyn HardwareBinding>> {
        self.state_binding.clone()
    }

    /// The trust store in `dir` as this identity requires it: anchored in the token and
    /// bound to it when the config names an anchor, the development file store otherwise.
    pub fn trust_store(&self, dir: impl Into<std::path::PathBuf>) -> FileTrustStore {
        let mut store = FileTrustStore::new(dir);
        if let Some(anchor) = self.root_anchor {
            store = store.with_hardware_anchor(anchor);
        }
        if let Some(binding) = self.state_binding() {
            store = store.with_hardware_binding(binding);
        }
        store
    }

    /// Releases the key; for a token key held nowhere else, closes the session and
    /// finalizes the PKCS#11 module.
    pub fn close(self) -> Result<(), HsmError> {
        let DeviceIdentity {
            signer,
            token,
            state_binding,
            ..
        } = self;
        drop(signer);
        drop(state_binding);
        match token.map(Arc::try_unwrap) {
            Some(Ok(key)) => key.close(),
            // Still shared (or a file key): nothing to finalize here.
            Some(Err(_)) | None => Ok(()),
        }
    }
}

/// Opens the key store the config names and reads the root anchor from the token,
/// failing closed on a missing, duplicate or unprotected key or anchor.
pub fn open_identity(config: &AgentConfig) -> Result<DeviceIdentity, IdentityError> {
    match &config.key {
        KeyConfig::Pkcs11(key_config) => {
            let key = Pkcs11Key::open(&key_config.hsm_config()?, &key_config.label)?;
            let root_anchor = match &config.anchor {
                Some(anchor) => match key.with_hsm(|hsm| hsm.root_anchor(&anchor.label)) {
                    Ok(anchor_key) => Some(anchor_key),
                    Err(err) => {
                        // Refusing to run; a failure to finalize adds nothing.
                        let _ = key.close();
                        return Err(err.into());
                    }
                },
                None => None,
            };
            let key = Arc::new(key);
            // A vehicle whose trust is anchored in the token binds its state to it too.
            let state_binding = match root_anchor {
                Some(_) => match TokenBinding::open(Arc::clone(&key)) {
                    Ok(binding) => Some(Arc::new(binding) as Arc<dyn HardwareBinding>),
                    Err(err) => {
                        if let Ok(key) = Arc::try_unwrap(key) {
                            let _ = key.close();
                        }
                        return Err(err.into());
                    }
                },
                None => None,
            };
            Ok(DeviceIdentity {
                signer: key.clone(),
                token: Some(key),
                root_anchor,
                state_binding,
            })
        }
        KeyConfig::File(key_config) => {
            if config.anchor.is_some() {
                return Err(IdentityError::AnchorWithoutToken);
            }
            Ok(DeviceIdentity {
                signer: Arc::new(FileKey::load(&key_config.path)?),
                token: None,
                root_anchor: None,
                state_binding: None,
            })
        }
    }
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
    fn request_credential_matches_the_protocol_helper() {
        let key = SigningKey::from_seed(&[8u8; 32]);
        let target = "/v1/blobs/00";
        assert_eq!(
            request_credential(
                "veh-2",
                1_800_000_000,
                "GET",
                target,
                &MemoryKey(key.clone())
            )
            .unwrap(),
            ota_core::credential::SignedRequest::new("veh-2", 1_800_000_000, "GET", target)
                .unwrap()
                .sign(&key)
        );
        assert!(matches!(
            request_credential("veh-2", 1, "GET", "no-slash", &MemoryKey(key)),
            Err(SignError::Request(_))
        ));
    }
}
