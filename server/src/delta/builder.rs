//! Builds a delta container from two full images.
//!
//! Pipeline, per part of the new image (see `chunking`): suffix array of the old window,
//! parallel match search over slices of the new part and a cost-based pruning of weak
//! matches (`matcher`), cut into segments of at most 16 MiB of target, and the four
//! streams of every segment (control; extra, compressed against 1 MiB of old bytes; the
//! diff as zero runs + non-zero codes) compressed with zstd level 19 on all worker
//! threads, and the diff stream, the extra stream, the control block, the runs block
//! and the codes once more as LZMA2 streams; per segment each stream keeps its smallest
//! coding (container algorithm 4, `BuildOptions::lzma`; a diff stream longer than the
//! LZMA2 dictionary, given spare threads, is coded in parts on several of them: `lzma2`). Hashes of both images and a
//! quick estimate of the full image's compressed size are computed on a side thread
//! meanwhile. The match search, segmenting and zstd pass run once per match-scan
//! profile (`matcher::SCAN_PROFILES`) and, when the new image holds ARM64 code
//! (`detect`, `AUTO_TRANSFORMS`) or an ELF unwind table, once more per profile over the
//! images under each transform tried (the table alone and with the ARM64 transform, or
//! the ARM64 transform alone without a table)
//! (`ota_core::delta::Transform`), all with zstd streams only at `COMPARE_LEVEL`; the
//! windows are read and the suffix arrays built once per pair of images, for all
//! profiles (`write_delta_bodies`). The smallest body is kept and coded in full
//! (`recode_body`: the build's zstd level and, with LZMA2 on, LZMA2 streams), and so is
//! the runner-up when it compared within `FINALIST_MARGIN_BASIS_POINTS` of it; the smaller
//! coded one ships (so LZMA2, most of the build time, runs at most twice). A shipped body
//! of at most `ONE_STREAM_MAX_BODY` is also rewritten as one LZMA2 stream (`one_stream`,
//! container algorithm 5, `BuildOptions::one_stream`), which ships when smaller. When the delta is not at least
//! `min_saving_percent` (default 10%) smaller than the full image compressed, the full
//! image is shipped instead.
//!
//! Everything here is blocking and CPU-bound: the server's delta workers call it through
//! `crate::jobs::DeltaEngine` inside `spawn_blocking`, never on the async executor.

use super::chunking::plan_parts;
use super::detect::detect_transform;
use super::image::{FileImage, ImageSource, TransformedImage};
use super::lzma2::{
    diff_part_stream, diff_parts, join_parts, lzma_stream, max_diff_parts, smallest_lzma_stream,
    LzmaModel,
};
use super::matcher::{
    cover_literal_gaps, find_matches_each, prune_weak_matches, Match, OldIndex, ScanProfile,
    SCAN_PROFILES,
};
use super::one_stream::{one_stream_body, ONE_STREAM_MAX_BODY};
use ota_core::delta::{
    encode_control_block, encode_runs, lzma2_bound, Algorithm, ContainerHeader, Control,
    ImageDigests, RunBlock, SegmentHeader, Transform, EXTRA_PREFIX_MAX, HEADER_LEN,
    HEADER_LEN_DETACHED, MAX_IMAGE_LEN, SEGMENT_HEADER_LEN, SEGMENT_MAX_CONTROL, SEGMENT_MAX_RUNS,
    SEGMENT_MAX_TARGET,
};
use std::borrow::Cow;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use zstd::zstd_safe::CParameter;

/// Default cap on the old window and new part held in memory at once (see `chunking`).
pub const DEFAULT_WINDOW_CAP: u64 = 256 << 20;
/// Worker threads at most (more are clamped to this).
pub const MAX_THREADS: usize = 1024;
/// zstd levels the builder offers.
pub const LEVELS: std::ops::RangeInclusive<i32> = 1..=22;
/// The window cap the CLI accepts, in MiB (peak memory is about 7× the window).
pub const WINDOW_MIB: std::ops::RangeInclusive<u64> = 1..=4096;
/// zstd window of codes frames and full-image streams. The agent decodes those streaming
/// and refuses larger windows, so this fixes its decoder memory at 8 MiB per stream.
pub const STREAM_WINDOW_LOG: u32 = 23;
/// The savings a build can demand of a delta over the full image compressed, in percent
/// (`BuildOptions::min_saving_percent`; the CLI and the server settings accept these).
pub const MIN_SAVING_PERCENT: std::ops::RangeInclusive<u8> = 0..=90;
/// The default: a delta is shipped when it is at least 10% smaller than the full image
/// compressed. Measured on `tests/delta-corpus` (docs/delta-bench.txt, 2026-12-01
/// threshold section): three far-apart ARM64 pairs' deltas are 22–28% smaller than their
/// full images, so the former 30% shipped those pairs' full images, at up to 1.36× the
/// best other tool's patch, where the delta is 0.95–1.035× it.
pub const DEFAULT_MIN_SAVING_PERCENT: u8 = 10;
/// Level-19 zstd is assumed to shrink a binary image by at most 40% more than level 3.
/// Under that assumption a delta worth shipping against 60% of the level-3 size is
/// certainly worth shipping against the level-19 one, whose expensive compression is
/// then skipped.
const LEVEL19_MIN_PERCENT_OF_LEVEL3: u64 = 60;
/// zstd level at which the candidate bodies of a build (scan profiles, plain and
/// transformed) are coded to be compared (or the build's level, when lower). The kept
/// body is then coded at the build's level, with LZMA2 where it is on, from its decoded
/// streams. Level 6 ranked the candidates as level 19 did wherever they compared more
/// than 1% apart, and with the runner-up check (`FINALIST_MARGIN_BASIS_POINTS`) no pair of
/// the corpus got larger than with level-19 comparisons, while its passes are several
/// times faster (docs/delta-bench.txt, 2026-12-03 session 20).
pub const COMPARE_LEVEL: i32 = 6;
/// The runner-up of the compared bodies is coded in full too, and the smaller kept, when
/// its compared size is within this many hundredths of a percent (0.25%) of the
/// smallest's: zstd sizes rank candidates that close differently from their full
/// (LZMA2) coding on some pairs (at level 6, four of the five runner-ups that coded
/// smaller compared 0.03–0.2% apart, and the largest loss was 2.8%); a wider margin
/// codes most builds twice for little (docs/delta-bench.txt, 2026-12-03 session 20).
pub const FINALIST_MARGIN_BASIS_POINTS: u64 = 25;
/// Old bytes the extra frame of a segment is compressed against (at most the format's
/// `EXTRA_PREFIX_MAX`). On the corpus 4 MiB made deltas another 1–2.5% smaller than
/// 1 MiB but doubled the build time (zstd indexes the whole prefix at level 19), and
/// 1 MiB cost no measurable time; without a prefix deltas were 1.5–3% larger.
const EXTRA_PREFIX_LEN: usize = 1 << 20;
const _: () = assert!(EXTRA_PREFIX_LEN <= EXTRA_PREFIX_MAX as usize);
/// Most control entries per segment, so that the encoded block (at most 20 bytes per
/// entry plus the count) stays under `SEGMENT_MAX_CONTROL`.
const MAX_ENTRIES_PER_SEGMENT: usize = (SEGMENT_MAX_CONTROL as usize - 16) / 20;

/// Which match-scan profiles a build tries (`ota-server delta build --scan`, server
/// setting `[delta] scan`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ScanChoice {
    /// Both profiles, eager and steady, the smallest delta kept (a match search and a
    /// fast zstd pass per profile)
    #[default]
    Auto,
    /// Only the eager profile: leaves the alignment it follows for an exact match more
    /// than 4 bytes better
    Eager,
    /// Only the steady profile: leaves it only for an exact match more than 6 bytes
    /// better
    Steady,
}

impl ScanChoice {
    /// The one profile to use, or `None` for all of them ([`BuildOptions::scan`]).
    pub fn profile(self) -> Option<ScanProfile> {
        match self {
            ScanChoice::Auto => None,
            ScanChoice::Eager => Some(ScanProfile::Eager),
            ScanChoice::Steady => Some(ScanProfile::Steady),
        }
    }
}

/// Tuning of a build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Most bytes of old window or of new part in memory at once; peak memory is about
    /// seven times this (see `chunking`).
    pub window_cap: u64,
    /// Worker threads for match search and compression.
    pub threads: usize,
    /// zstd level of all streams.
    pub level: i32,
    /// Most target bytes per segment, at most `SEGMENT_MAX_TARGET` (the default).
    /// Smaller segments lower the agent's memory and cost some compression.
    pub segment_len: u32,
    /// Which executable-aware transforms to try.
    pub transform: TransformChoice,
    /// The delta is shipped only when it is at least this many percent smaller than the
    /// full image compressed (a delta needs the exact old image on the vehicle and costs
    /// more to apply, so a saving too small to matter ships the full image); values
    /// above 90 count as 90.
    pub min_saving_percent: u8,
    /// Whether a segment may carry its streams as LZMA2 where that is smaller
    /// (algorithm 4). Off, the container is algorithm 1 or 3, which agents built
    /// before algorithm 4 can apply.
    pub lzma: bool,
    /// The match scan's profile; `None` (the default) tries every one of
    /// [`SCAN_PROFILES`] and keeps the smallest delta, which costs a match search and a
    /// zstd pass per profile.
    pub scan: Option<ScanProfile>,
    /// Whether a small delta may ship as one LZMA2 stream instead of segments
    /// (algorithm 5, needs `lzma`) where that is smaller. Off, agents built before
    /// algorithm 5 can apply every delta.
    pub one_stream: bool,
    /// Whether [`TransformChoice::Auto`] delta-codes an ELF unwind table it finds in the
    /// new image (transform ids 3-5). Off, agents built before those ids can apply
    /// every delta `Auto` builds.
    pub eh_table: bool,
    /// Whether the container leaves the source and target SHA-256 to the signed metadata
    /// that names it (format version 2, a 28-byte header instead of 92). The applier
    /// must then be given both (the agent has them from the director's delta entry and
    /// the targets entry). Off (the library's and the CLI's default), the container is
    /// self-describing (version 1), which agents built before version 2 can apply.
    pub detached_digests: bool,
}

/// Transforms [`TransformChoice::Auto`] tries when `detect` finds their code. Decided on
/// the `tune` half of `tests/delta-corpus` (docs/delta-bench.txt, 2026-12-01 transform
/// section): ARM64 won on 3 of 7 bsdiff-shipped tune pairs (−2.4% to −20%) and on the
/// two that ship the full image; x86-64 won on 1 of 4 tune pairs by 0.8% and lost up to
/// 22% on the others, so it is not worth more diffs by default.
const AUTO_TRANSFORMS: &[Transform] = &[Transform::Arm64];

/// Which executable-aware transforms a build tries besides the plain delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransformChoice {
    /// The one `detect` finds in the new image, if it is one of the transforms worth
    /// trying by default (ARM64; see `AUTO_TRANSFORMS`), with the ELF unwind table
    /// delta-coded when the new image has one (`Transform::EhTable` alone if no code
    /// transform is tried, and as well as the code transform with the table if one is).
    /// The default.
    Auto,
    /// None: plain deltas only.
    Off,
    /// This one, whatever the images hold.
    Try(Transform),
}

impl BuildOptions {
    /// The zstd level candidate bodies are compared at: `COMPARE_LEVEL`, or the build's
    /// level when lower.
    pub fn compare_level(&self) -> i32 {
        self.level.min(COMPARE_LEVEL)
    }

    /// Length of the container header these options write.
    pub fn header_len(&self) -> usize {
        if self.detached_digests {
            HEADER_LEN_DETACHED
        } else {
            HEADER_LEN
        }
    }

    /// The header of a container for these options: digests embedded or detached.
    fn header(
        &self,
        algorithm: Algorithm,
        source: (u64, [u8; 32]),
        target: (u64, [u8; 32]),
    ) -> ContainerHeader {
        ContainerHeader {
            algorithm,
            source_len: source.0,
            target_len: target.0,
            digests: (!self.detached_digests).then_some(ImageDigests {
                source: source.1,
                target: target.1,
            }),
        }
    }
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            window_cap: DEFAULT_WINDOW_CAP,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            level: 19,
            segment_len: SEGMENT_MAX_TARGET,
            transform: TransformChoice::Auto,
            min_saving_percent: DEFAULT_MIN_SAVING_PERCENT,
            lzma: true,
            scan: None,
            one_stream: true,
            eh_table: true,
            detached_digests: false,
        }
    }
}

