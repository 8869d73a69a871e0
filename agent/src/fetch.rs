//! Downloads with the signed length, the signed digest and resume rules, over a
//! [`Transport`] (HTTP(S) or files), in the manner of `tough`.
//!
//! [`fetch_to_file`] streams a blob into a `.part` file that survives restarts: what is
//! already there is re-hashed and only the rest is requested (`Range: bytes=N-`); a server
//! that answers from byte 0 starts the file over. The signed length bounds what is written
//! (a longer body is [`FetchError::TooLong`], a shorter one [`FetchError::Truncated`]),
//! SHA-256 is computed while streaming, and a partial file whose digest turns out wrong is
//! deleted. Slow retrieval is refused by [`RetrievalGuard`], a pure rule fed with
//! `(bytes, elapsed)` so it is tested without clocks; the async loop feeds it from
//! `tokio::time`. Memory stays bounded by one chunk whatever the blob's size.

use std::fmt;
use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use ota_core::encoding::Sha256Digest;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::time::Instant;

/// What the signed metadata says the blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub length: u64,
    pub sha256: Sha256Digest,
}

/// Slow-retrieval protection: at least `min_bytes_per_second` averaged over each
/// `throughput_window`, and the whole download within `deadline`.
#[derive(Debug, Clone)]
pub struct FetchLimits {
    pub min_bytes_per_second: u64,
    pub throughput_window: Duration,
    pub deadline: Duration,
}

impl Default for FetchLimits {
    /// 1 KiB/s over 30 s, one hour in total.
    fn default() -> Self {
        FetchLimits {
            min_bytes_per_second: 1024,
            throughput_window: Duration::from_secs(30),
            deadline: Duration::from_secs(3600),
        }
    }
}

/// Produces the `Authorization` header value for one request from its method and request
/// target (path and query as sent): the vehicle credential signs both and a time, so it
/// is computed per request (PROTOCOL.md §10).
pub type Credential = Arc<dyn Fn(&str, &str) -> Result<String, FetchError> + Send + Sync>;

/// The chunks of a response body.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Vec<u8>, FetchError>> + Send>>;

/// An opened download.
pub struct Body {
    /// The offset the source actually honoured: the one asked for, or 0 when it restarted.
    pub resumed_at: u64,
    pub stream: BodyStream,
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Body")
            .field("resumed_at", &self.resumed_at)
            .finish_non_exhaustive()
    }
}

/// Where bytes come from.
pub trait Transport: Send + Sync + fmt::Debug {
    /// Starts reading `url` at byte `offset`; returns the body stream and whether the
    /// server honoured the offset (206) or restarted from 0 (200).
    fn open(&self, url: &str, offset: u64)
        -> impl Future<Output = Result<Body, FetchError>> + Send;
}

