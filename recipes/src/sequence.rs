//! Protected ephemeral-sequential nodes: the building block of locks, semaphores and elections.
//!
//! # Names
//! Curator's protected names: `_c_<uuid>-<marker><sequence>`, e.g.
//! `_c_6f1c…-lock-0000000042`. The uuid lets a client find its own node after a connection
//! loss hid the create's reply (a "ghost" node); the server appends the sequence (`%010d` of the
//! parent's cversion, which wraps from `2147483647` to `-2147483648`).
//!
//! # Order
//! Contenders are ordered by their sequence number *numerically and wrap-aware* (serial number
//! arithmetic relative to a reference), never as strings, so the order survives the wrap.
//!
//! # Cancellation
//! [`create_protected`] returns a [`NodeGuard`]. Until the recipe `disarm`s it, dropping the
//! guard — or dropping the future before the create's reply arrived — removes our node in the
//! background: by path when known, otherwise by finding the uuid-prefixed node owned by our
//! session. No node is left at the head of a queue to deadlock everyone, also when the acquire
//! is cancelled while the connection is down.

use uuid::Uuid;
use zkr::{Client, CreateMode, Stat};

use crate::error::Result;

/// The sequence number after `marker` in a child name, if it is a contender of that kind.
pub(crate) fn parse_seq(name: &str, marker: &str) -> Option<i32> {
    let i = name.rfind(marker)?;
    name[i + marker.len()..].parse::<i32>().ok()
}

/// A contender: its child name and sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Contender {
    pub name: String,
    pub seq: i32,
}

/// The children that carry one of `markers`, in queue order (wrap-aware). `reference` is a
/// sequence known to be inside the live window (ours, when we have a node).
pub(crate) fn contenders(
    children: &[String],
    markers: &[&str],
    reference: Option<i32>,
) -> Vec<Contender> {
    let mut v: Vec<Contender> = children
        .iter()
        .filter_map(|c| {
            markers
                .iter()
                .find_map(|m| parse_seq(c, m))
                .map(|seq| Contender {
                    name: c.clone(),
                    seq,
                })
        })
        .collect();
    // Keys relative to a point well before every live node: (seq - base) as i32 is then
    // monotonic over the live window.
    let base = reference
        .or_else(|| v.first().map(|c| c.seq))
        .unwrap_or(0)
        .wrapping_sub(1 << 30);
    // A comparator, not `sort_by_key`: a key holding the name would clone it at every
    // comparison (O(n log n) allocations for a queue of n, on every wake-up of a waiter).
    v.sort_by(|a, b| {
        let (ka, kb) = (
            a.seq.wrapping_sub(base) as u32,
            b.seq.wrapping_sub(base) as u32,
        );
        ka.cmp(&kb).then_with(|| a.name.cmp(&b.name))
    });
    v
}

/// How many contenders ahead of ours a waiter keeps from its listing through the wait.
const KEEP_AHEAD: usize = 64;

/// What a waiter keeps from its last listing while it waits for one contender ahead of it to
/// go, so that it can decide without listing again when that one goes.
///
/// Sequence numbers only grow, so nodes created since the listing line up behind us, and other
/// deletions only move us forward: if the contenders up to ours, without the one we waited for,
/// already let us proceed (a lock acquired, leadership), we may. Only a short prefix is kept (a
/// thousand waiters in one process would otherwise hold a thousand listings of a thousand
/// names); a waiter further back lists again, which it would need to anyway.
pub(crate) struct Ahead(Option<Vec<String>>);

impl Ahead {
    /// From `order` (a listing in queue order) with our contender at `ours`, waiting for the
    /// one at `awaited`.
    pub fn keep(order: &[Contender], ours: usize, awaited: usize) -> Ahead {
        let gone = order.get(awaited).map(|c| c.name.as_str());
        Ahead((ours <= KEEP_AHEAD).then(|| {
            order
                .iter()
                .take(ours + 1)
                .filter(|c| Some(c.name.as_str()) != gone)
                .map(|c| c.name.clone())
                .collect()
        }))
    }