/// Whether a delta container of `delta_len` bytes is worth shipping instead of the full
/// image's of `full_len`: at least `min_saving_percent` (at most 90) smaller.
pub fn delta_worth_shipping(delta_len: u64, full_len: u64, min_saving_percent: u8) -> bool {
    let keep = 100 - u128::from(min_saving_percent.min(*MIN_SAVING_PERCENT.end()));
    u128::from(delta_len) * 100 <= u128::from(full_len) * keep
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("reading the {which} image failed")]
    ReadImage {
        which: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the {which} image is {len} bytes, over the container cap of {cap}")]
    ImageTooLarge {
        which: &'static str,
        len: u64,
        cap: u64,
    },
    #[error("zstd compression failed")]
    Compress(#[source] io::Error),
    #[error("writing the container failed")]
    Write(#[source] io::Error),
    /// Reading back a body this build wrote, to code it in full (the build's zstd level,
    /// LZMA2 streams), failed (an I/O error on the temporary file, or a body that does
    /// not decode as written).
    #[error("coding the kept delta body in full failed: {0}")]
    Recode(String),
    #[error("the build worker did not finish (panicked or cancelled)")]
    WorkerFailed,
}

/// What a build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    /// What was shipped: the delta, or the full image when the delta was not worth it.
    pub algorithm: Algorithm,
    /// Size of the written container.
    pub container_len: u64,
    /// Size of the delta container, whether or not it was shipped: the candidate kept
    /// (see `candidates`), in its full coding (the build's zstd level, and LZMA2 streams
    /// where smaller when LZMA2 is on; as one stream, algorithm 5, where that is smaller).
    pub delta_container_len: u64,
    /// Size of the smallest plain (untransformed) delta container over the scan
    /// profiles tried. When more than one body was built (several profiles, or a
    /// transform), this and the transformed size are compared sizes, with zstd streams
    /// only at `BuildOptions::compare_level`: the smallest is kept, or, when the runner-up
    /// compared close, whichever of the two codes smaller in full (`candidates`), so the
    /// delta shipped need not be the smaller of these two. With one body it is that
    /// body's final size in segments (before any one-stream rewrite).
    pub plain_delta_len: u64,
    /// The transform tried whose delta container was the smallest over the scan profiles
    /// (the first of equally small ones when several were tried) and that size, kept or
    /// not (see `plain_delta_len`).
    pub transformed: Option<(Transform, u64)>,
    /// The match scan's profile of the delta kept.
    pub scan: ScanProfile,
    /// Every body compared, in the order built, with its compared container size (zstd
    /// streams only, at `BuildOptions::compare_level`) and, for the two coded in full
    /// when they compared close, their coded size: empty when there was only one to
    /// build.
    pub candidates: Vec<CandidateSize>,
    /// Size of the full-image container, when it was computed.
    pub full_container_len: Option<u64>,
    pub source_len: u64,
    pub target_len: u64,
    /// SHA-256 of the source (old) and target (new) images: what an applier must be
    /// given for a container with detached digests ([`BuildOptions::detached_digests`]).
    pub digests: ImageDigests,
    /// How many parts the images were split into (1 unless over the window cap).
    pub parts: usize,
    /// Body segments (1 for a one-stream body, algorithm 5).
    pub segments: usize,
}

/// One delta body a build compared (see [`BuildReport::candidates`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CandidateSize {
    pub scan: ScanProfile,
    pub transform: Option<Transform>,
    /// Its container size with zstd streams only, at level `COMPARE_LEVEL` (or the
    /// build's level, when lower): what the bodies are compared on.
    pub delta_len: u64,
    /// Its container size in the build's full coding, for the two smallest when both
    /// were coded in full (the runner-up compared within `FINALIST_MARGIN_BASIS_POINTS` of
    /// the smallest); `None` otherwise.
    pub coded_len: Option<u64>,
}

/// A body's scan profile and transform.
type Candidate = (ScanProfile, Option<Transform>);
/// A compared body kept: what it is, its stats, and the file it was written to (`None`:
/// written straight to the sink in its final coding).
type Finalist = (Candidate, BodyStats, Option<std::fs::File>);

/// Builds a container from in-memory images.
pub fn build_delta(
    old: &[u8],
    new: &[u8],
    options: &BuildOptions,
) -> Result<(Vec<u8>, BuildReport), BuildError> {
    let mut sink = io::Cursor::new(Vec::new());
    let report = build_into(old, new, options, &mut sink)?;
    Ok((sink.into_inner(), report))
}

/// Builds a container from image files into `out`. The container is written to a
/// temporary file next to `out` and renamed only when complete, so `out` never holds a
/// partial container.
pub fn build_delta_file(
    old: &Path,
    new: &Path,
    out: &Path,
    options: &BuildOptions,
) -> Result<BuildReport, BuildError> {
    let read_err = |which| move |source| BuildError::ReadImage { which, source };
    let old = FileImage::open(old).map_err(read_err("old"))?;
    let new = FileImage::open(new).map_err(read_err("new"))?;
    let dir = match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(BuildError::Write)?;
    let report = build_into(&old, &new, options, temp.as_file_mut())?;
    temp.as_file().sync_all().map_err(BuildError::Write)?;
    temp.persist(out).map_err(|e| BuildError::Write(e.error))?;
    Ok(report)
}

/// A container destination that can be started over (for the full-image fallback).
trait ContainerSink: Read + Write + Seek {
    fn start_over(&mut self) -> io::Result<()>;
}

impl ContainerSink for io::Cursor<Vec<u8>> {
    fn start_over(&mut self) -> io::Result<()> {
        self.get_mut().clear();
        self.set_position(0);
        Ok(())
    }
}

impl ContainerSink for std::fs::File {
    fn start_over(&mut self) -> io::Result<()> {
        self.set_len(0)?;
        self.seek(SeekFrom::Start(0)).map(|_| ())
    }
}

/// What the side thread computes while the main thread diffs.
struct ImageFacts {
    old_sha256: [u8; 32],
    new_sha256: [u8; 32],
    /// Level-3 compressed size of the new image plus the header: a quick upper bound
    /// on the full-image container.
    fast_full_len: u64,
}

