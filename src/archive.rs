//! The artifact container: a deterministic tar stream, compressed with zstd or
//! gzip, with `release.json` as its first member.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use fs_err as fs;
use sha2::{Digest, Sha256};

use crate::error::{ArtifactError, DeltaHeaderProblem, Error, Result};
use crate::manifest::{Entry, EntryType, Manifest, MANIFEST_NAME, MAX_MANIFEST_BYTES};

/// zstd level of artifacts. Measured on the mysite fixture (75 MB of tar):
/// level 9 gives 0.83x the size of gzip -6 at twice gzip's speed on one core
/// (and faster with workers); level 12 gains 1% for twice the time, level 17
/// reaches 0.79x at ten times the time. About half of an artifact is the
/// wheels, zip files no compressor shrinks; the rest comes to 0.73x of gzip.
/// The default window (no long-distance matching) keeps the decoder's memory
/// at a few MB, which keeps `install` small. Multi-threaded zstd writes the
/// same bytes whatever the number of workers, so reproducibility holds.
pub const ZSTD_LEVEL: i32 = 9;

/// The mtime of the venv's and the wheels' members (1980-01-01T00:00:00Z,
/// the earliest time a wheel's zip can record): they come from the build
/// cache, not from the commit, so their headers do not carry the commit's
/// time; then the compressed frame that holds them is the same bytes for
/// every commit built with the same dependencies, and a build can reuse it
/// (src/build/frame.rs). `release.json`, `app/` and `static/` carry
/// `source_date_epoch`.
pub const DEPENDENCY_MTIME: i64 = 315_532_800;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Zst,
    Gz,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Zst => "tar.zst",
            Format::Gz => "tar.gz",
        }
    }

    /// Recognise a compressed stream by its first bytes.
    pub fn sniff(magic: &[u8]) -> Option<Format> {
        if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Format::Zst)
        } else if magic.starts_with(&[0x1f, 0x8b]) {
            Some(Format::Gz)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Zst => "zst",
            Format::Gz => "gz",
        })
    }
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.bytes)
    }

    /// The writer, the hash so far (to go on with) and the count.
    fn into_parts(self) -> (W, Sha256, u64) {
        (self.inner, self.hasher, self.bytes)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what it yields and refuses to yield more than `limit` bytes.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    limit: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
            limit,
        }
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    pub fn digest(self) -> String {
        hex::encode(self.hasher.finalize())
    }

    /// The reader underneath and the digest of what was read.
    pub fn into_parts(self) -> (R, String) {
        (self.inner, hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = (self.limit - self.bytes).min(buf.len() as u64) as usize;
        if room == 0 && !buf.is_empty() {
            // Probe one byte so a file longer than declared is detected.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(format!(
                    "more than the {} bytes declared",
                    self.limit
                ))),
            };
        }
        let n = self.inner.read(&mut buf[..room])?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// sha256 and size of a file on disk, streaming.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut reader = HashingReader::new(BufReader::new(fs::File::open(path)?), u64::MAX);
    io::copy(&mut reader, &mut io::sink())?;
    let bytes = reader.bytes_read();
    Ok((reader.digest(), bytes))
}

enum Compressor<W: Write> {
    Zst(zstd::Encoder<'static, W>),
    /// A small zstd frame ([`WORKERS_FROM_BYTES`]): its input, gathered
    /// until the end, then compressed knowing its size.
    SmallZst(Vec<u8>, W),
    Gz(flate2::write::GzEncoder<W>),
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Zst(w) => w.write(buf),
            Compressor::SmallZst(input, _) => {
                input.extend_from_slice(buf);
                Ok(buf.len())
            }
            Compressor::Gz(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Zst(w) => w.flush(),
            Compressor::SmallZst(..) => Ok(()),
            Compressor::Gz(w) => w.flush(),
        }
    }
}

impl<W: Write> Compressor<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Zst(w) => w.finish(),
            Compressor::SmallZst(input, sink) => small_frame(&input, sink),
            Compressor::Gz(w) => w.finish(),
        }
    }
}

/// `input` as one zstd frame into `sink`, on this thread, with its size
/// declared: zstd then sizes its window and tables to the input (a level 9
/// context for an unknown size clears tens of MB of tables, which costs a
/// small frame more than compressing it), and the frame header records it.
fn small_frame<W: Write>(input: &[u8], sink: W) -> io::Result<W> {
    let mut enc = zstd::Encoder::new(sink, ZSTD_LEVEL)?;
    enc.include_checksum(true)?;
    enc.set_pledged_src_size(Some(input.len() as u64))?;
    enc.write_all(input)?;
    enc.finish()
}

/// Writes a deterministic artifact: every header has mtime = `mtime`, uid/gid 0,
/// empty owner names and the entry's normalised mode.
pub struct ArtifactWriter {
    tar: tar::Builder<Withhold<Compressor<HashingWriter<BufWriter<fs::File>>>>>,
    mtime: u64,
}

/// Size of the tar end-of-archive marker: two zero blocks.
const TAR_END: usize = 1024;

/// Passes writes through, except the last [`TAR_END`] bytes, which it holds
/// back until told what to do with them: an artifact's tar stream may end in
/// a second compressed frame (see [`ArtifactWriter::finish_with_tail`]), and
/// then the first part's end-of-archive marker must not be written.
struct Withhold<W: Write> {
    inner: W,
    held: Vec<u8>,
}

