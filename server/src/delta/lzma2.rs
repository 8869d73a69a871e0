//! Raw LZMA2 streams for the delta's streams (container algorithms 4 and 5).
//!
//! Two encoders write the same format, which the agent decodes with one liblzma raw
//! decoder whose dictionary is the stream's length up to `LZMA_DICT_MAX`:
//!
//! - liblzma (`lzma_stream`), for the extra stream, the control block, the runs block,
//!   the codes, one-stream bodies, and a diff stream coded as one part;
//! - lzma-rust2 (a port of XZ for Java's encoder), for a diff stream longer than
//!   `DIFF_PART_MAX` that has threads to spare (`max_diff_parts`), cut into parts
//!   (`diff_parts`) that are coded on their own, each on a worker thread, and joined
//!   (`join_parts`). Each part's first chunk resets
//!   the dictionary and carries its properties, so the joined parts are one valid stream.
//!   On the corpus's diff streams this encoder codes 0.07–2.25% smaller than liblzma
//!   at the same settings, at up to 1.6× its CPU time; in parts on spare threads the
//!   longest job of a build is about half as long (docs/delta-bench.txt, session 27).
//!
//! Every stream coded by lzma-rust2 is decoded again with liblzma before it is used
//! (`check_decodes`): a stream the agent could not decode fails the build instead of
//! shipping.

use ota_core::delta::LZMA_DICT_MAX;
use std::io::{self, Read, Write};
use std::ops::Range;

use liblzma::stream::{Action, Filters, LzmaOptions, MatchFinder, Mode, Status, Stream};

/// LZMA2 literal context, literal position and position bits of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LzmaModel {
    pub(super) lc: u32,
    pub(super) lp: u32,
    pub(super) pb: u32,
}

/// The longest diff stream coded as one part, and the longest part of a longer one: the
/// format's dictionary, so a part's matches reach back over the whole part.
pub(super) const DIFF_PART_MAX: usize = LZMA_DICT_MAX as usize;

/// The longest match the encoders look for: the format's longest, measured best on the
/// corpus (docs/delta-bench.txt).
const NICE_LEN: u32 = 273;

/// The dictionary of a stream of `len` bytes: the whole stream, within the format's
/// bounds (the agent's decoder uses the same rule).
fn dict_size(len: usize) -> u32 {
    u32::try_from(len)
        .unwrap_or(u32::MAX)
        .clamp(4096, LZMA_DICT_MAX)
}

/// The parts a diff stream of `len` bytes is coded in, in order, of equal length give or
/// take a byte: as few as keep each at most `DIFF_PART_MAX` bytes, but at most
/// `max_parts` (at least one); none for an empty stream. One part is the whole stream,
/// coded by liblzma.
pub(super) fn diff_parts(len: usize, max_parts: usize) -> Vec<Range<usize>> {
    let count = len.div_ceil(DIFF_PART_MAX).min(max_parts.max(1));
    (0..count)
        .map(|part| len * part / count..len * (part + 1) / count)
        .collect()
}

/// How many parts each diff stream of a batch of segments may be coded in, given the
/// batch's `threads`: the threads left to each of its long streams (longer than half
/// of `DIFF_PART_MAX`: each keeps a core busy for most of the coding), so the second
/// encoder's extra work (up to 1.6x liblzma's CPU time on the corpus) only runs
/// on a core that would otherwise wait for the longest job. With one thread, or as many
/// long streams as threads, every stream is one part.
pub(super) fn max_diff_parts(diff_lens: impl IntoIterator<Item = usize>, threads: usize) -> usize {
    let long = diff_lens
        .into_iter()
        .filter(|&len| len > DIFF_PART_MAX / 2)
        .count();
    (threads / long.max(1)).max(1)
}

