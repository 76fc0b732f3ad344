//! Helpers shared by the integration tests of the workspace (`tests/`, `recipes/tests/`): each
//! test binary's `common` module re-exports them.

use std::time::Duration;

use zkr::{Client, SessionState, SessionStates};

use crate::{FaultProxy, ZkEnsemble};

/// Logs to the test output when RUST_LOG is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A client with a short session timeout.
pub async fn client(connect: &str, session_ms: u64) -> Client {
    Client::builder(connect)
        .session_timeout(Duration::from_millis(session_ms))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {connect}: {e}"))
}

/// A client with digest credentials (`user:password`) and a 3 s session.
pub async fn authed(connect: &str, user: &str, password: &str) -> Client {
    Client::builder(connect)
        .session_timeout(Duration::from_millis(3000))
        .digest_auth(user, password)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {connect}: {e}"))
}

/// Reads states until one matches; panics (listing what was seen) if none does in time.
pub async fn expect_state(
    states: &mut SessionStates,
    within: Duration,
    what: &str,
    mut pred: impl FnMut(&SessionState) -> bool,
) -> SessionState {
    let mut seen = Vec::new();
    let r = tokio::time::timeout(within, async {
        while let Some(s) = states.next_state().await {
            seen.push(s);
            if pred(&s) {
                return Some(s);
            }
        }
        None
    })
    .await;
    match r {
        Ok(Some(s)) => s,
        _ => panic!("expected {what} within {within:?}; saw {seen:?}"),
    }
}

/// The index of the ensemble member that serves `session` (from the `cons` four-letter word).
pub fn member_of(ens: &ZkEnsemble, session: i64) -> Option<usize> {
    let needle = format!("sid={session:#x}");
    (0..ens.len()).find(|&i| {
        ens.four_letter(i, "cons")
            .map(|s| s.contains(&needle))
            .unwrap_or(false)
    })
}

/// A unique root path for a test.
pub fn root(name: &str) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("/t-{name}-{ms}")
}

/// Runs a blocking harness call off the runtime's worker thread.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Drops the client's connections at `proxy` and waits until its session layer has said
/// `Suspended` and then `Reconnected` on the same session (every drop is reported, however
/// quick the resume). `states` must be subscribed before the call.
pub async fn drop_and_resume(c: &Client, states: &mut SessionStates, proxy: &FaultProxy) {
    let session = c.session_id();
    proxy.drop_connections();
    expect_state(states, Duration::from_secs(10), "Suspended", |s| {
        matches!(s, SessionState::Suspended { .. })
    })
    .await;
    expect_state(states, Duration::from_secs(10), "Reconnected", |s| {
        matches!(s, SessionState::Reconnected { .. })
    })
    .await;
    assert_eq!(c.session_id(), session, "same session after the resume");
}