/// Why a download failed. [`FetchError::is_retryable`] tells the driver whether trying
/// again later can help.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("computing the download credential: {0}")]
    Credential(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("requesting {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("reading the body of {url}: {source}")]
    Body {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: not found")]
    NotFound { url: String },
    #[error("{url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: range from byte {offset} not satisfiable (416)")]
    RangeNotSatisfiable { url: String, offset: u64 },
    #[error("{url}: asked to resume at byte {asked}, the server answered from byte {answered}")]
    UnexpectedOffset {
        url: String,
        asked: u64,
        answered: u64,
    },
    #[error("reading {path}: {source}")]
    ReadSource {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{action} {path}: {source}")]
    Local {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: the body is longer than the signed {limit} bytes")]
    TooLong { url: String, limit: u64 },
    #[error("{url}: the body ended after {received} of the signed {expected} bytes")]
    Truncated {
        url: String,
        expected: u64,
        received: u64,
    },
    #[error("{url}: SHA-256 mismatch: signed {expected}, downloaded {actual}")]
    DigestMismatch {
        url: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("{url}: too slow: {received} bytes in {window:?}, at least {required} required")]
    TooSlow {
        url: String,
        received: u64,
        required: u64,
        window: Duration,
    },
    #[error("{url}: not finished within the deadline of {deadline:?}")]
    DeadlineExceeded { url: String, deadline: Duration },
}

impl FetchError {
    /// Wraps whatever failed while producing the credential.
    pub fn credential(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        FetchError::Credential(error.into())
    }

    /// Whether a later attempt may succeed: network trouble, server errors, short or slow
    /// bodies (the partial file is kept, so a retry resumes). A wrong digest, an
    /// over-long body, a client error or a local failure will not fix itself. 408 and 429
    /// are the client errors that say "try again later".
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchError::Request { .. }
            | FetchError::Body { .. }
            | FetchError::Truncated { .. }
            | FetchError::TooSlow { .. }
            | FetchError::DeadlineExceeded { .. } => true,
            FetchError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            FetchError::InvalidUrl { .. }
            | FetchError::Client(_)
            | FetchError::Credential(_)
            | FetchError::NotFound { .. }
            | FetchError::RangeNotSatisfiable { .. }
            | FetchError::UnexpectedOffset { .. }
            | FetchError::ReadSource { .. }
            | FetchError::Local { .. }
            | FetchError::TooLong { .. }
            | FetchError::DigestMismatch { .. } => false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Slow-retrieval rule (pure).

/// A slow-retrieval verdict of [`RetrievalGuard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowRetrieval {
    /// A whole window passed with fewer than `required` bytes.
    TooSlow {
        received: u64,
        required: u64,
        window: Duration,
    },
    /// The total time reached the deadline.
    DeadlineExceeded { deadline: Duration },
}

impl SlowRetrieval {
    fn into_error(self, url: &str) -> FetchError {
        let url = url.to_owned();
        match self {
            SlowRetrieval::TooSlow {
                received,
                required,
                window,
            } => FetchError::TooSlow {
                url,
                received,
                required,
                window,
            },
            SlowRetrieval::DeadlineExceeded { deadline } => {
                FetchError::DeadlineExceeded { url, deadline }
            }
        }
    }
}

/// The slow-retrieval rule, without a clock: the caller reports bytes as they arrive with
/// the time elapsed since the download started, and also reports (with 0 bytes) at
/// [`RetrievalGuard::next_check`] when nothing arrives. Time is cut into consecutive
/// windows of `throughput_window`; each window that ends must have carried at least
/// `min_bytes_per_second × window` bytes. A stall is therefore noticed at most two windows
/// after it began. The deadline is reached when `elapsed ≥ deadline`.
#[derive(Debug, Clone)]
pub struct RetrievalGuard {
    required_per_window: u64,
    window: Duration,
    deadline: Duration,
    window_start: Duration,
    received_in_window: u64,
}

impl RetrievalGuard {
    pub fn new(limits: &FetchLimits) -> Self {
        // Rounded up: a non-zero minimum never becomes "no bytes required".
        let required = u128::from(limits.min_bytes_per_second)
            .saturating_mul(limits.throughput_window.as_millis())
            .div_ceil(1000);
        RetrievalGuard {
            required_per_window: u64::try_from(required).unwrap_or(u64::MAX),
            window: limits.throughput_window,
            deadline: limits.deadline,
            window_start: Duration::ZERO,
            received_in_window: 0,
        }
    }

    fn throughput_checked(&self) -> bool {
        self.required_per_window > 0 && !self.window.is_zero()
    }

    /// Records `bytes` that arrived `elapsed` after the start (0 bytes: a wake-up with
    /// nothing received). Windows that ended before `elapsed` are judged first; bytes
    /// arriving exactly at a window's end still count for it.
    pub fn observe(&mut self, bytes: u64, elapsed: Duration) -> Result<(), SlowRetrieval> {
        if elapsed >= self.deadline {
            return Err(SlowRetrieval::DeadlineExceeded {
                deadline: self.deadline,
            });
        }
        let mut pending = bytes;
        if self.throughput_checked() {
            // Terminates: after the first judged window the count restarts at 0 (or the
            // bytes that arrived exactly at its end), below the requirement unless the
            // next window is still running.
            loop {
                let end = self.window_start + self.window;
                if elapsed < end {
                    break;
                }
                if elapsed == end {
                    self.received_in_window = self.received_in_window.saturating_add(pending);
                    pending = 0;
                }
                if self.received_in_window < self.required_per_window {
                    return Err(SlowRetrieval::TooSlow {
                        received: self.received_in_window,
                        required: self.required_per_window,
                        window: self.window,
                    });
                }
                self.window_start = end;
                self.received_in_window = 0;
            }
        }
        self.received_in_window = self.received_in_window.saturating_add(pending);
        Ok(())
    }

    /// When (since the start) the caller must call [`RetrievalGuard::observe`] again even
    /// if no byte arrives.
    pub fn next_check(&self) -> Duration {
        if self.throughput_checked() {
            self.deadline.min(self.window_start + self.window)
        } else {
            self.deadline
        }
    }
}

/// Awaits `future` while keeping the guard's clock running: wakes at each check point
/// and fails as soon as the guard says so.
async fn guarded<F: Future>(
    guard: &mut RetrievalGuard,
    start: Instant,
    url: &str,
    future: F,
) -> Result<F::Output, FetchError> {
    let mut future = std::pin::pin!(future);
    loop {
        match tokio::time::timeout_at(start + guard.next_check(), &mut future).await {
            Ok(output) => return Ok(output),
            Err(_elapsed) => guard
                .observe(0, start.elapsed())
                .map_err(|verdict| verdict.into_error(url))?,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Downloads.

/// Downloads `url` into `dest` (a `.part` file kept across restarts), see the module doc.
/// `on_progress(bytes_done)` is called as bytes arrive, resumed bytes included. On `Ok`
/// the file holds exactly the expected bytes and is synced to disk.
pub async fn fetch_to_file<T: Transport>(
    transport: &T,
    url: &str,
    expected: &Expected,
    dest: &Path,
    limits: &FetchLimits,
    mut on_progress: impl FnMut(u64) + Send,
) -> Result<(), FetchError> {
    let start = Instant::now();
    let mut guard = RetrievalGuard::new(limits);
    // A partial file from an earlier run may be wrong (a torn write at power loss, an
    // older blob): when a resumed download fails its digest or the server cannot serve
    // the rest, the download starts over from byte 0, once.
    let mut may_start_over = true;
    loop {
        let outcome = attempt(
            transport,
            url,
            expected,
            dest,
            start,
            &mut guard,
            &mut on_progress,
        )
        .await;
        match outcome {
            Err(AttemptFailure {
                error:
                    error @ (FetchError::DigestMismatch { .. } | FetchError::RangeNotSatisfiable { .. }),
                resumed_from,
            }) if resumed_from > 0 && may_start_over => {
                may_start_over = false;
                if matches!(error, FetchError::RangeNotSatisfiable { .. }) {
                    remove_partial(dest).await?;
                }
            }
            Err(AttemptFailure { error, .. }) => return Err(error),
            Ok(()) => return Ok(()),
        }
    }
}

/// A failed attempt and the offset it resumed from (0: it started from scratch).
struct AttemptFailure {
    error: FetchError,
    resumed_from: u64,
}

async fn attempt<T: Transport>(
    transport: &T,
    url: &str,
    expected: &Expected,
    dest: &Path,
    start: Instant,
    guard: &mut RetrievalGuard,
    on_progress: &mut (impl FnMut(u64) + Send),
) -> Result<(), AttemptFailure> {
    let (mut file, mut hasher, mut written) =
        open_partial(dest, expected.length)
            .await
            .map_err(|error| AttemptFailure {
                error,
                resumed_from: 0,
            })?;
    let resumed_from = written;
    let fail = |error| AttemptFailure {
        error,
        resumed_from,
    };

    if written < expected.length {
        let body = guarded(guard, start, url, transport.open(url, written))
            .await
            .and_then(|opened| opened)
            .map_err(fail)?;
        if body.resumed_at != written {
            if body.resumed_at != 0 {
                return Err(fail(FetchError::UnexpectedOffset {
                    url: url.to_owned(),
                    asked: written,
                    answered: body.resumed_at,
                }));
            }
            // The server ignored the range: start the file over.
            restart_file(&mut file, dest).await.map_err(fail)?;
            hasher = Sha256::new();
            written = 0;
        }
        on_progress(written);
        let result = stream_into(
            body.stream,
            &mut file,
            &mut hasher,
            &mut written,
            expected.length,
            (url, dest, start),
            guard,
            on_progress,
        )
        .await;
        if let Err(error) = result {
            // Keep what arrived for the next resume; the error itself is what matters.
            let _ = file.sync_data().await;
            return Err(fail(error));
        }
    } else {
        on_progress(written);
    }

    let actual = Sha256Digest(hasher.finalize().into());
    if actual != expected.sha256 {
        drop(file);
        remove_partial(dest).await.map_err(fail)?;
        return Err(fail(FetchError::DigestMismatch {
            url: url.to_owned(),
            expected: expected.sha256,
            actual,
        }));
    }
    file.sync_all()
        .await
        .map_err(local("syncing", dest))
        .map_err(fail)?;
    sync_parent_dir(dest).await.map_err(fail)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn stream_into(
    mut stream: BodyStream,
    file: &mut tokio::fs::File,
    hasher: &mut Sha256,
    written: &mut u64,
    length: u64,
    (url, dest, start): (&str, &Path, Instant),
    guard: &mut RetrievalGuard,
    on_progress: &mut (impl FnMut(u64) + Send),
) -> Result<(), FetchError> {
    while let Some(chunk) = guarded(guard, start, url, stream.next()).await? {
        let chunk = chunk?;
        let room = length - *written;
        let fits = usize::try_from(room).map_or(chunk.len(), |room| chunk.len().min(room));
        let accepted = &chunk[..fits];
        file.write_all(accepted)
            .await
            .map_err(local("writing", dest))?;
        hasher.update(accepted);
        *written += accepted.len() as u64;
        if fits < chunk.len() {
            return Err(FetchError::TooLong {
                url: url.to_owned(),
                limit: length,
            });
        }
        guard
            .observe(accepted.len() as u64, start.elapsed())
            .map_err(|verdict| verdict.into_error(url))?;
        on_progress(*written);
    }
    file.flush().await.map_err(local("writing", dest))?;
    if *written < length {
        return Err(FetchError::Truncated {
            url: url.to_owned(),
            expected: length,
            received: *written,
        });
    }
    Ok(())
}

fn local(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FetchError {
    let path = path.to_owned();
    move |source| FetchError::Local {
        action,
        path,
        source,
    }
}

/// Opens (or creates) the partial file and hashes what it already holds. A file longer
/// than the signed length cannot be a prefix of the blob and is emptied.
async fn open_partial(
    dest: &Path,
    length: u64,
) -> Result<(tokio::fs::File, Sha256, u64), FetchError> {
    let path = dest.to_owned();
    let (file, hasher, held) = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(local("opening", &path))?;
        let mut held = file.metadata().map_err(local("inspecting", &path))?.len();
        if held > length {
            file.set_len(0).map_err(local("emptying", &path))?;
            held = 0;
        }
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 64 * 1024];
        let mut hashed = 0u64;
        while hashed < held {
            let n = file.read(&mut buffer).map_err(local("reading", &path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            hashed += n as u64;
        }
        Ok::<_, FetchError>((file, hasher, hashed))
    })
    .await
    .map_err(|join| FetchError::Local {
        action: "hashing",
        path: dest.to_owned(),
        source: std::io::Error::other(join),
    })??;
    let mut file = tokio::fs::File::from_std(file);
    file.set_len(held).await.map_err(local("trimming", dest))?;
    file.seek(std::io::SeekFrom::Start(held))
        .await
        .map_err(local("seeking", dest))?;
    Ok((file, hasher, held))
}

async fn restart_file(file: &mut tokio::fs::File, dest: &Path) -> Result<(), FetchError> {
    file.set_len(0).await.map_err(local("emptying", dest))?;
    file.seek(std::io::SeekFrom::Start(0))
        .await
        .map_err(local("seeking", dest))?;
    Ok(())
}

async fn remove_partial(dest: &Path) -> Result<(), FetchError> {
    match tokio::fs::remove_file(dest).await {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(local("removing", dest)(error)),
    }
}

/// Makes the file's directory entry durable too.
async fn sync_parent_dir(path: &Path) -> Result<(), FetchError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let result = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || std::fs::File::open(&dir).and_then(|d| d.sync_all())
    })
    .await
    .unwrap_or_else(|join| Err(std::io::Error::other(join)));
    result.map_err(local("syncing directory", &dir))
}

/// Small documents (metadata): the whole body, refused past `max_bytes`; not found →
/// `Ok(None)`. Slow retrieval is refused with [`FetchLimits::default`].
pub async fn fetch_small<T: Transport>(
    transport: &T,
    url: &str,
    max_bytes: u64,
) -> Result<Option<Vec<u8>>, FetchError> {
    fetch_small_with_limits(transport, url, max_bytes, &FetchLimits::default()).await
}

/// [`fetch_small`] with explicit slow-retrieval limits.
pub async fn fetch_small_with_limits<T: Transport>(
    transport: &T,
    url: &str,
    max_bytes: u64,
    limits: &FetchLimits,
) -> Result<Option<Vec<u8>>, FetchError> {
    let start = Instant::now();
    let mut guard = RetrievalGuard::new(limits);
    let mut body = match guarded(&mut guard, start, url, transport.open(url, 0)).await? {
        Ok(body) => body,
        Err(FetchError::NotFound { .. }) => return Ok(None),
        Err(error) => return Err(error),
    };
    if body.resumed_at != 0 {
        return Err(FetchError::UnexpectedOffset {
            url: url.to_owned(),
            asked: 0,
            answered: body.resumed_at,
        });
    }
    let mut document = Vec::new();
    while let Some(chunk) = guarded(&mut guard, start, url, body.stream.next()).await? {
        let chunk = chunk?;
        if document.len() as u64 + chunk.len() as u64 > max_bytes {
            return Err(FetchError::TooLong {
                url: url.to_owned(),
                limit: max_bytes,
            });
        }
        document.extend_from_slice(&chunk);
        guard
            .observe(chunk.len() as u64, start.elapsed())
            .map_err(|verdict| verdict.into_error(url))?;
    }
    Ok(Some(document))
}

// ---------------------------------------------------------------------------------------
// HTTP(S).

/// HTTP(S) downloads with the vehicle credential. Relative URLs (`/v1/blobs/<sha256>`) are
/// resolved against the base URL; absolute ones are used as they are.
#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    base: reqwest::Url,
    credential: Option<Credential>,
}

impl fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTransport")
            .field("base", &self.base.as_str())
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<credential>"),
            )
            .finish_non_exhaustive()
    }
}

/// How long a TCP (and TLS) connection may take to set up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

impl HttpTransport {
    pub fn new(base_url: &str, credential: Option<Credential>) -> Result<Self, FetchError> {
        let invalid = |reason: String| FetchError::InvalidUrl {
            url: base_url.to_owned(),
            reason,
        };
        let base = reqwest::Url::parse(base_url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "scheme {:?} is not http or https",
                base.scheme()
            )));
        }
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("ota-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(FetchError::Client)?;
        Ok(HttpTransport {
            client,
            base,
            credential,
        })
    }

    /// The absolute URL a (possibly relative) `url` refers to.
    pub fn resolve(&self, url: &str) -> Result<reqwest::Url, FetchError> {
        self.base.join(url).map_err(|e| FetchError::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })
    }
}

