//! Delta engine end to end: the server's builder and the agent's streaming applier must
//! round-trip every image pair, and the applier must refuse hostile containers with
//! typed errors, writing nothing when the base is wrong.

use ota_agent::delta::{apply_delta, apply_delta_known, ApplyError};
use ota_core::delta::{
    encode_control_block, encode_run_pairs, encode_runs, Algorithm, ContainerHeader, Control,
    ControlCoding, DeltaError, DiffCoding, ExtraCoding, ImageDigests, KnownDigests,
    OneStreamHeader, RunBlock, RunCoding, SegmentHeader, Transform, HEADER_LEN,
    HEADER_LEN_DETACHED, MAX_IMAGE_LEN, SEGMENT_HEADER_LEN, SEGMENT_MAX_CONTROL,
    SEGMENT_MAX_TARGET, TRANSFORM_BLOCK,
};
use ota_server::delta::one_stream::one_stream_body;
use ota_server::delta::{
    build_delta, BuildOptions, CandidateSize, ScanProfile, TransformChoice, COMPARE_LEVEL,
    FINALIST_MARGIN_BASIS_POINTS, SCAN_PROFILES,
};
use ota_tests::synthetic::{self, CodeKind};
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use std::io::Cursor;

/// A bsdiff delta of the plain images, with or without LZMA2 streams, in segments or
/// as one stream.
fn plain_bsdiff(algorithm: Algorithm) -> bool {
    matches!(
        algorithm,
        Algorithm::BsdiffZstd | Algorithm::BsdiffLzma(None) | Algorithm::BsdiffOneStream(None)
    )
}

/// A bsdiff delta with LZMA2 streams: in segments (algorithm 4) or as one (algorithm 5).
fn lzma_coded(algorithm: Algorithm) -> bool {
    matches!(
        algorithm,
        Algorithm::BsdiffLzma(_) | Algorithm::BsdiffOneStream(_)
    )
}

fn options() -> BuildOptions {
    BuildOptions {
        threads: 2,
        ..BuildOptions::default()
    }
}

fn apply(
    container: &[u8],
    old: &[u8],
) -> (Result<ota_agent::delta::ApplyReport, ApplyError>, Vec<u8>) {
    let mut out = Vec::new();
    let result = apply_delta(container, Cursor::new(old), &mut out);
    (result, out)
}

/// [`apply`] with the digests the signed metadata would give.
fn apply_known(
    container: &[u8],
    old: &[u8],
    known: &KnownDigests,
) -> (Result<ota_agent::delta::ApplyReport, ApplyError>, Vec<u8>) {
    let mut out = Vec::new();
    let result = apply_delta_known(container, Cursor::new(old), &mut out, known);
    (result, out)
}

/// What signed metadata says of a delta from `old` to `new`.
fn signed(old: &[u8], new: &[u8]) -> KnownDigests {
    KnownDigests {
        source: Some(Sha256::digest(old).into()),
        target: Some(Sha256::digest(new).into()),
    }
}

/// The same container with its header's digests detached (format version 2).
fn detach(container: &[u8]) -> Vec<u8> {
    rewrite_header(container, |h| h.digests = None)
}

/// Builds with `options`, applies, and checks the result is `new`, byte for byte.
fn round_trip_with(
    old: &[u8],
    new: &[u8],
    options: &BuildOptions,
) -> ota_server::delta::BuildReport {
    let (container, report) =
        build_delta(old, new, options).expect("building a delta must succeed");
    assert_eq!(report.container_len, container.len() as u64);
    let (result, out) = apply(&container, old);
    let applied = result.expect("applying a freshly built delta must succeed");
    assert_eq!(applied.algorithm, report.algorithm);
    assert!(
        out == new,
        "applied image differs from the new image ({} vs {} bytes)",
        out.len(),
        new.len()
    );
    report
}

fn round_trip(old: &[u8], new: &[u8]) -> ota_server::delta::BuildReport {
    round_trip_with(old, new, &options())
}

#[test]
fn edge_case_pairs_round_trip() {
    let image = synthetic::image(1, 200_000);
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("empty to empty", vec![], vec![]),
        ("empty to one byte", vec![], vec![7]),
        ("one byte to empty", vec![7], vec![]),
        ("one byte to another byte", vec![7], vec![8]),
        ("one byte unchanged", vec![7], vec![7]),
        ("identical images", image.clone(), image.clone()),
        ("empty old image", vec![], image.clone()),
        ("empty new image", image.clone(), vec![]),
        ("all zeros grown", vec![0; 50_000], vec![0; 70_000]),
        (
            "next release",
            image.clone(),
            synthetic::next_release(&image, 2, 20),
        ),
    ];
    for (name, old, new) in cases {
        let report = round_trip(&old, &new);
        assert_eq!(report.target_len, new.len() as u64, "case `{name}`");
    }
}

#[test]
fn similar_images_ship_a_delta_and_unrelated_images_ship_the_full_image() {
    let old = synthetic::image(3, 300_000);
    let new = synthetic::next_release(&old, 4, 10);
    let report = round_trip(&old, &new);
    assert!(
        plain_bsdiff(report.algorithm),
        "a small edit must ship as a delta"
    );
    assert!(
        report.container_len * 10 < new.len() as u64,
        "a 10-edit release should be far below a tenth of the image, got {} bytes",
        report.container_len
    );

    let unrelated = synthetic::image(99, 300_000);
    let report = round_trip(&old, &unrelated);
    assert_eq!(
        report.algorithm,
        Algorithm::FullZstd,
        "an unrelated image must ship as a full image"
    );
    assert_eq!(Some(report.container_len), report.full_container_len);
    assert!(report.delta_container_len * 10 > report.container_len * 7);
}

#[test]
fn code_images_ship_the_transformed_delta_when_it_is_smaller() {
    for (kind, transform) in [
        (CodeKind::X86_64, Transform::X86_64),
        (CodeKind::Arm64, Transform::Arm64),
    ] {
        // Over several transform blocks, with segments and parts that do not line up
        // with them, so blocks are carried across segments and parts.
        let (old, new) = synthetic::code_release_pair(kind, 7, 300_000, 4100);
        // Auto tries only ARM64 (x86-64 did not pay on the tune corpus); both forced.
        let auto = round_trip(&old, &new);
        let auto_tried = auto.transformed.map(|(tried, _)| tried);
        match kind {
            CodeKind::Arm64 => assert_eq!(auto_tried, Some(Transform::Arm64)),
            CodeKind::X86_64 => assert_eq!(auto_tried, None, "auto must not try x86-64"),
        }
        let forced = BuildOptions {
            transform: TransformChoice::Try(transform),
            ..options()
        };
        for options in [
            forced.clone(),
            BuildOptions {
                segment_len: 50_001,
                window_cap: 120_007,
                ..forced
            },
        ] {
            let report = round_trip_with(&old, &new, &options);
            let (tried, transformed_len) = report.transformed.expect("a forced transform is tried");
            assert_eq!(tried, transform, "{kind:?}: detected the wrong transform");
            assert!(
                transformed_len < report.plain_delta_len,
                "{kind:?}: moved callers of fixed targets must diff smaller transformed \
                 ({transformed_len} vs {} bytes)",
                report.plain_delta_len
            );
            assert_eq!(
                report.algorithm.transform(),
                Some(transform),
                "{kind:?}: the smaller transformed delta must be shipped"
            );
            // The bodies (plain and transformed, each scanned with every profile) are
            // compared with zstd streams only at COMPARE_LEVEL (LZMA2 runs only on the
            // one kept, and on the runner-up when it compared within the finalist
            // margin): the sizes compared are those of a build with LZMA2 off, and the
            // shipped delta, coded at level 19 with LZMA2, is no larger.
            let zstd_only = round_trip_with(
                &old,
                &new,
                &BuildOptions {
                    lzma: false,
                    ..options.clone()
                },
            );
            assert_eq!(
                (report.plain_delta_len, report.transformed),
                (zstd_only.plain_delta_len, zstd_only.transformed),
                "{kind:?}: the comparison must be made on the zstd-only bodies"
            );
            assert!(zstd_only.delta_container_len <= transformed_len);
            assert!(report.delta_container_len <= zstd_only.delta_container_len);
            if kind == CodeKind::Arm64 {
                // The sample takes LZMA2 streams, so the check above is not vacuous.
                assert!(lzma_coded(report.algorithm), "{:?}", report.algorithm);
                assert!(report.delta_container_len < transformed_len);
            }
        }
    }
}

/// A release where, at 100 places, 20 bytes were replaced by a near-copy of them found
/// far away in the old image (14 of 20 bytes equal, the others one more): the eager
/// scan leaves its alignment for each exact match (19 bytes from the first changed one,
/// 6 better than the alignment) and back, two control entries with irregular seeks
/// each; the steady one stays on it, with six diff bytes of 1.
fn steady_sample() -> (Vec<u8>, Vec<u8>) {
    ota_server::delta::samples::near_copy_release(synthetic::image(11, 300_000), 1_400, 154_000)
}

#[test]
fn every_scan_profile_is_compared_and_the_smallest_delta_kept() {
    let zstd_only = BuildOptions {
        lzma: false,
        min_saving_percent: 0,
        ..options()
    };
    let (old, new) = steady_sample();
    // Candidates are compared coded at zstd level COMPARE_LEVEL; the kept one is then
    // coded at the build's level (19 here).
    let only = |scan, level| {
        let options = BuildOptions {
            scan: Some(scan),
            level,
            ..zstd_only.clone()
        };
        let report = round_trip_with(&old, &new, &options);
        assert_eq!(report.scan, scan);
        assert!(
            report.candidates.is_empty(),
            "one profile, nothing to compare"
        );
        report.delta_container_len
    };
    assert!(COMPARE_LEVEL < zstd_only.level);
    let sizes: Vec<u64> = SCAN_PROFILES
        .iter()
        .map(|&scan| only(scan, COMPARE_LEVEL))
        .collect();
    let (eager, steady) = (sizes[0], sizes[1]);
    let steady_final = only(ScanProfile::Steady, zstd_only.level);
    assert_ne!(
        steady_final, steady,
        "the levels must code the sample apart"
    );
    assert!(
        steady * (10_000 + FINALIST_MARGIN_BASIS_POINTS) < eager * 10_000,
        "the sample must make the steady scan smaller, beyond the finalist margin \
         ({steady} vs {eager} bytes)"
    );
    // Both profiles are built (the sizes are those of single-profile builds at the
    // comparison level) and the smaller kept, coded at the build's level as a
    // single-profile build codes it; the other compared more than
    // FINALIST_MARGIN_BASIS_POINTS larger, so it is not coded in full.
    let auto = round_trip_with(&old, &new, &zstd_only);
    assert_eq!(
        auto.candidates,
        vec![
            CandidateSize {
                scan: ScanProfile::Eager,
                transform: None,
                delta_len: eager,
                coded_len: None,
            },
            CandidateSize {
                scan: ScanProfile::Steady,
                transform: None,
                delta_len: steady,
                coded_len: None,
            },
        ]
    );
    assert_eq!(
        (auto.scan, auto.delta_container_len, auto.plain_delta_len),
        (ScanProfile::Steady, steady_final, steady)
    );
    // With LZMA2 the choice is made on the zstd bodies and the kept one recoded: no
    // larger.
    let lzma = round_trip_with(
        &old,
        &new,
        &BuildOptions {
            lzma: true,
            ..zstd_only.clone()
        },
    );
    assert_eq!(
        (lzma.scan, &lzma.candidates),
        (ScanProfile::Steady, &auto.candidates)
    );
    assert!(lzma_coded(lzma.algorithm), "{:?}", lzma.algorithm);
    assert!(lzma.delta_container_len <= steady_final);
    // Where the two are equal (an unchanged image), the first profile is kept.
    let old = synthetic::image(12, 100_000);
    let report = round_trip_with(&old, &old, &zstd_only);
    let sizes: Vec<u64> = report.candidates.iter().map(|c| c.delta_len).collect();
    assert_eq!(sizes, vec![sizes[0]; 2], "the sample must tie");
    assert_eq!(report.scan, ScanProfile::Eager);
    // With a transform to try, each profile runs over the plain and over the transformed
    // images: four bodies, in tie order, and the smallest kept.
    let (old, new) = synthetic::code_release_pair(CodeKind::Arm64, 7, 300_000, 4100);
    let report = round_trip_with(&old, &new, &zstd_only);
    let tried: Vec<_> = report
        .candidates
        .iter()
        .map(|c| (c.scan, c.transform))
        .collect();
    let arm64 = Some(Transform::Arm64);
    assert_eq!(
        tried,
        vec![
            (ScanProfile::Eager, None),
            (ScanProfile::Steady, None),
            (ScanProfile::Eager, arm64),
            (ScanProfile::Steady, arm64),
        ]
    );
    let smallest = report
        .candidates
        .iter()
        .min_by_key(|c| c.delta_len)
        .expect("four candidates");
    // The two profiles over the transformed images compare equal, so within
    // FINALIST_MARGIN_BASIS_POINTS of each other: both are coded in full (zstd level 19),
    // and the smaller coded ships, a tie keeping the one compared first (which of two
    // different codings wins: builder unit test
    // the_smaller_full_coding_ships_and_a_tie_keeps_the_first).
    assert_eq!(
        report.candidates[2].delta_len, report.candidates[3].delta_len,
        "the sample's two transformed bodies must compare equal"
    );
    let coded: Vec<((ScanProfile, Option<Transform>), u64)> = report
        .candidates
        .iter()
        .filter_map(|c| Some(((c.scan, c.transform), c.coded_len?)))
        .collect();
    assert_eq!(
        coded.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        vec![(ScanProfile::Eager, arm64), (ScanProfile::Steady, arm64)],
        "the two smallest compared must both be coded in full"
    );
    let best = coded
        .iter()
        .fold(None, |best: Option<&(_, u64)>, c| match best {
            Some(b) if b.1 <= c.1 => Some(b),
            _ => Some(c),
        })
        .expect("two coded");
    assert_eq!(
        (
            (report.scan, report.algorithm.transform()),
            report.delta_container_len
        ),
        *best
    );
    assert_eq!((smallest.scan, smallest.transform), best.0);
    // Coded again at level 19: no larger than at the comparison level.
    assert!(report.delta_container_len <= smallest.delta_len);
}

