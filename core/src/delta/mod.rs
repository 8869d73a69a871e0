//! Delta container format: what the server's builder writes and the agent's applier reads.
//!
//! Both sides must agree on these bytes exactly, so the format lives here, next to its
//! strict parser. The byte-level description is in `docs/DELTA-FORMAT.md`.
//!
//! Layout:
//! - `header`: the fixed 92-byte container header (magic, version, algorithm, source and
//!   target length + SHA-256).
//! - `segment`: the 56-byte header in front of every body segment of a bsdiff-zstd delta.
//! - `control`: the columnar control block of a segment and its bounds-checked decoding.
//! - `runs`: the diff stream as zero runs + non-zero bytes.
//! - `varint`: LEB128 integers of the control and runs blocks.
//!
//! Nothing here does IO: the applier feeds bytes in and gets typed decisions back. Every
//! length read from the wire is checked against a cap *before* it can size an allocation,
//! because a container may come from a hostile or corrupted download.

mod control;
mod header;
mod runs;
mod segment;
mod varint;

pub use control::{add_old_bytes, encode_control_block, Control, ControlBlock, PlannedControl};
pub use header::{Algorithm, ContainerHeader, HEADER_LEN, MAGIC, MAX_IMAGE_LEN, VERSION};
pub use runs::{encode_runs, RunBlock, RunPairs};
pub use segment::{
    zstd_compress_bound, SegmentHeader, EXTRA_PREFIX_MAX, SEGMENT_HEADER_LEN, SEGMENT_MAX_CONTROL,
    SEGMENT_MAX_RUNS, SEGMENT_MAX_TARGET, SEGMENT_TAG,
};

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
    #[error("unsupported container format version {version} (this build reads {VERSION})")]
    UnsupportedVersion { version: u16 },
    #[error("unknown delta algorithm id {id}")]
    UnknownAlgorithm { id: u8 },
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
