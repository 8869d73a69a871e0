//! Executable-aware transforms: relative branch and call operands rewritten to absolute
//! targets before matching, so the many call sites of one function carry the same bytes
//! in an image and a moved call site keeps its bytes across releases (the idea of xz's
//! BCJ filters). A transformed delta diffs `T(old)` against `T(new)`; the applier
//! produces `T(new)` and writes `inverse(T(new))`.
//!
//! The code transforms are **block-local** over fixed blocks of [`TRANSFORM_BLOCK`] bytes at
//! absolute image offsets `[k·B, min((k+1)·B, image length))`: nothing depends on bytes
//! outside a block, so the transformed bytes of any range of the old image come from
//! reading and transforming its containing blocks (the applier reads the source slot
//! by seeks), and the target is inverted one block at a time. Every block transform is a
//! bijection: `inverse(start, forward(start, x)) == x` for all bytes `x` and offsets.
//!
//! - [`Transform::X86_64`]: from the block start, a byte `0xE8` (`call rel32`) or `0xE9`
//!   (`jmp rel32`) whose four operand bytes lie in the block and whose last operand byte
//!   is `0x00` or `0xFF` (|rel| < 16 MiB) has its operand replaced by the absolute
//!   target `rel + offset + 5` modulo 2^25, stored sign-extended from bit 24 (so the last
//!   byte is again `0x00`/`0xFF`), and the scan resumes after the operand; any other byte
//!   advances the scan by one. An `E8`/`E9` left alone (its last operand byte is neither)
//!   forbids conversions at the next three positions, whose operands would overwrite
//!   that byte. The inverse scans the same way and subtracts: every byte a decision reads
//!   is one the transform leaves as it is or maps into the same class, so it converts
//!   exactly the same operands.
//! - [`Transform::Arm64`]: every 4-byte little-endian word at an offset that is a multiple
//!   of 4 (a short tail is left alone): `BL imm26` (top six bits `100101`) gets
//!   `imm26 + offset/4` modulo 2^26; `ADRP` (`word & 0x9F000000 == 0x90000000`) whose
//!   21-bit page immediate fits 18 signed bits (±512 MiB) gets `imm + offset/4096`
//!   modulo 2^18, stored sign-extended to 21 bits (xz's ARM64 filter does the same).
//!
//! - The unwind-table transforms ([`Transform::EhTable`], and with a code transform
//!   [`Transform::X86_64EhTable`], [`Transform::Arm64EhTable`]): see `eh_table`. They are
//!   block-local given the image's table span, which a `TableLocator` finds from the
//!   image's own bytes; [`Transform::forward_table`] runs the table part, then the code
//!   part; [`Transform::inverse_code`] and [`Transform::inverse_table`] undo them in the
//!   other order. [`Transform::forward`] / [`Transform::inverse`] are the code part only.
//!
//! All arithmetic wraps on 32-bit offsets, so images over 4 GiB transform too (with
//! targets folded modulo 2^32, which only costs compression, never correctness).

use super::eh_table::{table_block, TableSpan};
use super::DeltaError;

/// Size of the blocks transforms work on, at absolute offsets of the image (64 KiB).
pub const TRANSFORM_BLOCK: u64 = 64 << 10;

/// Which executable-aware transform a container's segments were diffed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transform {
    /// x86-64 (and x86) `call`/`jmp rel32` operands.
    X86_64,
    /// ARM64 `BL` and `ADRP` immediates.
    Arm64,
    /// The ELF unwind search table delta-coded (`eh_table`), alone.
    EhTable,
    /// The unwind table, then x86-64 operands.
    X86_64EhTable,
    /// The unwind table, then ARM64 immediates.
    Arm64EhTable,
}

impl Transform {
    /// Every transform, in wire-id order.
    pub const ALL: [Transform; 5] = [
        Transform::X86_64,
        Transform::Arm64,
        Transform::EhTable,
        Transform::X86_64EhTable,
        Transform::Arm64EhTable,
    ];

    /// Wire id of the transform (header byte 11 of an algorithm-3 container).
    pub fn id(self) -> u8 {
        match self {
            Transform::X86_64 => 1,
            Transform::Arm64 => 2,
            Transform::EhTable => 3,
            Transform::X86_64EhTable => 4,
            Transform::Arm64EhTable => 5,
        }
    }

    /// The transform with wire id `id`.
    pub fn from_id(id: u8) -> Result<Self, DeltaError> {
        match id {
            1 => Ok(Transform::X86_64),
            2 => Ok(Transform::Arm64),
            3 => Ok(Transform::EhTable),
            4 => Ok(Transform::X86_64EhTable),
            5 => Ok(Transform::Arm64EhTable),
            _ => Err(DeltaError::UnknownTransform { id }),
        }
    }

