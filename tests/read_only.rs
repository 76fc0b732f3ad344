//! Read-only sessions: a member that lost its quorum (with `readonlymode.enabled`) serves
//! reads to clients that allow it; writes get a typed error; when the quorum returns the client
//! moves to a read-write session on its own. (ZooKeeper 3.8 needs `readonlymode.enabled` and
//! local sessions on the server for this: see `ZkEnsemble::start_read_only_capable`.)

mod common;

use std::time::Duration;

use zkr::{Client, CreateMode, Error, SessionState};
use zkr_testing::ZkEnsemble;

#[tokio::test]
async fn read_only_session_while_quorum_is_lost_then_read_write_again() {
    common::init_tracing();
    let ens = ZkEnsemble::start_read_only_capable(3).expect("zookeeper ensemble");
    let setup = common::client(&ens.connect_string(), 4000).await;
    setup
        .create("/ro-data", b"before", CreateMode::Persistent)
        .await
        .unwrap();
    setup.close().await;

    // Keep one member; the other two go down and it loses its quorum.
    let keep = 2;
    ens.kill(0).unwrap();
    ens.kill(1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mode = ens.four_letter(keep, "srvr").unwrap_or_default();
        if mode.contains("Mode: read-only") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "member {keep} never went read-only: {mode}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A client that does not allow read-only sessions gets none.
    let strict = Client::builder(&ens.connect_string())
        .session_timeout(Duration::from_secs(4))
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    assert!(
        matches!(strict, Err(Error::Unreachable { .. })),
        "{strict:?}"
    );

    let c = Client::builder(&ens.connect_string())
        .session_timeout(Duration::from_secs(4))
        .connect_timeout(Duration::from_secs(10))
        .read_only(true)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("read-only session: {e}\n{}", ens.log_tail(keep, 400)));
    assert!(
        matches!(c.state(), SessionState::ReadOnly { epoch: 1, .. }),
        "{:?}",
        c.state()
    );
    assert_eq!(c.get_data("/ro-data").await.unwrap().0, b"before");
    // An idle read-only session stays up: with no leader to confirm anything, its heartbeat
    // is a read. Idle for longer than a read-write session's lease, it is still epoch 1.
    let mut idle_states = c.states();
    tokio::time::sleep(Duration::from_secs(4)).await;
    while let Ok(Some(s)) = tokio::time::timeout(Duration::ZERO, idle_states.next_state()).await {
        assert!(
            matches!(s, SessionState::ReadOnly { epoch: 1, .. }),
            "an idle read-only session changed state: {s:?}"
        );
    }
    assert_eq!(c.get_data("/ro-data").await.unwrap().0, b"before");
    assert!(matches!(
        c.set_data("/ro-data", b"x", None).await,
        Err(Error::NotReadOnly)
    ));
    assert!(matches!(
        c.create("/ro-new", b"", CreateMode::Ephemeral).await,
        Err(Error::NotReadOnly)
    ));

    // The quorum returns: the client ends up on a read-write session and can write.
    let mut states = c.states();
    ens.start_member(0).unwrap();
    ens.start_member(1).unwrap();
    let s = common::expect_state(
        &mut states,
        Duration::from_secs(40),
        "a read-write session",
        |s| {
            matches!(
                s,
                SessionState::Connected { .. } | SessionState::Reconnected { .. }
            )
        },
    )
    .await;
    assert!(s.epoch().is_some());
    let written = c
        .retry(&zkr::RetryPolicy::default(), || {
            c.set_data("/ro-data", b"after", None)
        })
        .await
        .unwrap();
    assert!(written.version >= 1);
    c.close().await;
}