impl Transport for HttpTransport {
    async fn open(&self, url: &str, offset: u64) -> Result<Body, FetchError> {
        let target = self.resolve(url)?;
        let shown = target.to_string();
        // The origin-form request target reqwest sends: the serialised (percent-encoded)
        // path, then `?query` if any.
        let request_target = match target.query() {
            Some(query) => format!("{}?{query}", target.path()),
            None => target.path().to_owned(),
        };
        let mut request = self.client.get(target);
        if offset > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        if let Some(credential) = &self.credential {
            request = request.header(
                reqwest::header::AUTHORIZATION,
                credential("GET", &request_target)?,
            );
        }
        let response = request.send().await.map_err(|source| FetchError::Request {
            url: shown.clone(),
            source,
        })?;
        let resumed_at = match response.status().as_u16() {
            200 => 0,
            206 => {
                let answered = response
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|value| value.to_str().ok())
                    .and_then(content_range_start);
                match answered {
                    Some(start) if start == offset => start,
                    other => {
                        return Err(FetchError::UnexpectedOffset {
                            url: shown,
                            asked: offset,
                            answered: other.unwrap_or(u64::MAX),
                        })
                    }
                }
            }
            404 => return Err(FetchError::NotFound { url: shown }),
            416 => {
                return Err(FetchError::RangeNotSatisfiable { url: shown, offset });
            }
            status => return Err(FetchError::Status { url: shown, status }),
        };
        let stream = response.bytes_stream().map(move |chunk| {
            chunk.map(Vec::from).map_err(|source| FetchError::Body {
                url: shown.clone(),
                source,
            })
        });
        Ok(Body {
            resumed_at,
            stream: Box::pin(stream),
        })
    }
}