fn build_into<S: ContainerSink>(
    old: &(impl ImageSource + ?Sized),
    new: &(impl ImageSource + ?Sized),
    options: &BuildOptions,
    sink: &mut S,
) -> Result<BuildReport, BuildError> {
    for (which, len) in [("old", old.len()), ("new", new.len())] {
        if len > MAX_IMAGE_LEN {
            return Err(BuildError::ImageTooLarge {
                which,
                len,
                cap: MAX_IMAGE_LEN,
            });
        }
    }
    let options = BuildOptions {
        // The suffix array indexes with 32-bit signed offsets.
        window_cap: options.window_cap.clamp(1, suffix_array::MAX_LENGTH as u64),
        threads: options.threads.clamp(1, MAX_THREADS),
        level: options.level,
        segment_len: options.segment_len.clamp(1, SEGMENT_MAX_TARGET),
        transform: options.transform,
        // Capped at 90 by `delta_worth_shipping`.
        min_saving_percent: options.min_saving_percent,
        lzma: options.lzma,
        scan: options.scan,
        one_stream: options.one_stream,
        eh_table: options.eh_table,
        detached_digests: options.detached_digests,
    };
    let detected = detect_transform(new).map_err(|source| BuildError::ReadImage {
        which: "new",
        source,
    })?;
    let transforms: Vec<Transform> = match options.transform {
        TransformChoice::Off => Vec::new(),
        TransformChoice::Try(transform) => vec![transform],
        TransformChoice::Auto => {
            let code = detected.filter(|found| AUTO_TRANSFORMS.contains(found));
            // With an unwind table in the new image, the table is delta-coded too (with
            // the code transform, if any): smaller on every ELF pair of both halves
            // (docs/delta-bench.txt, 2026-12-03 session 23). With a code transform the
            // table alone is a candidate too: smaller on five ARM64 pairs, larger on none
            // (session 24).
            let table = options.eh_table
                && transformed(new, Transform::EhTable, "new")?
                    .span()
                    .is_some();
            match (code, table) {
                (Some(code), true) => vec![Transform::EhTable, code.with_table()],
                (None, true) => vec![Transform::EhTable],
                (Some(code), false) => vec![code],
                (None, false) => Vec::new(),
            }
        }
    };
    let diff_model = match detected {
        Some(Transform::Arm64) => ARM64_DIFF_MODEL,
        _ => DIFF_MODEL,
    };
    // Candidates: every scan profile (`SCAN_PROFILES`, or the one asked for), over the
    // plain images and, with a transform to try, over the transformed ones; a tie keeps
    // the earlier (plain before transformed, in `transforms` order, `Eager` before
    // `Steady`). With more than one,
    // every body is first built with zstd streams only at `COMPARE_LEVEL` and compared,
    // and only the smallest, and the runner-up when it compared within
    // `FINALIST_MARGIN_BASIS_POINTS` of it, are coded in full (the build's level, LZMA2):
    // LZMA2 is most of the build time, and the zstd sizes rank candidates far apart as
    // LZMA2 does, but not always close ones (docs/delta-bench.txt, sessions 14, 18, 20).
    let scans: Vec<ScanProfile> = match options.scan {
        Some(only) => vec![only],
        None => SCAN_PROFILES.to_vec(),
    };
    let candidates: Vec<(ScanProfile, Option<Transform>)> = std::iter::once(None)
        .chain(transforms.iter().map(|&t| Some(t)))
        .flat_map(|t| scans.iter().map(move |&scan| (scan, t)))
        .collect();
    let compare = if candidates.len() == 1 {
        options.clone()
    } else {
        BuildOptions {
            lzma: false,
            level: options.compare_level(),
            ..options.clone()
        }
    };
    // Whether coding a compared body in full changes it (LZMA2, or a higher zstd level).
    let header_len = options.header_len();
    let full_coding_differs = options.lzma || compare.level != options.level;
    // The old and new images under each transform tried.
    let images = transforms
        .iter()
        .map(|&t| Ok((t, transformed(old, t, "old")?, transformed(new, t, "new")?)))
        .collect::<Result<Vec<_>, BuildError>>()?;
    let images_for = |t: Option<Transform>| {
        t.and_then(|t| images.iter().find(|(tried, _, _)| *tried == t))
            .map(|(_, old_t, new_t)| (old_t, new_t))
    };
    // All the bodies over one pair of images (plain or transformed), one per profile,
    // built from one index of each old window.
    let build_bodies = |t: Option<Transform>, outs: &mut [&mut dyn Write]| match images_for(t) {
        Some((old_t, new_t)) => {
            write_delta_bodies(old_t, new_t, &compare, &scans, diff_model, outs)
        }
        None => write_delta_bodies(old, new, &compare, &scans, diff_model, outs),
    };
    let (facts, kept) = std::thread::scope(|scope| {
        let side = scope.spawn(|| image_facts(old, new, header_len));
        let kept = if candidates.len() == 1 {
            // One candidate goes straight to the sink, in its final coding.
            sink.write_all(&vec![0u8; header_len])
                .map_err(BuildError::Write)
                .and_then(|()| build_bodies(candidates[0].1, &mut [&mut *sink]))
                .and_then(|mut bodies| bodies.pop().ok_or(BuildError::WorkerFailed))
                .map(|body| (vec![(candidates[0], body, None)], Vec::new()))
        } else {
            // Compared bodies are written to temporary files; the two smallest are kept
            // (a tie keeps the earlier).
            let mut kept: Vec<Finalist> = Vec::with_capacity(3);
            let mut sizes = Vec::with_capacity(candidates.len());
            let mut result = Ok(());
            for t in candidates.chunks(scans.len()).map(|chunk| chunk[0].1) {
                let built = scans
                    .iter()
                    .map(|_| tempfile::tempfile())
                    .collect::<io::Result<Vec<_>>>()
                    .map_err(BuildError::Write)
                    .and_then(|mut files| {
                        let mut outs: Vec<&mut dyn Write> =
                            files.iter_mut().map(|f| f as &mut dyn Write).collect();
                        let bodies = build_bodies(t, &mut outs)?;
                        Ok(bodies.into_iter().zip(files).collect::<Vec<_>>())
                    });
                match built {
                    Ok(bodies) => {
                        for (&scan, (body, file)) in scans.iter().zip(bodies) {
                            sizes.push(CandidateSize {
                                scan,
                                transform: t,
                                delta_len: header_len as u64 + body.len,
                                coded_len: None,
                            });
                            let at = kept.partition_point(|(_, kept, _)| kept.len <= body.len);
                            kept.insert(at, ((scan, t), body, Some(file)));
                            kept.truncate(2);
                        }
                    }
                    Err(err) => {
                        result = Err(err);
                        break;
                    }
                }
            }
            result.and_then(|()| {
                // The runner-up is coded in full too when it compared close to the
                // smallest and the full coding differs from the compared one.
                match kept.as_slice() {
                    [] => return Err(BuildError::WorkerFailed),
                    [(_, first, _), (_, second, _)]
                        if full_coding_differs
                            && runner_up_is_close(
                                header_len as u64 + first.len,
                                header_len as u64 + second.len,
                            ) => {}
                    _ => kept.truncate(1),
                }
                Ok((kept, sizes))
            })
        };
        let facts = side.join().map_err(|_| BuildError::WorkerFailed);
        (facts, kept)
    });
    let facts = facts??;
    let (finalists, mut candidate_sizes) = kept?;
    // The kept bodies coded in full (a body written straight to the sink already is).
    // `threads`: the worker threads this coding may use (two finalists are coded at once,
    // each on its share).
    let code_fully = |(candidate, body, file): Finalist,
                      threads: usize,
                      out: &mut dyn Write|
     -> Result<(Candidate, BodyStats), BuildError> {
        let Some(mut file) = file else {
            return Ok((candidate, body));
        };
        file.seek(SeekFrom::Start(0)).map_err(BuildError::Write)?;
        let mut reader = io::BufReader::new(file.take(body.len));
        let mut out = out;
        if !full_coding_differs {
            copy_exact(&mut reader, &mut out, body.len)?;
            return Ok((candidate, body));
        }
        let level = compare.level;
        // Each segment's streams are coded alone, so the thread count changes the time
        // and the segments held at once, and the coded bytes only where a long diff
        // stream gets threads to itself (`lzma2::max_diff_parts`: coded in parts).
        let options = BuildOptions {
            threads,
            ..options.clone()
        };
        let recoded = match images_for(candidate.1) {
            Some((old_t, _)) => recode_body(
                &mut reader,
                body.len,
                level,
                old_t,
                &options,
                diff_model,
                &mut out,
            )?,
            _ => recode_body(
                &mut reader,
                body.len,
                level,
                old,
                &options,
                diff_model,
                &mut out,
            )?,
        };
        let stats = BodyStats {
            parts: body.parts,
            ..recoded
        };
        Ok((candidate, stats))
    };
    let Shipped {
        candidate: (scan, chosen),
        stats: body,
        coded,
    } = ship_smaller_coding(finalists, header_len, options.threads, sink, code_fully)?;
    for (candidate, len) in coded {
        if let Some(size) = candidate_sizes
            .iter_mut()
            .find(|c| (c.scan, c.transform) == candidate)
        {
            size.coded_len = Some(len);
        }
    }
    let smallest = |want: Option<Transform>| {
        candidate_sizes
            .iter()
            .filter(|c| c.transform == want)
            .map(|c| c.delta_len)
            .min()
    };
    let plain_delta_len = smallest(None).unwrap_or(header_len as u64 + body.len);
    // The first of the smallest transformed candidates.
    let transformed = transforms
        .iter()
        .filter_map(|&t| Some((t, smallest(Some(t))?)))
        .min_by_key(|&(_, len)| len);
    let mut algorithm = Algorithm::bsdiff(chosen, body.lzma);
    let mut body = body;
    // A small body is tried as one stream (algorithm 5) and shipped so when smaller.
    if options.lzma && options.one_stream && body.len <= ONE_STREAM_MAX_BODY {
        let mut shipped = vec![0u8; body.len as usize];
        sink.seek(SeekFrom::Start(header_len as u64))
            .and_then(|_| sink.read_exact(&mut shipped))
            .map_err(BuildError::Write)?;
        let one = match images_for(chosen) {
            Some((old_t, _)) => one_stream_body(&shipped, old_t, new.len()),
            _ => one_stream_body(&shipped, old, new.len()),
        }
        // Only a smaller coding of a body already built: where it fails, the segments
        // ship (and the failure is logged, as it means a defect).
        .unwrap_or_else(|err| {
            tracing::warn!(error = %err, "one-stream coding failed; shipping the segments");
            None
        });
        if let Some(one) = one.filter(|one| (one.len() as u64) < body.len) {
            sink.start_over()
                .and_then(|()| sink.write_all(&vec![0u8; header_len]))
                .and_then(|()| sink.write_all(&one))
                .map_err(BuildError::Write)?;
            algorithm = Algorithm::BsdiffOneStream(chosen);
            body.len = one.len() as u64;
            body.segments = 1;
        }
    }
    let delta_header = options.header(
        algorithm,
        (old.len(), facts.old_sha256),
        (new.len(), facts.new_sha256),
    );
    sink.seek(SeekFrom::Start(0)).map_err(BuildError::Write)?;
    sink.write_all(&delta_header.encode())
        .map_err(BuildError::Write)?;
    sink.seek(SeekFrom::End(0)).map_err(BuildError::Write)?;
    let delta_container_len = header_len as u64 + body.len;
    let mut report = BuildReport {
        algorithm,
        container_len: delta_container_len,
        delta_container_len,
        plain_delta_len,
        transformed,
        scan,
        candidates: candidate_sizes,
        full_container_len: None,
        source_len: old.len(),
        target_len: new.len(),
        digests: ImageDigests {
            source: facts.old_sha256,
            target: facts.new_sha256,
        },
        parts: body.parts,
        segments: body.segments,
    };
    // The level-19 full image is at least LEVEL19_MIN_PERCENT_OF_LEVEL3 of the level-3 one.
    let level19_floor = facts.fast_full_len * LEVEL19_MIN_PERCENT_OF_LEVEL3 / 100;
    if delta_worth_shipping(
        delta_container_len,
        level19_floor,
        options.min_saving_percent,
    ) {
        return Ok(report);
    }
    let mut full = tempfile::tempfile().map_err(BuildError::Write)?;
    let full_len = write_full_container(new, facts.new_sha256, &options, &mut full)?;
    report.full_container_len = Some(full_len);
    if !delta_worth_shipping(delta_container_len, full_len, options.min_saving_percent) {
        sink.start_over().map_err(BuildError::Write)?;
        full.seek(SeekFrom::Start(0)).map_err(BuildError::Write)?;
        io::copy(&mut full, sink).map_err(BuildError::Write)?;
        report.algorithm = Algorithm::FullZstd;
        report.container_len = full_len;
    }
    sink.flush().map_err(BuildError::Write)?;
    Ok(report)
}

/// Whether a runner-up whose compared container is `second` bytes is coded in full
/// beside the smallest, `first` bytes: within `FINALIST_MARGIN_BASIS_POINTS` of it.
fn runner_up_is_close(first: u64, second: u64) -> bool {
    u128::from(second) * 10_000
        <= u128::from(first) * (10_000 + u128::from(FINALIST_MARGIN_BASIS_POINTS))
}

/// Codes the kept bodies (the smallest compared first) in full with `code` and leaves
/// the smallest coding in `sink`, after room for the header: the first straight into
/// the sink, a second into a temporary file, copied over the first only when strictly
/// smaller (so a tie keeps the smaller compared). Returns the candidate shipped, its
/// stats, and, with two, both candidates' coded container sizes.
///
/// Two finalists are coded at the same time, each with half of the `threads` (the first
/// the larger half): a body's coding is bound by its longest job (the LZMA2 diff stream
/// of its largest segment, one thread), so coding them one after the other left a core
/// idle for most of each (docs/delta-bench.txt, session 26). With one thread they are
/// coded one after the other. Memory stays that of `threads` segments in all.
fn ship_smaller_coding<S: ContainerSink>(
    finalists: Vec<Finalist>,
    header_len: usize,
    threads: usize,
    sink: &mut S,
    code: impl Fn(Finalist, usize, &mut dyn Write) -> Result<(Candidate, BodyStats), BuildError> + Sync,
) -> Result<Shipped, BuildError> {
    let restart = |sink: &mut S| -> Result<(), BuildError> {
        sink.start_over().map_err(BuildError::Write)?;
        sink.write_all(&vec![0u8; header_len])
            .map_err(BuildError::Write)
    };
    let mut finalists = finalists.into_iter();
    let first = finalists.next().ok_or(BuildError::WorkerFailed)?;
    // A body written to a file was compared; one not is in the sink, coded in full.
    if first.2.is_some() {
        restart(sink)?;
    }
    let Some(second) = finalists.next() else {
        let (candidate, stats) = code(first, threads, &mut *sink)?;
        return Ok(Shipped {
            candidate,
            stats,
            coded: Vec::new(),
        });
    };
    let mut file = tempfile::tempfile().map_err(BuildError::Write)?;
    let code_second = |file: &mut std::fs::File, threads: usize| code(second, threads, file);
    let (first_coded, second_coded) = if threads >= 2 {
        let second_threads = threads / 2;
        std::thread::scope(|scope| {
            let other = scope.spawn(|| code_second(&mut file, second_threads));
            let first_coded = code(first, threads - second_threads, &mut *sink);
            let second_coded = other.join().unwrap_or(Err(BuildError::WorkerFailed));
            (first_coded, second_coded)
        })
    } else {
        let first_coded = code(first, threads, &mut *sink);
        (first_coded, code_second(&mut file, threads))
    };
    let (mut shipped, mut stats) = first_coded?;
    let (other, other_stats) = second_coded?;
    let coded = vec![
        (shipped, header_len as u64 + stats.len),
        (other, header_len as u64 + other_stats.len),
    ];
    if other_stats.len < stats.len {
        restart(sink)?;
        file.seek(SeekFrom::Start(0)).map_err(BuildError::Write)?;
        copy_exact(&mut file, sink, other_stats.len)?;
        (shipped, stats) = (other, other_stats);
    }
    Ok(Shipped {
        candidate: shipped,
        stats,
        coded,
    })
}

/// What `ship_smaller_coding` left in the sink.
struct Shipped {
    candidate: Candidate,
    stats: BodyStats,
    /// With two finalists, each one's container size coded in full.
    coded: Vec<(Candidate, u64)>,
}

