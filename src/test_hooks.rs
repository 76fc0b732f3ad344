//! The few hooks into the client's internals that zkr's test harness (the workspace crate
//! `zkr-testing`) needs to expire a session on purpose. Enabled by the `testing` feature; not
//! for production code.

use std::time::Duration;

use crate::error::Result;
use crate::path::ConnectString;
use crate::types::SessionId;

/// Something that can cut a client's connections and let them through again: the harness's
/// fault proxy. [`Client::expire_session_for_testing`](crate::Client::expire_session_for_testing)
/// cuts it while it expires the session, so that the client's instant reconnect does not take
/// the session back meanwhile.
pub trait ConnectionCut {
    /// Closes the client's connections and refuses new ones.
    fn cut(&self);
    /// Lets connections through again.
    fn heal(&self);
}

/// Expires the session `id` (password `passwd`, as given by
/// [`Client::session_credentials_for_testing`](crate::Client::session_credentials_for_testing))
/// by opening a second connection with the same credentials to one of the servers in `direct`
/// and closing it. The session's owner should be cut off meanwhile (through a
/// [`ConnectionCut`]), or its instant reconnect and this call take the session from each other.
/// Plaintext connections only.
pub async fn expire_session_with(direct: &str, id: SessionId, passwd: &[u8]) -> Result<()> {
    let servers = ConnectString::parse(direct)?.servers;
    let session = crate::wire::WireSession {
        id: id.0,
        passwd: passwd.to_vec(),
    };
    crate::wire::expire_session(&servers, &session, None, Duration::from_secs(10)).await
}
