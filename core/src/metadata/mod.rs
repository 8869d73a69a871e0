//! The role documents, as carried in envelope payloads.
//!
//! Every document has `_type` (its role), `spec_version` (`"1"`), `version` (an integer
//! ≥ 1 that only grows) and `expires` (see [`crate::time`]). Parsing is strict: exact
//! JSON, no unknown fields, no duplicate keys.

mod director;
mod root;
mod targets;

pub use director::{
    Assignment, DeltaRef, DirectorMetadata, ImageRef, Preconditions, TargetsBinding,
};
pub use root::{RoleKeys, Roles, Root, RootMetadata};
pub use targets::{TargetImage, TargetsMetadata};

use crate::encoding::from_slice_exact;
use crate::error::Error;
use crate::time::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The only `spec_version` this implementation reads and writes.
pub const SPEC_VERSION: &str = "1";

/// The three signing roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Root,
    Targets,
    Director,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Targets => "targets",
            Role::Director => "director",
        }
    }

    pub fn payload_type(self) -> &'static str {
        match self {
            Role::Root => crate::envelope::PAYLOAD_TYPE_ROOT,
            Role::Targets => crate::envelope::PAYLOAD_TYPE_TARGETS,
            Role::Director => crate::envelope::PAYLOAD_TYPE_DIRECTOR,
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "root" => Some(Role::Root),
            "targets" => Some(Role::Targets),
            "director" => Some(Role::Director),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What every role document has in common, for the checks shared by all of them.
pub trait RoleDocument: DeserializeOwned {
    const ROLE: Role;
    fn type_field(&self) -> &str;
    fn spec_version(&self) -> &str;
    fn version(&self) -> u64;
    fn expires(&self) -> Timestamp;
    /// Role-specific member rules beyond the types (image names, §4.2).
    fn check_members(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Longest image name, in bytes.
pub const MAX_IMAGE_NAME_LEN: usize = 128;

/// Image names (PROTOCOL.md §4.2): 1–128 bytes of `[A-Za-z0-9._+-]`, starting with a
/// letter or digit. Agents use them near file paths and in logs: no `/`, no `..` path,
/// no hidden-file name, no spaces, controls or non-ASCII look-alikes.
pub fn is_valid_image_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_IMAGE_NAME_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
}

pub(crate) fn check_image_name(name: &str) -> Result<(), String> {
    if is_valid_image_name(name) {
        Ok(())
    } else {
        Err(format!(
            "image name {name:?} is not 1-{MAX_IMAGE_NAME_LEN} bytes of [A-Za-z0-9._+-] starting with a letter or digit"
        ))
    }
}

/// Parses a role document from exact payload bytes and checks the common fields.
pub fn parse_document<T: RoleDocument>(payload: &[u8]) -> Result<T, Error> {
    let malformed = |reason: String| Error::MalformedMetadata {
        role: T::ROLE,
        reason,
    };
    let doc: T = from_slice_exact(payload).map_err(malformed)?;
    if doc.type_field() != T::ROLE.as_str() {
        return Err(malformed(format!(
            "_type is {:?}, expected {:?}",
            doc.type_field(),
            T::ROLE.as_str()
        )));
    }
    if doc.spec_version() != SPEC_VERSION {
        return Err(malformed(format!(
            "spec_version is {:?}, expected {SPEC_VERSION:?}",
            doc.spec_version()
        )));
    }
    if doc.version() == 0 {
        return Err(malformed("version must be at least 1".to_owned()));
    }
    doc.check_members().map_err(malformed)?;
    Ok(doc)
}

/// Serializes a role document to the compact JSON bytes that get signed.
pub fn to_payload<T: Serialize>(doc: &T) -> Vec<u8> {
    // Our document types contain only strings, integers, maps and vectors: infallible.
    serde_json::to_vec(doc).unwrap_or_default()
}

macro_rules! impl_role_document {
    ($ty:ty, $role:expr) => {
        impl $crate::metadata::RoleDocument for $ty {
            const ROLE: $crate::metadata::Role = $role;
            fn type_field(&self) -> &str {
                &self.type_
            }
            fn spec_version(&self) -> &str {
                &self.spec_version
            }
            fn version(&self) -> u64 {
                self.version
            }
            fn expires(&self) -> $crate::time::Timestamp {
                self.expires
            }
            fn check_members(&self) -> Result<(), String> {
                self.check_members()
            }
        }
    };
}
pub(crate) use impl_role_document;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{PAYLOAD_TYPE_DIRECTOR, PAYLOAD_TYPE_ROOT, PAYLOAD_TYPE_TARGETS};

    #[test]
    fn each_role_parses_from_and_displays_as_its_name_with_its_own_payload_type() {
        for (role, name, payload_type) in [
            (Role::Root, "root", PAYLOAD_TYPE_ROOT),
            (Role::Targets, "targets", PAYLOAD_TYPE_TARGETS),
            (Role::Director, "director", PAYLOAD_TYPE_DIRECTOR),
        ] {
            assert_eq!(Role::parse(name), Some(role), "{name}");
            assert_eq!(role.to_string(), name);
            assert_eq!(role.as_str(), name);
            assert_eq!(role.payload_type(), payload_type, "{role}");
        }
        for other in ["", "Root", "snapshot", "timestamp"] {
            assert_eq!(Role::parse(other), None, "{other:?} is no role");
        }
    }
}
