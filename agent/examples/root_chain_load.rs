//! Measures `FileTrustStore::load` over a long stored root chain (a vehicle that accepted
//! many root rotations over its life). Not a test: it prints what it measured.
//!
//! ```sh
//! cargo run --release -p ota-agent --example root_chain_load -- 1000
//! ```

use ota_agent::trust_store::FileTrustStore;
use ota_core::envelope::Envelope;
use ota_core::key::SigningKey;
use ota_core::metadata::{to_payload, Role, RoleKeys, Roles, RootMetadata};
use ota_core::time::Timestamp;
use std::time::Instant;

fn key(version: u64) -> SigningKey {
    let mut seed = [0x5A; 32];
    seed[..8].copy_from_slice(&version.to_le_bytes());
    SigningKey::from_seed(&seed)
}

fn one(key: &SigningKey) -> RoleKeys {
    RoleKeys {
        keyids: vec![key.key_id()],
        threshold: 1,
    }
}

/// Root `version`, with a fresh root key, signed by it and by the previous root key.
fn root(version: u64, expires: Timestamp) -> Vec<u8> {
    let own = key(version);
    let targets = SigningKey::from_seed(&[2; 32]);
    let director = SigningKey::from_seed(&[3; 32]);
    let meta = RootMetadata::new(
        version,
        expires,
        &[
            own.public_key(),
            targets.public_key(),
            director.public_key(),
        ],
        Roles {
            root: one(&own),
            targets: one(&targets),
            director: one(&director),
        },
    );
    let previous = key(version - 1);
    let signers: Vec<&SigningKey> = if version > 1 {
        vec![&previous, &own]
    } else {
        vec![&own]
    };
    Envelope::sign(Role::Root.payload_type(), to_payload(&meta), &signers).to_json_bytes()
}

fn main() -> anyhow::Result<()> {
    let rotations: u64 = match std::env::args().nth(1) {
        Some(text) => text.parse()?,
        None => 1000,
    };
    let runs = 5;
    let expires = Timestamp::parse("2030-01-01T00:00:00Z").map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("roots"))?;
    std::fs::write(dir.path().join("root.json"), root(1, expires))?;
    for version in 2..=rotations + 1 {
        let path = dir.path().join("roots").join(format!("{version}.json"));
        std::fs::write(path, root(version, expires))?;
    }
    let store = FileTrustStore::new(dir.path());
    let mut best = f64::MAX;
    let mut total = 0.0;
    for _ in 0..runs {
        let start = Instant::now();
        let state = store.load()?;
        let elapsed = start.elapsed().as_secs_f64();
        anyhow::ensure!(state.root().version() == rotations + 1, "chain not walked");
        best = best.min(elapsed);
        total += elapsed;
    }
    println!(
        "load of {rotations} stored roots: best {:.1} ms, mean {:.1} ms over {runs} runs ({:.1} µs per root)",
        best * 1e3,
        total / f64::from(runs) * 1e3,
        best * 1e6 / rotations as f64
    );
    Ok(())
}
