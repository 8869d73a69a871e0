//! The device key inside the vehicle's PKCS#11 token (SoftHSM2 in tests).
//!
//! At provisioning [`Pkcs11Key::generate`] creates an Ed25519 key pair *in the token*
//! (`CKM_EC_EDWARDS_KEY_PAIR_GEN`): the private key is a sensitive, non-extractable token
//! object, so its bytes never leave the token, and the public key is a non-modifiable
//! token object. At start-up [`Pkcs11Key::open`] requires **exactly one** private-key and
//! one public-key object with the label, sharing one `CKA_ID`, the private key sensitive
//! and never extractable (generated in the token, not imported), and signs a self-test
//! message to prove the two objects are one pair; anything else fails closed with a typed
//! [`HsmError`]. Signatures use `CKM_EDDSA` (pure Ed25519).

use super::{DeviceSigner, SignError};
use crate::hsm::{decode_ec_point, op, Hsm, HsmConfig, HsmError, ED25519_EC_PARAMS};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use ota_core::key::PublicKey;
use std::sync::Mutex;

/// The default label of the device key objects.
pub const DEFAULT_DEVICE_KEY_LABEL: &str = "ota-device-key";

/// The message signed at [`Pkcs11Key::open`] to check the private key matches the public.
const SELF_TEST_MESSAGE: &[u8] = b"ota-agent device key self-test v1";

/// The vehicle's device key, held in the token. The PKCS#11 session is not `Sync`; it is
/// guarded by a mutex, so one signature is computed at a time.
#[derive(Debug)]
pub struct Pkcs11Key {
    hsm: Mutex<Hsm>,
    private: ObjectHandle,
    public: PublicKey,
    label: String,
}

fn eddsa() -> Mechanism<'static> {
    Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure))
}

impl Pkcs11Key {
    /// Provisioning: generates an Ed25519 key pair inside the token under `label` and
    /// `id` (`CKA_ID`) and returns its public key. Refuses when any object with that label
    /// exists.
    pub fn generate(hsm: &Hsm, label: &str, id: &[u8]) -> Result<PublicKey, HsmError> {
        let session = hsm.session();
        let existing = session
            .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
            .map_err(op("finding objects"))?;
        if !existing.is_empty() {
            return Err(HsmError::DeviceKeyExists {
                label: label.to_owned(),
                count: existing.len(),
            });
        }
        let public_template = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Modifiable(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
            Attribute::EcParams(ED25519_EC_PARAMS.to_vec()),
        ];
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ];
        let (public, _private) = session
            .generate_key_pair(
                &Mechanism::EccEdwardsKeyPairGen,
                &public_template,
                &private_template,
            )
            .map_err(op("generating the device key pair"))?;
        read_public_key(hsm, public, label)
    }

    /// Opens the token and the device key labelled `label`, failing closed unless there is
    /// exactly one protected key pair (see the module documentation). On a refusal the
    /// module is finalized again.
    pub fn open(config: &HsmConfig, label: &str) -> Result<Pkcs11Key, HsmError> {
        // Read-write: the same session raises the trusted state's generation
        // ([`crate::trust_store::TokenBinding`]).
        let hsm = Hsm::open(config, true)?;
        match find_key_pair(&hsm, label) {
            Ok((private, public)) => Ok(Pkcs11Key {
                hsm: Mutex::new(hsm),
                private,
                public,
                label: label.to_owned(),
            }),
            Err(err) => {
                // The refusal is what matters; a failure to finalize adds nothing.
                let _ = hsm.close();
                Err(err)
            }
        }
    }

    /// The label of the key objects.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Runs `f` on the token session this key holds (e.g. to read the root anchor
    /// through the same PKCS#11 context).
    pub fn with_hsm<T>(&self, f: impl FnOnce(&Hsm) -> T) -> T {
        let hsm = self
            .hsm
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&hsm)
    }

    /// Closes the session and finalizes the module.
    pub fn close(self) -> Result<(), HsmError> {
        self.hsm
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .close()
    }
}