/// Copies exactly `len` bytes.
fn copy_exact(
    from: &mut impl Read,
    to: &mut (impl Write + ?Sized),
    len: u64,
) -> Result<(), BuildError> {
    let copied = io::copy(&mut from.take(len), to).map_err(BuildError::Write)?;
    if copied != len {
        return Err(BuildError::Write(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(())
}

fn image_facts(
    old: &(impl ImageSource + ?Sized),
    new: &(impl ImageSource + ?Sized),
    header_len: usize,
) -> Result<ImageFacts, BuildError> {
    let old_sha256 = old.sha256().map_err(|source| BuildError::ReadImage {
        which: "old",
        source,
    })?;
    let new_sha256 = new.sha256().map_err(|source| BuildError::ReadImage {
        which: "new",
        source,
    })?;
    let mut counter = CountingWriter(0);
    compress_image_stream(new, 3, 0, &mut counter)?;
    Ok(ImageFacts {
        old_sha256,
        new_sha256,
        fast_full_len: header_len as u64 + counter.0,
    })
}

/// Writes the full-image container and returns its length.
fn write_full_container(
    new: &(impl ImageSource + ?Sized),
    new_sha256: [u8; 32],
    options: &BuildOptions,
    out: &mut impl Write,
) -> Result<u64, BuildError> {
    let header = options.header(Algorithm::FullZstd, (0, [0; 32]), (new.len(), new_sha256));
    let mut counter = CountingWriter(0);
    let mut tee = Tee {
        out,
        counter: &mut counter,
    };
    tee.write_all(&header.encode()).map_err(BuildError::Write)?;
    compress_image_stream(new, options.level, options.threads, &mut tee)?;
    Ok(counter.0)
}

/// zstd stream of a whole image with a window the agent accepts; `workers` > 0 uses
/// zstd's own multithreading.
fn compress_image_stream(
    image: &(impl ImageSource + ?Sized),
    level: i32,
    workers: usize,
    out: &mut impl Write,
) -> Result<(), BuildError> {
    let mut encoder = zstd::stream::Encoder::new(out, level).map_err(BuildError::Compress)?;
    encoder
        .window_log(STREAM_WINDOW_LOG)
        .map_err(BuildError::Compress)?;
    encoder
        .include_checksum(true)
        .map_err(BuildError::Compress)?;
    encoder
        .set_pledged_src_size(Some(image.len()))
        .map_err(BuildError::Compress)?;
    if workers > 1 {
        encoder
            .multithread(workers as u32)
            .map_err(BuildError::Compress)?;
    }
    let mut start = 0;
    while start < image.len() {
        let end = (start + (8 << 20)).min(image.len());
        let bytes = image
            .read_range(start..end)
            .map_err(|source| BuildError::ReadImage {
                which: "new",
                source,
            })?;
        encoder.write_all(&bytes).map_err(BuildError::Write)?;
        start = end;
    }
    encoder.finish().map_err(BuildError::Compress)?;
    Ok(())
}

struct BodyStats {
    len: u64,
    parts: usize,
    segments: usize,
    /// Whether any segment carries an LZMA2 stream.
    lzma: bool,
}

/// One delta body, with scan profile `scan` (`write_delta_bodies` for one profile; the
/// tests' way to build a body).
#[cfg(test)]
fn write_delta_body(
    old: &(impl ImageSource + ?Sized),
    new: &(impl ImageSource + ?Sized),
    options: &BuildOptions,
    scan: ScanProfile,
    diff_model: LzmaModel,
    out: &mut impl Write,
) -> Result<BodyStats, BuildError> {
    let mut outs: [&mut dyn Write; 1] = [out];
    let mut stats = write_delta_bodies(old, new, options, &[scan], diff_model, &mut outs)?;
    stats.pop().ok_or(BuildError::WorkerFailed)
}

/// One delta body per scan profile in `scans`, the body for `scans[i]` written to
/// `outs[i]` (as many as `scans`). Per part, the old window is read and indexed once and
/// every profile's matches are searched in that index; the index is dropped before the
/// segments are encoded, so peak memory is that of one body plus the other profiles'
/// match lists (24 bytes per match).
fn write_delta_bodies(
    old: &(impl ImageSource + ?Sized),
    new: &(impl ImageSource + ?Sized),
    options: &BuildOptions,
    scans: &[ScanProfile],
    diff_model: LzmaModel,
    outs: &mut [&mut dyn Write],
) -> Result<Vec<BodyStats>, BuildError> {
    debug_assert_eq!(scans.len(), outs.len());
    let parts = plan_parts(old.len(), new.len(), options.window_cap);
    let mut stats: Vec<BodyStats> = scans
        .iter()
        .map(|_| BodyStats {
            len: 0,
            parts: parts.len(),
            segments: 0,
            lzma: false,
        })
        .collect();
    // Each body's old cursor runs across its segments and parts: seeks are relative to it.
    let mut cursors = vec![0u64; scans.len()];
    for part in parts {
        let old_window =
            old.read_range(part.old.clone())
                .map_err(|source| BuildError::ReadImage {
                    which: "old",
                    source,
                })?;
        let new_part =
            new.read_range(part.new.clone())
                .map_err(|source| BuildError::ReadImage {
                    which: "new",
                    source,
                })?;
        let all_matches = diff_part(&old_window, &new_part, options.threads, scans);
        for (((matches, out), cursor), stats) in all_matches
            .into_iter()
            .zip(outs.iter_mut())
            .zip(cursors.iter_mut())
            .zip(stats.iter_mut())
        {
            let segments = plan_segments(&matches, part.old.start, options.segment_len, cursor);
            drop(matches);
            let encoded = encode_segments(
                segments,
                &old_window,
                part.old.start,
                &new_part,
                options,
                diff_model,
            )?;
            stats.segments += encoded.len();
            for segment in encoded {
                stats.lzma |= segment.header.uses_lzma();
                stats.len += write_segment(&segment, out)?;
            }
        }
    }
    Ok(stats)
}

/// Matches of a whole new part against its old window, one list per scan profile in
/// `scans`, all searched in one index of the old window, in parallel slices.
fn diff_part(old: &[u8], new: &[u8], threads: usize, scans: &[ScanProfile]) -> Vec<Vec<Match>> {
    let old_index = OldIndex::build(old, threads);
    // Several slices per thread balance the load; slices of at least 256 KiB keep the
    // matches lost at slice edges negligible.
    let slice_len = (new.len() / (threads * 8)).max(256 << 10);
    let slices: Vec<Range<usize>> = (0..new.len())
        .step_by(slice_len)
        .map(|start| start..(start + slice_len).min(new.len()))
        .collect();
    // Each slice job scans with every profile, sharing its lookups (`find_matches_each`).
    let per_slice = run_jobs(threads, slices.len(), |index| {
        let new = &new[slices[index].clone()];
        find_matches_each(old, &old_index, new, scans)
            .into_iter()
            .map(|found| {
                let found = prune_weak_matches(found, old, new);
                cover_literal_gaps(found, old, new)
            })
            .collect::<Vec<_>>()
    });
    let mut all: Vec<Vec<Match>> = vec![Vec::new(); scans.len()];
    for slice in per_slice {
        let slice = slice.unwrap_or_else(|| vec![Vec::new(); scans.len()]);
        for (matches, found) in all.iter_mut().zip(slice) {
            matches.extend(found);
        }
    }
    all
}

/// Runs `job(0..count)` on up to `threads` scoped threads, each taking the next index
/// until none is left, and returns the results in index order; `None` for a job that
/// panicked (its callers turn that into `BuildError::WorkerFailed`/`Compress`, or, for a
/// match-search slice, no matches: its bytes coded as literals).
fn run_jobs<T: Send>(
    threads: usize,
    count: usize,
    job: impl Fn(usize) -> T + Sync,
) -> Vec<Option<T>> {
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<T>>> = (0..count).map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads.min(count) {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    break;
                }
                // A job that panics leaves its slot empty; the thread goes on to the
                // next job (so the scope does not re-raise the panic).
                let Ok(result) = panic::catch_unwind(AssertUnwindSafe(|| job(index))) else {
                    continue;
                };
                if let Ok(mut slot) = results[index].lock() {
                    *slot = Some(result);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|slot| slot.into_inner().ok().flatten())
        .collect()
}

/// Control entries of one segment, with where its target bytes start in the new part.
#[derive(Debug)]
struct SegmentPlan {
    new_start: usize,
    /// (old offset relative to the window, diff length, extra length) of each entry.
    entries: Vec<(u64, u32, u32)>,
    wire: Vec<Control>,
    diff_len: u32,
    extra_len: u32,
}

impl SegmentPlan {
    fn new(new_start: usize) -> Self {
        SegmentPlan {
            new_start,
            entries: Vec::new(),
            wire: Vec::new(),
            diff_len: 0,
            extra_len: 0,
        }
    }

    fn target_len(&self) -> u32 {
        self.diff_len + self.extra_len
    }

    fn is_full(&self, segment_len: u32) -> bool {
        self.target_len() >= segment_len || self.entries.len() == MAX_ENTRIES_PER_SEGMENT
    }
}

/// Cuts matches into segments within the caps, splitting a match that straddles a
/// segment edge. `cursor` is the absolute old cursor, carried across parts.
fn plan_segments(
    matches: &[Match],
    old_base: u64,
    segment_len: u32,
    cursor: &mut u64,
) -> Vec<SegmentPlan> {
    let mut segments = Vec::new();
    let mut current = SegmentPlan::new(0);
    let mut new_pos = 0usize;
    for m in matches {
        let (mut old_at, mut diff, mut extra) = (m.old_start, m.diff_len, m.extra_len);
        while diff > 0 || extra > 0 {
            if current.is_full(segment_len) {
                segments.push(std::mem::replace(&mut current, SegmentPlan::new(new_pos)));
            }
            let room = u64::from(segment_len - current.target_len());
            let take_diff = diff.min(room);
            let take_extra = extra.min(room - take_diff);
            // An entry without diff bytes does not read old bytes: keep the cursor put.
            let absolute = if take_diff > 0 {
                old_base + old_at
            } else {
                *cursor
            };
            current.push(
                (old_at, take_diff as u32, take_extra as u32),
                Control {
                    seek: absolute as i64 - *cursor as i64,
                    diff_len: take_diff as u32,
                    extra_len: take_extra as u32,
                },
            );
            *cursor = absolute + take_diff;
            old_at += take_diff;
            diff -= take_diff;
            extra -= take_extra;
            new_pos += (take_diff + take_extra) as usize;
        }
    }
    if !current.entries.is_empty() {
        segments.push(current);
    }
    segments
}

struct EncodedSegment {
    header: SegmentHeader,
    /// The four frames in wire order: control, extra, runs, codes.
    frames: [Vec<u8>; 4],
}

#[derive(Clone, Copy)]
enum StreamKind {
    Control,
    Extra,
    Runs,
    Codes,
}

/// Compression jobs per segment after the four zstd frames (`STREAM_ORDER`): the diff
/// stream, the extra stream, the control block, the runs block and the codes as LZMA2.
const LZMA_DIFF_JOB: usize = 4;
const LZMA_EXTRA_JOB: usize = 5;
const LZMA_CONTROL_JOB: usize = 6;
const LZMA_RUNS_JOB: usize = 7;
const LZMA_CODES_JOB: usize = 8;
/// Jobs per segment.
const JOBS_PER_SEGMENT: usize = LZMA_CODES_JOB + 1;
/// The order the jobs of all segments are started in: the LZMA2 diff streams first (by
/// far the longest jobs: on a one-segment image the other jobs all fit beside it on the
/// other threads), the small control blocks last.
const JOB_START_ORDER: [usize; JOBS_PER_SEGMENT] = [
    LZMA_DIFF_JOB,
    LZMA_EXTRA_JOB,
    1, // zstd extra
    3, // zstd codes
    LZMA_CODES_JOB,
    2, // zstd runs
    LZMA_RUNS_JOB,
    0, // zstd control
    LZMA_CONTROL_JOB,
];

/// For the diff stream: the smallest measured (docs/delta-bench.txt, 2026-12-02 session
/// 13).
const DIFF_MODEL: LzmaModel = LzmaModel {
    lc: 3,
    lp: 0,
    pb: 2,
};
/// For the diff stream of an image holding ARM64 code: no position bits measured up to
/// 1.5% smaller on the ARM64 tune pairs' diff streams (0.26% larger on one,
/// crypto-43.0.3-44.0.3-arm64), and 0.6% larger on an x86-64 one (docs/delta-bench.txt,
/// 2026-12-02 sessions 13 and 14).
const ARM64_DIFF_MODEL: LzmaModel = LzmaModel {
    lc: 3,
    lp: 0,
    pb: 0,
};
/// For the extra stream, whatever the image, the ARM64 diff model (no position bits):
/// smaller on most tune pairs, at most 0.02% larger on the others (docs/delta-bench.txt,
/// 2026-12-02 sessions 13 and 14).
const EXTRA_MODEL: LzmaModel = ARM64_DIFF_MODEL;
/// For the control block (three columns of varints, no 4-byte structure): one bit of
/// literal context and no position bits were the smallest, or within 0.3% of it, on every
/// tune pair measured (docs/delta-bench.txt, 2026-12-02 session 14).
const CONTROL_MODEL: LzmaModel = LzmaModel {
    lc: 1,
    lp: 0,
    pb: 0,
};
/// For a runs block (two columns of escaped run lengths, like the control block's
/// varints): the control block's model was the smallest, or within 0.05% of it, on every
/// tune pair (docs/delta-bench.txt, 2026-12-02 session 16).
const RUNS_MODEL: LzmaModel = CONTROL_MODEL;
/// For the codes (the non-zero diff bytes, without the zeros that kept them aligned): no
/// position bits, and either no literal context (the smallest on 11 of 12 tune pairs) or
/// three bits of it (up to 0.6% smaller on segments of the shared corpus), whichever
/// codes the segment's codes smaller: an LZMA2 chunk carries its own properties, so the
/// applier needs no word of it (docs/delta-bench.txt, 2026-12-02 session 16).
const CODES_MODELS: [LzmaModel; 2] = [
    LzmaModel {
        lc: 0,
        lp: 0,
        pb: 0,
    },
    LzmaModel {
        lc: 3,
        lp: 0,
        pb: 0,
    },
];

/// For a one-stream body (control, extra, runs and codes in one LZMA2 stream), the
/// smallest of: the diff model, no position bits with three or one bits of literal
/// context, and no context at all.
pub(super) const ONE_STREAM_MODELS: [LzmaModel; 4] =
    [DIFF_MODEL, ARM64_DIFF_MODEL, CONTROL_MODEL, CODES_MODELS[0]];

/// `image` under `transform` (its unwind-table span located once).
fn transformed<'a, I: ImageSource + ?Sized>(
    image: &'a I,
    transform: Transform,
    which: &'static str,
) -> Result<TransformedImage<'a, I>, BuildError> {
    TransformedImage::new(image, transform)
        .map_err(|source| BuildError::ReadImage { which, source })
}

/// Wire order of a segment's frames.
const STREAM_ORDER: [StreamKind; 4] = [
    StreamKind::Control,
    StreamKind::Extra,
    StreamKind::Runs,
    StreamKind::Codes,
];

impl SegmentPlan {
    /// Where in the old window the extra frame's prefix starts, and its length: centred
    /// on the median old offset the segment's diff runs read, where literal bytes of a
    /// new release most likely resemble old bytes.
    fn extra_prefix(&self, window_len: usize) -> (usize, usize) {
        if self.extra_len == 0 {
            return (0, 0);
        }
        let len = window_len.min(EXTRA_PREFIX_LEN);
        let mut starts: Vec<u64> = self
            .entries
            .iter()
            .filter(|e| e.1 > 0)
            .map(|e| e.0)
            .collect();
        let centre = if starts.is_empty() {
            window_len / 2
        } else {
            let middle = starts.len() / 2;
            *starts.select_nth_unstable(middle).1 as usize
        };
        (centre.saturating_sub(len / 2).min(window_len - len), len)
    }

    /// Decoded streams of this segment, in wire order, and the diff length.
    fn raw_streams(&self, old_window: &[u8], new_part: &[u8]) -> [Vec<u8>; 4] {
        let mut diff = Vec::with_capacity(self.diff_len as usize);
        let mut extra = Vec::with_capacity(self.extra_len as usize);
        let mut at = self.new_start;
        for &(old_start, diff_len, extra_len) in &self.entries {
            let (old_start, diff_len, extra_len) =
                (old_start as usize, diff_len as usize, extra_len as usize);
            let olds = &old_window[old_start..old_start + diff_len];
            let news = &new_part[at..at + diff_len];
            diff.extend(news.iter().zip(olds).map(|(n, o)| n.wrapping_sub(*o)));
            at += diff_len;
            extra.extend_from_slice(&new_part[at..at + extra_len]);
            at += extra_len;
        }
        let (runs, codes) = if diff.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            encode_runs(&diff)
        };
        [encode_control_block(&self.wire), extra, runs, codes]
    }

    /// Splits the plan in two with the same entries (so the same seeks), or, for a
    /// single entry, by halving its diff run.
    fn split(self) -> (SegmentPlan, SegmentPlan) {
        let mut first = SegmentPlan::new(self.new_start);
        let mut second;
        if self.entries.len() >= 2 {
            let mid = self.entries.len() / 2;
            for (entry, wire) in self.entries[..mid].iter().zip(&self.wire[..mid]) {
                first.push(*entry, *wire);
            }
            second = SegmentPlan::new(self.new_start + first.target_len() as usize);
            for (entry, wire) in self.entries[mid..].iter().zip(&self.wire[mid..]) {
                second.push(*entry, *wire);
            }
        } else {
            let ((old, diff, extra), wire) = (self.entries[0], self.wire[0]);
            let half = diff / 2;
            first.push(
                (old, half, 0),
                Control {
                    seek: wire.seek,
                    diff_len: half,
                    extra_len: 0,
                },
            );
            second = SegmentPlan::new(self.new_start + half as usize);
            second.push(
                (old + u64::from(half), diff - half, extra),
                Control {
                    seek: 0,
                    diff_len: diff - half,
                    extra_len: extra,
                },
            );
        }
        (first, second)
    }

    fn push(&mut self, entry: (u64, u32, u32), wire: Control) {
        self.entries.push(entry);
        self.wire.push(wire);
        self.diff_len += entry.1;
        self.extra_len += entry.2;
    }
}