    /// Short stable name, for logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Transform::X86_64 => "x86-64",
            Transform::Arm64 => "arm64",
            Transform::EhTable => "eh-table",
            Transform::X86_64EhTable => "x86-64+eh-table",
            Transform::Arm64EhTable => "arm64+eh-table",
        }
    }

    /// The code transform part (x86-64 or ARM64 operands), if any.
    pub fn code(self) -> Option<Transform> {
        match self {
            Transform::X86_64 | Transform::X86_64EhTable => Some(Transform::X86_64),
            Transform::Arm64 | Transform::Arm64EhTable => Some(Transform::Arm64),
            Transform::EhTable => None,
        }
    }

    /// Whether the transform delta-codes the unwind table: its users locate the
    /// image's [`TableSpan`] with a [`TableLocator`](super::TableLocator) fed the image's
    /// own blocks, and pass it to [`Transform::forward_table`] /
    /// [`Transform::inverse_table`].
    pub fn uses_table(self) -> bool {
        matches!(
            self,
            Transform::EhTable | Transform::X86_64EhTable | Transform::Arm64EhTable
        )
    }

    /// This transform with the unwind table added (itself if it has it).
    pub fn with_table(self) -> Transform {
        match self {
            Transform::X86_64 | Transform::X86_64EhTable => Transform::X86_64EhTable,
            Transform::Arm64 | Transform::Arm64EhTable => Transform::Arm64EhTable,
            Transform::EhTable => Transform::EhTable,
        }
    }

    /// The whole transform over blocks from `start`: the table part over `span` (the
    /// image's table, located as [`Transform::uses_table`] says; none: no table part),
    /// then the code part.
    pub fn forward_table(self, span: Option<TableSpan>, start: u64, bytes: &mut [u8]) {
        if let (true, Some(span)) = (self.uses_table(), span) {
            table_blocks(span, start, bytes, false);
        }
        self.blocks(start, bytes, Direction::Forward);
    }

    /// The first half of undoing [`Transform::forward_table`]: the code part. After it
    /// the bytes a [`TableLocator`](super::TableLocator) reads are the image's own.
    pub fn inverse_code(self, start: u64, bytes: &mut [u8]) {
        self.blocks(start, bytes, Direction::Inverse);
    }

    /// The second half: the table part over `span`.
    pub fn inverse_table(self, span: Option<TableSpan>, start: u64, bytes: &mut [u8]) {
        if let (true, Some(span)) = (self.uses_table(), span) {
            table_blocks(span, start, bytes, true);
        }
    }

    /// Transforms `bytes`, the whole blocks (or the image's final short block) starting
    /// at absolute offset `start`: the code part only (for a transform that
    /// [uses the table](Transform::uses_table), [`Transform::forward_table`] is the whole). A block boundary falls on every multiple of
    /// [`TRANSFORM_BLOCK`]; `bytes` must start on one and end on one or at the image end
    /// for the result to be the image's transformed bytes.
    pub fn forward(self, start: u64, bytes: &mut [u8]) {
        self.blocks(start, bytes, Direction::Forward);
    }

    /// Undoes [`Transform::forward`] over the same blocks.
    pub fn inverse(self, start: u64, bytes: &mut [u8]) {
        self.blocks(start, bytes, Direction::Inverse);
    }

    fn blocks(self, start: u64, bytes: &mut [u8], direction: Direction) {
        let mut at = start;
        let mut rest = bytes;
        while !rest.is_empty() {
            let to_boundary = TRANSFORM_BLOCK - at % TRANSFORM_BLOCK;
            let n = (rest.len() as u64).min(to_boundary) as usize;
            let (block, tail) = rest.split_at_mut(n);
            match self {
                Transform::X86_64 => x86_block(at, block, direction),
                Transform::Arm64 => arm64_block(at, block, direction),
                // The code part of a table transform (its table part is `table_blocks`).
                Transform::EhTable | Transform::X86_64EhTable | Transform::Arm64EhTable => {
                    if let Some(code) = self.code() {
                        code.blocks(at, block, direction);
                    }
                }
            }
            at += n as u64;
            rest = tail;
        }
    }
}

/// [`table_block`] over every transform block of `bytes`, which start at `start`.
fn table_blocks(span: TableSpan, start: u64, bytes: &mut [u8], inverse: bool) {
    let mut at = start;
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = (rest.len() as u64).min(TRANSFORM_BLOCK - at % TRANSFORM_BLOCK) as usize;
        let (block, tail) = rest.split_at_mut(n);
        table_block(span, at, block, inverse);
        at += n as u64;
        rest = tail;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Forward,
    Inverse,
}

