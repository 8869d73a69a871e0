//! The run-time directive path (`ota_agent::directive::DirectiveVerifier`) against a real
//! file trust store and an in-memory metadata server: what an accepted directive gives
//! the state machine, when targets and roots are (re)fetched, and for every attack the
//! typed rejection with the trust store directory byte-for-byte unchanged.

use ota_agent::directive::{DirectiveError, DirectiveVerifier, MetadataSource, VerifiedDirective};
use ota_agent::machine::{DeltaSource, Target};
use ota_agent::trust_store::FileTrustStore;
use ota_agent::verifier::VerifyError;
use ota_core::encoding::Sha256Digest;
use ota_core::envelope::Envelope;
use ota_core::key::SigningKey;
use ota_core::metadata::{
    to_payload, Assignment, DeltaRef, DirectorMetadata, ImageRef, Preconditions, Role, RoleKeys,
    Roles, RootMetadata, TargetImage, TargetsBinding, TargetsMetadata,
};
use ota_core::protocol::TrustedVersions;
use ota_core::time::Timestamp;
use ota_core::trust::VehicleIdentity;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

// ---------------------------------------------------------------------------------------
// Fixture: keys, documents, the vehicle.

const VEHICLE: &str = "veh-0001";
const ECU: &str = "main";
const HW: &str = "ecu-main-v2";
const TCU: &str = "tcu";
const TCU_HW: &str = "tcu-v1";

/// Release 1 (targets v1): the main ECU's 2.0.0, the TCU's 1.1.0, and a build for the
/// next hardware revision of the main ECU.
const IMAGE_A: &str = "main-2.0.0.img";
const IMAGE_TCU: &str = "tcu-1.1.0.img";
const IMAGE_REV3: &str = "main-rev3-2.0.0.img";
/// Release 2 (targets v2, cumulative): adds the main ECU's 2.1.0.
const IMAGE_B: &str = "main-2.1.0.img";

fn key(seed: u8) -> SigningKey {
    SigningKey::from_seed(&[seed; 32])
}