/// Raw streams of every segment (splitting segments whose runs block would pass its
/// cap), then all 9 × segments jobs (4 zstd frames, 5 LZMA2 streams) spread over the
/// worker threads.
fn encode_segments(
    segments: Vec<SegmentPlan>,
    old_window: &[u8],
    old_base: u64,
    new_part: &[u8],
    options: &BuildOptions,
    diff_model: LzmaModel,
) -> Result<Vec<EncodedSegment>, BuildError> {
    let mut pending: Vec<SegmentPlan> = segments.into_iter().rev().collect();
    let mut fitted: Vec<RawSegment> = Vec::new();
    while let Some(plan) = pending.pop() {
        let raw = plan.raw_streams(old_window, new_part);
        // Runs take at most about two bytes per diff byte, so halving terminates well
        // before a segment gets small.
        if raw[2].len() > SEGMENT_MAX_RUNS as usize {
            let (first, second) = plan.split();
            pending.push(second);
            pending.push(first);
            continue;
        }
        let (start, len) = plan.extra_prefix(old_window.len());
        fitted.push(RawSegment {
            diff_len: plan.diff_len,
            raw,
            prefix_start: if len > 0 { old_base + start as u64 } else { 0 },
            prefix: Cow::Borrowed(&old_window[start..start + len]),
        });
    }
    compress_segments(&fitted, None, options, diff_model)
}

/// A segment ready to be compressed: its decoded streams in wire order (control, extra,
/// runs, codes), its diff length, and the old bytes its extra frame is compressed
/// against, with their offset in the old image (0 and none for no prefix).
struct RawSegment<'a> {
    diff_len: u32,
    raw: [Vec<u8>; 4],
    prefix_start: u64,
    prefix: Cow<'a, [u8]>,
}

/// Every segment with each stream in its smallest coding (`keep_smaller_codings`): the
/// four zstd frames at `options.level` (or, given `frames`, those frames, one array per
/// segment, compressed no more) and, with `options.lzma`, the five LZMA2 streams of
/// `lzma_job`. All 9 × segments jobs are spread over the worker threads, started in
/// `JOB_START_ORDER`.
fn compress_segments(
    segments: &[RawSegment],
    frames: Option<Vec<[Vec<u8>; 4]>>,
    options: &BuildOptions,
    diff_model: LzmaModel,
) -> Result<Vec<EncodedSegment>, BuildError> {
    if frames
        .as_ref()
        .is_some_and(|frames| frames.len() != segments.len())
    {
        return Err(BuildError::WorkerFailed);
    }
    let compress_zstd = frames.is_none();
    let diff_lens: Vec<u32> = segments.iter().map(|segment| segment.diff_len).collect();
    let max_parts = max_diff_parts(diff_lens.iter().map(|&len| len as usize), options.threads);
    let jobs = segment_jobs(&diff_lens, max_parts, compress_zstd, options.lzma);
    let started = run_jobs(options.threads, jobs.len(), |index| {
        let (segment, kind, part) = jobs[index];
        let RawSegment { raw, prefix, .. } = &segments[segment];
        match STREAM_ORDER.get(kind) {
            Some(&stream) => compress_stream(&raw[kind], stream, prefix, options.level),
            None => lzma_job(
                kind,
                (part, max_parts),
                raw,
                segments[segment].diff_len,
                diff_model,
            ),
        }
    });
    // Back in (segment, job) order; a job not run leaves its coding empty.
    let mut by_segment: Vec<Vec<Option<io::Result<Vec<u8>>>>> = (0..segments.len())
        .map(|_| {
            (0..JOBS_PER_SEGMENT)
                .map(|_| Some(Ok(Vec::new())))
                .collect()
        })
        .collect();
    if let Some(frames) = frames {
        for (outputs, frames) in by_segment.iter_mut().zip(frames) {
            for (output, frame) in outputs.iter_mut().zip(frames) {
                *output = Some(Ok(frame));
            }
        }
    }
    // A diff stream's parts, in order, joined into its one LZMA2 stream.
    let mut diff_parts_of: Vec<Vec<Option<io::Result<Vec<u8>>>>> =
        (0..segments.len()).map(|_| Vec::new()).collect();
    for ((segment, kind, _), output) in jobs.into_iter().zip(started) {
        if kind == LZMA_DIFF_JOB {
            diff_parts_of[segment].push(output);
        } else {
            by_segment[segment][kind] = output;
        }
    }
    for (outputs, parts) in by_segment.iter_mut().zip(diff_parts_of) {
        if !parts.is_empty() {
            outputs[LZMA_DIFF_JOB] = Some(join_diff_parts(parts));
        }
    }
    let mut encoded = Vec::with_capacity(segments.len());
    for (segment, outputs) in segments.iter().zip(by_segment) {
        let mut outputs = outputs.into_iter().map(|output| {
            output
                .unwrap_or_else(|| Err(io::Error::other("compression worker did not finish")))
                .map_err(BuildError::Compress)
        });
        let mut next = || outputs.next().ok_or(BuildError::WorkerFailed)?;
        let frames = [next()?, next()?, next()?, next()?];
        let lzma = [next()?, next()?, next()?, next()?, next()?];
        let len = |bytes: &[u8]| bytes.len() as u32;
        let raw = &segment.raw;
        let header = SegmentHeader::for_streams(
            segment.diff_len,
            [len(&raw[0]), len(&raw[1]), len(&raw[2]), len(&raw[3])],
            [
                len(&frames[0]),
                len(&frames[1]),
                len(&frames[2]),
                len(&frames[3]),
            ],
            (segment.prefix_start, segment.prefix.len() as u32),
        );
        encoded.push(keep_smaller_codings(
            EncodedSegment { header, frames },
            lzma,
        ));
    }
    Ok(encoded)
}

/// The compression jobs of segments with these diff lengths, as (segment, job kind,
/// part), in the order they are started: `JOB_START_ORDER`, each kind for every segment
/// in turn; the zstd jobs only with `zstd`, the LZMA2 jobs only with `lzma`. A diff
/// stream's LZMA2 job is one job per part of `diff_parts` with at most `max_parts`
/// (one for an empty stream), in part order; every other job has part 0 only.
fn segment_jobs(
    diff_lens: &[u32],
    max_parts: usize,
    zstd: bool,
    lzma: bool,
) -> Vec<(usize, usize, usize)> {
    JOB_START_ORDER
        .iter()
        .filter(|&&kind| if kind < LZMA_DIFF_JOB { zstd } else { lzma })
        .flat_map(|&kind| {
            diff_lens
                .iter()
                .enumerate()
                .flat_map(move |(segment, &diff_len)| {
                    let parts = if kind == LZMA_DIFF_JOB {
                        diff_parts(diff_len as usize, max_parts).len().max(1)
                    } else {
                        1
                    };
                    (0..parts).map(move |part| (segment, kind, part))
                })
        })
        .collect()
}

