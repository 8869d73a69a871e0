//! Properties over arbitrary input: hostile bytes never panic, and signing then verifying
//! always succeeds while any single-byte change to the payload always fails.

use crate::fixtures::*;
use ota_core::envelope::Envelope;
use ota_core::metadata::{to_payload, Role, Root};
use ota_core::trust::{MetadataUpdate, TrustedState};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_are_refused_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::parse(&bytes);
        let _ = Root::from_payload(&bytes);
        let _ = TrustedState::from_anchor(&bytes);
        let _ = TrustedState::from_persisted(&bytes);
    }

    #[test]
    fn mutated_envelopes_never_verify_unless_unchanged(index in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let repo = Repo::standard();
        let state = repo.anchor();
        let mut director = repo.director(&director_doc(1));
        let at = index.index(director.len());
        director[at] ^= xor;
        let update = MetadataUpdate { director, ..repo.update() };
        // Either the mutation broke the envelope or its signature, or it only touched
        // bytes outside the signed payload (a signature's key id or encoding) in a way
        // that still leaves one valid signature: the payload itself can never change.
        if let Ok(verified) = state.verify_update(&update, Some(&vehicle()), now()) {
            prop_assert_eq!(verified.director, director_doc(1));
        }
    }

    #[test]
    fn any_payload_signed_by_the_threshold_verifies(version in 1u64..1_000_000, poll in any::<u32>()) {
        let repo = Repo::standard();
        let mut doc = director_doc(version);
        doc.next_poll_seconds = poll;
        let envelope = sign(Role::Director, to_payload(&doc), &repo.director_keys());
        let update = MetadataUpdate { director: envelope, ..repo.update() };
        let verified = repo.anchor().verify_update(&update, None, now());
        prop_assert!(verified.is_ok(), "{:?}", verified.err());
    }
}
