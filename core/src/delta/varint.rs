//! LEB128 varints, the integer encoding of control and run blocks.

use super::DeltaError;

pub(super) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads varints from a block, naming the block in its errors.
pub(super) struct VarintReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    block: &'static str,
}

impl<'a> VarintReader<'a> {
    pub(super) fn new(bytes: &'a [u8], block: &'static str) -> Self {
        VarintReader {
            bytes,
            pos: 0,
            block,
        }
    }

    pub(super) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(super) fn malformed(&self, reason: &'static str) -> DeltaError {
        DeltaError::Malformed {
            block: self.block,
            reason,
        }
    }

    pub(super) fn next(&mut self) -> Result<u64, DeltaError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.bytes.get(self.pos) else {
                return Err(self.malformed("varint runs past the end of the block"));
            };
            self.pos += 1;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.malformed("varint overflows 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.malformed("varint longer than ten bytes"))
    }

    pub(super) fn next_u32(&mut self) -> Result<u32, DeltaError> {
        let value = self.next()?;
        u32::try_from(value).map_err(|_| self.malformed("length does not fit 32 bits"))
    }
}
