//! Where the builder reads full images from: memory or a file, by range, so a part of
//! a multi-GiB image can be loaded without loading the rest.

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
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
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
