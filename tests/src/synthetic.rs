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
