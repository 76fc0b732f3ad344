//! SASL DIGEST-MD5 against a real ZooKeeper 3.8 started with a JAAS `Server` section
//! (`DigestLoginModule`) and `SASLAuthenticationProvider`: the login gives the session the
//! identity `sasl:USER`, is redone on every reconnect and in every new session, and a wrong
//! password is `AuthFailed` at once.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use zkr::{perms, Acl, Client, CreateMode, Error, SessionState};
use zkr_testing::{FaultProxy, ZkEnsemble};

fn sasl_server() -> &'static ZkEnsemble {
    static S: OnceLock<ZkEnsemble> = OnceLock::new();
    S.get_or_init(|| {
        ZkEnsemble::start_sasl(1, &[("app", "s3cret-pw"), ("other", "pw2")], &[])
            .expect("SASL ZooKeeper")
    })
}

async fn sasl_client(servers: &str, user: &str, password: &str) -> zkr::Result<Client> {
    Client::builder(servers)
        .session_timeout(Duration::from_millis(3000))
        .connect_timeout(Duration::from_secs(3))
        .sasl_digest(user, password)
        .connect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_login_holds_across_reconnects_and_new_sessions() {
    init_tracing();
    let ens = blocking(sasl_server).await;
    let proxy = FaultProxy::for_ensemble(ens).unwrap();
    let c = sasl_client(&proxy.connect_string(), "app", "s3cret-pw")
        .await
        .unwrap();
    let who = c.who_am_i().await.unwrap();
    assert!(
        who.iter().any(|i| i.scheme == "sasl" && i.user == "app"),
        "{who:?}"
    );
    let root = root("sasl");
    let acl = vec![Acl::new(perms::ALL, "sasl", "app")];
    c.create_with_acl(&root, b"for app", CreateMode::Persistent, &acl)
        .await
        .unwrap();
    let anon = client(&ens.connect_string(), 3000).await;
    assert!(matches!(
        anon.get_data(&root).await,
        Err(Error::NoAuth { .. })
    ));
    let other = sasl_client(&ens.connect_string(), "other", "pw2")
        .await
        .unwrap();
    assert!(matches!(
        other.get_data(&root).await,
        Err(Error::NoAuth { .. })
    ));

    // A reconnect (same session): the login is redone in the new connection's handshake.
    let mut states = c.states();
    drop_and_resume(&c, &mut states, &proxy).await;
    assert_eq!(c.get_data(&root).await.unwrap().0, b"for app");

    // A new session after expiry.
    c.expire_session_for_testing(&ens.connect_string(), &proxy)
        .await
        .unwrap();
    expect_state(
        &mut states,
        Duration::from_secs(6),
        "Connected epoch 2",
        |s| matches!(s, SessionState::Connected { epoch: 2, .. }),
    )
    .await;
    assert_eq!(c.get_data(&root).await.unwrap().0, b"for app");
    let who = c.who_am_i().await.unwrap();
    assert!(who.iter().any(|i| i.scheme == "sasl" && i.user == "app"));
    c.delete(&root, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sasl_password_is_auth_failed_at_once() {
    init_tracing();
    let ens = blocking(sasl_server).await;
    let t = Instant::now();
    let e = sasl_client(&ens.connect_string(), "app", "wrong-pw")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AuthFailed), "{e:?}");
    assert!(!e.to_string().contains("wrong-pw"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let e = sasl_client(&ens.connect_string(), "nobody", "x")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AuthFailed), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_against_a_server_without_sasl_says_so() {
    init_tracing();
    let ens = zkr_testing::shared().expect("zookeeper");
    let e = sasl_client(&ens.connect_string(), "app", "s3cret-pw")
        .await
        .unwrap_err();
    eprintln!("{e}");
    assert!(e.to_string().contains("SASL"), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
}

/// A `Write` into a shared buffer, for capturing the log output.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Passwords, digest credentials and SASL passwords never show up in `Debug` output, in any
/// log line (at TRACE, through a reconnect and a rejected login), or in error messages.
#[test]
fn no_secret_reaches_debug_logs_or_errors() {
    const SECRETS: [&str; 3] = ["pw-digest-SECRET1", "pw-addauth-SECRET2", "s3cret-pw"];
    let ens = sasl_server();
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut shown = Vec::new();
    rt.block_on(async {
        let proxy = FaultProxy::for_ensemble(ens).unwrap();
        let builder = Client::builder(&proxy.connect_string())
            .session_timeout(Duration::from_millis(3000))
            .digest_auth("u", "pw-digest-SECRET1")
            .sasl_digest("app", "s3cret-pw")
            .tls(zkr::TlsConfig::new().client_cert_pem(
                b"cert".to_vec(),
                b"-----BEGIN PRIVATE KEY-----\npw-digest-SECRET1\n".to_vec(),
            ));
        shown.push(format!("{builder:?}"));
        let builder = Client::builder(&proxy.connect_string())
            .session_timeout(Duration::from_millis(3000))
            .digest_auth("u", "pw-digest-SECRET1")
            .sasl_digest("app", "s3cret-pw");
        let c = builder.connect().await.unwrap();
        c.add_auth("digest", b"v:pw-addauth-SECRET2").await.unwrap();
        let root = root("secrets");
        c.create_with_acl(
            &root,
            b"",
            CreateMode::Persistent,
            &[Acl::digest_user("u", "pw-digest-SECRET1", perms::ALL)],
        )
        .await
        .unwrap();
        let (acl, _) = c.get_acl(&root).await.unwrap();
        shown.push(format!("{acl:?} {c:?}"));
        // A real reconnect, so that the logs cover the credentials being sent again.
        let mut states = c.states();
        drop_and_resume(&c, &mut states, &proxy).await;
        c.get_data(&root).await.unwrap();
        let anon = client(&ens.connect_string(), 3000).await;
        shown.push(anon.get_data(&root).await.unwrap_err().to_string());
        let e = sasl_client(&ens.connect_string(), "app", "pw-addauth-SECRET2")
            .await
            .unwrap_err();
        shown.push(format!("{e} {e:?}"));
        c.delete(&root, None).await.unwrap();
        c.close().await;
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("zkr"), "the capture works: {logs}");
    // The digest hash of a password is as good as the password for brute force.
    let hash = Acl::digest("u", "pw-digest-SECRET1");
    let hash = hash.split_once(':').unwrap().1;
    for s in SECRETS.iter().copied().chain([hash]) {
        assert!(!logs.contains(s), "{s} in the logs:\n{logs}");
        for text in &shown {
            assert!(!text.contains(s), "{s} in {text}");
        }
    }
}