fn ts(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

fn now() -> Timestamp {
    ts("2026-06-01T00:00:00Z")
}

fn future() -> Timestamp {
    ts("2027-06-01T00:00:00Z")
}

fn past() -> Timestamp {
    ts("2026-05-01T00:00:00Z")
}

/// Key seeds of one root version (each role 1-of-1).
#[derive(Debug, Clone, Copy)]
struct Keys {
    root: u8,
    targets: u8,
    director: u8,
}

/// The provisioned root v1.
const KEYS_V1: Keys = Keys {
    root: 1,
    targets: 11,
    director: 21,
};
/// Root v2: a new root key and a new director key; the targets key stays.
const KEYS_V2: Keys = Keys {
    root: 2,
    targets: 11,
    director: 22,
};

fn one(seed: u8) -> RoleKeys {
    RoleKeys {
        keyids: vec![key(seed).key_id()],
        threshold: 1,
    }
}

fn sign(role: Role, payload: Vec<u8>, signers: &[u8]) -> Vec<u8> {
    let keys: Vec<SigningKey> = signers.iter().map(|s| key(*s)).collect();
    let keys: Vec<&SigningKey> = keys.iter().collect();
    Envelope::sign(role.payload_type(), payload, &keys).to_json_bytes()
}

/// Root `version` with the role keys of `keys`, signed by `signers`.
fn root(version: u64, keys: Keys, signers: &[u8]) -> Vec<u8> {
    let mut public = vec![key(keys.root).public_key()];
    for seed in [keys.targets, keys.director] {
        if !public.contains(&key(seed).public_key()) {
            public.push(key(seed).public_key());
        }
    }
    let meta = RootMetadata::new(
        version,
        future(),
        &public,
        Roles {
            root: one(keys.root),
            targets: one(keys.targets),
            director: one(keys.director),
        },
    );
    sign(Role::Root, to_payload(&meta), signers)
}

fn image_bytes(name: &str) -> Vec<u8> {
    format!("the firmware image {name}").into_bytes()
}

fn image(name: &str) -> TargetImage {
    let (hardware_id, version, security_version) = match name {
        IMAGE_A => (HW, "2.0.0", 5),
        IMAGE_B => (HW, "2.1.0", 6),
        IMAGE_TCU => (TCU_HW, "1.1.0", 1),
        IMAGE_REV3 => ("ecu-main-v3", "2.0.0", 5),
        other => panic!("no fixture image {other}"),
    };
    let bytes = image_bytes(name);
    TargetImage {
        hardware_id: hardware_id.to_owned(),
        version: version.to_owned(),
        security_version,
        length: bytes.len() as u64,
        sha256: Sha256Digest::of(&bytes),
    }
}

/// Targets `version` (cumulative: release 2 lists everything release 1 did).
fn targets(version: u64) -> Vec<u8> {
    let mut names = vec![IMAGE_A, IMAGE_TCU, IMAGE_REV3];
    if version >= 2 {
        names.push(IMAGE_B);
    }
    let doc = TargetsMetadata::new(
        version,
        future(),
        names.into_iter().map(|n| (n.to_owned(), image(n))),
    );
    sign(Role::Targets, to_payload(&doc), &[KEYS_V1.targets])
}

/// A full-image assignment of `name` to `ecu`, exactly as targets lists it.
fn assign(ecu: &str, name: &str, deployment: &str) -> Assignment {
    let target = image(name);
    Assignment {
        ecu: ecu.to_owned(),
        hardware_id: target.hardware_id,
        deployment_id: deployment.to_owned(),
        image: ImageRef {
            name: name.to_owned(),
            version: target.version,
            length: target.length,
            sha256: target.sha256,
            url: format!("/v1/blobs/{}", target.sha256),
        },
        delta: None,
        preconditions: None,
    }
}

fn delta_ref() -> DeltaRef {
    DeltaRef {
        source_sha256: Sha256Digest::of(b"the image the main ECU runs now"),
        source_length: 4096,
        length: 512,
        sha256: Sha256Digest::of(b"the delta"),
        url: format!("/v1/blobs/{}", Sha256Digest::of(b"the delta")),
    }
}

/// Director `version` built against `targets(1)`.
fn directive_doc(version: u64, assignments: Vec<Assignment>) -> DirectorMetadata {
    directive_doc_for(1, version, assignments)
}

/// Director `version` built against `targets(targets_version)`.
fn directive_doc_for(
    targets_version: u64,
    version: u64,
    assignments: Vec<Assignment>,
) -> DirectorMetadata {
    let binding = TargetsBinding::of_envelope(&targets(targets_version)).unwrap();
    DirectorMetadata::new(version, future(), VEHICLE, binding, assignments, 300)
}

/// Signed by the provisioned director key.
fn director(doc: &DirectorMetadata) -> Vec<u8> {
    director_signed_by(doc, KEYS_V1.director)
}

fn director_signed_by(doc: &DirectorMetadata, seed: u8) -> Vec<u8> {
    sign(Role::Director, to_payload(doc), &[seed])
}

/// Director `version` assigning image A to the main ECU (full image).
fn simple_directive(version: u64) -> Vec<u8> {
    director(&directive_doc(
        version,
        vec![assign(ECU, IMAGE_A, &format!("dep-{version}"))],
    ))
}

fn identity() -> VehicleIdentity {
    VehicleIdentity {
        vehicle_id: VEHICLE.to_owned(),
        ecus: [
            (ECU.to_owned(), HW.to_owned()),
            (TCU.to_owned(), TCU_HW.to_owned()),
        ]
        .into(),
    }
}

/// What the state machine must get for a full-image assignment of `name`.
fn expected_target(name: &str, deployment: &str) -> Target {
    let target = image(name);
    Target {
        deployment_id: deployment.to_owned(),
        name: name.to_owned(),
        version: target.version,
        length: target.length,
        sha256: target.sha256,
        security_version: target.security_version,
        image_url: format!("/v1/blobs/{}", target.sha256),
        delta: None,
        preconditions: Preconditions::default(),
    }
}

// ---------------------------------------------------------------------------------------
// The in-memory metadata server.

/// Serves the newest targets and the published root versions, counting every fetch.
#[derive(Debug)]
struct MemorySource {
    targets: Mutex<Vec<u8>>,
    roots: Mutex<BTreeMap<u64, Vec<u8>>>,
    targets_fetches: AtomicUsize,
    root_fetches: Mutex<BTreeMap<u64, usize>>,
    /// When set, every request fails (the server is unreachable).
    down: std::sync::atomic::AtomicBool,
}

impl MemorySource {
    fn new(targets: Vec<u8>) -> Self {
        MemorySource {
            targets: Mutex::new(targets),
            roots: Mutex::new(BTreeMap::new()),
            targets_fetches: AtomicUsize::new(0),
            root_fetches: Mutex::new(BTreeMap::new()),
            down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn publish_targets(&self, bytes: Vec<u8>) {
        *self.targets.lock().unwrap() = bytes;
    }

    fn publish_root(&self, version: u64, bytes: Vec<u8>) {
        self.roots.lock().unwrap().insert(version, bytes);
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn unreachable(&self) -> Result<(), String> {
        if self.down.load(Ordering::SeqCst) {
            return Err("connection refused".to_owned());
        }
        Ok(())
    }

    fn targets_fetches(&self) -> usize {
        self.targets_fetches.load(Ordering::SeqCst)
    }

    /// Root version → how often it was requested.
    fn root_fetches(&self) -> BTreeMap<u64, usize> {
        self.root_fetches.lock().unwrap().clone()
    }
}

impl MetadataSource for MemorySource {
    async fn targets(&self) -> Result<Vec<u8>, String> {
        self.targets_fetches.fetch_add(1, Ordering::SeqCst);
        self.unreachable()?;
        Ok(self.targets.lock().unwrap().clone())
    }

    async fn root(&self, version: u64) -> Result<Option<Vec<u8>>, String> {
        *self
            .root_fetches
            .lock()
            .unwrap()
            .entry(version)
            .or_default() += 1;
        self.unreachable()?;
        Ok(self.roots.lock().unwrap().get(&version).cloned())
    }
}

// ---------------------------------------------------------------------------------------
// A provisioned vehicle.

/// Every file under `dir` (recursively), path → bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &mut out);
    out
}

#[derive(Debug)]
struct Vehicle {
    _tmp: tempfile::TempDir,
    store_dir: PathBuf,
    verifier: DirectiveVerifier,
    server: MemorySource,
}

impl Vehicle {
    /// A vehicle provisioned with root v1; the server has targets v1 and no newer root.
    fn provision() -> Vehicle {
        let tmp = tempfile::tempdir().unwrap();
        let store_dir = tmp.path().join("trust");
        std::fs::create_dir_all(&store_dir).unwrap();
        std::fs::write(
            store_dir.join("root.json"),
            root(1, KEYS_V1, &[KEYS_V1.root]),
        )
        .unwrap();
        let verifier = DirectiveVerifier::new(FileTrustStore::new(&store_dir), identity(), ECU);
        Vehicle {
            _tmp: tmp,
            store_dir,
            verifier,
            server: MemorySource::new(targets(1)),
        }
    }

    /// The same store after an agent restart (an empty targets cache).
    fn restart(&mut self) {
        self.verifier =
            DirectiveVerifier::new(FileTrustStore::new(&self.store_dir), identity(), ECU);
    }

    async fn send(&mut self, director: &[u8]) -> Result<VerifiedDirective, DirectiveError> {
        self.verifier.verify(&self.server, director, now()).await
    }

    async fn accept(&mut self, director: &[u8]) -> VerifiedDirective {
        match self.send(director).await {
            Ok(verified) => verified,
            Err(err) => panic!("directive refused ({}): {err}", err.kind()),
        }
    }

    /// Sends `director`, requires the typed rejection `kind` and an unchanged store.
    async fn refuse(&mut self, director: &[u8], kind: &str) {
        let before = self.snapshot();
        let result = self.send(director).await;
        match &result {
            Err(DirectiveError::Verify(VerifyError::Rejected(e))) => {
                assert_eq!(e.kind(), kind, "wrong rejection: {e}")
            }
            other => panic!("expected a `{kind}` rejection, got {other:?}"),
        }
        assert_eq!(
            self.snapshot(),
            before,
            "a refused directive ({kind}) changed the trust store"
        );
    }

    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        snapshot(&self.store_dir)
    }

    fn trusted(&self) -> TrustedVersions {
        self.verifier.trusted_versions().unwrap()
    }

    /// Fetch counters: (targets fetches, the root versions asked for). Every directive
    /// asks for root N+1; targets are fetched only on a refresh.
    fn fetches(&self) -> (usize, std::collections::BTreeSet<u64>) {
        (
            self.server.targets_fetches(),
            self.server.root_fetches().into_keys().collect(),
        )
    }
}

/// A vehicle that already accepted director v1 (image A): the targets are cached.
async fn vehicle_with_cache() -> Vehicle {
    let mut vehicle = Vehicle::provision();
    vehicle.accept(&simple_directive(1)).await;
    assert_eq!(vehicle.fetches(), (1, [2].into()));
    vehicle
}

// ---------------------------------------------------------------------------------------
// Accepted directives.

#[tokio::test]
async fn accepted_directive_gives_this_ecus_target_and_the_next_one_verifies_from_the_cache() {
    let mut vehicle = Vehicle::provision();
    assert!(!vehicle.store_dir.join("state.json").exists());

    // Director v1 assigns the main ECU image A by delta, with preconditions, and the TCU
    // its own image; this agent gets only its ECU's assignment.
    let preconditions = Preconditions {
        parked: true,
        min_state_of_charge_percent: Some(30),
        network: Some("wifi".to_owned()),
    };
    let mut main = assign(ECU, IMAGE_A, "dep-1");
    main.delta = Some(delta_ref());
    main.preconditions = Some(preconditions.clone());
    let doc = directive_doc(1, vec![assign(TCU, IMAGE_TCU, "dep-1"), main]);
    let verified = vehicle.accept(&director(&doc)).await;

    let delta = delta_ref();
    let mut expected = expected_target(IMAGE_A, "dep-1");
    expected.delta = Some(DeltaSource {
        source_sha256: delta.source_sha256,
        source_length: delta.source_length,
        length: delta.length,
        sha256: delta.sha256,
        url: delta.url,
    });
    expected.preconditions = preconditions;
    assert_eq!(
        verified,
        VerifiedDirective {
            assignment: Some(expected),
            next_poll_seconds: 300,
        }
    );
    assert_eq!(verified.assignment.as_ref().unwrap().security_version, 5);
    // The first directive fetched targets once and asked for root v2 (none yet).
    assert_eq!(vehicle.fetches(), (1, [2].into()));
    assert_eq!(
        vehicle.trusted(),
        TrustedVersions {
            root: 1,
            targets: 1,
            director: 1
        }
    );

    // Director v2: the full image only (no delta offered → none given), from the cache.
    let verified = vehicle.accept(&simple_directive(2)).await;
    assert_eq!(verified.assignment, Some(expected_target(IMAGE_A, "dep-2")));
    assert_eq!(verified.assignment.unwrap().delta, None);
    assert_eq!(vehicle.fetches(), (1, [2].into()), "no refresh");
    assert_eq!(vehicle.trusted().director, 2);

    // Director v3 assigns only the TCU: nothing for this agent's ECU; still cached.
    let doc = directive_doc(3, vec![assign(TCU, IMAGE_TCU, "dep-3")]);
    let verified = vehicle.accept(&director(&doc)).await;
    assert_eq!(verified.assignment, None);
    assert_eq!(vehicle.fetches(), (1, [2].into()));

    // The same directive delivered twice (an MQTT redelivery) is accepted again.
    vehicle.accept(&director(&doc)).await;
    assert_eq!(vehicle.trusted().director, 3);
}

#[tokio::test]
async fn a_new_release_refreshes_the_cached_targets() {
    let mut vehicle = vehicle_with_cache().await;
    vehicle.server.publish_targets(targets(2));

    // Image B is only in targets v2: the cached v1 does not verify it, the refresh does.
    let doc = directive_doc_for(2, 2, vec![assign(ECU, IMAGE_B, "dep-2")]);
    let verified = vehicle.accept(&director(&doc)).await;
    let target = verified.assignment.unwrap();
    assert_eq!(target, expected_target(IMAGE_B, "dep-2"));
    assert_eq!(target.security_version, 6);
    assert_eq!(vehicle.fetches(), (2, [2].into()));
    assert_eq!(
        vehicle.trusted(),
        TrustedVersions {
            root: 1,
            targets: 2,
            director: 2
        }
    );

    // Targets v2 is now the cache: the next directive needs no fetch.
    vehicle
        .accept(&director(&directive_doc_for(
            2,
            3,
            vec![assign(ECU, IMAGE_B, "dep-3")],
        )))
        .await;
    assert_eq!(vehicle.fetches(), (2, [2].into()));
}

#[tokio::test]
async fn old_unexpired_targets_served_with_a_fresh_director_are_refused() {
    // The server (or whoever answers for it) keeps serving targets v1, still unexpired,
    // while the fresh director was built against v2: the vehicle refuses the pair
    // (after trying a refresh) and writes nothing.
    let mut vehicle = vehicle_with_cache().await;
    let doc = directive_doc_for(2, 2, vec![assign(ECU, IMAGE_A, "dep-2")]);
    vehicle.refuse(&director(&doc), "targets_mismatch").await;
    assert_eq!(
        vehicle.fetches().0,
        2,
        "the cache mismatch is worth a refresh"
    );
    assert_eq!(vehicle.trusted().director, 1);
}

#[tokio::test]
async fn an_unreachable_server_refuses_only_what_the_cache_cannot_verify() {
    let mut vehicle = Vehicle::provision();
    vehicle.server.set_down(true);
    let before = vehicle.snapshot();
    let err = vehicle.send(&simple_directive(1)).await.unwrap_err();
    assert!(
        matches!(err, DirectiveError::Fetch { what: "root", .. }),
        "{err:?}"
    );
    assert_eq!(err.kind(), "fetch");
    assert_eq!(vehicle.snapshot(), before);

    vehicle.server.set_down(false);
    vehicle.accept(&simple_directive(1)).await;
    vehicle.server.set_down(true);
    // Verifies from the cache: the server is not needed.
    vehicle.accept(&simple_directive(2)).await;
    // Needs a refresh (image B is not in the cached targets): a fetch error, nothing written.
    let before = vehicle.snapshot();
    let doc = directive_doc(3, vec![assign(ECU, IMAGE_B, "dep-3")]);
    let err = vehicle.send(&director(&doc)).await.unwrap_err();
    assert_eq!(err.kind(), "fetch");
    assert_eq!(vehicle.snapshot(), before);
}

// ---------------------------------------------------------------------------------------
// Attacks on the director document.

#[tokio::test]
async fn an_expired_directive_is_refused_without_a_refresh() {
    let mut vehicle = vehicle_with_cache().await;
    let mut doc = directive_doc(2, vec![assign(ECU, IMAGE_A, "dep-2")]);
    doc.expires = past();
    vehicle.refuse(&director(&doc), "expired").await;
    assert_eq!(vehicle.fetches(), (1, [2].into()), "refetched metadata");
    // Expiry is `expires <= now`.
    doc.expires = now();
    vehicle.refuse(&director(&doc), "expired").await;
    assert_eq!(vehicle.fetches(), (1, [2].into()));
}

#[tokio::test]
async fn a_replayed_older_directive_is_a_rollback() {
    let mut vehicle = vehicle_with_cache().await;
    let old = simple_directive(1);
    vehicle.accept(&simple_directive(2)).await;
    vehicle.refuse(&old, "rollback").await;
    assert_eq!(vehicle.fetches(), (1, [2].into()), "refetched metadata");
    assert_eq!(vehicle.trusted().director, 2);
}

#[tokio::test]
async fn the_same_version_with_other_content_is_refused() {
    let mut vehicle = vehicle_with_cache().await;
    let doc = directive_doc(1, vec![assign(ECU, IMAGE_A, "dep-other")]);
    vehicle.refuse(&director(&doc), "version_reused").await;
    assert_eq!(vehicle.fetches(), (1, [2].into()), "refetched metadata");
}

#[tokio::test]
async fn a_directive_for_another_vehicle_is_refused() {
    // With nothing trusted yet (no state.json: it must stay absent)...
    let mut vehicle = Vehicle::provision();
    let mut doc = directive_doc(1, vec![assign(ECU, IMAGE_A, "dep-1")]);
    doc.vehicle_id = "veh-0002".to_owned();
    vehicle.refuse(&director(&doc), "wrong_vehicle").await;
    assert!(!vehicle.store_dir.join("state.json").exists());

    // ...and with a trusted state and cached targets (no refresh then).
    let mut vehicle = vehicle_with_cache().await;
    doc.version = 2;
    vehicle.refuse(&director(&doc), "wrong_vehicle").await;
    assert_eq!(vehicle.fetches(), (1, [2].into()), "refetched metadata");
}

#[tokio::test]
async fn a_directive_for_hardware_or_an_ecu_this_vehicle_does_not_have_is_refused() {
    let mut vehicle = vehicle_with_cache().await;
    // The main ECU is a rev 2; the image (consistent with targets) is for rev 3.
    let doc = directive_doc(2, vec![assign(ECU, IMAGE_REV3, "dep-2")]);
    vehicle.refuse(&director(&doc), "wrong_hardware_id").await;
    // The assignment's hardware id disagrees with the targets entry.
    let mut wrong = assign(ECU, IMAGE_A, "dep-2");
    wrong.hardware_id = TCU_HW.to_owned();
    vehicle
        .refuse(
            &director(&directive_doc(2, vec![wrong])),
            "wrong_hardware_id",
        )
        .await;
    // An ECU the vehicle does not have.
    let doc = directive_doc(2, vec![assign("gateway", IMAGE_A, "dep-2")]);
    vehicle.refuse(&director(&doc), "unknown_ecu").await;
    assert_eq!(vehicle.trusted().director, 1);
}

#[tokio::test]
async fn a_directive_signed_by_a_key_not_authorised_for_director_is_refused() {
    let mut vehicle = vehicle_with_cache().await;
    let doc = directive_doc(2, vec![assign(ECU, IMAGE_A, "dep-2")]);
    // The targets key is in the root, but not a director key.
    vehicle
        .refuse(
            &director_signed_by(&doc, KEYS_V1.targets),
            "threshold_not_met",
        )
        .await;
    // The root key neither.
    vehicle
        .refuse(&director_signed_by(&doc, KEYS_V1.root), "threshold_not_met")
        .await;
    // A key the root does not know.
    vehicle
        .refuse(&director_signed_by(&doc, 99), "threshold_not_met")
        .await;
    // The same document with the right key still verifies.
    vehicle.accept(&director(&doc)).await;
}

#[tokio::test]
async fn an_assignment_that_differs_from_targets_is_refused() {
    let mut vehicle = vehicle_with_cache().await;
    let mut longer = assign(ECU, IMAGE_A, "dep-2");
    longer.image.length += 1;
    vehicle
        .refuse(
            &director(&directive_doc(2, vec![longer])),
            "length_mismatch",
        )
        .await;
    let mut other_hash = assign(ECU, IMAGE_A, "dep-2");
    other_hash.image.sha256 = Sha256Digest::of(b"a different image");
    vehicle
        .refuse(
            &director(&directive_doc(2, vec![other_hash])),
            "hash_mismatch",
        )
        .await;
    let mut other_version = assign(ECU, IMAGE_A, "dep-2");
    other_version.image.version = "2.0.1".to_owned();
    vehicle
        .refuse(
            &director(&directive_doc(2, vec![other_version])),
            "image_version_mismatch",
        )
        .await;
    let mut unknown = assign(ECU, IMAGE_A, "dep-2");
    unknown.image.name = "main-9.9.9.img".to_owned();
    vehicle
        .refuse(
            &director(&directive_doc(2, vec![unknown])),
            "target_not_found",
        )
        .await;
}

#[tokio::test]
async fn an_image_below_the_security_floor_is_refused() {
    let mut vehicle = vehicle_with_cache().await;
    // Raising to (or below) the current floor writes nothing.
    let before = vehicle.snapshot();
    vehicle.verifier.raise_security_floor(HW, 0).unwrap();
    assert_eq!(vehicle.snapshot(), before);

    // Image B (security_version 6) committed: the floor of the main ECU's hardware is 6.
    vehicle.verifier.raise_security_floor(HW, 6).unwrap();
    let state = vehicle.verifier.store().load().unwrap();
    assert_eq!(state.security_floor(HW), 6);
    assert_eq!(state.security_floor(TCU_HW), 0);
    let before = vehicle.snapshot();
    vehicle.verifier.raise_security_floor(HW, 5).unwrap();
    assert_eq!(vehicle.snapshot(), before, "the floor went down");

    // Image A has security_version 5.
    vehicle
        .refuse(&simple_directive(2), "security_version_rollback")
        .await;
    // The TCU's floor is its own.
    let doc = directive_doc(2, vec![assign(TCU, IMAGE_TCU, "dep-2")]);
    vehicle.accept(&director(&doc)).await;
    // At the floor is allowed.
    vehicle.server.publish_targets(targets(2));
    let doc = directive_doc_for(2, 3, vec![assign(ECU, IMAGE_B, "dep-3")]);
    let verified = vehicle.accept(&director(&doc)).await;
    assert_eq!(verified.assignment.unwrap().security_version, 6);
}

// ---------------------------------------------------------------------------------------
// Root rotation.

/// Root v2 with the new root and director keys, cross-signed by the old and new root keys.
fn root_v2() -> Vec<u8> {
    root(2, KEYS_V2, &[KEYS_V1.root, KEYS_V2.root])
}

/// A vehicle that accepted director v1 and then, after the server published root v2,
/// director v2 signed by the new director key.
async fn vehicle_after_rotation() -> Vehicle {
    let mut vehicle = vehicle_with_cache().await;
    vehicle.server.publish_root(2, root_v2());
    let doc = directive_doc(2, vec![assign(ECU, IMAGE_A, "dep-2")]);
    let verified = vehicle
        .accept(&director_signed_by(&doc, KEYS_V2.director))
        .await;
    assert_eq!(verified.assignment, Some(expected_target(IMAGE_A, "dep-2")));
    vehicle
}

#[tokio::test]
async fn a_rotated_director_key_is_accepted_after_walking_the_new_root() {
    let mut vehicle = vehicle_after_rotation().await;
    // The cache failed (unknown key), the refresh walked root 2 and asked for root 3.
    assert_eq!(vehicle.fetches(), (2, [2, 3].into()));
    assert_eq!(
        std::fs::read(vehicle.store_dir.join("roots/2.json")).unwrap(),
        root_v2()
    );
    assert_eq!(vehicle.trusted().root, 2);

    // The old director key is no longer authorised.
    let doc = directive_doc(3, vec![assign(ECU, IMAGE_A, "dep-3")]);
    vehicle.refuse(&director(&doc), "threshold_not_met").await;
    assert_eq!(vehicle.trusted().root, 2);

    // After a restart the chain is re-walked from the anchor; the new key still works
    // and the old one still does not.
    vehicle.restart();
    vehicle.refuse(&director(&doc), "threshold_not_met").await;
    vehicle
        .accept(&director_signed_by(&doc, KEYS_V2.director))
        .await;
    assert_eq!(
        vehicle.trusted(),
        TrustedVersions {
            root: 2,
            targets: 1,
            director: 3
        }
    );
}

#[tokio::test]
async fn a_new_root_not_signed_by_the_old_root_keys_is_not_walked() {
    let mut vehicle = vehicle_with_cache().await;
    // Signed only by the new root key: not a rotation the trusted root authorised.
    vehicle
        .server
        .publish_root(2, root(2, KEYS_V2, &[KEYS_V2.root]));
    let doc = directive_doc(2, vec![assign(ECU, IMAGE_A, "dep-2")]);
    vehicle
        .refuse(
            &director_signed_by(&doc, KEYS_V2.director),
            "threshold_not_met",
        )
        .await;
    assert!(!vehicle.store_dir.join("roots").exists());
    assert_eq!(vehicle.trusted().root, 1);
}

#[tokio::test]
async fn a_refused_directive_after_a_rotation_writes_nothing_of_its_own() {
    let mut vehicle = vehicle_after_rotation().await;
    let after_rotation = vehicle.snapshot();
    assert!(after_rotation.contains_key(&vehicle.store_dir.join("roots/2.json")));

    // The server publishes a valid root v3; the next directive carries a bad hash, so the
    // refresh walks root 3 but the update as a whole is refused: neither roots/3.json nor
    // a new state may be written.
    let root_v3 = root(3, KEYS_V2, &[KEYS_V2.root]);
    vehicle.server.publish_root(3, root_v3.clone());
    let mut bad = assign(ECU, IMAGE_A, "dep-3");
    bad.image.sha256 = Sha256Digest::of(b"a different image");
    let bad = director_signed_by(&directive_doc(3, vec![bad]), KEYS_V2.director);
    vehicle.refuse(&bad, "hash_mismatch").await;
    assert!(vehicle.server.root_fetches().contains_key(&3));
    assert_eq!(vehicle.snapshot(), after_rotation);
    assert_eq!(vehicle.trusted().root, 2);

    // A replay of the pre-rotation director (old key) is refused too, store unchanged.
    vehicle
        .refuse(&simple_directive(1), "threshold_not_met")
        .await;
    assert_eq!(vehicle.snapshot(), after_rotation);

    // A good directive walks root 3 at once (every directive probes root N+1).
    let good = directive_doc(3, vec![assign(ECU, IMAGE_A, "dep-3")]);
    vehicle
        .accept(&director_signed_by(&good, KEYS_V2.director))
        .await;
    assert!(vehicle.store_dir.join("roots/3.json").exists());
    assert_eq!(vehicle.trusted().root, 3);

    // The next refresh (a new release) walks root 3 and records it.
    vehicle.server.publish_targets(targets(2));
    let release = directive_doc_for(2, 4, vec![assign(ECU, IMAGE_B, "dep-4")]);
    vehicle
        .accept(&director_signed_by(&release, KEYS_V2.director))
        .await;
    assert_eq!(
        std::fs::read(vehicle.store_dir.join("roots/3.json")).unwrap(),
        root_v3
    );
    assert_eq!(
        vehicle.trusted(),
        TrustedVersions {
            root: 3,
            targets: 2,
            director: 4
        }
    );
}

#[tokio::test]
async fn a_director_key_removed_by_a_rotation_is_refused_at_the_next_directive_even_with_cached_targets(
) {
    let mut vehicle = vehicle_with_cache().await;
    // Root v2 removes the (compromised) v1 director key. The attacker's next directive is
    // signed with that old key and would verify against the cached targets and root 1.
    vehicle.server.publish_root(2, root_v2());
    let doc = directive_doc(2, vec![assign(ECU, IMAGE_A, "dep-2")]);
    vehicle.refuse(&director(&doc), "threshold_not_met").await;
    assert!(
        vehicle.server.root_fetches().contains_key(&2),
        "the directive made the vehicle ask for root 2"
    );
    // The rotation itself then applies with the first directive by the new key.
    vehicle
        .accept(&director_signed_by(&doc, KEYS_V2.director))
        .await;
    assert_eq!(vehicle.trusted().root, 2);
}
