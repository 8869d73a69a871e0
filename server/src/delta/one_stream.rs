//! A small segmented body rewritten as one stream (container algorithm 5).
//!
//! Each segment of a body costs a 56-byte header, and each of its streams a frame with
//! its coder's start-up and end; a release that changes a few hundred bytes of a 30 MB
//! image spends most of its container on them. Here the body the build shipped is read
//! back, its segments' streams decoded and merged into the streams of one segment (the
//! control entries re-based on one old cursor, the zero runs joined where segments
//! meet, and written as LEB128 varints instead of escapes), and the four coded as one
//! raw LZMA2 stream behind a short header of lengths
//! (`ota_core::delta::OneStreamHeader`, `docs/DELTA-FORMAT.md` section 8). The builder
//! keeps whichever is smaller. Pure apart from reading the extra prefixes' old bytes.

use super::builder::{decode_zstd, BuildError, ONE_STREAM_MODELS};
use super::image::ImageSource;
use super::lzma2::{decode_lzma, smallest_lzma_stream};
use ota_core::delta::{
    encode_control_block, encode_run_pairs, encode_runs, Control, ControlBlock, ControlCoding,
    DiffCoding, ExtraCoding, OneStreamHeader, RunBlock, RunCoding, SegmentHeader,
    SEGMENT_HEADER_LEN, SEGMENT_MAX_CONTROL, SEGMENT_MAX_RUNS, SEGMENT_MAX_TARGET,
};

/// Largest shipped body (bytes) the builder tries as one stream. The saving is fixed
/// overhead (tens of bytes per segment and frame), which only matters in a small delta;
/// in a larger one the streams' own LZMA2 models (and zstd where it won) matter more. On
/// the corpus one stream won on every body up to 3.3 KB (2.9–32% smaller) and lost on
/// every one from 22 KB up (zlib-arm64 about 1.1% larger), where trying it cost up to a
/// second (docs/delta-bench.txt, session 22).
pub const ONE_STREAM_MAX_BODY: u64 = 16 << 10;

/// Most decoded bytes (control, extra, runs and codes together) a body is merged into
/// one stream with. A body of at most `ONE_STREAM_MAX_BODY` bytes holds far fewer unless
/// it codes long zero runs (30.9 MB of kernel image with 366 changed bytes: 121 KB of
/// escaped runs); this bounds the merge's memory and its LZMA2 passes whatever the body
/// decodes to.
const ONE_STREAM_MAX_RAW: u64 = 8 << 20;

/// The streams of a whole body merged as one segment's, decoded.
#[derive(Debug, Default, PartialEq, Eq)]
struct MergedStreams {
    control: Vec<u8>,
    extra: Vec<u8>,
    runs: Vec<u8>,
    codes: Vec<u8>,
}

impl MergedStreams {
    /// Decoded bytes of the four streams.
    fn len(&self) -> u64 {
        (self.control.len() + self.extra.len() + self.runs.len() + self.codes.len()) as u64
    }
}

/// `body`, a segmented body of a container with a `target_len`-byte target whose
/// source (transformed as the body was diffed) is `old`, as a one-stream body: header
/// and stream. `None` when the merged streams exceed a segment's caps (the format's
/// bound on the applier's memory).
pub fn one_stream_body(
    body: &[u8],
    old: &(impl ImageSource + ?Sized),
    target_len: u64,
) -> Result<Option<Vec<u8>>, BuildError> {
    if declared_raw_len(body)? > ONE_STREAM_MAX_RAW {
        return Ok(None);
    }
    let Some(merged) = merge_segments(body, old)? else {
        return Ok(None);
    };
    let diff_len = target_len.checked_sub(merged.extra.len() as u64);
    let fits = merged.control.len() <= SEGMENT_MAX_CONTROL as usize
        && merged.extra.len() <= SEGMENT_MAX_TARGET as usize
        && merged.runs.len() <= SEGMENT_MAX_RUNS as usize
        && diff_len.is_some_and(|len| len <= u64::from(u32::MAX))
        && merged.len() <= ONE_STREAM_MAX_RAW;
    if !fits {
        return Ok(None);
    }
    let raw = [
        &merged.control[..],
        &merged.extra,
        &merged.runs,
        &merged.codes,
    ]
    .concat();
    let stream = smallest_lzma_stream(&raw, &ONE_STREAM_MODELS).map_err(BuildError::Write)?;
    let header = OneStreamHeader {
        control_len: merged.control.len() as u32,
        extra_len: merged.extra.len() as u32,
        runs_len: merged.runs.len() as u32,
        codes_len: merged.codes.len() as u32,
        stream_len: stream.len() as u64,
    };
    let mut out = header.encode();
    out.extend_from_slice(&stream);
    // What the applier would refuse is not offered (e.g. a body of no control entry).
    if OneStreamHeader::parse(&out, target_len).is_err() {
        return Ok(None);
    }
    Ok(Some(out))
}

