//! Conformance vectors (PROTOCOL.md §11): the committed `tests/vectors/` are exactly the
//! generator's output, and `ota-agent verify-metadata` gives every case its expected
//! outcome and rejection kind.

use ota_tests::binary;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn committed(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).expect("vectors directory") {
        let entry = entry.unwrap();
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.file_type().unwrap().is_dir() {
            committed(&entry.path(), &format!("{name}/"), out);
        } else {
            out.insert(name, std::fs::read(entry.path()).unwrap());
        }
    }
}

#[test]
fn committed_vectors_are_the_generators_output() {
    let mut files = BTreeMap::new();
    committed(&vectors_dir(), "", &mut files);
    let generated = ota_tests::vectors::generate();
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        generated.keys().collect::<Vec<_>>(),
        "regenerate with `cargo run -p ota-tests --bin gen-vectors`"
    );
    for (path, bytes) in &generated {
        assert!(
            files[path] == *bytes,
            "{path} differs from the generator's output"
        );
    }
}

#[test]
fn every_conformance_vector_gets_its_expected_outcome_from_the_agent() {
    let mut failures = Vec::new();
    let mut cases = 0;
    for entry in std::fs::read_dir(vectors_dir()).unwrap() {
        let dir = entry.unwrap().path();
        let case: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap();
        cases += 1;
        // The agent may write the trust store: run on a copy.
        let work = tempfile::tempdir().unwrap();
        let trust = work.path().join("trust");
        std::fs::create_dir(&trust).unwrap();
        for file in std::fs::read_dir(dir.join(case["trust"].as_str().unwrap())).unwrap() {
            let file = file.unwrap();
            std::fs::copy(file.path(), trust.join(file.file_name())).unwrap();
        }
        let mut command = Command::new(binary("ota-agent"));
        command
            .arg("verify-metadata")
            .arg("--trust")
            .arg(&trust)
            .arg("--targets")
            .arg(dir.join(case["targets"].as_str().unwrap()))
            .arg("--director")
            .arg(dir.join(case["director"].as_str().unwrap()))
            .args(["--now", case["now"].as_str().unwrap()]);
        for root in case["roots"].as_array().unwrap() {
            command.arg("--root").arg(dir.join(root.as_str().unwrap()));
        }
        if let Some(vehicle) = case["vehicle"].as_object() {
            command.args(["--vehicle-id", vehicle["vehicle_id"].as_str().unwrap()]);
            for (ecu, hw) in vehicle["ecus"].as_object().unwrap() {
                command.args(["--ecu", &format!("{ecu}={}", hw.as_str().unwrap())]);
            }
        }
        let output = command.output().expect("ota-agent runs");
        let stdout: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
        let expected = &case["expected"];
        let ok = if expected["accepted"] == true {
            output.status.code() == Some(0) && stdout["accepted"] == true
        } else {
            output.status.code() == Some(1)
                && stdout["accepted"] == false
                && stdout["rejection"]["kind"] == expected["kind"]
        };
        if !ok {
            failures.push(format!(
                "{}: expected {expected}, exit {:?}, stdout {stdout}, stderr {}",
                dir.display(),
                output.status.code(),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    assert!(cases >= 10, "only {cases} vectors found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
