//! The header in front of every segment of a bsdiff-zstd body.
//!
//! A segment produces at most [`SEGMENT_MAX_TARGET`] bytes of the target. Its four
//! streams follow the header as separate zstd frames, in the order control, extra, runs,
//! codes: the applier holds the control block, the extra bytes and the runs block of one
//! segment in memory and streams the codes frame, so its memory is bounded by these caps
//! and never by the image size.

use super::DeltaError;

/// First four bytes of a segment header whose control block and extra stream are zstd
/// frames and whose diff stream is zero runs + codes (the only kind in algorithms 1 and
/// 3); catches a desynchronised stream early.
pub const SEGMENT_TAG: [u8; 4] = *b"OSEG";
/// Every tag and how it codes the control block, the diff and the extra stream. All but
/// `OSEG` are only in containers of `Algorithm::BsdiffLzma`: `OSGL` an LZMA2 diff, `OSXL`
/// an LZMA2 extra, `OSLL` both; `OSRG` the runs block and the codes as two LZMA2
/// streams, `OSRL` that with an LZMA2 extra; `OC` in place of `OS` the same with an
/// LZMA2 control block.
pub const SEGMENT_TAGS: [([u8; 4], ControlCoding, DiffCoding, ExtraCoding); 12] = [
    (
        SEGMENT_TAG,
        ControlCoding::Zstd,
        DiffCoding::RunsAndCodes,
        ExtraCoding::Zstd,
    ),
    (
        *b"OSGL",
        ControlCoding::Zstd,
        DiffCoding::Lzma2,
        ExtraCoding::Zstd,
    ),
    (
        *b"OSXL",
        ControlCoding::Zstd,
        DiffCoding::RunsAndCodes,
        ExtraCoding::Lzma2,
    ),
    (
        *b"OSLL",
        ControlCoding::Zstd,
        DiffCoding::Lzma2,
        ExtraCoding::Lzma2,
    ),
    (
        *b"OCEG",
        ControlCoding::Lzma2,
        DiffCoding::RunsAndCodes,
        ExtraCoding::Zstd,
    ),
    (
        *b"OCGL",
        ControlCoding::Lzma2,
        DiffCoding::Lzma2,
        ExtraCoding::Zstd,
    ),
    (
        *b"OCXL",
        ControlCoding::Lzma2,
        DiffCoding::RunsAndCodes,
        ExtraCoding::Lzma2,
    ),
    (
        *b"OCLL",
        ControlCoding::Lzma2,
        DiffCoding::Lzma2,
        ExtraCoding::Lzma2,
    ),
    (
        *b"OSRG",
        ControlCoding::Zstd,
        DiffCoding::RunsAndCodesLzma2,
        ExtraCoding::Zstd,
    ),
    (
        *b"OSRL",
        ControlCoding::Zstd,
        DiffCoding::RunsAndCodesLzma2,
        ExtraCoding::Lzma2,
    ),
    (
        *b"OCRG",
        ControlCoding::Lzma2,
        DiffCoding::RunsAndCodesLzma2,
        ExtraCoding::Zstd,
    ),
    (
        *b"OCRL",
        ControlCoding::Lzma2,
        DiffCoding::RunsAndCodesLzma2,
        ExtraCoding::Lzma2,
    ),
];
/// Dictionary size of an LZMA2 stream at most (8 MiB): the applier decodes with a
/// dictionary of `min(this, max(stream's decoded length, 4 KiB))` bytes, so a stream that
/// reaches further back is corrupt.
pub const LZMA_DICT_MAX: u32 = 8 << 20;
/// Encoded segment header size in bytes.
pub const SEGMENT_HEADER_LEN: usize = 56;
/// Most target bytes one segment may produce (16 MiB). The applier buffers up to this
/// many extra bytes, so this is the main term of its memory bound.
pub const SEGMENT_MAX_TARGET: u32 = 16 << 20;
/// Largest decoded control block of one segment (1 MiB).
pub const SEGMENT_MAX_CONTROL: u32 = 1 << 20;
/// Longest run of old bytes the extra frame may be compressed against (4 MiB).
pub const EXTRA_PREFIX_MAX: u32 = 4 << 20;
/// Largest decoded runs block of one segment (4 MiB).
pub const SEGMENT_MAX_RUNS: u32 = 4 << 20;

/// Worst-case size of a zstd frame holding `raw` bytes (`ZSTD_COMPRESSBOUND`). A declared
/// frame larger than this cannot have come from an honest encoder.
pub fn zstd_compress_bound(raw: u32) -> u64 {
    let raw = u64::from(raw);
    let small_input_margin = if raw < (128 << 10) {
        ((128 << 10) - raw) >> 11
    } else {
        0
    };
    raw + (raw >> 8) + small_input_margin
}

/// Worst-case size of a raw LZMA2 stream holding `raw` bytes: every 64 KiB chunk stored
/// uncompressed (3 header bytes each) plus the end marker, as liblzma's encoder
/// guarantees. A declared stream larger than this cannot have come from an honest
/// encoder.
pub fn lzma2_bound(raw: u32) -> u64 {
    lzma2_bound_u64(u64::from(raw))
}

/// [`lzma2_bound`] over a 64-bit length (a one-stream body's four streams together).
pub(super) fn lzma2_bound_u64(raw: u64) -> u64 {
    raw + raw.div_ceil(1 << 16) * 3 + 1
}

