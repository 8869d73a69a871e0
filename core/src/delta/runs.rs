//! The diff stream of a segment, split into zero runs and non-zero bytes.
//!
//! Where old and new bytes agree the diff byte is zero, and most diff bytes are: a
//! bsdiff diff is long stretches of zeros sprinkled with small values (typically the
//! changed bytes of shifted addresses). Encoding it as run lengths (a "runs" block) plus
//! only the non-zero bytes (the "codes" stream) lets zstd model each part on its own; on
//! the corpus this made deltas 1–10% smaller and compression 2–3× faster than zstd on
//! the raw diff bytes (HDiffPatch splits its diff data the same way).
//!
//! Runs block: `varint N` (LEB128), then N zero-run lengths, then N non-zero-run
//! lengths, each in "escape" coding: a value v is `v / 255` bytes 0xFF followed by one
//! byte `v % 255`. Most runs are short, so nearly every length is one byte whose value
//! zstd's entropy coder models directly; on the corpus this was 1–4% smaller than LEB128
//! columns. Pair i stands for `zero_i` zero bytes followed by the next `nonzero_i` bytes
//! of the codes stream. Every pair covers at least one byte. A one-stream body
//! (algorithm 5) writes the same columns as LEB128 varints instead ([`RunCoding`]).

use super::varint::{put_varint, VarintReader};
use super::DeltaError;

fn put_escaped(out: &mut Vec<u8>, mut value: u64) {
    while value >= 255 {
        out.push(255);
        value -= 255;
    }
    out.push(value as u8);
}

/// How a runs block codes its lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunCoding {
    /// Escape coding (the module doc): the runs block of a segment (algorithms 1–4).
    Escaped,
    /// LEB128 varints, as the control block's columns: the runs block of a one-stream
    /// body (algorithm 5). Long zero runs between few changes, where a one-stream body
    /// pays, are hundreds of 0xFF bytes each escaped, which LZMA2 codes far larger than
    /// their two or three varint bytes (docs/delta-bench.txt, session 22).
    Leb128,
}

/// Reads lengths of one column in its coding.
enum LengthReader<'a> {
    Escaped(EscapedReader<'a>),
    Leb128(VarintReader<'a>),
}

impl<'a> LengthReader<'a> {
    fn new(bytes: &'a [u8], coding: RunCoding) -> Self {
        match coding {
            RunCoding::Escaped => LengthReader::Escaped(EscapedReader::new(bytes)),
            RunCoding::Leb128 => LengthReader::Leb128(VarintReader::new(bytes, "runs block")),
        }
    }

    fn remaining(&self) -> usize {
        match self {
            LengthReader::Escaped(reader) => reader.remaining(),
            LengthReader::Leb128(reader) => reader.remaining(),
        }
    }

    fn next(&mut self) -> Result<u64, DeltaError> {
        match self {
            LengthReader::Escaped(reader) => reader.next(),
            LengthReader::Leb128(reader) => reader.next(),
        }
    }
}

/// Reads escape-coded values (see the module doc) from a column.
struct EscapedReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> EscapedReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        EscapedReader { bytes, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn next(&mut self) -> Result<u64, DeltaError> {
        let mut value = 0u64;
        loop {
            let Some(&byte) = self.bytes.get(self.pos) else {
                return Err(DeltaError::Malformed {
                    block: "runs block",
                    reason: "run length runs past the end of the block",
                });
            };
            self.pos += 1;
            // At most 4 MiB of 0xFF bytes: no overflow.
            value += u64::from(byte);
            if byte != 255 {
                return Ok(value);
            }
        }
    }
}

/// Splits raw diff bytes into a runs block and the codes (non-zero bytes).
pub fn encode_runs(diff: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut pairs = Vec::new();
    let mut codes = Vec::new();
    let mut at = 0;
    while at < diff.len() {
        let zero = diff[at..].iter().take_while(|&&b| b == 0).count();
        at += zero;
        let nonzero = diff[at..].iter().take_while(|&&b| b != 0).count();
        codes.extend_from_slice(&diff[at..at + nonzero]);
        at += nonzero;
        pairs.push((zero as u64, nonzero as u64));
    }
    (encode_run_pairs(&pairs, RunCoding::Escaped), codes)
}

/// The runs block of `(zero run, non-zero run)` pairs, in order, in `coding`.
pub fn encode_run_pairs(pairs: &[(u64, u64)], coding: RunCoding) -> Vec<u8> {
    let put = match coding {
        RunCoding::Escaped => put_escaped,
        RunCoding::Leb128 => put_varint,
    };
    let mut zeros = Vec::new();
    let mut nonzeros = Vec::new();
    for &(zero, nonzero) in pairs {
        put(&mut zeros, zero);
        put(&mut nonzeros, nonzero);
    }
    let mut runs = Vec::with_capacity(zeros.len() + nonzeros.len() + 10);
    put_varint(&mut runs, pairs.len() as u64);
    runs.extend_from_slice(&zeros);
    runs.extend_from_slice(&nonzeros);
    runs
}

/// A validated runs block; iterate it with [`RunBlock::pairs`].
#[derive(Debug, Clone, Copy)]
pub struct RunBlock<'a> {
    raw: &'a [u8],
    count: u64,
    /// Offset of the first zero-run length and of the first non-zero-run length.
    zeros_at: usize,
    nonzeros_at: usize,
    coding: RunCoding,
}