#[test]
fn the_transform_is_dropped_where_it_does_not_win_and_not_tried_on_data() {
    // Text holds no call opcodes: the x86 transform changes nothing, so it cannot be
    // smaller and the plain delta is kept (this text compresses so well that the full
    // image ships in the end).
    let old = b"calibration table for the brake controller, version 1\n".repeat(4000);
    let mut new = old.clone();
    new.splice(
        1000..1000,
        b"a new line of text in the middle\n".iter().copied(),
    );
    let forced = BuildOptions {
        transform: TransformChoice::Try(Transform::X86_64),
        ..options()
    };
    let report = round_trip_with(&old, &new, &forced);
    assert_ne!(report.algorithm.transform(), Some(Transform::X86_64));
    assert!(report.delta_container_len <= report.plain_delta_len);
    let (_, transformed_len) = report.transformed.expect("a forced transform is tried");
    assert!(transformed_len >= report.plain_delta_len);
    // Where the transform loses outright (data whose 0xE8 bytes it rewrites, so every
    // insertion changes the rewritten bytes after it), the plain delta ships: exactly
    // what a build of the plain body alone (same scan profile) ships, and no larger
    // than its size compared (at COMPARE_LEVEL, zstd streams only).
    let old = synthetic::image(3, 200_000);
    let new = synthetic::next_release(&old, 5, 50);
    for lzma in [false, true] {
        let report = round_trip_with(
            &old,
            &new,
            &BuildOptions {
                lzma,
                min_saving_percent: 0,
                ..forced.clone()
            },
        );
        let (_, transformed_len) = report.transformed.expect("a forced transform is tried");
        assert!(
            transformed_len > report.plain_delta_len,
            "the sample must make the transform lose ({transformed_len} vs {})",
            report.plain_delta_len
        );
        assert!(
            report.algorithm.is_bsdiff(),
            "a delta ships (no minimum saving)"
        );
        assert_eq!(report.algorithm.transform(), None, "the plain delta ships");
        let alone = round_trip_with(
            &old,
            &new,
            &BuildOptions {
                lzma,
                min_saving_percent: 0,
                transform: TransformChoice::Off,
                scan: Some(report.scan),
                ..options()
            },
        );
        assert_eq!(report.delta_container_len, alone.delta_container_len);
        assert!(report.delta_container_len <= report.plain_delta_len);
    }
    // Auto does not even try it on data.
    let report = round_trip(&old, &new);
    assert_eq!(
        report.transformed, None,
        "data must not pay for a transform"
    );
    // A code pair built with the transform off ships the plain delta.
    let (old, new) = synthetic::code_release_pair(CodeKind::Arm64, 8, 100_000, 400);
    let off = BuildOptions {
        transform: TransformChoice::Off,
        ..options()
    };
    let report = round_trip_with(&old, &new, &off);
    assert!(report.algorithm.is_bsdiff());
    assert_eq!(
        (report.algorithm.transform(), report.transformed),
        (None, None)
    );
}

/// A container whose segments carry their diff streams as LZMA2, its images, and the
/// offset of its first LZMA2-coded segment.
fn lzma_sample() -> (Vec<u8>, Vec<u8>, Vec<u8>, usize) {
    let (old, new) = synthetic::code_release_pair(CodeKind::Arm64, 8, 100_000, 400);
    let (container, report) = build_delta(
        &old,
        &new,
        &BuildOptions {
            transform: TransformChoice::Off,
            segment_len: 30_000,
            one_stream: false,
            ..options()
        },
    )
    .expect("build");
    assert_eq!(report.algorithm, Algorithm::BsdiffLzma(None));
    assert!(report.segments >= 3);
    let first = segment_with(&container, |h| h.diff_coding == DiffCoding::Lzma2)
        .expect("a segment with an LZMA2-coded diff");
    (container, old, new, first)
}

/// A container whose segments carry their runs blocks and codes as LZMA2 streams (a
/// release that changes one byte in 401: long zero runs around few codes), its
/// images, and the offset of its first segment.
fn sparse_sample() -> (Vec<u8>, Vec<u8>, Vec<u8>, usize) {
    let old = synthetic::image(5, 300_000);
    let mut new = old.clone();
    for (i, byte) in new.iter_mut().enumerate().filter(|(i, _)| i % 401 == 17) {
        *byte = byte.wrapping_add(1 + (i % 3) as u8);
    }
    let (container, report) = build_delta(
        &old,
        &new,
        &BuildOptions {
            segment_len: 30_000,
            one_stream: false,
            ..options()
        },
    )
    .expect("build");
    assert_eq!(report.algorithm, Algorithm::BsdiffLzma(None));
    let first = segment_with(&container, |h| {
        h.diff_coding == DiffCoding::RunsAndCodesLzma2 && h.codes_len > 0
    })
    .expect("a segment with LZMA2-coded runs and codes");
    (container, old, new, first)
}

/// Where the first segment of `container` that `pick` chooses starts.
fn segment_with(container: &[u8], pick: fn(&SegmentHeader) -> bool) -> Option<usize> {
    segment_offsets(container)
        .into_iter()
        .find(|&at| pick(&SegmentHeader::parse(&container[at..]).expect("own segment parses")))
}

/// Where the frame `frame` (0 control, 1 extra, 2 runs, 3 codes) of the segment at `at`
/// lies in `container`.
fn frame_range(container: &[u8], at: usize, frame: usize) -> std::ops::Range<usize> {
    let segment = SegmentHeader::parse(&container[at..]).expect("own segment parses");
    let lens = segment.frame_lens().map(|n| n as usize);
    let start = at + SEGMENT_HEADER_LEN + lens[..frame].iter().sum::<usize>();
    start..start + lens[frame]
}

/// The frame `frame` of the segment at `at`.
fn frame_of(container: &[u8], at: usize, frame: usize) -> &[u8] {
    &container[frame_range(container, at, frame)]
}

/// `container` with the segment at `at` given a rewritten header and its frame `frame`
/// replaced by `body`.
fn rewrite_frame(
    container: &[u8],
    at: usize,
    frame: usize,
    edit: &dyn Fn(&mut SegmentHeader),
    body: &[u8],
) -> Vec<u8> {
    let range = frame_range(container, at, frame);
    let mut header = SegmentHeader::parse(&container[at..]).expect("own segment parses");
    edit(&mut header);
    [
        &container[..at],
        &header.encode()[..],
        &container[at + SEGMENT_HEADER_LEN..range.start],
        body,
        &container[range.end..],
    ]
    .concat()
}

/// Where each segment header of a well-formed bsdiff container starts.
fn segment_offsets(container: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = HEADER_LEN;
    while at < container.len() {
        let segment = SegmentHeader::parse(&container[at..]).expect("own segment parses");
        offsets.push(at);
        at += segment.encoded_len() as usize;
    }
    offsets
}

#[test]
fn lzma_coded_diff_streams_are_smaller_and_can_be_turned_off() {
    let (container, old, new, _) = lzma_sample();
    let (result, out) = apply(&container, &old);
    assert_eq!(
        result.expect("applies").algorithm,
        Algorithm::BsdiffLzma(None)
    );
    assert!(out == new);
    // Off, every segment keeps zstd runs + codes (algorithm 1, for older agents), and
    // the container is larger.
    let (zstd_only, report) = build_delta(
        &old,
        &new,
        &BuildOptions {
            transform: TransformChoice::Off,
            segment_len: 30_000,
            lzma: false,
            ..options()
        },
    )
    .expect("build");
    assert_eq!(report.algorithm, Algorithm::BsdiffZstd);
    assert!(segment_offsets(&zstd_only)
        .iter()
        .all(|&at| zstd_only[at..at + 4] == *b"OSEG"));
    assert!(container.len() < zstd_only.len());
    let (result, out) = apply(&zstd_only, &old);
    result.expect("applies");
    assert!(out == new);
}

#[test]
fn runs_and_codes_are_lzma2_coded_where_that_is_smallest() {
    let (container, old, new, _) = sparse_sample();
    let (result, out) = apply(&container, &old);
    assert_eq!(
        result.expect("applies").algorithm,
        Algorithm::BsdiffLzma(None)
    );
    assert!(out == new);
    let offsets = segment_offsets(&container);
    assert!(offsets.len() >= 5);
    // Every segment of this release: long zero runs, few codes.
    assert!(offsets.iter().all(|&at| {
        SegmentHeader::parse(&container[at..])
            .expect("own segment parses")
            .diff_coding
            == DiffCoding::RunsAndCodesLzma2
    }));
    // Smaller than with zstd frames only.
    let (zstd_only, _) = build_delta(
        &old,
        &new,
        &BuildOptions {
            segment_len: 30_000,
            lzma: false,
            ..options()
        },
    )
    .expect("build");
    assert!(container.len() < zstd_only.len());
    // A dense, word-structured change still takes the one-stream LZMA2 diff.
    let (dense, ..) = lzma_sample();
    assert!(segment_with(&dense, |h| h.diff_coding == DiffCoding::Lzma2).is_some());
    // Hand-made: LZMA2-coded runs with no codes stream (every diff byte zero), and
    // with one code.
    let old = b"0123456789abcdef";
    let copy = Control {
        seek: 0,
        diff_len: 16,
        extra_len: 0,
    };
    let (result, out) = apply(&handmade_lzma_runs(old, &[copy], &[0; 16], old), old);
    result.expect("runs without codes apply");
    assert_eq!(out, old);
    let mut diff = [0u8; 16];
    diff[5] = 1;
    let (result, out) = apply(
        &handmade_lzma_runs(old, &[copy], &diff, b"0123466789abcdef"),
        old,
    );
    result.expect("runs with one code apply");
    assert_eq!(out, b"0123466789abcdef");
}

