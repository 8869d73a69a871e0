//! The ELF unwind search table (`.eh_frame_hdr`), delta-coded: the table is one
//! `(initial location, FDE address)` pair of little-endian 32-bit values per function,
//! sorted by location. When functions move, every later entry changes by a different
//! amount, but the difference between consecutive entries (a function's size, an FDE's
//! size) does not; so the transform replaces entry `i` by entry `i` minus entry `i − 1`
//! (each column modulo 2^32), which turns a table of moved functions into one that
//! mostly matches its old self (docs/delta-bench.txt, 2026-12-03 session 23).
//!
//! The table's place, a [`TableSpan`], is found by [`TableLocator`] from the image's own
//! bytes that the table part never changes: the ELF header and program headers (all
//! within the first transform block) and the table's 12-byte header (within one block).
//! The table part runs before a code part (x86-64, ARM64), which may change those bytes,
//! so an applier finds the source's span from the source slot as it is, and the
//! target's from the target's blocks in order, each once its code part is undone and
//! before its table part is.
//!
//! The transform stays block-local given the span: an entry is differenced only when it
//! and its predecessor lie wholly in the block being transformed (the first entry of a
//! block, and one straddling a block end, are left as they are), so each block is a
//! bijection on its own: forward runs from the last entry down, inverse from the first
//! up.

use super::transform::TRANSFORM_BLOCK;

/// `PT_GNU_EH_FRAME`: the program header that points at `.eh_frame_hdr`.
const PT_GNU_EH_FRAME: u32 = 0x6474_e550;
/// Size of an ELF64 program header.
const PHDR_LEN: u64 = 56;
/// Size of the ELF64 file header.
const EHDR_LEN: u64 = 64;
/// Version, three encodings, the 4-byte `.eh_frame` pointer and the 4-byte count.
const TABLE_HEADER_LEN: u64 = 12;
/// One table entry: two 32-bit values.
const ENTRY_LEN: u64 = 8;
/// `DW_EH_PE_udata4` (the count's encoding the transform accepts).
const UDATA4: u8 = 0x03;
/// `DW_EH_PE_datarel | DW_EH_PE_sdata4` (the table encoding the transform accepts).
const DATAREL_SDATA4: u8 = 0x3b;

/// Where an image's table entries lie: `count` entries of 8 bytes from `entries_start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSpan {
    pub entries_start: u64,
    pub count: u64,
}

/// Finds an image's [`TableSpan`] from the image's own bytes (not code-transformed),
/// one transform block at a time in ascending order
/// (only block 0 and the block holding the table header are read; feeding others is
/// harmless). Anything that is not a little-endian ELF64 image with a well-formed
/// table of the accepted encodings, laid out as the transform needs, gives no span.
#[derive(Debug, Clone)]
pub struct TableLocator {
    image_len: u64,
    /// The table header's offset and the end of the segment holding it, once block 0
    /// has been read.
    header: Option<(u64, u64)>,
    /// The end of the program headers (entries must start at or after it).
    phdr_end: u64,
    span: Option<TableSpan>,
    done: bool,
}

impl TableLocator {
    pub fn new(image_len: u64) -> Self {
        TableLocator {
            image_len,
            header: None,
            phdr_end: 0,
            span: None,
            done: false,
        }
    }

    /// The span, once found (none if the image has no usable table, or before the
    /// blocks that say so have been fed).
    pub fn span(&self) -> Option<TableSpan> {
        self.span
    }

    /// The start of the block holding the table header, when block 0 has named one that
    /// is not yet read: a caller with random access feeds that block next.
    pub fn header_block(&self) -> Option<u64> {
        match (self.done, self.header) {
            (false, Some((offset, _))) => Some(offset - offset % TRANSFORM_BLOCK),
            _ => None,
        }
    }

