//! Properties over hostile input: random bytes, and valid signed documents mutated byte by
//! byte (flips, inserts, deletions, truncations), which get past the first JSON token and
//! reach the parsers' inner checks. Every rejection is a typed `Error`, never a panic,
//! and signing then verifying always succeeds while a changed payload never verifies.

use crate::fixtures::*;
use ota_core::encoding::encode_base64;
use ota_core::envelope::Envelope;
use ota_core::metadata::{
    parse_document, to_payload, DirectorMetadata, Role, Root, TargetsMetadata,
};
use ota_core::trust::{MetadataUpdate, TrustedState};
use proptest::prelude::*;
use proptest::sample::Index;

/// One byte-level edit of a valid document.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    Truncate(Index),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        (any::<Index>(), 1u8..=255).prop_map(|(at, xor)| Mutation::Flip(at, xor)),
        // Inserted bytes favour JSON's own syntax, to make structurally new documents.
        (
            any::<Index>(),
            prop_oneof![
                any::<u8>(),
                prop::sample::select(b"{}[]:,\"0123456789-. ".to_vec())
            ]
        )
            .prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        any::<Index>().prop_map(Mutation::Delete),
        any::<Index>().prop_map(Mutation::Truncate),
    ];
    prop::collection::vec(one, 1..=3)
}

fn mutate(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for mutation in mutations {
        let len = out.len();
        match mutation {
            Mutation::Flip(at, xor) if len > 0 => out[at.index(len)] ^= xor,
            Mutation::Insert(at, byte) => out.insert(at.index(len + 1), *byte),
            Mutation::Delete(at) if len > 0 => {
                out.remove(at.index(len));
            }
            Mutation::Truncate(at) if len > 0 => out.truncate(at.index(len)),
            _ => {}
        }
    }
    out
}

/// The valid documents every case mutates, signed once (signing dominates a case's cost).
struct Signed {
    anchor: Vec<u8>,
    anchor_state: TrustedState,
    root_payload: Vec<u8>,
    update: MetadataUpdate,
    persisted_state: TrustedState,
    persisted: Vec<u8>,
}

fn signed() -> &'static Signed {
    static SIGNED: std::sync::OnceLock<Signed> = std::sync::OnceLock::new();
    SIGNED.get_or_init(|| {
        let repo = Repo::standard();
        let update = repo.update();
        let persisted_state = repo
            .anchor()
            .verify_update(&update, None, now())
            .unwrap()
            .state;
        Signed {
            anchor: repo.root(1),
            anchor_state: repo.anchor(),
            root_payload: to_payload(&repo.root_metadata(1, future())),
            persisted: persisted_state.to_persisted(),
            persisted_state,
            update,
        }
    })
}

/// `payload` wrapped in an envelope that keeps the signatures of `signed`.
fn with_payload(signed: &[u8], payload: Vec<u8>) -> Vec<u8> {
    let mut envelope = Envelope::parse(signed).unwrap();
    envelope.payload = payload;
    envelope.to_json_bytes()
}

/// One edit of a JSON document at the value level: byte flips rarely keep a document
/// well-formed, value edits reach the semantic checks (thresholds, key ids, versions).
#[derive(Debug, Clone)]
enum JsonEdit {
    /// Replace a number (or, when `false`, another value) at this index, in document
    /// order, by a hostile value of the same kind.
    Replace(bool, Index, usize),
    /// Remove the object member or array element at this index.
    Remove(Index),
    /// Duplicate the array element at this index.
    Duplicate(Index),
}

fn json_edits() -> impl Strategy<Value = Vec<JsonEdit>> {
    let one = prop_oneof![
        4 => (any::<bool>(), any::<Index>(), any::<usize>())
            .prop_map(|(number, at, value)| JsonEdit::Replace(number, at, value)),
        1 => any::<Index>().prop_map(JsonEdit::Remove),
        1 => any::<Index>().prop_map(JsonEdit::Duplicate),
    ];
    prop::collection::vec(one, 1..=2)
}

/// Paths (object keys / array positions) to every value of `value`, in document order.
fn paths(value: &serde_json::Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(at.clone());
    let children: Vec<(String, &serde_json::Value)> = match value {
        serde_json::Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => vec![],
    };
    for (key, child) in children {
        at.push(key);
        paths(child, at, out);
        at.pop();
    }
}

