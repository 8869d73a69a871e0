//! Which executable-aware transform is worth trying on an image, decided cheaply from a
//! few samples of the new image, so non-executables pay nothing.
//!
//! An ELF header names its machine outright. Anything else (a kernel `Image`, a
//! filesystem or tar image holding executables) is judged by instruction patterns in up
//! to [`SAMPLES`] evenly spaced samples of [`SAMPLE_LEN`] bytes:
//! - ARM64: aligned words that are `RET`, `NOP`, `PACIASP`/`BTI` hints or a frame-setup
//!   `STP x29, x30, [sp, #imm]!`; each is one fixed 32-bit pattern (or one with a 7-bit
//!   field), about 2^-25 likely in random bytes and hundreds per MiB in code.
//! - x86-64: the `E8`/`E9` operands the transform rewrites (`E8 ?? ?? ?? 00|FF`), about
//!   60 per MiB in random bytes and thousands per MiB in code.
//!
//! The builder's `Auto` choice acts on ARM64 only (see `builder::AUTO_TRANSFORMS`).
//! The thresholds were set on the `tune` half of `tests/delta-corpus` (see
//! `docs/delta-bench.txt`); the builder still tries with and without the transform and
//! keeps the smaller, so a wrong guess costs build time, never patch size.

use super::image::ImageSource;
use ota_core::delta::Transform;
use std::io;

/// Bytes per sample.
pub const SAMPLE_LEN: u64 = 64 << 10;
/// Most samples read from an image.
pub const SAMPLES: u64 = 32;
/// ARM64 marker words per MiB at or above which ARM64 code is assumed.
const ARM64_MARKERS_PER_MIB: u64 = 64;
/// x86 `call`/`jmp rel32` candidates per MiB at or above which x86 code is assumed.
const X86_CANDIDATES_PER_MIB: u64 = 1500;

const ELF_MACHINE_X86: u16 = 3;
const ELF_MACHINE_X86_64: u16 = 62;
const ELF_MACHINE_AARCH64: u16 = 183;

/// Instruction-pattern counts over some bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodeScore {
    pub bytes: u64,
    pub arm64_markers: u64,
    pub x86_candidates: u64,
}

impl CodeScore {
    /// Counts the patterns in `bytes` (ARM64 words at offsets that are multiples of 4
    /// from the start of `bytes`).
    pub fn of(bytes: &[u8]) -> CodeScore {
        let mut score = CodeScore {
            bytes: bytes.len() as u64,
            ..CodeScore::default()
        };
        for word in bytes.chunks_exact(4) {
            let word = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            let marker = matches!(word, 0xD65F_03C0 | 0xD503_201F | 0xD503_233F | 0xD503_245F)
                || word & 0xFFC0_7FFF == 0xA980_7BFD;
            score.arm64_markers += u64::from(marker);
        }
        for window in bytes.windows(5) {
            let candidate = matches!(window[0], 0xE8 | 0xE9) && matches!(window[4], 0x00 | 0xFF);
            score.x86_candidates += u64::from(candidate);
        }
        score
    }

    fn add(&mut self, other: CodeScore) {
        self.bytes += other.bytes;
        self.arm64_markers += other.arm64_markers;
        self.x86_candidates += other.x86_candidates;
    }

    /// The transform these counts call for, if any (ARM64 first: its markers are far
    /// rarer by chance).
    pub fn transform(&self) -> Option<Transform> {
        if self.bytes == 0 {
            return None;
        }
        let per_mib = |count: u64| count * (1 << 20) / self.bytes;
        if per_mib(self.arm64_markers) >= ARM64_MARKERS_PER_MIB {
            Some(Transform::Arm64)
        } else if per_mib(self.x86_candidates) >= X86_CANDIDATES_PER_MIB {
            Some(Transform::X86_64)
        } else {
            None
        }
    }
}

/// The transform an ELF header names, if `head` starts with one: `Some(None)` for an
/// ELF of another machine, `None` when `head` is no ELF.
pub fn elf_transform(head: &[u8]) -> Option<Option<Transform>> {
    if head.len() < 20 || head[..4] != *b"\x7fELF" {
        return None;
    }
    let machine = match head[5] {
        // EI_DATA: 1 little-endian, 2 big-endian.
        1 => u16::from_le_bytes([head[18], head[19]]),
        2 => u16::from_be_bytes([head[18], head[19]]),
        _ => return Some(None),
    };
    Some(match machine {
        ELF_MACHINE_X86 | ELF_MACHINE_X86_64 => Some(Transform::X86_64),
        ELF_MACHINE_AARCH64 => Some(Transform::Arm64),
        _ => None,
    })
}

/// The transform worth trying on `image`, from its ELF header or from samples.
pub fn detect_transform(image: &(impl ImageSource + ?Sized)) -> io::Result<Option<Transform>> {
    let len = image.len();
    let head = image.read_range(0..len.min(64))?;
    if let Some(named) = elf_transform(&head) {
        return Ok(named);
    }
    let mut score = CodeScore::default();
    let samples = len.div_ceil(SAMPLE_LEN).min(SAMPLES);
    for k in 0..samples {
        // Evenly spaced, starting on multiples of 4 so ARM64 words stay aligned.
        let start = ((len - len.min(SAMPLE_LEN)) / samples.max(1) * k) & !3;
        let end = (start + SAMPLE_LEN).min(len);
        score.add(CodeScore::of(&image.read_range(start..end)?));
    }
    Ok(score.transform())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_headers_name_their_machine() {
        let elf = |machine: u16| {
            let mut head = vec![0u8; 64];
            head[..4].copy_from_slice(b"\x7fELF");
            head[5] = 1;
            head[18..20].copy_from_slice(&machine.to_le_bytes());
            head
        };
        assert_eq!(elf_transform(&elf(62)), Some(Some(Transform::X86_64)));
        assert_eq!(elf_transform(&elf(183)), Some(Some(Transform::Arm64)));
        assert_eq!(
            elf_transform(&elf(40)),
            Some(None),
            "32-bit ARM: no transform"
        );
        assert_eq!(elf_transform(b"not an elf file at all, just text"), None);
        assert_eq!(
            elf_transform(b"\x7fELF"),
            None,
            "too short to hold e_machine"
        );
    }

    #[test]
    fn code_patterns_select_the_transform_and_data_selects_none() {
        let arm64: Vec<u8> = std::iter::repeat_n([0x1F, 0x20, 0x03, 0xD5, 0, 0, 0, 0x94], 4096)
            .flatten()
            .collect();
        assert_eq!(CodeScore::of(&arm64).transform(), Some(Transform::Arm64));
        let x86: Vec<u8> =
            std::iter::repeat_n([0x48, 0x89, 0xE8, 0x10, 0x20, 0x00, 0x00, 0xC3], 4096)
                .flatten()
                .collect();
        assert_eq!(CodeScore::of(&x86).transform(), Some(Transform::X86_64));
        let text = b"plain configuration text, no code in here\n".repeat(1000);
        assert_eq!(CodeScore::of(&text).transform(), None);
        assert_eq!(CodeScore::of(&[]).transform(), None);
        let zeros = vec![0u8; 1 << 20];
        assert_eq!(CodeScore::of(&zeros).transform(), None);
    }
}