/// LZMA2 job `kind` (`LZMA_DIFF_JOB` ..= `LZMA_CODES_JOB`) of a segment whose decoded
/// streams, in wire order (control, extra, runs, codes), are `raw`, with `diff_len` diff
/// bytes: the one place that says which stream each job codes with which literal
/// models, so a recoded body is byte-identical to a direct build. The diff stream's job
/// codes part `part` of its `diff_parts` with at most `max_parts` (`join_diff_parts`
/// joins them); the other jobs have part 0 only.
fn lzma_job(
    kind: usize,
    (part, max_parts): (usize, usize),
    raw: &[Vec<u8>; 4],
    diff_len: u32,
    diff_model: LzmaModel,
) -> io::Result<Vec<u8>> {
    let [control, extra, runs, codes] = raw;
    if kind != LZMA_DIFF_JOB && part != 0 {
        return Err(io::Error::other(format!(
            "no part {part} of LZMA2 job {kind}"
        )));
    }
    match kind {
        LZMA_DIFF_JOB => {
            let diff = diff_bytes(runs, codes, diff_len)?;
            if diff.is_empty() {
                return Ok(Vec::new());
            }
            let range = diff_parts(diff.len(), max_parts)
                .get(part)
                .cloned()
                .ok_or_else(|| io::Error::other(format!("no diff part {part}")))?;
            diff_part_stream(&diff, range, diff_model)
        }
        LZMA_EXTRA_JOB => lzma_stream(extra, EXTRA_MODEL),
        LZMA_CONTROL_JOB => lzma_stream(control, CONTROL_MODEL),
        LZMA_RUNS_JOB => lzma_stream(runs, RUNS_MODEL),
        LZMA_CODES_JOB => smallest_lzma_stream(codes, &CODES_MODELS),
        _ => Err(io::Error::other(format!("no LZMA2 job {kind}"))),
    }
}

/// A diff stream's LZMA2 parts (the outputs of its `lzma_job`s, in part order) as its one
/// stream: empty for an empty diff (one empty part), the first failure if any failed.
fn join_diff_parts(parts: Vec<Option<io::Result<Vec<u8>>>>) -> io::Result<Vec<u8>> {
    let parts = parts
        .into_iter()
        .map(|output| {
            output.unwrap_or_else(|| Err(io::Error::other("compression worker did not finish")))
        })
        .collect::<io::Result<Vec<_>>>()?;
    match parts.as_slice() {
        [only] if only.is_empty() => Ok(Vec::new()),
        _ => join_parts(parts),
    }
}

/// The segment with each of its streams in the smallest of its codings: the diff stream
/// as its zstd runs and codes frames, as one LZMA2 stream, or as its runs block and codes
/// each an LZMA2 stream; the extra stream and the control block as their zstd frame or
/// an LZMA2 stream. `lzma` holds the LZMA2 streams of the diff, the extra stream, the
/// control block, the runs block and the codes, in that order (an empty one: not
/// encoded, or nothing to encode). A tie keeps the coding listed first.
fn keep_smaller_codings(segment: EncodedSegment, lzma: [Vec<u8>; 5]) -> EncodedSegment {
    let [lzma_diff, lzma_extra, lzma_control, lzma_runs, lzma_codes] = lzma;
    let EncodedSegment {
        mut header,
        mut frames,
    } = segment;
    let len = |bytes: &[u8]| bytes.len() as u32;
    let zstd_diff = frames[2].len() + frames[3].len();
    let lzma_diff_fits =
        !lzma_diff.is_empty() && lzma_diff.len() as u64 <= lzma2_bound(header.diff_len);
    // The codes stream is empty exactly when every diff byte is zero.
    let lzma_pair_fits = !lzma_runs.is_empty()
        && lzma_runs.len() as u64 <= lzma2_bound(header.runs_len)
        && lzma_codes.is_empty() == (header.codes_len == 0)
        && lzma_codes.len() as u64 <= lzma2_bound(header.codes_len);
    let lzma_pair = lzma_runs.len() + lzma_codes.len();
    let lzma_diff_len = if lzma_diff_fits {
        lzma_diff.len()
    } else {
        usize::MAX
    };
    if lzma_pair_fits && lzma_pair < zstd_diff && lzma_pair < lzma_diff_len {
        frames[2] = lzma_runs;
        frames[3] = lzma_codes;
        header = header.with_lzma_runs_and_codes(len(&frames[2]), len(&frames[3]));
    } else if lzma_diff_fits && lzma_diff.len() < zstd_diff {
        frames[2] = Vec::new();
        frames[3] = lzma_diff;
        header = header.with_lzma_diff(len(&frames[3]));
    }
    if !lzma_extra.is_empty()
        && lzma_extra.len() < frames[1].len()
        && lzma_extra.len() as u64 <= lzma2_bound(header.extra_len)
    {
        frames[1] = lzma_extra;
        header = header.with_lzma_extra(len(&frames[1]));
    }
    if !lzma_control.is_empty()
        && lzma_control.len() < frames[0].len()
        && lzma_control.len() as u64 <= lzma2_bound(header.control_len)
    {
        frames[0] = lzma_control;
        header = header.with_lzma_control(len(&frames[0]));
    }
    EncodedSegment { header, frames }
}

/// Re-encodes a body of zstd-coded segments (as `write_delta_bodies` writes with LZMA2
/// off), read from `body`, with each segment's streams in their smallest codings at
/// `options`, as a direct build with those options chooses them (`compress_segments`).
/// The frames are decoded, not searched again: a body chosen among several is coded in
/// full once, at the cost of decoding it. The body's frames are at zstd level
/// `body_level`; at `options.level` they are kept as they are, otherwise compressed
/// again. `old` is the image the body was built against (its extra frames are
/// compressed against prefixes of it).
fn recode_body(
    body: &mut impl Read,
    body_len: u64,
    body_level: i32,
    old: &(impl ImageSource + ?Sized),
    options: &BuildOptions,
    diff_model: LzmaModel,
    out: &mut impl Write,
) -> Result<BodyStats, BuildError> {
    let mut stats = BodyStats {
        len: 0,
        parts: 0,
        segments: 0,
        lzma: false,
    };
    let mut read = 0u64;
    let bad_body = BuildError::Recode;
    while read < body_len {
        // A batch of at most `threads` segments at a time bounds the raw streams held.
        let mut batch: Vec<RawSegment> = Vec::new();
        let mut batch_frames: Vec<[Vec<u8>; 4]> = Vec::new();
        while read < body_len && batch.len() < options.threads {
            let mut header_bytes = [0u8; SEGMENT_HEADER_LEN];
            body.read_exact(&mut header_bytes)
                .map_err(|err| bad_body(format!("reading a segment header: {err}")))?;
            let header =
                SegmentHeader::parse(&header_bytes).map_err(|err| bad_body(err.to_string()))?;
            if header.uses_lzma() {
                return Err(bad_body(
                    "the body to recode already holds LZMA2 streams".into(),
                ));
            }
            let mut frames: [Vec<u8>; 4] = Default::default();
            for (frame, len) in frames.iter_mut().zip(header.frame_lens()) {
                *frame = vec![0u8; len as usize];
                body.read_exact(frame)
                    .map_err(|err| bad_body(format!("reading a frame: {err}")))?;
            }
            read += header.encoded_len();
            let prefix_range = header.extra_prefix_start
                ..header.extra_prefix_start + u64::from(header.extra_prefix_len);
            let prefix = old
                .read_range(prefix_range)
                .map_err(|source| BuildError::ReadImage {
                    which: "old",
                    source,
                })?;
            let extra = decode_zstd(&frames[1], header.extra_len, &prefix)
                .map_err(|err| bad_body(format!("extra frame: {err}")))?;
            let runs = decode_zstd(&frames[2], header.runs_len, &[])
                .map_err(|err| bad_body(format!("runs frame: {err}")))?;
            let codes = decode_zstd(&frames[3], header.codes_len, &[])
                .map_err(|err| bad_body(format!("codes frame: {err}")))?;
            let control = decode_zstd(&frames[0], header.control_len, &[])
                .map_err(|err| bad_body(format!("control frame: {err}")))?;
            batch.push(RawSegment {
                diff_len: header.diff_len,
                raw: [control, extra, runs, codes],
                prefix_start: header.extra_prefix_start,
                prefix,
            });
            batch_frames.push(frames);
        }
        let keep = (body_level == options.level).then_some(batch_frames);
        for segment in compress_segments(&batch, keep, options, diff_model)? {
            stats.segments += 1;
            stats.len += write_segment(&segment, out)?;
            stats.lzma |= segment.header.uses_lzma();
        }
    }
    Ok(stats)
}

/// Writes a segment's header and frames; returns the bytes written.
fn write_segment(segment: &EncodedSegment, out: &mut impl Write) -> Result<u64, BuildError> {
    let header = segment.header.encode();
    let pieces = std::iter::once(&header[..]).chain(segment.frames.iter().map(Vec::as_slice));
    let mut written = 0u64;
    for piece in pieces {
        out.write_all(piece).map_err(BuildError::Write)?;
        written += piece.len() as u64;
    }
    Ok(written)
}

/// One zstd frame of exactly `len` decoded bytes (none for an empty frame), decoded
/// against `prefix` (empty for none).
pub(super) fn decode_zstd(frame: &[u8], len: u32, prefix: &[u8]) -> io::Result<Vec<u8>> {
    if frame.is_empty() {
        return Ok(Vec::new());
    }
    let zstd_error = |code| io::Error::other(zstd::zstd_safe::get_error_name(code));
    let mut dctx = zstd::zstd_safe::DCtx::create();
    dctx.ref_prefix(prefix).map_err(zstd_error)?;
    let mut raw = Vec::with_capacity(len as usize);
    dctx.decompress(&mut raw, frame).map_err(zstd_error)?;
    if raw.len() != len as usize {
        return Err(io::Error::other("frame does not hold its declared length"));
    }
    Ok(raw)
}

/// The `diff_len` diff bytes of a segment, rebuilt from its zero runs and codes.
fn diff_bytes(runs: &[u8], codes: &[u8], diff_len: u32) -> io::Result<Vec<u8>> {
    if diff_len == 0 {
        return Ok(Vec::new());
    }
    let block = RunBlock::parse(runs, diff_len, codes.len() as u32)
        .map_err(|err| io::Error::other(err.to_string()))?;
    let mut diff = Vec::with_capacity(diff_len as usize);
    let mut at = 0usize;
    for (zeros, nonzeros) in block.pairs() {
        diff.resize(diff.len() + zeros as usize, 0);
        diff.extend_from_slice(&codes[at..at + nonzeros as usize]);
        at += nonzeros as usize;
    }
    Ok(diff)
}

/// One zstd frame per stream; empty streams get no frame at all. The extra frame is
/// compressed against `prefix` (old bytes), the others on their own.
fn compress_stream(raw: &[u8], kind: StreamKind, prefix: &[u8], level: i32) -> io::Result<Vec<u8>> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    if let StreamKind::Extra = kind {
        let zstd_error = |code| io::Error::other(zstd::zstd_safe::get_error_name(code));
        let mut cctx = zstd::zstd_safe::CCtx::create();
        cctx.set_parameter(CParameter::CompressionLevel(level))
            .map_err(zstd_error)?;
        cctx.set_parameter(CParameter::ChecksumFlag(false))
            .map_err(zstd_error)?;
        // Matches must reach back over the whole prefix (≤ 4 MiB) from the end of the
        // extra bytes (≤ 16 MiB); the agent decodes in one piece, so this costs it nothing.
        cctx.set_parameter(CParameter::WindowLog(25))
            .map_err(zstd_error)?;
        cctx.ref_prefix(prefix).map_err(zstd_error)?;
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(raw.len()));
        cctx.compress2(&mut out, raw).map_err(zstd_error)?;
        return Ok(out);
    }
    let mut compressor = zstd::bulk::Compressor::new(level)?;
    // No 4-byte frame checksum: the container's target SHA-256 covers every byte a frame
    // produces, and the applier checks each frame's decoded length.
    compressor.set_parameter(CParameter::ChecksumFlag(false))?;
    match kind {
        // The agent streams codes frames, so their window is capped at what it accepts.
        StreamKind::Codes => compressor.set_parameter(CParameter::WindowLog(STREAM_WINDOW_LOG))?,
        // Control and runs frames are decoded in one piece into a buffer of the declared
        // size, so a window covering the whole segment costs the agent nothing. (Extra
        // frames took the prefix path above.)
        StreamKind::Control | StreamKind::Runs | StreamKind::Extra => {
            compressor.set_parameter(CParameter::WindowLog(24))?
        }
    }
    compressor.compress(raw)
}

struct CountingWriter(u64);

impl Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Tee<'a, W: Write> {
    out: &'a mut W,
    counter: &'a mut CountingWriter,
}

