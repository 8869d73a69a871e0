//! Streaming delta apply: delta stream + source slot → target slot.
//!
//! The delta is consumed strictly front to back (it may come straight from the network
//! or a partially downloaded file), the source slot is read with seeks, and the target
//! is written sequentially and hashed while it is written.
//!
//! Architecture Invariant: no target byte is written before the source slot's SHA-256
//! and length matched the container header (the SHA-256 known from the signed metadata
//! when the header's digests are detached). A wrong base is refused with
//! [`ApplyError::WrongBase`] and the output is untouched.
//!
//! Memory is bounded by the format's per-segment caps, never by the image size: one
//! segment's control block (≤ 1 MiB), extra bytes (≤ 16 MiB, plus their compressed
//! frame and their ≤ 4 MiB prefix of old bytes while they are decoded, ≤ 16 MiB) and
//! runs block (≤ 4 MiB), one streaming decoder for the codes (zstd with a window of at
//! most 8 MiB, or, for an LZMA2-coded diff of algorithm 4, LZMA2 with a dictionary of at
//! most 8 MiB), and fixed 256 KiB IO buffers: about 50 MiB in the worst case, typically
//! far less (see `docs/delta-bench.txt`).
//!
//! A one-stream container (`Algorithm::BsdiffOneStream`) is one segment's streams in
//! one LZMA2 stream, under the same caps: its control block, extra bytes and runs block
//! are held whole, its codes decoded as they are needed.
//!
//! A transformed container (`Algorithm::BsdiffZstdTransformed`) reads the transformed
//! source: the old-byte buffer is filled with whole 64 KiB transform blocks at absolute
//! offsets and transformed in place, so any range comes from its containing blocks; the
//! produced bytes are the transformed target, collected one block at a time (carried
//! across segment boundaries), inverted and only then written and hashed. That adds one
//! 64 KiB block to the memory above.

use ota_core::delta::{
    add_old_bytes, Algorithm, ContainerHeader, ControlBlock, ControlCoding, DeltaError, DiffCoding,
    ExtraCoding, ImageDigests, KnownDigests, OneStreamHeader, RunBlock, RunCoding, RunPairs,
    SegmentHeader, TableLocator, TableSpan, Transform, HEADER_LEN, HEADER_PREFIX_LEN,
    LZMA_DICT_MAX, SEGMENT_HEADER_LEN, TRANSFORM_BLOCK,
};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};

/// Largest zstd window the applier accepts in a streamed frame (8 MiB). The builder
/// never writes larger ones; a frame asking for more is refused instead of allocated.
pub const MAX_STREAM_WINDOW_LOG: u32 = 23;
/// Size of the IO buffers for old bytes, diff bytes and reading the delta.
const IO_BUFFER: usize = 256 << 10;

/// Length and SHA-256 of an image, as declared or as found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageId {
    pub len: u64,
    pub sha256: [u8; 32],
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes, sha256 {}", self.len, hex::encode(self.sha256))
    }
}

/// What an apply produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyReport {
    pub algorithm: Algorithm,
    pub target: ImageId,
}

