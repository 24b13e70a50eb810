//! Where the capture's bytes come from, presented to the parsers as one window.
//!
//! The parsers ask for "at least `need` bytes from the cursor" ([`Input::fill`]), look at
//! them ([`Input::rest`]) and consume whole records ([`Input::take`]). A memory map or an
//! owned buffer already holds everything, so `fill` is a no-op there and `take` hands out
//! sub-slices of the whole input. A stream keeps a growable buffer and reads until the
//! requested record is contiguous in it; that is the only place bytes are ever copied.

use std::fmt;
use std::fs::File;
use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use memmap2::Mmap;

use crate::{CaptureError, MAX_RECORD_LEN};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Initial size of the streaming buffer: large enough that refills are rare and each
/// `read` hands the gzip decoder a big slice to work on.
const STREAM_CHUNK: usize = 1 << 20;

/// The most any single `fill` may ask for: one maximal record plus the largest header
/// that precedes its length check. Parsers check lengths before asking; this bound only
/// keeps a parser bug from turning into a huge allocation.
const MAX_FILL: usize = MAX_RECORD_LEN + 64;

pub(crate) struct Input {
    src: Src,
    /// Offset of the next unread byte within the current window.
    pos: usize,
    /// Offset of the window's first byte in the (decompressed) input; only streams slide.
    base: u64,
    total_len: Option<u64>,
    path: Option<PathBuf>,
    /// Mapped bytes before this offset have been handed back to the kernel.
    released: usize,
}

/// How far the cursor of a mapped file moves before the pages behind it are released, and
/// the alignment of what is released (a multiple of every page size Linux uses).
const RELEASE_STEP: usize = 32 << 20;
const RELEASE_ALIGN: usize = 2 << 20;

/// Tells the kernel we are done with `map[from..to]`: replaying a multi-gigabyte capture
/// then keeps only a window of it resident instead of the whole file.
#[expect(
    unsafe_code,
    reason = "MADV_DONTNEED on a read-only file mapping drops our page-table entries; a later \
              access re-reads the same file bytes, so no memory Rust can see changes. Only \
              bytes behind the cursor are released, and no packet borrow outlives the \
              next_packet call that moved the cursor past them"
)]
fn release_pages(map: &Mmap, from: usize, to: usize) {
    // SAFETY: see the reason above.
    let _ =
        unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from) };
}

enum Src {
    Map(Mmap),
    Owned(Vec<u8>),
    /// Boxed: streams carry a decoder's state, and memory inputs should not pay for it.
    Stream(Box<Stream>),
}

struct Stream {
    /// Always fully initialised (zero-filled on growth) so no `unsafe` is needed to read
    /// into it; `buf[..end]` holds data.
    buf: Vec<u8>,
    end: usize,
    eof: bool,
    reader: StreamReader,
}

enum StreamReader {
    Plain(Box<dyn Read + Send>),
    /// Kept concrete (not boxed) so the compressed byte count stays reachable for
    /// [`Input::position`] through `get_ref`.
    Gzip(MultiGzDecoder<Counting<Box<dyn Read + Send>>>),
}

impl StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            StreamReader::Plain(r) => r.read(buf),
            StreamReader::Gzip(r) => r.read(buf).map_err(|e| match e.kind() {
                // flate2's own complaints ("incomplete deflate stream") do not say
                // they are about gzip; errors from the file underneath pass unchanged.
                io::ErrorKind::InvalidInput
                | io::ErrorKind::InvalidData
                | io::ErrorKind::UnexpectedEof => {
                    io::Error::new(e.kind(), format!("corrupt or cut-short gzip data: {e}"))
                }
                _ => e,
            }),
        }
    }
}