/// `raw` as one raw LZMA2 stream with liblzma (empty for no bytes). The dictionary
/// covers the whole stream up to the format's `LZMA_DICT_MAX`, the match finder is BT4
/// with the longest match length (273), the literal model is `model`.
pub(super) fn lzma_stream(raw: &[u8], model: LzmaModel) -> io::Result<Vec<u8>> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let mut options = LzmaOptions::new_preset(9).map_err(io::Error::other)?;
    options
        .dict_size(dict_size(raw.len()))
        .literal_context_bits(model.lc)
        .literal_position_bits(model.lp)
        .position_bits(model.pb)
        .nice_len(NICE_LEN)
        .match_finder(MatchFinder::BinaryTree4)
        .mode(Mode::Normal);
    let mut filters = Filters::new();
    filters.lzma2(&options);
    let mut stream = Stream::new_raw_encoder(&filters).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(1 << 16);
    loop {
        if out.len() == out.capacity() {
            out.reserve(1 << 16);
        }
        let consumed = stream.total_in() as usize;
        let status = stream
            .process_vec(&raw[consumed..], &mut out, Action::Finish)
            .map_err(io::Error::other)?;
        if status == Status::StreamEnd {
            return Ok(out);
        }
    }
}

/// `raw` as the smallest of the raw LZMA2 streams with each of `models` (the first of
/// equally small ones).
pub(super) fn smallest_lzma_stream(raw: &[u8], models: &[LzmaModel]) -> io::Result<Vec<u8>> {
    let mut smallest: Option<Vec<u8>> = None;
    for &model in models {
        let stream = lzma_stream(raw, model)?;
        if smallest
            .as_ref()
            .is_none_or(|best| stream.len() < best.len())
        {
            smallest = Some(stream);
        }
    }
    Ok(smallest.unwrap_or_default())
}

/// Part `part` of `diff` (one of its `diff_parts`) as a raw LZMA2 stream of its
/// own, ended by its end marker: with liblzma when it is the whole stream, else with
/// lzma-rust2 at the same settings (BT4, normal mode, the longest match length, the
/// part's own dictionary) and checked to decode back to the part.
pub(super) fn diff_part_stream(
    diff: &[u8],
    part: Range<usize>,
    model: LzmaModel,
) -> io::Result<Vec<u8>> {
    let bytes = diff.get(part.clone()).ok_or_else(|| {
        io::Error::other(format!("no diff part {part:?} in {} bytes", diff.len()))
    })?;
    if bytes.len() == diff.len() {
        return lzma_stream(bytes, model);
    }
    let mut options = lzma_rust2::LzmaOptions::with_preset(9);
    options.dict_size = dict_size(bytes.len());
    options.lc = model.lc;
    options.lp = model.lp;
    options.pb = model.pb;
    options.nice_len = NICE_LEN;
    options.mf = lzma_rust2::MfType::Bt4;
    options.mode = lzma_rust2::EncodeMode::Normal;
    // 0: the encoder's own depth for BT4 (16 + nice_len / 2), as liblzma's.
    options.depth_limit = 0;
    options.preset_dict = None;
    let mut writer = lzma_rust2::Lzma2Writer::new(
        Vec::with_capacity(bytes.len() / 8 + 64),
        lzma_rust2::Lzma2Options {
            lzma_options: options,
            chunk_size: None,
        },
    );
    writer.write_all(bytes)?;
    let stream = writer.finish()?;
    check_decodes(&stream, bytes)?;
    Ok(stream)
}

/// The coded parts of one stream, in order, as one raw LZMA2 stream: every part's end
/// marker but the last's dropped. A part that does not end in an end marker is an
/// error, not a stream the agent would misread.
pub(super) fn join_parts(parts: Vec<Vec<u8>>) -> io::Result<Vec<u8>> {
    let count = parts.len();
    let mut joined = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for (index, part) in parts.into_iter().enumerate() {
        let Some((&last, body)) = part.split_last() else {
            return Err(io::Error::other(format!("LZMA2 part {index} is empty")));
        };
        if last != 0 {
            return Err(io::Error::other(format!(
                "LZMA2 part {index} does not end in an end marker"
            )));
        }
        joined.extend_from_slice(if index + 1 == count { &part } else { body });
    }
    Ok(joined)
}

/// Whether `stream` decodes with the agent's decoder (liblzma, the dictionary of a
/// stream of `raw`'s length) to exactly `raw`.
fn check_decodes(stream: &[u8], raw: &[u8]) -> io::Result<()> {
    let len = u32::try_from(raw.len()).map_err(io::Error::other)?;
    if decode_lzma(stream, len)? == raw {
        Ok(())
    } else {
        Err(io::Error::other(
            "an LZMA2 diff part does not decode to its bytes",
        ))
    }
}