impl<'a> RunBlock<'a> {
    /// Validates `raw` against the segment's declared diff length and codes length:
    /// well-formed varints, no empty pair, no trailing bytes, and sums that match.
    /// Nothing is allocated, whatever the block claims.
    pub fn parse(raw: &'a [u8], diff_len: u32, codes_len: u32) -> Result<Self, DeltaError> {
        Self::parse_coded(raw, diff_len, codes_len, RunCoding::Escaped)
    }

    /// [`RunBlock::parse`] for a block whose lengths are in `coding`.
    pub fn parse_coded(
        raw: &'a [u8],
        diff_len: u32,
        codes_len: u32,
        coding: RunCoding,
    ) -> Result<Self, DeltaError> {
        // A segment of literal bytes only has no diff stream at all.
        if raw.is_empty() && diff_len == 0 && codes_len == 0 {
            return Ok(RunBlock {
                raw,
                count: 0,
                zeros_at: 0,
                nonzeros_at: 0,
                coding,
            });
        }
        let mut header = VarintReader::new(raw, "runs block");
        let count = header.next()?;
        let zeros_at = raw.len() - header.remaining();
        // Every pair takes at least two bytes.
        if count.saturating_mul(2) > header.remaining() as u64 {
            return Err(header.malformed("pair count does not fit the block"));
        }
        let mut zeros = LengthReader::new(&raw[zeros_at..], coding);
        for _ in 0..count {
            zeros.next()?;
        }
        let nonzeros_at = raw.len() - zeros.remaining();
        let block = RunBlock {
            raw,
            count,
            zeros_at,
            nonzeros_at,
            coding,
        };
        let mut zeros = LengthReader::new(&raw[zeros_at..nonzeros_at], coding);
        let mut nonzeros = LengthReader::new(&raw[nonzeros_at..], coding);
        let (mut total, mut codes) = (0u64, 0u64);
        for _ in 0..count {
            let zero = zeros.next()?;
            let nonzero = nonzeros.next()?;
            if zero == 0 && nonzero == 0 {
                return Err(DeltaError::Malformed {
                    block: "runs block",
                    reason: "empty run pair",
                });
            }
            total = total.saturating_add(zero).saturating_add(nonzero);
            codes = codes.saturating_add(nonzero);
        }
        if nonzeros.remaining() != 0 {
            return Err(DeltaError::Malformed {
                block: "runs block",
                reason: "trailing bytes after the last run",
            });
        }
        if total != u64::from(diff_len) || codes != u64::from(codes_len) {
            return Err(DeltaError::SegmentInconsistent {
                field: "runs block",
                reason: "runs do not add up to the declared diff and codes lengths",
            });
        }
        Ok(block)
    }

    /// The (zero run, non-zero run) pairs, in order.
    pub fn pairs(&self) -> RunPairs<'a> {
        RunPairs {
            zeros: LengthReader::new(&self.raw[self.zeros_at..self.nonzeros_at], self.coding),
            nonzeros: LengthReader::new(&self.raw[self.nonzeros_at..], self.coding),
            left: self.count,
        }
    }
}

/// Iterator over a validated runs block.
pub struct RunPairs<'a> {
    zeros: LengthReader<'a>,
    nonzeros: LengthReader<'a>,
    left: u64,
}

impl std::fmt::Debug for RunPairs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunPairs")
            .field("left", &self.left)
            .finish()
    }
}