/// The first byte position of a `Content-Range: bytes <first>-<last>/<total>` value.
fn content_range_start(value: &str) -> Option<u64> {
    let range = value.strip_prefix("bytes ")?;
    let (first, _) = range.split_once('-')?;
    first.parse().ok()
}

// ---------------------------------------------------------------------------------------
// Files.

/// Reads `file://` URLs and plain paths (tests, USB sticks). With a root, every URL is a
/// path inside it (`/v1/blobs/<sha>` → `<root>/v1/blobs/<sha>`; `..` is refused).
#[derive(Debug, Clone, Default)]
pub struct FileTransport {
    root: Option<PathBuf>,
}

impl FileTransport {
    /// URLs are `file://` URLs or paths as given.
    pub fn new() -> Self {
        FileTransport { root: None }
    }

    /// URLs are paths under `root`.
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        FileTransport {
            root: Some(root.into()),
        }
    }

    /// The file a URL names.
    pub fn resolve(&self, url: &str) -> Result<PathBuf, FetchError> {
        let path = Path::new(url.strip_prefix("file://").unwrap_or(url));
        let Some(root) = &self.root else {
            return Ok(path.to_owned());
        };
        let mut resolved = root.clone();
        for component in path.components() {
            match component {
                Component::Normal(part) => resolved.push(part),
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(FetchError::InvalidUrl {
                        url: url.to_owned(),
                        reason: "leaves the transport's root".to_owned(),
                    })
                }
            }
        }
        Ok(resolved)
    }
}

