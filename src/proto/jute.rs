//! Jute, ZooKeeper's record encoding: big-endian integers, one-byte booleans, and buffers,
//! strings and vectors prefixed by a signed 32-bit length (`-1` meaning null).
//!
//! Encoding appends to a `Vec<u8>` ([`JuteWrite`]). Decoding reads from a borrowed frame
//! ([`Reader`]) and is bounds-checked: every length is compared with the bytes that are really
//! left before anything is allocated, so a hostile length prefix can never make it allocate
//! more than the frame it already holds. Every failure is a [`DecodeError`], never a panic.

use crate::types::{Acl, Stat};

/// Why a frame could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The record needs more bytes than the frame has.
    Truncated { need: usize, left: usize },
    /// A length or count prefix is negative (and not the null marker) or larger than the frame.
    BadLength { what: &'static str, len: i64 },
    /// A string is not UTF-8.
    BadUtf8,
    /// A frame's length prefix exceeds the maximum frame size.
    FrameTooLarge { len: i64, max: usize },
    /// A value that has no meaning in this position.
    Unexpected(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated { need, left } => {
                write!(f, "truncated record: needed {need} more bytes, {left} left")
            }
            DecodeError::BadLength { what, len } => write!(f, "bad {what} length {len}"),
            DecodeError::BadUtf8 => write!(f, "string is not UTF-8"),
            DecodeError::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the {max}-byte limit")
            }
            DecodeError::Unexpected(s) => write!(f, "{s}"),
        }
    }
}

/// Appends jute values to a buffer.
pub(crate) trait JuteWrite {
    fn put_i32(&mut self, v: i32);
    fn put_i64(&mut self, v: i64);
    fn put_bool(&mut self, v: bool);
    /// A length-prefixed byte buffer.
    fn put_buf(&mut self, v: &[u8]);
    /// A length-prefixed UTF-8 string.
    fn put_str(&mut self, v: &str) {
        self.put_buf(v.as_bytes())
    }
    /// A vector of strings.
    #[allow(dead_code)] // no request sends one yet; kept for symmetry with `Reader::strs`
    fn put_strs(&mut self, v: &[String]);
    /// A vector of ACL entries.
    fn put_acls(&mut self, acl: &[Acl]);
}

impl JuteWrite for Vec<u8> {
    fn put_i32(&mut self, v: i32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_i64(&mut self, v: i64) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_bool(&mut self, v: bool) {
        self.push(u8::from(v));
    }
    fn put_buf(&mut self, v: &[u8]) {
        // Callers validate sizes (1 MiB data limit) long before this: a buffer never nears
        // i32::MAX, and saturating keeps the encoder panic-free regardless.
        self.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
        self.extend_from_slice(v);
    }
    fn put_strs(&mut self, v: &[String]) {
        self.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
        for s in v {
            self.put_str(s);
        }
    }
    fn put_acls(&mut self, acl: &[Acl]) {
        self.put_i32(i32::try_from(acl.len()).unwrap_or(i32::MAX));
        for a in acl {
            self.put_i32(a.perms);
            self.put_str(&a.scheme);
            self.put_str(&a.id);
        }
    }
}

/// Reads jute values from one frame.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.left() {
            return Err(DecodeError::Truncated {
                need: n,
                left: self.left(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        Ok(self.array::<1>()?[0] != 0)
    }

    /// A length prefix: `None` for null (-1); checked against the bytes left, `unit` bytes
    /// being the least one element can take.
    fn len(&mut self, what: &'static str, unit: usize) -> Result<Option<usize>, DecodeError> {
        let n = self.i32()?;
        if n == -1 {
            return Ok(None);
        }
        let bad = DecodeError::BadLength {
            what,
            len: i64::from(n),
        };
        let n = usize::try_from(n).map_err(|_| bad.clone())?;
        if n.saturating_mul(unit) > self.left() {
            return Err(bad);
        }
        Ok(Some(n))
    }

    /// A buffer; null reads as empty.
    pub fn buf(&mut self) -> Result<Vec<u8>, DecodeError> {
        match self.len("buffer", 1)? {
            None => Ok(Vec::new()),
            Some(n) => Ok(self.take(n)?.to_vec()),
        }
    }

    /// A string; null reads as empty.
    pub fn str(&mut self) -> Result<String, DecodeError> {
        match self.len("string", 1)? {
            None => Ok(String::new()),
            Some(n) => std::str::from_utf8(self.take(n)?)
                .map(str::to_owned)
                .map_err(|_| DecodeError::BadUtf8),
        }
    }

    /// A vector of strings; null reads as empty.
    pub fn strs(&mut self) -> Result<Vec<String>, DecodeError> {
        let Some(n) = self.len("vector", 4)? else {
            return Ok(Vec::new());
        };
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.str()?);
        }
        Ok(v)
    }

    pub fn stat(&mut self) -> Result<Stat, DecodeError> {
        Ok(Stat {
            czxid: self.i64()?,
            mzxid: self.i64()?,
            ctime: self.i64()?,
            mtime: self.i64()?,
            version: self.i32()?,
            cversion: self.i32()?,
            aversion: self.i32()?,
            ephemeral_owner: self.i64()?,
            data_length: self.i32()?,
            num_children: self.i32()?,
            pzxid: self.i64()?,
        })
    }

    pub fn acls(&mut self) -> Result<Vec<Acl>, DecodeError> {
        let Some(n) = self.len("ACL vector", 12)? else {
            return Ok(Vec::new());
        };
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(Acl {
                perms: self.i32()?,
                scheme: self.str()?,
                id: self.str()?,
            });
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut b = Vec::new();
        b.put_i32(-7);
        b.put_i64(1 << 40);
        b.put_bool(true);
        b.put_buf(b"abc");
        b.put_str("päth");
        b.put_strs(&["a".into(), "".into()]);
        b.put_acls(&Acl::open());
        let mut r = Reader::new(&b);
        assert_eq!(r.i32(), Ok(-7));
        assert_eq!(r.i64(), Ok(1 << 40));
        assert_eq!(r.bool(), Ok(true));
        assert_eq!(r.buf(), Ok(b"abc".to_vec()));
        assert_eq!(r.str().as_deref(), Ok("päth"));
        assert_eq!(r.strs(), Ok(vec!["a".to_string(), String::new()]));
        assert_eq!(r.acls(), Ok(Acl::open()));
        assert_eq!(r.left(), 0);
        assert!(matches!(r.i32(), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn hostile_lengths_are_rejected_before_allocating() {
        for len in [i32::MAX, 1 << 30, -2, i32::MIN] {
            let mut b = Vec::new();
            b.put_i32(len);
            assert!(Reader::new(&b).buf().is_err());
            assert!(Reader::new(&b).strs().is_err());
            assert!(Reader::new(&b).acls().is_err());
        }
        let mut b = Vec::new();
        b.put_i32(-1);
        assert_eq!(Reader::new(&b).buf(), Ok(Vec::new()));
    }
}
