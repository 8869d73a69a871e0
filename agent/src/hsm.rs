//! The vehicle's hardware security module, through PKCS#11 (`cryptoki`; SoftHSM2 in
//! tests).
//!
//! The trust anchor is one Ed25519 **public-key object** on the token, stored at
//! provisioning as a token object that is neither modifiable nor destroyable, so software
//! on the vehicle — including a compromised agent — cannot replace it. At start-up the
//! agent looks the token up **by label** (slot ids are assigned by the module and are not
//! stable) and requires **exactly one** public-key object with the anchor label; zero,
//! several, a modifiable or destroyable one, or one that is not a valid Ed25519 key all
//! fail closed.
//!
//! The same token holds the vehicle's device key; [`crate::identity::pkcs11`] generates
//! and opens it through [`Hsm`]'s session.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use ota_core::key::PublicKey;
use std::path::PathBuf;

/// DER of the Ed25519 curve OID 1.3.101.112, the `CKA_EC_PARAMS` of Ed25519 keys.
pub(crate) const ED25519_EC_PARAMS: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

/// The default label of the root anchor object.
pub const DEFAULT_ANCHOR_LABEL: &str = "ota-root-anchor";

/// The label of the HMAC key that authenticates the trusted state (`state.json`).
pub const STATE_KEY_LABEL: &str = "ota-state-key";

/// The data object holding the trusted state's generation is found by this
/// `CKA_APPLICATION`; its `CKA_LABEL` is this name, a space and the generation in decimal
/// (`ota-state-generation 17`). The label carries the number because it is the one
/// attribute of a data object PKCS#11 lets an application change after creation
/// (`CKA_VALUE` of a data object is read-only in the standard and in SoftHSM2), and one
/// `C_SetAttributeValue` replaces it atomically.
pub const STATE_GENERATION_LABEL: &str = "ota-state-generation";

fn generation_label(generation: u64) -> Vec<u8> {
    format!("{STATE_GENERATION_LABEL} {generation}").into_bytes()
}