/// Decoded bytes the segments of `body` declare, codes left out where a segment carries
/// its whole diff stream (their count is known only once decoded).
fn declared_raw_len(body: &[u8]) -> Result<u64, BuildError> {
    let mut total = 0u64;
    let mut rest = body;
    while !rest.is_empty() {
        let header = SegmentHeader::parse(rest)
            .map_err(|err| BuildError::Recode(format!("one-stream body: segment header: {err}")))?;
        let codes = match header.diff_coding {
            DiffCoding::Lzma2 => 0,
            _ => header.codes_len,
        };
        total += [header.control_len, header.extra_len, header.runs_len, codes]
            .iter()
            .map(|&len| u64::from(len))
            .sum::<u64>();
        rest = rest
            .get(header.encoded_len() as usize..)
            .unwrap_or_default();
    }
    Ok(total)
}

/// Decodes every segment of `body` and merges their streams; `None` when a merged
/// length no longer fits 32 bits.
fn merge_segments(
    body: &[u8],
    old: &(impl ImageSource + ?Sized),
) -> Result<Option<MergedStreams>, BuildError> {
    let bad_body = |what: &str, err: &dyn std::fmt::Display| {
        BuildError::Recode(format!("one-stream body: {what}: {err}"))
    };
    let mut merged = MergedStreams::default();
    let mut entries: Vec<Control> = Vec::new();
    let mut pairs: Vec<(u64, u64)> = Vec::new();
    let mut segment_cursor = 0u64;
    let mut merged_cursor = 0u64;
    let mut rest = body;
    while !rest.is_empty() {
        let header = SegmentHeader::parse(rest).map_err(|err| bad_body("segment header", &err))?;
        rest = &rest[SEGMENT_HEADER_LEN..];
        let mut frames: [&[u8]; 4] = Default::default();
        for (frame, len) in frames.iter_mut().zip(header.frame_lens()) {
            let len = len as usize;
            if rest.len() < len {
                return Err(bad_body("frame", &"runs past the end of the body"));
            }
            (*frame, rest) = rest.split_at(len);
        }
        let [control, extra, runs, codes] = frames;
        let control = match header.control_coding {
            ControlCoding::Zstd => decode_zstd(control, header.control_len, &[]),
            ControlCoding::Lzma2 => decode_lzma(control, header.control_len),
        }
        .map_err(|err| bad_body("control", &err))?;
        let extra = match header.extra_coding {
            ExtraCoding::Zstd => {
                let start = header.extra_prefix_start;
                let prefix = old
                    .read_range(start..start + u64::from(header.extra_prefix_len))
                    .map_err(|source| BuildError::ReadImage {
                        which: "old",
                        source,
                    })?;
                decode_zstd(extra, header.extra_len, &prefix)
            }
            ExtraCoding::Lzma2 => decode_lzma(extra, header.extra_len),
        }
        .map_err(|err| bad_body("extra", &err))?;
        let (runs, codes) = match header.diff_coding {
            DiffCoding::RunsAndCodes => (
                decode_zstd(runs, header.runs_len, &[]),
                decode_zstd(codes, header.codes_len, &[]),
            ),
            DiffCoding::RunsAndCodesLzma2 => (
                decode_lzma(runs, header.runs_len),
                decode_lzma(codes, header.codes_len),
            ),
            DiffCoding::Lzma2 => match decode_lzma(codes, header.codes_len) {
                Ok(diff) => {
                    let (runs, codes) = encode_runs(&diff);
                    (Ok(runs), Ok(codes))
                }
                Err(err) => (Err(err), Ok(Vec::new())),
            },
        };
        let (runs, codes) = (
            runs.map_err(|err| bad_body("runs", &err))?,
            codes.map_err(|err| bad_body("codes", &err))?,
        );
        let block = ControlBlock::parse(&control, &header, segment_cursor, old.len())
            .map_err(|err| bad_body("control block", &err))?;
        segment_cursor = block.end_cursor;
        for entry in &block.entries {
            let seek = i128::from(entry.old_start) - i128::from(merged_cursor);
            let Ok(seek) = i64::try_from(seek) else {
                return Ok(None);
            };
            join_entry(
                &mut entries,
                Control {
                    seek,
                    diff_len: entry.diff_len,
                    extra_len: entry.extra_len,
                },
            );
            merged_cursor = entry.old_start + u64::from(entry.diff_len);
        }
        let (diff_len, codes_len) = (header.diff_len, codes.len() as u32);
        let runs = if header.diff_coding == DiffCoding::Lzma2 {
            RunBlock::parse(&runs, diff_len, codes_len)
        } else {
            RunBlock::parse(&runs, diff_len, header.codes_len)
        }
        .map_err(|err| bad_body("runs block", &err))?;
        for pair in runs.pairs() {
            join_pair(&mut pairs, pair);
        }
        merged.extra.extend_from_slice(&extra);
        merged.codes.extend_from_slice(&codes);
    }
    if merged.extra.len() > u32::MAX as usize || merged.codes.len() > u32::MAX as usize {
        return Ok(None);
    }
    merged.control = encode_control_block(&entries);
    merged.runs = if pairs.is_empty() {
        Vec::new()
    } else {
        encode_run_pairs(&pairs, RunCoding::Leb128)
    };
    Ok(Some(merged))
}

