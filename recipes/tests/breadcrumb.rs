//! ActiveBreadCrumb mode of `LeaderSelector`: a clean hand-over fences nobody; a crashed active
//! is fenced before the next leader acts; a failing fence means no takeover.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use zkr::Client;
use zkr_recipes::LeaderSelector;

const T: Duration = Duration::from_secs(15);

struct Fencer {
    calls: Arc<AtomicUsize>,
    seen: Arc<StdMutex<Vec<String>>>,
    ok: Arc<AtomicBool>,
}

impl Fencer {
    fn new(ok: bool) -> Fencer {
        Fencer {
            calls: Arc::default(),
            seen: Arc::default(),
            ok: Arc::new(AtomicBool::new(ok)),
        }
    }
}

/// Starts a candidate; its closure reports `id` on `led` and then runs until `resign` fires
/// (a clean resignation) or forever. Returns the task running the selector.
fn candidate(
    client: &Client,
    path: &str,
    crumb: &str,
    id: &str,
    fencer: &Fencer,
    led: mpsc::UnboundedSender<String>,
    resign: Option<oneshot::Receiver<()>>,
) -> tokio::task::JoinHandle<()> {
    let (calls, seen, ok) = (fencer.calls.clone(), fencer.seen.clone(), fencer.ok.clone());
    let selector = LeaderSelector::new(client, path)
        .unwrap()
        .with_id(id)
        .with_requeue(false)
        .with_active_breadcrumb(crumb, move |previous| {
            calls.fetch_add(1, Ordering::SeqCst);
            seen.lock().unwrap().push(previous);
            let ok = ok.load(Ordering::SeqCst);
            async move { ok }
        });
    let id = id.to_string();
    let mut resign = resign;
    tokio::spawn(async move {
        let _ = selector
            .run(move |_leadership| {
                let _ = led.send(id.clone());
                let resign = resign.take();
                async move {
                    match resign {
                        Some(r) => {
                            let _ = r.await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                }
            })
            .await;
    })
}

async fn crumb_of(c: &Client, crumb: &str) -> Option<String> {
    match c.get_data(crumb).await {
        Ok((d, _)) => Some(String::from_utf8(d).unwrap()),
        Err(zkr::Error::NoNode { .. }) => None,
        Err(e) => panic!("{e}"),
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(T, rx.recv())
        .await
        .expect("a leader in time")
        .expect("open")
}

#[tokio::test]
async fn a_clean_hand_over_fences_nobody() {
    let ens = zkr_testing::shared().expect("zookeeper");
    let (ca, cb) = (
        common::client(&ens.connect_string(), 4000).await,
        common::client(&ens.connect_string(), 4000).await,
    );
    let root = common::root("crumb-clean");
    let (path, crumb) = (format!("{root}/election"), format!("{root}/active"));
    let (led_tx, mut led) = mpsc::unbounded_channel();
    let (resign_tx, resign_rx) = oneshot::channel();
    let fa = Fencer::new(true);
    let fb = Fencer::new(true);
    let a = candidate(
        &ca,
        &path,
        &crumb,
        "a",
        &fa,
        led_tx.clone(),
        Some(resign_rx),
    );
    assert_eq!(next(&mut led).await, "a");
    assert_eq!(crumb_of(&ca, &crumb).await.as_deref(), Some("a"));
    let b = candidate(&cb, &path, &crumb, "b", &fb, led_tx, None);
    resign_tx.send(()).unwrap();
    assert_eq!(next(&mut led).await, "b");
    assert_eq!(fb.calls.load(Ordering::SeqCst), 0, "nobody to fence");
    assert_eq!(crumb_of(&cb, &crumb).await.as_deref(), Some("b"));
    a.await.unwrap();
    b.abort();
    ca.close().await;
    cb.close().await;
}

/// A leads, B (fencing with `fb`) waits, then A crashes: its process stops without resigning
/// and its session (with its latch node) goes; its breadcrumb stays.
struct AfterCrash {
    cb: Client,
    crumb: String,
    led: mpsc::UnboundedReceiver<String>,
    b: tokio::task::JoinHandle<()>,
}

async fn crash_the_active(name: &str, fb: &Fencer) -> AfterCrash {
    let ens = zkr_testing::shared().expect("zookeeper");
    let (ca, cb) = (
        common::client(&ens.connect_string(), 4000).await,
        common::client(&ens.connect_string(), 4000).await,
    );
    let root = common::root(name);
    let (path, crumb) = (format!("{root}/election"), format!("{root}/active"));
    let (led_tx, mut led) = mpsc::unbounded_channel();
    let fa = Fencer::new(true);
    let a = candidate(&ca, &path, &crumb, "a", &fa, led_tx.clone(), None);
    assert_eq!(next(&mut led).await, "a");
    let b = candidate(&cb, &path, &crumb, "b", fb, led_tx, None);
    a.abort();
    ca.close().await;
    AfterCrash { cb, crumb, led, b }
}

#[tokio::test]
async fn a_crashed_active_is_fenced_before_the_next_leader_acts() {
    let fb = Fencer::new(true);
    let AfterCrash {
        cb,
        crumb,
        mut led,
        b,
    } = crash_the_active("crumb-crash", &fb).await;
    assert_eq!(next(&mut led).await, "b");
    assert_eq!(fb.calls.load(Ordering::SeqCst), 1);
    assert_eq!(*fb.seen.lock().unwrap(), vec!["a".to_string()]);
    assert_eq!(crumb_of(&cb, &crumb).await.as_deref(), Some("b"));
    b.abort();
    cb.close().await;
}

#[tokio::test]
async fn a_failing_fence_means_no_takeover() {
    let fb = Fencer::new(false);
    let AfterCrash {
        cb,
        crumb,
        mut led,
        b,
    } = crash_the_active("crumb-fail", &fb).await;
    // B is elected again and again, fences, fails, and resigns each time: it never acts.
    let deadline = tokio::time::Instant::now() + T;
    while fb.calls.load(Ordering::SeqCst) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fence was not retried"
        );
        assert!(
            led.try_recv().is_err(),
            "took over although the fence failed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        led.try_recv().is_err(),
        "took over although the fence failed"
    );
    assert_eq!(
        crumb_of(&cb, &crumb).await.as_deref(),
        Some("a"),
        "the breadcrumb still names the old active"
    );
    // Once fencing works, B takes over.
    fb.ok.store(true, Ordering::SeqCst);
    assert_eq!(next(&mut led).await, "b");
    assert_eq!(crumb_of(&cb, &crumb).await.as_deref(), Some("b"));
    b.abort();
    cb.close().await;
}