/// The generation in a label written by [`generation_label`] (canonical decimal only).
fn parse_generation_label(label: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(label).ok()?;
    let digits = text
        .strip_prefix(STATE_GENERATION_LABEL)?
        .strip_prefix(' ')?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    #[error("PKCS#11 module {module}: {source}")]
    Module { module: PathBuf, source: CkError },
    #[error("PKCS#11: no token labelled {label:?} (tokens present: {present:?})")]
    TokenNotFound { label: String, present: Vec<String> },
    #[error("PKCS#11: {count} tokens are labelled {label:?}; refusing to guess")]
    AmbiguousToken { label: String, count: usize },
    #[error("PKCS#11 {action}: {source}")]
    Operation {
        action: &'static str,
        source: CkError,
    },
    #[error("no public-key object labelled {label:?} on the token: no trust anchor")]
    AnchorMissing { label: String },
    #[error("{count} public-key objects are labelled {label:?}; exactly one is required")]
    AnchorAmbiguous { label: String, count: usize },
    #[error("the anchor object {label:?} is {problem}; it must be a non-modifiable, non-destroyable token object")]
    AnchorNotProtected {
        label: String,
        problem: &'static str,
    },
    #[error("the anchor object {label:?} is not a valid Ed25519 public key: {reason}")]
    AnchorInvalid { label: String, reason: String },
    #[error("an object labelled {label:?} already exists; the anchor is never replaced")]
    AnchorExists { label: String },
    #[error("{count} object(s) labelled {label:?} already exist on the token; the device key is never replaced")]
    DeviceKeyExists { label: String, count: usize },
    #[error("no {class} object labelled {label:?} on the token: the vehicle has no device key (run `ota-agent provision`)")]
    DeviceKeyMissing { label: String, class: &'static str },
    #[error("{count} {class} objects are labelled {label:?}; exactly one private key and one public key are required")]
    DeviceKeyAmbiguous {
        label: String,
        class: &'static str,
        count: usize,
    },
    #[error("the device key objects labelled {label:?} have different CKA_IDs; they are not one key pair")]
    DeviceKeyIdMismatch { label: String },
    #[error("the device private key {label:?} is {problem}; it must be a sensitive, never-extractable token key generated in the token")]
    DeviceKeyNotProtected {
        label: String,
        problem: &'static str,
    },
    #[error("the device key {label:?} is not a valid Ed25519 key pair: {reason}")]
    DeviceKeyInvalid { label: String, reason: String },
    #[error("no {what} labelled {label:?} on the token: the trusted state is not bound to this vehicle (provision with `ota-agent provision`, or `ota-agent hsm init-state` on a token anchored before the binding existed)")]
    StateBindingMissing { what: &'static str, label: String },
    #[error("{count} objects are labelled {label:?}; exactly one {what} is required")]
    StateBindingAmbiguous {
        what: &'static str,
        label: String,
        count: usize,
    },
    #[error("the {what} {label:?} is {problem}")]
    StateBindingNotProtected {
        what: &'static str,
        label: String,
        problem: String,
    },
    #[error("object(s) labelled {label:?} already exist on the token; the state binding is never replaced")]
    StateBindingExists { label: String },
    #[error("the token's trusted state generation {current} would go back to {requested}; it only rises")]
    GenerationLowered { current: u64, requested: u64 },
}

/// Where the token is and how to log in.
#[derive(Debug, Clone)]
pub struct HsmConfig {
    pub module: PathBuf,
    pub token_label: String,
    pub pin: String,
}

/// An open, logged-in PKCS#11 session on the token with the configured label.
#[derive(Debug)]
pub struct Hsm {
    context: Pkcs11,
    session: Session,
}

pub(crate) fn op(action: &'static str) -> impl FnOnce(CkError) -> HsmError {
    move |source| HsmError::Operation { action, source }
}

impl Hsm {
    /// Loads the module, finds the token by label, opens a session and logs in as user.
    pub fn open(config: &HsmConfig, read_write: bool) -> Result<Hsm, HsmError> {
        let module_err = |source| HsmError::Module {
            module: config.module.clone(),
            source,
        };
        let context = Pkcs11::new(&config.module).map_err(module_err)?;
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(source) => return Err(module_err(source)),
        }
        let slot = find_token(&context, &config.token_label)?;
        let session = if read_write {
            context.open_rw_session(slot)
        } else {
            context.open_ro_session(slot)
        }
        .map_err(op("opening a session"))?;
        session
            .login(UserType::User, Some(&AuthPin::from(config.pin.clone())))
            .map_err(op("logging in"))?;
        Ok(Hsm { context, session })
    }

    /// Closes the session and finalizes the module (PKCS#11 allows one initialization
    /// per process; dropping without this keeps the module initialized).
    pub fn close(self) -> Result<(), HsmError> {
        let Hsm { context, session } = self;
        drop(session);
        context.finalize().map_err(op("finalizing the module"))
    }

    /// The logged-in session (the device key in [`crate::identity::pkcs11`] uses it).
    pub(crate) fn session(&self) -> &Session {
        &self.session
    }

    /// How many objects of any class carry `label` (provisioning checks a label is free
    /// before creating anything).
    pub fn objects_labelled(&self, label: &str) -> Result<usize, HsmError> {
        Ok(self
            .session
            .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
            .map_err(op("finding objects"))?
            .len())
    }

    fn public_keys_labelled(&self, label: &str) -> Result<Vec<ObjectHandle>, HsmError> {
        self.session
            .find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(op("finding objects"))
    }

    /// The root anchor key: exactly one protected Ed25519 public-key object with `label`.
    pub fn root_anchor(&self, label: &str) -> Result<PublicKey, HsmError> {
        let objects = self.public_keys_labelled(label)?;
        let object = match objects.as_slice() {
            [] => {
                return Err(HsmError::AnchorMissing {
                    label: label.to_owned(),
                })
            }
            [one] => *one,
            many => {
                return Err(HsmError::AnchorAmbiguous {
                    label: label.to_owned(),
                    count: many.len(),
                })
            }
        };
        let attributes = self
            .session
            .get_attributes(
                object,
                &[
                    AttributeType::Token,
                    AttributeType::Modifiable,
                    AttributeType::Destroyable,
                    AttributeType::KeyType,
                    AttributeType::EcPoint,
                ],
            )
            .map_err(op("reading the anchor's attributes"))?;
        let (mut token, mut modifiable, mut destroyable) = (false, true, true);
        let (mut key_type, mut point) = (None, None);
        for attribute in attributes {
            match attribute {
                Attribute::Token(value) => token = value,
                Attribute::Modifiable(value) => modifiable = value,
                Attribute::Destroyable(value) => destroyable = value,
                Attribute::KeyType(value) => key_type = Some(value),
                Attribute::EcPoint(value) => point = Some(value),
                _ => {}
            }
        }
        let protection_problem = if !token {
            Some("a session object")
        } else if modifiable {
            Some("modifiable")
        } else if destroyable {
            Some("destroyable")
        } else {
            None
        };
        if let Some(problem) = protection_problem {
            return Err(HsmError::AnchorNotProtected {
                label: label.to_owned(),
                problem,
            });
        }
        let invalid = |reason: String| HsmError::AnchorInvalid {
            label: label.to_owned(),
            reason,
        };
        if key_type != Some(KeyType::EC_EDWARDS) {
            return Err(invalid(format!("key type {key_type:?} is not EC_EDWARDS")));
        }
        let raw = decode_ec_point(&point.unwrap_or_default()).map_err(invalid)?;
        PublicKey::from_bytes(&raw).map_err(|e| invalid(e.to_string()))
    }

    /// Provisioning: stores `key` as the root anchor, a non-modifiable, non-destroyable
    /// token object. Refuses when any public key with that label exists.
    pub fn install_root_anchor(&self, label: &str, key: &PublicKey) -> Result<(), HsmError> {
        if !self.public_keys_labelled(label)?.is_empty() {
            return Err(HsmError::AnchorExists {
                label: label.to_owned(),
            });
        }
        self.session
            .create_object(&anchor_template(label, key, false))
            .map_err(op("creating the anchor object"))?;
        Ok(())
    }

    /// Test and migration helper: creates a public-key object exactly as given, without
    /// the provisioning checks (so that tests can plant unprotected or duplicate anchors).
    pub fn create_public_key_object(
        &self,
        label: &str,
        key: &PublicKey,
        protected: bool,
    ) -> Result<(), HsmError> {
        self.session
            .create_object(&anchor_template(label, key, !protected))
            .map_err(op("creating a public-key object"))?;
        Ok(())
    }
}

/// The trusted state's binding to the token (see [`crate::trust_store`]): an HMAC key
/// and a generation counter, both found by label, checked once when opened.
#[derive(Debug, Clone, Copy)]
pub struct StateObjects {
    key: ObjectHandle,
    generation: ObjectHandle,
}

fn hmac() -> Mechanism<'static> {
    Mechanism::Sha256Hmac
}

