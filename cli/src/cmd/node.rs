//! Plain node commands: `ls`, `get`, `set`, `create`, `delete`, `stat`.

use serde::Serialize;
use zkr::{CreateMode, Error};

use super::{eprint_json_line, print_json_line, print_raw, CliError, Ctx, StatJson};

/// `zkr ls PATH`
#[derive(clap::Args, Debug)]
pub struct LsArgs {
    /// Node whose children to list
    pub path: String,
    /// The whole subtree, drawn as a tree (PATH first, children sorted)
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

/// `zkr get PATH`
#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// Node to read
    pub path: String,
    /// Also print the node's stat as a JSON line on stderr
    #[arg(long)]
    pub stat: bool,
}

/// `zkr set PATH DATA`
#[derive(clap::Args, Debug)]
pub struct SetArgs {
    /// Node to write
    pub path: String,
    /// New data; `-` reads it from stdin
    pub data: String,
    /// Only set if the node is at this version (compare-and-set)
    #[arg(long, value_name = "N")]
    pub version: Option<i32>,
}

/// `zkr create PATH [DATA]`
#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Node to create (for --sequential, the prefix; the server appends a 10-digit number)
    pub path: String,
    /// Initial data; `-` reads it from stdin. Default: empty
    pub data: Option<String>,
    /// Ephemeral node: deleted when this command's session ends, i.e. right after it exits
    #[arg(long, conflicts_with = "container")]
    pub ephemeral: bool,
    /// Append a sequence number to the name
    #[arg(long, conflicts_with = "container")]
    pub sequential: bool,
    /// Container node: the server deletes it once its last child is gone
    #[arg(long)]
    pub container: bool,
    /// Create missing ancestors (as persistent nodes), like `mkdir -p`
    #[arg(long, short = 'p')]
    pub parents: bool,
    /// ACL of the new node (ancestors made by --parents get it too): entries
    /// SCHEME:ID:PERMS, e.g. `world:anyone:r`, `digest:app:HASH:cdrwa`, `auth::cdrwa`;
    /// repeatable or comma-separated. Default: open to everyone
    #[arg(long, value_name = "ACL", value_parser = super::acl::parse_acl_arg)]
    pub acl: Vec<Vec<zkr::Acl>>,
}

/// `zkr delete PATH`
#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// Node to delete
    pub path: String,
    /// Only delete if the node is at this version
    #[arg(long, value_name = "N", conflicts_with = "recursive")]
    pub version: Option<i32>,
    /// Delete the node and everything below it (not atomic)
    #[arg(long, short = 'r')]
    pub recursive: bool,
}

/// `zkr stat PATH`
#[derive(clap::Args, Debug)]
pub struct StatArgs {
    /// Node to describe
    pub path: String,
}

/// Children of PATH, sorted, one per line.
pub async fn ls(ctx: &Ctx, args: &LsArgs) -> Result<(), CliError> {
    if args.recursive {
        return ls_tree(ctx, &args.path).await;
    }
    let mut children = ctx.client.get_children(&args.path).await?;
    children.sort_unstable();
    let mut out = String::new();
    for c in &children {
        out.push_str(c);
        out.push('\n');
    }
    print_raw(out.as_bytes())
}

/// `ls -R`: lists the subtree level by level (every listing of a level pipelined), then draws
/// it. Nodes deleted during the walk are left out; PATH itself must exist.
async fn ls_tree(ctx: &Ctx, root: &str) -> Result<(), CliError> {
    use futures::StreamExt;
    let mut kids: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut level = vec![root.to_string()];
    let mut first = true;
    while !level.is_empty() {
        let listed: Vec<(String, Result<Vec<String>, Error>)> = futures::stream::iter(level)
            .map(|p| async move {
                let r = ctx.client.get_children(&p).await;
                (p, r)
            })
            .buffered(64)
            .collect()
            .await;
        let mut next = Vec::new();
        for (p, r) in listed {
            let mut names = match r {
                Ok(n) => n,
                Err(Error::NoNode { .. }) if !first => continue,
                Err(e) => return Err(e.into()),
            };
            names.sort_unstable();
            next.extend(names.iter().map(|n| zkr::path::join(&p, n)));
            kids.insert(p, names);
        }
        first = false;
        level = next;
    }
    print_raw(draw_tree(root, &kids).as_bytes())
}

/// Draws `root` and its descendants with box-drawing branches, children in the given order.
pub fn draw_tree(root: &str, kids: &std::collections::HashMap<String, Vec<String>>) -> String {
    let mut out = format!("{root}\n");
    // (path, prefix for its children)
    let mut stack: Vec<(String, String, bool, String)> = Vec::new();
    let push_children = |stack: &mut Vec<(String, String, bool, String)>, p: &str, prefix: &str| {
        if let Some(names) = kids.get(p) {
            for (i, n) in names.iter().enumerate().rev() {
                let last = i + 1 == names.len();
                stack.push((zkr::path::join(p, n), n.clone(), last, prefix.to_string()));
            }
        }
    };
    push_children(&mut stack, root, "");
    while let Some((path, name, last, prefix)) = stack.pop() {
        let branch = if last { "└── " } else { "├── " };
        out.push_str(&format!("{prefix}{branch}{name}\n"));
        let child_prefix = format!("{prefix}{}", if last { "    " } else { "│   " });
        push_children(&mut stack, &path, &child_prefix);
    }
    out
}