fn x86_block(start: u64, block: &mut [u8], direction: Direction) {
    const MASK: u32 = (1 << 25) - 1;
    let mut i = 0usize;
    // No operand is converted at a position before this: an opcode byte left alone
    // because of its last operand byte keeps that byte out of every later operand, so
    // the inverse, reading transformed bytes, takes the same decision there.
    let mut convertible_from = 0usize;
    while i + 5 <= block.len() {
        if !matches!(block[i], 0xE8 | 0xE9) {
            i += 1;
            continue;
        }
        if i < convertible_from || !matches!(block[i + 4], 0x00 | 0xFF) {
            convertible_from = i + 4;
            i += 1;
            continue;
        }
        let operand = u32::from_le_bytes([block[i + 1], block[i + 2], block[i + 3], block[i + 4]]);
        let next = (start as u32).wrapping_add(i as u32).wrapping_add(5);
        let value = match direction {
            Direction::Forward => operand.wrapping_add(next),
            Direction::Inverse => operand.wrapping_sub(next),
        } & MASK;
        // Sign-extend from bit 24: the top byte becomes 0x00 or 0xFF again.
        let value = ((value << 7) as i32 >> 7) as u32;
        block[i + 1..i + 5].copy_from_slice(&value.to_le_bytes());
        i += 5;
    }
}

