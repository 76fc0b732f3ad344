use std::time::Duration;
use zkr::{Change, Client, CreateMode};
use zkr_testing as testing;

#[tokio::test]
async fn basic_ops_and_watch() {
    let ens = testing::shared().expect("zookeeper");
    let c = Client::builder(&ens.connect_string())
        .session_timeout(Duration::from_secs(4))
        .connect()
        .await
        .unwrap();
    println!("{:?}", c.state());
    let root = "/smoke";
    let _ = c.delete_recursive(root).await;
    c.create_with_parents("/smoke/a/b", b"x", CreateMode::Persistent)
        .await
        .unwrap();
    let (d, s) = c.get_data("/smoke/a/b").await.unwrap();
    assert_eq!(d, b"x");
    assert_eq!(s.version, 0);
    let mut w = c.watch_data("/smoke/a/b").unwrap();
    let e = w
        .next_timeout(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.change, Change::Initial);
    c.set_data("/smoke/a/b", b"y", None).await.unwrap();
    let e = w
        .next_timeout(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.change, Change::Changed);
    assert_eq!(e.data(), Some(&b"y"[..]));
    c.delete("/smoke/a/b", None).await.unwrap();
    let e = w
        .next_timeout(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.change, Change::Deleted);
    let p = c
        .create("/smoke/a/s-", b"", CreateMode::EphemeralSequential)
        .await
        .unwrap();
    println!("{p}");
    let ((p2, _), l) = c
        .create_and_list(
            "/smoke/a/s-",
            b"",
            CreateMode::EphemeralSequential,
            "/smoke/a",
        )
        .await
        .unwrap();
    assert!(l.unwrap().iter().any(|n| p2.ends_with(n.as_str())));
    c.close().await;
    println!("{:?}", c.state());
}
