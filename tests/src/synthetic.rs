//! Deterministic, firmware-like image pairs.
//!
//! Random bytes are a poor stand-in for real images: they neither compress nor diff
//! like code. These images mix what real ones hold (machine-code-like words with
//! embedded absolute addresses, string tables, zero padding, already-compressed blobs),
//! and a "new release" applies what a rebuild does: inserted and deleted code, moved
//! blocks, addresses shifted by the insertions, and scattered byte edits. Seeds are
//! passed in, so every run sees the same bytes.

/// A small xorshift generator: deterministic and dependency-free.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

const WORDS: &[&str] = &[
    "brake",
    "torque",
    "vehicle",
    "sensor",
    "calibration",
    "error",
    "timeout",
    "battery",
    "charge",
    "firmware",
    "module",
    "config",
    "diagnostic",
    "controller",
    "signal",
    "frame",
];

/// Appends about `len` bytes of one kind of content.
fn block(rng: &mut Rng, out: &mut Vec<u8>, len: usize) {
    let end = out.len() + len;
    match rng.below(10) {
        // Code: opcode-ish words, a third of them absolute addresses in one region.
        0..=5 => {
            while out.len() < end {
                if rng.below(3) == 0 {
                    let address = 0x0040_0000u32 + (rng.below(0x0010_0000) as u32 & !3);
                    out.extend_from_slice(&address.to_le_bytes());
                } else {
                    let opcode =
                        [0x48, 0x89, 0x8b, 0xe8, 0x0f, 0xc3, 0x55, 0x5d][rng.below(8) as usize];
                    out.extend_from_slice(&[opcode, rng.below(16) as u8, rng.below(4) as u8, 0]);
                }
            }
        }
        // String table.
        6 | 7 => {
            while out.len() < end {
                out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
                out.push(if rng.below(4) == 0 { 0 } else { b' ' });
            }
        }
        // Padding.
        8 => out.resize(end, 0),
        // Already-compressed data: incompressible.
        _ => {
            while out.len() < end {
                out.extend_from_slice(&rng.next_u64().to_le_bytes());
            }
        }
    }
    out.truncate(end);
}

/// A firmware-like image of exactly `len` bytes.
pub fn image(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let size = 256 + rng.below(64 << 10) as usize;
        let size = size.min(len - out.len());
        block(&mut rng, &mut out, size);
    }
    out
}

/// The "next release" of `old`: about `edits` edits of the kinds a rebuild makes.
pub fn next_release(old: &[u8], seed: u64, edits: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut new = old.to_vec();
    for _ in 0..edits {
        if new.is_empty() {
            block(&mut rng, &mut new, 1024);
            continue;
        }
        let at = rng.below(new.len() as u64) as usize;
        match rng.below(5) {
            0 => {
                let mut inserted = Vec::new();
                let len = 16 + rng.below(16 << 10) as usize;
                block(&mut rng, &mut inserted, len);
                new.splice(at..at, inserted);
            }
            1 => {
                let len = (1 + rng.below(8 << 10) as usize).min(new.len() - at);
                new.drain(at..at + len);
            }
            2 => {
                // Addresses after an insertion point move: shift every address-like
                // word in a stretch of the image.
                let shift = 4 * (1 + rng.below(256) as u32);
                let end = (at + (256 << 10)).min(new.len());
                let mut i = at - at % 4;
                while i + 4 <= end {
                    let word = u32::from_le_bytes([new[i], new[i + 1], new[i + 2], new[i + 3]]);
                    if (0x0040_0000..0x0050_0000).contains(&word) {
                        new[i..i + 4].copy_from_slice(&(word + shift).to_le_bytes());
                    }
                    i += 4;
                }
            }
            3 => {
                let len = (1 + rng.below(64 << 10) as usize).min(new.len() - at);
                let moved: Vec<u8> = new.drain(at..at + len).collect();
                let to = rng.below(new.len() as u64 + 1) as usize;
                new.splice(to..to, moved);
            }
            _ => {
                for _ in 0..8 {
                    let i = rng.below(new.len() as u64) as usize;
                    new[i] ^= 1 + rng.below(255) as u8;
                }
            }
        }
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_deterministic_and_releases_differ() {
        assert_eq!(
            image(7, 100_000),
            image(7, 100_000),
            "same seed must give the same image"
        );
        assert_eq!(image(7, 100_000).len(), 100_000);
        let old = image(7, 100_000);
        assert_ne!(
            next_release(&old, 1, 10),
            old,
            "a release with edits must differ"
        );
    }
}

/// Which instruction set [`code_release_pair`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeKind {
    /// x86-64: filler bytes and `call rel32` (`E8`).
    X86_64,
    /// ARM64: filler words and `BL imm26`, functions ending in `RET`.
    Arm64,
}

