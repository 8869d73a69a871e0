//! The one-stream body (algorithm 5): a small delta's four streams as one LZMA2 stream.
//!
//! A segmented body spends a 56-byte header per segment (one per 16 MiB of target) and
//! a frame per stream, each with its own coder start-up and end. For a release that
//! changes a few hundred bytes that overhead is most of the container. Here the whole
//! body is one "segment" without the 16 MiB target cap: a short header of varints, then
//! one raw LZMA2 stream that decodes to the control block, the extra bytes, the runs
//! block (its lengths as LEB128 varints, `RunCoding::Leb128`) and the codes, in that
//! order (`docs/DELTA-FORMAT.md`, section 8). The decoded
//! control, extra and runs are held whole under the segment caps, the codes are read as
//! they are needed, so the applier's memory bound is unchanged.

use super::segment::lzma2_bound_u64;
use super::varint::{put_varint, VarintReader};
use super::{DeltaError, SegmentHeader, SEGMENT_MAX_CONTROL, SEGMENT_MAX_RUNS, SEGMENT_MAX_TARGET};

/// Longest encoding of a one-stream header: five varints of at most ten bytes.
pub const ONE_STREAM_HEADER_MAX: usize = 50;

/// The lengths in front of a one-stream body's LZMA2 stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OneStreamHeader {
    /// Decoded control block (columnar, as in a segment).
    pub control_len: u32,
    /// Literal target bytes.
    pub extra_len: u32,
    /// Decoded runs block of the diff stream (LEB128 lengths); 0 exactly when there are
    /// no diff bytes.
    pub runs_len: u32,
    /// Non-zero diff bytes.
    pub codes_len: u32,
    /// Bytes of the LZMA2 stream that follows the header and ends the container.
    pub stream_len: u64,
}

