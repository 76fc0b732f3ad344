//! TLS against real ZooKeeper 3.8 servers started with a `secureClientPort` (Netty, PEM key and
//! trust stores) and certificates generated at test time: mutual TLS (also across a reconnect
//! and a session expiry), hostname verification, and clean failures for a wrong CA, an expired
//! certificate, a missing client certificate, plaintext to the TLS port and TLS to the
//! plaintext port.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use zkr::{Client, CreateMode, Error, SessionState, TlsConfig};
use zkr_testing::{ClientAuth, FaultProxy, TestPki, ZkEnsemble};

/// One PKI and one mutual-TLS server (`ssl.clientAuth=need`) for the tests of this binary.
fn mtls() -> &'static (TestPki, ZkEnsemble) {
    static S: OnceLock<(TestPki, ZkEnsemble)> = OnceLock::new();
    S.get_or_init(|| {
        let pki = TestPki::generate().expect("certificates");
        let cfg = pki.server_config("server.pem", ClientAuth::Need);
        let ens = ZkEnsemble::start_tls(1, &cfg, &[], &[]).expect("TLS ZooKeeper");
        (pki, ens)
    })
}

fn client_tls(pki: &TestPki) -> TlsConfig {
    let (cert, key) = pki.client_cert();
    TlsConfig::new()
        .ca_pem_file(pki.ca_pem())
        .client_cert_pem_files(cert, key)
}