/// Appends a control entry, joined with the last one when it continues it: the last
/// has no extra bytes and this one reads on where the last stopped (the planner cuts
/// entries at part and segment ends; the cut costs a column value each).
fn join_entry(entries: &mut Vec<Control>, entry: Control) {
    let joined = match entries.last_mut() {
        // Diff bytes read on from the last entry's: after them come this one's extra.
        Some(last) if entry.seek == 0 && last.extra_len == 0 => {
            last.diff_len.checked_add(entry.diff_len).map(|diff_len| {
                last.diff_len = diff_len;
                last.extra_len = entry.extra_len;
            })
        }
        // Extra bytes only: more of the last entry's extra.
        Some(last) if entry.seek == 0 && entry.diff_len == 0 => last
            .extra_len
            .checked_add(entry.extra_len)
            .map(|extra_len| last.extra_len = extra_len),
        _ => None,
    };
    if joined.is_none() {
        entries.push(entry);
    }
}

/// Appends a run pair, joined with the last one where a segment ended in zeros or the
/// next one starts with codes (the pairs stand for the same diff bytes either way).
fn join_pair(pairs: &mut Vec<(u64, u64)>, (zeros, nonzeros): (u64, u64)) {
    match pairs.last_mut() {
        Some(last) if last.1 == 0 || zeros == 0 => {
            last.0 += zeros;
            last.1 += nonzeros;
        }
        _ => pairs.push((zeros, nonzeros)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_joined_where_one_reads_on_without_extra_bytes_between() {
        let entry = |seek, diff_len, extra_len| Control {
            seek,
            diff_len,
            extra_len,
        };
        let mut entries = Vec::new();
        for next in [
            entry(0, 10, 0),
            entry(0, 5, 2),
            entry(0, 0, 3),
            entry(0, 4, 0),
            entry(3, 6, 0),
            entry(0, u32::MAX, 1),
            entry(0, 0, u32::MAX),
        ] {
            join_entry(&mut entries, next);
        }
        // 10 + 5 read on (then 2 extra bytes, and 3 more from an extra-only entry);
        // after extra bytes, diff bytes start a new entry; a seek starts one; sums past
        // 32 bits do not join.
        assert_eq!(
            entries,
            vec![
                entry(0, 15, 5),
                entry(0, 4, 0),
                entry(3, 6, 0),
                entry(0, u32::MAX, 1),
                entry(0, 0, u32::MAX)
            ]
        );
    }

    #[test]
    fn pairs_are_joined_where_zeros_meet_zeros_or_codes_meet_codes() {
        let mut pairs = Vec::new();
        for pair in [(5, 2), (3, 0), (4, 1), (0, 2), (7, 1)] {
            join_pair(&mut pairs, pair);
        }
        // (3, 0) then (4, 1) is seven zeros then a code; (4+3, 1) then (0, 2) is three
        // codes after them.
        assert_eq!(pairs, vec![(5, 2), (7, 3), (7, 1)]);
        let total = |p: &[(u64, u64)]| p.iter().map(|(z, n)| z + n).sum::<u64>();
        assert_eq!(total(&pairs), 5 + 2 + 3 + 4 + 1 + 2 + 7 + 1);
    }
}