/// The LZMA2 properties byte `(pb · 5 + lp) · 9 + lc` of each LZMA2-coded stream in
/// frame `frame` (0 control, 1 extra, 2 runs, 3 diff, 4 the codes frame of LZMA2-coded
/// runs and codes) of `container` whose first chunk is compressed (a stored chunk
/// carries none).
fn lzma_stream_properties(container: &[u8], frame: usize) -> Vec<u8> {
    let mut found = Vec::new();
    for at in segment_offsets(container) {
        let header = SegmentHeader::parse(&container[at..]).expect("own segment parses");
        let lzma = match frame {
            0 => header.control_coding == ControlCoding::Lzma2,
            1 => header.extra_coding == ExtraCoding::Lzma2,
            2 | 4 => header.diff_coding == DiffCoding::RunsAndCodesLzma2,
            _ => header.diff_coding == DiffCoding::Lzma2,
        };
        let frame = frame.min(3);
        let stream = frame_of(container, at, frame);
        // Control byte 0xE0-0xFF: a compressed chunk that resets the dictionary and sets
        // new properties, which follow the two 16-bit sizes.
        if lzma && stream.first().is_some_and(|&control| control >= 0xe0) {
            found.push(stream[5]);
        }
    }
    found
}

#[test]
fn lzma2_literal_models_follow_the_stream_and_the_instruction_set() {
    // Diff streams: lc 3, lp 0, pb 0 in an image of ARM64 code (measured smaller on the
    // ARM64 tune pairs), pb 2 otherwise; extra streams: pb 0 in every image; control
    // blocks and runs blocks: lc 1, lp 0, pb 0; codes: lc 0 (or 3 where smaller, see
    // `the_codes_take_the_smaller_of_their_literal_models`), lp 0, pb 0.
    const PB0: u8 = 3;
    const PB2: u8 = (2 * 5) * 9 + 3;
    const CONTROL: u8 = 1;
    const CODES: u8 = 0;
    let (sparse, ..) = sparse_sample();
    let (arm64, arm64_old, arm64_new, _) = lzma_sample();
    // The same images built with the transform tried: every body compared with zstd
    // streams, the kept one recoded with LZMA2 (`recode_body`), with the same models.
    // (A dense, word-structured change on top, so that the kept body's diff streams
    // take LZMA2 too.)
    let mut arm64_new = arm64_new;
    for (i, byte) in arm64_new.iter_mut().enumerate().filter(|(i, _)| i % 4 == 1) {
        *byte = byte.wrapping_add((i / 4096 % 3) as u8 + (i % 7 == 0) as u8);
    }
    // Segments (not one stream, algorithm 5) even where the body is small: their
    // streams' models are what this test reads.
    let segmented = BuildOptions {
        one_stream: false,
        ..options()
    };
    let auto = BuildOptions {
        segment_len: 30_000,
        ..segmented.clone()
    };
    let (recoded, report) = build_delta(&arm64_old, &arm64_new, &auto).expect("build");
    assert_eq!(
        report.algorithm,
        Algorithm::BsdiffLzma(Some(Transform::Arm64))
    );
    // Data (no code) with a dense, word-structured change, which LZMA2 codes smaller
    // than zero runs + codes, and new pieces (extra bytes).
    let old = synthetic::image(5, 300_000);
    let mut new = synthetic::next_release(&old, 11, 300);
    for (i, byte) in new.iter_mut().enumerate().filter(|(i, _)| i % 4 == 1) {
        *byte = byte.wrapping_add((i / 4096 % 3) as u8 + (i % 7 == 0) as u8);
    }
    let (data, report) = build_delta(&old, &new, &segmented).expect("build");
    assert_eq!(report.algorithm, Algorithm::BsdiffLzma(None));
    let many_edits = synthetic::next_release(&old, 12, 300);
    let (controls, _) = build_delta(&old, &many_edits, &segmented).expect("build");
    for (name, container, frame, expected) in [
        ("ARM64 diff", &arm64, 3, PB0),
        ("recoded ARM64 diff", &recoded, 3, PB0),
        ("data diff", &data, 3, PB2),
        ("data extra", &data, 1, PB0),
        ("control", &controls, 0, CONTROL),
        ("runs", &sparse, 2, CONTROL),
        ("codes", &sparse, 4, CODES),
    ] {
        let found = lzma_stream_properties(container, frame);
        assert!(
            !found.is_empty(),
            "{name}: the sample has compressed LZMA2 streams"
        );
        assert!(found.iter().all(|&p| p == expected), "{name}: {found:?}");
    }
}

#[test]
fn hostile_lzma_coded_segments_are_refused_with_typed_errors() {
    let (container, old, _, first) = lzma_sample();
    let extra_at = segment_with(&container, |h| h.extra_coding == ExtraCoding::Lzma2)
        .expect("a segment with an LZMA2-coded extra stream");
    // The sample's control blocks are too short to compress (stored in LZMA2 at their
    // bound, where a byte more is refused by the bound already): the control attacks use
    // a release with many edits, whose control block compresses.
    let many_edits = synthetic::next_release(&old, 11, 300);
    let (control_container, _) = build_delta(&old, &many_edits, &options()).expect("build");
    let control_at = segment_with(&control_container, |h| {
        h.control_coding == ControlCoding::Lzma2
            && u64::from(h.control_zlen) < ota_core::delta::lzma2_bound(h.control_len)
    })
    .expect("a segment with a compressed LZMA2-coded control block");
    type Check = fn(&ApplyError) -> bool;
    let cases: Vec<(String, Vec<u8>, Check)> = vec![
        (
            "an LZMA2-coded segment in an algorithm 1 container".into(),
            rewrite_header(&container, |h| h.algorithm = Algorithm::BsdiffZstd),
            |e| {
                matches!(
                    e,
                    ApplyError::Container(DeltaError::SegmentInconsistent {
                        field: "segment tag",
                        ..
                    })
                )
            },
        ),
        (
            "an LZMA2 stream declaring fewer diff bytes than it holds".into(),
            rewrite_frame(
                &container,
                first,
                3,
                &|h| {
                    h.diff_len -= 1;
                    h.codes_len -= 1;
                    h.extra_len += 1;
                },
                frame_of(&container, first, 3),
            ),
            // The segment's own lengths, or its control entries, disagree first.
            |e| {
                matches!(
                    e,
                    ApplyError::Container(DeltaError::SegmentInconsistent { .. })
                )
            },
        ),
        (
            "an LZMA2-coded extra stream with a prefix".into(),
            rewrite_frame(
                &container,
                extra_at,
                1,
                &|h| h.extra_prefix_len = 4096,
                frame_of(&container, extra_at, 1),
            ),
            |e| {
                matches!(
                    e,
                    ApplyError::Container(DeltaError::SegmentInconsistent {
                        field: "extra prefix",
                        ..
                    })
                )
            },
        ),
        (
            "an LZMA2 stream longer than its bound".into(),
            rewrite_frame(
                &container,
                first,
                3,
                &|h| h.codes_zlen = ota_core::delta::lzma2_bound(h.diff_len) as u32 + 1,
                frame_of(&container, first, 3),
            ),
            |e| matches!(e, ApplyError::Container(DeltaError::LengthOverCap { .. })),
        ),
    ];
    // The same three attacks on each LZMA2 stream: the runs block (frame 2) and the codes
    // (frame 3) of LZMA2-coded runs and codes, the diff (codes slot, frame 3), the extra
    // stream (frame 1) and the control block (frame 0), each with the header field that
    // sizes its frame.
    type SetLen = fn(&mut SegmentHeader, fn(u32) -> u32);
    // Each case with the old image it applies to.
    let mut cases: Vec<(String, Vec<u8>, &[u8], Check)> = cases
        .into_iter()
        .map(|(name, hostile, check)| (name, hostile, &old[..], check))
        .collect();
    let (sparse, sparse_old, _, sparse_at) = sparse_sample();
    /// (stream, container, its old image, segment offset, frame, frame length setter)
    type Attacked<'a> = (&'a str, &'a [u8], &'a [u8], usize, usize, SetLen);
    let streams: [Attacked; 5] = [
        ("runs", &sparse, &sparse_old, sparse_at, 2, |h, f| {
            h.runs_zlen = f(h.runs_zlen)
        }),
        ("codes", &sparse, &sparse_old, sparse_at, 3, |h, f| {
            h.codes_zlen = f(h.codes_zlen)
        }),
        ("diff", &container, &old, first, 3, |h, f| {
            h.codes_zlen = f(h.codes_zlen)
        }),
        ("extra", &container, &old, extra_at, 1, |h, f| {
            h.extra_zlen = f(h.extra_zlen)
        }),
        (
            "control",
            &control_container,
            &old,
            control_at,
            0,
            |h, f| h.control_zlen = f(h.control_zlen),
        ),
    ];
    for (which, container, base, at, frame, set_len) in streams {
        let stream = frame_of(container, at, frame);
        let mut garbage = stream.to_vec();
        let middle = garbage.len() / 2;
        for b in &mut garbage[middle..middle + 4] {
            *b ^= 0xa5;
        }
        let garbage_refused: Check = match frame {
            // A control block or a runs block decoded from garbage may also fail its own
            // checks.
            0 | 2 => |e| {
                matches!(
                    e,
                    ApplyError::CorruptStream { .. }
                        | ApplyError::StreamLength { .. }
                        | ApplyError::TargetMismatch { .. }
                        | ApplyError::Container(_)
                )
            },
            _ => |e| {
                matches!(
                    e,
                    ApplyError::CorruptStream { .. }
                        | ApplyError::StreamLength { .. }
                        | ApplyError::TargetMismatch { .. }
                )
            },
        };
        cases.push((
            format!("garbage inside the LZMA2 {which} stream"),
            rewrite_frame(container, at, frame, &|_| {}, &garbage),
            base,
            garbage_refused,
        ));
        cases.push((
            format!("the LZMA2 {which} stream without its end marker"),
            rewrite_frame(
                container,
                at,
                frame,
                &|h| set_len(h, |n| n - 1),
                &stream[..stream.len() - 1],
            ),
            base,
            |e| {
                matches!(
                    e,
                    ApplyError::CorruptStream { .. } | ApplyError::StreamLength { .. }
                )
            },
        ));
        cases.push((
            format!("bytes after the LZMA2 {which} stream's end inside its frame"),
            rewrite_frame(
                container,
                at,
                frame,
                &|h| set_len(h, |n| n + 1),
                &[stream, b"x"].concat(),
            ),
            base,
            |e| matches!(e, ApplyError::CorruptStream { .. }),
        ));
    }
    for (name, hostile, base, check) in cases {
        let (result, _) = apply(&hostile, base);
        match result {
            Err(err) => assert!(check(&err), "case `{name}`: unexpected error {err:?}"),
            Ok(report) => panic!("case `{name}`: a hostile container applied: {report:?}"),
        }
    }
}

#[test]
fn transformed_deltas_read_only_the_image_part_of_a_longer_slot() {
    // The slot is a partition larger than the image: the last transform block of the
    // source ends at the image's end, not in the junk after it.
    let (old, new) = synthetic::code_release_pair(CodeKind::X86_64, 9, 200_000 + 17, 900);
    let forced = BuildOptions {
        transform: TransformChoice::Try(Transform::X86_64),
        ..options()
    };
    let (container, report) = build_delta(&old, &new, &forced).expect("build");
    assert_eq!(report.algorithm.transform(), Some(Transform::X86_64));
    let mut slot = old.clone();
    slot.extend(std::iter::repeat_n(0xE8, 70_000));
    let (result, out) = apply(&container, &slot);
    result.expect("a longer slot holding the base applies");
    assert!(out == new);
}

