//! Delta image builder: full image old + new → delta container (`ota_core::delta`).
//!
//! Layout:
//! - `builder`: the build pipeline, the full-image fallback, and the async entry point.
//! - `detect`: which executable-aware transform is worth trying on an image.
//! - `chunking`: how big images are split so memory stays under an explicit cap.
//! - `matcher`: the bsdiff-style approximate-match search over a suffix array.
//! - `image`: reading images by range from memory or files.
//! - `one_stream`: a small shipped body rewritten as one LZMA2 stream (algorithm 5).
//! - `cli`: `ota-server delta build`.
//! - `samples`: image pairs for tests (feature `test-support`).

pub mod builder;
pub mod chunking;
pub mod cli;
pub mod detect;
pub mod image;
mod lzma2;
pub mod matcher;
pub mod one_stream;
#[cfg(any(test, feature = "test-support"))]
pub mod samples;

pub use builder::{
    build_delta, build_delta_file, BuildError, BuildOptions, BuildReport, CandidateSize,
    ScanChoice, TransformChoice, COMPARE_LEVEL, FINALIST_MARGIN_BASIS_POINTS,
};
pub use matcher::{ScanProfile, SCAN_PROFILES};
