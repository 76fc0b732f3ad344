//! `zkr --auth`, `zkr acl get/set/digest` and `zkr create --acl` against a real ZooKeeper
//! (`zkr_testing::shared()`).

mod common;

use common::*;
use std::process::Output;
use zkr_testing::helpers::root;

/// Exit code 9, one `zkr: ` line containing `needle`, and no secret in the output.
#[track_caller]
fn not_authorized(o: Output, needle: &str) {
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(9),
        "stdout: {}\nstderr: {err}",
        stdout(&o)
    );
    assert!(err.starts_with("zkr: "), "{err:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
    assert!(!err.contains("s3cret"), "{err:?}");
}

#[test]
fn auth_reads_a_protected_node_and_no_auth_fails_clearly() {
    let r = root("protected");
    let n = format!("{r}/protected");
    ok(zkr(&["create", "--parents", &r]));
    ok(zkr(&[
        "--auth",
        "digest:u:s3cret",
        "create",
        "--acl",
        "auth::cdrwa",
        &n,
        "hidden",
    ]));
    assert_eq!(ok(zkr(&["--auth", "digest:u:s3cret", "get", &n])), "hidden");
    not_authorized(zkr(&["get", &n]), "NoAuth");
    not_authorized(zkr(&["--auth", "digest:u:wrong", "get", &n]), "NoAuth");
    // ZKR_AUTH is the environment form.
    let o = command()
        .arg("--zk")
        .arg(zk())
        .env("ZKR_AUTH", "digest:u:s3cret")
        .args(["get", &n])
        .output()
        .unwrap();
    assert_eq!(ok(o), "hidden");
    // Repeatable: the second identity is the one the ACL names.
    assert_eq!(
        ok(zkr(&[
            "--auth",
            "digest:other:x",
            "--auth",
            "digest:u:s3cret",
            "get",
            &n
        ])),
        "hidden"
    );

    // acl get shows the digest identity; acl digest computes the same offline.
    let hash = ok(command()
        .args(["acl", "digest", "u:s3cret"])
        .output()
        .unwrap());
    assert!(hash.starts_with("u:"), "{hash}");
    let shown = ok(zkr(&["--auth", "digest:u:s3cret", "acl", "get", &n]));
    assert_eq!(shown, format!("digest:{}:cdrwa\n", hash.trim()));
    // Not even the ACL is readable without the identity.
    not_authorized(zkr(&["acl", "get", &n]), "NoAuth");
    // Without ADMIN permission ZooKeeper shows digest identities without their hash.
    let user_only = "digest:u:x:cdrwa";

    // acl set: open it for reading to everyone, with a version check.
    let stale = zkr(&[
        "--auth",
        "digest:u:s3cret",
        "acl",
        "set",
        "--version",
        "7",
        &n,
        "world:anyone:r",
    ]);
    assert_eq!(stale.status.code(), Some(5), "{}", stderr(&stale));
    let mine = format!("digest:{}:cdrwa", hash.trim());
    ok(zkr(&[
        "--auth",
        "digest:u:s3cret",
        "acl",
        "set",
        "--version",
        "0",
        &n,
        "world:anyone:r",
        &mine,
    ]));
    assert_eq!(ok(zkr(&["get", &n])), "hidden");
    assert_eq!(
        ok(zkr(&["acl", "get", &n])),
        format!("world:anyone:r\n{user_only}\n")
    );
    not_authorized(zkr(&["set", &n, "x"]), "NoAuth");
    ok(zkr(&["--auth", "digest:u:s3cret", "delete", "-r", &r]));
}

#[test]
fn bad_auth_and_acl_arguments_are_usage_errors_without_secrets() {
    for args in [
        vec!["--auth", "digest", "get", "/"],
        vec!["--auth", "digest:s3cret", "get", "/"],
        vec!["acl", "set", "/x", "world:anyone:q"],
        vec!["create", "--acl", "world:anyone", "/x"],
    ] {
        let o = zkr(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("s3cret"), "{}", stderr(&o));
    }
    // An unknown scheme is rejected by the server: AuthFailed, exit 9.
    not_authorized(
        zkr(&["--auth", "nosuch:s3cret", "get", "/"]),
        "authentication failed",
    );
    // --help never shows the value of ZKR_AUTH.
    let o = command()
        .env("ZKR_AUTH", "digest:u:s3cret")
        .arg("--help")
        .output()
        .unwrap();
    assert!(!stdout(&o).contains("s3cret"), "{}", stdout(&o));
}

/// `--tls-ca/--tls-cert/--tls-key` against a server with a mutual-TLS `secureClientPort`.
#[test]
fn tls_options_connect_with_mutual_tls() {
    use zkr_testing::{ClientAuth, TestPki, ZkEnsemble};
    let pki = TestPki::generate().unwrap();
    let ens = ZkEnsemble::start_tls(
        1,
        &pki.server_config("server.pem", ClientAuth::Need),
        &[],
        &[],
    )
    .unwrap();
    let secure = ens.secure_connect_string().unwrap();
    let (cert, key) = pki.client_cert();
    let (ca, cert, key) = (
        pki.ca_pem().display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    let run = |args: &[&str]| {
        command()
            .args(["--zk", &secure, "--timeout", "3s"])
            .args(args)
            .output()
            .unwrap()
    };
    let tls = ["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key];
    let n = "/tls-node";
    ok(run(&[&tls[..], &["create", n, "secret-data"]].concat()));
    assert_eq!(ok(run(&[&tls[..], &["get", n]].concat())), "secret-data");

    // A wrong CA: exit 6, one line saying so.
    let other = pki.other_ca_pem().display().to_string();
    let o = run(&[
        "--tls-ca",
        &other,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "get",
        n,
    ]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains("not signed by a CA"), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
    // Plaintext to the TLS port.
    let o = run(&["get", n]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains("TLS"), "{}", stderr(&o));
    // Incomplete options are usage errors.
    let o = run(&["--tls-cert", &cert, "get", n]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = run(&["--tls-ca", &ca, "--tls-cert", &cert, "get", n]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// `--auth sasl:USER:PASSWORD` logs in with SASL DIGEST-MD5.
#[test]
fn sasl_auth_option_logs_in() {
    use zkr_testing::ZkEnsemble;
    let ens = ZkEnsemble::start_sasl(1, &[("app", "s3cret")], &[]).unwrap();
    let zk = ens.connect_string();
    let run = |args: &[&str]| {
        command()
            .args(["--zk", &zk, "--timeout", "3s"])
            .args(args)
            .output()
            .unwrap()
    };
    ok(run(&[
        "--auth",
        "sasl:app:s3cret",
        "create",
        "--acl",
        "sasl:app:cdrwa",
        "/s",
        "v",
    ]));
    assert_eq!(ok(run(&["--auth", "sasl:app:s3cret", "get", "/s"])), "v");
    not_authorized(run(&["get", "/s"]), "NoAuth");
    not_authorized(
        run(&["--auth", "sasl:app:wrong", "get", "/s"]),
        "authentication failed",
    );
}
