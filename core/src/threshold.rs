//! Counting signatures toward a role's threshold.
//!
//! A signature counts only if its key id is listed in the root, the key is authorised
//! for the role, the signature is well-formed, it verifies strictly over the PAE, and
//! its public key has not already counted. Anything else is recorded as a
//! [`SignatureRejection`] and ignored: a garbage signature beside a valid threshold
//! neither counts nor makes the metadata fail.

use crate::encoding::decode_base64;
use crate::envelope::Envelope;
use crate::error::{Error, SignatureRejection};
use crate::key::{KeyId, PublicKey};
use crate::metadata::{Role, RoleKeys};
use std::collections::{BTreeMap, BTreeSet};

/// Checks that `envelope` carries at least `role_keys.threshold` valid signatures by
/// distinct public keys among `role_keys.keyids`, resolved through `keys`.
/// Returns the number of counted signatures.
pub fn verify_threshold(
    envelope: &Envelope,
    role: Role,
    keys: &BTreeMap<KeyId, PublicKey>,
    role_keys: &RoleKeys,
    signed_by: &'static str,
) -> Result<usize, Error> {
    let message = envelope.signed_message();
    let authorised: BTreeSet<&KeyId> = role_keys.keyids.iter().collect();
    let mut counted_keys: BTreeSet<[u8; 32]> = BTreeSet::new();
    let mut rejected = Vec::new();
    for signature in &envelope.signatures {
        let keyid = signature.keyid.clone();
        let Some((id, key)) = KeyId::parse(&signature.keyid)
            .ok()
            .and_then(|id| keys.get(&id).map(|key| (id, key)))
        else {
            rejected.push(SignatureRejection::UnknownKey { keyid });
            continue;
        };
        if !authorised.contains(&id) {
            rejected.push(SignatureRejection::NotAuthorisedForRole { keyid, role });
            continue;
        }
        let bytes = match decode_base64(&signature.sig) {
            Ok(bytes) => bytes,
            Err(reason) => {
                rejected.push(SignatureRejection::Malformed { keyid, reason });
                continue;
            }
        };
        let Ok(raw) = <[u8; 64]>::try_from(bytes.as_slice()) else {
            rejected.push(SignatureRejection::Malformed {
                keyid,
                reason: format!("signature is {} bytes, expected 64", bytes.len()),
            });
            continue;
        };
        if counted_keys.contains(&key.to_bytes()) {
            rejected.push(SignatureRejection::DuplicateKey { keyid });
            continue;
        }
        if key.verify_strict(&message, &raw) {
            counted_keys.insert(key.to_bytes());
        } else {
            rejected.push(SignatureRejection::Invalid { keyid });
        }
    }
    let valid = counted_keys.len();
    if valid < role_keys.threshold as usize {
        return Err(Error::ThresholdNotMet {
            role,
            signed_by,
            valid,
            required: role_keys.threshold,
            rejected,
        });
    }
    Ok(valid)
}
