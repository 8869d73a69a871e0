//! Metadata verification as the agent runs it: load the trusted state, verify the
//! update with `ota-core`, and persist the new state only when asked to (the run-time
//! agent persists once the update is accepted; the offline CLI only with `--persist`).

use crate::trust_store::{FileTrustStore, TrustStoreError};
use ota_core::time::Timestamp;
use ota_core::trust::{MetadataUpdate, VehicleIdentity, VerifiedUpdate};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] TrustStoreError),
    #[error("metadata rejected ({kind}): {0}", kind = .0.kind())]
    Rejected(#[from] ota_core::Error),
}

/// Whether an accepted update's state is written back to the trust store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    Yes,
    No,
}

#[derive(Debug, Clone)]
pub struct Verifier {
    store: FileTrustStore,
    vehicle: Option<VehicleIdentity>,
}

impl Verifier {
    pub fn new(store: FileTrustStore, vehicle: Option<VehicleIdentity>) -> Self {
        Verifier { store, vehicle }
    }

    /// Verifies `update` against the stored trusted state at time `now`. On rejection
    /// nothing is written: the store is byte-for-byte what it was.
    pub fn verify(
        &self,
        update: &MetadataUpdate,
        now: Timestamp,
        persist: Persist,
    ) -> Result<VerifiedUpdate, VerifyError> {
        let state = self.store.load()?;
        let verified = state.verify_update(update, self.vehicle.as_ref(), now)?;
        if persist == Persist::Yes {
            self.store.save(&verified.state, &update.roots)?;
        }
        Ok(verified)
    }
}