/// Counts the bytes the gzip decoder pulls from the compressed input.
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count = self.count.saturating_add(n as u64);
        Ok(n)
    }
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.src {
            Src::Map(_) => "mmap",
            Src::Owned(_) => "memory",
            Src::Stream(s) => match s.reader {
                StreamReader::Plain(_) => "stream",
                StreamReader::Gzip(_) => "gzip stream",
            },
        };
        f.debug_struct("Input")
            .field("kind", &kind)
            .field("offset", &self.offset())
            .field("total_len", &self.total_len)
            .field("path", &self.path)
            .finish()
    }
}

/// Maps the whole file read-only.
#[expect(
    unsafe_code,
    reason = "Mmap::map is unsafe because the file may change under us while mapped; we only \
              ever read the map and bounds-check every access, so a concurrent writer can at \
              worst give us garbage bytes (reported as a corrupt capture) or, if the file is \
              truncated, a SIGBUS, which no safe API can prevent short of copying the file"
)]
fn map_file(file: &File) -> io::Result<Mmap> {
    // SAFETY: see the reason above; the map is never written and every read is checked.
    unsafe { Mmap::map(file) }
}

impl Input {
    pub(crate) fn open(path: &Path) -> Result<Self, CaptureError> {
        let io_err = |source| CaptureError::Io {
            path: Some(path.to_path_buf()),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        if !meta.is_file() {
            // Pipes and devices cannot be mapped (and have no meaningful size).
            let mut input = Self::from_reader(Box::new(file)).map_err(|e| match e {
                CaptureError::Io { source, .. } => io_err(source),
                other => other,
            })?;
            input.path = Some(path.to_path_buf());
            return Ok(input);
        }
        let total_len = Some(meta.len());
        let src = if meta.len() == 0 {
            // Mapping an empty file fails on some platforms; there is nothing to map anyway.
            Src::Owned(Vec::new())
        } else {
            match map_file(&file) {
                Ok(map) if map.starts_with(&GZIP_MAGIC) => {
                    drop(map);
                    // Nothing has been read through `file`, so it is still at offset 0.
                    gzip_stream(Box::new(file))
                }
                Ok(map) => {
                    #[cfg(unix)]
                    {
                        // Only a hint to read ahead; being ignored is harmless.
                        let _ = map.advise(memmap2::Advice::Sequential);
                    }
                    Src::Map(map)
                }
                // Some file systems refuse mmap; reading is slower but equivalent.
                Err(_) => probe_stream(Box::new(file)).map_err(io_err)?,
            }
        };
        Ok(Self {
            src,
            pos: 0,
            released: 0,
            base: 0,
            total_len,
            path: Some(path.to_path_buf()),
        })
    }

    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Self {
        let total_len = Some(bytes.len() as u64);
        let src = if bytes.starts_with(&GZIP_MAGIC) {
            gzip_stream(Box::new(Cursor::new(bytes)))
        } else {
            Src::Owned(bytes)
        };
        Self {
            src,
            pos: 0,
            released: 0,
            base: 0,
            total_len,
            path: None,
        }
    }

    pub(crate) fn from_reader(reader: Box<dyn Read + Send>) -> Result<Self, CaptureError> {
        let src = probe_stream(reader).map_err(|source| CaptureError::Io { path: None, source })?;
        Ok(Self {
            src,
            pos: 0,
            released: 0,
            base: 0,
            total_len: None,
            path: None,
        })
    }

    /// Makes at least `need` bytes available from the cursor, or everything up to the end
    /// of the input if fewer remain. Only streams do any work here.
    #[inline]
    pub(crate) fn fill(&mut self, need: usize) -> Result<(), CaptureError> {
        if let Src::Map(map) = &self.src
            && self.pos - self.released >= RELEASE_STEP
        {
            let to = self.pos & !(RELEASE_ALIGN - 1);
            release_pages(map, self.released, to);
            self.released = to;
        }
        if let Src::Stream(s) = &mut self.src
            && s.end.saturating_sub(self.pos) < need
            && !s.eof
        {
            return s
                .refill(&mut self.pos, &mut self.base, need.min(MAX_FILL))
                .map_err(|source| CaptureError::Io {
                    path: self.path.clone(),
                    source,
                });
        }
        Ok(())
    }

    /// The bytes available from the cursor on.
    #[inline]
    pub(crate) fn rest(&self) -> &[u8] {
        window(&self.src).get(self.pos..).unwrap_or_default()
    }

    /// Consumes and returns the next `n` bytes. Callers check that they are available
    /// first; if they are not, this returns (and consumes) only what there is, which keeps
    /// error paths from having to borrow `self` again.
    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> &[u8] {
        let Self { src, pos, .. } = self;
        let rest = window(src).get(*pos..).unwrap_or_default();
        let record = rest.get(..n).unwrap_or(rest);
        // Cannot overflow: `record` lies inside the window.
        *pos += record.len();
        record
    }

    /// Offset of the cursor in the (decompressed) input: where the next record starts.
    #[inline]
    pub(crate) fn offset(&self) -> u64 {
        self.base.saturating_add(self.pos as u64)
    }

    /// Offset just past the bytes available: where a cut-short input ends once `fill`
    /// has hit the end.
    pub(crate) fn end_offset(&self) -> u64 {
        self.base.saturating_add(window(&self.src).len() as u64)
    }

    pub(crate) fn position(&self) -> u64 {
        match &self.src {
            Src::Stream(s) => match &s.reader {
                StreamReader::Gzip(gz) => gz.get_ref().count,
                StreamReader::Plain(_) => self.offset(),
            },
            _ => self.offset(),
        }
    }

    pub(crate) fn total_len(&self) -> Option<u64> {
        self.total_len
    }

    /// Whether the input is read from a stream (a pipe, a device, a decompressor), whose
    /// next read may wait for a writer, rather than held whole (a mapped file, bytes).
    pub(crate) fn is_stream(&self) -> bool {
        matches!(self.src, Src::Stream(_))
    }
}

#[inline]
fn window(src: &Src) -> &[u8] {
    match src {
        Src::Map(map) => map,
        Src::Owned(bytes) => bytes,
        Src::Stream(s) => s.buf.get(..s.end).unwrap_or_default(),
    }
}

fn gzip_stream(compressed: Box<dyn Read + Send>) -> Src {
    // Multi-member, so concatenated .gz files (`cat a.gz b.gz`) read as one stream.
    let decoder = MultiGzDecoder::new(Counting {
        inner: compressed,
        count: 0,
    });
    Src::Stream(Box::new(Stream::new(StreamReader::Gzip(decoder))))
}

/// Wraps a stream, decompressing it if it starts with the gzip magic. The bytes read to
/// decide are put back in front of the stream.
fn probe_stream(mut reader: Box<dyn Read + Send>) -> io::Result<Src> {
    let mut head = [0u8; 2];
    let mut got = 0;
    while let Some(dst) = head.get_mut(got..)
        && !dst.is_empty()
    {
        match reader.read(dst) {
            Ok(0) => break,
            Ok(n) => got = got.saturating_add(n).min(head.len()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let prefix = head.get(..got).unwrap_or_default().to_vec();
    let whole: Box<dyn Read + Send> = Box::new(Cursor::new(prefix).chain(reader));
    Ok(if head == GZIP_MAGIC {
        gzip_stream(whole)
    } else {
        Src::Stream(Box::new(Stream::new(StreamReader::Plain(whole))))
    })
}

impl Stream {
    fn new(reader: StreamReader) -> Self {
        Self {
            buf: vec![0; STREAM_CHUNK],
            end: 0,
            eof: false,
            reader,
        }
    }

    /// Reads until `need` bytes follow `pos` or the input ends.
    #[cold]
    fn refill(&mut self, pos: &mut usize, base: &mut u64, need: usize) -> io::Result<()> {
        // Slide the unread tail to the front only when the record would not fit after it,
        // so most refills are a plain read into the free space.
        if pos.saturating_add(need) > self.buf.len() && *pos > 0 {
            let start = (*pos).min(self.end);
            self.buf.copy_within(start..self.end, 0);
            self.end -= start;
            *base = base.saturating_add(start as u64);
            *pos = 0;
        }
        while self.end.saturating_sub(*pos) < need {
            if self.end >= self.buf.len() {
                // Grow geometrically as data actually arrives rather than to `need` at
                // once, so a garbage length near the end of a stream costs only what the
                // stream really holds, not a 256 MiB zero-fill.
                let target = pos
                    .saturating_add(need)
                    .min(self.buf.len().saturating_mul(2).max(STREAM_CHUNK));
                self.buf.resize(target, 0);
            }
            let Some(free) = self.buf.get_mut(self.end..).filter(|f| !f.is_empty()) else {
                break;
            };
            let room = free.len();
            match self.reader.read(free) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                // `min` guards against a reader that claims more than it was given.
                Ok(n) => self.end += n.min(room),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out at most `chunk` bytes per read, to exercise refills at every boundary.
    pub(crate) struct Dribble {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl Read for Dribble {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let rest = self.data.get(self.at..).unwrap_or_default();
            let n = rest.len().min(buf.len()).min(self.chunk);
            buf[..n].copy_from_slice(&rest[..n]);
            self.at += n;
            Ok(n)
        }
    }

    fn dribble(data: &[u8], chunk: usize) -> Input {
        Input::from_reader(Box::new(Dribble {
            data: data.to_vec(),
            at: 0,
            chunk,
        }))
        .expect("in-memory reader cannot fail")
    }

    #[test]
    fn stream_fill_and_take_track_offsets_across_slides() {
        let data: Vec<u8> = (0..=255u8).cycle().take(3 * STREAM_CHUNK + 17).collect();
        let mut input = dribble(&data, 4093);
        let mut at = 0usize;
        // Records larger than the buffer force growth; odd sizes force slides.
        for size in [7, STREAM_CHUNK + 5, 1, 999_999, STREAM_CHUNK - 3, 100] {
            input.fill(size).expect("fill");
            let got = input.take(size).to_vec();
            assert_eq!(got, data[at..at + size]);
            at += size;
            assert_eq!(input.offset(), at as u64);
        }
        input.fill(usize::MAX).expect("fill");
        assert_eq!(input.rest(), &data[at..]);
        assert_eq!(input.end_offset(), data.len() as u64);
        assert_eq!(input.take(data.len()), &data[at..], "take past the end");
        assert_eq!(input.offset(), data.len() as u64);
    }

    #[test]
    fn stream_detects_gzip_after_a_one_byte_first_read() {
        use flate2::{Compression, write::GzEncoder};
        use std::io::Write;
        let plain = b"hello, capture".to_vec();
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(&plain).expect("write");
        let gz = enc.finish().expect("finish");
        let mut input = dribble(&gz, 1);
        input.fill(100).expect("fill");
        assert_eq!(input.rest(), &plain[..]);
        assert_eq!(input.position(), gz.len() as u64);
    }

    #[test]
    fn tiny_plain_stream_keeps_its_probe_bytes() {
        let mut input = dribble(b"x", 1);
        input.fill(4).expect("fill");
        assert_eq!(input.rest(), b"x");
    }

    #[test]
    fn owned_bytes_are_zero_copy_and_position_is_the_cursor() {
        let mut input = Input::from_bytes(vec![1, 2, 3, 4, 5]);
        input.fill(2).expect("fill");
        let ptr = input.rest().as_ptr();
        assert_eq!(input.take(2), &[1, 2][..]);
        assert_eq!(input.position(), 2);
        assert_eq!(input.total_len(), Some(5));
        assert_eq!(input.rest().as_ptr(), ptr.wrapping_add(2));
    }
}