/// A stream of `raw` decoded bytes carried in a frame of `zlen` bytes: no frame for an
/// empty stream, a frame for a non-empty one, and no larger than `bound(raw)`, the
/// worst case of the stream's coder.
fn check_frame(
    field: &'static str,
    raw: u32,
    zlen: u32,
    bound: fn(u32) -> u64,
) -> Result<(), DeltaError> {
    if raw == 0 && zlen != 0 {
        return Err(DeltaError::SegmentInconsistent {
            field,
            reason: "an empty stream has no frame",
        });
    }
    if raw != 0 && zlen == 0 {
        return Err(DeltaError::SegmentInconsistent {
            field,
            reason: "a non-empty stream needs a frame",
        });
    }
    if u64::from(zlen) > bound(raw) {
        return Err(DeltaError::LengthOverCap {
            field,
            value: u64::from(zlen),
            cap: bound(raw),
        });
    }
    Ok(())
}

/// An LZMA2 stream: at least one decoded byte (an empty stream keeps the zstd coding,
/// which has no frame for it), in a frame within the LZMA2 bound.
fn check_lzma_stream(field: &'static str, raw: u32, zlen: u32) -> Result<(), DeltaError> {
    if raw == 0 {
        return Err(DeltaError::SegmentInconsistent {
            field,
            reason: "an LZMA2-coded stream holds at least one byte",
        });
    }
    check_frame(field, raw, zlen, lzma2_bound)
}

/// How a segment carries its control block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlCoding {
    /// One zstd frame (tags `OS..`).
    Zstd,
    /// One raw LZMA2 stream (tags `OC..`): the control block's varints are small numbers
    /// in three columns, which LZMA's bit-level models coded 4-14% smaller than zstd on
    /// the measured corpus (and a tiny block stored, without zstd's frame overhead).
    Lzma2,
}

/// How a segment carries its diff stream (the bytes added to old bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiffCoding {
    /// Zero runs in the runs block, non-zero bytes in the codes frame (tag `OSEG`).
    RunsAndCodes,
    /// The whole diff stream (`diff_len` bytes) as one raw LZMA2 stream in the codes
    /// slot, no runs block (tag `OSGL`). LZMA's literal coder, conditioned on the byte
    /// at the last match distance, models diff bytes better than zstd does.
    Lzma2,
    /// The runs block and the codes as two raw LZMA2 streams in their slots (tags
    /// `OSR.`/`OCR.`; no codes stream when every diff byte is zero). Where a release
    /// changes little, the diff stream is long zero runs around few codes: coding the
    /// runs block and the codes apart made containers up to 5.2% smaller than the
    /// other codings on the measured pairs where it was chosen (docs/delta-bench.txt,
    /// 2026-12-02 session 16).
    RunsAndCodesLzma2,
}

/// How a segment carries its extra (literal) stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtraCoding {
    /// One zstd frame, compressed against the extra prefix of old bytes.
    Zstd,
    /// One raw LZMA2 stream, no prefix (the prefix fields are zero). LZMA's literal
    /// coder beats zstd's on machine code even without the old bytes as a dictionary.
    Lzma2,
}

/// Sizes of one segment and of its four zstd frames. A `*_zlen` is 0 exactly when its
/// stream is empty (no frame is written for an empty stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Target bytes this segment produces: `diff_len + extra_len`.
    pub target_len: u32,
    /// Decoded size of the control block.
    pub control_len: u32,
    /// Size of the control block's zstd frame.
    pub control_zlen: u32,
    /// Literal target bytes (the bsdiff "extra" stream), decoded size.
    pub extra_len: u32,
    pub extra_zlen: u32,
    /// Target bytes made by adding diff bytes to old bytes (the bsdiff "diff" stream,
    /// carried as runs + codes).
    pub diff_len: u32,
    /// Decoded size of the runs block of the diff stream.
    pub runs_len: u32,
    pub runs_zlen: u32,
    /// Non-zero diff bytes (the codes stream), decoded size.
    pub codes_len: u32,
    pub codes_zlen: u32,
    /// Old bytes `[extra_prefix_start, + extra_prefix_len)` are the zstd prefix (raw
    /// content dictionary) of the extra frame: literal bytes of a new release often
    /// resemble old bytes in short pieces that bsdiff's matching does not take.
    pub extra_prefix_start: u64,
    pub extra_prefix_len: u32,
    /// How the diff stream is carried; for [`DiffCoding::Lzma2`] the codes fields hold
    /// the LZMA2 stream (`codes_len` = `diff_len`) and the runs fields are zero.
    pub diff_coding: DiffCoding,
    /// How the extra stream is carried; for [`ExtraCoding::Lzma2`] the extra frame is an
    /// LZMA2 stream and there is no extra prefix.
    pub extra_coding: ExtraCoding,
    /// How the control block is carried (its frame is a zstd frame or an LZMA2 stream).
    pub control_coding: ControlCoding,
}

impl SegmentHeader {
    /// The header of a segment whose four streams, in wire order (control, extra, runs,
    /// codes), decode to `raw` bytes and take `framed` bytes as zstd frames (0 for an
    /// empty stream); `diff_len` target bytes come from the diff stream, and the extra
    /// frame's prefix is old bytes `extra_prefix` = (start, length), (0, 0) for none.
    pub fn for_streams(
        diff_len: u32,
        raw: [u32; 4],
        framed: [u32; 4],
        extra_prefix: (u64, u32),
    ) -> SegmentHeader {
        let [control_len, extra_len, runs_len, codes_len] = raw;
        let [control_zlen, extra_zlen, runs_zlen, codes_zlen] = framed;
        SegmentHeader {
            target_len: diff_len.saturating_add(extra_len),
            control_len,
            control_zlen,
            extra_len,
            extra_zlen,
            diff_len,
            runs_len,
            runs_zlen,
            codes_len,
            codes_zlen,
            extra_prefix_start: extra_prefix.0,
            extra_prefix_len: extra_prefix.1,
            diff_coding: DiffCoding::RunsAndCodes,
            extra_coding: ExtraCoding::Zstd,
            control_coding: ControlCoding::Zstd,
        }
    }

