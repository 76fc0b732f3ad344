//! `zkr config get|set|watch PATH`: a JSON config value on one node (the `Config` recipe of
//! `zkr-recipes`, with `serde_json::Value` as the type, so any JSON is accepted).
//!
//! * `get PATH` prints one JSON line `{"path","value","version","mzxid"}` (a fresh read:
//!   `sync` + `getData`); exit 3 if nothing is published.
//! * `set PATH JSON [--version V]` validates the JSON and publishes it (compare-and-set with
//!   `--version`; `--version -1` means "only if nothing is published yet"); `-` reads stdin.
//! * `watch PATH [--count N]` prints one JSON line per event (`value`, `absent`, `invalid`,
//!   `stale`, `fresh`) until Ctrl-C / SIGTERM; it keeps going across reconnects and new
//!   sessions, and keeps the last good value when a bad payload is published.

use serde::Serialize;
use serde_json::Value;
use zkr_recipes::{Config, ConfigEvent};

use super::{follow, print_json_line, CliError, Ctx};

/// `zkr config ...`
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// What to do.
    #[command(subcommand)]
    pub op: ConfigOp,
}

/// The `config` operations.
#[derive(clap::Subcommand, Debug)]
pub enum ConfigOp {
    /// Print the current value as one JSON line (fresh read)
    Get {
        /// Config node
        path: String,
    },
    /// Publish a JSON value
    Set {
        /// Config node (created with its parents if missing)
        path: String,
        /// The JSON value; `-` reads it from stdin
        json: String,
        /// Only if the node is at this data version (-1: only if nothing is published yet)
        #[arg(long, allow_hyphen_values = true, value_name = "V")]
        version: Option<i32>,
    },
    /// Print one JSON line per config event until Ctrl-C
    Watch {
        /// Config node (it need not exist)
        path: String,
        /// Exit after N events
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

impl ConfigOp {
    /// The node path.
    pub fn path(&self) -> &str {
        match self {
            ConfigOp::Get { path } | ConfigOp::Set { path, .. } | ConfigOp::Watch { path, .. } => {
                path
            }
        }
    }
}

/// Maps a recipe error to the CLI's error (keeping zkr's exit codes).
pub fn recipe_err(e: zkr_recipes::Error) -> CliError {
    match e {
        zkr_recipes::Error::Zk(z) => CliError::Zk(z),
        zkr_recipes::Error::Invalid(m) => CliError::Usage(m),
        other => CliError::Other(other.to_string()),
    }
}

#[derive(Serialize)]
struct ValueLine<'a> {
    event: &'static str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mzxid: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stale: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl<'a> ValueLine<'a> {
    fn new(event: &'static str, path: &'a str) -> Self {
        ValueLine {
            event,
            path,
            value: None,
            version: None,
            mzxid: None,
            stale: None,
            error: None,
        }
    }
}

/// Runs `zkr config ...`. `input` is the JSON of `set`, read before connecting.
pub async fn run(ctx: &Ctx, args: &ConfigArgs, input: &[u8]) -> Result<(), CliError> {
    let path = args.op.path();
    let cfg: Config<Value> = Config::new(&ctx.client, path).map_err(recipe_err)?;
    match &args.op {
        ConfigOp::Get { .. } => match cfg.get().await.map_err(recipe_err)? {
            Some(v) => print_json_line(&ValueLine {
                value: Some(&v.value),
                version: Some(v.version),
                mzxid: Some(v.mzxid),
                ..ValueLine::new("value", path)
            }),
            None => Err(CliError::Zk(zkr::Error::NoNode {
                path: path.to_string(),
            })),
        },
        ConfigOp::Set { version, .. } => {
            let value = parse_json(input)?;
            let stat = match version {
                None => cfg.publish(&value).await,
                Some(v) if *v < 0 => cfg.publish_cas(&value, None).await,
                Some(v) => cfg.publish_cas(&value, Some(*v)).await,
            }
            .map_err(recipe_err)?;
            print_json_line(&ValueLine {
                version: Some(stat.version),
                mzxid: Some(stat.mzxid),
                ..ValueLine::new("published", path)
            })
        }
        ConfigOp::Watch { count, .. } => {
            let sub = cfg.subscribe().map_err(recipe_err)?;
            follow(&ctx.client, sub, *count, |ev| {
                let line = match &ev {
                    ConfigEvent::Value(v) => ValueLine {
                        value: Some(&v.value),
                        version: Some(v.version),
                        mzxid: Some(v.mzxid),
                        stale: Some(v.stale),
                        ..ValueLine::new("value", path)
                    },
                    ConfigEvent::Absent => ValueLine::new("absent", path),
                    ConfigEvent::Invalid {
                        error,
                        version,
                        mzxid,
                    } => ValueLine {
                        version: Some(*version),
                        mzxid: Some(*mzxid),
                        error: Some(error.to_string()),
                        ..ValueLine::new("invalid", path)
                    },
                    ConfigEvent::Error(e) => ValueLine {
                        error: Some(e.to_string()),
                        ..ValueLine::new("error", path)
                    },
                    ConfigEvent::Stale => ValueLine::new("stale", path),
                    ConfigEvent::Fresh => ValueLine::new("fresh", path),
                    ConfigEvent::Lagged { missed } => ValueLine {
                        error: Some(format!("{missed} events were lost: the reader lagged")),
                        ..ValueLine::new("lagged", path)
                    },
                };
                print_json_line(&line).map(|_| true)
            })
            .await
        }
    }
}

/// Parses the JSON argument of `set`.
pub fn parse_json(input: &[u8]) -> Result<Value, CliError> {
    serde_json::from_slice(input)
        .map_err(|e| CliError::Usage(format!("the value is not valid JSON: {e}")))
}