#[test]
fn unknown_transform_ids_are_refused_before_anything_is_written() {
    let (old, new) = synthetic::code_release_pair(CodeKind::Arm64, 10, 60_000, 400);
    // Algorithm 3, where byte 11 must name a transform (in algorithm 4, 0 means none).
    let zstd_only = BuildOptions {
        lzma: false,
        ..options()
    };
    let (mut container, report) = build_delta(&old, &new, &zstd_only).expect("build");
    assert_eq!(
        report.algorithm,
        Algorithm::BsdiffZstdTransformed(Transform::Arm64)
    );
    for id in [0u8, 6, 0xFF] {
        container[11] = id;
        let (result, out) = apply(&container, &old);
        assert!(
            matches!(
                result,
                Err(ApplyError::Container(DeltaError::UnknownTransform { id: found })) if found == id
            ),
            "transform id {id}: {result:?}"
        );
        assert!(out.is_empty());
    }
}

#[test]
fn transformed_deltas_round_trip_at_block_edges() {
    // Image lengths on, just under and just over a transform block, with a changed
    // byte at the end, for every transform forced (the unwind-table ones find no table
    // in these images: their code part).
    let block = TRANSFORM_BLOCK as usize;
    for transform in Transform::ALL {
        for len in [1, 4, 5, block - 1, block, block + 1, 2 * block + 3] {
            let kind = match transform.code() {
                Some(Transform::Arm64) => CodeKind::Arm64,
                _ => CodeKind::X86_64,
            };
            let (mut old, _) = synthetic::code_release_pair(kind, len as u64, len + 8, 0);
            old.truncate(len);
            let mut new = old.clone();
            new.insert(len / 2, 0xE8);
            new.push(0x94);
            let options = BuildOptions {
                transform: TransformChoice::Try(transform),
                segment_len: 7_001,
                ..options()
            };
            round_trip_with(&old, &new, &options);
        }
    }
}

#[test]
fn the_saving_a_delta_must_make_over_the_full_image_is_a_build_option() {
    // A fifth of the new image is the old one's start, the rest fresh random bytes: the
    // delta saves about a fifth of the (incompressible) full image.
    let old = random_bytes(41, 60_000);
    let mut new = old[..12_000].to_vec();
    new.extend(random_bytes(42, 48_000));
    let with = |min_saving_percent| BuildOptions {
        min_saving_percent,
        ..options()
    };
    let (container, report) = build_delta(&old, &new, &with(10)).expect("build");
    assert!(plain_bsdiff(report.algorithm), "{report:?}");
    let full = report
        .full_container_len
        .expect("the full image was compared");
    let saving = 100 - report.delta_container_len * 100 / full;
    assert!(
        (15..=25).contains(&saving),
        "the delta saves {saving}%: {report:?}"
    );
    let (result, out) = apply(&container, &old);
    result.expect("apply");
    assert!(out == new);
    // The default asks for 10%.
    assert_eq!(
        build_delta(&old, &new, &options()).expect("build").1,
        report
    );
    // Asking for 30%, the same pair ships its full image.
    let (container, report) = build_delta(&old, &new, &with(30)).expect("build");
    assert_eq!(report.algorithm, Algorithm::FullZstd, "{report:?}");
    assert_eq!(Some(report.container_len), report.full_container_len);
    let (result, out) = apply(&container, b"any old slot");
    result.expect("a full image needs no base");
    assert!(out == new);
}

#[test]
fn full_image_container_applies_whatever_the_old_slot_holds() {
    let old = synthetic::image(5, 50_000);
    let new = synthetic::image(6, 50_000);
    // zstd only: the full image is zstd-compressed, and LZMA2 literals of these
    // synthetic blocks would come out more than 10% smaller than it.
    let zstd_only = BuildOptions {
        lzma: false,
        ..options()
    };
    let (container, report) = build_delta(&old, &new, &zstd_only).expect("build");
    assert_eq!(report.algorithm, Algorithm::FullZstd);
    let (result, out) = apply(&container, b"some other slot content");
    result.expect("a full image needs no base");
    assert!(out == new);
}

#[test]
fn big_images_are_split_into_parts_and_segments_and_still_round_trip() {
    let old = synthetic::image(7, 600_000);
    let new = synthetic::next_release(&old, 8, 30);
    let cases = [
        (
            "window cap splits into parts",
            128 << 10,
            SEGMENT_MAX_TARGET,
        ),
        ("small segments", 256 << 20, 50_000),
        ("both", 100_000, 30_000),
    ];
    for (name, window_cap, segment_len) in cases {
        let report = round_trip_with(
            &old,
            &new,
            &BuildOptions {
                window_cap,
                segment_len,
                // Segments even where the body is small: they are what this counts.
                one_stream: false,
                ..options()
            },
        );
        let expected_parts = (new.len() as u64).div_ceil(window_cap.min(256 << 20)) as usize;
        assert_eq!(report.parts, expected_parts, "case `{name}`");
        assert!(
            report.segments >= new.len() / segment_len as usize,
            "case `{name}`: {} segments for {} bytes of {segment_len}",
            report.segments,
            new.len()
        );
    }
}

/// One structured edit of an image, as a release makes them.
#[derive(Debug, Clone)]
enum Edit {
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Move { from: usize, len: usize, to: usize },
    Flip { at: usize, mask: u8 },
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..2000))
            .prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        (any::<usize>(), 1usize..5000).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), 1usize..8000, any::<usize>()).prop_map(|(from, len, to)| Edit::Move {
            from,
            len,
            to
        }),
        (any::<usize>(), 1u8..=255).prop_map(|(at, mask)| Edit::Flip { at, mask }),
    ]
}

/// Edits small enough that a random base with a few of them is still mostly the base:
/// inserts and deletes of at most a few hundred bytes, moves of up to 8000.
fn small_edit_strategy() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..256))
            .prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        (any::<usize>(), 1usize..512).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), 1usize..8000, any::<usize>()).prop_map(|(from, len, to)| Edit::Move {
            from,
            len,
            to
        }),
        (any::<usize>(), 1u8..=255).prop_map(|(at, mask)| Edit::Flip { at, mask }),
    ]
}

/// `len` uniformly random (incompressible) bytes from `seed`.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = synthetic::Rng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

fn apply_edits(old: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut new = old.to_vec();
    for edit in edits {
        let len = new.len();
        match edit.clone() {
            Edit::Insert { at, bytes } => {
                let at = at % (len + 1);
                new.splice(at..at, bytes);
            }
            Edit::Delete { at, len: n } if len > 0 => {
                let at = at % len;
                new.drain(at..(at + n).min(len));
            }
            Edit::Move { from, len: n, to } if len > 0 => {
                let from = from % len;
                let moved: Vec<u8> = new.drain(from..(from + n).min(len)).collect();
                let to = to % (new.len() + 1);
                new.splice(to..to, moved);
            }
            Edit::Flip { at, mask } if len > 0 => new[at % len] ^= mask,
            _ => {}
        }
    }
    new
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn structured_edits_round_trip(
        seed in any::<u64>(),
        len in 0usize..60_000,
        edits in prop::collection::vec(edit_strategy(), 0..12),
    ) {
        let old = synthetic::image(seed, len);
        let new = apply_edits(&old, &edits);
        round_trip(&old, &new);
    }

    #[test]
    fn random_pairs_round_trip(
        old in prop::collection::vec(any::<u8>(), 0..3000),
        new in prop::collection::vec(any::<u8>(), 0..3000),
    ) {
        let report = round_trip(&old, &new);
        // Independent random bytes share nothing a delta could reuse: past a few bytes
        // the delta can never be 10% below the full image.
        if new.len() >= 64 {
            prop_assert_eq!(report.algorithm, Algorithm::FullZstd, "an unrelated random pair shipped a delta");
        }
    }

    #[test]
    fn related_pairs_ship_a_delta(
        seed in any::<u64>(),
        len in 32_000usize..96_000,
        edits in prop::collection::vec(small_edit_strategy(), 1..8),
    ) {
        // A random (incompressible) base with a few small edits, inserts and moves of
        // up to 8000 bytes: the full image costs the whole base, the delta only the
        // edits and the controls, so the builder must take the bsdiff path.
        let old = random_bytes(seed, len);
        let new = apply_edits(&old, &edits);
        let report = round_trip(&old, &new);
        prop_assert!(plain_bsdiff(report.algorithm), "a related pair shipped the full image");
        prop_assert_eq!(report.container_len, report.delta_container_len);
        prop_assert!(
            report.container_len * 4 < new.len() as u64,
            "{} edits cost {} bytes of a {}-byte image", edits.len(), report.container_len, new.len()
        );
    }

    #[test]
    fn unrelated_pairs_ship_the_full_image(
        seeds in (any::<u64>(), any::<u64>()).prop_filter("distinct seeds", |(a, b)| a != b),
        old_len in 0usize..40_000,
        new_len in 64usize..40_000,
    ) {
        let old = random_bytes(seeds.0, old_len);
        let new = random_bytes(seeds.1, new_len);
        let report = round_trip(&old, &new);
        prop_assert_eq!(report.algorithm, Algorithm::FullZstd, "an unrelated pair shipped a delta");
        prop_assert_eq!(Some(report.container_len), report.full_container_len);
    }

    #[test]
    fn random_pairs_with_tiny_windows_and_segments_round_trip(
        old in prop::collection::vec(0u8..4, 0..5000),
        edits in prop::collection::vec(edit_strategy(), 0..6),
        window_cap in 1u64..3000,
        segment_len in 1u32..2000,
    ) {
        let new = apply_edits(&old, &edits);
        round_trip_with(&old, &new, &BuildOptions { window_cap, segment_len, ..options() });
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mutated_containers_are_refused_or_produce_exactly_the_target(
        which in 0..mutation_samples().len(),
        mutations in prop::collection::vec(container_mutation(), 1..=3),
    ) {
        // Valid containers (several bsdiff segments, a full image, a hand-made one, a
        // transformed one with several segments, one with LZMA2-coded diffs, one with
        // LZMA2-coded runs and codes, one stream, two with detached digests) with
        // bytes flipped, inserted, deleted, cut, or a length field rewritten: unlike
        // random bodies these get past the magic and the segment tag into the inner
        // checks (segment caps, control bounds, runs sums, zstd frames, digests).
        let (container, old, new) = &mutation_samples()[which];
        let hostile = mutate_container(container, &mutations);
        let declared = ContainerHeader::parse(&hostile).map(|h| h.target_len);
        // A detached-digests sample is applied as the agent applies it, with the signed
        // digests (which a mutation of the container cannot reach).
        let detached = ContainerHeader::parse(container).expect("sample parses").digests.is_none();
        let known = if detached { signed(old, new) } else { KnownDigests::default() };
        let (result, out) = apply_known(&hostile, old, &known);
        match result {
            // A mutation the applier cannot see (e.g. inside a zstd frame's unused bits)
            // must still produce the very target: the header's digest is checked.
            Ok(_) => prop_assert!(out == *new, "a mutated container applied to other bytes"),
            Err(ApplyError::ReadDelta(err) | ApplyError::ReadSource(err) | ApplyError::WriteTarget(err)) => {
                prop_assert!(false, "in-memory IO cannot fail: {}", err);
            }
            Err(_) => {}
        }
        match declared {
            Ok(declared) => prop_assert!(out.len() as u64 <= declared, "wrote past the declared target"),
            Err(_) => prop_assert!(out.is_empty(), "wrote with an unreadable header"),
        }
    }
}

/// A byte-level edit of a valid container.
#[derive(Debug, Clone)]
enum ContainerMutation {
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
    Truncate(prop::sample::Index),
    /// A little-endian integer written over 4 or 8 bytes: a rewritten length field when
    /// it lands on one (header and segment headers are mostly length fields).
    Integer(prop::sample::Index, u64, usize),
}

fn container_mutation() -> impl Strategy<Value = ContainerMutation> {
    use prop::sample::Index;
    prop_oneof![
        (any::<Index>(), 1u8..=255).prop_map(|(at, xor)| ContainerMutation::Flip(at, xor)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, b)| ContainerMutation::Insert(at, b)),
        any::<Index>().prop_map(ContainerMutation::Delete),
        any::<Index>().prop_map(ContainerMutation::Truncate),
        (
            any::<Index>(),
            prop_oneof![
                Just(0u64),
                Just(1),
                Just(u64::MAX),
                Just(u64::from(u32::MAX)),
                0u64..100_000,
                any::<u64>()
            ],
            prop_oneof![Just(4usize), Just(8)],
        )
            .prop_map(|(at, value, width)| ContainerMutation::Integer(at, value, width)),
    ]
}

