//! `zkr acl get PATH` and `zkr acl set PATH ACL...`: a node's ACL in the readable form
//! `SCHEME:ID:PERMS` (`world:anyone:r`, `digest:app:HASH:cdrwa`, `ip:10.0.0.0/8:r`,
//! `auth::cdrwa`), one entry per line. `Acl::digest` (or `zkr acl digest USER:PASSWORD`) gives the
//! `app:HASH` of a digest user.

use super::{print_raw, CliError, Ctx};

/// `zkr acl ...`
#[derive(clap::Args, Debug)]
pub struct AclArgs {
    /// What to do.
    #[command(subcommand)]
    pub op: AclOp,
}

/// The `acl` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum AclOp {
    /// Print a node's ACL, one SCHEME:ID:PERMS entry per line (and its aversion on stderr with
    /// --stat)
    Get {
        /// The node
        path: String,
        /// Also print the ACL version (aversion) on stderr
        #[arg(long)]
        stat: bool,
    },
    /// Replace a node's ACL
    Set {
        /// The node
        path: String,
        /// Entries SCHEME:ID:PERMS (PERMS: letters of cdrwa), e.g. world:anyone:r
        /// digest:app:HASH:cdrwa; comma-separated lists work too
        #[arg(required = true, value_parser = parse_acl_arg)]
        acl: Vec<Vec<zkr::Acl>>,
        /// Only if the ACL is at this version (Stat aversion)
        #[arg(long, value_name = "N")]
        version: Option<i32>,
    },
    /// Print the digest identity USER:HASH of USER:PASSWORD (for digest ACL entries); no
    /// server needed
    Digest {
        /// USER:PASSWORD
        credentials: String,
    },
}

impl AclOp {
    /// The path the command works on (`/` for `digest`).
    pub fn path(&self) -> &str {
        match self {
            AclOp::Get { path, .. } | AclOp::Set { path, .. } => path,
            AclOp::Digest { .. } => "/",
        }
    }
}

/// Parses one ACL argument (one entry or a comma-separated list).
pub fn parse_acl_arg(s: &str) -> Result<Vec<zkr::Acl>, String> {
    zkr::Acl::parse_list(s).map_err(|e| match e {
        zkr::Error::InvalidArgument(m) => m,
        e => e.to_string(),
    })
}

/// The `USER:HASH` digest identity of `USER:PASSWORD`.
pub fn digest(credentials: &str) -> Result<String, CliError> {
    match credentials.split_once(':') {
        Some((user, password)) if !user.is_empty() => Ok(zkr::Acl::digest(user, password)),
        _ => Err(CliError::Usage(
            "expected USER:PASSWORD (e.g. zkr acl digest app:secret)".into(),
        )),
    }
}

/// Runs `zkr acl ...`.
pub async fn run(ctx: &Ctx, args: &AclArgs) -> Result<(), CliError> {
    match &args.op {
        AclOp::Get { path, stat } => {
            let (acl, st) = ctx.client.get_acl(path).await?;
            let mut out = String::new();
            for a in &acl {
                out.push_str(&a.to_string());
                out.push('\n');
            }
            print_raw(out.as_bytes())?;
            if *stat {
                super::eprint_json_line(&super::StatJson::from(&st))?;
            }
            Ok(())
        }
        AclOp::Set { path, acl, version } => {
            let acl: Vec<zkr::Acl> = acl.iter().flatten().cloned().collect();
            ctx.client
                .set_acl(path, &acl, *version)
                .await
                .map_err(|e| match (&e, version) {
                    (zkr::Error::BadVersion { path }, Some(v)) => CliError::Reworded {
                        message: format!(
                            "the ACL of {path} is not at version {v} (it was changed; re-read it with zkr acl get --stat)"
                        ),
                        source: e,
                    },
                    _ => CliError::Zk(e),
                })?;
            Ok(())
        }
        AclOp::Digest { credentials } => {
            print_raw(format!("{}\n", digest(credentials)?).as_bytes())
        }
    }
}
