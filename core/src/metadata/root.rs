//! `root`: the keys and thresholds of every role.

use super::{impl_role_document, parse_document, Role, SPEC_VERSION};
use crate::encoding::{parse_lower_hex, StrictMap};
use crate::error::Error;
use crate::key::{KeyEntry, KeyId, PublicKey, PublicKeyError, KEYTYPE_ED25519};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The key ids allowed to sign for a role, and how many distinct ones must.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleKeys {
    pub keyids: Vec<KeyId>,
    pub threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    pub root: RoleKeys,
    pub targets: RoleKeys,
    pub director: RoleKeys,
}

impl Roles {
    pub fn get(&self, role: Role) -> &RoleKeys {
        match role {
            Role::Root => &self.root,
            Role::Targets => &self.targets,
            Role::Director => &self.director,
        }
    }
}

/// The wire form of a root document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootMetadata {
    #[serde(rename = "_type")]
    pub type_: String,
    pub spec_version: String,
    pub version: u64,
    pub expires: Timestamp,
    pub keys: StrictMap<KeyId, KeyEntry>,
    pub roles: Roles,
}
impl_role_document!(RootMetadata, Role::Root);

impl RootMetadata {
    /// No member rules beyond §4.1's, which [`Root`] checks.
    fn check_members(&self) -> Result<(), String> {
        Ok(())
    }

    /// A new root document (for key tooling and tests).
    pub fn new(version: u64, expires: Timestamp, keys: &[PublicKey], roles: Roles) -> RootMetadata {
        RootMetadata {
            type_: Role::Root.as_str().to_owned(),
            spec_version: SPEC_VERSION.to_owned(),
            version,
            expires,
            keys: keys
                .iter()
                .map(|key| (key.key_id(), KeyEntry::ed25519(key)))
                .collect(),
            roles,
        }
    }
}

/// A root document whose keys and thresholds have been validated (not its signatures:
/// that is [`crate::trust`]'s job, which knows which keys must have signed it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub metadata: RootMetadata,
    pub keys: BTreeMap<KeyId, PublicKey>,
}

impl Root {
    /// Parses and validates: every key id is the SHA-256 of its key, every key is a valid
    /// non-weak Ed25519 key, every role's key ids are listed, unique, and at least as many
    /// as its threshold, which is at least 1.
    pub fn from_payload(payload: &[u8]) -> Result<Root, Error> {
        let metadata: RootMetadata = parse_document(payload)?;
        let mut keys = BTreeMap::new();
        for (listed, entry) in metadata.keys.iter() {
            if entry.keytype != KEYTYPE_ED25519 {
                return Err(Error::InvalidPublicKey {
                    keyid: listed.to_string(),
                    reason: format!("keytype {:?} is not {KEYTYPE_ED25519:?}", entry.keytype),
                });
            }
            let raw =
                parse_lower_hex::<32>(&entry.public).map_err(|reason| Error::InvalidPublicKey {
                    keyid: listed.to_string(),
                    reason,
                })?;
            let computed = KeyId::of_public_key(&raw);
            if &computed != listed {
                return Err(Error::KeyIdMismatch {
                    listed: listed.to_string(),
                    computed: computed.to_string(),
                });
            }
            let key = PublicKey::from_bytes(&raw).map_err(|err| match err {
                PublicKeyError::Weak => Error::WeakPublicKey {
                    keyid: listed.to_string(),
                },
                other => Error::InvalidPublicKey {
                    keyid: listed.to_string(),
                    reason: other.to_string(),
                },
            })?;
            keys.insert(listed.clone(), key);
        }
        for role in [Role::Root, Role::Targets, Role::Director] {
            let role_keys = metadata.roles.get(role);
            let distinct: BTreeSet<&KeyId> = role_keys.keyids.iter().collect();
            if distinct.len() != role_keys.keyids.len() {
                return Err(Error::MalformedMetadata {
                    role: Role::Root,
                    reason: format!("role {role} lists a key id twice"),
                });
            }
            if let Some(missing) = role_keys.keyids.iter().find(|id| !keys.contains_key(id)) {
                return Err(Error::MalformedMetadata {
                    role: Role::Root,
                    reason: format!("role {role} names key {missing}, which is not in keys"),
                });
            }
            if role_keys.threshold == 0 || role_keys.threshold as usize > distinct.len() {
                return Err(Error::InvalidThreshold {
                    role,
                    threshold: role_keys.threshold,
                    keys: distinct.len(),
                });
            }
        }
        Ok(Root { metadata, keys })
    }

    pub fn version(&self) -> u64 {
        self.metadata.version
    }

    pub fn expires(&self) -> Timestamp {
        self.metadata.expires
    }

    pub fn role_keys(&self, role: Role) -> &RoleKeys {
        self.metadata.roles.get(role)
    }
}
