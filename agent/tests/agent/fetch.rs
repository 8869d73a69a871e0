//! Downloads over real HTTP on loopback, against a small server written here that can
//! misbehave on purpose: ignore `Range`, cut the connection, send more or fewer bytes than
//! signed, stall.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ota_agent::fetch::{
    fetch_small, fetch_small_with_limits, fetch_to_file, Credential, Expected, FetchError,
    FetchLimits, FileTransport, HttpTransport,
};
use ota_agent::identity::{DeviceSigner, MemoryKey};
use ota_agent::run::vehicle_transport;
use ota_core::encoding::Sha256Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the server answers one request.
#[derive(Debug, Clone, Default)]
struct Behaviour {
    /// Answer 200 with the whole body even when asked for a range.
    ignore_range: bool,
    /// Send this many body bytes, then close the connection (Content-Length promised more).
    cut_after: Option<usize>,
    /// Send this many body bytes, then send nothing more until the client goes away.
    stall_after: Option<usize>,
    /// Accept the request and never answer it.
    stall_before_headers: bool,
    /// Bytes served after the blob (a body longer than signed).
    extra: Vec<u8>,
    /// Serve the blob without its last `short_by` bytes (a body shorter than signed).
    short_by: usize,
    /// Answer with this status and no body.
    status: Option<u16>,
}

#[derive(Debug, Clone)]
struct Recorded {
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    plan: VecDeque<Behaviour>,
    requests: Vec<Recorded>,
}

struct TestServer {
    base: String,
    blob: Arc<Vec<u8>>,
    state: Arc<Mutex<State>>,
}

impl TestServer {
    /// Serves `blob` at `/v1/blobs/<sha256>`; each request takes the next behaviour of
    /// the plan (well-behaved once the plan is used up).
    async fn start(blob: Vec<u8>, plan: Vec<Behaviour>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let blob = Arc::new(blob);
        let state = Arc::new(Mutex::new(State {
            plan: plan.into(),
            requests: Vec::new(),
        }));
        let (served, shared) = (blob.clone(), state.clone());
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(socket, served.clone(), shared.clone()));
            }
        });
        TestServer {
            base: format!("http://{addr}"),
            blob,
            state,
        }
    }

    fn url(&self) -> String {
        format!("/v1/blobs/{}", Sha256Digest::of(&self.blob).to_hex())
    }

    fn expected(&self) -> Expected {
        Expected {
            length: self.blob.len() as u64,
            sha256: Sha256Digest::of(&self.blob),
        }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    fn transport(&self) -> HttpTransport {
        HttpTransport::new(&self.base, None).unwrap()
    }
}

async fn serve(mut socket: TcpStream, blob: Arc<Vec<u8>>, state: Arc<Mutex<State>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match socket.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let path = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .unwrap_or_default()
        .to_owned();
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let range = header("range");
    let behaviour = {
        let mut state = state.lock().unwrap();
        state.requests.push(Recorded {
            path: path.clone(),
            range: range.clone(),
            authorization: header("authorization"),
        });
        state.plan.pop_front().unwrap_or_default()
    };
    if behaviour.stall_before_headers {
        return wait_for_client_to_leave(socket).await;
    }
    if let Some(status) = behaviour.status {
        let response =
            format!("HTTP/1.1 {status} Status\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = socket.write_all(response.as_bytes()).await;
        return;
    }
    let expected_path = format!("/v1/blobs/{}", Sha256Digest::of(&blob).to_hex());
    if path != expected_path {
        let _ = socket
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return;
    }
    let mut full = blob[..blob.len() - behaviour.short_by].to_vec();
    full.extend_from_slice(&behaviour.extra);
    let start = match (&range, behaviour.ignore_range) {
        (Some(range), false) => range
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok())
            .expect("the agent asks for open-ended ranges"),
        _ => 0,
    };
    if start >= full.len() && start > 0 {
        let response = format!(
            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            full.len()
        );
        let _ = socket.write_all(response.as_bytes()).await;
        return;
    }
    let body = &full[start..];
    let status_line = if start > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\n",
            full.len() - 1,
            full.len()
        )
    } else {
        "HTTP/1.1 200 OK\r\n".to_owned()
    };
    let response = format!(
        "{status_line}Content-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if socket.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    match (behaviour.cut_after, behaviour.stall_after) {
        (Some(n), _) => {
            let _ = socket.write_all(&body[..n.min(body.len())]).await;
            let _ = socket.flush().await;
            // Dropping the socket closes the connection mid-body.
        }
        (None, Some(n)) => {
            let _ = socket.write_all(&body[..n.min(body.len())]).await;
            let _ = socket.flush().await;
            wait_for_client_to_leave(socket).await;
        }
        (None, None) => {
            let _ = socket.write_all(body).await;
        }
    }
}