impl Hsm {
    /// Provisioning: generates the state HMAC key inside the token (a 32-byte generic
    /// secret, sensitive, never extractable, neither modifiable nor destroyable, usable
    /// only for `CKM_SHA256_HMAC` sign and verify) and creates the generation data object
    /// at 0 (not destroyable). Refuses, creating nothing, when either label is taken.
    pub fn install_state_binding(&self) -> Result<(), HsmError> {
        self.refuse_existing_state_binding()?;
        let key_template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Modifiable(false),
            Attribute::Destroyable(false),
            Attribute::Label(STATE_KEY_LABEL.as_bytes().to_vec()),
        ];
        self.session
            .generate_key(&Mechanism::GenericSecretKeyGen, &key_template)
            .map_err(op("generating the state HMAC key"))?;
        self.session
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Modifiable(true),
                Attribute::Destroyable(false),
                Attribute::Label(generation_label(0)),
                Attribute::Application(STATE_GENERATION_LABEL.as_bytes().to_vec()),
            ])
            .map_err(op("creating the state generation object"))?;
        Ok(())
    }

    /// Refuses when the state key or a generation object is already on the token.
    pub fn refuse_existing_state_binding(&self) -> Result<(), HsmError> {
        if self.objects_labelled(STATE_KEY_LABEL)? > 0 {
            return Err(HsmError::StateBindingExists {
                label: STATE_KEY_LABEL.to_owned(),
            });
        }
        if !self.generation_objects()?.is_empty() {
            return Err(HsmError::StateBindingExists {
                label: STATE_GENERATION_LABEL.to_owned(),
            });
        }
        Ok(())
    }

    fn generation_objects(&self) -> Result<Vec<ObjectHandle>, HsmError> {
        self.session
            .find_objects(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Application(STATE_GENERATION_LABEL.as_bytes().to_vec()),
            ])
            .map_err(op("finding objects"))
    }

    /// The state binding objects: exactly one protected HMAC key and one generation data
    /// object; anything else fails closed.
    pub fn state_objects(&self) -> Result<StateObjects, HsmError> {
        let key = self.only_state_key()?;
        let generation = match self.generation_objects()?.as_slice() {
            [one] => *one,
            [] => {
                return Err(HsmError::StateBindingMissing {
                    what: "state generation object",
                    label: STATE_GENERATION_LABEL.to_owned(),
                })
            }
            many => {
                return Err(HsmError::StateBindingAmbiguous {
                    what: "state generation object",
                    label: STATE_GENERATION_LABEL.to_owned(),
                    count: many.len(),
                })
            }
        };
        let attributes = self
            .session
            .get_attributes(
                key,
                &[
                    AttributeType::Token,
                    AttributeType::Sensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Extractable,
                    AttributeType::KeyType,
                ],
            )
            .map_err(op("reading the state key's attributes"))?;
        let (mut token, mut sensitive, mut never_extractable, mut extractable) =
            (false, false, false, true);
        let mut key_type = None;
        for attribute in attributes {
            match attribute {
                Attribute::Token(v) => token = v,
                Attribute::Sensitive(v) => sensitive = v,
                Attribute::NeverExtractable(v) => never_extractable = v,
                Attribute::Extractable(v) => extractable = v,
                Attribute::KeyType(v) => key_type = Some(v),
                _ => {}
            }
        }
        let problem = if !token {
            Some("a session object".to_owned())
        } else if !sensitive || extractable || !never_extractable {
            Some("readable outside the token (it must be sensitive and never extractable)".into())
        } else if key_type != Some(KeyType::GENERIC_SECRET) {
            Some(format!("of key type {key_type:?}, not GENERIC_SECRET"))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(HsmError::StateBindingNotProtected {
                what: "state HMAC key",
                label: STATE_KEY_LABEL.to_owned(),
                problem,
            });
        }
        let objects = StateObjects { key, generation };
        self.state_generation(&objects)?;
        Ok(objects)
    }

    /// Exactly one object labelled [`STATE_KEY_LABEL`], and it is a secret key.
    fn only_state_key(&self) -> Result<ObjectHandle, HsmError> {
        let what = "state HMAC key";
        let label = STATE_KEY_LABEL.as_bytes().to_vec();
        let labelled = self
            .session
            .find_objects(&[Attribute::Label(label.clone())])
            .map_err(op("finding objects"))?;
        let keys = self
            .session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label),
            ])
            .map_err(op("finding objects"))?;
        match (labelled.len(), keys.as_slice()) {
            (1, [one]) => Ok(*one),
            (0, _) => Err(HsmError::StateBindingMissing {
                what,
                label: STATE_KEY_LABEL.to_owned(),
            }),
            (count, _) => Err(HsmError::StateBindingAmbiguous {
                what,
                label: STATE_KEY_LABEL.to_owned(),
                count,
            }),
        }
    }

    /// The generation of the last trusted state the token accepted.
    pub fn state_generation(&self, objects: &StateObjects) -> Result<u64, HsmError> {
        let label = self
            .session
            .get_attributes(objects.generation, &[AttributeType::Label])
            .map_err(op("reading the state generation"))?
            .into_iter()
            .find_map(|attribute| match attribute {
                Attribute::Label(label) => Some(label),
                _ => None,
            })
            .unwrap_or_default();
        parse_generation_label(&label).ok_or_else(|| HsmError::StateBindingNotProtected {
            what: "state generation object",
            label: String::from_utf8_lossy(&label).into_owned(),
            problem: format!("not labelled \"{STATE_GENERATION_LABEL} <decimal generation>\""),
        })
    }

    /// Raises the generation to `generation`; lowering it is refused.
    pub fn set_state_generation(
        &self,
        objects: &StateObjects,
        generation: u64,
    ) -> Result<(), HsmError> {
        let current = self.state_generation(objects)?;
        if generation < current {
            return Err(HsmError::GenerationLowered {
                current,
                requested: generation,
            });
        }
        self.session
            .update_attributes(
                objects.generation,
                &[Attribute::Label(generation_label(generation))],
            )
            .map_err(op("writing the state generation"))
    }

    /// `CKM_SHA256_HMAC` of `message` with the state key, computed in the token.
    pub fn state_mac(&self, objects: &StateObjects, message: &[u8]) -> Result<[u8; 32], HsmError> {
        let mac = self
            .session
            .sign(&hmac(), objects.key, message)
            .map_err(op("computing the state MAC"))?;
        <[u8; 32]>::try_from(mac.as_slice()).map_err(|_| HsmError::StateBindingNotProtected {
            what: "state HMAC key",
            label: STATE_KEY_LABEL.to_owned(),
            problem: format!("returning a {}-byte MAC, not 32 bytes", mac.len()),
        })
    }

    /// Whether `mac` is the state key's `CKM_SHA256_HMAC` of `message` (checked in the
    /// token).
    pub fn verify_state_mac(
        &self,
        objects: &StateObjects,
        message: &[u8],
        mac: &[u8; 32],
    ) -> Result<bool, HsmError> {
        match self.session.verify(&hmac(), objects.key, message, mac) {
            Ok(()) => Ok(true),
            Err(CkError::Pkcs11(RvError::SignatureInvalid | RvError::SignatureLenRange, _)) => {
                Ok(false)
            }
            Err(source) => Err(HsmError::Operation {
                action: "verifying the state MAC",
                source,
            }),
        }
    }
}

