//! Directives as the run-time agent verifies them: the director envelope from MQTT, with
//! the targets and root chain it needs fetched over HTTP, checked by `ota-core` against
//! the trust store with the agent's own vehicle identity, and turned into the state
//! machine's [`Target`] for this agent's ECU.
//!
//! Every directive probes for root N+1 (one small request, usually a 404). Targets are
//! cached between directives and fetched again only when a new root arrived or a
//! directive does not verify with the cached ones (a new release), and the directive is
//! then verified once more. A directive that still does not verify is
//! refused with a typed error and changes nothing.

use crate::machine::{DeltaSource, Target};
use crate::trust_store::{FileTrustStore, TrustStoreError};
use crate::verifier::{Persist, Verifier, VerifyError};
use ota_core::metadata::Role;
use ota_core::protocol::TrustedVersions;
use ota_core::time::Timestamp;
use ota_core::trust::{MetadataUpdate, TrustedState, VehicleIdentity};
use std::future::Future;

/// Most bytes read for one metadata document (PROTOCOL.md's envelope cap).
pub const MAX_METADATA_BYTES: u64 = 1 << 20;
/// Most root versions fetched in one refresh (PROTOCOL.md's per-update cap).
pub const MAX_ROOTS_PER_REFRESH: usize = 64;

/// Where targets and root metadata come from (the server's vehicle routes).
pub trait MetadataSource: Send + Sync {
    /// The newest targets envelope.
    fn targets(&self) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
    /// Root version `version`, or `None` when there is no such version (yet).
    fn root(&self, version: u64) -> impl Future<Output = Result<Option<Vec<u8>>, String>> + Send;
}

/// Why a directive was refused.
#[derive(Debug, thiserror::Error)]
pub enum DirectiveError {
    #[error("directive refused: {0}")]
    Verify(#[from] VerifyError),
    #[error("fetching {what} metadata: {reason}")]
    Fetch { what: &'static str, reason: String },
}

impl DirectiveError {
    /// The rejection kind for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            DirectiveError::Verify(VerifyError::Rejected(e)) => e.kind(),
            DirectiveError::Verify(VerifyError::Store(e)) => e.kind(),
            DirectiveError::Fetch { .. } => "fetch",
        }
    }
}

/// A verified directive, reduced to what this agent acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDirective {
    pub assignment: Option<Target>,
    pub next_poll_seconds: u32,
}

/// Verifies directives for one vehicle and ECU.
#[derive(Debug)]
pub struct DirectiveVerifier {
    store: FileTrustStore,
    identity: VehicleIdentity,
    ecu: String,
    targets: Option<Vec<u8>>,
    /// The versions of the last state this verifier loaded or accepted, so check-ins and
    /// the root probe do not re-verify the stored chain each time.
    trusted: std::sync::Mutex<Option<TrustedVersions>>,
}

impl DirectiveVerifier {
    pub fn new(store: FileTrustStore, identity: VehicleIdentity, ecu: &str) -> Self {
        DirectiveVerifier {
            store,
            identity,
            ecu: ecu.to_owned(),
            targets: None,
            trusted: std::sync::Mutex::new(None),
        }
    }

    /// The verifier of a vehicle with one ECU (`ecu` of `hardware_id`).
    pub fn for_ecu(store: FileTrustStore, vehicle_id: &str, ecu: &str, hardware_id: &str) -> Self {
        let identity = VehicleIdentity {
            vehicle_id: vehicle_id.to_owned(),
            ecus: std::collections::BTreeMap::from([(ecu.to_owned(), hardware_id.to_owned())]),
        };
        DirectiveVerifier::new(store, identity, ecu)
    }

    pub fn store(&self) -> &FileTrustStore {
        &self.store
    }

    /// The metadata versions the vehicle trusts (sent in check-ins).
    pub fn trusted_versions(&self) -> Result<TrustedVersions, TrustStoreError> {
        let mut cached = self.trusted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(versions) = *cached {
            return Ok(versions);
        }
        let versions = trusted_versions(&self.store.load()?);
        *cached = Some(versions);
        Ok(versions)
    }

