//! Delta container format: what the server's builder writes and the agent's applier reads.
//!
//! Both sides must agree on these bytes exactly, so the format lives here, next to its
//! strict parser. The byte-level description is in `docs/DELTA-FORMAT.md`.
//!
//! Layout:
//! - `header`: the container header (magic, version, algorithm, source and target length,
//!   and in version 1 their SHA-256: 92 bytes; version 2 leaves the digests to the signed
//!   metadata: 28 bytes).
//! - `segment`: the 56-byte header in front of every body segment of a bsdiff-zstd delta.
//! - `one_stream`: the short header of a one-stream body (algorithm 5), a small delta's
//!   streams as one LZMA2 stream instead of segments.
//! - `control`: the columnar control block of a segment and its bounds-checked decoding.
//! - `runs`: the diff stream as zero runs + non-zero bytes.
//! - `transform`: the executable-aware block transforms (x86-64, ARM64) a transformed
//!   bsdiff-zstd container is diffed under.
//! - `varint`: LEB128 integers of the control and runs blocks.
//!
//! Nothing here does IO: the applier feeds bytes in and gets typed decisions back. Every
//! length read from the wire is checked against a cap *before* it can size an allocation,
//! because a container may come from a hostile or corrupted download.

mod control;
mod eh_table;
mod header;
mod one_stream;
mod runs;
mod segment;
mod transform;
mod varint;

pub use control::{add_old_bytes, encode_control_block, Control, ControlBlock, PlannedControl};
pub use eh_table::{TableLocator, TableSpan};
pub use header::{
    Algorithm, ContainerHeader, ImageDigests, KnownDigests, HEADER_LEN, HEADER_LEN_DETACHED,
    HEADER_PREFIX_LEN, MAGIC, MAX_IMAGE_LEN, VERSION, VERSION_DETACHED,
};
pub use one_stream::{OneStreamHeader, ONE_STREAM_HEADER_MAX};
pub use runs::{encode_run_pairs, encode_runs, RunBlock, RunCoding, RunPairs};
pub use segment::{
    lzma2_bound, zstd_compress_bound, ControlCoding, DiffCoding, ExtraCoding, SegmentHeader,
    EXTRA_PREFIX_MAX, LZMA_DICT_MAX, SEGMENT_HEADER_LEN, SEGMENT_MAX_CONTROL, SEGMENT_MAX_RUNS,
    SEGMENT_MAX_TARGET, SEGMENT_TAG, SEGMENT_TAGS,
};
pub use transform::{Transform, TRANSFORM_BLOCK};

/// Why a container, a segment or a control block was refused.
///
/// Every variant is a decision the applier can act on without parsing a message: a
/// corrupt or hostile delta is rejected with one of these, never with a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("truncated {what}: need {needed} bytes, have {available}")]
    Truncated {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("bad magic {found:02x?}: not an OTA delta container")]
    BadMagic { found: [u8; 8] },
    #[error("unsupported container format version {version} (this build reads {VERSION} and {VERSION_DETACHED})")]
    UnsupportedVersion { version: u16 },
    #[error("unknown delta algorithm id {id}")]
    UnknownAlgorithm { id: u8 },
    #[error("unknown executable transform id {id}")]
    UnknownTransform { id: u8 },
    #[error("reserved header byte is {value:#04x}, must be zero")]
    ReservedNonZero { value: u8 },
    #[error("{field} is {value}, over the cap of {cap}")]
    LengthOverCap {
        field: &'static str,
        value: u64,
        cap: u64,
    },
    #[error("a full-image container must not declare a source image")]
    FullImageWithSource,
    #[error("the container's {image} SHA-256 {container} is not the expected {known}")]
    DigestMismatch {
        image: &'static str,
        container: String,
        known: String,
    },
    #[error("the container does not carry the {image} SHA-256 (detached digests, format version 2) and it was not given: pass it from the signed metadata")]
    DigestNotKnown { image: &'static str },
    #[error("bad segment tag {found:02x?}")]
    BadSegmentTag { found: [u8; 4] },
    #[error("segment field {field} is inconsistent: {reason}")]
    SegmentInconsistent {
        field: &'static str,
        reason: &'static str,
    },
    #[error("{block} is malformed: {reason}")]
    Malformed {
        block: &'static str,
        reason: &'static str,
    },
    #[error("control entry {index} reads old bytes {start}..{end} outside the source image of {source_len} bytes")]
    ControlOutOfBounds {
        index: usize,
        start: i128,
        end: i128,
        source_len: u64,
    },
    #[error("extra prefix {start}+{len} lies outside the source image of {source_len} bytes")]
    PrefixOutOfBounds {
        start: u64,
        len: u32,
        source_len: u64,
    },
    #[error("delta writes past the declared target length {declared} (at byte {attempted})")]
    TargetOverrun { declared: u64, attempted: u64 },
}

/// Byte-level mutations of valid encodings, shared by the parsers' "hostile bytes never
/// panic" properties: starting from bytes the encoder wrote reaches the checks behind
/// the magic and tag, which random bytes almost never pass.
#[cfg(test)]
pub(crate) mod mutate {
    use proptest::prelude::*;
    use proptest::sample::Index;

    /// One edit of an encoded value.
    #[derive(Debug, Clone)]
    pub enum Mutation {
        /// XOR one byte with a non-zero value.
        Flip {
            at: Index,
            xor: u8,
        },
        Insert {
            at: Index,
            byte: u8,
        },
        Delete {
            at: Index,
        },
        Truncate {
            at: Index,
        },
        /// Overwrite up to 8 bytes with an integer, little-endian: a changed length field
        /// when it lands on one.
        Integer {
            at: Index,
            value: u64,
            width: u8,
        },
    }

    pub fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<Index>(), 1u8..=255).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
            (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
            any::<Index>().prop_map(|at| Mutation::Delete { at }),
            any::<Index>().prop_map(|at| Mutation::Truncate { at }),
            (
                any::<Index>(),
                prop_oneof![
                    Just(0u64),
                    Just(u64::MAX),
                    Just(u64::from(u32::MAX)),
                    any::<u64>(),
                    0u64..4096
                ],
                prop_oneof![Just(4u8), Just(8u8), Just(1u8)],
            )
                .prop_map(|(at, value, width)| Mutation::Integer { at, value, width }),
        ]
    }

    /// One to three mutations, applied in order.
    pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
        proptest::collection::vec(mutation(), 1..=3)
    }

    pub fn apply(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        for mutation in mutations {
            apply_one(&mut out, mutation);
        }
        out
    }

    fn apply_one(out: &mut Vec<u8>, mutation: &Mutation) {
        // Indices into the current length (an insert may append at the end).
        let pick = |at: &Index, len: usize| if len == 0 { 0 } else { at.index(len) };
        match mutation {
            Mutation::Flip { at, xor } if !out.is_empty() => {
                let i = pick(at, out.len());
                out[i] ^= xor;
            }
            Mutation::Insert { at, byte } => {
                let i = pick(at, out.len() + 1);
                out.insert(i, *byte);
            }
            Mutation::Delete { at } if !out.is_empty() => {
                let i = pick(at, out.len());
                out.remove(i);
            }
            Mutation::Truncate { at } => {
                let i = pick(at, out.len());
                out.truncate(i);
            }
            Mutation::Integer { at, value, width } if !out.is_empty() => {
                let i = pick(at, out.len());
                let width = usize::from(*width).min(out.len() - i);
                out[i..i + width].copy_from_slice(&value.to_le_bytes()[..width]);
            }
            _ => {}
        }
    }
}