    /// Once the awaited contender is gone: the names that may still be ahead of ours, and ours
    /// (`None`: too far back to tell; list again).
    pub fn after_gone(self) -> Option<Vec<String>> {
        self.0
    }

    /// Another contender ahead is known to be gone (seen deleted): it no longer counts.
    pub fn forget(&mut self, name: &str) {
        if let Some(v) = self.0.as_mut() {
            v.retain(|n| n != name);
        }
    }
}

/// A created node, removed in the background on drop unless disarmed.
pub(crate) struct NodeGuard {
    client: Client,
    dir: String,
    uuid_prefix: String,
    path: Option<String>,
    armed: bool,
}

impl NodeGuard {
    /// The created node's full path.
    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or("")
    }

    /// The created node's name (last segment).
    pub fn name(&self) -> &str {
        let p = self.path();
        p.rsplit('/').next().unwrap_or(p)
    }

    /// Keeps the node: the caller owns its removal from now on.
    pub fn disarm(mut self) -> String {
        self.armed = false;
        self.path.take().unwrap_or_default()
    }

    /// Removes the node now (and waits for it).
    pub async fn remove(mut self) -> Result<()> {
        self.armed = false;
        remove_node(&self.client, &self.dir, &self.uuid_prefix, self.path.take()).await
    }
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (client, dir, prefix, path) = (
            self.client.clone(),
            self.dir.clone(),
            self.uuid_prefix.clone(),
            self.path.take(),
        );
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    if let Err(e) = remove_node(&client, &dir, &prefix, path).await {
                        tracing::warn!(error = %e, dir, "could not remove an abandoned recipe node");
                    }
                });
            }
            Err(_) => tracing::warn!(
                dir,
                "recipe node dropped outside a runtime; it goes with the session"
            ),
        }
    }
}