impl<W: Write> Write for Withhold<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() >= TAR_END {
            self.inner.write_all(&self.held)?;
            let (pass, keep) = buf.split_at(buf.len() - TAR_END);
            self.inner.write_all(pass)?;
            self.held.clear();
            self.held.extend_from_slice(keep);
        } else {
            self.held.extend_from_slice(buf);
            if self.held.len() > TAR_END {
                let excess = self.held.len() - TAR_END;
                self.inner.write_all(&self.held[..excess])?;
                self.held.drain(..excess);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub struct Written {
    pub file: fs::File,
    pub sha256: String,
    pub bytes: u64,
}

/// Below this many bytes of tar, a frame is gathered in memory and
/// compressed on the calling thread with its size declared
/// ([`small_frame`]). zstd's workers split their input into jobs of 4
/// windows (16 MiB at level 9), so a smaller input is one job on one worker
/// anyway: the workers would only cost their start and their buffers (27 MB
/// of allocations, page faults included, for a 300 KB delta). The bytes
/// differ between the two modes, and the size that decides is the input's,
/// so the same input always gives the same bytes.
pub const WORKERS_FROM_BYTES: u64 = 16 << 20;

/// The zstd encoder of large frames ([`WORKERS_FROM_BYTES`]):
/// [`ZSTD_LEVEL`], a checksum per frame, one worker per core (the bytes are
/// the same for any number of workers).
fn zstd_encoder<W: Write>(sink: W, about: u64) -> io::Result<zstd::Encoder<'static, W>> {
    let mut enc = zstd::Encoder::new(sink, ZSTD_LEVEL)?;
    if about >= WORKERS_FROM_BYTES {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        enc.multithread(threads as u32)?;
    }
    enc.include_checksum(true)?;
    Ok(enc)
}

/// How many bytes of tar `entries` make, about (a header and the padded
/// content each; long names add a little): what decides
/// [`WORKERS_FROM_BYTES`].
pub fn tar_bytes<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> u64 {
    entries
        .into_iter()
        .map(|e| 512 + e.size().div_ceil(512) * 512)
        .sum()
}

/// The header of a member: `mtime`, uid/gid 0, no owner names.
fn member_header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// One head member (`release.json`, `release-delta.json`) as a zstd frame
/// of its own: its tar header, `json` and the padding, as an
/// [`ArtifactWriter`] writes them, and no end-of-archive marker. A full
/// artifact and its delta both carry the manifest: as a frame of its own it
/// is compressed once and its bytes written into both
/// ([`ArtifactWriter::after_frames`]).
pub fn member_frame(name: &str, json: &[u8], mtime: i64) -> Result<Vec<u8>> {
    raw_frame(&member_bytes(name, json, mtime)?.0)
}

/// A head member's tar bytes (header, `json`, padding; no end-of-archive
/// marker), and where `json` ends in them.
fn member_bytes(name: &str, json: &[u8], mtime: i64) -> Result<(Vec<u8>, usize)> {
    let mut tar = tar::Builder::new(Vec::with_capacity(json.len() + 2 * TAR_END));
    tar.mode(tar::HeaderMode::Deterministic);
    let mut h = member_header(
        tar::EntryType::Regular,
        0o644,
        json.len() as u64,
        mtime.max(0) as u64,
    );
    tar.append_data(&mut h, name, json)?;
    let mut raw = tar.into_inner()?;
    // into_inner ended the archive: this member is not the end.
    raw.truncate(raw.len() - TAR_END);
    let end = raw.len() - (512 - json.len() % 512) % 512;
    if end < json.len() || raw[end - json.len()..end] != *json {
        return Err(Error::internal(
            "a head member's data is not where it should be",
        ));
    }
    Ok((raw, end))
}

/// `bytes`, any stretch of a tar stream, as one zstd frame.
pub fn raw_frame(bytes: &[u8]) -> Result<Vec<u8>> {
    let sink = Vec::with_capacity(bytes.len() / 4 + 64);
    if (bytes.len() as u64) < WORKERS_FROM_BYTES {
        return Ok(small_frame(bytes, sink)?);
    }
    let mut enc = zstd_encoder(sink, bytes.len() as u64)?;
    enc.write_all(bytes)?;
    Ok(enc.finish()?)
}

/// The manifest's member as zstd frames, and the bytes of the tar stream
/// that must open the frame after them.
pub struct ManifestFrames {
    pub frames: Vec<Vec<u8>>,
    /// The member's padding, when its last frame ends with its data.
    pub lead: Vec<u8>,
}

impl ManifestFrames {
    /// The frames, to pass to [`ArtifactWriter::after_frames`].
    pub fn frames(&self) -> impl Iterator<Item = &[u8]> {
        self.frames.iter().map(Vec::as_slice)
    }
}

/// The manifest's member (`json`) as frames. With `last`, the end of
/// `json` and that end as one zstd frame ([`raw_frame`], made beforehand:
/// the build makes the part of the venv's and the wheels' entries while the
/// static step runs, and keeps it in the build cache), the member is what
/// comes before as one frame, then that frame, and its padding opens the
/// next frame; otherwise the member is one frame ([`member_frame`]). Either
/// way the frames decompress to the same bytes.
pub fn manifest_frames(
    json: &[u8],
    mtime: i64,
    last: Option<(&[u8], &[u8])>,
) -> Result<ManifestFrames> {
    let (bytes, end) = member_bytes(MANIFEST_NAME, json, mtime)?;
    match last {
        Some((raw, frame)) if !raw.is_empty() && raw.len() < json.len() && json.ends_with(raw) => {
            let cut = end - raw.len();
            Ok(ManifestFrames {
                frames: vec![raw_frame(&bytes[..cut])?, frame.to_vec()],
                lead: bytes[end..].to_vec(),
            })
        }
        _ => Ok(ManifestFrames {
            frames: vec![raw_frame(&bytes)?],
            lead: Vec::new(),
        }),
    }
}

impl ArtifactWriter {
    /// A writer of an artifact of any size (zstd with its workers).
    pub fn new(file: fs::File, format: Format, mtime: i64) -> Result<Self> {
        Self::after_frames(file, format, mtime, (&[], &[]), u64::MAX)
    }

    /// A writer whose artifact begins with `frames`, complete zstd frames
    /// of head members ([`member_frame`], [`manifest_frames`]); then a
    /// frame of its own opens with `lead` (the bytes of the tar stream the
    /// frames leave out, see [`ManifestFrames`]) and holds what is appended,
    /// `about` bytes of tar ([`tar_bytes`]). Frames are zstd only: a
    /// `.tar.gz` stays one gzip member.
    pub fn after_frames(
        file: fs::File,
        format: Format,
        mtime: i64,
        (frames, lead): (&[&[u8]], &[u8]),
        about: u64,
    ) -> Result<Self> {
        let mut sink = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        if !(frames.is_empty() && lead.is_empty()) && format != Format::Zst {
            return Err(Error::internal("separate frames in a gzip artifact"));
        }
        for frame in frames {
            sink.write_all(frame)?;
        }
        let compressor = match format {
            Format::Zst if about.saturating_add(lead.len() as u64) < WORKERS_FROM_BYTES => {
                let mut input = Vec::with_capacity((about as usize).saturating_add(lead.len()));
                input.extend_from_slice(lead);
                Compressor::SmallZst(input, sink)
            }
            Format::Zst => {
                let mut enc = zstd_encoder(sink, u64::MAX)?;
                enc.write_all(lead)?;
                Compressor::Zst(enc)
            }
            // GzBuilder without name or mtime: mtime 0 and OS "unknown".
            Format::Gz => Compressor::Gz(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .operating_system(255)
                    .write(sink, flate2::Compression::new(6)),
            ),
        };
        let mut tar = tar::Builder::new(Withhold {
            inner: compressor,
            held: Vec::with_capacity(2 * TAR_END),
        });
        tar.mode(tar::HeaderMode::Deterministic);
        tar.follow_symlinks(false);
        Ok(ArtifactWriter {
            tar,
            mtime: mtime.max(0) as u64,
        })
    }

    /// The mtime of the members appended from now on.
    pub fn set_mtime(&mut self, mtime: i64) {
        self.mtime = mtime.max(0) as u64;
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        member_header(kind, mode, size, self.mtime)
    }

    pub fn append_manifest(&mut self, json: &[u8]) -> Result<()> {
        self.append_head_member(MANIFEST_NAME, json)
    }

    /// A delta's first member, before its manifest.
    pub fn append_delta_header(&mut self, header: &DeltaHeader) -> Result<()> {
        self.append_head_member(DELTA_NAME, &header.to_json_bytes())
    }

    fn append_head_member(&mut self, name: &str, json: &[u8]) -> Result<()> {
        let mut h = self.header(tar::EntryType::Regular, 0o644, json.len() as u64);
        self.tar.append_data(&mut h, name, json)?;
        Ok(())
    }

    /// Append one manifest entry, reading a regular file's bytes from `source`
    /// and checking them against the entry while they stream.
    pub fn append(&mut self, entry: &Entry, source: &Path) -> Result<()> {
        match entry.kind {
            EntryType::Dir => {
                let mut h = self.header(tar::EntryType::Directory, 0o755, 0);
                self.tar
                    .append_data(&mut h, format!("{}/", entry.path), io::empty())?;
            }
            EntryType::Symlink => {
                let mut h = self.header(tar::EntryType::Symlink, 0o777, 0);
                let target = entry.target.as_deref().unwrap_or_default();
                self.tar.append_link(&mut h, &entry.path, target)?;
            }
            EntryType::File => {
                let size = entry.size();
                let mut h = self.header(tar::EntryType::Regular, entry.mode, size);
                let file = BufReader::new(fs::File::open(source)?);
                let mut reader = HashingReader::new(file, size);
                self.tar
                    .append_data(&mut h, &entry.path, &mut reader)
                    .map_err(|e| ArtifactError::FileChanged {
                        path: source.to_path_buf(),
                        message: format!("changed while the artifact was written: {e}"),
                    })?;
                let read = reader.bytes_read();
                if read != size || entry.sha256.as_deref() != Some(reader.digest().as_str()) {
                    return Err(ArtifactError::FileChanged {
                        path: source.to_path_buf(),
                        message: format!(
                            "changed while the artifact was written (expected {size} bytes with the hash recorded earlier, read {read}); if it is in the build cache, delete the cache entry and build again"
                        ),
                    }.into());
                }
            }
        }
        Ok(())
    }

    pub fn finish(self) -> Result<Written> {
        let mut withhold = self.tar.into_inner()?;
        // The end-of-archive marker: this stream ends here.
        withhold.inner.write_all(&withhold.held)?;
        Self::close(withhold.inner, None)
    }

    /// Finish this part of the tar stream without its end-of-archive marker,
    /// end its compressed frame, and append `tail`: a complete artifact of
    /// the same format whose tar stream holds the remaining members (written
    /// by another [`ArtifactWriter`] and [`finish`](Self::finish)ed). The
    /// result decompresses as one tar stream: zstd and gzip both read
    /// concatenated frames as one. This lets the build compress the venv and
    /// the wheels while the app's files are still being made.
    ///
    /// The file is synced (`fsync`) before this returns. The tail's bytes
    /// are copied by the kernel (`copy_file_range`), then read back from
    /// the file and hashed while its data goes to disk: the sha256 of the
    /// artifact is that of the bytes it holds, and neither waits for the
    /// other.
    pub fn finish_with_tail(self, tail: fs::File) -> Result<Written> {
        let withhold = self.tar.into_inner()?;
        if withhold.held != [0u8; TAR_END] {
            return Err(Error::internal(
                "the tar stream did not end in its end-of-archive marker",
            ));
        }
        let (buf, hasher, head) = withhold.inner.finish()?.into_parts();
        let file = buf.into_inner().map_err(|e| e.into_error())?;
        let copied = io::copy(&mut tail.file(), &mut file.file())?;
        let (synced, hashed) = std::thread::scope(|scope| {
            let synced = scope.spawn(|| file.sync_all());
            let hashed = hash_range(file.file(), head, copied, hasher);
            let synced = synced
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the fsync thread panicked")));
            (synced, hashed)
        });
        synced?;
        let sha256 = hashed.map_err(|e| crate::fsutil::fs_err_io(e, file.path()))?;
        Ok(Written {
            file,
            sha256,
            bytes: head + copied,
        })
    }

    fn close(
        compressor: Compressor<HashingWriter<BufWriter<fs::File>>>,
        tail: Option<fs::File>,
    ) -> Result<Written> {
        let mut hashing = compressor.finish()?;
        if let Some(mut tail) = tail {
            use std::io::Seek;
            tail.seek(io::SeekFrom::Start(0))?;
            io::copy(&mut tail, &mut hashing)?;
        }
        let (buf, sha256, bytes) = hashing.finish();
        let file = buf.into_inner().map_err(|e| e.into_error())?;
        Ok(Written {
            file,
            sha256,
            bytes,
        })
    }
}

/// `hasher` taken on over `len` bytes of `file` from `offset`; the digest.
fn hash_range(
    file: &std::fs::File,
    offset: u64,
    len: u64,
    mut hasher: Sha256,
) -> io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        let n = file.read_at(&mut buf[..want], offset + done)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the artifact is shorter than what was written",
            ));
        }
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Open an artifact and return its format and a decompressing reader.
pub fn open(path: &Path) -> Result<(Format, Box<dyn Read>)> {
    let file = BufReader::with_capacity(1 << 20, fs::File::open(path)?);
    decompress(path, file)
}

