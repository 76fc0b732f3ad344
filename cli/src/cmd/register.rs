//! `zkr register NAME --id ID [--data JSON]` and `zkr services NAME [--watch]`: service
//! registration and discovery in Apache Curator's `curator-x-discovery` layout
//! (`{base}/{name}/{id}`, data = Curator's ServiceInstance JSON), so Java services see the
//! instance and vice versa.
//!
//! * `register` registers the instance and stays registered — across reconnects and new
//!   sessions, re-created with its payload after a session loss — until Ctrl-C / SIGTERM,
//!   then unregisters. It prints one JSON line per state change (`registered`, `pending`,
//!   `unregistered`).
//! * `services` prints the live instances as one JSON line `{"service","instances":[..]}`;
//!   with `--watch`, one line per change until Ctrl-C (or `--count N` lines).

use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use zkr_recipes::{Discovery, Registration, RegistrationState, ServiceInstance};

use super::config::recipe_err;
use super::{follow, log_session_states, print_json_line, shutdown_signal, CliError, Ctx};

/// Default base path of the registry (Curator's examples use `/services` too).
pub const DEFAULT_BASE: &str = "/services";

/// `zkr register NAME --id ID`
#[derive(clap::Args, Debug)]
pub struct RegisterArgs {
    /// Service name
    pub name: String,
    /// Instance id (unique within the service)
    #[arg(long)]
    pub id: String,
    /// Payload JSON (`-` reads stdin)
    #[arg(long, value_name = "JSON")]
    pub data: Option<String>,
    /// Address to advertise
    #[arg(long)]
    pub address: Option<String>,
    /// Port to advertise
    #[arg(long)]
    pub port: Option<u16>,
    /// Base path of the registry
    #[arg(long, default_value = DEFAULT_BASE)]
    pub base: String,
}

/// `zkr services NAME`
#[derive(clap::Args, Debug)]
pub struct ServicesArgs {
    /// Service name
    pub name: String,
    /// Print one line per change until Ctrl-C
    #[arg(long)]
    pub watch: bool,
    /// With --watch: exit after N lines
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Base path of the registry
    #[arg(long, default_value = DEFAULT_BASE)]
    pub base: String,
}

/// Parses the `--data` payload (already read, e.g. from stdin).
pub fn parse_payload(data: &[u8]) -> Result<Value, CliError> {
    if data.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(data)
        .map_err(|e| CliError::Usage(format!("--data is not valid JSON: {e}")))
}

#[derive(Serialize)]
struct StatusLine<'a> {
    event: &'static str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<u64>,
}

fn status_line(path: &str, s: RegistrationState) -> StatusLine<'_> {
    match s {
        RegistrationState::Registered { session, epoch } => StatusLine {
            event: "registered",
            path,
            session: Some(session.to_string()),
            epoch: Some(epoch),
        },
        RegistrationState::Idle => StatusLine {
            event: "idle",
            path,
            session: None,
            epoch: None,
        },
        RegistrationState::Pending => StatusLine {
            event: "pending",
            path,
            session: None,
            epoch: None,
        },
        RegistrationState::Unregistered => StatusLine {
            event: "unregistered",
            path,
            session: None,
            epoch: None,
        },
    }
}

/// Runs `zkr register ...` until a signal. `payload` is the parsed `--data`.
pub async fn register(ctx: &Ctx, args: &RegisterArgs, payload: Value) -> Result<(), CliError> {
    let _states = log_session_states(&ctx.client);
    let mut inst = ServiceInstance::new(&args.name, &args.id).with_payload(payload);
    if let Some(a) = &args.address {
        inst = inst.with_address(a);
    }
    if let Some(p) = args.port {
        inst = inst.with_port(p);
    }
    let reg = Registration::new(&ctx.client, &args.base, inst).map_err(recipe_err)?;
    reg.start().await.map_err(recipe_err)?;
    let path = reg.path().to_string();
    // The state now, then every change (ends once unregistered, e.g. the client closed).
    let mut changes = reg.changes();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            r = &mut shutdown => { r?; break; }
            s = changes.next() => match s {
                Some(s) => print_json_line(&status_line(&path, s))?,
                None => break,
            },
        }
    }
    reg.unregister().await.map_err(recipe_err)?;
    print_json_line(&status_line(&path, RegistrationState::Unregistered))
}

#[derive(Serialize)]
struct ServicesLine<'a> {
    service: &'a str,
    instances: &'a [ServiceInstance],
}

/// Runs `zkr services ...`.
pub async fn services(ctx: &Ctx, args: &ServicesArgs) -> Result<(), CliError> {
    if !args.watch {
        let v = Discovery::instances(&ctx.client, &args.base, &args.name)
            .await
            .map_err(recipe_err)?;
        return print_json_line(&ServicesLine {
            service: &args.name,
            instances: &v,
        });
    }
    let disc = Discovery::new(&ctx.client, &args.base, &args.name).map_err(recipe_err)?;
    disc.start().map_err(recipe_err)?;
    follow(&ctx.client, disc, args.count, |v| {
        print_json_line(&ServicesLine {
            service: &args.name,
            instances: &v,
        })
        .map(|_| true)
    })
    .await
}