    /// Verifies `director` (wire bytes); persists the new trusted state on success.
    ///
    /// Every directive first asks for root N+1: a rotation that removed a compromised
    /// director key takes effect at the next directive, not only when the cached targets
    /// happen to fail. When that probe cannot reach the server, the cache is used as before
    /// (directives keep working while only HTTP is down).
    pub async fn verify<S: MetadataSource>(
        &mut self,
        source: &S,
        director: &[u8],
        now: Timestamp,
    ) -> Result<VerifiedDirective, DirectiveError> {
        let probed = self.fetch_new_roots(source).await;
        let new_roots = match &probed {
            Ok(roots) => !roots.is_empty(),
            Err(_) => false,
        };
        if let (false, Some(targets)) = (new_roots, self.targets.clone()) {
            let update = MetadataUpdate {
                roots: Vec::new(),
                targets,
                director: director.to_vec(),
            };
            match self.verify_update(&update, now) {
                Ok(verified) => return Ok(verified),
                Err(err) if !worth_refreshing(&err) => return Err(err),
                Err(_) => {}
            }
        }
        let roots = probed?;
        let targets = source
            .targets()
            .await
            .map_err(|reason| DirectiveError::Fetch {
                what: "targets",
                reason,
            })?;
        let update = MetadataUpdate {
            roots,
            targets: targets.clone(),
            director: director.to_vec(),
        };
        let verified = self.verify_update(&update, now)?;
        self.targets = Some(targets);
        Ok(verified)
    }

    fn verify_update(
        &self,
        update: &MetadataUpdate,
        now: Timestamp,
    ) -> Result<VerifiedDirective, DirectiveError> {
        let verifier = Verifier::new(self.store.clone(), Some(self.identity.clone()));
        let verified = verifier.verify(update, now, Persist::Yes)?;
        *self.trusted.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(trusted_versions(&verified.state));
        let assignment = verified
            .assignments
            .iter()
            .find(|a| a.assignment.ecu == self.ecu)
            .map(|a| {
                let assignment = &a.assignment;
                Target {
                    deployment_id: assignment.deployment_id.clone(),
                    name: assignment.image.name.clone(),
                    version: assignment.image.version.clone(),
                    length: assignment.image.length,
                    sha256: assignment.image.sha256,
                    security_version: a.security_version,
                    image_url: assignment.image.url.clone(),
                    delta: assignment.delta.as_ref().map(|d| DeltaSource {
                        source_sha256: d.source_sha256,
                        source_length: d.source_length,
                        length: d.length,
                        sha256: d.sha256,
                        url: d.url.clone(),
                    }),
                    preconditions: assignment.preconditions.clone().unwrap_or_default(),
                }
            });
        Ok(VerifiedDirective {
            assignment,
            next_poll_seconds: verified.director.next_poll_seconds,
        })
    }

    /// Root versions above the trusted one, walked one at a time until the server has
    /// no next version.
    async fn fetch_new_roots<S: MetadataSource>(
        &self,
        source: &S,
    ) -> Result<Vec<Vec<u8>>, DirectiveError> {
        let mut version = self.trusted_versions().map_err(VerifyError::Store)?.root;
        let mut roots = Vec::new();
        while roots.len() < MAX_ROOTS_PER_REFRESH {
            version += 1;
            match source.root(version).await {
                Ok(Some(bytes)) => roots.push(bytes),
                Ok(None) => break,
                Err(reason) => {
                    return Err(DirectiveError::Fetch {
                        what: "root",
                        reason,
                    })
                }
            }
        }
        Ok(roots)
    }

    /// Raises the `security_version` floor of `hardware_id` after a commit.
    pub fn raise_security_floor(
        &self,
        hardware_id: &str,
        security_version: u64,
    ) -> Result<(), TrustStoreError> {
        let state = self.store.load()?;
        if state.security_floor(hardware_id) >= security_version {
            return Ok(());
        }
        self.store
            .save(&state.with_installed(hardware_id, security_version), &[])
    }
}

pub fn trusted_versions(state: &TrustedState) -> TrustedVersions {
    TrustedVersions {
        root: state.root().version(),
        targets: state.targets_record().map_or(0, |r| r.version),
        director: state.director_record().map_or(0, |r| r.version),
    }
}

/// Whether fresh targets or roots could make a refused directive verify. A director
/// signed wrongly, replayed, expired or for another vehicle stays refused.
fn worth_refreshing(err: &DirectiveError) -> bool {
    use ota_core::Error as E;
    match err {
        DirectiveError::Verify(VerifyError::Rejected(e)) => match e {
            E::Rollback { role, .. } | E::VersionReused { role, .. } => *role != Role::Director,
            E::Expired { role, .. } => *role != Role::Director,
            E::WrongVehicle { .. }
            | E::ClockRollback { .. }
            | E::MalformedEnvelope { .. }
            | E::EnvelopeTooLarge { .. } => false,
            _ => true,
        },
        _ => false,
    }
}