/// Holds the connection open, sending nothing, until the client closes it.
async fn wait_for_client_to_leave(mut socket: TcpStream) {
    let mut sink = [0u8; 1024];
    while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Deterministic, incompressible-looking bytes.
fn blob(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

const BLOB_LEN: usize = 300_000;

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test]
async fn an_interrupted_download_resumes_with_a_range_request_and_is_byte_identical() {
    let server = TestServer::start(
        blob(BLOB_LEN),
        vec![Behaviour {
            cut_after: Some(120_000),
            ..Behaviour::default()
        }],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image.part");
    let transport = server.transport();
    let limits = FetchLimits::default();

    let error = fetch_to_file(
        &transport,
        &server.url(),
        &server.expected(),
        &dest,
        &limits,
        |_| {},
    )
    .await
    .expect_err("the connection was cut mid-body");
    assert!(
        error.is_retryable(),
        "a cut connection is retryable: {error}"
    );
    let kept = file_len(&dest);
    assert!(
        kept > 0 && kept <= 120_000,
        "the partial file keeps what arrived ({kept} bytes)"
    );

    let mut progress = Vec::new();
    fetch_to_file(
        &transport,
        &server.url(),
        &server.expected(),
        &dest,
        &limits,
        |done| progress.push(done),
    )
    .await
    .expect("the resumed download completes");

    assert_eq!(
        std::fs::read(&dest).unwrap(),
        *server.blob,
        "byte-identical"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].range, None,
        "the first request asks for everything"
    );
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={kept}-").as_str()),
        "the second request asks only for the rest"
    );
    assert_eq!(
        progress.first(),
        Some(&kept),
        "progress starts at the resumed offset"
    );
    assert_eq!(progress.last(), Some(&(BLOB_LEN as u64)));
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back"
    );
}

