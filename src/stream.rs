//! Glue between the synchronous archive code and the async store: writers and readers that hash
//! and count what passes through them.

use std::io::{self, Read, Write};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::store::{CHUNK_SIZE, Chunk};

/// Cuts a byte stream into chunks of `CHUNK_SIZE` for the uploader, hashing and counting it on
/// the way.
/// `finish` sends the last part and the end marker; dropping it without `finish` makes the
/// uploader abort, so a failed archive is never stored.
pub struct ChunkWriter {
    sender: mpsc::Sender<Chunk>,
    buffer: BytesMut,
    hasher: Sha256,
    bytes: u64,
}

impl ChunkWriter {
    pub fn new(sender: mpsc::Sender<Chunk>) -> Self {
        ChunkWriter {
            sender,
            buffer: BytesMut::with_capacity(CHUNK_SIZE),
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn send(&mut self, chunk: Chunk) -> io::Result<()> {
        self.sender
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    /// Sends what is buffered and the end marker; returns (bytes, sha256 hex).
    pub fn finish(mut self) -> io::Result<(u64, String)> {
        if !self.buffer.is_empty() {
            let part = self.buffer.split().freeze();
            self.send(Chunk::Data(part))?;
        }
        self.send(Chunk::End)?;
        Ok((self.bytes, hex::encode(self.hasher.finalize_reset())))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK_SIZE - self.buffer.len();
        let taken = &data[..data.len().min(room)];
        self.buffer.extend_from_slice(taken);
        self.hasher.update(taken);
        self.bytes += taken.len() as u64;
        if self.buffer.len() == CHUNK_SIZE {
            let part: Bytes = self.buffer.split().freeze();
            self.buffer.reserve(CHUNK_SIZE);
            self.send(Chunk::Data(part))?;
        }
        Ok(taken.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Reads the rest to the end, then returns (bytes, sha256 hex).
    pub fn finish(mut self) -> io::Result<(u64, String)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.bytes, hex::encode(self.hasher.finalize())))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}
