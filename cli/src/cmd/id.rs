//! `zkr id next PATH [--count N] [--counter | --block N]`: cluster-wide unique IDs, one per line
//! on stdout, increasing within one run.
//!
//! * default: sequential-node IDs (`SequentialIds`): PATH is the directory; with `--count N`
//!   all N creates are in flight at once (pipelined) and the IDs are printed sorted.
//! * `--counter`: increments of a Curator-compatible atomic counter at PATH (`AtomicCounter`),
//!   one compare-and-set each.
//! * `--block B`: `IdBlocks`: reserves blocks of B IDs on the counter at PATH with one
//!   compare-and-set per block and hands them out locally.

use std::io::Write;

use zkr_recipes::{AtomicCounter, IdBlocks, SequentialIds};

use super::config::recipe_err;
use super::{CliError, Ctx};

/// Most IDs one `zkr id next` hands out.
const MAX_COUNT: usize = 1 << 20;

/// `zkr id ...`
#[derive(clap::Args, Debug)]
pub struct IdArgs {
    /// What to do.
    #[command(subcommand)]
    pub op: IdOp,
}

/// The `id` operations.
#[derive(clap::Subcommand, Debug)]
pub enum IdOp {
    /// Print new unique IDs, one per line
    Next {
        /// Directory (sequential nodes) or counter node (--counter / --block)
        path: String,
        /// How many IDs
        #[arg(long, default_value_t = 1, value_name = "N")]
        count: usize,
        /// Use an atomic counter (Curator DistributedAtomicLong layout) instead of sequential nodes
        #[arg(long, conflicts_with = "block")]
        counter: bool,
        /// Reserve blocks of B IDs on the counter and hand them out locally
        #[arg(long, value_name = "B")]
        block: Option<u32>,
    },
}

impl IdOp {
    /// The node path.
    pub fn path(&self) -> &str {
        match self {
            IdOp::Next { path, .. } => path,
        }
    }
}

/// Runs `zkr id ...`.
pub async fn run(ctx: &Ctx, args: &IdArgs) -> Result<(), CliError> {
    let IdOp::Next {
        path,
        count,
        counter,
        block,
    } = &args.op;
    // The recipes refuse more than this per call too; the counter loop below would not.
    if *count > MAX_COUNT {
        return Err(CliError::Usage(format!(
            "--count {count}: at most {MAX_COUNT} IDs per call"
        )));
    }
    let ids = if let Some(b) = block {
        IdBlocks::new(&ctx.client, path, *b)
            .map_err(recipe_err)?
            .next_batch(*count)
            .await
            .map_err(recipe_err)?
    } else if *counter {
        let c = AtomicCounter::new(&ctx.client, path).map_err(recipe_err)?;
        let mut out = Vec::with_capacity((*count).min(4096));
        for _ in 0..*count {
            out.push(c.increment().await.map_err(recipe_err)?.post);
        }
        out
    } else {
        SequentialIds::new(&ctx.client, path)
            .map_err(recipe_err)?
            .next_batch(*count)
            .await
            .map_err(recipe_err)?
    };
    let mut out = std::io::stdout().lock();
    for id in ids {
        writeln!(out, "{id}").map_err(|source| CliError::Io {
            context: "writing to stdout",
            source,
        })?;
    }
    out.flush().map_err(|source| CliError::Io {
        context: "writing to stdout",
        source,
    })
}