impl crate::trust_store::TokenSession for Pkcs11Key {
    fn with_hsm<T>(&self, f: impl FnOnce(&Hsm) -> T) -> T {
        Pkcs11Key::with_hsm(self, f)
    }
}

impl DeviceSigner for Pkcs11Key {
    fn public_key(&self) -> PublicKey {
        self.public
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], SignError> {
        let signature = self
            .with_hsm(|hsm| hsm.session().sign(&eddsa(), self.private, message))
            .map_err(|e| SignError::Backend(format!("PKCS#11 CKM_EDDSA: {e}")))?;
        <[u8; 64]>::try_from(signature.as_slice()).map_err(|_| {
            SignError::Backend(format!(
                "PKCS#11 CKM_EDDSA returned {} bytes, not a 64-byte Ed25519 signature",
                signature.len()
            ))
        })
    }
}

/// Exactly one private and one public key object with `label` and no other object, one
/// `CKA_ID`, the private key protected, and the two forming one pair.
fn find_key_pair(hsm: &Hsm, label: &str) -> Result<(ObjectHandle, PublicKey), HsmError> {
    let session = hsm.session();
    let labelled = session
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .map_err(op("finding objects"))?;
    let (mut privates, mut publics, mut others) = (Vec::new(), Vec::new(), 0usize);
    for object in labelled {
        let class = session
            .get_attributes(object, &[AttributeType::Class])
            .map_err(op("reading an object's class"))?;
        match class.first() {
            Some(Attribute::Class(ObjectClass::PRIVATE_KEY)) => privates.push(object),
            Some(Attribute::Class(ObjectClass::PUBLIC_KEY)) => publics.push(object),
            _ => others += 1,
        }
    }
    let private = exactly_one(label, "private-key", &privates)?;
    let public = exactly_one(label, "public-key", &publics)?;
    if others > 0 {
        return Err(HsmError::DeviceKeyAmbiguous {
            label: label.to_owned(),
            class: "other",
            count: others,
        });
    }
    let private_attributes = session
        .get_attributes(
            private,
            &[
                AttributeType::Token,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::AlwaysSensitive,
                AttributeType::NeverExtractable,
                AttributeType::Sign,
                AttributeType::KeyType,
                AttributeType::Id,
            ],
        )
        .map_err(op("reading the device key's attributes"))?;
    let mut flags = PrivateFlags::default();
    let (mut key_type, mut private_id) = (None, None);
    for attribute in private_attributes {
        match attribute {
            Attribute::Token(v) => flags.token = v,
            Attribute::Sensitive(v) => flags.sensitive = v,
            Attribute::Extractable(v) => flags.extractable = v,
            Attribute::AlwaysSensitive(v) => flags.always_sensitive = v,
            Attribute::NeverExtractable(v) => flags.never_extractable = v,
            Attribute::Sign(v) => flags.sign = v,
            Attribute::KeyType(v) => key_type = Some(v),
            Attribute::Id(v) => private_id = Some(v),
            _ => {}
        }
    }
    if let Some(problem) = flags.problem() {
        return Err(HsmError::DeviceKeyNotProtected {
            label: label.to_owned(),
            problem,
        });
    }
    let invalid = |reason: String| HsmError::DeviceKeyInvalid {
        label: label.to_owned(),
        reason,
    };
    if key_type != Some(KeyType::EC_EDWARDS) {
        return Err(invalid(format!(
            "private key type {key_type:?} is not EC_EDWARDS"
        )));
    }
    let public_id = session
        .get_attributes(public, &[AttributeType::Id])
        .map_err(op("reading the device public key's CKA_ID"))?
        .into_iter()
        .find_map(|attribute| match attribute {
            Attribute::Id(id) => Some(id),
            _ => None,
        });
    if private_id.is_none() || private_id != public_id {
        return Err(HsmError::DeviceKeyIdMismatch {
            label: label.to_owned(),
        });
    }
    let public_key = read_public_key(hsm, public, label)?;
    let signature = session
        .sign(&eddsa(), private, SELF_TEST_MESSAGE)
        .map_err(op("signing the device key self-test"))?;
    let matches = <[u8; 64]>::try_from(signature.as_slice())
        .is_ok_and(|raw| public_key.verify_strict(SELF_TEST_MESSAGE, &raw));
    if !matches {
        return Err(invalid(
            "the private key's signature does not verify with the public key".into(),
        ));
    }
    Ok((private, public_key))
}