/// Recognise the compression of a buffered stream by its first bytes and wrap
/// it in the matching decoder. `path` names the artifact in errors.
pub fn decompress<'a, R: io::BufRead + 'a>(
    path: &Path,
    reader: R,
) -> Result<(Format, Box<dyn Read + 'a>)> {
    let (format, decoder) = Decoder::new(path, reader)?;
    Ok((format, Box::new(decoder)))
}

/// A zstd or gzip decoder over a buffered reader. Both read every frame
/// (gzip member) of a stream, one after the other.
pub enum Decoder<R: io::BufRead> {
    Zst(zstd::Decoder<'static, R>),
    Gz(flate2::bufread::MultiGzDecoder<R>),
}

impl<R: io::BufRead> Decoder<R> {
    /// Sniff the format from the first bytes; `path` names the artifact in errors.
    pub fn new(path: &Path, mut reader: R) -> Result<(Format, Decoder<R>)> {
        let magic = reader.fill_buf()?.get(..4).map(<[u8]>::to_vec);
        let not_artifact = |reason: &str| -> Error {
            ArtifactError::NotAnArtifact {
                path: path.to_path_buf(),
                reason: reason.into(),
            }
            .into()
        };
        let Some(magic) = magic else {
            return Err(not_artifact("shorter than any compressed archive"));
        };
        let format = Format::sniff(&magic).ok_or_else(|| not_artifact("not zstd or gzip data"))?;
        let decoder = match format {
            Format::Zst => Decoder::Zst(zstd::Decoder::with_buffer(reader)?),
            Format::Gz => Decoder::Gz(flate2::bufread::MultiGzDecoder::new(reader)),
        };
        Ok((format, decoder))
    }