    /// The same segment with its control block as an LZMA2 stream of `zlen` bytes in
    /// place of the zstd frame.
    pub fn with_lzma_control(self, zlen: u32) -> SegmentHeader {
        SegmentHeader {
            control_zlen: zlen,
            control_coding: ControlCoding::Lzma2,
            ..self
        }
    }

    /// The same segment with its extra stream as an LZMA2 stream of `zlen` bytes in place
    /// of the zstd frame and its prefix.
    pub fn with_lzma_extra(self, zlen: u32) -> SegmentHeader {
        SegmentHeader {
            extra_zlen: zlen,
            extra_prefix_start: 0,
            extra_prefix_len: 0,
            extra_coding: ExtraCoding::Lzma2,
            ..self
        }
    }

    /// The same segment with its runs block and its codes as LZMA2 streams of
    /// `runs_zlen` and `codes_zlen` bytes (0 for no codes) in place of their zstd frames.
    pub fn with_lzma_runs_and_codes(self, runs_zlen: u32, codes_zlen: u32) -> SegmentHeader {
        SegmentHeader {
            runs_zlen,
            codes_zlen,
            diff_coding: DiffCoding::RunsAndCodesLzma2,
            ..self
        }
    }

    /// The same segment with its diff stream as an LZMA2 stream of `zlen` bytes in place
    /// of the runs block and the codes frame.
    pub fn with_lzma_diff(self, zlen: u32) -> SegmentHeader {
        SegmentHeader {
            runs_len: 0,
            runs_zlen: 0,
            codes_len: self.diff_len,
            codes_zlen: zlen,
            diff_coding: DiffCoding::Lzma2,
            ..self
        }
    }