async fn connect(servers: &str, tls: Option<TlsConfig>) -> zkr::Result<Client> {
    let mut b = Client::builder(servers)
        .session_timeout(Duration::from_millis(3000))
        .connect_timeout(Duration::from_secs(3));
    if let Some(t) = tls {
        b = b.tls(t);
    }
    b.connect().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_works_across_reconnects_and_expiry() {
    init_tracing();
    let (pki, ens) = blocking(mtls).await;
    let secure = ens.secure_connect_string().expect("TLS port");
    let c = connect(&secure, Some(client_tls(pki))).await.unwrap();
    let root = root("tls");
    c.create(&root, b"over tls", CreateMode::Persistent)
        .await
        .unwrap();
    assert_eq!(c.get_data(&root).await.unwrap().0, b"over tls");
    // The server authenticated the client by its certificate.
    let who = c.who_am_i().await.unwrap();
    assert!(
        who.iter()
            .any(|i| i.scheme == "x509" && i.user.contains("zkr test client")),
        "{who:?}"
    );

    // Through a proxy (the name checked stays 127.0.0.1): cut, resume, expire, new session.
    let proxy = FaultProxy::start(vec![secure.parse().unwrap()]).unwrap();
    let p = connect(&proxy.connect_string(), Some(client_tls(pki)))
        .await
        .unwrap();
    let mut states = p.states();
    // The connection is cut and the same session resumed over a new TLS connection.
    drop_and_resume(&p, &mut states, &proxy).await;
    assert_eq!(p.get_data(&root).await.unwrap().0, b"over tls");
    p.expire_session_for_testing(&secure, &proxy).await.unwrap();
    expect_state(
        &mut states,
        Duration::from_secs(6),
        "Connected epoch 2",
        |s| matches!(s, SessionState::Connected { epoch: 2, .. }),
    )
    .await;
    assert_eq!(p.get_data(&root).await.unwrap().0, b"over tls");
    c.delete(&root, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_fails_cleanly_and_at_once() {
    init_tracing();
    let (pki, ens) = blocking(mtls).await;
    let secure = ens.secure_connect_string().unwrap();
    let (cert, key) = pki.client_cert();
    let tls = TlsConfig::new()
        .ca_pem_file(pki.other_ca_pem())
        .client_cert_pem_files(cert, key);
    let t = Instant::now();
    let e = connect(&secure, Some(tls)).await.unwrap_err();
    eprintln!("{e}");
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains("not signed by a CA"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_requiring_a_client_certificate_refuses_clients_without_one() {
    init_tracing();
    let (pki, ens) = blocking(mtls).await;
    let secure = ens.secure_connect_string().unwrap();
    let e = connect(&secure, Some(TlsConfig::new().ca_pem_file(pki.ca_pem())))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Tls { .. } | Error::Unreachable { .. }),
        "{e:?}"
    );
    eprintln!("{e}");
    assert!(e.to_string().contains("client certificate"), "{e}");
    // A certificate of a CA the server does not trust is refused too.
    let (cert, key) = pki.untrusted_client_cert();
    let tls = TlsConfig::new()
        .ca_pem_file(pki.ca_pem())
        .client_cert_pem_files(cert, key);
    let e = connect(&secure, Some(tls)).await.unwrap_err();
    eprintln!("{e}");
    assert!(e.to_string().contains("client certificate"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_the_tls_port_and_tls_to_the_plaintext_port_fail_cleanly() {
    init_tracing();
    let (pki, ens) = blocking(mtls).await;
    let secure = ens.secure_connect_string().unwrap();
    let e = connect(&secure, None).await.unwrap_err();
    eprintln!("{e}");
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains("TLS"), "{e}");

    let e = connect(&ens.connect_string(), Some(client_tls(pki)))
        .await
        .unwrap_err();
    eprintln!("{e}");
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains("plaintext"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_verification_is_on_by_default() {
    init_tracing();
    let (pki, ens) = blocking(mtls).await;
    let secure = ens.secure_connect_string().unwrap();
    let e = connect(
        &secure,
        Some(client_tls(pki).server_name("zk.elsewhere.example")),
    )
    .await
    .unwrap_err();
    eprintln!("{e}");
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains("zk.elsewhere.example"), "{e}");
    // Off: the name is not checked, the CA still is.
    let c = connect(
        &secure,
        Some(
            client_tls(pki)
                .server_name("zk.elsewhere.example")
                .verify_hostname(false),
        ),
    )
    .await
    .unwrap();
    c.exists("/").await.unwrap();
    let (cert, key) = pki.client_cert();
    let e = connect(
        &secure,
        Some(
            TlsConfig::new()
                .ca_pem_file(pki.other_ca_pem())
                .client_cert_pem_files(cert, key)
                .verify_hostname(false),
        ),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("not signed by a CA"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_server_certificate_fails_cleanly() {
    init_tracing();
    let pki = TestPki::generate().unwrap();
    let cfg = pki.server_config("expired-server.pem", ClientAuth::None);
    let ens = blocking(move || ZkEnsemble::start_tls(1, &cfg, &[], &[]))
        .await
        .unwrap();
    let secure = ens.secure_connect_string().unwrap();
    let e = connect(&secure, Some(TlsConfig::new().ca_pem_file(pki.ca_pem())))
        .await
        .unwrap_err();
    eprintln!("{e}");
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains("expired"), "{e}");
    drop(ens);
}

#[test]
fn bad_tls_settings_are_reported_before_connecting() {
    let dir = std::env::temp_dir();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt
        .block_on(connect("127.0.0.1:1", Some(TlsConfig::new())))
        .unwrap_err();
    assert!(e.to_string().contains("no CA"), "{e}");
    let e = rt
        .block_on(connect(
            "127.0.0.1:1",
            Some(TlsConfig::new().ca_pem_file(dir.join("zkr-no-such-ca.pem"))),
        ))
        .unwrap_err();
    assert!(e.to_string().contains("zkr-no-such-ca.pem"), "{e}");
    let key = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";
    let tls = TlsConfig::new()
        .ca_pem(b"not pem".to_vec())
        .client_cert_pem(b"cert".to_vec(), key.as_bytes().to_vec());
    let shown = format!("{tls:?}");
    assert!(!shown.contains("c2VjcmV0"), "{shown}");
    let e = rt.block_on(connect("127.0.0.1:1", Some(tls))).unwrap_err();
    assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
}