#[tokio::test]
async fn a_restarted_agent_resumes_the_part_file_with_a_new_transport() {
    let server = TestServer::start(
        blob(BLOB_LEN),
        vec![Behaviour {
            cut_after: Some(50_000),
            ..Behaviour::default()
        }],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image.part");
    let limits = FetchLimits::default();
    {
        let before_restart = server.transport();
        fetch_to_file(
            &before_restart,
            &server.url(),
            &server.expected(),
            &dest,
            &limits,
            |_| {},
        )
        .await
        .expect_err("cut");
    }
    let kept = file_len(&dest);
    assert!(kept > 0);

    let after_restart = server.transport();
    fetch_to_file(
        &after_restart,
        &server.url(),
        &server.expected(),
        &dest,
        &limits,
        |_| {},
    )
    .await
    .expect("resumed after the restart");
    assert_eq!(std::fs::read(&dest).unwrap(), *server.blob);
    assert_eq!(
        server.requests()[1].range,
        Some(format!("bytes={kept}-")),
        "the new process resumed from the .part file"
    );
}

#[tokio::test]
async fn a_server_ignoring_range_makes_the_download_start_over_cleanly() {
    let data = blob(BLOB_LEN);
    let server = TestServer::start(
        data.clone(),
        vec![Behaviour {
            ignore_range: true,
            ..Behaviour::default()
        }],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image.part");
    std::fs::write(&dest, &data[..100_000]).unwrap();

    let mut progress = Vec::new();
    fetch_to_file(
        &server.transport(),
        &server.url(),
        &server.expected(),
        &dest,
        &FetchLimits::default(),
        |done| progress.push(done),
    )
    .await
    .expect("a 200 answer to a range request restarts the file");
    assert_eq!(std::fs::read(&dest).unwrap(), data, "not the prefix twice");
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(progress.first(), Some(&0), "progress restarts from 0");
}

#[tokio::test]
async fn a_corrupt_partial_file_is_discarded_and_downloaded_again() {
    let data = blob(BLOB_LEN);
    let server = TestServer::start(data.clone(), vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image.part");
    let mut corrupt = data[..100_000].to_vec();
    corrupt[5] ^= 0xff;
    std::fs::write(&dest, &corrupt).unwrap();

    fetch_to_file(
        &server.transport(),
        &server.url(),
        &server.expected(),
        &dest,
        &FetchLimits::default(),
        |_| {},
    )
    .await
    .expect("a resumed download that fails its digest starts over once");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let ranges: Vec<_> = server.requests().into_iter().map(|r| r.range).collect();
    assert_eq!(ranges, [Some("bytes=100000-".to_owned()), None]);
}

#[tokio::test]
async fn a_body_longer_than_signed_is_too_long_and_the_file_never_exceeds_the_signed_length() {
    let server = TestServer::start(
        blob(BLOB_LEN),
        vec![Behaviour {
            extra: b"one byte too many".to_vec(),
            ..Behaviour::default()
        }],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image.part");
    let mut most = 0;
    let error = fetch_to_file(
        &server.transport(),
        &server.url(),
        &server.expected(),
        &dest,
        &FetchLimits::default(),
        |done| most = most.max(done),
    )
    .await
    .expect_err("more bytes than signed");
    assert!(
        matches!(error, FetchError::TooLong { limit, .. } if limit == BLOB_LEN as u64),
        "{error}"
    );
    assert!(!error.is_retryable());
    assert!(
        file_len(&dest) <= BLOB_LEN as u64,
        "nothing past the signed length"
    );
    assert!(most <= BLOB_LEN as u64);
}

#[tokio::test]
async fn a_body_shorter_than_signed_is_truncated_and_kept_for_the_next_resume() {
    let server = TestServer::start(
        blob(BLOB_LEN),
        vec![Behaviour {
            short_by: 1_000,
            ..Behaviour::default()
        }],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image.part");
    let transport = server.transport();
    let limits = FetchLimits::default();
    let error = fetch_to_file(
        &transport,
        &server.url(),
        &server.expected(),
        &dest,
        &limits,
        |_| {},
    )
    .await
    .expect_err("fewer bytes than signed");
    assert!(
        matches!(
            error,
            FetchError::Truncated { expected, received, .. }
                if expected == BLOB_LEN as u64 && received == (BLOB_LEN - 1_000) as u64
        ),
        "{error}"
    );
    assert!(error.is_retryable());
    assert_eq!(file_len(&dest), (BLOB_LEN - 1_000) as u64, "partial kept");

    fetch_to_file(
        &transport,
        &server.url(),
        &server.expected(),
        &dest,
        &limits,
        |_| {},
    )
    .await
    .expect("the next attempt fetches the missing tail");
    assert_eq!(std::fs::read(&dest).unwrap(), *server.blob);
}

#[tokio::test]
async fn a_wrong_digest_is_refused_and_the_part_file_removed() {
    let server = TestServer::start(blob(BLOB_LEN), vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image.part");
    let signed = Sha256Digest([0x42; 32]);
    let expected = Expected {
        length: BLOB_LEN as u64,
        sha256: signed,
    };
    let error = fetch_to_file(
        &server.transport(),
        &server.url(),
        &expected,
        &dest,
        &FetchLimits::default(),
        |_| {},
    )
    .await
    .expect_err("the digest differs from the signed one");
    match &error {
        FetchError::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(*expected, signed);
            assert_eq!(*actual, Sha256Digest::of(&server.blob));
        }
        other => panic!("expected DigestMismatch, got {other}"),
    }
    assert!(!error.is_retryable());
    assert!(!dest.exists(), "the partial file is deleted");
}

#[tokio::test]
async fn a_server_that_stops_sending_is_too_slow() {
    // 100 B/s over 200 ms windows: 20 bytes per window. Both servers send nothing at all
    // after their first bytes, so no window after that can pass, however slow the machine.
    let limits = FetchLimits {
        min_bytes_per_second: 100,
        throughput_window: Duration::from_millis(200),
        deadline: Duration::from_secs(600),
    };
    for (case, behaviour) in [
        (
            "stall mid-body",
            Behaviour {
                stall_after: Some(1_000),
                ..Behaviour::default()
            },
        ),
        (
            "stall before the response headers",
            Behaviour {
                stall_before_headers: true,
                ..Behaviour::default()
            },
        ),
    ] {
        let server = TestServer::start(blob(BLOB_LEN), vec![behaviour]).await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("image.part");
        let error = fetch_to_file(
            &server.transport(),
            &server.url(),
            &server.expected(),
            &dest,
            &limits,
            |_| {},
        )
        .await
        .expect_err(case);
        assert!(
            matches!(error, FetchError::TooSlow { required: 20, .. }),
            "{case}: {error}"
        );
        assert!(error.is_retryable(), "{case}");
    }
}

#[tokio::test]
async fn a_download_past_its_deadline_is_refused() {
    // No throughput rule; the server never finishes.
    let limits = FetchLimits {
        min_bytes_per_second: 0,
        throughput_window: Duration::from_secs(30),
        deadline: Duration::from_millis(300),
    };
    let server = TestServer::start(
        blob(BLOB_LEN),
        vec![Behaviour {
            stall_after: Some(1_000),
            ..Behaviour::default()
        }],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image.part");
    let error = fetch_to_file(
        &server.transport(),
        &server.url(),
        &server.expected(),
        &dest,
        &limits,
        |_| {},
    )
    .await
    .expect_err("never finishes");
    assert!(
        matches!(error, FetchError::DeadlineExceeded { deadline, .. } if deadline == limits.deadline),
        "{error}"
    );
    assert!(
        file_len(&dest) > 0,
        "what arrived is kept for a later attempt"
    );
}

/// Every request carries a fresh credential signed over that request's method and
/// target as it went on the wire (the server verifies it over what it received), a
/// resumed download included.
#[tokio::test]
async fn every_request_carries_a_credential_for_exactly_that_request() {
    let server = TestServer::start(
        blob(BLOB_LEN),
        vec![Behaviour {
            cut_after: Some(10_000),
            ..Behaviour::default()
        }],
    )
    .await;
    let key = ota_core::key::SigningKey::from_seed(&[4u8; 32]);
    let signer: Arc<dyn DeviceSigner> = Arc::new(MemoryKey(key.clone()));
    let transport = vehicle_transport(&server.base, "veh-fetch", signer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image.part");
    let limits = FetchLimits::default();
    let _ = fetch_to_file(
        &transport,
        &server.url(),
        &server.expected(),
        &dest,
        &limits,
        |_| {},
    )
    .await;
    fetch_to_file(
        &transport,
        &server.url(),
        &server.expected(),
        &dest,
        &limits,
        |_| {},
    )
    .await
    .unwrap();
    // A query is part of the signed target (this server answers it 404).
    let with_query = format!("{}?attempt=2", server.url());
    let _ = fetch_small(&transport, &with_query, 1 << 20).await;
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert_eq!(requests[1].range.as_deref(), Some("bytes=10000-"));
    assert_eq!(requests[2].path, with_query);
    let mut headers = Vec::new();
    for request in &requests {
        let header = request
            .authorization
            .clone()
            .expect("every request is authorised");
        let credential = ota_core::credential::parse(&header).unwrap();
        assert_eq!(credential.request.vehicle_id, "veh-fetch");
        assert_eq!(credential.request.target, request.path);
        credential
            .verify(&key.public_key(), "GET", &request.path)
            .expect("signed over the request line's method and target");
        headers.push(header);
    }
    assert_ne!(headers[0], headers[2]);

    let refusing: Credential =
        Arc::new(|_, _| Err(FetchError::credential("the token is not logged in")));
    let transport = HttpTransport::new(&server.base, Some(refusing)).unwrap();
    let error = fetch_small(&transport, &server.url(), 1 << 20)
        .await
        .expect_err("no credential, no request");
    assert!(matches!(error, FetchError::Credential(_)), "{error}");
}

#[tokio::test]
async fn small_documents_are_read_whole_bounded_and_missing_ones_are_none() {
    let data = blob(5_000);
    let server = TestServer::start(
        data.clone(),
        vec![
            Behaviour::default(),
            Behaviour::default(),
            Behaviour::default(),
            Behaviour {
                status: Some(503),
                ..Behaviour::default()
            },
            Behaviour {
                status: Some(403),
                ..Behaviour::default()
            },
        ],
    )
    .await;
    let transport = server.transport();
    assert_eq!(
        fetch_small(&transport, &server.url(), 5_000).await.unwrap(),
        Some(data)
    );
    assert!(matches!(
        fetch_small(&transport, &server.url(), 4_999).await,
        Err(FetchError::TooLong { limit: 4_999, .. })
    ));
    assert_eq!(
        fetch_small(&transport, "/v1/metadata/missing.json", 5_000)
            .await
            .unwrap(),
        None,
        "404 is not an error for metadata"
    );
    let unavailable = fetch_small(&transport, &server.url(), 5_000)
        .await
        .unwrap_err();
    assert!(
        matches!(unavailable, FetchError::Status { status: 503, .. }) && unavailable.is_retryable()
    );
    let forbidden = fetch_small(&transport, &server.url(), 5_000)
        .await
        .unwrap_err();
    assert!(
        matches!(forbidden, FetchError::Status { status: 403, .. }) && !forbidden.is_retryable()
    );
    assert_eq!(server.requests()[2].path, "/v1/metadata/missing.json");
}

#[tokio::test]
async fn a_stalled_small_document_is_too_slow() {
    let server = TestServer::start(
        blob(5_000),
        vec![Behaviour {
            stall_after: Some(10),
            ..Behaviour::default()
        }],
    )
    .await;
    let limits = FetchLimits {
        min_bytes_per_second: 1,
        throughput_window: Duration::from_millis(200),
        deadline: Duration::from_secs(600),
    };
    let error = fetch_small_with_limits(&server.transport(), &server.url(), 10_000, &limits)
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::TooSlow { .. }), "{error}");
}

#[tokio::test]
async fn the_file_transport_resumes_by_seeking_and_reports_missing_files() {
    let data = blob(BLOB_LEN);
    let root = tempfile::tempdir().unwrap();
    let digest = Sha256Digest::of(&data);
    std::fs::create_dir_all(root.path().join("v1/blobs")).unwrap();
    std::fs::write(root.path().join("v1/blobs").join(digest.to_hex()), &data).unwrap();
    let transport = FileTransport::with_root(root.path());
    let url = format!("/v1/blobs/{}", digest.to_hex());
    let expected = Expected {
        length: data.len() as u64,
        sha256: digest,
    };
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image.part");
    std::fs::write(&dest, &data[..123_457]).unwrap();
    let mut progress = Vec::new();
    fetch_to_file(
        &transport,
        &url,
        &expected,
        &dest,
        &FetchLimits::default(),
        |done| progress.push(done),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(progress.first(), Some(&123_457), "resumed, not restarted");

    // Already complete: verified without reading the source again.
    std::fs::remove_file(root.path().join("v1/blobs").join(digest.to_hex())).unwrap();
    fetch_to_file(
        &transport,
        &url,
        &expected,
        &dest,
        &FetchLimits::default(),
        |_| {},
    )
    .await
    .expect("a complete .part file needs no transfer");

    assert_eq!(fetch_small(&transport, &url, 1 << 20).await.unwrap(), None);
    let plain = FileTransport::new();
    let direct = format!("file://{}", dest.display());
    assert_eq!(
        fetch_small(&plain, &direct, 1 << 20).await.unwrap(),
        Some(data)
    );
}
