//! Where the builder reads full images from: memory or a file, by range, so a part of
//! a multi-GiB image can be loaded without loading the rest.

use ota_core::delta::{TableLocator, TableSpan, Transform, TRANSFORM_BLOCK};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes read at a time when hashing, so hashing never holds a whole image.
const HASH_WINDOW: u64 = 8 << 20;

/// A full image readable by byte range.
pub trait ImageSource: Sync {
    /// Image length in bytes.
    fn len(&self) -> u64;

    /// Whether the image is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes in `range`, borrowed when the image is already in memory.
    fn read_range(&self, range: Range<u64>) -> io::Result<Cow<'_, [u8]>>;

    /// SHA-256 of the whole image, read window by window.
    fn sha256(&self) -> io::Result<[u8; 32]> {
        let mut hasher = Sha256::new();
        let mut start = 0;
        while start < self.len() {
            let end = (start + HASH_WINDOW).min(self.len());
            hasher.update(&self.read_range(start..end)?);
            start = end;
        }
        Ok(hasher.finalize().into())
    }
}

impl ImageSource for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_range(&self, range: Range<u64>) -> io::Result<Cow<'_, [u8]>> {
        self.get(range.start as usize..range.end as usize)
            .map(Cow::Borrowed)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "range past the end of the image",
                )
            })
    }
}

/// An image in a file, read with positioned reads (no shared cursor, so several
/// threads may read it at once).
#[derive(Debug)]
pub struct FileImage {
    file: File,
    len: u64,
}

impl FileImage {
    /// Opens a regular file (sized by its metadata) or a block device (sized by seeking
    /// to its end). Anything else is refused with `InvalidInput`, because its size
    /// cannot be known before reading it: a FIFO, a socket, a character device such as
    /// `/dev/zero`, a directory, or a file the file system reports as empty although it
    /// has content (`/proc` files).
    pub fn open(path: &Path) -> io::Result<Self> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::FileTypeExt;
        let unsized_input = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is {what}: only a regular file or a block device can be read as an image",
                    path.display()
                ),
            )
        };
        // Judged by the path before opening: opening a FIFO to read waits for a writer.
        let kind = std::fs::metadata(path)?.file_type();
        let what = if kind.is_file() || kind.is_block_device() {
            None
        } else if kind.is_dir() {
            Some("a directory")
        } else if kind.is_fifo() {
            Some("a FIFO")
        } else if kind.is_socket() {
            Some("a socket")
        } else if kind.is_char_device() {
            Some("a character device")
        } else {
            Some("not a regular file")
        };
        if let Some(what) = what {
            return Err(unsized_input(what));
        }
        let mut file = File::open(path)?;
        let metadata = file.metadata()?;
        let len = if metadata.file_type().is_block_device() {
            file.seek(SeekFrom::End(0))?
        } else if metadata.file_type().is_file() {
            if metadata.len() == 0 && file.read_at(&mut [0u8; 1], 0)? > 0 {
                return Err(unsized_input(
                    "a file whose size the file system reports as 0 although it has content (like /proc files)",
                ));
            }
            metadata.len()
        } else {
            // Replaced between the look and the open.
            return Err(unsized_input("no longer a regular file"));
        };
        Ok(FileImage { file, len })
    }
}

impl ImageSource for FileImage {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_range(&self, range: Range<u64>) -> io::Result<Cow<'_, [u8]>> {
        if range.end > self.len || range.start > range.end {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "range past the end of the image",
            ));
        }
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        self.file.read_exact_at(&mut buf, range.start)?;
        Ok(Cow::Owned(buf))
    }
}

/// The transformed bytes of an image: a range is read as its containing transform blocks
/// (at absolute offsets of the image), transformed, and cut to the range. Only for
/// matching: hashes and the full-image fallback read the image itself.
/// With a transform that delta-codes the unwind table, the table's span is located
/// once, from the image's first block and the block holding the table header, as the
/// applier locates it (`TableLocator`).
#[derive(Debug)]
pub struct TransformedImage<'a, I: ImageSource + ?Sized> {
    inner: &'a I,
    transform: Transform,
    span: Option<TableSpan>,
}

impl<'a, I: ImageSource + ?Sized> TransformedImage<'a, I> {
    pub fn new(inner: &'a I, transform: Transform) -> io::Result<Self> {
        let mut span = None;
        if transform.uses_table() {
            let len = inner.len();
            let mut locator = TableLocator::new(len);
            let feed = |locator: &mut TableLocator, start: u64| -> io::Result<()> {
                let block = inner.read_range(start..(start + TRANSFORM_BLOCK).min(len))?;
                locator.observe(start, &block);
                Ok(())
            };
            feed(&mut locator, 0)?;
            if let Some(start) = locator.header_block() {
                feed(&mut locator, start)?;
            }
            span = locator.span();
        }
        Ok(TransformedImage {
            inner,
            transform,
            span,
        })
    }

    /// The unwind table's span the transform uses (none: no table part, or no table).
    pub fn span(&self) -> Option<TableSpan> {
        self.span
    }
}

impl<I: ImageSource + ?Sized> ImageSource for TransformedImage<'_, I> {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_range(&self, range: Range<u64>) -> io::Result<Cow<'_, [u8]>> {
        let len = self.inner.len();
        if range.start > range.end || range.end > len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "range past the end of the image",
            ));
        }
        let start = range.start - range.start % TRANSFORM_BLOCK;
        let end = range
            .end
            .div_ceil(TRANSFORM_BLOCK)
            .saturating_mul(TRANSFORM_BLOCK)
            .min(len);
        let mut bytes = self.inner.read_range(start..end)?.into_owned();
        self.transform.forward_table(self.span, start, &mut bytes);
        bytes.truncate((range.end - start) as usize);
        bytes.drain(..(range.start - start) as usize);
        Ok(Cow::Owned(bytes))
    }
}