/// Chunk size of [`FileTransport`] reads.
const FILE_CHUNK: usize = 64 * 1024;

impl Transport for FileTransport {
    async fn open(&self, url: &str, offset: u64) -> Result<Body, FetchError> {
        let path = self.resolve(url)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(FetchError::NotFound {
                    url: url.to_owned(),
                })
            }
            Err(source) => return Err(FetchError::ReadSource { path, source }),
        };
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|source| FetchError::ReadSource {
                path: path.clone(),
                source,
            })?;
        let stream = futures_util::stream::unfold(Some((file, path)), |state| async move {
            let (mut file, path) = state?;
            let mut buffer = vec![0u8; FILE_CHUNK];
            match file.read(&mut buffer).await {
                Ok(0) => None,
                Ok(n) => {
                    buffer.truncate(n);
                    Some((Ok(buffer), Some((file, path))))
                }
                Err(source) => Some((Err(FetchError::ReadSource { path, source }), None)),
            }
        });
        Ok(Body {
            resumed_at: offset,
            stream: Box::pin(stream),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(min_bytes_per_second: u64, window_ms: u64, deadline_ms: u64) -> FetchLimits {
        FetchLimits {
            min_bytes_per_second,
            throughput_window: Duration::from_millis(window_ms),
            deadline: Duration::from_millis(deadline_ms),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_steady_stream_above_the_minimum_passes_every_window() {
        // 100 B/s over 1 s windows: 100 bytes per window required.
        let mut guard = RetrievalGuard::new(&limits(100, 1000, 60_000));
        for tenth in 1..=100 {
            assert_eq!(
                guard.observe(10, ms(tenth * 100)),
                Ok(()),
                "at {tenth}/10 s"
            );
        }
    }

    #[test]
    fn a_window_with_too_few_bytes_is_too_slow_when_it_ends() {
        let mut guard = RetrievalGuard::new(&limits(100, 1000, 60_000));
        assert_eq!(guard.observe(99, ms(500)), Ok(()));
        assert_eq!(guard.next_check(), ms(1000));
        assert_eq!(
            guard.observe(0, ms(1000)),
            Err(SlowRetrieval::TooSlow {
                received: 99,
                required: 100,
                window: ms(1000)
            })
        );
    }

    #[test]
    fn a_stall_after_a_good_window_is_caught_one_window_later() {
        let mut guard = RetrievalGuard::new(&limits(100, 1000, 60_000));
        assert_eq!(guard.observe(500, ms(900)), Ok(()));
        assert_eq!(
            guard.observe(0, ms(1000)),
            Ok(()),
            "first window carried 500"
        );
        assert_eq!(guard.next_check(), ms(2000));
        assert!(matches!(
            guard.observe(0, ms(2000)),
            Err(SlowRetrieval::TooSlow { received: 0, .. })
        ));
    }

    #[test]
    fn bytes_arriving_two_windows_late_do_not_hide_the_empty_window() {
        let mut guard = RetrievalGuard::new(&limits(100, 1000, 60_000));
        assert_eq!(guard.observe(500, ms(900)), Ok(()));
        // Nothing was checked at 1 s or 2 s; a chunk at 2.5 s must still be refused.
        assert!(matches!(
            guard.observe(1_000, ms(2_500)),
            Err(SlowRetrieval::TooSlow { received: 0, .. })
        ));
    }

    #[test]
    fn the_deadline_is_reached_whatever_the_throughput() {
        let mut guard = RetrievalGuard::new(&limits(1, 60_000, 5_000));
        assert_eq!(guard.observe(1_000_000, ms(4_999)), Ok(()));
        assert_eq!(
            guard.observe(1_000_000, ms(5_000)),
            Err(SlowRetrieval::DeadlineExceeded {
                deadline: ms(5_000)
            })
        );
    }

    #[test]
    fn next_check_never_passes_the_deadline_and_a_zero_minimum_disables_the_window() {
        let guard = RetrievalGuard::new(&limits(100, 10_000, 3_000));
        assert_eq!(guard.next_check(), ms(3_000));
        let mut guard = RetrievalGuard::new(&limits(0, 1_000, 3_000));
        assert_eq!(guard.next_check(), ms(3_000));
        assert_eq!(guard.observe(0, ms(2_999)), Ok(()), "no minimum, no stall");
    }

    #[test]
    fn a_tiny_minimum_over_a_short_window_still_requires_a_byte() {
        // 1 B/s over 200 ms is 0.2 bytes: rounded up, not down to "nothing required".
        let mut guard = RetrievalGuard::new(&limits(1, 200, 60_000));
        assert!(matches!(
            guard.observe(0, ms(200)),
            Err(SlowRetrieval::TooSlow { required: 1, .. })
        ));
    }

    #[test]
    fn the_default_limits_are_one_kib_per_second_over_thirty_seconds_and_an_hour() {
        let guard = RetrievalGuard::new(&FetchLimits::default());
        assert_eq!(guard.required_per_window, 30 * 1024);
        assert_eq!(guard.next_check(), Duration::from_secs(30));
    }

    fn assert_send<F: Future + Send>(_: F) {}

    /// The driver spawns downloads on the runtime, so their futures must be `Send`.
    #[test]
    fn download_futures_can_be_spawned() {
        let expected = Expected {
            length: 1,
            sha256: Sha256Digest([0; 32]),
        };
        let http = HttpTransport::new("http://127.0.0.1:9", None).unwrap();
        let file = FileTransport::new();
        let dest = Path::new("unused.part");
        let limits = FetchLimits::default();
        // Futures do nothing until polled; these are only type-checked.
        assert_send(fetch_to_file(&http, "/x", &expected, dest, &limits, |_| {}));
        assert_send(fetch_to_file(&file, "/x", &expected, dest, &limits, |_| {}));
        assert_send(fetch_small(&http, "/x", 1));
        assert_send(fetch_small(&file, "/x", 1));
    }

    #[test]
    fn content_range_start_is_read_from_the_header_value() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes 0-0/*"), Some(0));
        assert_eq!(content_range_start("bytes */200"), None);
        assert_eq!(content_range_start("items 1-2/3"), None);
    }

    #[test]
    fn relative_urls_are_joined_to_the_base_url() {
        let transport = HttpTransport::new("http://127.0.0.1:8080", None).unwrap();
        assert_eq!(
            transport.resolve("/v1/blobs/ab").unwrap().as_str(),
            "http://127.0.0.1:8080/v1/blobs/ab"
        );
        assert_eq!(
            transport.resolve("https://cdn.example/x").unwrap().as_str(),
            "https://cdn.example/x"
        );
        assert!(matches!(
            HttpTransport::new("ftp://example", None),
            Err(FetchError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn file_transport_paths_stay_under_the_root() {
        let transport = FileTransport::with_root("/media/usb");
        assert_eq!(
            transport.resolve("/v1/blobs/ab").unwrap(),
            PathBuf::from("/media/usb/v1/blobs/ab")
        );
        assert!(transport.resolve("/v1/../../etc/passwd").is_err());
        assert_eq!(
            FileTransport::new().resolve("file:///tmp/x").unwrap(),
            PathBuf::from("/tmp/x")
        );
    }

    #[test]
    fn retryable_errors_are_the_transient_ones() {
        let url = || "u".to_owned();
        let digest = Sha256Digest([0; 32]);
        let table: Vec<(FetchError, bool)> = vec![
            (
                FetchError::Status {
                    url: url(),
                    status: 503,
                },
                true,
            ),
            (
                FetchError::Status {
                    url: url(),
                    status: 429,
                },
                true,
            ),
            (
                FetchError::Status {
                    url: url(),
                    status: 403,
                },
                false,
            ),
            (FetchError::NotFound { url: url() }, false),
            (
                FetchError::Truncated {
                    url: url(),
                    expected: 2,
                    received: 1,
                },
                true,
            ),
            (
                FetchError::TooSlow {
                    url: url(),
                    received: 0,
                    required: 1,
                    window: ms(1),
                },
                true,
            ),
            (
                FetchError::DeadlineExceeded {
                    url: url(),
                    deadline: ms(1),
                },
                true,
            ),
            (
                FetchError::TooLong {
                    url: url(),
                    limit: 1,
                },
                false,
            ),
            (
                FetchError::DigestMismatch {
                    url: url(),
                    expected: digest,
                    actual: digest,
                },
                false,
            ),
        ];
        for (error, retryable) in table {
            assert_eq!(error.is_retryable(), retryable, "{error}");
        }
    }
}