fn anchor_template(label: &str, key: &PublicKey, mutable: bool) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::EC_EDWARDS),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Modifiable(mutable),
        Attribute::Destroyable(mutable),
        Attribute::Label(label.as_bytes().to_vec()),
        // CKA_ID: the raw 32-byte key id, so tools can match the object to root metadata.
        Attribute::Id(hex::decode(key.key_id().as_str()).unwrap_or_default()),
        Attribute::EcParams(ED25519_EC_PARAMS.to_vec()),
        Attribute::EcPoint(encode_ec_point(key)),
    ]
}

fn find_token(context: &Pkcs11, label: &str) -> Result<Slot, HsmError> {
    let slots = context
        .get_slots_with_initialized_token()
        .map_err(op("listing slots"))?;
    let mut present = Vec::new();
    let mut matching = Vec::new();
    for slot in slots {
        let info = context
            .get_token_info(slot)
            .map_err(op("reading token info"))?;
        let token_label = info.label().trim_end().to_owned();
        if token_label == label {
            matching.push(slot);
        }
        present.push(token_label);
    }
    match matching.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(HsmError::TokenNotFound {
            label: label.to_owned(),
            present,
        }),
        many => Err(HsmError::AmbiguousToken {
            label: label.to_owned(),
            count: many.len(),
        }),
    }
}