impl<W: Write> Write for Tee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.out.write(buf)?;
        self.counter.0 += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::super::lzma2::{decode_lzma, DIFF_PART_MAX};
    use super::*;

    #[test]
    fn the_scan_help_names_each_profile_s_own_threshold() {
        use clap::ValueEnum;
        for (choice, profile) in [
            (ScanChoice::Eager, ScanProfile::Eager),
            (ScanChoice::Steady, ScanProfile::Steady),
        ] {
            let value = choice.to_possible_value().expect("a --scan value");
            let help = value.get_help().expect("help text").to_string();
            let threshold = format!("more than {} bytes", profile.mismatch_count());
            assert!(help.contains(&threshold), "{help:?} names {threshold:?}");
            assert_eq!(value.get_name(), profile.name());
        }
        let auto = ScanChoice::Auto.to_possible_value().unwrap();
        let help = auto.get_help().unwrap().to_string();
        for profile in SCAN_PROFILES {
            assert!(
                help.contains(profile.name()),
                "{help:?} names {}",
                profile.name()
            );
        }
    }

    /// The LZMA2 properties byte of a stream whose first chunk is compressed.
    fn properties(stream: &[u8]) -> u8 {
        assert!(stream[0] >= 0xe0, "a compressed first chunk");
        stream[5]
    }

    #[test]
    fn the_codes_take_the_smaller_of_their_literal_models() {
        let [no_context, context] = CODES_MODELS;
        // Each byte's top three bits follow from the previous byte's (the next of eight
        // in turn), the low five are noise: three bits of literal context predict the
        // top bits, no context cannot.
        let mut state = 7u32;
        let chained: Vec<u8> = (0..60_000)
            .scan(0u8, |prev, _| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                *prev = (prev.wrapping_add(0x20) & 0xe0) | ((state >> 16) as u8 & 0x1f);
                Some(*prev)
            })
            .collect();
        // A few thousand values from a skewed set in random order: the previous byte
        // tells nothing, and the context-free model learns the skew eight times as fast.
        let unordered: Vec<u8> = (0..3_000)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                [1u8, 2, 3, 0xfe, 0xff][(state >> 16) as usize % 5]
            })
            .collect();
        for (name, raw, expected) in [
            ("chained", &chained, context),
            ("unordered", &unordered, no_context),
        ] {
            let sizes: Vec<usize> = CODES_MODELS
                .iter()
                .map(|&model| lzma_stream(raw, model).expect("lzma").len())
                .collect();
            let smallest = smallest_lzma_stream(raw, &CODES_MODELS).expect("lzma");
            assert_eq!(smallest.len(), *sizes.iter().min().expect("two"), "{name}");
            let lc = u32::from(properties(&smallest) % 9);
            assert_eq!(lc, expected.lc, "{name}: sizes {sizes:?}");
        }
        assert!(smallest_lzma_stream(&[], &CODES_MODELS)
            .expect("lzma")
            .is_empty());
    }

    /// Code-like old bytes and a new release of them: words changed here and there (diff
    /// bytes), and new pieces inserted (extra bytes), some copied from elsewhere in the
    /// old image (what the extra prefix is for).
    fn release_pair(len: usize) -> (Vec<u8>, Vec<u8>) {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let old: Vec<u8> = (0..len)
            .map(|i| if i % 4 == 3 { 0x94 } else { (next() % 7) as u8 })
            .collect();
        let mut new = Vec::with_capacity(len + len / 8);
        let mut at = 0;
        while at < old.len() {
            let take = (next() % 4000) as usize + 500;
            let end = (at + take).min(old.len());
            new.extend(old[at..end].iter().enumerate().map(|(i, b)| {
                let changed = i % 4 == 1 && next() % 2 == 0;
                b.wrapping_add(changed as u8 * (1 + (next() % 3) as u8))
            }));
            let from = (next() as usize) % (old.len() - 200);
            new.extend_from_slice(&old[from..from + (next() % 120) as usize]);
            let literals = next() % 400;
            new.extend((0..literals).map(|i| if i % 4 == 3 { 0x97 } else { (next() % 5) as u8 }));
            at = end;
        }
        (old, new)
    }

    #[test]
    fn recoding_a_zstd_body_with_lzma2_writes_what_a_direct_lzma2_build_writes() {
        let (old, new) = release_pair(600_000);
        // Small segments and parts: several batches of segments, prefixes in every part.
        let options = BuildOptions {
            threads: 2,
            level: 3,
            segment_len: 70_001,
            window_cap: 250_007,
            ..BuildOptions::default()
        };
        let zstd_only = BuildOptions {
            lzma: false,
            ..options.clone()
        };
        // The plain images, and the ARM64-transformed ones with the ARM64 diff model (the
        // recode reads its extra prefixes from the transformed old image); one scanned
        // with each profile.
        let (old_t, new_t) = (
            TransformedImage::new(&old[..], Transform::Arm64).expect("in memory"),
            TransformedImage::new(&new[..], Transform::Arm64).expect("in memory"),
        );
        type Case<'a> = (
            &'a dyn Fn(&BuildOptions, LzmaModel, &mut Vec<u8>) -> BodyStats,
            &'a dyn Fn(&[u8], i32, &BuildOptions, LzmaModel, &mut Vec<u8>) -> BodyStats,
            LzmaModel,
        );
        let plain_build = |o: &BuildOptions, m: LzmaModel, out: &mut Vec<u8>| {
            write_delta_body(&old[..], &new[..], o, ScanProfile::Eager, m, out).unwrap()
        };
        let plain_recode = |body: &[u8], level, o: &BuildOptions, m, out: &mut Vec<u8>| {
            recode_body(
                &mut &body[..],
                body.len() as u64,
                level,
                &old[..],
                o,
                m,
                out,
            )
            .unwrap()
        };
        let arm64_build = |o: &BuildOptions, m: LzmaModel, out: &mut Vec<u8>| {
            write_delta_body(&old_t, &new_t, o, ScanProfile::Steady, m, out).unwrap()
        };
        let arm64_recode = |body: &[u8], level, o: &BuildOptions, m, out: &mut Vec<u8>| {
            recode_body(&mut &body[..], body.len() as u64, level, &old_t, o, m, out).unwrap()
        };
        let cases: [Case; 2] = [
            (&plain_build, &plain_recode, DIFF_MODEL),
            (&arm64_build, &arm64_recode, ARM64_DIFF_MODEL),
        ];
        for (build, recode, model) in cases {
            let mut direct = Vec::new();
            let stats = build(&options, model, &mut direct);
            assert!(stats.lzma, "the sample must take LZMA2 streams somewhere");
            // Runs and codes as LZMA2 streams among them, each stream with its own model.
            assert!(diff_codings(&direct).contains(&ota_core::delta::DiffCoding::RunsAndCodesLzma2));
            assert!(stats.segments > 4 && stats.parts > 1);
            let mut body = Vec::new();
            let zstd_stats = build(&zstd_only, model, &mut body);
            assert!(!zstd_stats.lzma);
            let mut recoded = Vec::new();
            let recoded_stats = recode(&body, options.level, &options, model, &mut recoded);
            assert_eq!(recoded_stats.segments, stats.segments);
            assert_eq!(recoded_stats.len, recoded.len() as u64);
            assert!(recoded_stats.lzma);
            assert!(
                recoded == direct,
                "the recoded body differs from the direct build"
            );
            // A body compared at a lower zstd level: its frames are coded again at the
            // build's level, with LZMA2 and without.
            let fast = BuildOptions {
                level: 1,
                ..zstd_only.clone()
            };
            let mut fast_body = Vec::new();
            build(&fast, model, &mut fast_body);
            assert!(
                fast_body != body,
                "level 1 must code the sample differently"
            );
            for (target, direct) in [(&options, &direct), (&zstd_only, &body)] {
                let mut recoded = Vec::new();
                let recoded_stats = recode(&fast_body, fast.level, target, model, &mut recoded);
                assert_eq!(recoded_stats.len, recoded.len() as u64);
                assert_eq!(recoded_stats.lzma, target.lzma);
                assert!(
                    &recoded == direct,
                    "a body recoded from level 1 differs from the direct build (LZMA2 {})",
                    target.lzma
                );
            }
        }
    }

    #[test]
    fn bodies_searched_in_one_index_equal_bodies_built_one_profile_at_a_time() {
        // At 100 places, 20 bytes of random data replaced by a near-copy of them planted
        // nearby in the old image (14 of 20 bytes equal): the eager scan leaves its
        // alignment for each 19-byte exact match, the steady one stays on it (matcher
        // test a_short_match_off_the_alignment_moves_the_eager_scan_and_not_the_steady_one).
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let old: Vec<u8> = (0..600_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let (old, new) = crate::delta::samples::near_copy_release(old, 5_900, 3_000);
        // Several parts (one index each) and several segments per part.
        let options = BuildOptions {
            threads: 2,
            level: 3,
            segment_len: 70_001,
            window_cap: 250_007,
            lzma: false,
            ..BuildOptions::default()
        };
        let alone: Vec<(Vec<u8>, BodyStats)> = SCAN_PROFILES
            .iter()
            .map(|&scan| {
                let mut body = Vec::new();
                let stats =
                    write_delta_body(&old[..], &new[..], &options, scan, DIFF_MODEL, &mut body)
                        .unwrap();
                (body, stats)
            })
            .collect();
        assert_ne!(
            alone[0].0, alone[1].0,
            "the profiles must find different bodies"
        );
        let mut outs = [Vec::new(), Vec::new()];
        let stats = {
            let [a, b] = &mut outs;
            let mut sinks: [&mut dyn Write; 2] = [a, b];
            write_delta_bodies(
                &old[..],
                &new[..],
                &options,
                &SCAN_PROFILES,
                DIFF_MODEL,
                &mut sinks,
            )
            .unwrap()
        };
        assert_eq!(stats.len(), SCAN_PROFILES.len());
        for ((together, stats), (body, alone_stats)) in outs.iter().zip(&stats).zip(&alone) {
            assert!(together == body, "a body searched beside another differs");
            assert_eq!(stats.len, body.len() as u64);
            assert_eq!(
                (stats.parts, stats.segments),
                (alone_stats.parts, alone_stats.segments)
            );
            assert!(stats.parts > 1 && stats.segments > stats.parts);
        }
    }

    #[test]
    fn the_smaller_full_coding_ships_and_a_tie_keeps_the_first() {
        let eager = (ScanProfile::Eager, None);
        let steady = (ScanProfile::Steady, Some(Transform::Arm64));
        let stats = |len: usize| BodyStats {
            len: len as u64,
            parts: 1,
            segments: 1,
            lzma: false,
        };
        // Each finalist "coded in full" as the bytes given for it; both were compared
        // (written to a file), so the sink holds a stale body to start over from.
        let ship = |first: &[u8], second: Option<&[u8]>, threads: usize| {
            let shares = std::sync::Mutex::new(Vec::new());
            let mut sink = io::Cursor::new(b"stale compared body".to_vec());
            sink.seek(SeekFrom::End(0)).unwrap();
            let finalist = |candidate| -> Finalist {
                (candidate, stats(1), Some(tempfile::tempfile().unwrap()))
            };
            let finalists: Vec<Finalist> = std::iter::once(finalist(eager))
                .chain(second.map(|_| finalist(steady)))
                .collect();
            let Shipped {
                candidate: shipped,
                stats: shipped_stats,
                coded,
            } = ship_smaller_coding(
                finalists,
                HEADER_LEN,
                threads,
                &mut sink,
                |(candidate, _, _), share, out| {
                    shares.lock().unwrap().push(share);
                    let bytes = if candidate == eager {
                        first
                    } else {
                        second.unwrap()
                    };
                    out.write_all(bytes).map_err(BuildError::Write)?;
                    Ok((candidate, stats(bytes.len())))
                },
            )
            .unwrap();
            let body = sink.into_inner();
            assert_eq!(
                &body[..HEADER_LEN],
                &[0u8; HEADER_LEN],
                "room for the header"
            );
            assert_eq!(shipped_stats.len as usize, body.len() - HEADER_LEN);
            // Two finalists share the threads (each gets at least one); one gets them all.
            let mut shares = shares.into_inner().unwrap();
            shares.sort_unstable();
            let expected = match (second, threads) {
                (None, _) => vec![threads],
                (Some(_), 1) => vec![1, 1],
                (Some(_), _) => vec![threads / 2, threads - threads / 2],
            };
            assert_eq!(shares, expected, "thread shares with {threads} threads");
            (shipped, body[HEADER_LEN..].to_vec(), coded)
        };
        for threads in [1, 2, 3] {
            let header = HEADER_LEN as u64;
            // The runner-up codes smaller: it replaces the first in the sink.
            let (shipped, body, coded) = ship(b"first, coded longer", Some(b"second"), threads);
            assert_eq!((shipped, body.as_slice()), (steady, &b"second"[..]));
            assert_eq!(coded, vec![(eager, header + 19), (steady, header + 6)]);
            // The first codes smaller, or as small: it stays.
            for second in [&b"the second, coded longer"[..], b"same length"] {
                let (shipped, body, coded) = ship(b"first codes", Some(second), threads);
                assert_eq!((shipped, body.as_slice()), (eager, &b"first codes"[..]));
                assert_eq!(coded.len(), 2);
            }
            // One finalist: no coded sizes to report.
            let (shipped, body, coded) = ship(b"alone", None, threads);
            assert_eq!(
                (shipped, body.as_slice(), coded),
                (eager, &b"alone"[..], vec![])
            );
        }
        // The runner-up is coded when within 0.25% of the smallest, not beyond.
        assert!(runner_up_is_close(100_000, 100_250));
        assert!(!runner_up_is_close(100_000, 100_251));
        assert!(runner_up_is_close(u64::MAX / 2, u64::MAX / 2));
    }

    #[test]
    fn every_job_is_started_once() {
        let mut order = JOB_START_ORDER;
        order.sort_unstable();
        assert_eq!(order, std::array::from_fn(|kind| kind));
        // Every LZMA2 job codes something.
        let raw: [Vec<u8>; 4] = std::array::from_fn(|_| vec![1, 0, 0, 2]);
        for kind in LZMA_DIFF_JOB..JOBS_PER_SEGMENT {
            let diff = encode_runs(&[1, 0, 0, 2]);
            let raw = [raw[0].clone(), raw[1].clone(), diff.0, diff.1];
            assert!(!lzma_job(kind, (0, 1), &raw, 4, DIFF_MODEL)
                .expect("codes")
                .is_empty());
        }
        assert!(lzma_job(JOBS_PER_SEGMENT, (0, 1), &raw, 4, DIFF_MODEL).is_err());
    }

    #[test]
    fn a_job_that_panics_yields_none_and_the_others_still_run() {
        for threads in [1, 2] {
            let results = run_jobs(threads, 5, |index| {
                assert!(index != 1, "job 1 fails");
                index * 10
            });
            assert_eq!(results, [Some(0), None, Some(20), Some(30), Some(40)]);
        }
    }

    #[test]
    fn a_long_diff_stream_is_one_job_per_part_and_every_other_stream_one_job() {
        let long = (DIFF_PART_MAX * 2 + 1) as u32;
        let jobs = segment_jobs(&[0, long, 10], 3, true, true);
        assert_eq!(jobs.len(), 3 * JOBS_PER_SEGMENT + 2);
        // Started in `JOB_START_ORDER`, the diff parts of a segment in part order.
        let kinds: Vec<usize> = jobs.iter().map(|&(_, kind, _)| kind).collect();
        let mut expected = Vec::new();
        for kind in JOB_START_ORDER {
            let count = if kind == LZMA_DIFF_JOB { 5 } else { 3 };
            expected.extend(std::iter::repeat_n(kind, count));
        }
        assert_eq!(kinds, expected);
        let diff_jobs: Vec<(usize, usize)> = jobs
            .iter()
            .filter(|&&(_, kind, _)| kind == LZMA_DIFF_JOB)
            .map(|&(segment, _, part)| (segment, part))
            .collect();
        assert_eq!(diff_jobs, [(0, 0), (1, 0), (1, 1), (1, 2), (2, 0)]);
        assert!(jobs
            .iter()
            .all(|&(_, kind, part)| kind == LZMA_DIFF_JOB || part == 0));
        // Without LZMA2 only the zstd jobs; without zstd (a recode) only the LZMA2 jobs.
        // At most `max_parts` parts.
        let two = segment_jobs(&[long], 2, true, true);
        assert_eq!(
            two.iter()
                .filter(|&&(_, kind, _)| kind == LZMA_DIFF_JOB)
                .count(),
            2
        );
        let zstd = segment_jobs(&[long], 3, true, false);
        assert!(zstd.iter().all(|&(_, kind, _)| kind < LZMA_DIFF_JOB) && zstd.len() == 4);
        let lzma = segment_jobs(&[long], 3, false, true);
        assert!(lzma.iter().all(|&(_, kind, _)| kind >= LZMA_DIFF_JOB) && lzma.len() == 7);
    }

    #[test]
    fn a_long_diff_stream_s_parts_join_into_one_stream_the_agent_decodes() {
        // Mostly zeros with sparse codes, like a release's diff stream, a little longer
        // than one part.
        let len = DIFF_PART_MAX + 70_001;
        let mut diff = vec![0u8; len];
        for at in (0..len).step_by(97) {
            // A multiplicative hash of the offset: a code at about a third of them.
            let word = (at as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
            if word % 3 == 0 {
                diff[at] = (word >> 8) as u8 | 1;
            }
        }
        let (runs, codes) = encode_runs(&diff);
        let raw = [Vec::new(), Vec::new(), runs, codes];
        let parts = diff_parts(len, 4);
        assert_eq!(parts.len(), 2);
        let job = |kind, part| lzma_job(kind, (part, 4), &raw, len as u32, DIFF_MODEL);
        let coded: Vec<Option<io::Result<Vec<u8>>>> = (0..parts.len())
            .map(|part| Some(job(LZMA_DIFF_JOB, part)))
            .collect();
        assert!(job(LZMA_DIFF_JOB, parts.len()).is_err());
        assert!(job(LZMA_EXTRA_JOB, 1).is_err());
        let stream = join_diff_parts(coded).expect("joins");
        assert_eq!(decode_lzma(&stream, len as u32).expect("decodes"), diff);
        // A part that failed fails the stream; a diff of no bytes has no stream.
        let failed = vec![Some(Ok(vec![0])), Some(Err(io::Error::other("worker")))];
        assert!(join_diff_parts(failed).is_err());
        assert!(join_diff_parts(vec![None]).is_err());
        assert_eq!(
            join_diff_parts(vec![Some(Ok(Vec::new()))]).expect("empty"),
            Vec::<u8>::new()
        );
    }

    /// A segment whose zstd frames are `control`, `extra`, `runs` and `codes` bytes long
    /// (decoded: 100 control, 1000 extra, 100 runs, 100 codes, 10,000 diff bytes).
    fn zstd_segment(frames: [usize; 4]) -> EncodedSegment {
        let header = SegmentHeader::for_streams(
            10_000,
            [100, 1000, 100, 100],
            frames.map(|n| n as u32),
            (0, 0),
        );
        EncodedSegment {
            header,
            frames: frames.map(|n| vec![7u8; n]),
        }
    }

    #[test]
    fn each_stream_keeps_its_smallest_coding_and_a_tie_keeps_the_first() {
        use ota_core::delta::{ControlCoding, DiffCoding, ExtraCoding};
        // [diff, extra, control, runs, codes] as LZMA2 streams of these lengths.
        let lzma = |lens: [usize; 5]| lens.map(|n| vec![9u8; n]);
        let diff_of = |frames: [usize; 4], lens: [usize; 5]| {
            let kept = keep_smaller_codings(zstd_segment(frames), lzma(lens));
            // Whatever it keeps is a valid segment header.
            assert_eq!(SegmentHeader::parse(&kept.header.encode()), Ok(kept.header));
            (
                kept.header.diff_coding,
                kept.frames[2].len(),
                kept.frames[3].len(),
            )
        };
        let zstd = [50, 500, 30, 40];
        // zstd runs + codes: 70 bytes.
        assert_eq!(
            diff_of(zstd, [60, 0, 0, 30, 25]),
            (DiffCoding::RunsAndCodesLzma2, 30, 25)
        );
        assert_eq!(
            diff_of(zstd, [60, 0, 0, 30, 31]),
            (DiffCoding::Lzma2, 0, 60)
        );
        // Ties: zstd before one LZMA2 stream before runs + codes.
        assert_eq!(
            diff_of(zstd, [60, 0, 0, 30, 30]),
            (DiffCoding::Lzma2, 0, 60)
        );
        assert_eq!(
            diff_of(zstd, [70, 0, 0, 30, 40]),
            (DiffCoding::RunsAndCodes, 30, 40)
        );
        assert_eq!(
            diff_of(zstd, [0, 0, 0, 35, 35]),
            (DiffCoding::RunsAndCodes, 30, 40)
        );
        // LZMA2 off (no streams): zstd; a stream over its LZMA2 bound is never kept.
        assert_eq!(diff_of(zstd, [0; 5]), (DiffCoding::RunsAndCodes, 30, 40));
        assert_eq!(
            diff_of(zstd, [0, 0, 0, 1, 0]),
            (DiffCoding::RunsAndCodes, 30, 40)
        );
        // zstd frames near their bound (163 bytes for 100), LZMA2 streams a byte over
        // theirs (104): smaller, and still not kept.
        let big = [50, 500, 160, 160];
        let over = lzma2_bound(100) as usize + 1;
        assert_eq!(
            diff_of(big, [0, 0, 0, 10, 10]).0,
            DiffCoding::RunsAndCodesLzma2
        );
        assert_eq!(
            diff_of(big, [0, 0, 0, over, 10]).0,
            DiffCoding::RunsAndCodes
        );
        assert_eq!(
            diff_of(big, [0, 0, 0, 10, over]).0,
            DiffCoding::RunsAndCodes
        );
        // No codes (every diff byte zero): runs alone, no codes stream.
        let zeros = EncodedSegment {
            header: SegmentHeader::for_streams(
                10_000,
                [100, 1000, 100, 0],
                [50, 500, 30, 0],
                (0, 0),
            ),
            frames: [vec![7; 50], vec![7; 500], vec![7; 30], Vec::new()],
        };
        let kept = keep_smaller_codings(zeros, lzma([0, 0, 0, 20, 0]));
        assert_eq!(kept.header.diff_coding, DiffCoding::RunsAndCodesLzma2);
        assert_eq!((kept.header.runs_zlen, kept.header.codes_zlen), (20, 0));
        // The extra stream and the control block: strictly smaller only.
        let kept = keep_smaller_codings(zstd_segment(zstd), lzma([0, 499, 50, 0, 0]));
        assert_eq!(kept.header.extra_coding, ExtraCoding::Lzma2);
        assert_eq!(kept.header.control_coding, ControlCoding::Zstd);
        assert_eq!(SegmentHeader::parse(&kept.header.encode()), Ok(kept.header));
    }

    /// The diff coding of each segment of a body.
    fn diff_codings(body: &[u8]) -> Vec<ota_core::delta::DiffCoding> {
        let mut codings = Vec::new();
        let mut at = 0;
        while at < body.len() {
            let header = SegmentHeader::parse(&body[at..]).expect("own segment parses");
            codings.push(header.diff_coding);
            at += header.encoded_len() as usize;
        }
        codings
    }

    #[test]
    fn a_delta_ships_when_it_saves_at_least_the_asked_share_of_the_full_image() {
        // 10% asked: 900 of 1000 ships, 901 does not.
        assert!(delta_worth_shipping(900, 1000, 10));
        assert!(!delta_worth_shipping(901, 1000, 10));
        // 0% asked: a delta no larger than the full image ships.
        assert!(delta_worth_shipping(1000, 1000, 0));
        assert!(!delta_worth_shipping(1001, 1000, 0));
        // Above 90% counts as 90%; sizes near u64::MAX do not overflow.
        assert!(delta_worth_shipping(100, 1000, 200));
        assert!(!delta_worth_shipping(101, 1000, 200));
        assert!(delta_worth_shipping(u64::MAX / 2, u64::MAX, 10));
        assert!(!delta_worth_shipping(u64::MAX, u64::MAX - 1, 0));
    }
}
