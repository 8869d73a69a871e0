//! Image names (PROTOCOL.md §4.2): 1–128 bytes of `[A-Za-z0-9._+-]` starting with a
//! letter or digit, in targets and in director assignments; anything else is
//! `malformed_metadata` of the document that carries it.

use crate::fixtures::*;
use ota_core::error::Error;
use ota_core::metadata::{is_valid_image_name, Role, TargetsMetadata, MAX_IMAGE_NAME_LEN};
use ota_core::trust::MetadataUpdate;

const HOSTILE: &[&str] = &[
    "",
    "../../boot/vmlinuz",
    "images/a.img",
    "..",
    ".hidden",
    "-rf",
    "name with space",
    "tab\tname",
    "new\nline",
    "nul\0byte",
    "caf\u{e9}.img",
    "\u{2215}etc\u{2215}passwd",
    "a\\b",
    "semi;colon",
];

fn renamed_update(name: &str) -> MetadataUpdate {
    let repo = Repo::standard();
    let targets = TargetsMetadata::new(1, future(), [(name.to_owned(), target_image())]);
    let mut director = director_doc_for(1, &targets);
    director.assignments[0].image.name = name.to_owned();
    MetadataUpdate {
        roots: vec![],
        targets: repo.targets(&targets),
        director: repo.director(&director),
    }
}

#[test]
fn path_traversal_and_control_characters_in_image_names_are_malformed_targets() {
    let repo = Repo::standard();
    for name in HOSTILE {
        assert!(!is_valid_image_name(name), "{name:?}");
        let result = repo
            .anchor()
            .verify_update(&renamed_update(name), Some(&vehicle()), now());
        assert!(
            matches!(&result, Err(Error::MalformedMetadata { role: Role::Targets, reason }) if reason.contains("image name")),
            "{name:?}: {result:?}"
        );
    }
}

#[test]
fn a_hostile_image_name_only_in_the_director_is_malformed_director() {
    let repo = Repo::standard();
    let mut director = director_doc(1);
    director.assignments[0].image.name = "../../etc/shadow".to_owned();
    let update = MetadataUpdate {
        roots: vec![],
        targets: repo.targets(&targets_doc(1)),
        director: repo.director(&director),
    };
    let result = repo
        .anchor()
        .verify_update(&update, Some(&vehicle()), now());
    assert!(
        matches!(
            result,
            Err(Error::MalformedMetadata {
                role: Role::Director,
                ..
            })
        ),
        "{result:?}"
    );
}

#[test]
fn image_name_length_boundary_is_128_bytes() {
    let repo = Repo::standard();
    let longest = "a".repeat(MAX_IMAGE_NAME_LEN);
    assert!(repo
        .anchor()
        .verify_update(&renamed_update(&longest), Some(&vehicle()), now())
        .is_ok());
    let too_long = "a".repeat(MAX_IMAGE_NAME_LEN + 1);
    assert!(matches!(
        repo.anchor()
            .verify_update(&renamed_update(&too_long), Some(&vehicle()), now()),
        Err(Error::MalformedMetadata { .. })
    ));
    for ok in ["ecu-main-2.0.0.img", "A_b+c-1.2", "0"] {
        assert!(is_valid_image_name(ok), "{ok}");
    }
}
