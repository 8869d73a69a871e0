//! The control block of a segment: which old bytes to add the diff stream to, and how
//! many literal extra bytes follow.
//!
//! Entries are stored column by column (all seeks, then all diff lengths, then all extra
//! lengths) as LEB128 varints, because each column compresses far better on its own
//! than interleaved triples of fixed 8-byte integers as in the original bsdiff.

use super::varint::{put_varint, VarintReader};
use super::{DeltaError, SegmentHeader};

/// One control entry as it is on the wire.
///
/// Applying it: move the old cursor by `seek`, produce `diff_len` target bytes as
/// `old[cursor..] + diff` (byte-wise wrapping add) while advancing the cursor, then
/// copy `extra_len` bytes from the extra stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    pub seek: i64,
    pub diff_len: u32,
    pub extra_len: u32,
}

/// A validated entry with its absolute old offset resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedControl {
    /// Offset in the source image where the diff bytes are added.
    pub old_start: u64,
    pub diff_len: u32,
    pub extra_len: u32,
}

/// A decoded and fully validated control block: every old range lies inside the source
/// image and the lengths add up to the segment header's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlBlock {
    pub entries: Vec<PlannedControl>,
    /// Old cursor after the last entry; the next segment continues from here.
    pub end_cursor: u64,
}

/// Encodes entries into a control block.
pub fn encode_control_block(entries: &[Control]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 4 + 4);
    put_varint(&mut out, entries.len() as u64);
    for entry in entries {
        put_varint(&mut out, zigzag(entry.seek));
    }
    for entry in entries {
        put_varint(&mut out, u64::from(entry.diff_len));
    }
    for entry in entries {
        put_varint(&mut out, u64::from(entry.extra_len));
    }
    out
}

impl ControlBlock {
    /// Decodes `raw` (the decompressed control frame of the segment described by
    /// `segment`), starting from old cursor `cursor`, against a source of `source_len`
    /// bytes. Refuses malformed varints, trailing bytes, empty entries, lengths that do
    /// not match the segment header and old ranges outside the source.
    pub fn parse(
        raw: &[u8],
        segment: &SegmentHeader,
        cursor: u64,
        source_len: u64,
    ) -> Result<Self, DeltaError> {
        let mut reader = VarintReader::new(raw, "control block");
        let count = reader.next()?;
        // Every entry takes at least three bytes, so this bounds the allocation by the
        // (already capped) size of the block rather than by a number read from the wire.
        let remaining = reader.remaining() as u64;
        if count == 0 || count.saturating_mul(3) > remaining {
            return Err(reader.malformed("entry count does not fit the block"));
        }
        let count = count as usize;
        let mut seeks = Vec::with_capacity(count);
        for _ in 0..count {
            seeks.push(unzigzag(reader.next()?));
        }
        let mut entries = Vec::with_capacity(count);
        let mut diff_total = 0u64;
        let mut cursor = i128::from(cursor);
        for (index, seek) in seeks.into_iter().enumerate() {
            let diff_len = reader.next_u32()?;
            diff_total += u64::from(diff_len);
            if diff_total > u64::from(segment.diff_len) {
                return Err(DeltaError::SegmentInconsistent {
                    field: "diff length",
                    reason: "control entries add more diff bytes than the header declares",
                });
            }
            let start = cursor + i128::from(seek);
            let end = start + i128::from(diff_len);
            if start < 0 || end > i128::from(source_len) {
                return Err(DeltaError::ControlOutOfBounds {
                    index,
                    start,
                    end,
                    source_len,
                });
            }
            cursor = end;
            entries.push(PlannedControl {
                old_start: start as u64,
                diff_len,
                extra_len: 0,
            });
        }
        let mut extra_total = 0u64;
        for entry in &mut entries {
            entry.extra_len = reader.next_u32()?;
            extra_total += u64::from(entry.extra_len);
            if entry.diff_len == 0 && entry.extra_len == 0 {
                return Err(reader.malformed("empty control entry"));
            }
        }
        if reader.remaining() != 0 {
            return Err(reader.malformed("trailing bytes after the last column"));
        }
        if diff_total != u64::from(segment.diff_len) || extra_total != u64::from(segment.extra_len)
        {
            return Err(DeltaError::SegmentInconsistent {
                field: "diff and extra lengths",
                reason: "control entries do not add up to the header's lengths",
            });
        }
        Ok(ControlBlock {
            entries,
            end_cursor: cursor as u64,
        })
    }
}