/// Data of PATH, raw on stdout.
pub async fn get(ctx: &Ctx, args: &GetArgs) -> Result<(), CliError> {
    let (data, stat) = ctx.client.get_data(&args.path).await?;
    print_raw(&data)?;
    if args.stat {
        eprint_json_line(&StatJson::from(&stat))?;
    }
    Ok(())
}

/// Says which version was expected when a compare-and-set/delete fails.
fn bad_version(e: Error, expected: Option<i32>) -> CliError {
    match (&e, expected) {
        (Error::BadVersion { path }, Some(v)) => {
            let message =
                format!("node {path} is not at version {v} (it was changed; re-read it and retry)");
            CliError::Reworded { source: e, message }
        }
        _ => CliError::Zk(e),
    }
}

/// Sets PATH's data.
pub async fn set(ctx: &Ctx, args: &SetArgs, data: &[u8]) -> Result<(), CliError> {
    ctx.client
        .set_data(&args.path, data, args.version)
        .await
        .map_err(|e| bad_version(e, args.version))?;
    Ok(())
}

/// The create mode the flags ask for.
pub fn create_mode(args: &CreateArgs) -> CreateMode {
    match (args.container, args.ephemeral, args.sequential) {
        (true, _, _) => CreateMode::Container,
        (false, true, true) => CreateMode::EphemeralSequential,
        (false, true, false) => CreateMode::Ephemeral,
        (false, false, true) => CreateMode::PersistentSequential,
        (false, false, false) => CreateMode::Persistent,
    }
}

/// The parent of a node to create; for a sequential prefix ending in `/` (`/queue/`), the
/// server appends the number inside that node, so the prefix without the `/` is the parent.
fn parent_of(path: &str) -> &str {
    match path.strip_suffix('/') {
        Some("") => "/",
        Some(p) => p,
        None => zkr::path::parent(path).unwrap_or("/"),
    }
}

/// Creates PATH and prints the created path.
pub async fn create(ctx: &Ctx, args: &CreateArgs, data: &[u8]) -> Result<(), CliError> {
    let mode = create_mode(args);
    let acl: Vec<zkr::Acl> = args.acl.iter().flatten().cloned().collect();
    let handle;
    let client = if acl.is_empty() {
        &ctx.client
    } else {
        handle = ctx.client.with_acl(acl);
        &handle
    };
    let created = match client.create(&args.path, data, mode).await {
        Err(Error::NoNode { .. }) if args.parents => {
            let parent = parent_of(&args.path);
            if parent != "/" {
                client.ensure_path(parent).await?;
            }
            client.create(&args.path, data, mode).await?
        }
        Err(e @ Error::NoNode { .. }) => {
            // ZooKeeper answers NoNode to a create when the parent is missing.
            let parent = parent_of(&args.path);
            let message = format!(
                "cannot create {}: parent node {parent} does not exist (use --parents)",
                args.path
            );
            return Err(CliError::Reworded { source: e, message });
        }
        r => r?,
    };
    print_raw(format!("{created}\n").as_bytes())
}

/// Deletes PATH (optionally at a version, or recursively).
pub async fn delete(ctx: &Ctx, args: &DeleteArgs) -> Result<(), CliError> {
    if args.recursive {
        if args.path == "/" {
            return Err(CliError::Usage(
                "refusing to delete the root recursively".into(),
            ));
        }
        // zkr's delete_recursive treats a missing node as done; the CLI reports it.
        if ctx.client.exists(&args.path).await?.is_none() {
            return Err(Error::NoNode {
                path: args.path.clone(),
            }
            .into());
        }
        ctx.client.delete_recursive(&args.path).await?;
    } else {
        ctx.client
            .delete(&args.path, args.version)
            .await
            .map_err(|e| bad_version(e, args.version))?;
    }
    Ok(())
}

#[derive(Serialize)]
struct StatLine<'a> {
    path: &'a str,
    #[serde(flatten)]
    stat: StatJson,
}

/// One JSON line with PATH's stat.
pub async fn stat(ctx: &Ctx, args: &StatArgs) -> Result<(), CliError> {
    match ctx.client.exists(&args.path).await? {
        Some(stat) => print_json_line(&StatLine {
            path: &args.path,
            stat: StatJson::from(&stat),
        }),
        None => Err(Error::NoNode {
            path: args.path.clone(),
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_drawing() {
        let mut kids = std::collections::HashMap::new();
        kids.insert("/app".to_string(), vec!["a".to_string(), "b".to_string()]);
        kids.insert("/app/a".to_string(), vec!["x".to_string()]);
        kids.insert("/app/a/x".to_string(), vec![]);
        kids.insert("/app/b".to_string(), vec!["y".to_string()]);
        assert_eq!(
            draw_tree("/app", &kids),
            "/app\n├── a\n│   └── x\n└── b\n    └── y\n"
        );
    }
}