fn mutate_container(container: &[u8], mutations: &[ContainerMutation]) -> Vec<u8> {
    let mut out = container.to_vec();
    for mutation in mutations {
        let len = out.len();
        match mutation {
            ContainerMutation::Flip(at, xor) if len > 0 => out[at.index(len)] ^= xor,
            ContainerMutation::Insert(at, byte) => out.insert(at.index(len + 1), *byte),
            ContainerMutation::Delete(at) if len > 0 => {
                out.remove(at.index(len));
            }
            ContainerMutation::Truncate(at) if len > 0 => out.truncate(at.index(len)),
            ContainerMutation::Integer(at, value, width) if len > 0 => {
                // Land on the fields of the headers more often than on frame bytes.
                let i = at.index(len.min(HEADER_LEN + 2 * SEGMENT_HEADER_LEN));
                let width = (*width).min(len - i);
                out[i..i + width].copy_from_slice(&value.to_le_bytes()[..width]);
            }
            _ => {}
        }
    }
    out
}

/// A container, the old image it applies to and the new image it produces.
type Sample = (Vec<u8>, Vec<u8>, Vec<u8>);

/// Valid containers to mutate, built once.
fn mutation_samples() -> &'static [Sample] {
    static SAMPLES: std::sync::OnceLock<Vec<Sample>> = std::sync::OnceLock::new();
    SAMPLES.get_or_init(|| {
        // Several bsdiff segments (asserted by `sample_delta`).
        let (segmented, old, new) = sample_delta();
        let unrelated = synthetic::image(23, 800);
        let (full, report) = build_delta(&[], &unrelated, &options()).expect("build");
        assert_eq!(report.algorithm, Algorithm::FullZstd);
        let small_old = b"0123456789abcdef".to_vec();
        let control = Control {
            seek: 4,
            diff_len: 4,
            extra_len: 2,
        };
        let small = handmade(&small_old, &[control], &[0, 0, 0, 1], b"XY", b"4568XY");
        let (old_code, new_code) = synthetic::code_release_pair(CodeKind::Arm64, 21, 150_000, 2000);
        let (transformed, report) = build_delta(
            &old_code,
            &new_code,
            &BuildOptions {
                segment_len: 30_000,
                ..options()
            },
        )
        .expect("build");
        assert_eq!(report.algorithm.transform(), Some(Transform::Arm64));
        let (lzma, lzma_old, lzma_new, _) = lzma_sample();
        let (sparse, sparse_old, sparse_new, _) = sparse_sample();
        let (one, _, one_old, one_new) = one_stream_sample();
        // Detached digests (format version 2): applied with the signed digests.
        let detached_one = detach(&one);
        let detached_segmented = detach(&segmented);
        vec![
            (detached_one, one_old.clone(), one_new.clone()),
            (detached_segmented, old.clone(), new.clone()),
            (one, one_old, one_new),
            (sparse, sparse_old, sparse_new),
            (segmented, old, new),
            (full, vec![], unrelated),
            (small, small_old, b"4568XY".to_vec()),
            (transformed, old_code, new_code),
            (lzma, lzma_old, lzma_new),
        ]
    })
}

/// A delta of a structured pair with several segments, its images, and where the body
/// starts.
fn sample_delta() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let old = synthetic::image(11, 120_000);
    let new = synthetic::next_release(&old, 12, 12);
    let (container, report) = build_delta(
        &old,
        &new,
        &BuildOptions {
            segment_len: 40_000,
            // Algorithm 1: zstd streams only (`lzma_sample` is the algorithm 4 one).
            lzma: false,
            ..options()
        },
    )
    .expect("build");
    assert_eq!(report.algorithm, Algorithm::BsdiffZstd);
    assert!(report.segments >= 3);
    (container, old, new)
}

#[test]
fn truncated_containers_are_refused_as_truncated_at_every_cut() {
    // Algorithm 1 (zstd streams) and algorithm 4 (LZMA2 streams: a streamed diff, and
    // runs blocks decoded whole with streamed codes).
    let (container, old, _) = sample_delta();
    let (lzma, lzma_old, _, _) = lzma_sample();
    let (sparse, sparse_old, _, _) = sparse_sample();
    // Algorithm 5: cut inside its header of varints too.
    let (one, _, one_old, _) = one_stream_sample();
    // A cut inside algorithm 5's stream names the one-stream body, wherever the applier
    // is in it (the control block, the extra bytes, the runs block or the codes).
    let stream_start = HEADER_LEN + one_stream_header(&one).1;
    for cut in (stream_start..one.len()).step_by(13) {
        let (result, _) = apply(&one[..cut], &one_old);
        assert!(
            matches!(
                result,
                Err(ApplyError::TruncatedDelta {
                    what: "one-stream body"
                })
            ),
            "one stream cut at {cut} of {}: {result:?}",
            one.len()
        );
    }
    for (container, old) in [
        (container, old),
        (lzma, lzma_old),
        (sparse, sparse_old),
        (one, one_old),
    ] {
        let cuts: Vec<usize> = (0..container.len())
            .step_by(97)
            .chain(HEADER_LEN..HEADER_LEN + 12)
            .chain([container.len() - 1])
            .collect();
        for cut in cuts {
            let (result, _) = apply(&container[..cut], &old);
            assert!(
                matches!(result, Err(ApplyError::TruncatedDelta { .. })),
                "a container cut at {cut} of {} bytes must be refused as truncated, got {result:?}",
                container.len()
            );
        }
    }
}

#[test]
fn wrong_base_is_refused_before_writing_anything() {
    let (container, old, _) = sample_delta();
    let mut other = old.clone();
    other[1000] ^= 1;
    let cases: [(&str, Vec<u8>); 4] = [
        ("one flipped byte", other),
        ("shorter slot", old[..old.len() - 1].to_vec()),
        ("empty slot", vec![]),
        ("different image", synthetic::image(12, 120_000)),
    ];
    for (name, slot) in cases {
        let (result, out) = apply(&container, &slot);
        match result {
            Err(ApplyError::WrongBase { expected, actual }) => {
                assert_eq!(expected.len, old.len() as u64, "case `{name}`");
                assert_ne!(expected, actual, "case `{name}`");
            }
            other => panic!("case `{name}`: expected WrongBase, got {other:?}"),
        }
        assert!(
            out.is_empty(),
            "case `{name}`: {} bytes were written before the base was checked",
            out.len()
        );
    }
}

#[test]
fn detached_digests_save_64_bytes_and_apply_only_with_the_signed_digests() {
    let (one, _, old, new) = one_stream_sample();
    let (segmented, seg_old, seg_new) = sample_delta();
    // Built so by the builder: the same body behind a 28-byte header instead of 92.
    let (built, report) = build_delta(
        &old,
        &new,
        &BuildOptions {
            segment_len: 30_000,
            detached_digests: true,
            ..options()
        },
    )
    .expect("build");
    assert_eq!(report.algorithm, Algorithm::BsdiffOneStream(None));
    assert_eq!(built.len() + 64, one.len());
    assert_eq!(report.container_len, built.len() as u64);
    assert_eq!(&built[..], &detach(&one)[..]);
    assert_eq!(&built[HEADER_LEN_DETACHED..], &one[HEADER_LEN..]);
    assert_eq!(
        report.digests,
        ImageDigests {
            source: Sha256::digest(&old).into(),
            target: Sha256::digest(&new).into(),
        }
    );
    let header = ContainerHeader::parse(&built).expect("parses");
    assert_eq!(
        (header.digests, header.encoded_len()),
        (None, HEADER_LEN_DETACHED)
    );
    // One candidate (one scan profile, no transform) goes straight to the sink: the
    // same 64 bytes fewer there.
    let single = BuildOptions {
        segment_len: 30_000,
        scan: Some(ScanProfile::Eager),
        transform: TransformChoice::Off,
        ..options()
    };
    let (single_embedded, report) = build_delta(&old, &new, &single).expect("build");
    assert!(report.candidates.is_empty(), "one candidate: {report:?}");
    let (single_detached, _) = build_delta(
        &old,
        &new,
        &BuildOptions {
            detached_digests: true,
            ..single
        },
    )
    .expect("build");
    assert_eq!(&single_detached[..], &detach(&single_embedded)[..]);
    let (result, out) = apply_known(&single_detached, &old, &signed(&old, &new));
    result.expect("the single candidate applies with the signed digests");
    assert!(out == new);
    let detached_segmented = detach(&segmented);
    for (name, container, old, new) in [
        ("one stream", &built, &old, &new),
        ("segments", &detached_segmented, &seg_old, &seg_new),
    ] {
        let good = signed(old, new);
        let (result, out) = apply_known(container, old, &good);
        result.unwrap_or_else(|err| panic!("{name}: {err:?}"));
        assert!(
            out == *new,
            "{name}: the signed digests rebuild the new image"
        );
        // Without the signed digests there is nothing to check against: refused, and
        // nothing written.
        let missing_target = KnownDigests {
            target: None,
            ..good
        };
        let missing_source = KnownDigests {
            source: None,
            ..good
        };
        for (known, image) in [
            (KnownDigests::default(), "source"),
            (missing_source, "source"),
            (missing_target, "target"),
        ] {
            let (result, out) = apply_known(container, old, &known);
            assert!(
                matches!(
                    result,
                    Err(ApplyError::Container(DeltaError::DigestNotKnown { image: i })) if i == image
                ),
                "{name}, {image} not given: {result:?}"
            );
            assert!(out.is_empty(), "{name}: wrote without the {image} digest");
        }
        // A signed base that is not the slot's: refused before writing.
        let mut other_base = good;
        other_base.source.as_mut().unwrap()[0] ^= 1;
        let (result, out) = apply_known(container, old, &other_base);
        assert!(
            matches!(result, Err(ApplyError::WrongBase { .. })),
            "{name}: {result:?}"
        );
        assert!(out.is_empty(), "{name}: wrote over a wrong base");
        // A signed target the container does not build: refused at the end.
        let mut other_target = good;
        other_target.target.as_mut().unwrap()[0] ^= 1;
        let (result, _) = apply_known(container, old, &other_target);
        assert!(
            matches!(result, Err(ApplyError::TargetMismatch { .. })),
            "{name}: {result:?}"
        );
        // Cut anywhere, the header included: truncated.
        for cut in (0..container.len())
            .step_by(7)
            .chain(0..HEADER_LEN_DETACHED + 2)
        {
            let (result, _) = apply_known(&container[..cut], old, &good);
            assert!(
                matches!(result, Err(ApplyError::TruncatedDelta { .. })),
                "{name} cut at {cut}: {result:?}"
            );
        }
    }
    // A self-describing container with signed digests: they must agree with its own,
    // else it is refused before anything is written.
    let good = signed(&old, &new);
    let (result, out) = apply_known(&one, &old, &good);
    result.expect("agreeing digests");
    assert!(out == new);
    for (known, image) in [
        (
            KnownDigests {
                source: Some(Sha256::digest(&new).into()),
                ..good
            },
            "source",
        ),
        (
            KnownDigests {
                target: Some(Sha256::digest(&old).into()),
                ..good
            },
            "target",
        ),
    ] {
        let (result, out) = apply_known(&one, &old, &known);
        assert!(
            matches!(
                result,
                Err(ApplyError::Container(DeltaError::DigestMismatch { image: i, .. })) if i == image
            ),
            "{image}: {result:?}"
        );
        assert!(out.is_empty(), "wrote with a disagreeing {image} digest");
    }
    // A full image with detached digests needs only the target's.
    let unrelated = synthetic::image(23, 800);
    let (full, report) = build_delta(
        &[],
        &unrelated,
        &BuildOptions {
            detached_digests: true,
            ..options()
        },
    )
    .expect("build");
    assert_eq!(report.algorithm, Algorithm::FullZstd);
    assert_eq!(report.container_len, full.len() as u64);
    let header = ContainerHeader::parse(&full).expect("parses");
    assert_eq!(
        (header.digests, header.encoded_len()),
        (None, HEADER_LEN_DETACHED)
    );
    let (result, out) = apply_known(&full, b"whatever the slot holds", &KnownDigests::default());
    assert!(
        matches!(
            result,
            Err(ApplyError::Container(DeltaError::DigestNotKnown {
                image: "target"
            }))
        ),
        "{result:?}"
    );
    assert!(out.is_empty());
    let target_only = KnownDigests {
        source: None,
        target: Some(Sha256::digest(&unrelated).into()),
    };
    let (result, out) = apply_known(&full, b"whatever the slot holds", &target_only);
    result.expect("a full image needs no base");
    assert!(out == unrelated);
}