fn exactly_one(
    label: &str,
    class: &'static str,
    objects: &[ObjectHandle],
) -> Result<ObjectHandle, HsmError> {
    match objects {
        [one] => Ok(*one),
        [] => Err(HsmError::DeviceKeyMissing {
            label: label.to_owned(),
            class,
        }),
        many => Err(HsmError::DeviceKeyAmbiguous {
            label: label.to_owned(),
            class,
            count: many.len(),
        }),
    }
}

/// The protection attributes of the private key; absent attributes count as unsafe.
#[derive(Debug, Default, Clone, Copy)]
struct PrivateFlags {
    token: bool,
    sensitive: bool,
    extractable: bool,
    always_sensitive: bool,
    never_extractable: bool,
    sign: bool,
}

impl PrivateFlags {
    fn problem(&self) -> Option<&'static str> {
        if !self.token {
            Some("a session object")
        } else if !self.sensitive {
            Some("not sensitive")
        } else if self.extractable {
            Some("extractable")
        } else if !self.always_sensitive || !self.never_extractable {
            Some("imported (it was once readable outside the token)")
        } else if !self.sign {
            Some("not allowed to sign")
        } else {
            None
        }
    }
}

fn read_public_key(hsm: &Hsm, object: ObjectHandle, label: &str) -> Result<PublicKey, HsmError> {
    let invalid = |reason: String| HsmError::DeviceKeyInvalid {
        label: label.to_owned(),
        reason,
    };
    let attributes = hsm
        .session()
        .get_attributes(object, &[AttributeType::KeyType, AttributeType::EcPoint])
        .map_err(op("reading the device public key"))?;
    let (mut key_type, mut point) = (None, None);
    for attribute in attributes {
        match attribute {
            Attribute::KeyType(v) => key_type = Some(v),
            Attribute::EcPoint(v) => point = Some(v),
            _ => {}
        }
    }
    if key_type != Some(KeyType::EC_EDWARDS) {
        return Err(invalid(format!(
            "public key type {key_type:?} is not EC_EDWARDS"
        )));
    }
    let raw = decode_ec_point(&point.unwrap_or_default()).map_err(invalid)?;
    PublicKey::from_bytes(&raw).map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_key_flags_refuse_every_unprotected_combination() {
        let good = PrivateFlags {
            token: true,
            sensitive: true,
            extractable: false,
            always_sensitive: true,
            never_extractable: true,
            sign: true,
        };
        assert_eq!(good.problem(), None);
        type Case = (&'static str, fn(&mut PrivateFlags));
        let cases: [Case; 6] = [
            ("a session object", |f| f.token = false),
            ("not sensitive", |f| f.sensitive = false),
            ("extractable", |f| f.extractable = true),
            ("imported", |f| f.always_sensitive = false),
            ("imported", |f| f.never_extractable = false),
            ("not allowed to sign", |f| f.sign = false),
        ];
        for (expected, mutate) in cases {
            let mut flags = good;
            mutate(&mut flags);
            let problem = flags.problem().expect("must refuse");
            assert!(problem.starts_with(expected), "{expected}: got {problem}");
        }
        assert!(PrivateFlags::default().problem().is_some());
    }
}
