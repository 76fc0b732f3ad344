//! Helpers shared by the recipes' integration tests: the test harness's
//! (`zkr_testing::helpers`), and the Apache Curator peer for interop tests.
#![allow(dead_code, unused_imports)]

pub mod java;

pub use zkr_testing::helpers::*;

/// Polls `fut` at most `polls` times (each poll after the previous one woke it), then drops it
/// unfinished: `Some(output)` if it completed within those polls, `None` if it was dropped at
/// its `polls`-th await point (`polls == 0`: dropped before it ran at all). Calling it with
/// 0, 1, 2, ... drops the future at every await point in turn.
pub async fn poll_at_most<F: std::future::Future>(fut: F, polls: usize) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut left = polls;
    std::future::poll_fn(move |cx| {
        if left == 0 {
            return std::task::Poll::Ready(None);
        }
        left -= 1;
        fut.as_mut().poll(cx).map(Some)
    })
    .await
}