/// Why an apply failed. Nothing produced by a failed apply may be used as the target.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("delta container refused")]
    Container(#[from] DeltaError),
    #[error("delta stream ends inside the {what}")]
    TruncatedDelta { what: &'static str },
    #[error("reading the delta stream failed")]
    ReadDelta(#[source] io::Error),
    #[error("reading the source slot failed")]
    ReadSource(#[source] io::Error),
    #[error("writing the target failed")]
    WriteTarget(#[source] io::Error),
    #[error("wrong base: the delta needs source ({expected}), the slot holds ({actual})")]
    WrongBase { expected: ImageId, actual: ImageId },
    #[error("the {stream} stream is corrupt")]
    CorruptStream {
        stream: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the {stream} stream does not hold the {declared} bytes its header declares")]
    StreamLength { stream: &'static str, declared: u64 },
    #[error("bytes follow the end of the delta")]
    TrailingData,
    #[error("target digest mismatch: expected ({expected}), produced ({actual})")]
    TargetMismatch { expected: ImageId, actual: ImageId },
}

/// Applies the container read from `delta` to the source slot `old`, writing the target
/// to `out`. On success the target's length and SHA-256 matched the header. A container
/// whose digests are detached (format version 2) is refused: use [`apply_delta_known`].
pub fn apply_delta<D: Read, O: Read + Seek, W: Write>(
    delta: D,
    old: O,
    out: W,
) -> Result<ApplyReport, ApplyError> {
    apply_delta_known(delta, old, out, &KnownDigests::default())
}

/// [`apply_delta`] with the source and target SHA-256 known from the signed metadata that
/// named the container: they must equal the digests a version 1 header carries, and they
/// are the ones checked for a version 2 header, which carries none. Either way the
/// source is checked before any target byte is written, the target at the end.
pub fn apply_delta_known<D: Read, O: Read + Seek, W: Write>(
    mut delta: D,
    old: O,
    out: W,
    known: &KnownDigests,
) -> Result<ApplyReport, ApplyError> {
    let mut header_bytes = [0u8; HEADER_LEN];
    read_exact_or_truncated(
        &mut delta,
        &mut header_bytes[..HEADER_PREFIX_LEN],
        "container header",
    )?;
    let header_len = ContainerHeader::encoded_len_of(&header_bytes)?;
    read_exact_or_truncated(
        &mut delta,
        &mut header_bytes[HEADER_PREFIX_LEN..header_len],
        "container header",
    )?;
    let header = ContainerHeader::parse(&header_bytes[..header_len])?;
    let digests = header.digests(known)?;
    let transform = header.algorithm.transform();
    let mut target = TargetWriter {
        out,
        hasher: Sha256::new(),
        written: 0,
        declared: header.target_len,
        inverse: transform.map(|transform| InverseBlocks {
            transform,
            block: Vec::with_capacity(TRANSFORM_BLOCK as usize),
            table: TableLocator::new(header.target_len),
        }),
    };
    match header.algorithm {
        Algorithm::FullZstd => apply_full(&mut delta, &mut target)?,
        bsdiff => {
            let mut old = OldReader::new(old, header.source_len, transform);
            verify_source(&mut old, &header, &digests)?;
            if let Algorithm::BsdiffOneStream(_) = bsdiff {
                apply_one_stream(&mut delta, &mut old, &header, &mut target)?;
            } else {
                apply_segments(&mut delta, &mut old, &header, &mut target)?;
            }
        }
    }
    let mut probe = [0u8; 1];
    match delta.read(&mut probe) {
        Ok(0) => {}
        Ok(_) => return Err(ApplyError::TrailingData),
        Err(err) => return Err(ApplyError::ReadDelta(err)),
    }
    target.out.flush().map_err(ApplyError::WriteTarget)?;
    let actual = ImageId {
        len: target.written,
        sha256: target.hasher.finalize().into(),
    };
    let expected = ImageId {
        len: header.target_len,
        sha256: digests.target,
    };
    if actual != expected {
        return Err(ApplyError::TargetMismatch { expected, actual });
    }
    Ok(ApplyReport {
        algorithm: header.algorithm,
        target: actual,
    })
}

/// Hashes the first `source_len` bytes of the slot (a partition may be larger than the
/// image it holds) and refuses a slot that does not match the header's length and the
/// source digest.
fn verify_source<O: Read + Seek>(
    old: &mut OldReader<O>,
    header: &ContainerHeader,
    digests: &ImageDigests,
) -> Result<(), ApplyError> {
    let slot = &mut old.inner;
    slot.seek(SeekFrom::Start(0))
        .map_err(ApplyError::ReadSource)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; IO_BUFFER];
    let mut read = 0u64;
    while read < header.source_len {
        let want = (header.source_len - read).min(IO_BUFFER as u64) as usize;
        let n = match slot.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(ApplyError::ReadSource(err)),
        };
        hasher.update(&buf[..n]);
        read += n as u64;
    }
    let actual = ImageId {
        len: read,
        sha256: hasher.finalize().into(),
    };
    let expected = ImageId {
        len: header.source_len,
        sha256: digests.source,
    };
    if actual != expected {
        return Err(ApplyError::WrongBase { expected, actual });
    }
    old.invalidate();
    Ok(())
}

fn apply_segments<D: Read, O: Read + Seek, W: Write>(
    delta: &mut D,
    old: &mut OldReader<O>,
    header: &ContainerHeader,
    target: &mut TargetWriter<W>,
) -> Result<(), ApplyError> {
    let mut cursor = 0u64;
    let mut buffers = ApplyBuffers::new();
    while target.written < header.target_len {
        let mut segment_bytes = [0u8; SEGMENT_HEADER_LEN];
        read_exact_or_truncated(delta, &mut segment_bytes, "segment header")?;
        let segment = SegmentHeader::parse(&segment_bytes)?;
        segment.check_coding(header.algorithm)?;
        segment.check_fits(target.written, header.target_len)?;

        let control = match segment.control_coding {
            ControlCoding::Zstd => {
                read_frame(delta, segment.control_zlen, segment.control_len, "control")?
            }
            ControlCoding::Lzma2 => read_lzma_whole(
                delta,
                segment.control_zlen,
                segment.control_len,
                ("control frame", "control (lzma2)"),
            )?,
        };
        let block = ControlBlock::parse(&control, &segment, cursor, header.source_len)?;
        drop(control);
        cursor = block.end_cursor;
        segment.check_prefix(header.source_len)?;
        let extra = read_extra_frame(delta, &segment, old)?;
        let runs = match segment.diff_coding {
            DiffCoding::RunsAndCodes => {
                read_frame(delta, segment.runs_zlen, segment.runs_len, "runs")?
            }
            DiffCoding::RunsAndCodesLzma2 => read_lzma_whole(
                delta,
                segment.runs_zlen,
                segment.runs_len,
                ("runs frame", "runs (lzma2)"),
            )?,
            // An LZMA2-coded diff has no runs block: its one stream holds every diff byte.
            DiffCoding::Lzma2 => Vec::new(),
        };
        let runs = match segment.diff_coding {
            DiffCoding::Lzma2 => RunBlock::parse(&[], 0, 0)?,
            _ => RunBlock::parse(&runs, segment.diff_len, segment.codes_len)?,
        };

        let mut diff = DiffStream::open(delta, runs, &segment)?;
        write_entries(&block, &extra, &mut diff, old, target, &mut buffers)?;
        diff.finish()?;
    }
    Ok(())
}

/// The body of a one-stream container (algorithm 5): its short header of lengths, then
/// one LZMA2 stream read front to back, the control block, the extra bytes and the runs
/// block held whole (under the segment caps) and the codes decoded as they are needed.
fn apply_one_stream<D: Read, O: Read + Seek, W: Write>(
    delta: &mut D,
    old: &mut OldReader<O>,
    header: &ContainerHeader,
    target: &mut TargetWriter<W>,
) -> Result<(), ApplyError> {
    const STREAM: &str = "body (lzma2)";
    const BODY: &str = "one-stream body";
    // The header is a few varints: read a byte at a time until it parses, so not one
    // byte of the stream behind it is consumed.
    let mut header_bytes = Vec::with_capacity(16);
    let body = loop {
        match OneStreamHeader::parse(&header_bytes, header.target_len) {
            Ok((body, _)) => break body,
            Err(DeltaError::Truncated { .. }) => {
                let mut byte = [0u8; 1];
                read_exact_or_truncated(delta, &mut byte, "one-stream header")?;
                header_bytes.push(byte[0]);
            }
            Err(err) => return Err(err.into()),
        }
    };
    let segment = body.as_segment(header.target_len);
    let reader = BufReader::with_capacity(
        IO_BUFFER.min(usize::try_from(body.stream_len).unwrap_or(usize::MAX)),
        FrameReader::new(delta, body.stream_len),
    );
    let dictionary = u32::try_from(body.decoded_len()).unwrap_or(u32::MAX);
    let mut decoder =
        liblzma::bufread::XzDecoder::new_stream(reader, lzma_decoder(dictionary, STREAM)?);
    let mut read_whole = |len: u32| -> Result<Vec<u8>, ApplyError> {
        let mut raw = vec![0u8; len as usize];
        decoder.read_exact(&mut raw).map_err(|err| {
            if decoder.get_ref().get_ref().hit_eof {
                ApplyError::TruncatedDelta { what: BODY }
            } else if err.kind() == io::ErrorKind::UnexpectedEof {
                ApplyError::StreamLength {
                    stream: STREAM,
                    declared: body.decoded_len(),
                }
            } else {
                ApplyError::CorruptStream {
                    stream: STREAM,
                    source: err,
                }
            }
        })?;
        Ok(raw)
    };
    let control = read_whole(body.control_len)?;
    let block = ControlBlock::parse(&control, &segment, 0, header.source_len)?;
    drop(control);
    let extra = read_whole(body.extra_len)?;
    let runs = read_whole(body.runs_len)?;
    let runs = RunBlock::parse_coded(
        &runs,
        segment.diff_len,
        segment.codes_len,
        RunCoding::Leb128,
    )?;
    let mut diff = DiffStream::new(
        runs,
        &segment,
        Some(CodesDecoder::Lzma(decoder, STREAM, BODY)),
        0,
    );
    write_entries(
        &block,
        &extra,
        &mut diff,
        old,
        target,
        &mut ApplyBuffers::new(),
    )?;
    diff.finish()
}

/// The IO buffers of an apply: diff bytes and old bytes, one block each.
struct ApplyBuffers {
    diff: Vec<u8>,
    old: Vec<u8>,
}

impl ApplyBuffers {
    fn new() -> Self {
        ApplyBuffers {
            diff: vec![0u8; IO_BUFFER],
            old: vec![0u8; IO_BUFFER],
        }
    }
}

/// Writes the target bytes of a control block's entries: each entry's diff bytes added
/// to its old bytes, then its extra bytes.
fn write_entries<D: Read, O: Read + Seek, W: Write>(
    block: &ControlBlock,
    extra: &[u8],
    diff: &mut DiffStream<'_, '_, D>,
    old: &mut OldReader<O>,
    target: &mut TargetWriter<W>,
    buffers: &mut ApplyBuffers,
) -> Result<(), ApplyError> {
    let mut extra_at = 0usize;
    for entry in &block.entries {
        let mut old_at = entry.old_start;
        let mut remaining = entry.diff_len as usize;
        while remaining > 0 {
            let n = remaining.min(IO_BUFFER);
            diff.read_exact(&mut buffers.diff[..n])?;
            old.read_at(old_at, &mut buffers.old[..n])?;
            add_old_bytes(&mut buffers.diff[..n], &buffers.old[..n]);
            target.write(&buffers.diff[..n])?;
            old_at += n as u64;
            remaining -= n;
        }
        let extra_len = entry.extra_len as usize;
        target.write(&extra[extra_at..extra_at + extra_len])?;
        extra_at += extra_len;
    }
    Ok(())
}

fn apply_full<D: Read, W: Write>(
    delta: &mut D,
    target: &mut TargetWriter<W>,
) -> Result<(), ApplyError> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(
        IO_BUFFER,
        FrameReader::new(delta, u64::MAX),
    ))
    .map_err(|source| ApplyError::CorruptStream {
        stream: "full image",
        source,
    })?
    .single_frame();
    decoder
        .window_log_max(MAX_STREAM_WINDOW_LOG)
        .map_err(|source| ApplyError::CorruptStream {
            stream: "full image",
            source,
        })?;
    let mut buf = vec![0u8; IO_BUFFER];
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                if decoder.get_ref().get_ref().hit_eof {
                    return Err(ApplyError::TruncatedDelta {
                        what: "full image stream",
                    });
                }
                return Err(ApplyError::CorruptStream {
                    stream: "full image",
                    source,
                });
            }
        };
        target.write(&buf[..n])?;
    }
    if target.written != target.declared {
        return Err(ApplyError::StreamLength {
            stream: "full image",
            declared: target.declared,
        });
    }
    // Bytes the decoder buffered past its frame are bytes past the end of the delta.
    if !decoder.finish().buffer().is_empty() {
        return Err(ApplyError::TrailingData);
    }
    Ok(())
}

