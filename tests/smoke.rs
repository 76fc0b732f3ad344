use std::time::Duration;
use zkr::{testing, Change, Client, CreateMode};

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

/// The wire's sockets have `TCP_NODELAY`: with Nagle's algorithm on, a request sent right
/// behind another waits for the first one's reply, and zkr's pipelining gains nothing.
#[tokio::test]
async fn wire_sockets_have_tcp_nodelay() {
    let ens = testing::shared().expect("zookeeper");
    let cs = ens.connect_string();
    let c = Client::connect(&cs).await.unwrap();
    c.exists("/").await.unwrap();
    let ports: Vec<u16> = cs
        .split(',')
        .filter_map(|a| a.rsplit(':').next()?.parse().ok())
        .collect();
    let seen = tcp_nodelay_of_sockets_to(&ports);
    assert!(
        !seen.is_empty(),
        "no socket of this process is connected to {cs}"
    );
    assert!(
        seen.iter().all(|&(_, nodelay)| nodelay),
        "sockets to ZooKeeper without TCP_NODELAY (fd, nodelay): {seen:?}"
    );
    c.close().await;
}

/// (fd, TCP_NODELAY) of this process's IPv4 sockets whose peer port is one of `ports`.
fn tcp_nodelay_of_sockets_to(ports: &[u16]) -> Vec<(i32, bool)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: read-only queries on a descriptor number; a closed or non-socket descriptor
        // makes them fail, which is skipped.
        unsafe {
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::getpeername(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len) != 0
                || i32::from(addr.sin_family) != libc::AF_INET
                || !ports.contains(&u16::from_be(addr.sin_port))
            {
                continue;
            }
            let mut val: libc::c_int = 0;
            let mut vlen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            if libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &mut val as *mut _ as *mut libc::c_void,
                &mut vlen,
            ) == 0
            {
                out.push((fd, val != 0));
            }
        }
    }
    out
}