    /// Reads what it needs from the transform block at `block_start` (a multiple of
    /// [`TRANSFORM_BLOCK`]) holding `block`.
    pub fn observe(&mut self, block_start: u64, block: &[u8]) {
        if self.done {
            return;
        }
        if block_start == 0 && self.header.is_none() {
            match self.program_header(block) {
                Some(found) => self.header = Some(found),
                None => {
                    self.done = true;
                    return;
                }
            }
        }
        let Some((offset, segment_end)) = self.header else {
            return;
        };
        let block_end = block_start.saturating_add(block.len() as u64);
        if offset < block_start || offset + TABLE_HEADER_LEN > block_end {
            return;
        }
        self.done = true;
        let at = (offset - block_start) as usize;
        let header = &block[at..at + TABLE_HEADER_LEN as usize];
        let pointer_encoding = header[1] & 0x0f;
        if header[0] != 1
            || !matches!(pointer_encoding, 0x03 | 0x0b)
            || header[2] != UDATA4
            || header[3] != DATAREL_SDATA4
        {
            return;
        }
        let count = u64::from(u32::from_le_bytes([
            header[8], header[9], header[10], header[11],
        ]));
        let entries_start = offset + TABLE_HEADER_LEN;
        let limit = segment_end.min(self.image_len);
        let entries_end = entries_start.checked_add(count * ENTRY_LEN);
        if count >= 2 && entries_start >= self.phdr_end && entries_end.is_some_and(|e| e <= limit) {
            self.span = Some(TableSpan {
                entries_start,
                count,
            });
        }
    }

    /// From block 0: the `PT_GNU_EH_FRAME` segment's offset and end, if the image is a
    /// little-endian ELF64 file whose program headers lie in block 0 and whose table
    /// header lies within one block of the image.
    fn program_header(&mut self, block: &[u8]) -> Option<(u64, u64)> {
        let u16_at = |at: u64| -> Option<u64> {
            let at = usize::try_from(at).ok()?;
            let bytes = block.get(at..at.checked_add(2)?)?;
            Some(u64::from(u16::from_le_bytes([bytes[0], bytes[1]])))
        };
        let u32_at = |at: u64| -> Option<u32> {
            let at = usize::try_from(at).ok()?;
            let bytes = block.get(at..at.checked_add(4)?)?;
            Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        };
        let u64_at = |at: u64| -> Option<u64> {
            let at = usize::try_from(at).ok()?;
            let bytes = block.get(at..at.checked_add(8)?)?;
            let mut word = [0u8; 8];
            word.copy_from_slice(bytes);
            Some(u64::from_le_bytes(word))
        };
        if block.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let phoff = u64_at(0x20)?;
        if u16_at(0x36)? != PHDR_LEN {
            return None;
        }
        let phnum = u16_at(0x38)?;
        let phdr_end = phoff.checked_add(phnum * PHDR_LEN)?;
        if phoff < EHDR_LEN || phdr_end > block.len() as u64 {
            return None;
        }
        self.phdr_end = phdr_end;
        let eh = (0..phnum)
            .map(|k| phoff + k * PHDR_LEN)
            .find(|&at| u32_at(at) == Some(PT_GNU_EH_FRAME))?;
        let offset = u64_at(eh + 8)?;
        let end = offset.checked_add(u64_at(eh + 32)?)?;
        let header_end = offset.checked_add(TABLE_HEADER_LEN)?;
        let same_block = offset / TRANSFORM_BLOCK == (header_end - 1) / TRANSFORM_BLOCK;
        (same_block && header_end <= self.image_len).then_some((offset, end))
    }
}