/// An old/new pair of machine-code-like images of about `len` bytes, for the
/// executable-aware transforms: a library of functions in the first half stays where it
/// is, and the callers in the second half (a call every few instructions into the
/// library) move by `shift` bytes of inserted code, so every relative call operand of the
/// moved callers changes while the absolute targets do not. `shift` is rounded to a
/// multiple of 4.
pub fn code_release_pair(
    kind: CodeKind,
    seed: u64,
    len: usize,
    shift: usize,
) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let shift = shift - shift % 4;
    let library_len = (len / 2) - (len / 2) % 4;
    let function_len = 64usize;
    let functions = (library_len / function_len).max(1);
    let mut library = Vec::with_capacity(library_len);
    while library.len() < library_len {
        let at_function_end = library.len() % function_len == function_len - 4;
        filler(kind, &mut rng, &mut library, at_function_end);
    }
    library.truncate(library_len);
    let mut inserted = Vec::new();
    while inserted.len() < shift {
        filler(kind, &mut rng, &mut inserted, false);
    }
    inserted.truncate(shift);
    // The callers, as (call target, filler) steps, placed at two different offsets.
    let callers_len = len - library_len;
    let steps: Vec<(usize, Vec<u8>)> = {
        let mut steps = Vec::new();
        let mut total = 0;
        while total < callers_len {
            let target = function_len * rng.below(functions as u64) as usize;
            let mut fill = Vec::new();
            for _ in 0..rng.below(3) {
                filler(kind, &mut rng, &mut fill, false);
            }
            total += fill.len() + if kind == CodeKind::X86_64 { 5 } else { 4 };
            steps.push((target, fill));
        }
        steps
    };
    let place = |base: usize| {
        let mut out = Vec::new();
        for (target, fill) in &steps {
            out.extend_from_slice(fill);
            let at = base + out.len();
            match kind {
                CodeKind::X86_64 => {
                    let rel = (*target as u32).wrapping_sub(at as u32 + 5);
                    out.push(0xE8);
                    out.extend_from_slice(&rel.to_le_bytes());
                }
                CodeKind::Arm64 => {
                    let imm = ((*target as u32).wrapping_sub(at as u32) >> 2) & 0x03FF_FFFF;
                    out.extend_from_slice(&(0x9400_0000 | imm).to_le_bytes());
                }
            }
        }
        out
    };
    let mut old = library.clone();
    old.extend(place(library_len));
    let mut new = library;
    new.extend_from_slice(&inserted);
    new.extend(place(library_len + shift));
    (old, new)
}

/// One filler instruction that neither transform rewrites (ARM64: a `RET` when
/// `function_end`).
fn filler(kind: CodeKind, rng: &mut Rng, out: &mut Vec<u8>, function_end: bool) {
    match kind {
        CodeKind::X86_64 => {
            for _ in 0..1 + rng.below(4) {
                out.push(0x40 + rng.below(0x50) as u8);
            }
        }
        CodeKind::Arm64 => {
            let word = if function_end {
                0xD65F_03C0
            } else {
                0xF940_0000 | (rng.next_u64() as u32 & 0x003F_FFFF)
            };
            out.extend_from_slice(&word.to_le_bytes());
        }
    }
}
