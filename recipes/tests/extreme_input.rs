//! Extreme input to the recipes, generated: odd and huge paths, zero and huge counts,
//! `Duration::ZERO`, `Duration::MAX` and everything between as timeouts. Every call returns a
//! typed result (a value, or an `Error` saying what is wrong) or saturates (a timeout beyond what
//! the clock holds means "no deadline"); none panics. Timed waits run against a real ZooKeeper.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use zkr::Client;
use zkr_recipes::{
    AtomicCounter, Config, ConfigTree, Error, IdBlocks, Mutex, RwLock, Semaphore, SequentialIds,
};

/// One runtime and one client for every case (cases must be cheap).
fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn zk_client() -> &'static Client {
    static C: OnceLock<Client> = OnceLock::new();
    C.get_or_init(|| {
        let ens = zkr_testing::shared().expect("zookeeper");
        rt().block_on(client(&ens.connect_string(), 10_000))
    })
}

/// Paths: valid ones, and every kind of odd one (empty, relative, `//`, trailing `/`, `.` and
/// `..` segments, NUL and other control characters, non-ASCII, reserved names, very long).
fn any_path() -> impl Strategy<Value = String> {
    prop_oneof![
        "(/[a-z0-9_-]{1,12}){1,6}",
        "[/a-z.]{0,20}",
        "\\PC{0,40}",
        ".{0,40}",
        Just(String::new()),
        Just("/".to_string()),
        Just("//".to_string()),
        Just("/a/".to_string()),
        Just("/a/./b".to_string()),
        Just("/a/../b".to_string()),
        Just("/a\u{0}b".to_string()),
        Just("/a\u{1}b".to_string()),
        Just("/zookeeper".to_string()),
        Just("/zookeeper/quota".to_string()),
        Just("/\u{fffe}".to_string()),
        (1usize..200_000).prop_map(|n| format!("/{}", "x".repeat(n))),
        (1usize..2_000).prop_map(|n| "/a".repeat(n)),
    ]
}

/// Durations from zero to `Duration::MAX`, the extremes more often than the middle.
fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::MAX),
        Just(Duration::from_secs(u64::MAX)),
        Just(Duration::from_secs(u64::MAX / 2)),
        Just(Duration::from_secs(i64::MAX as u64)),
        Just(Duration::from_millis(u64::MAX)),
        (0u64..u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..50).prop_map(Duration::from_millis),
    ]
}

/// A duration short enough to wait out in a test when the wait cannot succeed.
fn short_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        (0u64..30).prop_map(Duration::from_millis),
    ]
}