/// One raw LZMA2 stream of exactly `len` decoded bytes, decoded as the agent does.
pub(super) fn decode_lzma(frame: &[u8], len: u32) -> io::Result<Vec<u8>> {
    if frame.is_empty() {
        return Ok(Vec::new());
    }
    let mut options = LzmaOptions::new_preset(6).map_err(io::Error::other)?;
    options.dict_size(len.clamp(4096, LZMA_DICT_MAX));
    let mut filters = Filters::new();
    filters.lzma2(&options);
    let stream = Stream::new_raw_decoder(&filters).map_err(io::Error::other)?;
    let mut raw = Vec::with_capacity(len as usize);
    liblzma::bufread::XzDecoder::new_stream(frame, stream)
        .take(u64::from(len) + 1)
        .read_to_end(&mut raw)?;
    if raw.len() != len as usize {
        return Err(io::Error::other("stream does not hold its declared length"));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_parts_tile_the_stream_in_as_few_equal_parts_as_fit_the_dictionary() {
        let max = DIFF_PART_MAX;
        for len in [
            0,
            1,
            4095,
            max - 1,
            max,
            max + 1,
            2 * max,
            2 * max + 1,
            5 * max + 7,
        ] {
            for max_parts in [0, 1, 2, 3, 8] {
                let parts = diff_parts(len, max_parts);
                let expected = len.div_ceil(max).min(max_parts.max(1));
                assert_eq!(parts.len(), expected, "{len} bytes, at most {max_parts}");
                // In order, end to end, over the whole stream, none empty.
                let mut at = 0;
                for part in &parts {
                    assert_eq!(part.start, at);
                    assert!(part.end > part.start);
                    at = part.end;
                }
                assert_eq!(at, len);
                let shortest = parts.iter().map(|part| part.len()).min().unwrap_or(0);
                let longest = parts.iter().map(|part| part.len()).max().unwrap_or(0);
                assert!(longest - shortest <= 1);
                if parts.len() < max_parts.max(1) {
                    assert!(longest <= max);
                }
            }
        }
    }

    #[test]
    fn a_long_stream_gets_the_threads_left_to_each_long_stream() {
        let long = DIFF_PART_MAX / 2 + 1;
        let short = DIFF_PART_MAX / 2;
        assert_eq!(max_diff_parts([long], 2), 2);
        assert_eq!(max_diff_parts([long, short, short], 2), 2);
        assert_eq!(max_diff_parts([long, long], 2), 1);
        assert_eq!(max_diff_parts([long, long], 5), 2);
        assert_eq!(max_diff_parts([long], 1), 1);
        assert_eq!(max_diff_parts([short, 0], 4), 4);
        assert_eq!(max_diff_parts([], 0), 1);
    }

    #[test]
    fn parts_join_into_one_stream_and_a_part_without_its_end_marker_is_refused() {
        let model = LzmaModel {
            lc: 3,
            lp: 0,
            pb: 2,
        };
        // Text-like bytes, so later parts would match earlier ones if they could.
        let raw: Vec<u8> = (0..300_000u32)
            .map(|i| b"delta parts "[(i % 12) as usize] ^ (i / 4096) as u8)
            .collect();
        let parts = diff_parts(raw.len(), 1).len();
        assert_eq!(parts, 1);
        // Coded by the second encoder as three parts of its own.
        let ranges = [0..100_000, 100_000..200_001, 200_001..300_000];
        let coded: Vec<Vec<u8>> = ranges
            .iter()
            .map(|range| diff_part_stream(&raw, range.clone(), model).expect("codes"))
            .collect();
        let joined = join_parts(coded.clone()).expect("joins");
        assert_eq!(joined.len(), coded.iter().map(Vec::len).sum::<usize>() - 2);
        assert_eq!(
            decode_lzma(&joined, raw.len() as u32).expect("decodes"),
            raw
        );
        // The whole stream is one part, coded by liblzma.
        let whole = diff_part_stream(&raw, 0..raw.len(), model).expect("codes");
        assert_eq!(whole, lzma_stream(&raw, model).expect("codes"));
        assert!(diff_part_stream(&raw, 0..raw.len() + 1, model).is_err());
        // A part that does not end in its end marker, or an empty part, is refused.
        let mut cut = coded.clone();
        if let Some(last) = cut[1].last_mut() {
            *last = 1;
        }
        assert!(join_parts(cut).is_err());
        let mut empty = coded;
        empty[0].clear();
        assert!(join_parts(empty).is_err());
    }
}