/// Reads the extra frame and decodes it against its prefix of old bytes.
fn read_extra_frame<D: Read, O: Read + Seek>(
    delta: &mut D,
    segment: &SegmentHeader,
    old: &mut OldReader<O>,
) -> Result<Vec<u8>, ApplyError> {
    if segment.extra_zlen == 0 {
        return Ok(Vec::new());
    }
    // Frame length and prefix length were checked against their caps, the prefix range
    // against the source length.
    if segment.extra_coding == ExtraCoding::Lzma2 {
        return read_lzma_whole(
            delta,
            segment.extra_zlen,
            segment.extra_len,
            ("extra frame", "extra (lzma2)"),
        );
    }
    let mut compressed = vec![0u8; segment.extra_zlen as usize];
    read_exact_or_truncated(delta, &mut compressed, "extra frame")?;
    let mut prefix = vec![0u8; segment.extra_prefix_len as usize];
    old.read_at(segment.extra_prefix_start, &mut prefix)?;
    let corrupt = |code| ApplyError::CorruptStream {
        stream: "extra",
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            zstd::zstd_safe::get_error_name(code),
        ),
    };
    let mut dctx = zstd::zstd_safe::DCtx::create();
    dctx.ref_prefix(&prefix).map_err(corrupt)?;
    let mut raw = Vec::with_capacity(segment.extra_len as usize);
    let decoded = dctx.decompress(&mut raw, &compressed).map_err(corrupt)?;
    if decoded != segment.extra_len as usize {
        return Err(ApplyError::StreamLength {
            stream: "extra",
            declared: u64::from(segment.extra_len),
        });
    }
    Ok(raw)
}