fn edit_json(payload: &[u8], edits: &[JsonEdit]) -> Vec<u8> {
    let mut doc: serde_json::Value = serde_json::from_slice(payload).unwrap();
    for edit in edits {
        let mut all = Vec::new();
        paths(&doc, &mut Vec::new(), &mut all);
        let value_at = |path: &Vec<String>| {
            path.iter().fold(&doc, |v, key| match v {
                serde_json::Value::Array(items) => &items[key.parse::<usize>().unwrap()],
                other => &other[key.as_str()],
            })
        };
        let numbers_only = matches!(edit, JsonEdit::Replace(true, ..));
        let leaves: Vec<_> = all
            .iter()
            .filter(|p| !p.is_empty() && (!numbers_only || value_at(p).is_number()))
            .cloned()
            .collect();
        let (JsonEdit::Replace(_, at, _) | JsonEdit::Remove(at) | JsonEdit::Duplicate(at)) = edit;
        let path = at.get(&leaves).clone();
        let (last, parent_path) = path.split_last().unwrap();
        let mut parent = &mut doc;
        for key in parent_path {
            parent = match parent {
                serde_json::Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
                other => &mut other[key.as_str()],
            };
        }
        let first_keyid = all
            .iter()
            .find(|p| p.len() == 2 && p[0] == "keys")
            .map(|p| p[1].clone())
            .unwrap_or_default();
        match (edit, parent) {
            (JsonEdit::Replace(number, _, value), parent) => {
                let numbers = [
                    serde_json::json!(0),
                    serde_json::json!(1),
                    serde_json::json!(2),
                    serde_json::json!(4),
                    serde_json::json!(u64::MAX),
                    serde_json::json!(-1),
                ];
                let others = [
                    serde_json::json!(""),
                    serde_json::json!(first_keyid),
                    serde_json::json!("00"),
                    serde_json::json!([]),
                    serde_json::json!(7),
                ];
                let hostile = if *number {
                    numbers[value % numbers.len()].clone()
                } else {
                    others[value % others.len()].clone()
                };
                match parent {
                    serde_json::Value::Array(items) => {
                        items[last.parse::<usize>().unwrap()] = hostile
                    }
                    other => other[last.as_str()] = hostile,
                }
            }
            (JsonEdit::Remove(_), serde_json::Value::Array(items)) => {
                items.remove(last.parse::<usize>().unwrap());
            }
            (JsonEdit::Remove(_), serde_json::Value::Object(map)) => {
                map.remove(last);
            }
            (JsonEdit::Duplicate(_), serde_json::Value::Array(items)) => {
                let i = last.parse::<usize>().unwrap();
                items.insert(i, items[i].clone());
            }
            _ => {}
        }
    }
    serde_json::to_vec(&doc).unwrap()
}

