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

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, value);
        out
    }

    fn reason(result: Result<u64, DeltaError>) -> &'static str {
        match result {
            Err(DeltaError::Malformed {
                block: "test block",
                reason,
            }) => reason,
            other => panic!("expected a malformed-varint error naming the block, got {other:?}"),
        }
    }

    #[test]
    fn varints_are_leb128_seven_bits_a_byte_low_group_first() {
        let table: &[(u64, &[u8])] = &[
            (0, &[0x00]),
            (1, &[0x01]),
            (0x7f, &[0x7f]),
            (0x80, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (0x3fff, &[0xff, 0x7f]),
            (0x4000, &[0x80, 0x80, 0x01]),
            (u64::from(u32::MAX), &[0xff, 0xff, 0xff, 0xff, 0x0f]),
            (
                1 << 63,
                &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
            ),
            (
                u64::MAX,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ];
        for &(value, wire) in table {
            assert_eq!(encoded(value), wire, "encoding of {value:#x}");
            let mut reader = VarintReader::new(wire, "test block");
            assert_eq!(reader.remaining(), wire.len());
            assert_eq!(reader.next(), Ok(value), "decoding of {wire:02x?}");
            assert_eq!(
                reader.remaining(),
                0,
                "{wire:02x?} is read to its last byte"
            );
        }
    }

    #[test]
    fn the_reader_counts_down_the_bytes_left_after_each_varint() {
        let mut block = encoded(5);
        block.extend(encoded(300));
        block.extend(encoded(1 << 20));
        let mut reader = VarintReader::new(&block, "test block");
        for (value, left) in [(5, 5), (300, 3), (1 << 20, 0)] {
            assert_eq!(reader.next(), Ok(value));
            assert_eq!(reader.remaining(), left, "bytes left after {value}");
        }
        assert_eq!(
            reason(reader.next()),
            "varint runs past the end of the block"
        );
    }

    #[test]
    fn varints_past_64_bits_or_ten_bytes_or_the_block_end_are_refused() {
        // The tenth byte carries only bit 63: 2 there overflows.
        let mut overflow = vec![0xff; 9];
        overflow.push(0x02);
        assert_eq!(
            reason(VarintReader::new(&overflow, "test block").next()),
            "varint overflows 64 bits"
        );
        // A continuation bit in the tenth byte asks for an eleventh.
        let mut eleven = vec![0x80; 9];
        eleven.extend([0x81, 0x00]);
        assert_eq!(
            reason(VarintReader::new(&eleven, "test block").next()),
            "varint longer than ten bytes"
        );
        assert_eq!(
            reason(VarintReader::new(&[0x80, 0x80], "test block").next()),
            "varint runs past the end of the block"
        );
    }

    #[test]
    fn a_length_varint_must_fit_32_bits() {
        let mut block = encoded(u64::from(u32::MAX));
        block.extend(encoded(1 << 32));
        let mut reader = VarintReader::new(&block, "test block");
        assert_eq!(reader.next_u32(), Ok(u32::MAX));
        assert_eq!(
            reader.next_u32(),
            Err(DeltaError::Malformed {
                block: "test block",
                reason: "length does not fit 32 bits"
            })
        );
    }
}