/// Reads a whole LZMA2 frame of `zlen` bytes (the control block, the extra stream or a
/// runs block) and decodes it into exactly `raw_len` bytes; `frame` and `stream` name
/// it in truncation and in decoding errors. Both lengths were checked
/// against their caps by `SegmentHeader::parse`.
fn read_lzma_whole<D: Read>(
    delta: &mut D,
    zlen: u32,
    raw_len: u32,
    (frame, stream): (&'static str, &'static str),
) -> Result<Vec<u8>, ApplyError> {
    let mut compressed = vec![0u8; zlen as usize];
    read_exact_or_truncated(delta, &mut compressed, frame)?;
    decode_lzma_whole(&compressed, raw_len, stream)
}

/// An LZMA2-coded stream decoded in one piece (an extra stream, which has no prefix, a
/// control block or a runs block) into exactly `raw_len` bytes; the stream must end
/// exactly at the end of its frame.
fn decode_lzma_whole(
    compressed: &[u8],
    raw_len: u32,
    stream: &'static str,
) -> Result<Vec<u8>, ApplyError> {
    let corrupt = |source| ApplyError::CorruptStream { stream, source };
    let wrong_length = || ApplyError::StreamLength {
        stream,
        declared: u64::from(raw_len),
    };
    let mut decoder =
        liblzma::bufread::XzDecoder::new_stream(compressed, lzma_decoder(raw_len, stream)?);
    let mut raw = Vec::with_capacity(raw_len as usize);
    (&mut decoder)
        .take(u64::from(raw_len) + 1)
        .read_to_end(&mut raw)
        .map_err(|err| match err.kind() {
            io::ErrorKind::UnexpectedEof => wrong_length(),
            _ => corrupt(err),
        })?;
    if raw.len() != raw_len as usize {
        return Err(wrong_length());
    }
    // Decoding stopped at the declared length: the stream must end there too, and the
    // frame with it.
    let mut probe = [0u8; 1];
    match decoder.read(&mut probe) {
        Ok(0) if decoder.get_ref().is_empty() => Ok(raw),
        Ok(0) => Err(corrupt(io::Error::new(
            io::ErrorKind::InvalidData,
            "bytes after the end of the stream",
        ))),
        Ok(_) => Err(wrong_length()),
        Err(err) => Err(corrupt(err)),
    }
}