#[test]
fn a_larger_slot_whose_prefix_is_the_base_is_accepted() {
    // A/B slots are partitions, usually larger than the image they hold.
    let (container, old, new) = sample_delta();
    let mut partition = old.clone();
    partition.extend_from_slice(&[0xff; 4096]);
    let (result, out) = apply(&container, &partition);
    result.expect("the image at the start of a larger partition is the base");
    assert!(out == new);
}

fn rewrite_header(container: &[u8], edit: impl FnOnce(&mut ContainerHeader)) -> Vec<u8> {
    let mut header = ContainerHeader::parse(container).expect("own header parses");
    let body = &container[header.encoded_len()..];
    edit(&mut header);
    [&header.encode()[..], body].concat()
}

fn rewrite_first_segment(container: &[u8], edit: impl FnOnce(&mut SegmentHeader)) -> Vec<u8> {
    let at = HEADER_LEN;
    let mut segment = SegmentHeader::parse(&container[at..]).expect("own segment parses");
    edit(&mut segment);
    [
        &container[..at],
        &segment.encode()[..],
        &container[at + SEGMENT_HEADER_LEN..],
    ]
    .concat()
}

#[test]
fn hostile_containers_are_refused_with_typed_errors() {
    let (container, old, _) = sample_delta();
    let declared_target = ContainerHeader::parse(&container)
        .expect("header")
        .target_len;
    type Check = fn(&ApplyError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        (
            "oversized target length",
            rewrite_header(&container, |h| h.target_len = MAX_IMAGE_LEN + 1),
            |e| matches!(e, ApplyError::Container(DeltaError::LengthOverCap { .. })),
        ),
        (
            "oversized segment length",
            rewrite_first_segment(&container, |s| {
                s.target_len = SEGMENT_MAX_TARGET + 1;
                s.extra_len = SEGMENT_MAX_TARGET + 1 - s.diff_len;
            }),
            |e| matches!(e, ApplyError::Container(DeltaError::LengthOverCap { .. })),
        ),
        (
            "oversized frame length",
            rewrite_first_segment(&container, |s| s.extra_zlen = u32::MAX),
            |e| matches!(e, ApplyError::Container(DeltaError::LengthOverCap { .. })),
        ),
        (
            "extra prefix outside the old image",
            rewrite_first_segment(&container, |s| s.extra_prefix_start = u64::MAX / 2),
            |e| {
                matches!(
                    e,
                    ApplyError::Container(DeltaError::PrefixOutOfBounds { .. })
                )
            },
        ),
        (
            "declared target shorter than the body",
            rewrite_header(&container, |h| h.target_len = 100),
            |e| {
                matches!(
                    e,
                    ApplyError::Container(DeltaError::TargetOverrun { declared: 100, .. })
                )
            },
        ),
        (
            "declared target longer than the body",
            rewrite_header(&container, |h| h.target_len += 10),
            |e| matches!(e, ApplyError::TruncatedDelta { .. }),
        ),
        (
            "wrong target digest",
            rewrite_header(&container, |h| {
                if let Some(digests) = h.digests.as_mut() {
                    digests.target[0] ^= 1;
                }
            }),
            |e| matches!(e, ApplyError::TargetMismatch { .. }),
        ),
        (
            "garbage body",
            [&container[..HEADER_LEN], &synthetic::image(77, 5000)[..]].concat(),
            |e| matches!(e, ApplyError::Container(DeltaError::BadSegmentTag { .. })),
        ),
        (
            "garbage inside the control frame",
            {
                let mut c = container.clone();
                let frame = HEADER_LEN + SEGMENT_HEADER_LEN;
                for b in &mut c[frame + 4..frame + 12] {
                    *b ^= 0xa5;
                }
                c
            },
            |e| {
                matches!(
                    e,
                    ApplyError::CorruptStream { .. }
                        | ApplyError::StreamLength { .. }
                        | ApplyError::Container(_)
                )
            },
        ),
        ("trailing bytes", [&container[..], b"x"].concat(), |e| {
            matches!(e, ApplyError::TrailingData)
        }),
        ("bad magic", [b"NOTDELTA", &container[8..]].concat(), |e| {
            matches!(e, ApplyError::Container(DeltaError::BadMagic { .. }))
        }),
    ];
    for (name, hostile, check) in cases {
        let (result, out) = apply(&hostile, &old);
        match result {
            Err(err) => assert!(check(&err), "case `{name}`: unexpected error {err:?}"),
            Ok(report) => panic!("case `{name}`: a hostile container applied: {report:?}"),
        }
        assert!(
            out.len() as u64 <= declared_target,
            "case `{name}`: wrote past the declared target"
        );
    }
}

#[test]
fn garbage_anywhere_in_the_body_is_refused() {
    let (container, old, _) = sample_delta();
    for at in (HEADER_LEN..container.len()).step_by(131) {
        let mut hostile = container.clone();
        hostile[at] ^= 0x5a;
        let (result, out) = apply(&hostile, &old);
        assert!(result.is_err(), "a flipped byte at {at} must not apply");
        assert!(out.len() <= 120_000 * 2, "output must stay bounded");
    }
}

/// A hand-written one-segment container, to reach checks the builder never trips.
fn handmade(old: &[u8], controls: &[Control], diff: &[u8], extra: &[u8], target: &[u8]) -> Vec<u8> {
    handmade_coded(old, controls, diff, extra, target, false)
}

/// A one-segment algorithm 4 container like [`handmade`]'s, without extra bytes, whose
/// runs block and codes are LZMA2 streams (each one stored chunk).
fn handmade_lzma_runs(old: &[u8], controls: &[Control], diff: &[u8], target: &[u8]) -> Vec<u8> {
    handmade_coded(old, controls, diff, &[], target, true)
}

/// A one-segment container: zstd frames (algorithm 1), or with `lzma_runs` the runs block
/// and the codes as stored LZMA2 streams (algorithm 4).
fn handmade_coded(
    old: &[u8],
    controls: &[Control],
    diff: &[u8],
    extra: &[u8],
    target: &[u8],
    lzma_runs: bool,
) -> Vec<u8> {
    let control = encode_control_block(controls);
    let (runs, codes) = encode_runs(diff);
    let frame = |raw: &[u8]| {
        if raw.is_empty() {
            Vec::new()
        } else {
            zstd::bulk::compress(raw, 3).expect("zstd")
        }
    };
    let stored = |raw: &[u8]| -> Vec<u8> {
        if raw.is_empty() {
            Vec::new()
        } else {
            stored_lzma2(raw)
        }
    };
    let diff_frame = if lzma_runs { stored } else { frame };
    let frames = [
        frame(&control),
        frame(extra),
        diff_frame(&runs),
        diff_frame(&codes),
    ];
    let algorithm = if lzma_runs {
        Algorithm::BsdiffLzma(None)
    } else {
        Algorithm::BsdiffZstd
    };
    let header = header_for(algorithm, old, target);
    let mut segment = SegmentHeader::for_streams(
        diff.len() as u32,
        [
            control.len() as u32,
            extra.len() as u32,
            runs.len() as u32,
            codes.len() as u32,
        ],
        frames.each_ref().map(|f| f.len() as u32),
        (0, 0),
    );
    if lzma_runs {
        segment = segment.with_lzma_runs_and_codes(frames[2].len() as u32, frames[3].len() as u32);
    }
    [
        &header.encode()[..],
        &segment.encode()[..],
        &frames.concat(),
    ]
    .concat()
}

#[test]
fn handmade_containers_apply_and_out_of_bounds_seeks_are_refused() {
    let old = b"0123456789abcdef";
    let good = handmade(
        old,
        &[Control {
            seek: 4,
            diff_len: 4,
            extra_len: 2,
        }],
        &[0, 0, 0, 1],
        b"XY",
        b"4568XY",
    );
    let (result, out) = apply(&good, old);
    result.expect("a hand-made container applies");
    assert_eq!(out, b"4568XY");

    let cases: [(&str, Control); 3] = [
        (
            "seek before the start",
            Control {
                seek: -1,
                diff_len: 4,
                extra_len: 2,
            },
        ),
        (
            "diff past the end",
            Control {
                seek: 14,
                diff_len: 4,
                extra_len: 2,
            },
        ),
        (
            "seek far past the end",
            Control {
                seek: i64::MAX,
                diff_len: 4,
                extra_len: 2,
            },
        ),
    ];
    for (name, control) in cases {
        let hostile = handmade(old, &[control], &[0, 0, 0, 1], b"XY", b"4568XY");
        let (result, out) = apply(&hostile, old);
        assert!(
            matches!(
                result,
                Err(ApplyError::Container(DeltaError::ControlOutOfBounds { .. }))
            ),
            "case `{name}`: expected ControlOutOfBounds, got {result:?}"
        );
        assert!(
            out.is_empty(),
            "case `{name}`: nothing may be written for a refused segment"
        );
    }
}

/// A small release of a 200 KB image diffed in 30 KB segments: the container the build
/// ships (one stream, algorithm 5), the one it ships with one stream off (segments,
/// algorithm 4), and the images.
fn one_stream_sample() -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let old = synthetic::image(31, 200_000);
    let mut new = synthetic::next_release(&old, 32, 6);
    // New text (extra bytes that LZMA2 compresses), so the stream is well below its
    // stored worst case.
    let notes = b"release notes: fixes and improvements. ".repeat(40);
    new.splice(100_000..100_000, notes);
    let segmented_options = BuildOptions {
        segment_len: 30_000,
        one_stream: false,
        ..options()
    };
    let (segmented, report) = build_delta(&old, &new, &segmented_options).expect("build");
    assert_eq!(report.algorithm, Algorithm::BsdiffLzma(None));
    assert!(report.segments >= 6, "{report:?}");
    let (one, report) = build_delta(
        &old,
        &new,
        &BuildOptions {
            one_stream: true,
            ..segmented_options
        },
    )
    .expect("build");
    assert_eq!(report.algorithm, Algorithm::BsdiffOneStream(None));
    assert_eq!(
        (report.segments, report.container_len),
        (1, one.len() as u64)
    );
    (one, segmented, old, new)
}

/// The one-stream header of a container and where its stream starts.
fn one_stream_header(container: &[u8]) -> (OneStreamHeader, usize) {
    let target_len = ContainerHeader::parse(container)
        .expect("own header parses")
        .target_len;
    let (header, used) = OneStreamHeader::parse(&container[HEADER_LEN..], target_len)
        .expect("own one-stream header parses");
    (header, HEADER_LEN + used)
}