/// Adds old bytes to diff bytes in place, producing target bytes (the bsdiff "add").
pub fn add_old_bytes(diff: &mut [u8], old: &[u8]) {
    for (d, o) in diff.iter_mut().zip(old) {
        *d = d.wrapping_add(*o);
    }
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::DiffCoding;

    fn segment_for(entries: &[Control]) -> SegmentHeader {
        let diff_len: u32 = entries.iter().map(|e| e.diff_len).sum();
        let extra_len: u32 = entries.iter().map(|e| e.extra_len).sum();
        SegmentHeader {
            target_len: diff_len + extra_len,
            control_len: encode_control_block(entries).len() as u32,
            control_zlen: 1,
            extra_len,
            extra_zlen: u32::from(extra_len > 0),
            diff_len,
            runs_len: u32::from(diff_len > 0),
            runs_zlen: u32::from(diff_len > 0),
            codes_len: 0,
            codes_zlen: 0,
            extra_prefix_start: 0,
            extra_prefix_len: 0,
            diff_coding: DiffCoding::RunsAndCodes,
            extra_coding: crate::delta::ExtraCoding::Zstd,
            control_coding: crate::delta::ControlCoding::Zstd,
        }
    }

    #[test]
    fn the_bsdiff_add_is_bytewise_wrapping_over_the_shorter_of_diff_and_old() {
        let mut diff = [0x01, 0xff, 0x80, 0x07];
        add_old_bytes(&mut diff, &[0x02, 0x02, 0x80]);
        assert_eq!(
            diff,
            [0x03, 0x01, 0x00, 0x07],
            "old ran out: the rest is kept"
        );
        let mut zero = [0u8; 3];
        add_old_bytes(&mut zero, b"abc");
        assert_eq!(&zero, b"abc", "a zero diff copies the old bytes");
    }

    #[test]
    fn encode_then_parse_resolves_absolute_old_offsets() {
        let entries = [
            Control {
                seek: 10,
                diff_len: 5,
                extra_len: 3,
            },
            Control {
                seek: -15,
                diff_len: 4,
                extra_len: 0,
            },
            Control {
                seek: 0,
                diff_len: 0,
                extra_len: 7,
            },
        ];
        let block = ControlBlock::parse(
            &encode_control_block(&entries),
            &segment_for(&entries),
            0,
            100,
        )
        .expect("a block the encoder wrote must parse");
        let starts: Vec<u64> = block.entries.iter().map(|e| e.old_start).collect();
        assert_eq!(starts, vec![10, 0, 4]);
        assert_eq!(block.end_cursor, 4);
    }

    #[test]
    fn hostile_control_blocks_are_refused() {
        let ok = [Control {
            seek: 0,
            diff_len: 4,
            extra_len: 1,
        }];
        let header = segment_for(&ok);
        let cases: Vec<(&str, Vec<u8>, SegmentHeader, u64)> = vec![
            ("empty block", vec![], header, 100),
            (
                "count larger than the block",
                vec![200, 1, 0, 4, 1],
                header,
                100,
            ),
            ("zero entries", vec![0], header, 100),
            (
                "trailing byte",
                [encode_control_block(&ok), vec![0]].concat(),
                header,
                100,
            ),
            ("unterminated varint", vec![1, 0x80, 0x80], header, 100),
            (
                "eleven-byte varint",
                [vec![1], vec![0xff; 10], vec![1, 4, 1]].concat(),
                header,
                100,
            ),
            (
                "seek before the start of the old image",
                encode_control_block(&[Control {
                    seek: -1,
                    diff_len: 4,
                    extra_len: 1,
                }]),
                header,
                100,
            ),
            (
                "diff past the end of the old image",
                encode_control_block(&ok),
                header,
                3,
            ),
            (
                "empty entry",
                encode_control_block(&[
                    ok[0],
                    Control {
                        seek: 0,
                        diff_len: 0,
                        extra_len: 0,
                    },
                ]),
                header,
                100,
            ),
            (
                "lengths disagree with the header",
                encode_control_block(&[Control {
                    seek: 0,
                    diff_len: 5,
                    extra_len: 0,
                }]),
                header,
                100,
            ),
        ];
        for (name, raw, header, source_len) in cases {
            let parsed = ControlBlock::parse(&raw, &header, 0, source_len);
            assert!(
                parsed.is_err(),
                "case `{name}` should be refused, got {parsed:?}"
            );
        }
    }

    #[test]
    fn zigzag_round_trips_extremes() {
        for value in [0, 1, -1, i64::MAX, i64::MIN, 123_456, -987_654] {
            assert_eq!(unzigzag(zigzag(value)), value);
        }
    }

    /// Control entries that are valid against a source of `source_len` bytes from
    /// `cursor`: each pick chooses where the entry's old range starts and how long it is.
    fn valid_controls(source_len: u64, cursor: u64, picks: &[(u64, u64, u32)]) -> Vec<Control> {
        let mut at = cursor;
        picks
            .iter()
            .map(|&(start, len, extra)| {
                let start = start % (source_len + 1);
                let diff_len = (len % (source_len - start + 1)) as u32;
                let extra_len = if diff_len == 0 { extra.max(1) } else { extra };
                let seek = start as i64 - at as i64;
                at = start + u64::from(diff_len);
                Control {
                    seek,
                    diff_len,
                    extra_len,
                }
            })
            .collect()
    }

    /// What the applier relies on once a block parsed.
    fn assert_sound(
        block: &ControlBlock,
        header: &SegmentHeader,
        source_len: u64,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        use proptest::{prop_assert, prop_assert_eq};
        prop_assert!(!block.entries.is_empty());
        let mut diff = 0u64;
        let mut extra = 0u64;
        for entry in &block.entries {
            prop_assert!(entry.diff_len > 0 || entry.extra_len > 0);
            prop_assert!(entry.old_start + u64::from(entry.diff_len) <= source_len);
            diff += u64::from(entry.diff_len);
            extra += u64::from(entry.extra_len);
        }
        prop_assert_eq!(diff, u64::from(header.diff_len));
        prop_assert_eq!(extra, u64::from(header.extra_len));
        prop_assert!(block.end_cursor <= source_len);
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn mutated_control_blocks_are_refused_or_stay_inside_the_source(
            source_len in 0u64..2000,
            cursor_pick in proptest::num::u64::ANY,
            picks in proptest::collection::vec((proptest::num::u64::ANY, proptest::num::u64::ANY, 0u32..300), 1..12),
            mutations in proptest::collection::vec(crate::delta::mutate::mutation(), 0..=3),
            header_edit in proptest::option::of((0usize..2, proptest::num::u32::ANY)),
        ) {
            let cursor = cursor_pick % (source_len + 1);
            let entries = valid_controls(source_len, cursor, &picks);
            let raw = encode_control_block(&entries);
            let mut header = segment_for(&entries);
            let parsed = ControlBlock::parse(&raw, &header, cursor, source_len);
            proptest::prop_assert!(parsed.is_ok(), "a valid block must parse: {:?}", parsed);

            let hostile = crate::delta::mutate::apply(&raw, &mutations);
            // Sometimes the header's lengths disagree with the block as well.
            if let Some((field, value)) = header_edit {
                match field {
                    0 => header.diff_len = value,
                    _ => header.extra_len = value,
                }
            }
            if let Ok(block) = ControlBlock::parse(&hostile, &header, cursor, source_len) {
                assert_sound(&block, &header, source_len)?;
            }
        }

        #[test]
        fn edited_entries_are_refused_or_stay_inside_the_source(
            source_len in 0u64..2000,
            picks in proptest::collection::vec((proptest::num::u64::ANY, proptest::num::u64::ANY, 0u32..300), 1..8),
            edit in (0usize..6, proptest::sample::select(vec![0i64, 1, -1, 2, -2, 1000, i64::MAX, i64::MIN]), proptest::arbitrary::any::<proptest::sample::Index>()),
        ) {
            let entries = valid_controls(source_len, 0, &picks);
            let header = segment_for(&entries);
            let (kind, delta, at) = edit;
            let mut edited = entries.clone();
            let i = at.index(edited.len());
            let nudge = |v: u32| i64::from(v).saturating_add(delta).clamp(0, i64::from(u32::MAX)) as u32;
            match kind {
                0 => edited[i].seek = edited[i].seek.saturating_add(delta),
                1 => edited[i].diff_len = nudge(edited[i].diff_len),
                2 => edited[i].extra_len = nudge(edited[i].extra_len),
                3 => edited.insert(i, Control { seek: 0, diff_len: 0, extra_len: 0 }),
                4 => { edited.remove(i); }
                _ => {
                    // Move length from one entry to the next: the sums still agree.
                    let j = (i + 1) % edited.len();
                    let moved = edited[i].extra_len;
                    edited[i].extra_len = 0;
                    edited[j].extra_len = edited[j].extra_len.saturating_add(moved);
                }
            }
            if let Ok(block) = ControlBlock::parse(&encode_control_block(&edited), &header, 0, source_len) {
                assert_sound(&block, &header, source_len)?;
            }
        }

        #[test]
        fn arbitrary_blocks_never_panic(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..64), cursor in 0u64..1000, source_len in 0u64..1000) {
            let header = SegmentHeader { target_len: 10, control_len: 8, control_zlen: 8, extra_len: 5, extra_zlen: 5, diff_len: 5, runs_len: 2, runs_zlen: 2, codes_len: 5, codes_zlen: 5, extra_prefix_start: 0, extra_prefix_len: 0, diff_coding: DiffCoding::RunsAndCodes, extra_coding: crate::delta::ExtraCoding::Zstd, control_coding: crate::delta::ControlCoding::Zstd };
            if let Ok(block) = ControlBlock::parse(&raw, &header, cursor, source_len) {
                assert_sound(&block, &header, source_len)?;
            }
        }
    }
}