    /// The reader underneath, positioned wherever decoding stopped.
    pub fn into_inner(self) -> R {
        match self {
            Decoder::Zst(d) => d.finish(),
            Decoder::Gz(d) => d.into_inner(),
        }
    }
}

impl<R: io::BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Zst(d) => d.read(buf),
            Decoder::Gz(d) => d.read(buf),
        }
    }
}

/// Decompressed data is handed over in chunks of this size.
const CHUNK: usize = 256 * 1024;

/// A check that sees every byte of the artifact file, in order, beside its
/// sha256 (a signature streamed with an artifact from a URL).
pub trait Observer: Send {
    fn update(&mut self, bytes: &[u8]);
    /// The verdict once every byte was seen; `Err` says why not.
    fn finish(self: Box<Self>) -> std::result::Result<(), ObserverVerdict>;
}

/// Why an [`Observer`] rejects the bytes it saw (its own error type).
pub type ObserverVerdict = Box<dyn std::error::Error + Send + Sync>;

/// Passes reads through, showing every byte to an [`Observer`].
struct Observed<R> {
    inner: R,
    observer: Option<Box<dyn Observer>>,
}

impl<R: Read> Read for Observed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(observer) = &mut self.observer {
            observer.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// What [`Background::finish`] found over the whole artifact file.
#[derive(Debug)]
pub struct Finished {
    pub sha256: String,
    /// The observer's verdict, when there was one.
    pub observed: Option<std::result::Result<(), ObserverVerdict>>,
}

/// An artifact decompressed on a background thread, so that decompression
/// runs beside whatever consumes the stream (hashing and writing files on
/// install). The thread also hashes every byte of the artifact file, the
/// compressed tail after the tar stream included: [`Background::finish`]
/// returns the file's sha256. Memory stays bounded: at most a few chunks are
/// in flight.
pub struct Background {
    chunks: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
    worker: Option<std::thread::JoinHandle<io::Result<Finished>>>,
}

impl Background {
    pub fn open(path: &Path) -> Result<(Format, Background)> {
        Self::start(path, fs::File::open(path)?, None)
    }