/// Reads a whole (small, capped) frame and decodes it into exactly `raw_len` bytes.
fn read_frame<D: Read>(
    delta: &mut D,
    zlen: u32,
    raw_len: u32,
    stream: &'static str,
) -> Result<Vec<u8>, ApplyError> {
    if zlen == 0 {
        return Ok(Vec::new());
    }
    // Both lengths were checked against the segment caps by `SegmentHeader::parse`.
    let mut compressed = vec![0u8; zlen as usize];
    read_exact_or_truncated(delta, &mut compressed, stream)?;
    let mut raw = Vec::with_capacity(raw_len as usize);
    let decoded = zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(&compressed[..], &mut raw))
        .map_err(|source| ApplyError::CorruptStream { stream, source })?;
    if decoded != raw_len as usize {
        return Err(ApplyError::StreamLength {
            stream,
            declared: u64::from(raw_len),
        });
    }
    Ok(raw)
}

/// The diff bytes of one segment: zero runs from the (held) runs block, non-zero bytes
/// from the codes frame (zstd or LZMA2), decoded as it is read from the delta stream;
/// or, for an LZMA2-coded diff, every byte from its stream (no runs, all of them
/// "codes").
struct DiffStream<'a, 'r, D: Read> {
    pairs: RunPairs<'r>,
    zeros_left: u64,
    codes_left: u64,
    codes: Option<CodesDecoder<'a, D>>,
    /// Diff bytes the segment declares.
    declared: u64,
    /// Bytes the codes stream declares (every diff byte for an LZMA2-coded diff).
    codes_declared: u64,
}

/// The streaming decoder of a segment's codes slot.
enum CodesDecoder<'a, D: Read> {
    Zstd(zstd::stream::read::Decoder<'static, BufReader<FrameReader<'a, D>>>),
    /// An LZMA2 stream, with its name in errors and what holds it (a segment's codes
    /// frame, or a one-stream body) for a truncation error.
    Lzma(
        liblzma::bufread::XzDecoder<BufReader<FrameReader<'a, D>>>,
        &'static str,
        &'static str,
    ),
}

impl<'a, D: Read> CodesDecoder<'a, D> {
    /// The stream's name in errors.
    fn stream(&self) -> &'static str {
        match self {
            CodesDecoder::Zstd(_) => "codes",
            CodesDecoder::Lzma(_, stream, _) => stream,
        }
    }

    /// What the stream is read from, for `ApplyError::TruncatedDelta`.
    fn frame_name(&self) -> &'static str {
        match self {
            CodesDecoder::Zstd(_) => "codes frame",
            CodesDecoder::Lzma(_, _, frame) => frame,
        }
    }

    fn frame(&self) -> &FrameReader<'a, D> {
        match self {
            CodesDecoder::Zstd(decoder) => decoder.get_ref().get_ref(),
            CodesDecoder::Lzma(decoder, ..) => decoder.get_ref().get_ref(),
        }
    }

    fn into_frame(self) -> BufReader<FrameReader<'a, D>> {
        match self {
            CodesDecoder::Zstd(decoder) => decoder.finish(),
            CodesDecoder::Lzma(decoder, ..) => decoder.into_inner(),
        }
    }
}