/// `CKA_EC_POINT` of an Ed25519 key: the 32 raw bytes wrapped in a DER OCTET STRING
/// (`04 20 ‖ key`), as SoftHSM2 and most modules return it.
pub fn encode_ec_point(key: &PublicKey) -> Vec<u8> {
    let mut out = vec![0x04, 0x20];
    out.extend_from_slice(&key.to_bytes());
    out
}

/// Accepts the DER-wrapped form (`04 20 ‖ 32 bytes`) and, for modules that return it
/// unwrapped, exactly 32 raw bytes.
pub fn decode_ec_point(value: &[u8]) -> Result<[u8; 32], String> {
    let raw = match value {
        [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest,
        raw if raw.len() == 32 => raw,
        other => {
            return Err(format!(
                "CKA_EC_POINT of {} bytes is neither 04 20 + 32 bytes nor 32 raw bytes",
                other.len()
            ))
        }
    };
    let mut out = [0u8; 32];
    out.copy_from_slice(raw);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_labels_round_trip_and_only_canonical_decimal_parses() {
        for generation in [0, 1, 17, u64::MAX] {
            assert_eq!(
                parse_generation_label(&generation_label(generation)),
                Some(generation)
            );
        }
        for bad in [
            "ota-state-generation",
            "ota-state-generation ",
            "ota-state-generation 007",
            "ota-state-generation -1",
            "ota-state-generation 1 ",
            "ota-state-generation 18446744073709551616",
            "other 1",
        ] {
            assert_eq!(parse_generation_label(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn ec_point_decoding_accepts_der_wrapped_and_raw_and_nothing_else() {
        let key = ota_core::key::SigningKey::from_seed(&[3; 32]).public_key();
        let wrapped = encode_ec_point(&key);
        assert_eq!(decode_ec_point(&wrapped).unwrap(), key.to_bytes());
        assert_eq!(decode_ec_point(&key.to_bytes()).unwrap(), key.to_bytes());
        assert!(decode_ec_point(&wrapped[..33]).is_err());
        assert!(decode_ec_point(&[0x04, 0x21, 0]).is_err());
        assert!(decode_ec_point(&[]).is_err());
    }
}