    /// Decompress the artifact `raw` gives (a file, a download), showing its
    /// bytes to `observer`; `name` names it in errors.
    pub fn start<R: Read + Send + 'static>(
        name: &Path,
        raw: R,
        observer: Option<Box<dyn Observer>>,
    ) -> Result<(Format, Background)> {
        let raw = HashingReader::new(
            Observed {
                inner: raw,
                observer,
            },
            u64::MAX,
        );
        let (format, mut decoder) = Decoder::new(name, BufReader::with_capacity(1 << 20, raw))?;
        let (send, chunks) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
        let worker = std::thread::spawn(move || -> io::Result<Finished> {
            loop {
                let mut chunk = vec![0u8; CHUNK];
                let mut filled = 0;
                while filled < CHUNK {
                    match decoder.read(&mut chunk[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let what = e.to_string();
                            let _ = send.send(Err(e));
                            return Err(io::Error::other(what));
                        }
                    }
                }
                if filled == 0 {
                    break;
                }
                chunk.truncate(filled);
                if send.send(Ok(chunk)).is_err() {
                    // The reader is gone (it failed); stop quietly.
                    return Err(io::Error::other("the artifact was not read to the end"));
                }
            }
            drop(send);
            // The bytes the buffer read ahead were hashed already; hash the rest.
            let mut raw = decoder.into_inner().into_inner();
            io::copy(&mut raw, &mut io::sink())?;
            let (observed, sha256) = raw.into_parts();
            Ok(Finished {
                sha256,
                observed: observed.observer.map(|o| o.finish()),
            })
        });
        Ok((
            format,
            Background {
                chunks,
                chunk: Vec::new(),
                pos: 0,
                done: false,
                worker: Some(worker),
            },
        ))
    }

    /// Read (and drop) whatever the tar reader left, wait for the thread and
    /// return the sha256 of the whole artifact file (and the observer's verdict).
    pub fn finish(mut self) -> io::Result<Finished> {
        io::copy(&mut self, &mut io::sink())?;
        let worker = self.worker.take().expect("finish is called once");
        worker
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the decompression thread panicked")))
    }
}

impl Read for Background {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            match self.chunks.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Parse a `.sha256` file in `sha256sum --check` format and return the digest
/// it lists for `file_name` (`<hex>  <name>` or `<hex> *<name>`, one per line).
pub fn parse_checksum_file(
    text: &str,
    file_name: &str,
) -> std::result::Result<String, ChecksumFileProblem> {
    let mut names = Vec::new();
    for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        let (digest, name) = line
            .split_once(' ')
            .ok_or_else(|| ChecksumFileProblem::Malformed(line.to_string()))?;
        let name = name
            .strip_prefix(' ')
            .or_else(|| name.strip_prefix('*'))
            .unwrap_or(name);
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ChecksumFileProblem::NotADigest(digest.to_string()));
        }
        if name == file_name || name.rsplit('/').next() == Some(file_name) {
            return Ok(digest.to_ascii_lowercase());
        }
        names.push(name.to_string());
    }
    Err(ChecksumFileProblem::NotListed {
        file: file_name.to_string(),
        names,
    })
}

/// Why a `.sha256` file gives no digest for the artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChecksumFileProblem {
    /// A line that is not `<sha256>  <file name>`.
    Malformed(String),
    NotADigest(String),
    /// The file names other files only.
    NotListed {
        file: String,
        names: Vec<String>,
    },
}

impl std::fmt::Display for ChecksumFileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChecksumFileProblem::Malformed(line) => {
                write!(f, "line {line:?} is not `<sha256>  <file name>`")
            }
            ChecksumFileProblem::NotADigest(digest) => {
                write!(f, "{digest:?} is not a sha256 (64 hex digits)")
            }
            ChecksumFileProblem::NotListed { file, names } => write!(
                f,
                "it lists no digest for {file} (it names: {})",
                names.join(", ")
            ),
        }
    }
}

/// The largest GNU long name, long link name or PAX extended header a member
/// may carry. A path is at most 4096 bytes (`manifest::check_path`); this
/// leaves room for any honest header. The `tar` crate reads these headers whole
/// into memory whatever size they declare (a few compressed bytes can declare
/// gigabytes), so archives are read in its raw mode ([`raw_entries`]) and the
/// headers are read here, bounded, by [`Extensions`].
pub const MAX_EXTENSION_BYTES: u64 = 64 * 1024;

/// The members of an archive as the `tar` crate reads them in raw mode: GNU
/// long names / long links and PAX headers come as members of their own, for
/// [`Extensions`] to read within [`MAX_EXTENSION_BYTES`].
pub fn raw_entries<'a, R: Read>(archive: &'a mut tar::Archive<R>) -> Result<tar::Entries<'a, R>> {
    Ok(archive.entries()?.raw(true))
}

/// Why an extension header (GNU long name or link, PAX header) is refused.
/// `what` names the kind of header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionProblem {
    PaxGlobal,
    UnreadableSize {
        what: &'static str,
        error: String,
    },
    TooLarge {
        what: &'static str,
        size: u64,
    },
    Unreadable {
        what: &'static str,
        error: String,
    },
    Truncated {
        what: &'static str,
        read: u64,
        size: u64,
    },
    Malformed {
        what: &'static str,
        error: String,
    },
    UnsupportedRecord {
        what: &'static str,
        key: String,
    },
    /// A second long name for one member.
    Twice {
        what: &'static str,
    },
}

impl std::fmt::Display for ExtensionProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use ExtensionProblem::*;
        match self {
            PaxGlobal => f.write_str(
                "a PAX global header; artifacts have none (it would apply to every later member)",
            ),
            UnreadableSize { what, error } => write!(f, "{what} with an unreadable size: {error}"),
            TooLarge { what, size } => write!(
                f,
                "{what} of {size} bytes, more than the {MAX_EXTENSION_BYTES} allowed (a path is at most 4096 bytes); refused before reading it"
            ),
            Unreadable { what, error } => write!(
                f,
                "{what} cannot be read (the archive is corrupt or truncated): {error}"
            ),
            Truncated { what, read, size } => write!(
                f,
                "{what} ends after {read} of {size} bytes: the archive is truncated"
            ),
            Malformed { what, error } => write!(f, "{what} with a malformed record: {error}"),
            UnsupportedRecord { what, key } => write!(
                f,
                "{what} with the record `{key}`, which is not supported (only path, linkpath, times and owners; artifacts have no PAX headers at all)"
            ),
            Twice { what } => write!(f, "{what} for a member that already has a long name"),
        }
    }
}

