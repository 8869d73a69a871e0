//! `targets`: the image repository's list of releasable images.

use super::{impl_role_document, Role, SPEC_VERSION};
use crate::encoding::{Sha256Digest, StrictMap};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// One image, keyed by its unique name in [`TargetsMetadata::targets`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetImage {
    /// The ECU hardware this image is built for.
    pub hardware_id: String,
    /// Human release version, e.g. `"2.4.1"`.
    pub version: String,
    /// Monotonic anti-rollback index: a vehicle never installs a lower one than it has.
    pub security_version: u64,
    pub length: u64,
    pub sha256: Sha256Digest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetsMetadata {
    #[serde(rename = "_type")]
    pub type_: String,
    pub spec_version: String,
    pub version: u64,
    pub expires: Timestamp,
    /// Image name → image.
    pub targets: StrictMap<String, TargetImage>,
}
impl_role_document!(TargetsMetadata, Role::Targets);

impl TargetsMetadata {
    /// Every image name obeys [`super::is_valid_image_name`].
    fn check_members(&self) -> Result<(), String> {
        self.targets
            .0
            .keys()
            .try_for_each(|name| super::check_image_name(name))
    }

    pub fn new(
        version: u64,
        expires: Timestamp,
        targets: impl IntoIterator<Item = (String, TargetImage)>,
    ) -> Self {
        TargetsMetadata {
            type_: Role::Targets.as_str().to_owned(),
            spec_version: SPEC_VERSION.to_owned(),
            version,
            expires,
            targets: targets.into_iter().collect(),
        }
    }
}