impl Iterator for RunPairs<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The block was validated by `RunBlock::parse`, so these cannot fail; ending
        // the iteration early would in any case be caught by the applier's length check.
        Some((self.zeros.next().ok()?, self.nonzeros.next().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(runs: &[u8], codes: &[u8], diff_len: usize) -> Vec<u8> {
        let block =
            RunBlock::parse(runs, diff_len as u32, codes.len() as u32).expect("own runs parse");
        let mut out = Vec::new();
        let mut codes = codes.iter();
        for (zero, nonzero) in block.pairs() {
            out.extend(std::iter::repeat_n(0, zero as usize));
            out.extend(codes.by_ref().take(nonzero as usize));
        }
        out
    }

    #[test]
    fn only_a_segment_without_diff_and_codes_may_have_an_empty_runs_block() {
        let none = RunBlock::parse(&[], 0, 0).expect("literal-only segment");
        assert_eq!(format!("{:?}", none.pairs()), "RunPairs { left: 0 }");
        assert_eq!(none.pairs().count(), 0);
        for (diff_len, codes_len) in [(0, 1), (1, 0), (1, 1)] {
            assert!(
                RunBlock::parse(&[], diff_len, codes_len).is_err(),
                "an empty runs block with diff {diff_len} and codes {codes_len}"
            );
        }
    }

    #[test]
    fn the_pair_iterator_counts_down_the_pairs_left() {
        // Three pairs: (0 zeros, 1 code), (2 zeros, 1 code), (1 zero, 0 codes).
        let (runs, codes) = encode_runs(&[1, 0, 0, 2, 0]);
        let block = RunBlock::parse(&runs, 5, codes.len() as u32).unwrap();
        let mut pairs = block.pairs();
        assert_eq!(format!("{pairs:?}"), "RunPairs { left: 3 }");
        assert_eq!(pairs.next(), Some((0, 1)));
        assert_eq!(format!("{pairs:?}"), "RunPairs { left: 2 }");
        assert_eq!(pairs.by_ref().count(), 2);
        assert_eq!(format!("{pairs:?}"), "RunPairs { left: 0 }");
    }

    #[test]
    fn runs_round_trip_diff_shapes() {
        let cases: [(&str, Vec<u8>); 6] = [
            ("empty (a segment of literal bytes only)", vec![]),
            ("all zeros", vec![0; 1000]),
            ("no zeros", vec![3; 300]),
            (
                "sparse",
                (0..5000u32).map(|i| u8::from(i % 97 == 0) * 4).collect(),
            ),
            ("leading non-zero", vec![1, 0, 0, 2, 2, 0]),
            (
                "long runs need multi-byte varints",
                [vec![0; 70_000], vec![9; 200], vec![0; 3]].concat(),
            ),
        ];
        for (name, diff) in cases {
            let (runs, codes) = encode_runs(&diff);
            assert_eq!(
                codes.len(),
                diff.iter().filter(|&&b| b != 0).count(),
                "case `{name}`"
            );
            assert_eq!(
                decode(&runs, &codes, diff.len()),
                diff,
                "case `{name}` must round-trip"
            );
        }
    }

    #[test]
    fn leb128_runs_round_trip_and_escaped_blocks_do_not_parse_as_them() {
        let pairs = [(0u64, 3u64), (70_000, 1), (254, 255), (300, 0)];
        let diff_len: u64 = pairs.iter().map(|(z, n)| z + n).sum();
        let codes_len: u64 = pairs.iter().map(|(_, n)| n).sum();
        let raw = encode_run_pairs(&pairs, RunCoding::Leb128);
        // Two bytes for seventy thousand zeros, not 275 escapes.
        assert_eq!(raw.len(), 1 + (1 + 3 + 2 + 2) + (1 + 1 + 2 + 1));
        let block =
            RunBlock::parse_coded(&raw, diff_len as u32, codes_len as u32, RunCoding::Leb128)
                .expect("own LEB128 runs parse");
        assert_eq!(block.pairs().collect::<Vec<_>>(), pairs);
        let escaped = encode_run_pairs(&pairs, RunCoding::Escaped);
        assert_ne!(escaped, raw);
        assert!(RunBlock::parse_coded(
            &escaped,
            diff_len as u32,
            codes_len as u32,
            RunCoding::Leb128
        )
        .is_err());
        // An overlong varint is malformed, not a huge run.
        let overlong = [&[1u8][..], &[0x80; 11], &[1]].concat();
        assert!(RunBlock::parse_coded(&overlong, 1, 1, RunCoding::Leb128).is_err());
    }

    #[test]
    fn hostile_runs_blocks_are_refused() {
        let (good, codes) = encode_runs(&[0, 0, 5, 0, 7]);
        let codes_len = codes.len() as u32;
        let cases: Vec<(&str, Vec<u8>, u32, u32)> = vec![
            ("empty block", vec![], 5, codes_len),
            ("count too large", vec![100, 0, 0], 5, codes_len),
            ("empty pair", vec![1, 0, 0], 0, 0),
            (
                "trailing byte",
                [good.clone(), vec![0]].concat(),
                5,
                codes_len,
            ),
            ("wrong diff length", good.clone(), 6, codes_len),
            ("wrong codes length", good.clone(), 5, codes_len + 1),
            ("huge run", vec![1, 0xff, 0xff, 0xff, 0xff, 0x0f, 0], 5, 0),
            ("unterminated escape", vec![1, 0xff, 0xff], 510, 0),
        ];
        for (name, raw, diff_len, codes_len) in cases {
            assert!(
                RunBlock::parse(&raw, diff_len, codes_len).is_err(),
                "case `{name}` must be refused"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn mutated_runs_blocks_are_refused_or_add_up_to_the_declared_lengths(
            // Mostly zeros with a few non-zero bytes, runs long enough to need escapes.
            diff in proptest::collection::vec(proptest::prop_oneof![8 => proptest::strategy::Just(0u8), 1 => 1u8..=255], 1..2000),
            mutations in proptest::collection::vec(crate::delta::mutate::mutation(), 0..=3),
            length_edit in proptest::option::of((proptest::bool::ANY, proptest::num::u32::ANY)),
            leb128 in proptest::bool::ANY,
        ) {
            let (runs, codes) = encode_runs(&diff);
            let (mut diff_len, mut codes_len) = (diff.len() as u32, codes.len() as u32);
            let (own_diff_len, own_codes_len) = (diff_len, codes_len);
            proptest::prop_assert_eq!(decode(&runs, &codes, diff.len()), diff);
            let hostile = crate::delta::mutate::apply(&runs, &mutations);
            if let Some((diff_field, value)) = length_edit {
                if diff_field { diff_len = value } else { codes_len = value }
            }
            let coding = if leb128 { RunCoding::Leb128 } else { RunCoding::Escaped };
            let hostile = if leb128 {
                let pairs: Vec<_> = RunBlock::parse(&runs, own_diff_len, own_codes_len)
                    .expect("own runs parse")
                    .pairs()
                    .collect();
                crate::delta::mutate::apply(&encode_run_pairs(&pairs, coding), &mutations)
            } else {
                hostile
            };
            if let Ok(block) = RunBlock::parse_coded(&hostile, diff_len, codes_len, coding) {
                // Accepted: the pairs the applier will iterate cover exactly the declared
                // diff bytes and consume exactly the declared codes, with no empty pair.
                let (mut total, mut nonzero_total) = (0u64, 0u64);
                for (zero, nonzero) in block.pairs() {
                    proptest::prop_assert!(zero + nonzero > 0, "empty pair accepted");
                    total += zero + nonzero;
                    nonzero_total += nonzero;
                }
                proptest::prop_assert_eq!(total, u64::from(diff_len));
                proptest::prop_assert_eq!(nonzero_total, u64::from(codes_len));
            }
        }

        #[test]
        fn edited_run_pairs_are_refused_or_add_up(
            pairs in proptest::collection::vec((0u64..600, 1u64..300), 1..20),
            edit in (0usize..4, proptest::sample::select(vec![1u64, 2, 254, 255, 256, 100_000]), proptest::num::usize::ANY),
        ) {
            let diff_len: u64 = pairs.iter().map(|(z, n)| z + n).sum();
            let codes_len: u64 = pairs.iter().map(|(_, n)| n).sum();
            let (kind, delta, at) = edit;
            let mut edited = pairs.clone();
            let i = at % edited.len();
            match kind {
                0 => edited.insert(i, (0, 0)),
                1 => edited[i].0 += delta,
                2 => edited[i].1 = edited[i].1.saturating_sub(delta),
                _ => {
                    // Trade non-zero bytes for zero bytes: the diff length still agrees.
                    let moved = edited[i].1;
                    edited[i] = (edited[i].0 + moved, 0);
                }
            }
            let mut raw = Vec::new();
            put_varint(&mut raw, edited.len() as u64);
            for (zero, _) in &edited {
                put_escaped(&mut raw, *zero);
            }
            for (_, nonzero) in &edited {
                put_escaped(&mut raw, *nonzero);
            }
            if let Ok(block) = RunBlock::parse(&raw, diff_len as u32, codes_len as u32) {
                let (mut total, mut nonzero_total) = (0u64, 0u64);
                for (zero, nonzero) in block.pairs() {
                    proptest::prop_assert!(zero + nonzero > 0, "empty pair accepted");
                    total += zero + nonzero;
                    nonzero_total += nonzero;
                }
                proptest::prop_assert_eq!(total, diff_len);
                proptest::prop_assert_eq!(nonzero_total, codes_len);
            }
        }
    }
}