fn rewrite_one_stream_header(container: &[u8], edit: impl FnOnce(&mut OneStreamHeader)) -> Vec<u8> {
    let (mut header, stream_at) = one_stream_header(container);
    edit(&mut header);
    [
        &container[..HEADER_LEN],
        &header.encode()[..],
        &container[stream_at..],
    ]
    .concat()
}

#[test]
fn a_small_release_ships_as_one_stream_smaller_than_its_segments() {
    let (one, segmented, old, new) = one_stream_sample();
    assert!(
        one.len() < segmented.len(),
        "one stream {} B, segments {} B",
        one.len(),
        segmented.len()
    );
    for container in [&one, &segmented] {
        let (result, out) = apply(container, &old);
        result.expect("applies");
        assert!(out == new);
    }
    let (header, stream_at) = one_stream_header(&one);
    assert_eq!(header.stream_len, (one.len() - stream_at) as u64);
    // Zstd only (agents before algorithm 4) never ships one stream either.
    let (_, report) = build_delta(
        &old,
        &new,
        &BuildOptions {
            segment_len: 30_000,
            lzma: false,
            ..options()
        },
    )
    .expect("build");
    assert_eq!(report.algorithm, Algorithm::BsdiffZstd);
}

#[test]
fn a_one_stream_delta_of_transformed_images_applies() {
    // An ARM64 release whose moved code changes every call: the transformed candidate
    // is the smaller, and its body is small enough for one stream.
    let (old, new) = synthetic::code_release_pair(CodeKind::Arm64, 41, 120_000, 64);
    let report = round_trip_with(
        &old,
        &new,
        &BuildOptions {
            transform: TransformChoice::Try(Transform::Arm64),
            ..options()
        },
    );
    assert_eq!(
        report.algorithm,
        Algorithm::BsdiffOneStream(Some(Transform::Arm64)),
        "{report:?}"
    );
}

#[test]
fn hostile_one_stream_bodies_are_refused_with_typed_errors() {
    let (one, _, old, _) = one_stream_sample();
    let (header, _) = one_stream_header(&one);
    type Check = Box<dyn Fn(&ApplyError) -> bool>;
    fn over(field: &'static str) -> Check {
        Box::new(move |e| {
            matches!(e, ApplyError::Container(DeltaError::LengthOverCap { field: f, .. })
                if *f == field)
        })
    }
    /// Refused by a check of the container (any `DeltaError`).
    fn refused() -> Check {
        Box::new(|e| matches!(e, ApplyError::Container(_)))
    }
    fn inconsistent(field: &'static str) -> Check {
        Box::new(move |e| {
            matches!(e, ApplyError::Container(DeltaError::SegmentInconsistent { field: f, .. })
                if *f == field)
        })
    }
    let cases: Vec<(&str, Vec<u8>, Check, bool)> = vec![
        (
            "control block over its cap",
            rewrite_one_stream_header(&one, |h| h.control_len = SEGMENT_MAX_CONTROL + 1),
            over("control length"),
            true,
        ),
        (
            "more extra bytes than the target",
            rewrite_one_stream_header(&one, |h| h.extra_len = new_len(&one) as u32 + 1),
            inconsistent("extra length"),
            true,
        ),
        (
            "no stream",
            rewrite_one_stream_header(&one, |h| h.stream_len = 0),
            inconsistent("stream length"),
            true,
        ),
        (
            "stream longer than any LZMA2 coding of its bytes",
            rewrite_one_stream_header(&one, |h| h.stream_len = h.decoded_len() * 2 + 100),
            inconsistent("stream length"),
            true,
        ),
        (
            "codes that do not add up with the runs",
            rewrite_one_stream_header(&one, |h| h.codes_len -= 1),
            Box::new(|e: &ApplyError| {
                matches!(
                    e,
                    ApplyError::Container(DeltaError::SegmentInconsistent { .. })
                )
            }),
            true,
        ),
        (
            "a stream declared one byte longer than it is",
            rewrite_one_stream_header(&one, |h| h.stream_len += 1),
            Box::new(
                |e: &ApplyError| matches!(e, ApplyError::CorruptStream { stream, .. } if *stream == "body (lzma2)"),
            ),
            false,
        ),
        (
            "a byte after the stream",
            [&one[..], &[0u8]].concat(),
            Box::new(|e: &ApplyError| matches!(e, ApplyError::TrailingData)),
            false,
        ),
        (
            "a varint longer than ten bytes",
            [&one[..HEADER_LEN], &[0x80u8; 11][..], &one[HEADER_LEN..]].concat(),
            Box::new(|e: &ApplyError| {
                matches!(e, ApplyError::Container(DeltaError::Malformed { .. }))
            }),
            true,
        ),
        (
            "the boundary between extra and runs moved",
            rewrite_one_stream_header(&one, |h| {
                h.extra_len += 1;
                h.runs_len -= 1;
            }),
            refused(),
            true,
        ),
        (
            "the boundary between control and extra moved",
            rewrite_one_stream_header(&one, |h| {
                h.control_len += 1;
                h.extra_len -= 1;
            }),
            refused(),
            true,
        ),
        (
            "a stream declared shorter than it is",
            rewrite_one_stream_header(&one, |h| h.stream_len -= 1),
            Box::new(|e: &ApplyError| {
                matches!(
                    e,
                    ApplyError::CorruptStream { .. } | ApplyError::StreamLength { .. }
                )
            }),
            false,
        ),
    ];
    assert!(header.codes_len > 0 && header.extra_len > 0, "{header:?}");
    // Below its stored worst case, so a stream one byte longer is still a valid length.
    assert!(
        header.stream_len + 1 < header.decoded_len(),
        "the sample's stream must compress: {header:?}"
    );
    for (name, hostile, check, nothing_written) in cases {
        let (result, out) = apply(&hostile, &old);
        let err = result.expect_err(name);
        assert!(check(&err), "case `{name}`: got {err:?}");
        if nothing_written {
            assert!(out.is_empty(), "case `{name}`: {} bytes written", out.len());
        }
    }
}

/// The target length a container declares.
fn new_len(container: &[u8]) -> u64 {
    ContainerHeader::parse(container)
        .expect("own header parses")
        .target_len
}

/// A one-stream container (algorithm 5) made by hand: `controls`, `extra`, the runs
/// (LEB128) and codes of `diff` as one stored LZMA2 chunk (no compression) behind the
/// header, the chunk passed through `chunk` (to break it).
fn handmade_one_stream(
    old: &[u8],
    controls: &[Control],
    diff: &[u8],
    extra: &[u8],
    target: &[u8],
    chunk: impl FnOnce(Vec<u8>) -> Vec<u8>,
) -> Vec<u8> {
    let control = encode_control_block(controls);
    let (escaped, codes) = encode_runs(diff);
    let pairs: Vec<(u64, u64)> = RunBlock::parse(&escaped, diff.len() as u32, codes.len() as u32)
        .expect("own runs parse")
        .pairs()
        .collect();
    let runs = encode_run_pairs(&pairs, RunCoding::Leb128);
    let raw = [&control[..], extra, &runs, &codes].concat();
    let stream = chunk(stored_lzma2(&raw));
    let body = OneStreamHeader {
        control_len: control.len() as u32,
        extra_len: extra.len() as u32,
        runs_len: runs.len() as u32,
        codes_len: codes.len() as u32,
        stream_len: stream.len() as u64,
    };
    let header = header_for(Algorithm::BsdiffOneStream(None), old, target);
    [&header.encode()[..], &body.encode(), &stream].concat()
}

/// The container header of `algorithm` turning `old` into `target`.
fn header_for(algorithm: Algorithm, old: &[u8], target: &[u8]) -> ContainerHeader {
    ContainerHeader {
        algorithm,
        source_len: old.len() as u64,
        target_len: target.len() as u64,
        digests: Some(ImageDigests {
            source: Sha256::digest(old).into(),
            target: Sha256::digest(target).into(),
        }),
    }
}

/// `raw` (1 to 65,536 bytes) as an LZMA2 stream of one stored chunk: control 0x01
/// (uncompressed, dictionary reset), size − 1 big-endian, the bytes, the end marker.
fn stored_lzma2(raw: &[u8]) -> Vec<u8> {
    let size = u16::try_from(raw.len() - 1).expect("one stored chunk holds at most 64 KiB");
    [&[0x01][..], &size.to_be_bytes(), raw, &[0x00]].concat()
}

#[test]
fn handmade_one_stream_containers_apply_and_hostile_ones_are_refused() {
    let old = b"0123456789abcdef";
    let control = Control {
        seek: 4,
        diff_len: 4,
        extra_len: 2,
    };
    let made = |control: Control, chunk: fn(Vec<u8>) -> Vec<u8>| {
        handmade_one_stream(old, &[control], &[0, 0, 0, 1], b"XY", b"4568XY", chunk)
    };
    let (result, out) = apply(&made(control, |stream| stream), old);
    assert_eq!(
        result
            .expect("a hand-made one-stream container applies")
            .algorithm,
        Algorithm::BsdiffOneStream(None)
    );
    assert_eq!(out, b"4568XY");

    let out_of_bounds = made(
        Control {
            seek: 14,
            ..control
        },
        |stream| stream,
    );
    let (result, out) = apply(&out_of_bounds, old);
    assert!(
        matches!(
            result,
            Err(ApplyError::Container(DeltaError::ControlOutOfBounds { .. }))
        ),
        "{result:?}"
    );
    assert!(out.is_empty());

    // Chunk control 0x03 is no LZMA2 chunk type.
    let corrupt = made(control, |mut stream| {
        stream[0] = 0x03;
        stream
    });
    let (result, out) = apply(&corrupt, old);
    assert!(
        matches!(result, Err(ApplyError::CorruptStream { stream, .. }) if stream == "body (lzma2)"),
        "{result:?}"
    );
    assert!(out.is_empty());

    // The stream ends (end marker) before the codes it declares.
    let short = made(control, |mut stream| {
        let end = stream.len() - 1;
        stream[1..3].copy_from_slice(&((end - 3 - 2) as u16).to_be_bytes());
        stream.remove(end - 1);
        stream
    });
    let (result, _) = apply(&short, old);
    assert!(
        matches!(result, Err(ApplyError::StreamLength { stream, .. }) if stream == "body (lzma2)"),
        "{result:?}"
    );

    // A wrong base is refused before anything is written.
    let (result, out) = apply(&made(control, |stream| stream), b"0123456789abcdeX");
    assert!(
        matches!(result, Err(ApplyError::WrongBase { .. })),
        "{result:?}"
    );
    assert!(out.is_empty());
}

#[test]
fn one_stream_ships_only_where_it_is_smaller() {
    // A small dense change and a few edits: the body's own per-stream codings are
    // smaller than one stream here, so the segments ship.
    let old = synthetic::image(101, 40_000);
    let mut new = synthetic::next_release(&old, 201, 6);
    for (i, byte) in new.iter_mut().enumerate().filter(|(i, _)| i % 4 == 1) {
        *byte = byte.wrapping_add((i / 4096 % 3) as u8 + (i % 7 == 0) as u8);
    }
    let segmented_options = BuildOptions {
        one_stream: false,
        ..options()
    };
    let (segmented, report) = build_delta(&old, &new, &segmented_options).expect("build");
    assert_eq!(report.algorithm, Algorithm::BsdiffLzma(None));
    let body = &segmented[HEADER_LEN..];
    let one = one_stream_body(body, &old[..], new.len() as u64)
        .expect("the body decodes")
        .expect("the body fits one stream");
    assert!(
        one.len() > body.len(),
        "the sample must be one where one stream is larger: {} vs {} B",
        one.len(),
        body.len()
    );
    // The larger one stream is still a correct container of the same release.
    let (result, out) = apply(&as_one_stream(&segmented, &one), &old);
    result.expect("the one-stream coding applies");
    assert!(out == new);
    let (shipped, report) = build_delta(&old, &new, &options()).expect("build");
    assert_eq!(report.algorithm, Algorithm::BsdiffLzma(None));
    assert_eq!(shipped, segmented);
}