impl<D: Read> Read for CodesDecoder<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            CodesDecoder::Zstd(decoder) => decoder.read(buf),
            CodesDecoder::Lzma(decoder, ..) => decoder.read(buf),
        }
    }
}

impl<'a, 'r, D: Read> DiffStream<'a, 'r, D> {
    fn open(
        delta: &'a mut D,
        runs: RunBlock<'r>,
        segment: &SegmentHeader,
    ) -> Result<Self, ApplyError> {
        let mut codes_left = 0;
        let codes = if segment.codes_zlen == 0 {
            None
        } else {
            let reader = BufReader::with_capacity(
                IO_BUFFER.min(segment.codes_zlen as usize),
                FrameReader::new(delta, u64::from(segment.codes_zlen)),
            );
            Some(match segment.diff_coding {
                DiffCoding::RunsAndCodes => {
                    let corrupt = |source| ApplyError::CorruptStream {
                        stream: "codes",
                        source,
                    };
                    let mut decoder = zstd::stream::read::Decoder::with_buffer(reader)
                        .map_err(corrupt)?
                        .single_frame();
                    decoder
                        .window_log_max(MAX_STREAM_WINDOW_LOG)
                        .map_err(corrupt)?;
                    CodesDecoder::Zstd(decoder)
                }
                lzma => {
                    let stream = if lzma == DiffCoding::Lzma2 {
                        // Every diff byte comes from this stream (`codes_len` = `diff_len`).
                        codes_left = u64::from(segment.codes_len);
                        "diff (lzma2)"
                    } else {
                        "codes (lzma2)"
                    };
                    CodesDecoder::Lzma(
                        liblzma::bufread::XzDecoder::new_stream(
                            reader,
                            lzma_decoder(segment.codes_len, stream)?,
                        ),
                        stream,
                        "codes frame",
                    )
                }
            })
        };
        Ok(DiffStream::new(runs, segment, codes, codes_left))
    }

    /// The diff stream of `segment`: zero runs from `runs`, the codes from `codes`
    /// (none when the segment has no codes frame); `codes_left` codes are due before
    /// the first pair (all of them for an LZMA2-coded diff, which has no runs).
    fn new(
        runs: RunBlock<'r>,
        segment: &SegmentHeader,
        codes: Option<CodesDecoder<'a, D>>,
        codes_left: u64,
    ) -> Self {
        DiffStream {
            pairs: runs.pairs(),
            zeros_left: 0,
            codes_left,
            codes,
            declared: u64::from(segment.diff_len),
            codes_declared: u64::from(segment.codes_len),
        }
    }

    fn too_short(&self) -> ApplyError {
        ApplyError::StreamLength {
            stream: "diff",
            declared: self.declared,
        }
    }

    fn codes_error(&mut self, err: io::Error) -> ApplyError {
        let stream = self.codes.as_ref().map_or("codes", CodesDecoder::stream);
        match &self.codes {
            Some(decoder) if decoder.frame().hit_eof => ApplyError::TruncatedDelta {
                what: decoder.frame_name(),
            },
            _ if err.kind() == io::ErrorKind::UnexpectedEof => ApplyError::StreamLength {
                stream,
                declared: self.codes_declared,
            },
            _ => ApplyError::CorruptStream {
                stream,
                source: err,
            },
        }
    }

    fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), ApplyError> {
        while !buf.is_empty() {
            if self.zeros_left > 0 {
                let n = (buf.len() as u64).min(self.zeros_left) as usize;
                buf[..n].fill(0);
                self.zeros_left -= n as u64;
                buf = &mut buf[n..];
            } else if self.codes_left > 0 {
                let n = (buf.len() as u64).min(self.codes_left) as usize;
                let Some(decoder) = self.codes.as_mut() else {
                    return Err(self.too_short());
                };
                if let Err(err) = decoder.read_exact(&mut buf[..n]) {
                    return Err(self.codes_error(err));
                }
                self.codes_left -= n as u64;
                buf = &mut buf[n..];
            } else {
                let Some((zeros, codes)) = self.pairs.next() else {
                    return Err(self.too_short());
                };
                self.zeros_left = zeros;
                self.codes_left = codes;
            }
        }
        Ok(())
    }

    /// The codes frame must end exactly where the segment header says it does.
    fn finish(mut self) -> Result<(), ApplyError> {
        let Some(mut decoder) = self.codes.take() else {
            return Ok(());
        };
        let stream = decoder.stream();
        let mut probe = [0u8; 1];
        match decoder.read(&mut probe) {
            Ok(0) => {}
            Ok(_) => {
                return Err(ApplyError::StreamLength {
                    stream,
                    declared: self.codes_declared,
                })
            }
            Err(_) if decoder.frame().hit_eof => {
                return Err(ApplyError::TruncatedDelta {
                    what: decoder.frame_name(),
                })
            }
            Err(source) => return Err(ApplyError::CorruptStream { stream, source }),
        }
        let reader = decoder.into_frame();
        if !reader.buffer().is_empty() || reader.get_ref().remaining != 0 {
            return Err(ApplyError::CorruptStream {
                stream,
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    "frame shorter than its declared length",
                ),
            });
        }
        Ok(())
    }
}

/// A raw LZMA2 decoder for a stream of `len` decoded bytes. Its dictionary is the
/// format's `LZMA_DICT_MAX` or the stream's length if shorter (no match can reach further
/// back than the bytes already produced), so it holds at most 8 MiB.
fn lzma_decoder(len: u32, stream: &'static str) -> Result<liblzma::stream::Stream, ApplyError> {
    let corrupt = |err: liblzma::stream::Error| ApplyError::CorruptStream {
        stream,
        source: io::Error::other(err),
    };
    let mut options = liblzma::stream::LzmaOptions::new_preset(6).map_err(corrupt)?;
    options.dict_size(len.clamp(4096, LZMA_DICT_MAX));
    let mut filters = liblzma::stream::Filters::new();
    filters.lzma2(&options);
    liblzma::stream::Stream::new_raw_decoder(&filters).map_err(corrupt)
}

/// At most `remaining` bytes of the delta stream, remembering whether the stream ended
/// first so a short download is reported as truncation, not corruption.
struct FrameReader<'a, D: Read> {
    inner: &'a mut D,
    remaining: u64,
    hit_eof: bool,
}

impl<'a, D: Read> FrameReader<'a, D> {
    fn new(inner: &'a mut D, remaining: u64) -> Self {
        FrameReader {
            inner,
            remaining,
            hit_eof: false,
        }
    }
}

impl<D: Read> Read for FrameReader<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.remaining) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            self.hit_eof = true;
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// The target, hashed and counted as it is written; refuses the first byte past the
/// declared length. With a transform, `written` counts produced (transformed) bytes; they
/// reach `out` and the hash a block at a time, inverted.
struct TargetWriter<W: Write> {
    out: W,
    hasher: Sha256,
    written: u64,
    declared: u64,
    inverse: Option<InverseBlocks>,
}

/// The transformed target bytes of the current block, not yet inverted, and, for a
/// transform that delta-codes the unwind table, the locator of the target's table: fed
/// every block once its code part is undone (the bytes it reads are ones the table part
/// never changes), it knows the span before the first block holding entries.
struct InverseBlocks {
    transform: Transform,
    block: Vec<u8>,
    table: TableLocator,
}

impl<W: Write> TargetWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), ApplyError> {
        let end = self.written + bytes.len() as u64;
        if end > self.declared {
            return Err(DeltaError::TargetOverrun {
                declared: self.declared,
                attempted: end,
            }
            .into());
        }
        let Some(inverse) = self.inverse.as_mut() else {
            self.out.write_all(bytes).map_err(ApplyError::WriteTarget)?;
            self.hasher.update(bytes);
            self.written = end;
            return Ok(());
        };
        let mut pos = self.written;
        let mut rest = bytes;
        while !rest.is_empty() {
            // Blocks end on multiples of the block size or at the declared target end,
            // which is known up front, so the last block completes with the last byte.
            let block_end = ((pos / TRANSFORM_BLOCK + 1) * TRANSFORM_BLOCK).min(self.declared);
            let n = (rest.len() as u64).min(block_end - pos) as usize;
            inverse.block.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            pos += n as u64;
            if pos == block_end {
                let block_start = pos - inverse.block.len() as u64;
                inverse
                    .transform
                    .inverse_code(block_start, &mut inverse.block);
                if inverse.transform.uses_table() {
                    inverse.table.observe(block_start, &inverse.block);
                }
                inverse.transform.inverse_table(
                    inverse.table.span(),
                    block_start,
                    &mut inverse.block,
                );
                self.out
                    .write_all(&inverse.block)
                    .map_err(ApplyError::WriteTarget)?;
                self.hasher.update(&inverse.block);
                inverse.block.clear();
            }
        }
        self.written = end;
        Ok(())
    }
}