/// Delta-codes (`inverse` false) or restores (`inverse` true) the entries of `span` that
/// lie, with their predecessor, wholly in the block at `start` holding `block`.
pub(super) fn table_block(span: TableSpan, start: u64, block: &mut [u8], inverse: bool) {
    let end = start + block.len() as u64;
    let entries_end = span.entries_start + span.count * ENTRY_LEN;
    // Entries whose predecessor starts at or after `start` and which end by `end`.
    let lo = (start + ENTRY_LEN).max(span.entries_start + ENTRY_LEN);
    let hi = end.min(entries_end);
    if lo >= hi {
        return;
    }
    let first = (lo - span.entries_start).div_ceil(ENTRY_LEN);
    let last = (hi - span.entries_start) / ENTRY_LEN; // exclusive
    if first >= last {
        return;
    }
    let word = |block: &[u8], at: usize| {
        u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]])
    };
    let step = |block: &mut [u8], index: u64| {
        let at = (span.entries_start + index * ENTRY_LEN - start) as usize;
        for column in [0usize, 4] {
            let previous = word(block, at - ENTRY_LEN as usize + column);
            let value = word(block, at + column);
            let out = if inverse {
                value.wrapping_add(previous)
            } else {
                value.wrapping_sub(previous)
            };
            block[at + column..at + column + 4].copy_from_slice(&out.to_le_bytes());
        }
    };
    if inverse {
        for index in first..last {
            step(block, index);
        }
    } else {
        for index in (first..last).rev() {
            step(block, index);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal ELF64 image of `len` bytes: two program headers (a load segment and
    /// `PT_GNU_EH_FRAME` at `table_at`) and a table of `entries` there.
    pub(crate) fn elf_with_table(len: usize, table_at: usize, entries: &[(i32, i32)]) -> Vec<u8> {
        let mut image = vec![0u8; len];
        image[..6].copy_from_slice(b"\x7fELF\x02\x01");
        image[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        image[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        image[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        image[64..68].copy_from_slice(&1u32.to_le_bytes());
        let eh = 64 + 56;
        image[eh..eh + 4].copy_from_slice(&PT_GNU_EH_FRAME.to_le_bytes());
        image[eh + 8..eh + 16].copy_from_slice(&(table_at as u64).to_le_bytes());
        let size = 12 + 8 * entries.len() as u64;
        image[eh + 32..eh + 40].copy_from_slice(&size.to_le_bytes());
        image[table_at..table_at + 4].copy_from_slice(&[1, 0x1b, UDATA4, DATAREL_SDATA4]);
        image[table_at + 8..table_at + 12].copy_from_slice(&(entries.len() as u32).to_le_bytes());
        for (k, (location, fde)) in entries.iter().enumerate() {
            let at = table_at + 12 + 8 * k;
            image[at..at + 4].copy_from_slice(&location.to_le_bytes());
            image[at + 4..at + 8].copy_from_slice(&fde.to_le_bytes());
        }
        image
    }

    fn locate(image: &[u8]) -> Option<TableSpan> {
        let mut locator = TableLocator::new(image.len() as u64);
        for (k, block) in image.chunks(TRANSFORM_BLOCK as usize).enumerate() {
            locator.observe(k as u64 * TRANSFORM_BLOCK, block);
        }
        locator.span()
    }

    #[test]
    fn the_table_is_found_from_the_program_headers() {
        let entries = [(-0x1000, 0x20), (-0x0f00, 0x48), (-0x0e80, 0x70)];
        let image = elf_with_table(200_000, 70_000, &entries);
        let span = TableSpan {
            entries_start: 70_012,
            count: 3,
        };
        assert_eq!(locate(&image), Some(span));
        // Random access: block 0, then the block it names.
        let mut locator = TableLocator::new(image.len() as u64);
        locator.observe(0, &image[..TRANSFORM_BLOCK as usize]);
        assert_eq!(locator.header_block(), Some(TRANSFORM_BLOCK));
        let second = TRANSFORM_BLOCK as usize..2 * TRANSFORM_BLOCK as usize;
        locator.observe(TRANSFORM_BLOCK, &image[second]);
        assert_eq!((locator.span(), locator.header_block()), (Some(span), None));
    }

    #[test]
    fn images_without_a_usable_table_have_no_span() {
        let entries = [(1, 2), (3, 4)];
        let good = elf_with_table(100_000, 5_000, &entries);
        assert!(locate(&good).is_some());
        type Edit = fn(&mut Vec<u8>);
        let cases: &[(&str, Edit)] = &[
            ("not ELF", |i| i[1] = b'X'),
            ("32-bit", |i| i[4] = 1),
            ("big-endian", |i| i[5] = 2),
            ("other phdr size", |i| i[0x36] = 32),
            ("phdrs past block 0", |i| {
                i[0x20..0x28].copy_from_slice(&70_000u64.to_le_bytes())
            }),
            ("no PT_GNU_EH_FRAME", |i| i[120] = 0),
            ("table version", |i| i[5_000] = 2),
            ("count encoding", |i| i[5_002] = 0x0b),
            ("table encoding", |i| i[5_003] = 0x1b),
            ("one entry", |i| i[5_008] = 1),
            ("entries past the segment", |i| i[5_008] = 200),
            ("entries past the image", |i| {
                i[5_008..5_012].copy_from_slice(&u32::MAX.to_le_bytes())
            }),
            ("table over the phdrs", |i| {
                i[128..136].copy_from_slice(&100u64.to_le_bytes())
            }),
        ];
        for (name, edit) in cases.iter() {
            let mut image = good.clone();
            edit(&mut image);
            assert_eq!(locate(&image), None, "{name}");
        }
        // A header straddling a block end.
        let straddling = elf_with_table(200_000, TRANSFORM_BLOCK as usize - 6, &entries);
        assert_eq!(locate(&straddling), None);
        assert_eq!(locate(&[]), None);
        assert_eq!(locate(b"\x7fELF\x02\x01"), None);
    }

    #[test]
    fn moved_functions_keep_their_differences() {
        // Old: functions of sizes 0x40, 0x80, 0x20; new: one of 0x10 inserted first, so
        // every later location moved. Delta-coded, all but the first two entries agree.
        let old = [(0x100, 0x10), (0x140, 0x30), (0x1c0, 0x50), (0x1e0, 0x70)];
        let new = [
            (0x100, 0x10),
            (0x110, 0x30),
            (0x150, 0x50),
            (0x1d0, 0x70),
            (0x1f0, 0x90),
        ];
        let transformed = |entries: &[(i32, i32)]| {
            let mut image = elf_with_table(10_000, 4_000, entries);
            let span = locate(&image).expect("span");
            table_block(span, 0, &mut image, false);
            image[4_012..4_012 + 8 * entries.len()].to_vec()
        };
        let (old_t, new_t) = (transformed(&old), transformed(&new));
        assert_eq!(old_t[8..], new_t[16..]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn each_block_is_a_bijection_and_blocks_are_independent(
            bytes in proptest::collection::vec(any::<u8>(), 1..3000),
            entries_start in 0u64..400,
            count in 0u64..500,
            cut in any::<proptest::sample::Index>(),
        ) {
            // A block boundary inside the bytes: transforming the two blocks one at a
            // time is transforming them together, and inverse undoes forward.
            let base = TRANSFORM_BLOCK - cut.index(bytes.len()) as u64;
            let span = TableSpan { entries_start: base.saturating_sub(200) + entries_start, count };
            let split = ((TRANSFORM_BLOCK - base) as usize).min(bytes.len());
            let mut head = bytes[..split].to_vec();
            let mut tail = bytes[split..].to_vec();
            table_block(span, base, &mut head, false);
            table_block(span, TRANSFORM_BLOCK, &mut tail, false);
            table_block(span, base, &mut head, true);
            table_block(span, TRANSFORM_BLOCK, &mut tail, true);
            head.extend_from_slice(&tail);
            prop_assert_eq!(head, bytes);
        }

        #[test]
        fn any_bytes_locate_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            len in 0u64..1 << 40,
        ) {
            let mut image = b"\x7fELF\x02\x01".to_vec();
            image.extend_from_slice(&bytes);
            let mut locator = TableLocator::new(len);
            locator.observe(0, &image);
            if let Some(block) = locator.header_block() {
                locator.observe(block, &image);
            }
            if let Some(span) = locator.span() {
                prop_assert!(span.entries_start + 8 * span.count <= len);
            }
        }
    }
}
