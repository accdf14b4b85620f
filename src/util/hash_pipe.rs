//! SHA-256 on a helper thread, so hashing an upload overlaps with receiving and writing it
//! (on this machine hashing alone took more than half of an upload's CPU time).
//!
//! Thread: one `sha256` thread per `HashPipe`, living as long as the pipe — one per file being
//! received, so at most `WORKERS` at once (an upload is received on its HTTP worker). Queue: a
//! `sync_channel` of `DEPTH` chunks of `CHUNK` bytes; when it is full, `update` blocks until the
//! hasher catches up (back-pressure: the upload then runs at hashing speed, never faster). Memory
//! per pipe is bounded by `(DEPTH + 2) * CHUNK` (queued, being hashed, being filled); finished
//! chunks are handed back for reuse.
//! Must never: change or reorder bytes, or grow without bound.

use std::io;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

/// Bytes per chunk handed to the hashing thread.
pub const CHUNK: usize = 256 * 1024;
/// Chunks that may wait for the hashing thread.
pub const DEPTH: usize = 4;

pub struct HashPipe {
    tx: Option<SyncSender<Vec<u8>>>,
    recycled: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<[u8; 32]>>,
    buf: Vec<u8>,
}

impl HashPipe {
    pub fn new() -> io::Result<HashPipe> {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(DEPTH);
        let (back_tx, recycled) = mpsc::sync_channel::<Vec<u8>>(DEPTH + 2);
        let thread = std::thread::Builder::new().name("sha256".into()).stack_size(256 * 1024).spawn(move || {
            let mut hasher = Sha256::new();
            for chunk in rx {
                hasher.update(&chunk);
                // Full (the owner stopped taking buffers back): let this one go.
                let _ = back_tx.try_send(chunk);
            }
            hasher.finalize().into()
        })?;
        Ok(HashPipe { tx: Some(tx), recycled, thread: Some(thread), buf: Vec::with_capacity(CHUNK) })
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == CHUNK {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        let next = match self.recycled.try_recv() {
            Ok(mut v) => {
                v.clear();
                v
            }
            Err(_) => Vec::with_capacity(CHUNK),
        };
        let full = std::mem::replace(&mut self.buf, next);
        if let Some(tx) = &self.tx {
            // The thread only stops when `tx` is dropped, so a send cannot fail while we hold it.
            let _ = tx.send(full);
        }
    }

    /// The digest of everything passed to `update`, as lower-case hex.
    pub fn finish(mut self) -> io::Result<String> {
        if !self.buf.is_empty() {
            self.flush();
        }
        drop(self.tx.take());
        let digest = self
            .thread
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| io::Error::other("the hashing thread panicked"))?;
        Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_digest_as_hashing_in_one_go() {
        for size in [0usize, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17, (DEPTH + 5) * CHUNK] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let expected: String = Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
            let mut pipe = HashPipe::new().unwrap();
            // Irregular pieces, as a multipart parser hands them out.
            let mut pos = 0;
            let mut k = 0;
            while pos < data.len() {
                let n = [1usize, 7, 65536, 13, 100_000][k % 5].min(data.len() - pos);
                pipe.update(&data[pos..pos + n]);
                pos += n;
                k += 1;
            }
            assert_eq!(pipe.finish().unwrap(), expected, "size {size}");
        }
    }
}
