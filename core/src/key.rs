//! Ed25519 public keys and key ids.
//!
//! A key id is the lowercase hex SHA-256 of the raw 32-byte public key, so one key has
//! exactly one id; documents that list a key under any other id are refused. Weak
//! (small-order) public keys are refused when loaded: a signature by such a key proves
//! nothing.

use crate::encoding::{parse_lower_hex, Sha256Digest};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The key type of every metadata and device key.
pub const KEYTYPE_ED25519: &str = "ed25519";

/// `hex(SHA-256(raw public key))`, lowercase.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// Parses 64 lowercase hex digits (the form every key id must take).
    pub fn parse(text: &str) -> Result<Self, String> {
        parse_lower_hex::<32>(text)?;
        Ok(KeyId(text.to_owned()))
    }

    pub fn of_public_key(raw: &[u8; 32]) -> Self {
        KeyId(Sha256Digest::of(raw).to_hex())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", &self.0)
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        KeyId::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Why a public key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    #[error("not a valid Ed25519 point")]
    NotACurvePoint,
    #[error("weak (small-order) Ed25519 key")]
    Weak,
}

/// A validated Ed25519 public key: on the curve, not of small order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn from_bytes(raw: &[u8; 32]) -> Result<Self, PublicKeyError> {
        let key = VerifyingKey::from_bytes(raw).map_err(|_| PublicKeyError::NotACurvePoint)?;
        if key.is_weak() {
            return Err(PublicKeyError::Weak);
        }
        Ok(PublicKey(key))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn key_id(&self) -> KeyId {
        KeyId::of_public_key(&self.to_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    /// Strict Ed25519 verification (`verify_strict`: canonical S, no small-order R or A).
    pub fn verify_strict(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.0.verify_strict(message, &signature).is_ok()
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

/// A private signing key, from a 32-byte seed the caller generated. Signing is
/// deterministic (RFC 8032), so the core needs no RNG.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn key_id(&self) -> KeyId {
        self.public_key().key_id()
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.0.sign(message).to_bytes()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public: {})", self.public_key().to_hex())
    }
}

/// A public key as listed in root metadata: `{"keytype": "ed25519", "public": hex}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub keytype: String,
    /// 64 lowercase hex digits: the raw 32-byte public key.
    pub public: String,
}

impl KeyEntry {
    pub fn ed25519(key: &PublicKey) -> Self {
        KeyEntry {
            keytype: KEYTYPE_ED25519.to_owned(),
            public: key.to_hex(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_id_displays_as_itself_and_debugs_with_its_type() {
        let id = SigningKey::from_seed(&[3; 32]).key_id();
        assert_eq!(id.to_string(), id.as_str());
        assert_eq!(format!("{id:?}"), format!("KeyId({})", id.as_str()));
        assert_eq!(id.as_str().len(), 64, "hex of a SHA-256");
    }

    #[test]
    fn small_order_points_are_refused() {
        // The identity point (y = 1) and the point of order 2 (y = -1) are weak.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(PublicKey::from_bytes(&identity), Err(PublicKeyError::Weak));
        let all_zero = [0u8; 32]; // y = 0: order 4
        assert_eq!(PublicKey::from_bytes(&all_zero), Err(PublicKeyError::Weak));
    }

    #[test]
    fn key_id_is_sha256_of_raw_key() {
        let key = SigningKey::from_seed(&[7u8; 32]).public_key();
        assert_eq!(
            key.key_id().as_str(),
            Sha256Digest::of(&key.to_bytes()).to_hex()
        );
        assert!(KeyId::parse(&key.key_id().as_str().to_uppercase()).is_err());
    }

    #[test]
    fn a_signing_key_keeps_its_seed_and_debug_shows_only_the_public_key() {
        let seed = [5u8; 32];
        let key = SigningKey::from_seed(&seed);
        assert_eq!(
            key.seed(),
            seed,
            "the seed round-trips (key files store it)"
        );
        let public = key.public_key();
        assert_eq!(public.verifying_key().to_bytes(), public.to_bytes());
        assert_eq!(
            format!("{public:?}"),
            format!("PublicKey({})", public.to_hex())
        );
        let debug = format!("{key:?}");
        assert_eq!(debug, format!("SigningKey(public: {})", public.to_hex()));
        assert!(
            !debug.contains(&hex::encode(seed)),
            "Debug never prints the secret seed"
        );
    }
}