impl OneStreamHeader {
    /// The header as it goes on the wire: control, extra, runs, codes and stream length,
    /// each an unsigned LEB128 varint.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        for value in [
            u64::from(self.control_len),
            u64::from(self.extra_len),
            u64::from(self.runs_len),
            u64::from(self.codes_len),
            self.stream_len,
        ] {
            put_varint(&mut out, value);
        }
        out
    }

    /// Decoded bytes of the stream: control, extra, runs and codes together.
    pub fn decoded_len(&self) -> u64 {
        [
            self.control_len,
            self.extra_len,
            self.runs_len,
            self.codes_len,
        ]
        .iter()
        .map(|&len| u64::from(len))
        .sum()
    }

    /// Parses the header at the start of `bytes` for a container whose target is
    /// `target_len` bytes; returns it and the bytes it took. Every length is checked
    /// against the segment caps and against the others, so the caller may size buffers
    /// from the result. `Truncated` means `bytes` ended inside the header: a reader
    /// feeding it a byte at a time reads one more.
    pub fn parse(bytes: &[u8], target_len: u64) -> Result<(Self, usize), DeltaError> {
        let mut reader = VarintReader::new(bytes, "one-stream header");
        let mut fields = [0u64; 5];
        for field in &mut fields {
            // Fewer than ten bytes left, all with the continuation bit: the varint may
            // still end in the next byte. Anything else that fails is malformed.
            let rest = &bytes[bytes.len() - reader.remaining()..];
            if rest.len() < 10 && rest.iter().all(|byte| byte & 0x80 != 0) {
                return Err(DeltaError::Truncated {
                    what: "one-stream header",
                    needed: bytes.len() + 1,
                    available: bytes.len(),
                });
            }
            *field = reader.next()?;
        }
        let used = bytes.len() - reader.remaining();
        let [control_len, extra_len, runs_len, codes_len, stream_len] = fields;
        let capped = |field, value: u64, cap: u32| {
            if value > u64::from(cap) {
                Err(DeltaError::LengthOverCap {
                    field,
                    value,
                    cap: u64::from(cap),
                })
            } else {
                Ok(value as u32)
            }
        };
        let control_len = capped("control length", control_len, SEGMENT_MAX_CONTROL)?;
        let extra_len = capped("extra length", extra_len, SEGMENT_MAX_TARGET)?;
        let runs_len = capped("runs length", runs_len, SEGMENT_MAX_RUNS)?;
        let inconsistent = |field, reason| Err(DeltaError::SegmentInconsistent { field, reason });
        if control_len == 0 {
            return inconsistent("control length", "a body needs at least one control entry");
        }
        let Some(diff_len) = target_len.checked_sub(u64::from(extra_len)) else {
            return inconsistent("extra length", "more extra bytes than the target holds");
        };
        let diff_len = capped("diff length", diff_len, u32::MAX)?;
        if (runs_len == 0) != (diff_len == 0) {
            return inconsistent(
                "runs length",
                "a runs block is present exactly when there are diff bytes",
            );
        }
        if codes_len > u64::from(diff_len) {
            return inconsistent("codes length", "more codes than diff bytes");
        }
        let header = OneStreamHeader {
            control_len,
            extra_len,
            runs_len,
            codes_len: codes_len as u32,
            stream_len,
        };
        let bound = lzma2_bound_u64(header.decoded_len());
        if stream_len == 0 || stream_len > bound {
            return inconsistent(
                "stream length",
                "outside 1..=the LZMA2 worst case of the decoded lengths",
            );
        }
        Ok((header, used))
    }

    /// Diff bytes of a target of `target_len` bytes (the target less the extra bytes).
    pub fn diff_len(&self, target_len: u64) -> u32 {
        target_len.saturating_sub(u64::from(self.extra_len)) as u32
    }

    /// The body as the one segment it stands for, for the control and runs parsers:
    /// no frames, no extra prefix.
    pub fn as_segment(&self, target_len: u64) -> SegmentHeader {
        SegmentHeader::for_streams(
            self.diff_len(target_len),
            [
                self.control_len,
                self.extra_len,
                self.runs_len,
                self.codes_len,
            ],
            [0; 4],
            (0, 0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::mutate;
    use proptest::prelude::*;

    fn header() -> OneStreamHeader {
        OneStreamHeader {
            control_len: 9,
            extra_len: 2,
            runs_len: 300,
            codes_len: 366,
            stream_len: 500,
        }
    }

    #[test]
    fn a_header_round_trips_and_reports_its_length() {
        let mut bytes = header().encode();
        let len = bytes.len();
        bytes.extend_from_slice(b"stream");
        assert_eq!(
            OneStreamHeader::parse(&bytes, 30_000_000),
            Ok((header(), len))
        );
        assert_eq!(header().diff_len(30_000_000), 29_999_998);
        let segment = header().as_segment(30_000_000);
        assert_eq!(
            (segment.diff_len, segment.extra_len, segment.codes_len),
            (29_999_998, 2, 366)
        );
    }

    #[test]
    fn every_prefix_of_a_header_is_truncated_not_malformed() {
        let bytes = header().encode();
        for end in 0..bytes.len() {
            assert!(
                matches!(
                    OneStreamHeader::parse(&bytes[..end], 30_000_000),
                    Err(DeltaError::Truncated { .. })
                ),
                "prefix of {end} bytes"
            );
        }
    }

    #[test]
    fn lengths_over_the_caps_or_inconsistent_are_refused() {
        let refused = |h: OneStreamHeader, target_len: u64| {
            OneStreamHeader::parse(&h.encode(), target_len).unwrap_err()
        };
        let over = |field: &str, err: DeltaError| matches!(err, DeltaError::LengthOverCap { field: f, .. } if f == field);
        let h = header();
        assert!(over(
            "control length",
            refused(
                OneStreamHeader {
                    control_len: SEGMENT_MAX_CONTROL + 1,
                    ..h
                },
                30_000_000
            )
        ));
        assert!(over(
            "runs length",
            refused(
                OneStreamHeader {
                    runs_len: SEGMENT_MAX_RUNS + 1,
                    ..h
                },
                30_000_000
            )
        ));
        assert!(over(
            "extra length",
            refused(
                OneStreamHeader {
                    extra_len: SEGMENT_MAX_TARGET + 1,
                    ..h
                },
                30_000_000
            )
        ));
        // Diff bytes must fit 32 bits.
        assert!(over("diff length", refused(h, (1 << 32) + 2)));
        let inconsistent = |field: &str, err: DeltaError| matches!(err, DeltaError::SegmentInconsistent { field: f, .. } if f == field);
        assert!(inconsistent(
            "control length",
            refused(
                OneStreamHeader {
                    control_len: 0,
                    ..h
                },
                30_000_000
            )
        ));
        assert!(inconsistent("extra length", refused(h, 1)));
        assert!(inconsistent(
            "runs length",
            refused(OneStreamHeader { runs_len: 0, ..h }, 30_000_000)
        ));
        // All extra: no diff bytes, so no runs block.
        assert!(inconsistent("runs length", refused(h, 2)));
        assert!(inconsistent(
            "codes length",
            refused(
                OneStreamHeader {
                    codes_len: 1000,
                    ..h
                },
                400
            )
        ));
        assert!(inconsistent(
            "stream length",
            refused(OneStreamHeader { stream_len: 0, ..h }, 30_000_000)
        ));
        let decoded = h.decoded_len();
        assert!(inconsistent(
            "stream length",
            refused(
                OneStreamHeader {
                    stream_len: decoded + 3 + 1 + 1,
                    ..h
                },
                30_000_000
            )
        ));
        // The worst case itself (one stored chunk: 3 header bytes, and the end marker)
        // is accepted.
        let worst = OneStreamHeader {
            stream_len: decoded + 3 + 1,
            ..h
        };
        assert_eq!(
            OneStreamHeader::parse(&worst.encode(), 30_000_000).map(|(h, _)| h),
            Ok(worst)
        );
    }

    #[test]
    fn a_varint_that_cannot_end_is_malformed_not_truncated() {
        // Ten continuation bytes (no eleventh may follow), or a tenth byte that
        // overflows 64 bits: a reader must not wait for more.
        let overflow = [[0xFFu8; 9].as_slice(), &[0x02]].concat();
        for bytes in [vec![0x80u8; 10], vec![0x80u8; 11], overflow] {
            assert!(
                matches!(
                    OneStreamHeader::parse(&bytes, 1000),
                    Err(DeltaError::Malformed { .. })
                ),
                "{bytes:02x?}"
            );
        }
        // Nine continuation bytes may still end in a tenth.
        assert!(matches!(
            OneStreamHeader::parse(&[0x80u8; 9], 1000),
            Err(DeltaError::Truncated { .. })
        ));
    }

    proptest! {
        /// Hostile headers never panic, and whatever parses stays within the caps.
        #[test]
        fn hostile_headers_are_refused_or_within_the_caps(
            mutations in mutate::mutations(),
            target_len in 0u64..(1 << 36),
        ) {
            let bytes = mutate::apply(&header().encode(), &mutations);
            if let Ok((h, used)) = OneStreamHeader::parse(&bytes, target_len) {
                prop_assert!(used <= bytes.len());
                prop_assert!(h.control_len >= 1 && h.control_len <= SEGMENT_MAX_CONTROL);
                prop_assert!(h.extra_len <= SEGMENT_MAX_TARGET);
                prop_assert!(h.runs_len <= SEGMENT_MAX_RUNS);
                prop_assert!(u64::from(h.codes_len) <= target_len - u64::from(h.extra_len));
                prop_assert!(h.stream_len >= 1);
            }
        }
    }
}