/// The long path and link name that extension headers (GNU `L`/`K`, PAX `x`)
/// give the member that follows them, read with a size limit.
#[derive(Debug, Default)]
pub struct Extensions {
    pub path: Option<Vec<u8>>,
    pub link: Option<Vec<u8>>,
    pending: bool,
}

impl Extensions {
    /// The records of a PAX extended header: path and linkpath are kept,
    /// times and owners ignored, anything else refused.
    fn absorb_pax(
        &mut self,
        what: &'static str,
        data: &[u8],
    ) -> std::result::Result<(), ExtensionProblem> {
        for record in tar::PaxExtensions::new(data) {
            let record = record.map_err(|e| ExtensionProblem::Malformed {
                what,
                error: e.to_string(),
            })?;
            let slot = match record.key_bytes() {
                b"path" => &mut self.path,
                b"linkpath" => &mut self.link,
                b"mtime" | b"atime" | b"ctime" | b"uid" | b"gid" | b"uname" | b"gname" => continue,
                key => {
                    return Err(ExtensionProblem::UnsupportedRecord {
                        what,
                        key: String::from_utf8_lossy(key).escape_debug().to_string(),
                    })
                }
            };
            if slot.is_some() {
                return Err(ExtensionProblem::Twice { what });
            }
            *slot = Some(record.value_bytes().to_vec());
        }
        Ok(())
    }

    /// When `entry` is an extension header, read it and return `Ok(true)`: its
    /// names apply to the next member. `Ok(false)` for any other member.
    /// `Err(rule)` refuses the archive: a header larger than
    /// [`MAX_EXTENSION_BYTES`] (refused before any of it is read), a PAX
    /// global header, a PAX record other than path, linkpath, times and
    /// owners (`size` or `GNU.sparse.*` would change how the stream is read),
    /// or two long names for one member.
    pub fn absorb<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
    ) -> std::result::Result<bool, ExtensionProblem> {
        let kind = entry.header().entry_type();
        let what = if kind.is_gnu_longname() {
            "a GNU long name"
        } else if kind.is_gnu_longlink() {
            "a GNU long link name"
        } else if kind.is_pax_local_extensions() {
            "a PAX extended header"
        } else if kind.is_pax_global_extensions() {
            return Err(ExtensionProblem::PaxGlobal);
        } else {
            return Ok(false);
        };
        let size = entry
            .header()
            .entry_size()
            .map_err(|e| ExtensionProblem::UnreadableSize {
                what,
                error: e.to_string(),
            })?;
        if size > MAX_EXTENSION_BYTES {
            return Err(ExtensionProblem::TooLarge { what, size });
        }
        let mut data = Vec::with_capacity(size as usize);
        entry
            .take(size)
            .read_to_end(&mut data)
            .map_err(|e| ExtensionProblem::Unreadable {
                what,
                error: e.to_string(),
            })?;
        if data.len() as u64 != size {
            return Err(ExtensionProblem::Truncated {
                what,
                read: data.len() as u64,
                size,
            });
        }
        if kind.is_pax_local_extensions() {
            self.absorb_pax(what, &data)?;
        } else {
            let slot = if kind.is_gnu_longname() {
                &mut self.path
            } else {
                &mut self.link
            };
            if slot.is_some() {
                return Err(ExtensionProblem::Twice { what });
            }
            while data.last() == Some(&0) {
                data.pop();
            }
            *slot = Some(data);
        }
        self.pending = true;
        Ok(true)
    }

    /// The names for the member that follows; clears them.
    pub fn take(&mut self) -> Extensions {
        std::mem::take(self)
    }

    /// Whether an extension header was read and no member has followed it yet.
    pub fn pending(&self) -> bool {
        self.pending
    }
}

/// Read the manifest from the first member of an open archive (entries from
/// [`raw_entries`]: an extension header first is refused unread).
pub fn read_manifest_entry<R: Read>(
    path: &Path,
    entries: &mut tar::Entries<'_, R>,
) -> Result<(Manifest, Vec<u8>)> {
    let first = first_member(path, entries)?;
    manifest_from_member(path, first)
}

/// The first member of an open archive, or why there is none.
fn first_member<'a, R: Read>(
    path: &Path,
    entries: &mut tar::Entries<'a, R>,
) -> Result<tar::Entry<'a, R>> {
    let bad = |reason: String| bad_manifest(path, reason);
    entries
        .next()
        .ok_or_else(|| bad("the archive is empty; release.json must be its first member".into()))?
        .map_err(|e| bad(format!("cannot read the first archive member: {e}")))
}

fn bad_manifest(path: &Path, reason: String) -> Error {
    ArtifactError::BadManifest {
        path: path.to_path_buf(),
        reason,
    }
    .into()
}

/// Read `member` as the artifact's `release.json`.
fn manifest_from_member<R: Read>(
    path: &Path,
    first: tar::Entry<'_, R>,
) -> Result<(Manifest, Vec<u8>)> {
    let bad = |reason: String| bad_manifest(path, reason);
    let name = first.path_bytes().into_owned();
    if name != MANIFEST_NAME.as_bytes() {
        return Err(bad(format!(
            "the first member is {:?}, not {MANIFEST_NAME}",
            String::from_utf8_lossy(&name)
        )));
    }
    if first.header().entry_type() != tar::EntryType::Regular {
        return Err(bad(format!("{MANIFEST_NAME} is not a regular file")));
    }
    let size = first.header().size().map_err(|e| bad(e.to_string()))?;
    if size > MAX_MANIFEST_BYTES {
        return Err(bad(format!(
            "{MANIFEST_NAME} declares {size} bytes, more than the {MAX_MANIFEST_BYTES} allowed"
        )));
    }
    let mut json = Vec::with_capacity(size.min(1 << 20) as usize);
    first
        .take(MAX_MANIFEST_BYTES)
        .read_to_end(&mut json)
        .map_err(|e| bad(format!("cannot read {MANIFEST_NAME}: {e}")))?;
    let manifest = Manifest::from_json(&json).map_err(|why| bad(why.to_string()))?;
    Ok((manifest, json))
}

