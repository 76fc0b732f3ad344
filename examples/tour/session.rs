//! Chapter 1, the session layer: connect, watch a node, lose the server under the client,
//! reconnect on the same session, expire the session and recover on a new one, and see that
//! the watch missed nothing.

use std::time::Duration;

use zkr::{Client, CreateMode, SessionState};

use crate::{next_state, show, Res, Tour};

pub async fn chapter(tour: &Tour<'_>) -> Res<()> {
    let (t, admin, proxy, root, servers) =
        (tour.t, tour.admin, tour.proxy, &tour.root, &tour.servers);
    let ensemble = &tour.ensemble;
    t.say("── Chapter 1: the session layer ──");
    let client = Client::builder(&proxy.connect_string())
        .session_timeout(Duration::from_secs(4))
        .connect()
        .await?;
    let mut states = client.states();
    next_state(t, &mut states).await;
    let greeting = format!("{root}/greeting");
    t.say(format!("watching {greeting} (it does not exist yet)"));
    let mut watch = client.watch_data(&greeting)?;
    show(t, &mut watch).await?;
    admin
        .create_with_parents(&greeting, b"hello", CreateMode::Persistent)
        .await?;
    t.say("another client created it with \"hello\"");
    show(t, &mut watch).await?;
    client
        .create(&format!("{root}/tour-client"), b"", CreateMode::Ephemeral)
        .await?;
    t.say("our client owns an ephemeral node (it lives as long as our session)");

    match &ensemble {
        Some(ens) => {
            let sid = client.session_id().map(|s| s.0).unwrap_or_default();
            let needle = format!("sid={sid:#x}");
            let member = (0..ens.len())
                .find(|&i| {
                    ens.four_letter(i, "cons")
                        .map(|c| c.contains(&needle))
                        .unwrap_or(false)
                })
                .unwrap_or(0);
            t.say(format!(
                "killing ZooKeeper member {member} (pid {:?}), the one serving our session",
                ens.pid(member)
            ));
            ens.kill(member)?;
            next_state(t, &mut states).await;
            next_state(t, &mut states).await;
            t.say(format!("restarting member {member}"));
            let ens2 = ens.clone();
            tokio::task::spawn_blocking(move || ens2.restart(member)).await??;
        }
        None => {
            t.say("cutting our client's TCP connection");
            proxy.cut();
            next_state(t, &mut states).await;
            proxy.heal();
            next_state(t, &mut states).await;
        }
    }
    let owned = admin
        .exists(&format!("{root}/tour-client"))
        .await?
        .is_some();
    t.say(format!(
        "same session, so our ephemeral node is still there: {owned}"
    ));

    t.say(
        "expiring our session on purpose (as if we had been cut off for longer than its timeout)",
    );
    proxy.cut();
    admin
        .set_data(&greeting, b"changed while you were gone", None)
        .await?;
    t.say("meanwhile another client changed the greeting");
    proxy.heal();
    client.expire_session_for_testing(servers, proxy).await?;
    next_state(t, &mut states).await; // Suspended or Lost
    loop {
        if let SessionState::Connected { .. } = next_state(t, &mut states).await {
            break;
        }
    }
    let owned = admin
        .exists(&format!("{root}/tour-client"))
        .await?
        .is_some();
    t.say(format!(
        "a new session: the old session's ephemeral node is gone: {}",
        !owned
    ));
    t.say("the watch re-read the node after the new session and reports what it missed:");
    show(t, &mut watch).await?;

    client.close().await;
    Ok(())
}