/// Positioned reads from the source slot through one buffer, so the many short,
/// mostly ascending reads of a patch cost few seeks and syscalls. With a transform the
/// buffer holds whole transform blocks of the first `source_len` bytes, transformed.
struct OldReader<O: Read + Seek> {
    inner: O,
    buf: Vec<u8>,
    buf_start: u64,
    buf_len: usize,
    source_len: u64,
    transform: Option<Transform>,
    /// The source's unwind-table span, once located (on the first read, for a transform
    /// that delta-codes the table).
    table: Option<Option<TableSpan>>,
}

// The buffer holds whole transform blocks.
const _: () = assert!(IO_BUFFER as u64 % TRANSFORM_BLOCK == 0);

impl<O: Read + Seek> OldReader<O> {
    fn new(inner: O, source_len: u64, transform: Option<Transform>) -> Self {
        OldReader {
            inner,
            buf: vec![0u8; IO_BUFFER],
            buf_start: 0,
            buf_len: 0,
            source_len,
            transform,
            table: None,
        }
    }

    /// Locates the source's table from its first block and the block holding the
    /// table header, as the builder did.
    fn locate_table(&mut self) -> Result<Option<TableSpan>, ApplyError> {
        let mut locator = TableLocator::new(self.source_len);
        // Block 0, then at most the one block it names.
        let mut next = Some(0);
        for _ in 0..2 {
            let Some(start) = next else { break };
            let len = (self.source_len.saturating_sub(start)).min(TRANSFORM_BLOCK) as usize;
            let mut block = vec![0u8; len];
            self.inner
                .seek(SeekFrom::Start(start))
                .map_err(ApplyError::ReadSource)?;
            self.inner
                .read_exact(&mut block)
                .map_err(ApplyError::ReadSource)?;
            locator.observe(start, &block);
            next = locator.header_block();
        }
        Ok(locator.span())
    }

    fn invalidate(&mut self) {
        self.buf_len = 0;
    }

    fn read_at(&mut self, mut pos: u64, mut out: &mut [u8]) -> Result<(), ApplyError> {
        while !out.is_empty() {
            let in_buffer = pos >= self.buf_start && pos < self.buf_start + self.buf_len as u64;
            if !in_buffer {
                // Transformed: from the start of pos's block, whole blocks of the image.
                let span = match (self.transform, self.table) {
                    (Some(transform), None) if transform.uses_table() => {
                        let span = self.locate_table()?;
                        self.table = Some(span);
                        span
                    }
                    (_, table) => table.flatten(),
                };
                let (start, want) = match self.transform {
                    None => (pos, self.buf.len()),
                    Some(_) => {
                        let start = pos - pos % TRANSFORM_BLOCK;
                        let image_left = self.source_len.saturating_sub(start);
                        (start, image_left.min(self.buf.len() as u64) as usize)
                    }
                };
                self.inner
                    .seek(SeekFrom::Start(start))
                    .map_err(ApplyError::ReadSource)?;
                self.buf_start = start;
                self.buf_len = 0;
                while self.buf_len < want {
                    match self.inner.read(&mut self.buf[self.buf_len..want]) {
                        Ok(0) => break,
                        Ok(n) => self.buf_len += n,
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        Err(err) => return Err(ApplyError::ReadSource(err)),
                    }
                }
                // The slot shrank after it was verified (a transformed buffer needs every
                // byte of its blocks).
                let short = self.transform.is_some() && self.buf_len < want;
                if self.buf_len == 0 || short {
                    self.buf_len = 0;
                    return Err(ApplyError::ReadSource(io::ErrorKind::UnexpectedEof.into()));
                }
                if let Some(transform) = self.transform {
                    transform.forward_table(span, start, &mut self.buf[..self.buf_len]);
                }
                if pos >= self.buf_start + self.buf_len as u64 {
                    self.buf_len = 0;
                    return Err(ApplyError::ReadSource(io::ErrorKind::UnexpectedEof.into()));
                }
            }
            let offset = (pos - self.buf_start) as usize;
            let n = out.len().min(self.buf_len - offset);
            out[..n].copy_from_slice(&self.buf[offset..offset + n]);
            out = &mut out[n..];
            pos += n as u64;
        }
        Ok(())
    }
}

fn read_exact_or_truncated<D: Read>(
    delta: &mut D,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), ApplyError> {
    delta.read_exact(buf).map_err(|err| match err.kind() {
        io::ErrorKind::UnexpectedEof => ApplyError::TruncatedDelta { what },
        _ => ApplyError::ReadDelta(err),
    })
}