/// Read only the manifest of an artifact, without unpacking the rest (of a
/// delta too: its manifest is the new release's, complete).
pub fn read_manifest(path: &Path) -> Result<(Format, Manifest)> {
    let (format, head) = read_head_of(path)?;
    Ok((format, head.manifest))
}

/// Read the head of an artifact file: its manifest, and whether it is a delta.
pub fn read_head_of(path: &Path) -> Result<(Format, Head)> {
    let (format, reader) = open(path)?;
    let mut archive = tar::Archive::new(reader);
    let mut entries = raw_entries(&mut archive)?;
    let head = read_head(path, &mut entries)?;
    Ok((format, head))
}

/// The first member of a delta artifact, before its `release.json`.
pub const DELTA_NAME: &str = "release-delta.json";
/// A delta header is a few hundred bytes; a larger one is refused unread.
const MAX_DELTA_HEADER_BYTES: u64 = 64 * 1024;

/// `release-delta.json`: which release a delta artifact applies to. The
/// delta's `release.json` is the new release's complete manifest; its
/// members are every directory and symlink and only the files that are not
/// in the base release with the same path, mode, size and sha256. Those
/// others are taken from the base release as installed on the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaHeader {
    pub format: u32,
    pub base: DeltaBase,
}

/// The release a delta is taken against, as its manifest names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaBase {
    pub app: String,
    pub commit: String,
    pub release: String,
    pub tree_sha256: String,
}

impl DeltaHeader {
    pub fn of(base: &Manifest) -> DeltaHeader {
        DeltaHeader {
            format: crate::manifest::FORMAT,
            base: DeltaBase {
                app: base.app.clone(),
                commit: base.commit.clone(),
                release: base.release.clone(),
                tree_sha256: base.tree_sha256.clone(),
            },
        }
    }

    pub fn to_json_bytes(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec_pretty(self).expect("delta header serialises");
        json.push(b'\n');
        json
    }

    fn parse(json: &[u8]) -> std::result::Result<DeltaHeader, DeltaHeaderProblem> {
        let header: DeltaHeader = serde_json::from_slice(json).map_err(DeltaHeaderProblem::Json)?;
        if header.format != crate::manifest::FORMAT {
            return Err(DeltaHeaderProblem::Format {
                format: header.format,
                supported: crate::manifest::FORMAT,
            });
        }
        let base = &header.base;
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(&base.commit, 40) || base.release != base.commit[..12] {
            return Err(DeltaHeaderProblem::BaseCommit {
                commit: base.commit.clone(),
                release: base.release.clone(),
            });
        }
        if !hex(&base.tree_sha256, 64) {
            return Err(DeltaHeaderProblem::BaseTree {
                tree_sha256: base.tree_sha256.clone(),
            });
        }
        Ok(header)
    }
}

/// What an artifact's first members say: the manifest (and its bytes as
/// read), and for a delta artifact, its header.
#[derive(Debug)]
pub struct Head {
    pub manifest: Manifest,
    pub json: Vec<u8>,
    pub delta: Option<DeltaHeader>,
}

/// Read the head of an open archive (entries from [`raw_entries`]): a
/// delta's `release-delta.json` when it comes first, then `release.json`.
pub fn read_head<R: Read>(path: &Path, entries: &mut tar::Entries<'_, R>) -> Result<Head> {
    let bad = |reason: String| bad_manifest(path, reason);
    let first = first_member(path, entries)?;
    if first.path_bytes().as_ref() != DELTA_NAME.as_bytes() {
        let (manifest, json) = manifest_from_member(path, first)?;
        return Ok(Head {
            manifest,
            json,
            delta: None,
        });
    }
    if first.header().entry_type() != tar::EntryType::Regular {
        return Err(bad(format!("{DELTA_NAME} is not a regular file")));
    }
    let size = first.header().size().map_err(|e| bad(e.to_string()))?;
    if size > MAX_DELTA_HEADER_BYTES {
        return Err(bad(format!(
            "{DELTA_NAME} declares {size} bytes, more than the {MAX_DELTA_HEADER_BYTES} allowed"
        )));
    }
    let mut json = Vec::new();
    first
        .take(MAX_DELTA_HEADER_BYTES)
        .read_to_end(&mut json)
        .map_err(|e| bad(format!("cannot read {DELTA_NAME}: {e}")))?;
    let delta = DeltaHeader::parse(&json).map_err(|why| bad(format!("{DELTA_NAME}: {why}")))?;
    let second = entries
        .next()
        .ok_or_else(|| bad(format!("{DELTA_NAME} is not followed by {MANIFEST_NAME}")))?
        .map_err(|e| bad(format!("cannot read the member after {DELTA_NAME}: {e}")))?;
    let (manifest, json) = manifest_from_member(path, second)?;
    if delta.base.app != manifest.app {
        return Err(bad(format!(
            "it is a delta of app {:?}, but its manifest is of app {:?}",
            delta.base.app, manifest.app
        )));
    }
    Ok(Head {
        manifest,
        json,
        delta: Some(delta),
    })
}

/// Write `<artifact>.sha256` in `sha256sum --check` format, atomically.
pub fn write_checksum_file(artifact: &Path, sha256: &str) -> Result<PathBuf> {
    let name = artifact
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = PathBuf::from(format!("{}.sha256", artifact.display()));
    crate::fsutil::write_atomic(&path, format!("{sha256}  {name}\n").as_bytes())?;
    Ok(path)
}