fn is_timeout(e: &Error) -> bool {
    matches!(e, Error::Timeout { .. })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Constructors validate the path and the counts, and send nothing: any input is `Ok`
    /// exactly when the path is valid (and the count is not zero), else a typed error.
    #[test]
    fn constructors_take_any_path_and_count(
        path in any_path(),
        leases in any::<usize>(),
        block in any::<u32>(),
        d in any_duration(),
        base in any_duration(),
        tries in any::<u32>(),
    ) {
        let c = zk_client();
        let valid = zkr::path::validate_path(&path, false).is_ok();
        prop_assert_eq!(Mutex::new(c, &path).is_ok(), valid);
        prop_assert_eq!(RwLock::new(c, &path).is_ok(), valid);
        prop_assert_eq!(Semaphore::new(c, &path, leases).is_ok(), valid && leases > 0);
        prop_assert_eq!(IdBlocks::new(c, &path, block).map(|b| b.with_timeout(d)).is_ok(), valid && block > 0);
        prop_assert_eq!(Config::<serde_json::Value>::new(c, &path).is_ok(), valid);
        prop_assert_eq!(ConfigTree::<serde_json::Value>::new(c, &path).is_ok(), valid);
        prop_assert_eq!(SequentialIds::new(c, &path).is_ok(), valid);
        let counter = AtomicCounter::new(c, &path)
            .map(|a| a.with_timeout(d).with_backoff(base, d).with_max_tries(tries));
        prop_assert_eq!(counter.is_ok(), valid);
        for r in [
            Mutex::new(c, &path).err(),
            Semaphore::new(c, &path, leases).err(),
            IdBlocks::new(c, &path, block).err(),
        ]
        .into_iter()
        .flatten()
        {
            prop_assert!(
                matches!(r, Error::Zk(zkr::Error::InvalidPath { .. }) | Error::Invalid(_)),
                "{:?}", r
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Timed waits with any timeout: an uncontended lock, semaphore or config read returns at
    /// once or says `Timeout`; a counter with any timeout, backoff and tries counts or says why
    /// not; a contended lock with a short timeout says `Timeout`, and with any longer one
    /// (up to `Duration::MAX`) gets the lock once it is free.
    #[test]
    fn timed_waits_take_any_duration(d in any_duration(), short in short_duration(), base in any_duration(), tries in any::<u32>()) {
        let c = zk_client();
        rt().block_on(async {
            let root = root("extreme-waits");
            let m = Mutex::new(c, &format!("{root}/mutex")).unwrap();
            match m.acquire_timeout(d).await {
                Ok(g) => g.release().await.unwrap(),
                Err(e) => prop_assert!(is_timeout(&e) && d < Duration::from_secs(1), "{:?} after {:?}", e, d),
            }
            let rw = RwLock::new(c, &format!("{root}/rw")).unwrap();
            match rw.write_timeout(d).await {
                Ok(g) => g.release().await.unwrap(),
                Err(e) => prop_assert!(is_timeout(&e) && d < Duration::from_secs(1), "{:?} after {:?}", e, d),
            }
            let sem = Semaphore::new(c, &format!("{root}/sem"), usize::MAX).unwrap();
            match sem.acquire_timeout(d).await {
                Ok(lease) => lease.release().await.unwrap(),
                Err(e) => prop_assert!(is_timeout(&e) && d < Duration::from_secs(1), "{:?} after {:?}", e, d),
            }
            let cfg = Config::<serde_json::Value>::new(c, &format!("{root}/cfg")).unwrap();
            match cfg.get_timeout(d).await {
                Ok(v) => prop_assert!(v.is_none()),
                Err(e) => prop_assert!(is_timeout(&e) && d < Duration::from_secs(1), "{:?} after {:?}", e, d),
            }
            let counter = AtomicCounter::new(c, &format!("{root}/counter"))
                .unwrap()
                .with_timeout(d)
                .with_backoff(base, d)
                .with_max_tries(tries);
            // Uncontended, so only a short timeout may run out.
            match counter.increment().await {
                Ok(v) => prop_assert_eq!(v.post, 1),
                Err(e) => prop_assert!(is_timeout(&e) && d < Duration::from_secs(1), "{:?} after {:?}", e, d),
            }

            // Contended: a short timeout runs out, any timeout gets the lock once it is free.
            let held = m.acquire().await.unwrap();
            let e = m.acquire_timeout(short).await.err();
            prop_assert!(e.as_ref().is_some_and(is_timeout), "{:?} after {:?}", e, short);
            let waiter = {
                let m = m.clone();
                tokio::spawn(async move { m.acquire_timeout(d.max(Duration::from_secs(10))).await })
            };
            // Release only once the waiter is queued behind the holder (two lock nodes).
            let t0 = std::time::Instant::now();
            while c.get_children(&format!("{root}/mutex")).await.unwrap().len() < 2 {
                prop_assert!(t0.elapsed() < Duration::from_secs(10), "the waiter never queued");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            held.release().await.unwrap();
            let g = tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("the waiter gets the lock")
                .unwrap()
                .unwrap();
            g.release().await.unwrap();
            c.delete_recursive(&root).await.unwrap();
            Ok(())
        })?;
    }

    /// Counts: zero gives nothing, a huge count is refused with a typed error before anything
    /// is sent (instead of trying to allocate or create it), a block of `u32::MAX` IDs works.
    #[test]
    fn id_counts_from_zero_to_huge(n in prop_oneof![Just(usize::MAX), Just(usize::MAX / 2), Just(1usize << 40), ((1usize << 20) + 1)..usize::MAX]) {
        let c = zk_client();
        rt().block_on(async {
            let root = root("extreme-counts");
            let ids = SequentialIds::new(c, &format!("{root}/seq")).unwrap();
            prop_assert_eq!(ids.next_batch(0).await.unwrap(), Vec::<i64>::new());
            let e = ids.next_batch(n).await.unwrap_err();
            prop_assert!(matches!(e, Error::Invalid(_)), "{:?}", e);
            let blocks = IdBlocks::new(c, &format!("{root}/blocks"), u32::MAX).unwrap();
            prop_assert_eq!(blocks.next_batch(0).await.unwrap(), Vec::<i64>::new());
            let e = blocks.next_batch(n).await.unwrap_err();
            prop_assert!(matches!(e, Error::Invalid(_)), "{:?}", e);
            let two = blocks.next_batch(2).await.unwrap();
            prop_assert_eq!(two, vec![1, 2]);
            let _ = c.delete_recursive(&root).await;
            Ok(())
        })?;
    }
}
