//! Framing: every ZooKeeper message is a 4-byte big-endian length followed by that many bytes.
//!
//! [`FrameReader`] collects bytes as they arrive from the socket and hands out whole frames.
//! A length prefix above the maximum frame size, or negative, is an error at once: the reader
//! never reserves memory on a peer's word, it only ever holds bytes that really arrived.

use super::jute::DecodeError;

/// The largest frame accepted from a server: ZooKeeper's client-side default (4 × 1 MiB, the
/// Java client's `jute.maxbuffer` for incoming packets). A reply carrying 1 MiB of data, or
/// listing tens of thousands of children, fits.
pub(crate) const MAX_FRAME: usize = 4 * 1024 * 1024;

/// Starts a frame in `buf`: a length placeholder, filled in by [`finish_frame`].
pub(crate) fn start_frame(buf: &mut Vec<u8>) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    at
}

/// Writes the length of the frame started at `at`.
pub(crate) fn finish_frame(buf: &mut [u8], at: usize) {
    let len = buf.len() - at - 4;
    let len = i32::try_from(len).unwrap_or(i32::MAX);
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Splits a byte stream into frames.
#[derive(Debug)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    pos: usize,
    max: usize,
}

impl FrameReader {
    pub fn new(max: usize) -> FrameReader {
        FrameReader {
            buf: Vec::with_capacity(64 * 1024),
            pos: 0,
            max,
        }
    }

    /// The buffer to read into; compacted and with room for at least `min` more bytes.
    pub fn space(&mut self, min: usize) -> &mut Vec<u8> {
        if self.pos > 0 && (self.pos == self.buf.len() || self.pos > self.buf.capacity() / 2) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < min {
            self.buf.reserve(min);
        }
        &mut self.buf
    }

    /// Appends received bytes (for callers that do not read into [`space`](Self::space)).
    #[cfg(test)]
    pub fn push(&mut self, data: &[u8]) {
        self.space(data.len()).extend_from_slice(data);
    }

    /// The next whole frame's payload, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, DecodeError> {
        let avail = &self.buf[self.pos..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]);
        let n = usize::try_from(len).ok().filter(|n| *n <= self.max).ok_or(
            DecodeError::FrameTooLarge {
                len: i64::from(len),
                max: self.max,
            },
        )?;
        if avail.len() < 4 + n {
            return Ok(None);
        }
        let start = self.pos + 4;
        self.pos = start + n;
        Ok(Some(&self.buf[start..start + n]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads() {
        let mut out = Vec::new();
        for payload in [&b"hello"[..], b"", b"world!"] {
            let at = start_frame(&mut out);
            out.extend_from_slice(payload);
            finish_frame(&mut out, at);
        }
        let mut r = FrameReader::new(16);
        let mut got = Vec::new();
        for b in out {
            r.push(&[b]);
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f.to_vec());
            }
        }
        assert_eq!(got, vec![b"hello".to_vec(), Vec::new(), b"world!".to_vec()]);
    }

    #[test]
    fn oversized_and_negative_lengths_fail_at_once() {
        let mut r = FrameReader::new(16);
        r.push(&17i32.to_be_bytes());
        assert!(matches!(
            r.next_frame(),
            Err(DecodeError::FrameTooLarge { .. })
        ));
        let mut r = FrameReader::new(16);
        r.push(&(-5i32).to_be_bytes());
        assert!(r.next_frame().is_err());
    }
}
