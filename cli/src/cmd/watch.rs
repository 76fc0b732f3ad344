//! `zkr watch PATH [--children]`: one JSON line per change, until Ctrl-C / SIGTERM (or
//! `--count N` events). Uses zkr's watch streams, so it keeps going across reconnects and new
//! sessions and never misses the final state of a node (quick changes may coalesce).

use serde::Serialize;
use zkr::Change;

use super::{follow, print_json_line, CliError, Ctx, StatJson};

/// `zkr watch PATH`
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// Node to watch (it need not exist)
    pub path: String,
    /// Watch the node's children instead of its data
    #[arg(long)]
    pub children: bool,
    /// Exit after N events (the initial state counts as one)
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

fn change_name(c: Change) -> &'static str {
    match c {
        Change::Initial => "initial",
        Change::Created => "created",
        Change::Changed => "changed",
        Change::Deleted => "deleted",
        Change::Recreated => "recreated",
    }
}

#[derive(Serialize)]
struct DataLine<'a> {
    change: &'static str,
    path: &'a str,
    exists: bool,
    /// The data as UTF-8 (invalid sequences replaced); null if the node does not exist.
    data: Option<String>,
    version: Option<i32>,
    stat: Option<StatJson>,
}

#[derive(Serialize)]
struct ChildrenLine<'a> {
    change: &'static str,
    path: &'a str,
    exists: bool,
    /// Sorted children; null if the node does not exist.
    children: Option<&'a [String]>,
    cversion: Option<i32>,
    stat: Option<StatJson>,
}

/// Runs the watch until a signal, `--count` events, or the client closing. A watch error is
/// logged and not counted: the stream keeps going.
pub async fn run(ctx: &Ctx, args: &WatchArgs) -> Result<(), CliError> {
    let path = args.path.as_str();
    let warn = |e: zkr::Error| {
        tracing::warn!(path, error = %e, "watch error; still watching");
        Ok(false)
    };
    if args.children {
        let stream = ctx.client.watch_children(path)?;
        follow(&ctx.client, stream, args.count, |ev| match ev {
            Err(e) => warn(e),
            Ok(ev) => {
                let stat = ev.node.as_ref().map(|(_, s)| *s);
                print_json_line(&ChildrenLine {
                    change: change_name(ev.change),
                    path,
                    exists: ev.node.is_some(),
                    children: ev.children(),
                    cversion: stat.map(|s| s.cversion),
                    stat: stat.as_ref().map(StatJson::from),
                })
                .map(|_| true)
            }
        })
        .await
    } else {
        let stream = ctx.client.watch_data(path)?;
        follow(&ctx.client, stream, args.count, |ev| match ev {
            Err(e) => warn(e),
            Ok(ev) => print_json_line(&DataLine {
                change: change_name(ev.change),
                path,
                exists: ev.node.is_some(),
                data: ev.data().map(|d| String::from_utf8_lossy(d).into_owned()),
                version: ev.stat().map(|s| s.version),
                stat: ev.stat().map(StatJson::from),
            })
            .map(|_| true),
        })
        .await
    }
}
