//! zkr's own implementation of the ZooKeeper client protocol (servers 3.5 and later; tested
//! against 3.8), on `tokio::net::TcpStream`, with no `unsafe`.
//!
//! Layers, bottom up (the split follows tokio-postgres):
//! * [`jute`]: the record encoding; decoding is bounds-checked and never allocates on a
//!   length prefix's word;
//! * [`codec`]: 4-byte length-prefixed frames, with a maximum frame size;
//! * [`records`]: opcodes, request and reply records, error codes;
//! * [`tls`]: TLS on rustls behind a small connector trait, and the plain-or-TLS stream;
//! * [`sasl`]: SASL DIGEST-MD5 (RFC 2831), run inside the handshake;
//! * [`connect`]: the session handshake and authentication;
//! * [`connection`]: the task that owns the socket (xids, pipelining, pings, watches,
//!   reconnecting the same session across members, close).
//!
//! The handle over it is [`crate::wire::Wire`]; nothing above `wire` sees these types.

pub(crate) mod codec;
pub(crate) mod connect;
pub(crate) mod connection;
pub(crate) mod jute;
pub(crate) mod records;
pub(crate) mod sasl;
pub(crate) mod tls;

pub(crate) use connect::HandshakeError;