/// What a caller may rely on for an accepted root: every role's key ids are listed
/// keys, distinct, at least as many as the threshold, which is at least 1.
fn assert_root_sound(root: &Root) -> Result<(), TestCaseError> {
    for role in [Role::Root, Role::Targets, Role::Director] {
        let keys = root.role_keys(role);
        prop_assert!(keys.threshold >= 1);
        prop_assert!(keys.keyids.len() >= keys.threshold as usize);
        let distinct: std::collections::BTreeSet<_> = keys.keyids.iter().collect();
        prop_assert_eq!(distinct.len(), keys.keyids.len());
        for id in &keys.keyids {
            prop_assert!(
                root.keys.contains_key(id),
                "{:?} lists an unknown key",
                role
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_are_refused_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(Envelope::parse(&bytes).is_err());
        prop_assert!(Root::from_payload(&bytes).is_err());
        prop_assert!(TrustedState::from_anchor(&bytes).is_err());
        prop_assert!(TrustedState::from_persisted(&bytes).is_err());
    }

    #[test]
    fn a_mutated_anchor_is_refused_unless_its_signed_root_is_unchanged(mutations in mutations()) {
        let fx = signed();
        let hostile = mutate(&fx.anchor, &mutations);
        let envelope = Envelope::parse(&hostile);
        match TrustedState::from_anchor(&hostile) {
            // Only bytes outside the signed payload may change (whitespace between JSON
            // tokens, a signature beyond the threshold): the trusted root is the same.
            Ok(state) => {
                let parsed = envelope.expect("an accepted anchor is an envelope");
                prop_assert_eq!(&parsed.payload, &fx.root_payload);
                prop_assert_eq!(state.root(), fx.anchor_state.root());
            }
            Err(err) => {
                if let Err(envelope_err) = envelope {
                    prop_assert_eq!(err, envelope_err, "an unreadable envelope is refused as such");
                }
            }
        }
    }

    #[test]
    fn a_mutated_root_payload_under_its_signatures_is_refused(
        mutations in mutations(),
        edits in json_edits(),
        by_value in any::<bool>(),
    ) {
        let fx = signed();
        let changed = if by_value {
            edit_json(&fx.root_payload, &edits)
        } else {
            mutate(&fx.root_payload, &mutations)
        };
        prop_assume!(changed != fx.root_payload);
        // The root document is parsed before its signatures are checked, so this reaches
        // every check of `Root::from_payload`; either it or the signatures refuse.
        let result = TrustedState::from_anchor(&with_payload(&fx.anchor, changed.clone()));
        prop_assert!(result.is_err(), "a changed root payload was trusted: {:?}", String::from_utf8_lossy(&changed));
        if let Ok(root) = Root::from_payload(&changed) {
            assert_root_sound(&root)?;
        }
    }

    #[test]
    fn a_mutated_root_signed_by_its_keys_is_refused_or_sound(mutations in mutations()) {
        // Re-signed: the signatures hold, so only the document's own checks stand between
        // the mutation and trust.
        let repo = Repo::standard();
        let changed = mutate(&signed().root_payload, &mutations);
        let resigned = sign(Role::Root, changed.clone(), &[&repo.root_keys[0], &repo.root_keys[1]]);
        match TrustedState::from_anchor(&resigned) {
            Ok(state) => assert_root_sound(state.root())?,
            Err(err) => prop_assert!(
                Root::from_payload(&changed).is_err() || matches!(err, ota_core::Error::ThresholdNotMet { .. }),
                "a root that parses may only be refused for its signatures: {:?}", err
            ),
        }
    }

    #[test]
    fn an_edited_root_signed_by_its_keys_is_refused_or_sound(edits in json_edits()) {
        let repo = Repo::standard();
        let changed = edit_json(&signed().root_payload, &edits);
        let resigned = sign(Role::Root, changed, &[&repo.root_keys[0], &repo.root_keys[1]]);
        if let Ok(state) = TrustedState::from_anchor(&resigned) {
            assert_root_sound(state.root())?;
            prop_assert!(state.root().version() >= 1);
        }
    }

    #[test]
    fn mutated_targets_and_director_payloads_are_refused(mutations in mutations(), director in any::<bool>()) {
        let fx = signed();
        let mut update = fx.update.clone();
        let (payload, envelope) = if director {
            (to_payload(&director_doc(1)), &mut update.director)
        } else {
            (to_payload(&targets_doc(1)), &mut update.targets)
        };
        let changed = mutate(&payload, &mutations);
        prop_assume!(changed != payload);
        // The strict parsers on their own: a typed result, never a panic.
        let _director = parse_document::<DirectorMetadata>(&changed);
        let _targets = parse_document::<TargetsMetadata>(&changed);
        // Under the original signatures: refused for the signatures.
        *envelope = with_payload(envelope, changed);
        let result = fx.anchor_state.verify_update(&update, Some(&vehicle()), now());
        prop_assert!(
            matches!(result, Err(ota_core::Error::ThresholdNotMet { .. })),
            "expected a signature refusal, got {:?}", result.map(|_| "accepted")
        );
    }

    #[test]
    fn a_mutated_trusted_state_file_is_refused_or_keeps_its_anchor(mutations in mutations(), in_root in any::<bool>()) {
        let fx = signed();
        let hostile = if in_root {
            // Inside the base64 of the stored root envelope.
            let root_b64 = encode_base64(fx.persisted_state.root_envelope());
            let text = String::from_utf8(fx.persisted.clone()).unwrap();
            let start = text.find(&root_b64).unwrap();
            [
                &fx.persisted[..start],
                &mutate(root_b64.as_bytes(), &mutations)[..],
                &fx.persisted[start + root_b64.len()..],
            ]
            .concat()
        } else {
            mutate(&fx.persisted, &mutations)
        };
        // The root inside is re-checked as an anchor: a corrupted file may change the
        // recorded versions, never the root the vehicle trusts.
        if let Ok(read) = TrustedState::from_persisted(&hostile) {
            prop_assert_eq!(read.root(), fx.persisted_state.root());
        }
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
