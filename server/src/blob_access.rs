//! Which blobs a vehicle may download (pure): those its current or recent directives
//! name (PROTOCOL.md §10). The director names, per assigned ECU, the release's image
//! and a delta to it from the image the ECU runs; when a rollout is rolled back, the
//! image the deployment replaced and a delta back to it. This module recomputes that
//! set from the vehicle's deployments instead of recording every directive, so a
//! check-in costs no extra write: the server answers a download with one indexed read
//! of the vehicle's deployments (and one of the delta table by the blob's digest).

use crate::director::DeploymentStatus;
use ota_core::encoding::Sha256Digest;

/// How long after a deployment finished its blobs stay downloadable by its vehicle
/// (a download under way when the deployment was cancelled or failed, a retry).
pub const RECENT_MS: i64 = 24 * 3600 * 1000;

/// One deployment of the vehicle, with what the director names for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentBlobs {
    pub status: DeploymentStatus,
    pub updated_ms: i64,
    /// The deployment's rollout is rolled back: the vehicle is sent back to `from`.
    pub rolled_back: bool,
    /// The release's image for the ECU's hardware id.
    pub target: Sha256Digest,
    /// The image the deployment replaced (as the ECU reported it when assigned).
    pub from: Option<Sha256Digest>,
    /// What the ECU runs, as its last check-in reported.
    pub installed: Option<Sha256Digest>,
}

/// What kind of blob a vehicle may fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedBlob {
    Image,
    Delta,
}

impl NamedBlob {
    pub fn as_str(self) -> &'static str {
        match self {
            NamedBlob::Image => "image",
            NamedBlob::Delta => "delta",
        }
    }
}

impl DeploymentBlobs {
    /// A rolled-back rollout still sends back the vehicles it installed or committed
    /// (`engine::assign::rollback_candidates`), however long ago.
    fn sends_back(&self) -> bool {
        self.rolled_back
            && matches!(
                self.status,
                DeploymentStatus::Installed | DeploymentStatus::Committed
            )
    }

    /// Still directed (unfinished, or being sent back), or finished within [`RECENT_MS`].
    pub fn is_current_or_recent(&self, now_ms: i64) -> bool {
        !self.status.is_terminal()
            || self.sends_back()
            || self.updated_ms >= now_ms.saturating_sub(RECENT_MS)
    }

    fn images(&self) -> impl Iterator<Item = Sha256Digest> + '_ {
        std::iter::once(self.target).chain(self.from.filter(|_| self.rolled_back))
    }

    /// (source, target) of every delta the director may name for the deployment.
    fn delta_pairs(&self) -> Vec<(Sha256Digest, Sha256Digest)> {
        let sources = [self.from, self.installed];
        let mut pairs: Vec<_> = sources
            .iter()
            .flatten()
            .map(|source| (*source, self.target))
            .collect();
        if let (true, Some(from)) = (self.rolled_back, self.from) {
            pairs.extend(
                [Some(self.target), self.installed]
                    .iter()
                    .flatten()
                    .map(|source| (*source, from)),
            );
        }
        pairs
    }
}

/// Whether `sha256` is a blob the vehicle's current or recent directives name, and of
/// which kind. `deltas` are the (source, target) pairs of the built deltas whose blob is
/// `sha256` (empty when it is no delta).
pub fn named_blob(
    deployments: &[DeploymentBlobs],
    sha256: Sha256Digest,
    deltas: &[(Sha256Digest, Sha256Digest)],
    now_ms: i64,
) -> Option<NamedBlob> {
    let live: Vec<&DeploymentBlobs> = deployments
        .iter()
        .filter(|d| d.is_current_or_recent(now_ms))
        .collect();
    if live.iter().any(|d| d.images().any(|i| i == sha256)) {
        return Some(NamedBlob::Image);
    }
    live.iter()
        .any(|d| d.delta_pairs().iter().any(|pair| deltas.contains(pair)))
        .then_some(NamedBlob::Delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn sha(n: u8) -> Sha256Digest {
        Sha256Digest([n; 32])
    }

    fn deployment(status: DeploymentStatus) -> DeploymentBlobs {
        DeploymentBlobs {
            status,
            updated_ms: NOW - RECENT_MS - 1,
            rolled_back: false,
            target: sha(2),
            from: Some(sha(1)),
            installed: Some(sha(1)),
        }
    }

    #[test]
    fn named_blob_table() {
        use DeploymentStatus::*;
        let rolled_back = DeploymentBlobs {
            rolled_back: true,
            installed: Some(sha(2)),
            ..deployment(Committed)
        };
        let recent = DeploymentBlobs {
            updated_ms: NOW - RECENT_MS,
            ..deployment(Failed)
        };
        let none: &[(Sha256Digest, Sha256Digest)] = &[];
        // (deployments, blob, the blob's delta pairs, expected)
        type Case = (Vec<DeploymentBlobs>, u8, Vec<(u8, u8)>, Option<NamedBlob>);
        let cases: Vec<Case> = vec![
            (
                vec![deployment(Assigned)],
                2,
                vec![],
                Some(NamedBlob::Image),
            ),
            (
                vec![deployment(Downloading)],
                9,
                vec![(1, 2)],
                Some(NamedBlob::Delta),
            ),
            (
                vec![deployment(Installed)],
                9,
                vec![(1, 2)],
                Some(NamedBlob::Delta),
            ),
            // Another vehicle's delta to the same target (from another source).
            (vec![deployment(Assigned)], 9, vec![(5, 2)], None),
            // A delta between unrelated images.
            (vec![deployment(Assigned)], 9, vec![(1, 7)], None),
            // The replaced image is not named unless the rollout is rolled back.
            (vec![deployment(Assigned)], 1, vec![], None),
            (vec![rolled_back.clone()], 1, vec![], Some(NamedBlob::Image)),
            (
                vec![rolled_back.clone()],
                9,
                vec![(2, 1)],
                Some(NamedBlob::Delta),
            ),
            // Finished long ago: nothing; finished within the retention: still named.
            (vec![deployment(Committed)], 2, vec![], None),
            (vec![deployment(Cancelled)], 9, vec![(1, 2)], None),
            (vec![recent], 2, vec![], Some(NamedBlob::Image)),
            (vec![], 2, vec![], None),
        ];
        for (i, (deployments, blob, pairs, expected)) in cases.into_iter().enumerate() {
            let pairs: Vec<_> = pairs.iter().map(|(s, t)| (sha(*s), sha(*t))).collect();
            assert_eq!(
                named_blob(&deployments, sha(blob), &pairs, NOW),
                expected,
                "case {i}"
            );
        }
        assert_eq!(named_blob(&[deployment(Assigned)], sha(3), none, NOW), None);
    }
}