    /// The header as it goes on the wire.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        let codings = (self.control_coding, self.diff_coding, self.extra_coding);
        let tag = SEGMENT_TAGS
            .iter()
            .find(|(_, control, diff, extra)| (*control, *diff, *extra) == codings)
            .map_or(SEGMENT_TAG, |(tag, ..)| *tag);
        out[0..4].copy_from_slice(&tag);
        let fields = [
            self.target_len,
            self.control_len,
            self.control_zlen,
            self.extra_len,
            self.extra_zlen,
            self.diff_len,
            self.runs_len,
            self.runs_zlen,
            self.codes_len,
            self.codes_zlen,
        ];
        for (slot, value) in out[4..44].chunks_exact_mut(4).zip(fields) {
            slot.copy_from_slice(&value.to_le_bytes());
        }
        out[44..52].copy_from_slice(&self.extra_prefix_start.to_le_bytes());
        out[52..56].copy_from_slice(&self.extra_prefix_len.to_le_bytes());
        out
    }

    /// Parses and validates a segment header: every length is checked against the caps
    /// and against the others, so the caller may size buffers from the result.
    pub fn parse(bytes: &[u8]) -> Result<Self, DeltaError> {
        let Some(bytes) = bytes.get(..SEGMENT_HEADER_LEN) else {
            return Err(DeltaError::Truncated {
                what: "segment header",
                needed: SEGMENT_HEADER_LEN,
                available: bytes.len(),
            });
        };
        let mut tag = [0u8; 4];
        tag.copy_from_slice(&bytes[0..4]);
        let Some(&(_, control_coding, diff_coding, extra_coding)) =
            SEGMENT_TAGS.iter().find(|(known, ..)| *known == tag)
        else {
            return Err(DeltaError::BadSegmentTag { found: tag });
        };
        let mut fields = bytes[4..].chunks_exact(4).map(|c| {
            let mut le = [0u8; 4];
            le.copy_from_slice(c);
            u32::from_le_bytes(le)
        });
        let mut next = || fields.next().unwrap_or(0);
        let header = SegmentHeader {
            target_len: next(),
            control_len: next(),
            control_zlen: next(),
            extra_len: next(),
            extra_zlen: next(),
            diff_len: next(),
            runs_len: next(),
            runs_zlen: next(),
            codes_len: next(),
            codes_zlen: next(),
            extra_prefix_start: 0,
            extra_prefix_len: 0,
            diff_coding,
            extra_coding,
            control_coding,
        };
        let mut start = [0u8; 8];
        start.copy_from_slice(&bytes[44..52]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[52..56]);
        let header = SegmentHeader {
            extra_prefix_start: u64::from_le_bytes(start),
            extra_prefix_len: u32::from_le_bytes(len),
            ..header
        };
        header.validate()?;
        Ok(header)
    }

    fn validate(&self) -> Result<(), DeltaError> {
        let over = |field, value: u32, cap: u32| DeltaError::LengthOverCap {
            field,
            value: u64::from(value),
            cap: u64::from(cap),
        };
        if self.target_len == 0 {
            return Err(DeltaError::SegmentInconsistent {
                field: "target length",
                reason: "a segment must produce at least one byte",
            });
        }
        if self.target_len > SEGMENT_MAX_TARGET {
            return Err(over(
                "segment target length",
                self.target_len,
                SEGMENT_MAX_TARGET,
            ));
        }
        if self.control_len == 0 {
            return Err(DeltaError::SegmentInconsistent {
                field: "control length",
                reason: "a segment needs at least one control entry",
            });
        }
        if self.control_len > SEGMENT_MAX_CONTROL {
            return Err(over(
                "segment control length",
                self.control_len,
                SEGMENT_MAX_CONTROL,
            ));
        }
        if u64::from(self.diff_len) + u64::from(self.extra_len) != u64::from(self.target_len) {
            return Err(DeltaError::SegmentInconsistent {
                field: "diff and extra lengths",
                reason: "they must add up to the segment target length",
            });
        }
        if self.runs_len > SEGMENT_MAX_RUNS {
            return Err(over("segment runs length", self.runs_len, SEGMENT_MAX_RUNS));
        }
        if self.extra_prefix_len > EXTRA_PREFIX_MAX {
            return Err(over(
                "extra prefix length",
                self.extra_prefix_len,
                EXTRA_PREFIX_MAX,
            ));
        }
        if self.extra_len == 0 && (self.extra_prefix_len != 0 || self.extra_prefix_start != 0) {
            return Err(DeltaError::SegmentInconsistent {
                field: "extra prefix",
                reason: "a segment without extra bytes has no extra prefix",
            });
        }
        if self.codes_len > self.diff_len {
            return Err(DeltaError::SegmentInconsistent {
                field: "codes length",
                reason: "there cannot be more non-zero diff bytes than diff bytes",
            });
        }
        let mut zstd_frames = Vec::with_capacity(4);
        match self.control_coding {
            ControlCoding::Zstd => {
                zstd_frames.push(("control frame length", self.control_len, self.control_zlen))
            }
            ControlCoding::Lzma2 => {
                check_lzma_stream("control frame length", self.control_len, self.control_zlen)?
            }
        }
        match self.extra_coding {
            ExtraCoding::Zstd => {
                zstd_frames.push(("extra frame length", self.extra_len, self.extra_zlen))
            }
            ExtraCoding::Lzma2 => {
                if self.extra_prefix_start != 0 || self.extra_prefix_len != 0 {
                    return Err(DeltaError::SegmentInconsistent {
                        field: "extra prefix",
                        reason: "an LZMA2-coded extra stream has no prefix",
                    });
                }
                check_lzma_stream("extra frame length", self.extra_len, self.extra_zlen)?;
            }
        }
        match self.diff_coding {
            DiffCoding::RunsAndCodes => {
                if (self.diff_len == 0) != (self.runs_len == 0) {
                    return Err(DeltaError::SegmentInconsistent {
                        field: "runs length",
                        reason: "diff bytes need a runs block, and only diff bytes have one",
                    });
                }
                zstd_frames.push(("runs frame length", self.runs_len, self.runs_zlen));
                zstd_frames.push(("codes frame length", self.codes_len, self.codes_zlen));
            }
            DiffCoding::RunsAndCodesLzma2 => {
                // A runs block, so at least one diff byte; the codes may all be zero.
                if self.diff_len == 0 {
                    return Err(DeltaError::SegmentInconsistent {
                        field: "diff length",
                        reason: "an LZMA2-coded runs block needs diff bytes",
                    });
                }
                check_lzma_stream("runs frame length", self.runs_len, self.runs_zlen)?;
                check_frame(
                    "codes frame length",
                    self.codes_len,
                    self.codes_zlen,
                    lzma2_bound,
                )?;
            }
            DiffCoding::Lzma2 => {
                // All of the diff bytes, at least one, in the codes slot; no runs block.
                if self.codes_len != self.diff_len {
                    return Err(DeltaError::SegmentInconsistent {
                        field: "codes length",
                        reason: "an LZMA2-coded diff stream holds all of the segment's diff bytes",
                    });
                }
                if self.runs_len != 0 || self.runs_zlen != 0 {
                    return Err(DeltaError::SegmentInconsistent {
                        field: "runs length",
                        reason: "an LZMA2-coded diff stream has no runs block",
                    });
                }
                check_lzma_stream("codes frame length", self.diff_len, self.codes_zlen)?;
            }
        }
        for (field, raw, zlen) in zstd_frames {
            check_frame(field, raw, zlen, zstd_compress_bound)?;
        }
        Ok(())
    }

    /// The lengths of the segment's four frames in wire order (control, extra, runs,
    /// codes), 0 for an absent one.
    pub fn frame_lens(&self) -> [u32; 4] {
        [
            self.control_zlen,
            self.extra_zlen,
            self.runs_zlen,
            self.codes_zlen,
        ]
    }

    /// Bytes the segment takes on the wire: its header and its frames.
    pub fn encoded_len(&self) -> u64 {
        SEGMENT_HEADER_LEN as u64 + self.frame_lens().iter().map(|&n| u64::from(n)).sum::<u64>()
    }

    /// Whether the segment carries any LZMA2 stream (any tag but `OSEG`).
    pub fn uses_lzma(&self) -> bool {
        (self.control_coding, self.diff_coding, self.extra_coding)
            != (
                ControlCoding::Zstd,
                DiffCoding::RunsAndCodes,
                ExtraCoding::Zstd,
            )
    }

    /// Refuses LZMA2-coded streams in a container whose algorithm does not allow them (an
    /// applier of algorithms 1 and 3 must only ever see tag `OSEG`).
    pub fn check_coding(&self, algorithm: super::Algorithm) -> Result<(), DeltaError> {
        if self.uses_lzma() && !algorithm.allows_lzma() {
            return Err(DeltaError::SegmentInconsistent {
                field: "segment tag",
                reason: "LZMA2-coded streams are allowed only in algorithm 4 containers",
            });
        }
        Ok(())
    }

    /// Refuses an extra prefix that does not lie inside the source image.
    pub fn check_prefix(&self, source_len: u64) -> Result<(), DeltaError> {
        let end = self
            .extra_prefix_start
            .checked_add(u64::from(self.extra_prefix_len));
        match end {
            Some(end) if end <= source_len => Ok(()),
            _ => Err(DeltaError::PrefixOutOfBounds {
                start: self.extra_prefix_start,
                len: self.extra_prefix_len,
                source_len,
            }),
        }
    }

    /// Refuses this segment when it would write past the container's declared target
    /// length, given that `written` bytes were produced so far. Checked before the first
    /// byte of the segment is written.
    pub fn check_fits(&self, written: u64, declared_target_len: u64) -> Result<(), DeltaError> {
        let end = written.saturating_add(u64::from(self.target_len));
        if end > declared_target_len {
            return Err(DeltaError::TargetOverrun {
                declared: declared_target_len,
                attempted: end,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SegmentHeader {
        SegmentHeader {
            target_len: 1000,
            control_len: 10,
            control_zlen: 19,
            extra_len: 100,
            extra_zlen: 90,
            diff_len: 900,
            runs_len: 30,
            runs_zlen: 25,
            codes_len: 40,
            codes_zlen: 40,
            extra_prefix_start: 7,
            extra_prefix_len: 1000,
            diff_coding: DiffCoding::RunsAndCodes,
            extra_coding: ExtraCoding::Zstd,
            control_coding: ControlCoding::Zstd,
        }
    }

    #[test]
    fn an_lzma_coded_control_block_round_trips_and_its_rules_hold() {
        let control = sample().with_lzma_control(12);
        assert_eq!(&control.encode()[..4], b"OCEG");
        assert_eq!(SegmentHeader::parse(&control.encode()), Ok(control));
        assert!(control.uses_lzma());
        // Every combination of the three codings has its own tag, and parses back.
        let mut tags = std::collections::HashSet::new();
        for header in [sample(), control] {
            let diffs = [
                header,
                header.with_lzma_diff(700),
                header.with_lzma_runs_and_codes(20, 30),
            ];
            for header in diffs {
                for header in [header, header.with_lzma_extra(80)] {
                    let bytes = header.encode();
                    assert!(tags.insert(bytes[..4].to_vec()), "tag used twice");
                    assert_eq!(SegmentHeader::parse(&bytes), Ok(header));
                }
            }
        }
        assert_eq!(tags.len(), SEGMENT_TAGS.len());
        let bound = lzma2_bound(control.control_len) as u32;
        let with_zlen = |control_zlen| SegmentHeader {
            control_zlen,
            ..control
        };
        assert_eq!(with_zlen(bound).validate(), Ok(()));
        assert!(matches!(
            with_zlen(bound + 1).validate(),
            Err(DeltaError::LengthOverCap {
                field: "control frame length",
                ..
            })
        ));
        assert!(matches!(
            with_zlen(0).validate(),
            Err(DeltaError::SegmentInconsistent {
                field: "control frame length",
                ..
            })
        ));
        // Only algorithm 4 containers may hold one.
        assert_eq!(
            control.check_coding(super::super::Algorithm::BsdiffLzma(None)),
            Ok(())
        );
        assert!(matches!(
            control.check_coding(super::super::Algorithm::BsdiffZstd),
            Err(DeltaError::SegmentInconsistent {
                field: "segment tag",
                ..
            })
        ));
    }

    #[test]
    fn lzma_coded_runs_and_codes_round_trip_and_their_rules_hold() {
        let coded = sample().with_lzma_runs_and_codes(20, 30);
        assert_eq!(&coded.encode()[..4], b"OSRG");
        assert_eq!(SegmentHeader::parse(&coded.encode()), Ok(coded));
        assert!(coded.uses_lzma());
        assert_eq!(
            (coded.runs_len, coded.codes_len),
            (sample().runs_len, sample().codes_len)
        );
        assert_eq!(&coded.with_lzma_extra(80).encode()[..4], b"OSRL");
        assert_eq!(&coded.with_lzma_control(12).encode()[..4], b"OCRG");
        let refused = |h: SegmentHeader, field: &str| match h.validate() {
            Err(DeltaError::SegmentInconsistent { field: f, .. })
            | Err(DeltaError::LengthOverCap { field: f, .. }) => f == field,
            _ => false,
        };
        // The runs block is an LZMA2 stream: present, within the LZMA2 bound.
        let runs_bound = lzma2_bound(coded.runs_len) as u32;
        assert_eq!(
            SegmentHeader {
                runs_zlen: runs_bound,
                ..coded
            }
            .validate(),
            Ok(())
        );
        assert!(refused(
            SegmentHeader {
                runs_zlen: runs_bound + 1,
                ..coded
            },
            "runs frame length"
        ));
        assert!(refused(
            SegmentHeader {
                runs_zlen: 0,
                ..coded
            },
            "runs frame length"
        ));
        assert!(refused(
            SegmentHeader {
                runs_len: 0,
                runs_zlen: 0,
                ..coded
            },
            "runs frame length"
        ));
        // The codes: within their bound, a stream exactly when there are codes.
        let codes_bound = lzma2_bound(coded.codes_len) as u32;
        assert_eq!(
            SegmentHeader {
                codes_zlen: codes_bound,
                ..coded
            }
            .validate(),
            Ok(())
        );
        assert!(refused(
            SegmentHeader {
                codes_zlen: codes_bound + 1,
                ..coded
            },
            "codes frame length"
        ));
        assert!(refused(
            SegmentHeader {
                codes_zlen: 0,
                ..coded
            },
            "codes frame length"
        ));
        let all_zero = SegmentHeader {
            codes_len: 0,
            codes_zlen: 0,
            ..coded
        };
        assert_eq!(all_zero.validate(), Ok(()));
        assert!(refused(
            SegmentHeader {
                codes_zlen: 5,
                ..all_zero
            },
            "codes frame length"
        ));
        // No diff bytes, no runs block to code.
        let no_diff = SegmentHeader {
            diff_len: 0,
            codes_len: 0,
            codes_zlen: 0,
            target_len: coded.extra_len,
            ..coded
        };
        assert!(refused(no_diff, "diff length"));
        // Only algorithm 4 containers may hold one.
        assert!(only_in_algorithm_4(coded));
    }

    fn only_in_algorithm_4(header: SegmentHeader) -> bool {
        header
            .check_coding(super::super::Algorithm::BsdiffLzma(None))
            .is_ok()
            && header
                .check_coding(super::super::Algorithm::BsdiffZstd)
                .is_err()
    }

    #[test]
    fn an_lzma_coded_diff_round_trips_and_its_rules_hold() {
        let lzma = sample().with_lzma_diff(700);
        assert_eq!(&lzma.encode()[..4], b"OSGL");
        assert_eq!(SegmentHeader::parse(&lzma.encode()), Ok(lzma));
        assert_eq!((lzma.runs_len, lzma.codes_len), (0, lzma.diff_len));
        let inconsistent = |h: SegmentHeader, field: &str| matches!(h.validate(), Err(DeltaError::SegmentInconsistent { field: f, .. }) if f == field);
        assert!(inconsistent(
            SegmentHeader {
                runs_len: 3,
                ..lzma
            },
            "runs length"
        ));
        assert!(inconsistent(
            SegmentHeader {
                runs_zlen: 3,
                ..lzma
            },
            "runs length"
        ));
        assert!(inconsistent(
            SegmentHeader {
                codes_len: 899,
                ..lzma
            },
            "codes length"
        ));
        assert!(inconsistent(
            SegmentHeader {
                codes_zlen: 0,
                ..lzma
            },
            "codes frame length"
        ));
        let no_diff = SegmentHeader {
            diff_len: 0,
            codes_len: 0,
            target_len: lzma.extra_len,
            ..lzma
        };
        assert!(inconsistent(no_diff, "codes frame length"));
        let bound = lzma2_bound(lzma.diff_len) as u32;
        assert_eq!(bound, 900 + 3 + 1);
        assert_eq!(
            SegmentHeader {
                codes_zlen: bound,
                ..lzma
            }
            .validate(),
            Ok(())
        );
        assert!(matches!(
            SegmentHeader {
                codes_zlen: bound + 1,
                ..lzma
            }
            .validate(),
            Err(DeltaError::LengthOverCap {
                field: "codes frame length",
                ..
            })
        ));
        // An LZMA2-coded extra stream: no prefix, its own bound; both at once is `OSLL`.
        let extra = sample().with_lzma_extra(80);
        assert_eq!(&extra.encode()[..4], b"OSXL");
        assert_eq!(SegmentHeader::parse(&extra.encode()), Ok(extra));
        assert_eq!((extra.extra_prefix_start, extra.extra_prefix_len), (0, 0));
        let both = lzma.with_lzma_extra(80);
        assert_eq!(&both.encode()[..4], b"OSLL");
        assert_eq!(SegmentHeader::parse(&both.encode()), Ok(both));
        assert!(inconsistent(
            SegmentHeader {
                extra_prefix_len: 10,
                ..extra
            },
            "extra prefix"
        ));
        assert!(inconsistent(
            SegmentHeader {
                extra_zlen: 0,
                ..extra
            },
            "extra frame length"
        ));
        assert!(matches!(
            SegmentHeader {
                extra_zlen: lzma2_bound(extra.extra_len) as u32 + 1,
                ..extra
            }
            .validate(),
            Err(DeltaError::LengthOverCap {
                field: "extra frame length",
                ..
            })
        ));
        // Only algorithm 4 containers may hold one.
        assert_eq!(
            lzma.check_coding(super::super::Algorithm::BsdiffLzma(None)),
            Ok(())
        );
        for algorithm in [
            super::super::Algorithm::BsdiffZstd,
            super::super::Algorithm::BsdiffZstdTransformed(super::super::Transform::Arm64),
        ] {
            for hostile in [lzma, extra, both] {
                assert!(matches!(
                    hostile.check_coding(algorithm),
                    Err(DeltaError::SegmentInconsistent {
                        field: "segment tag",
                        ..
                    })
                ));
            }
            assert_eq!(sample().check_coding(algorithm), Ok(()));
        }
    }

    #[test]
    fn the_length_caps_are_inclusive() {
        let capped = |field: &str, h: &SegmentHeader| matches!(h.validate(), Err(DeltaError::LengthOverCap { field: f, .. }) if f == field);
        for (field, set, cap) in [
            (
                "segment target length",
                (|h: &mut SegmentHeader, v| h.target_len = v) as fn(&mut SegmentHeader, u32),
                SEGMENT_MAX_TARGET,
            ),
            (
                "segment control length",
                |h: &mut SegmentHeader, v| h.control_len = v,
                SEGMENT_MAX_CONTROL,
            ),
            (
                "segment runs length",
                |h: &mut SegmentHeader, v| h.runs_len = v,
                SEGMENT_MAX_RUNS,
            ),
            (
                "extra prefix length",
                |h: &mut SegmentHeader, v| h.extra_prefix_len = v,
                EXTRA_PREFIX_MAX,
            ),
        ] {
            let mut h = sample();
            set(&mut h, cap);
            assert!(!capped(field, &h), "{field} at its cap is allowed");
            set(&mut h, cap + 1);
            assert!(capped(field, &h), "{field} above its cap is refused");
        }
        // Every diff byte may be non-zero, but there are never more codes than diff bytes.
        let codes = |codes_len| {
            let h = SegmentHeader {
                codes_len,
                ..sample()
            };
            matches!(
                h.validate(),
                Err(DeltaError::SegmentInconsistent {
                    field: "codes length",
                    ..
                })
            )
        };
        assert!(!codes(sample().diff_len));
        assert!(codes(sample().diff_len + 1));
        // A frame may be as large as zstd's worst case for its bytes, not larger.
        let bound = zstd_compress_bound(sample().control_len) as u32;
        let frame = |control_zlen| {
            let h = SegmentHeader {
                control_zlen,
                ..sample()
            };
            matches!(h.validate(), Err(DeltaError::LengthOverCap { cap, .. }) if cap == u64::from(bound))
        };
        assert!(!frame(bound));
        assert!(frame(bound + 1));
    }

    #[test]
    fn encode_then_parse_is_identity() {
        assert_eq!(sample().frame_lens(), [19, 90, 25, 40]);
        assert_eq!(sample().encoded_len(), 56 + 19 + 90 + 25 + 40);
        assert_eq!(SegmentHeader::parse(&sample().encode()), Ok(sample()));
    }

    #[test]
    fn hostile_segment_headers_are_refused() {
        type Mutate = fn(&mut SegmentHeader);
        // Each case names the field whose check must refuse it (not merely some check).
        let cases: &[(&str, &str, Mutate)] = &[
            ("zero target", "target length", |h| {
                h.target_len = 0;
                h.diff_len = 0;
                h.extra_len = 0;
                h.runs_len = 0;
                h.runs_zlen = 0;
                h.codes_len = 0;
                h.codes_zlen = 0;
                h.extra_zlen = 0;
            }),
            (
                "target over the segment cap",
                "segment target length",
                |h| {
                    h.target_len = SEGMENT_MAX_TARGET + 1;
                    h.diff_len = SEGMENT_MAX_TARGET + 1 - h.extra_len;
                },
            ),
            ("control over the cap", "segment control length", |h| {
                h.control_len = SEGMENT_MAX_CONTROL + 1
            }),
            ("no control entries", "control length", |h| {
                h.control_len = 0;
                h.control_zlen = 0;
            }),
            (
                "diff and extra do not add up",
                "diff and extra lengths",
                |h| h.diff_len += 1,
            ),
            ("frame for an empty stream", "extra frame length", |h| {
                h.extra_len = 0;
                // Within the zstd bound of an empty input, so only this rule refuses it.
                h.extra_zlen = 9;
                h.extra_prefix_len = 0;
                h.extra_prefix_start = 0;
                h.diff_len = 1000;
            }),
            ("missing frame", "codes frame length", |h| h.codes_zlen = 0),
            ("runs over the cap", "segment runs length", |h| {
                h.runs_len = SEGMENT_MAX_RUNS + 1
            }),
            ("prefix over the cap", "extra prefix length", |h| {
                h.extra_prefix_len = EXTRA_PREFIX_MAX + 1
            }),
            ("prefix without extra bytes", "extra prefix", |h| {
                h.extra_len = 0;
                h.extra_zlen = 0;
                h.diff_len = 1000;
            }),
            ("prefix start without extra bytes", "extra prefix", |h| {
                h.extra_len = 0;
                h.extra_zlen = 0;
                h.diff_len = 1000;
                h.extra_prefix_len = 0;
            }),
            ("prefix length without extra bytes", "extra prefix", |h| {
                h.extra_len = 0;
                h.extra_zlen = 0;
                h.diff_len = 1000;
                h.extra_prefix_start = 0;
            }),
            ("more codes than diff bytes", "codes length", |h| {
                h.codes_len = 901
            }),
            ("diff bytes without runs", "runs length", |h| {
                h.runs_len = 0;
                h.runs_zlen = 0;
            }),
            (
                "frame larger than the zstd bound",
                "extra frame length",
                |h| h.extra_zlen = u32::MAX,
            ),
            ("u32 overflow in the sum", "diff and extra lengths", |h| {
                h.diff_len = u32::MAX;
                h.extra_len = 1001;
            }),
        ];
        for (name, field, mutate) in cases {
            let mut header = sample();
            mutate(&mut header);
            let parsed = SegmentHeader::parse(&header.encode());
            let refused_by = match &parsed {
                Err(DeltaError::LengthOverCap { field, .. })
                | Err(DeltaError::SegmentInconsistent { field, .. }) => Some(*field),
                _ => None,
            };
            assert_eq!(
                refused_by,
                Some(*field),
                "case `{name}` must be refused by the {field} check, got {parsed:?}"
            );
        }
        let mut bytes = sample().encode();
        bytes[0] = b'X';
        assert_eq!(
            SegmentHeader::parse(&bytes),
            Err(DeltaError::BadSegmentTag { found: *b"XSEG" })
        );
        assert!(matches!(
            SegmentHeader::parse(&bytes[..10]),
            Err(DeltaError::Truncated {
                needed: SEGMENT_HEADER_LEN,
                available: 10,
                ..
            })
        ));
    }

    #[test]
    fn prefix_outside_the_source_is_refused() {
        let header = sample();
        assert_eq!(header.check_prefix(1007), Ok(()));
        assert!(header.check_prefix(1006).is_err());
        let overflow = SegmentHeader {
            extra_prefix_start: u64::MAX,
            ..sample()
        };
        assert!(
            overflow.check_prefix(u64::MAX).is_err(),
            "start + len must not wrap"
        );
    }

    #[test]
    fn segment_that_passes_the_declared_target_is_refused_before_writing() {
        let header = sample();
        assert_eq!(header.check_fits(0, 1000), Ok(()));
        assert_eq!(
            header.check_fits(1, 1000),
            Err(DeltaError::TargetOverrun {
                declared: 1000,
                attempted: 1001
            })
        );
    }

    #[test]
    fn compress_bound_matches_zstd_for_reference_sizes() {
        // Values of ZSTD_COMPRESSBOUND from zstd.h for a few sizes.
        let table = [
            (0u32, 64u64),
            (1, 64),
            (131_072, 131_584),
            (1 << 20, (1 << 20) + 4096),
        ];
        for (raw, bound) in table {
            assert_eq!(zstd_compress_bound(raw), bound, "bound of {raw} bytes");
        }
    }
    /// A header the builder could have written: every length consistent and capped.
    fn valid_segment() -> impl proptest::strategy::Strategy<Value = SegmentHeader> {
        use proptest::prelude::*;
        let sizes = (
            0..=SEGMENT_MAX_TARGET,
            0..=SEGMENT_MAX_TARGET,
            1..=SEGMENT_MAX_CONTROL,
            1..=SEGMENT_MAX_RUNS,
            any::<u32>(),
            any::<[u32; 4]>(),
            any::<u64>(),
            0..=EXTRA_PREFIX_MAX,
        );
        sizes.prop_map(
            |(target, diff, control, runs, codes, zseeds, prefix_start, prefix_len)| {
                let target_len = target.max(1);
                let diff_len = diff % (target_len + 1);
                let extra_len = target_len - diff_len;
                let runs_len = if diff_len == 0 { 0 } else { runs };
                let codes_len = if diff_len == 0 {
                    0
                } else {
                    codes % (diff_len + 1)
                };
                // A frame length in 1..=bound for a non-empty stream, none for an empty one.
                let zlen = |raw: u32, seed: u32| {
                    if raw == 0 {
                        0
                    } else {
                        (u64::from(seed) % zstd_compress_bound(raw) + 1) as u32
                    }
                };
                let (extra_prefix_start, extra_prefix_len) = if extra_len == 0 {
                    (0, 0)
                } else {
                    (prefix_start, prefix_len)
                };
                SegmentHeader {
                    target_len,
                    control_len: control,
                    control_zlen: zlen(control, zseeds[0]),
                    extra_len,
                    extra_zlen: zlen(extra_len, zseeds[1]),
                    diff_len,
                    runs_len,
                    runs_zlen: zlen(runs_len, zseeds[2]),
                    codes_len,
                    codes_zlen: zlen(codes_len, zseeds[3]),
                    extra_prefix_start,
                    extra_prefix_len,
                    diff_coding: DiffCoding::RunsAndCodes,
                    extra_coding: ExtraCoding::Zstd,
                    control_coding: ControlCoding::Zstd,
                }
            },
        )
    }

    /// What a caller may rely on once a header parsed: it sizes buffers from these.
    fn assert_within_caps(h: &SegmentHeader) -> Result<(), proptest::test_runner::TestCaseError> {
        use proptest::{prop_assert, prop_assert_eq};
        prop_assert!(h.target_len >= 1 && h.target_len <= SEGMENT_MAX_TARGET);
        prop_assert!(h.control_len >= 1 && h.control_len <= SEGMENT_MAX_CONTROL);
        prop_assert!(h.runs_len <= SEGMENT_MAX_RUNS);
        prop_assert!(h.extra_prefix_len <= EXTRA_PREFIX_MAX);
        prop_assert_eq!(
            u64::from(h.diff_len) + u64::from(h.extra_len),
            u64::from(h.target_len)
        );
        prop_assert!(h.codes_len <= h.diff_len);
        for (raw, zlen) in [
            (h.control_len, h.control_zlen),
            (h.extra_len, h.extra_zlen),
            (h.runs_len, h.runs_zlen),
            (h.codes_len, h.codes_zlen),
        ] {
            prop_assert_eq!(raw == 0, zlen == 0);
            prop_assert!(u64::from(zlen) <= zstd_compress_bound(raw));
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn mutated_segment_headers_are_refused_or_within_every_cap(
            header in valid_segment(),
            mutations in crate::delta::mutate::mutations(),
            written in 0..=crate::delta::MAX_IMAGE_LEN,
            declared in 0..=crate::delta::MAX_IMAGE_LEN,
            source_len in proptest::num::u64::ANY,
        ) {
            let encoded = header.encode();
            proptest::prop_assert_eq!(SegmentHeader::parse(&encoded), Ok(header));
            let hostile = crate::delta::mutate::apply(&encoded, &mutations);
            match SegmentHeader::parse(&hostile) {
                Ok(parsed) => {
                    proptest::prop_assert_eq!(&parsed.encode()[..], &hostile[..SEGMENT_HEADER_LEN]);
                    assert_within_caps(&parsed)?;
                    // The checks against the container never panic either.
                    if parsed.check_prefix(source_len).is_ok() {
                        proptest::prop_assert!(parsed.extra_prefix_start + u64::from(parsed.extra_prefix_len) <= source_len);
                    }
                    if parsed.check_fits(written, declared).is_ok() {
                        proptest::prop_assert!(written + u64::from(parsed.target_len) <= declared);
                    }
                }
                Err(DeltaError::Truncated { available, .. }) => {
                    proptest::prop_assert!(available < SEGMENT_HEADER_LEN);
                }
                Err(_) => proptest::prop_assert_ne!(&hostile[..SEGMENT_HEADER_LEN], &encoded[..]),
            }
        }

        #[test]
        fn any_length_field_is_refused_or_within_every_cap(
            header in valid_segment(),
            field in 0usize..10,
            value in proptest::prop_oneof![proptest::num::u32::ANY, 0u32..64, proptest::strategy::Just(u32::MAX)],
            near_boundary in proptest::option::of(-3i64..=3),
        ) {
            let h = header;
            // The cap or bound that applies to each field, in wire order.
            let boundary = [
                SEGMENT_MAX_TARGET,
                SEGMENT_MAX_CONTROL,
                zstd_compress_bound(h.control_len) as u32,
                SEGMENT_MAX_TARGET,
                zstd_compress_bound(h.extra_len) as u32,
                SEGMENT_MAX_TARGET,
                SEGMENT_MAX_RUNS,
                zstd_compress_bound(h.runs_len) as u32,
                h.diff_len,
                zstd_compress_bound(h.codes_len) as u32,
            ][field];
            let value = match near_boundary {
                Some(delta) => (i64::from(boundary) + delta).clamp(0, i64::from(u32::MAX)) as u32,
                None => value,
            };
            let mut bytes = header.encode();
            bytes[4 + 4 * field..8 + 4 * field].copy_from_slice(&value.to_le_bytes());
            if let Ok(parsed) = SegmentHeader::parse(&bytes) {
                assert_within_caps(&parsed)?;
            }
        }
    }
}