/// Whole 64 KiB transform blocks of `image` at their absolute offsets, forward or back.
fn transform_image(image: &[u8], transform: Transform, forward: bool) -> Vec<u8> {
    let mut out = image.to_vec();
    for (k, block) in out.chunks_mut(TRANSFORM_BLOCK as usize).enumerate() {
        let start = k as u64 * TRANSFORM_BLOCK;
        if forward {
            transform.forward(start, block);
        } else {
            transform.inverse(start, block);
        }
    }
    out
}

/// `new` with, in the transformed domain, 2 KB inserted in the middle: 16-byte pieces of
/// the transformed old image between 16 random bytes each. They are too short for the
/// match search, so they become extra bytes, and a zstd extra frame finds them in its
/// prefix of transformed old bytes only (in plain bytes the pieces' calls differ).
fn with_transformed_old_pieces(old: &[u8], new: &[u8], transform: Transform) -> Vec<u8> {
    let old_t = transform_image(old, transform, true);
    let mut new_t = transform_image(new, transform, true);
    let mut rng = synthetic::Rng::new(77);
    // Pieces where the transform changed at least two of the four words.
    let pieces: Vec<usize> = (0..old.len() - 16)
        .step_by(256)
        .filter(|&at| {
            (at..at + 16)
                .step_by(4)
                .filter(|&w| old[w..w + 4] != old_t[w..w + 4])
                .count()
                >= 2
        })
        .take(64)
        .collect();
    assert_eq!(
        pieces.len(),
        64,
        "the code sample must hold transformed words"
    );
    let mut inserted = Vec::new();
    for at in pieces {
        inserted.extend_from_slice(&old_t[at..at + 16]);
        inserted.extend((0..4).flat_map(|_| (rng.next_u64() as u32).to_le_bytes()));
    }
    let middle = new_t.len() / 2 / 4 * 4;
    new_t.splice(middle..middle, inserted);
    transform_image(&new_t, transform, false)
}

/// `container`'s header, now naming algorithm 5 (same transform), followed by `body`.
fn as_one_stream(container: &[u8], body: &[u8]) -> Vec<u8> {
    let header = rewrite_header(container, |h| {
        h.algorithm = Algorithm::BsdiffOneStream(h.algorithm.transform())
    });
    [&header[..HEADER_LEN], body].concat()
}

#[test]
fn every_segment_coding_merges_into_one_stream_that_applies() {
    // Segments whose diff is one LZMA2 stream (re-split into runs and codes), whose runs
    // and codes are LZMA2 streams, and zstd segments of transformed images whose extra
    // frames are compressed against prefixes of the transformed old image.
    let (lzma, lzma_old, lzma_new, _) = lzma_sample();
    let (sparse, sparse_old, sparse_new, _) = sparse_sample();
    let (old_code, new_code) = synthetic::code_release_pair(CodeKind::Arm64, 21, 150_000, 2000);
    let new_code = with_transformed_old_pieces(&old_code, &new_code, Transform::Arm64);
    let (transformed, report) = build_delta(
        &old_code,
        &new_code,
        &BuildOptions {
            transform: TransformChoice::Try(Transform::Arm64),
            segment_len: 30_000,
            lzma: false,
            ..options()
        },
    )
    .expect("build");
    assert_eq!(
        report.algorithm,
        Algorithm::BsdiffZstdTransformed(Transform::Arm64)
    );
    assert!(segment_offsets(&transformed).iter().any(|&at| {
        SegmentHeader::parse(&transformed[at..])
            .expect("own segment parses")
            .extra_prefix_len
            > 0
    }));
    let old_t = ota_server::delta::image::TransformedImage::new(&old_code[..], Transform::Arm64)
        .expect("in memory");
    for (name, container, old, new) in [
        ("LZMA2 diffs", &lzma, &lzma_old, &lzma_new),
        ("LZMA2 runs and codes", &sparse, &sparse_old, &sparse_new),
        (
            "transformed, zstd extra against prefixes",
            &transformed,
            &old_code,
            &new_code,
        ),
    ] {
        let body = &container[HEADER_LEN..];
        let one = if name.starts_with("transformed") {
            one_stream_body(body, &old_t, new.len() as u64)
        } else {
            one_stream_body(body, &old[..], new.len() as u64)
        }
        .expect("the body decodes")
        .expect("the body fits one stream");
        let (result, out) = apply(&as_one_stream(container, &one), old);
        result.unwrap_or_else(|err| panic!("case `{name}`: {err:?}"));
        assert!(out == *new, "case `{name}`");
    }
}

/// An ELF64 image of `len` bytes for `machine` (62 x86-64, 183 AArch64): code bytes
/// from `code`, program headers naming an unwind table at `table_at`, and the table of
/// one `(location, FDE)` pair per function of `sizes`, starting at location `first`.
fn elf_with_unwind_table(
    code: &[u8],
    machine: u16,
    len: usize,
    table_at: usize,
    first: i32,
    sizes: &[i32],
) -> Vec<u8> {
    let mut image = code[..len].to_vec();
    image[..64].fill(0);
    image[..6].copy_from_slice(b"\x7fELF\x02\x01");
    image[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
    image[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
    image[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    image[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
    let table_len = 12 + 8 * sizes.len();
    let mut phdr = [0u8; 56];
    phdr[..4].copy_from_slice(&0x6474_e550u32.to_le_bytes());
    // p_flags' top byte 0xE8 ("call"), its operand p_offset's low four bytes ending in
    // 0x00: the x86-64 code part rewrites p_offset, so a locator reading code-transformed
    // bytes, not the image's own, would miss the table.
    phdr[4..8].copy_from_slice(&0xE800_0000u32.to_le_bytes());
    phdr[8..16].copy_from_slice(&(table_at as u64).to_le_bytes());
    phdr[32..40].copy_from_slice(&(table_len as u64).to_le_bytes());
    image[64..120].copy_from_slice(&phdr);
    let table = &mut image[table_at..table_at + table_len];
    table[..4].copy_from_slice(&[1, 0x1b, 0x03, 0x3b]);
    table[8..12].copy_from_slice(&(sizes.len() as u32).to_le_bytes());
    let (mut location, mut fde) = (first, 0x40i32);
    for (k, size) in sizes.iter().enumerate() {
        let at = 12 + 8 * k;
        table[at..at + 4].copy_from_slice(&location.to_le_bytes());
        table[at + 4..at + 8].copy_from_slice(&fde.to_le_bytes());
        location += size;
        fde += 24 + size % 16;
    }
    image
}

/// An old and a new release whose unwind tables list `count` functions at `table_at`,
/// the new one with a function of 48 bytes inserted near the start (every later entry
/// moved, one entry more), over `kind` code whose second half moves by 4,100 bytes.
fn unwind_table_pair(
    kind: CodeKind,
    machine: u16,
    table_at: usize,
    count: usize,
) -> (Vec<u8>, Vec<u8>) {
    let len = 400_000;
    let (old_code, new_code) = synthetic::code_release_pair(kind, 77, len, 4100);
    let mut rng = 0x2026_1203u64;
    let sizes: Vec<i32> = (0..count)
        .map(|_| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            16 + ((rng >> 33) % 400) as i32
        })
        .collect();
    let mut new_sizes = sizes.clone();
    new_sizes.insert(10, 48);
    let old = elf_with_unwind_table(&old_code, machine, len, table_at, -0x2_0000, &sizes);
    let new = elf_with_unwind_table(&new_code, machine, len, table_at, -0x2_0000, &new_sizes);
    (old, new)
}

#[test]
fn an_unwind_table_of_moved_functions_is_delta_coded_and_applies() {
    let block = TRANSFORM_BLOCK as usize;
    // The table in block 3; across two block ends (its header just before one); in
    // block 0 with the program headers.
    let layouts = [(200_000, 6_000), (3 * block - 20, 10_000), (2_000, 3_000)];
    for (kind, machine, code, auto) in [
        (CodeKind::X86_64, 62, None, Transform::EhTable),
        (
            CodeKind::Arm64,
            183,
            Some(Transform::Arm64),
            Transform::Arm64EhTable,
        ),
    ] {
        for (table_at, count) in layouts {
            let (old, new) = unwind_table_pair(kind, machine, table_at, count);
            let report = round_trip_with(&old, &new, &options());
            assert_eq!(report.algorithm.transform(), Some(auto), "{report:?}");
            // Against the same build without the table part: the table's moved entries
            // cost thousands of bytes.
            let without = round_trip_with(
                &old,
                &new,
                &BuildOptions {
                    transform: code.map_or(TransformChoice::Off, TransformChoice::Try),
                    ..options()
                },
            );
            assert!(
                report.container_len + 2_000 < without.container_len,
                "{auto:?} at {table_at}: {} vs {} without the table",
                report.container_len,
                without.container_len
            );
            // `eh_table = false`: `Auto` never delta-codes the table.
            let off = round_trip_with(
                &old,
                &new,
                &BuildOptions {
                    eh_table: false,
                    ..options()
                },
            );
            assert!(
                off.algorithm.transform().is_none_or(|t| !t.uses_table()),
                "{off:?}"
            );
            // Forced, every table transform applies and beats its code part alone,
            // segmented and as one stream (on the first layout).
            if table_at != layouts[0].0 {
                continue;
            }
            for transform in [
                Transform::EhTable,
                Transform::X86_64EhTable,
                Transform::Arm64EhTable,
            ] {
                for one_stream in [false, true] {
                    let forced = |transform: Option<Transform>| BuildOptions {
                        transform: transform.map_or(TransformChoice::Off, TransformChoice::Try),
                        segment_len: 150_001,
                        one_stream,
                        ..options()
                    };
                    let with = round_trip_with(&old, &new, &forced(Some(transform)));
                    let without = round_trip_with(&old, &new, &forced(transform.code()));
                    assert!(
                        with.container_len < without.container_len,
                        "{transform:?} at {table_at}: {} vs {}",
                        with.container_len,
                        without.container_len
                    );
                }
            }
        }
    }
    // An AArch64 ELF whose code the ARM64 transform does not fit (x86-64 code): `auto`
    // tries the table with and without the ARM64 part, and ships the table alone.
    let (old, new) = unwind_table_pair(CodeKind::X86_64, 183, layouts[0].0, layouts[0].1);
    let report = round_trip_with(&old, &new, &options());
    // In this order (a tie keeps the earlier), once per scan profile.
    let tried: Vec<(ScanProfile, Option<Transform>)> = report
        .candidates
        .iter()
        .map(|c| (c.scan, c.transform))
        .collect();
    let expected: Vec<(ScanProfile, Option<Transform>)> = [
        None,
        Some(Transform::EhTable),
        Some(Transform::Arm64EhTable),
    ]
    .into_iter()
    .flat_map(|t| [(ScanProfile::Eager, t), (ScanProfile::Steady, t)])
    .collect();
    assert_eq!(tried, expected, "{report:?}");
    assert_eq!(
        report.algorithm.transform(),
        Some(Transform::EhTable),
        "{report:?}"
    );
    // The report names the smaller of the two transforms tried, with its size.
    let smallest = |t: Transform| {
        report
            .candidates
            .iter()
            .filter(|c| c.transform == Some(t))
            .map(|c| c.delta_len)
            .min()
            .expect("tried")
    };
    assert!(smallest(Transform::EhTable) < smallest(Transform::Arm64EhTable));
    assert_eq!(
        report.transformed,
        Some((Transform::EhTable, smallest(Transform::EhTable))),
        "{report:?}"
    );
}