/// Deletes our node (by path, or by uuid prefix + our session as owner). Retries connection
/// loss; a lost session means the node is gone anyway.
async fn remove_node(
    client: &Client,
    dir: &str,
    uuid_prefix: &str,
    path: Option<String>,
) -> Result<()> {
    let policy = zkr::RetryPolicy::default();
    let paths = match path {
        Some(p) => vec![p],
        None => match client
            .retry(&policy, || find_ours(client, dir, uuid_prefix))
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_session_lost() || e.is_no_node() => return Ok(()),
            Err(e) => return Err(e.into()),
        },
    };
    for p in paths {
        match client.retry(&policy, || client.delete(&p, None)).await {
            Ok(()) => {}
            Err(e) if e.is_no_node() || e.is_session_lost() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Children of `dir` with our uuid prefix whose ephemeral owner is our (pinned) session.
async fn find_ours(client: &Client, dir: &str, uuid_prefix: &str) -> zkr::Result<Vec<String>> {
    let sid = client.session_id().map(|s| s.0).unwrap_or(0);
    let mut ours = Vec::new();
    for c in client.get_children(dir).await? {
        if c.starts_with(uuid_prefix) {
            let p = zkr::path::join(dir, &c);
            if let Some(st) = client.exists(&p).await? {
                if st.ephemeral_owner == sid {
                    ours.push(p);
                }
            }
        }
    }
    Ok(ours)
}

/// Creates `dir/_c_<uuid>-<marker>NNNNNNNNNN` (ephemeral sequential) with `data` on the pinned
/// `client`, and lists `dir` in the same round trip. Creates `dir` (as containers) if missing.
/// After a connection loss it finds its own node by uuid and owner instead of creating a
/// second one. Returns the guard, the node's stat and the children listing.
pub(crate) async fn create_protected(
    client: &Client,
    dir: &str,
    marker: &str,
    data: &[u8],
) -> Result<(NodeGuard, Stat, Vec<String>)> {
    let uuid_prefix = format!("_c_{}-", Uuid::new_v4());
    let prefix = zkr::path::join(dir, &format!("{uuid_prefix}{marker}"));
    let mut guard = NodeGuard {
        client: client.clone(),
        dir: dir.to_string(),
        uuid_prefix,
        path: None,
        armed: true,
    };
    loop {
        match client
            .create_and_list(&prefix, data, CreateMode::EphemeralSequential, dir)
            .await
        {
            Ok(((path, stat), listed)) => {
                guard.path = Some(path);
                let children = match listed {
                    Ok(c) => c,
                    Err(_) => {
                        client
                            .retry(&zkr::RetryPolicy::default(), || client.get_children(dir))
                            .await?
                    }
                };
                return Ok((guard, stat, children));
            }
            Err(zkr::Error::NoNode { .. }) => {
                // No directory yet, or the server removed the container between our mkdir and
                // create. Creating it is idempotent, so a connection loss is retried too.
                let policy = zkr::RetryPolicy::default();
                client
                    .retry(&policy, || client.ensure_containers(dir))
                    .await?;
            }
            Err(e) if e.is_connection_loss() => {
                // The create may have run and only its reply was lost: look for our node
                // before trying again (see docs/failure-modes.md, *Ghost node*).
                let found = client
                    .retry(&zkr::RetryPolicy::default(), || {
                        find_ours(client, dir, &guard.uuid_prefix)
                    })
                    .await;
                if let Ok(mut found) = found {
                    if let Some(path) = found.pop() {
                        guard.path = Some(path.clone());
                        for extra in found {
                            let _ = client.delete(&extra, None).await;
                        }
                        // The connection may drop again: these reads are retried too.
                        let policy = zkr::RetryPolicy::default();
                        let stat = client.retry(&policy, || client.exists(&path)).await?;
                        let children = client.retry(&policy, || client.get_children(dir)).await?;
                        if let Some(stat) = stat {
                            return Ok((guard, stat, children));
                        }
                        guard.path = None;
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sequences_including_negative() {
        assert_eq!(parse_seq("_c_ab-cd-lock-0000000042", "lock-"), Some(42));
        assert_eq!(parse_seq("_c_ab-lock--2147483648", "lock-"), Some(i32::MIN));
        assert_eq!(parse_seq("_c_ab-lock--000000005", "lock-"), Some(-5));
        assert_eq!(parse_seq("abcdef__lock__0000000007", "__lock__"), Some(7));
        assert_eq!(parse_seq("other", "lock-"), None);
    }

    #[test]
    fn orders_across_the_32_bit_wrap() {
        let names: Vec<String> = [
            "x-lock--2147483648",
            "x-lock-2147483646",
            "x-lock--2147483647",
            "x-lock-2147483647",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let order: Vec<i32> = contenders(&names, &["lock-"], Some(2147483646))
            .into_iter()
            .map(|c| c.seq)
            .collect();
        assert_eq!(order, vec![2147483646, 2147483647, i32::MIN, i32::MIN + 1]);
        // Without a reference, the window is found from the first name listed.
        let order: Vec<i32> = contenders(&names, &["lock-"], None)
            .into_iter()
            .map(|c| c.seq)
            .collect();
        assert_eq!(order, vec![2147483646, 2147483647, i32::MIN, i32::MIN + 1]);
    }

    #[test]
    fn ahead_keeps_the_prefix_without_the_awaited_one() {
        let names: Vec<String> = (1..=4)
            .map(|i| format!("_c_x-latch-000000000{i}"))
            .collect();
        let order = contenders(&names, &["latch-"], None);
        // Third in line, waiting for the second: the first, and us, remain.
        let rest = Ahead::keep(&order, 2, 1).after_gone().unwrap();
        assert_eq!(rest, vec![names[0].clone(), names[2].clone()]);
        // Far back: nothing is kept, the waiter lists again.
        let many: Vec<String> = (0..100).map(|i| format!("_c_x-latch-{i:010}")).collect();
        let order = contenders(&many, &["latch-"], None);
        assert!(Ahead::keep(&order, 80, 79).after_gone().is_none());
    }

    #[test]
    fn mixed_markers_sort_together() {
        let names: Vec<String> = [
            "_c_a-lock-0000000003",
            "ff__lock__0000000001",
            "_c_b-lock-0000000002",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let order: Vec<String> = contenders(&names, &["lock-", "__lock__"], None)
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(
            order,
            vec![
                "ff__lock__0000000001",
                "_c_b-lock-0000000002",
                "_c_a-lock-0000000003"
            ]
        );
    }
}