fn arm64_block(start: u64, block: &mut [u8], direction: Direction) {
    let mut i = 0usize;
    // Words sit at offsets that are multiples of 4; blocks start on such offsets.
    while i + 4 <= block.len() {
        let at = (start as u32).wrapping_add(i as u32);
        let word = u32::from_le_bytes([block[i], block[i + 1], block[i + 2], block[i + 3]]);
        let apply = |value: u32, shift: u32| match direction {
            Direction::Forward => value.wrapping_add(at >> shift),
            Direction::Inverse => value.wrapping_sub(at >> shift),
        };
        let rewritten = if word >> 26 == 0x25 {
            // BL imm26
            Some(0x9400_0000 | (apply(word, 2) & 0x03FF_FFFF))
        } else if word & 0x9F00_0000 == 0x9000_0000 {
            // ADRP: immlo in bits 29–30, immhi in bits 5–23.
            let imm = ((word >> 29) & 3) | ((word >> 3) & 0x001F_FFFC);
            // Only pages within ±512 MiB (18 signed bits); the result stays in range.
            if imm.wrapping_add(0x0002_0000) & 0x001C_0000 != 0 {
                None
            } else {
                let dest = apply(imm, 12);
                let mut out = word & 0x9000_001F;
                out |= (dest & 3) << 29;
                out |= (dest & 0x0003_FFFC) << 3;
                out |= 0u32.wrapping_sub(dest & 0x0002_0000) & 0x00E0_0000;
                Some(out)
            }
        } else {
            None
        };
        if let Some(out) = rewritten {
            block[i..i + 4].copy_from_slice(&out.to_le_bytes());
        }
        i += 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn transforms_have_stable_wire_ids_and_names() {
        for (transform, id, name) in [
            (Transform::X86_64, 1, "x86-64"),
            (Transform::Arm64, 2, "arm64"),
            (Transform::EhTable, 3, "eh-table"),
            (Transform::X86_64EhTable, 4, "x86-64+eh-table"),
            (Transform::Arm64EhTable, 5, "arm64+eh-table"),
        ] {
            assert_eq!((transform.id(), transform.name()), (id, name));
            assert_eq!(Transform::from_id(id), Ok(transform));
        }
        for id in [0u8, 6, 0xFF] {
            assert_eq!(
                Transform::from_id(id),
                Err(DeltaError::UnknownTransform { id })
            );
        }
    }

    #[test]
    fn x86_call_operands_become_absolute_targets() {
        // Two calls to the same target 0x1000 from different offsets carry the same
        // operand after the transform.
        let mut code = vec![0x90u8; 64];
        let calls = [(0x10usize, 0x1000u32), (0x30usize, 0x1000u32)];
        for (at, target) in calls {
            let rel = target.wrapping_sub(at as u32 + 5);
            code[at] = 0xE8;
            code[at + 1..at + 5].copy_from_slice(&rel.to_le_bytes());
        }
        let original = code.clone();
        Transform::X86_64.forward(0, &mut code);
        for (at, target) in calls {
            assert_eq!(
                &code[at + 1..at + 5],
                &target.to_le_bytes(),
                "call at {at:#x}"
            );
        }
        // A backward call (negative rel) to 0x8 from offset 0x20 of a block at 64 KiB.
        let mut back = vec![0x90u8; 64];
        let rel = 0x8u32.wrapping_sub(0x1_0000 + 0x20 + 5);
        back[0x20] = 0xE8;
        back[0x21..0x25].copy_from_slice(&rel.to_le_bytes());
        Transform::X86_64.forward(0x1_0000, &mut back);
        assert_eq!(&back[0x21..0x25], &8u32.to_le_bytes());
        Transform::X86_64.inverse(0, &mut code);
        assert_eq!(code, original);
    }

    #[test]
    fn x86_operands_never_cross_a_block_end() {
        let mut bytes = vec![0u8; TRANSFORM_BLOCK as usize + 8];
        let at = TRANSFORM_BLOCK as usize - 3;
        bytes[at] = 0xE8;
        let original = bytes.clone();
        Transform::X86_64.forward(0, &mut bytes);
        assert_eq!(
            bytes, original,
            "an operand straddling a block end must stay"
        );
    }

    #[test]
    fn arm64_bl_and_adrp_become_absolute() {
        // BL to word 0x400 from offset 0x100 and from offset 0x200.
        let bl = |at: u32, target: u32| 0x9400_0000 | (((target - at) / 4) & 0x03FF_FFFF);
        let mut code = vec![0u8; 0x300];
        code[0x100..0x104].copy_from_slice(&bl(0x100, 0x1000).to_le_bytes());
        code[0x200..0x204].copy_from_slice(&bl(0x200, 0x1000).to_le_bytes());
        // ADRP x0, +1 page at offset 0x1000 → absolute page 2 once transformed at 0x1000.
        let adrp_one_page = 0x9000_0000u32 | (1 << 29);
        let mut page = vec![0u8; 4];
        page.copy_from_slice(&adrp_one_page.to_le_bytes());
        let original = code.clone();
        Transform::Arm64.forward(0, &mut code);
        assert_eq!(
            code[0x100..0x104],
            code[0x200..0x204],
            "same target, same bytes"
        );
        assert_eq!(
            u32::from_le_bytes(code[0x100..0x104].try_into().unwrap_or_default()),
            0x9400_0000 | (0x1000 / 4)
        );
        Transform::Arm64.inverse(0, &mut code);
        assert_eq!(code, original);
        Transform::Arm64.forward(0x1000, &mut page);
        assert_eq!(
            u32::from_le_bytes([page[0], page[1], page[2], page[3]]),
            0x9000_0000 | (2 << 29)
        );
    }

    fn block_aligned_start() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            (0u64..1 << 20).prop_map(|k| k * TRANSFORM_BLOCK),
            Just((u64::from(u32::MAX) / TRANSFORM_BLOCK) * TRANSFORM_BLOCK),
        ]
    }

    /// Bytes dense in the patterns each transform rewrites, so the properties exercise
    /// conversions (and overlapping candidates), not only untouched bytes.
    fn code_like_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                3 => any::<u8>(),
                1 => Just(0xE8u8),
                1 => Just(0xE9u8),
                1 => Just(0x00u8),
                1 => Just(0xFFu8),
                1 => Just(0x94u8),
                1 => Just(0x97u8),
                1 => Just(0x90u8),
                1 => Just(0xB0u8),
            ],
            0..3000,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn inverse_undoes_forward_for_any_bytes_and_offset(
            bytes in prop_oneof![code_like_bytes(), proptest::collection::vec(any::<u8>(), 0..3000)],
            start in prop_oneof![block_aligned_start(), any::<u64>()],
            which in 0usize..5,
        ) {
            let transform = Transform::ALL[which];
            let mut work = bytes.clone();
            transform.forward(start, &mut work);
            transform.inverse(start, &mut work);
            prop_assert_eq!(&work, &bytes);
            // And the other way round: forward is onto, inverse is injective.
            transform.inverse(start, &mut work);
            transform.forward(start, &mut work);
            prop_assert_eq!(&work, &bytes);
        }

        #[test]
        fn any_range_is_transformed_by_its_containing_blocks(
            bytes in code_like_bytes(),
            cut in any::<proptest::sample::Index>(),
            which in 0usize..5,
        ) {
            // Small blocks are not available, so check the block-locality the applier
            // relies on with a 64 KiB boundary inside the range: transforming two
            // pieces split at the boundary equals transforming the whole.
            let transform = Transform::ALL[which];
            let start = TRANSFORM_BLOCK - cut.index(bytes.len().max(1)) as u64;
            let mut whole = bytes.clone();
            transform.forward(start, &mut whole);
            let split = ((TRANSFORM_BLOCK - start) as usize).min(bytes.len());
            let (mut head, mut tail) = (bytes[..split].to_vec(), bytes[split..].to_vec());
            transform.forward(start, &mut head);
            transform.forward(TRANSFORM_BLOCK, &mut tail);
            head.extend_from_slice(&tail);
            prop_assert_eq!(head, whole);
        }
    }
}