/// Rename a finished archive from its temporary name to `path` and write its
/// `.sha256` beside it (whose write syncs the directory, both renames with
/// it). When the checksum cannot be written the archive is removed again:
/// an archive without its checksum is not left looking finished.
pub fn place_with_checksum(tmp: tempfile::TempPath, path: &Path, sha256: &str) -> Result<()> {
    tmp.persist(path)
        .map_err(|e| crate::fsutil::fs_err_io(e.error, path))?;
    if let Err(e) = write_checksum_file(path, sha256) {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// The container on its own, in process: the deterministic writer, the
/// format sniffing, the manifest-first rule, checksum files and the bounded
/// extension headers.
#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(files: Vec<Entry>) -> Manifest {
        crate::manifest::for_tests(files)
    }

    /// Write a two-entry artifact from a tree in `dir`; its path.
    fn write(dir: &Path, format: Format, name: &str) -> (PathBuf, Manifest) {
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("app")).unwrap();
        std::fs::write(tree.join("app/a.py"), b"print(1)\n").unwrap();
        let (sha, size) = hash_file(&tree.join("app/a.py")).unwrap();
        let m = manifest(vec![
            Entry::dir("app".into()),
            Entry::file("app/a.py".into(), false, size, sha),
        ]);
        let path = dir.join(name);
        let file = fs::File::create(&path).unwrap();
        let mut writer = ArtifactWriter::new(file, format, m.source_date_epoch).unwrap();
        writer.append_manifest(&m.to_json_bytes()).unwrap();
        for e in &m.files {
            writer.append(e, &tree.join(&e.path)).unwrap();
        }
        let written = writer.finish().unwrap();
        assert_eq!(written.sha256, hash_file(&path).unwrap().0);
        (path, m)
    }

    #[test]
    fn the_same_entries_give_the_same_bytes_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        for format in [Format::Zst, Format::Gz] {
            let (a, m) = write(dir.path(), format, &format!("a.tar.{format}"));
            // Another tree with other mtimes: the same bytes all the same.
            std::thread::sleep(std::time::Duration::from_millis(1100));
            let other = tempfile::tempdir().unwrap();
            let (b, _) = write(other.path(), format, &format!("b.tar.{format}"));
            assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap(), "{format}");
            let (found, read) = read_manifest(&a).unwrap();
            assert_eq!((found, read), (format, m));
        }
    }

    #[test]
    fn only_zstd_and_gzip_are_artifacts() {
        assert_eq!(Format::sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Some(Format::Zst));
        assert_eq!(Format::sniff(&[0x1f, 0x8b, 8, 0]), Some(Format::Gz));
        assert_eq!(Format::sniff(b"PK\x03\x04"), None);
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("a.tar.zst");
        fs::write(&zip, b"PK\x03\x04 not an artifact").unwrap();
        let err = read_manifest(&zip).unwrap_err().to_string();
        assert!(err.contains("not a release artifact"), "{err}");
        fs::write(&zip, b"").unwrap();
        assert!(read_manifest(&zip).is_err());
    }

    #[test]
    fn the_manifest_must_be_the_first_member() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Directory);
        tar.append_data(&mut h, "app/", &[][..]).unwrap();
        let bytes = tar.into_inner().unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut entries = raw_entries(&mut archive).unwrap();
        let err = read_manifest_entry(Path::new("a.tar"), &mut entries)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not release.json"), "{err}");
    }

    #[test]
    fn checksum_files_name_the_artifact() {
        let hex = "ab".repeat(32);
        assert_eq!(
            parse_checksum_file(&format!("{hex}  a.tar.zst\n"), "a.tar.zst"),
            Ok(hex.clone())
        );
        assert_eq!(
            parse_checksum_file(&format!("{}  a.tar.zst\n", hex.to_uppercase()), "a.tar.zst"),
            Ok(hex.clone())
        );
        assert_eq!(
            parse_checksum_file(&format!("{hex}  b.tar.zst\n"), "a.tar.zst"),
            Err(ChecksumFileProblem::NotListed {
                file: "a.tar.zst".into(),
                names: vec!["b.tar.zst".into()],
            })
        );
        assert_eq!(
            parse_checksum_file("nonsense\n", "a.tar.zst"),
            Err(ChecksumFileProblem::Malformed("nonsense".into()))
        );
        assert_eq!(
            parse_checksum_file("abc  a.tar.zst\n", "a.tar.zst"),
            Err(ChecksumFileProblem::NotADigest("abc".into()))
        );
    }

    /// A raw GNU long-name header declaring `size` bytes, followed by `data`
    /// (and, but for a truncated stream, the end of the archive).
    fn long_name(size: u64, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(size);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
        out
    }

    fn absorb_first(bytes: &[u8]) -> std::result::Result<(bool, Extensions), ExtensionProblem> {
        let mut archive = tar::Archive::new(bytes);
        let mut entries = raw_entries(&mut archive).unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        let mut names = Extensions::default();
        let absorbed = names.absorb(&mut entry)?;
        Ok((absorbed, names))
    }

    #[test]
    fn extension_headers_are_bounded_and_read() {
        let (absorbed, names) = absorb_first(&long_name(9, b"app/x.py\0")).unwrap();
        assert!(absorbed);
        assert_eq!(names.path.as_deref(), Some(&b"app/x.py"[..]));
        let huge = MAX_EXTENSION_BYTES + 1;
        assert!(matches!(
            absorb_first(&long_name(huge, b"")),
            Err(ExtensionProblem::TooLarge { size, .. }) if size == huge
        ));
        let mut cut = long_name(600, b"short");
        cut.truncate(512 + 5);
        assert!(matches!(
            absorb_first(&cut),
            Err(ExtensionProblem::Truncated { .. } | ExtensionProblem::Unreadable { .. })
        ));
    }
}
