//! The `weft` command line: `serve` runs a node; `plugin new` writes a plugin template; the
//! other commands talk to a running node over its HTTP API (`--url`, or `WEFT_URL`, default
//! `http://127.0.0.1:7070`), with a bearer token when the node asks for one (`--token`, or
//! `WEFT_TOKEN`), and print its answers as tables or JSON (`--output`, see [`output`]).

mod client;
mod output;
mod templates;

pub use output::OutputClosed;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::Config;
use crate::node::Node;
use client::NodeClient;

#[derive(Debug, Parser)]
#[command(
    name = "weft",
    version,
    about = "weft: a WebAssembly-hosted actor platform"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How to print a node's answers: `table` or `json` (default: tables on a terminal, JSON
    /// into a pipe or a file).
    #[arg(long = "output", value_enum, env = "WEFT_OUTPUT", global = true)]
    output_format: Option<output::Format>,
    /// The bearer token for a node with `[auth]` tokens (docs/security.md).
    #[arg(long, env = "WEFT_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (defaults: SQLite under ./weft-data, 127.0.0.1:7070, ./plugins watched).
    Serve(ServeArgs),
    /// Create a plugin from a template, or load or list plugins on a running node.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
        #[arg(long, env = "WEFT_URL", default_value = client::DEFAULT_URL, global = true)]
        url: String,
    },
    /// Send a JSON command to an entity and print the reply.
    Send {
        entity_type: String,
        entity_id: String,
        /// The command, as JSON (e.g. '{"op":"increment","by":2}').
        command: String,
        /// Makes a retry safe: sent again with the same key, the command is not applied twice and
        /// gets the first reply (the `Idempotency-Key` header).
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(long, env = "WEFT_URL", default_value = client::DEFAULT_URL)]
        url: String,
    },
    /// List the entities of a type (those with events or a snapshot in the node's journal), a
    /// page at a time: `next` is the `--after` of the next page.
    Entities {
        entity_type: String,
        /// Entities per page, 1 to 1000.
        #[arg(long, default_value_t = crate::entity::ENTITY_PAGE_DEFAULT)]
        limit: usize,
        /// List the entities after this id (the previous page's `next`).
        #[arg(long)]
        after: Option<String>,
        #[arg(long, env = "WEFT_URL", default_value = client::DEFAULT_URL)]
        url: String,
    },
    /// Print an entity's state.
    State {
        entity_type: String,
        entity_id: String,
        #[arg(long, env = "WEFT_URL", default_value = client::DEFAULT_URL)]
        url: String,
    },
    /// Acquire, renew, release or show a named lease (weft as a coordinator of external workers).
    Lease {
        #[command(subcommand)]
        command: LeaseCommand,
        #[arg(long, env = "WEFT_URL", default_value = client::DEFAULT_URL, global = true)]
        url: String,
    },
    /// Read, update, delete or follow a DistributedData key on a clustered node.
    Ddata {
        #[command(subcommand)]
        command: DdataCommand,
        #[arg(long, env = "WEFT_URL", default_value = client::DEFAULT_URL, global = true)]
        url: String,
    },
    /// Print the node's view of its cluster: members, what each hosts, the plugins each has;
    /// or make the transport's certificates (`weft cluster certs`).
    Cluster {
        #[command(subcommand)]
        command: Option<ClusterCommand>,
        #[arg(long, env = "WEFT_URL", default_value = client::DEFAULT_URL)]
        url: String,
    },
    /// Print an entity's events with their metadata.
    Events {
        entity_type: String,
        entity_id: String,
        /// First sequence number to print.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// For a replicated entity type: the replica whose stream to print.
        #[arg(long)]
        replica: Option<String>,
        /// Keep printing events as they are written, one per line, until Ctrl-C.
        #[arg(long, short)]
        follow: bool,
        #[arg(long, env = "WEFT_URL", default_value = client::DEFAULT_URL)]
        url: String,
    },
    /// Compiles one component for a running node (the node starts this itself, so it can stop a
    /// compile that takes too long).
    #[command(name = crate::plugin::COMPILE_SUBCOMMAND, hide = true)]
    CompilePlugin {
        /// The node's `[limits]`, as JSON: the engine must be configured as the node's.
        limits: String,
        input: PathBuf,
        output: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// A weft.toml; command-line flags override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Directory of .wasm plugins, loaded at start and watched for changes.
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// Writer id (a ULID) instead of a new one for this boot.
    #[arg(long)]
    writer_id: Option<ulid::Ulid>,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Upload a .wasm component and hot-load it.
    Load {
        file: PathBuf,
        /// Plugin name (default: the file name without .wasm).
        #[arg(long)]
        name: Option<String>,
    },
    /// Upload a new build of a loaded entity plugin, replay the journal of the entities it
    /// serves through both builds, and activate it only if every state matches (docs/plugins.md).
    Upgrade {
        name: String,
        file: PathBuf,
        /// Replay only this many entities, a deterministic sample.
        #[arg(long)]
        sample: Option<usize>,
        /// Activate even if the replay finds a divergence or a failure.
        #[arg(long)]
        force: bool,
    },
    /// Return to the previous build in the plugin's deployment history.
    Rollback { name: String },
    /// List loaded plugins.
    List,
    /// Write a ready-to-build plugin with a unit test (default folder: plugins/NAME).
    New {
        name: String,
        #[arg(long = "lang", value_enum, default_value = "rust")]
        language: templates::Language,
        #[arg(long, value_enum, default_value = "entity")]
        kind: templates::Kind,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Make a development CA (or reuse the one in DIR) and a certificate for each node, for
    /// `[cluster.tls]`: DIR/ca.pem, DIR/ca.key, DIR/<node>.pem, DIR/<node>.key.
    Certs {
        /// Where the files go; a CA already there signs the new certificates.
        #[arg(long, default_value = "cluster-certs")]
        dir: PathBuf,
        /// The node names, as in each node's `[cluster] name`.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DdataCommand {
    /// Print KEY's value.
    Get {
        key: String,
        /// local, majority or all.
        #[arg(long, default_value = "local")]
        consistency: String,
    },
    /// Apply an op to KEY, e.g. '{"op":"increment","by":3}' or '{"op":"add","element":"x"}'.
    Update {
        key: String,
        op: String,
        /// local (default), majority or all.
        #[arg(long)]
        consistency: Option<String>,
    },
    /// Delete KEY for good.
    Delete {
        key: String,
        #[arg(long, default_value = "local")]
        consistency: String,
    },
    /// Print KEY's value each time it changes.
    Subscribe { key: String },
}

#[derive(Debug, Subcommand)]
enum LeaseCommand {
    /// Acquire NAME for OWNER (on a node with tokens: the token's name); prints the fencing token to pass on to every write.
    Acquire {
        name: String,
        /// The owner; on a node with tokens, the token's name (the default there).
        #[arg(long)]
        owner: Option<String>,
        /// Time to live in milliseconds (the node's default when left out).
        #[arg(long)]
        ttl_ms: Option<u64>,
    },
    /// Extend NAME, held by OWNER with FENCING_TOKEN, to its time to live from now.
    Renew {
        name: String,
        /// The owner; on a node with tokens, the token's name (the default there).
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        fencing_token: u64,
        #[arg(long)]
        ttl_ms: Option<u64>,
    },
    /// Release NAME if OWNER holds it with FENCING_TOKEN.
    Release {
        name: String,
        /// The owner; on a node with tokens, the token's name (the default there).
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        fencing_token: u64,
    },
    /// Print NAME's live holder, if any.
    Show { name: String },
}

impl LeaseCommand {
    /// The lease's name, the action in the URL (`None`: show) and the request body.
    fn request(self) -> (String, Option<&'static str>, serde_json::Value) {
        use serde_json::json;
        match self {
            LeaseCommand::Acquire {
                name,
                owner,
                ttl_ms,
            } => (
                name,
                Some("acquire"),
                json!({"owner": owner, "ttl_ms": ttl_ms}),
            ),
            LeaseCommand::Renew {
                name,
                owner,
                fencing_token,
                ttl_ms,
            } => (
                name,
                Some("renew"),
                json!({"owner": owner, "fencing_token": fencing_token, "ttl_ms": ttl_ms}),
            ),
            LeaseCommand::Release {
                name,
                owner,
                fencing_token,
            } => (
                name,
                Some("release"),
                json!({"owner": owner, "fencing_token": fencing_token}),
            ),
            LeaseCommand::Show { name } => (name, None, serde_json::Value::Null),
        }
    }
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        let format = output::Format::chosen(self.output_format);
        let print = |answer: serde_json::Value| output::print(&answer, format);
        let token = self.token;
        let connect = |url: &str| NodeClient::new(url, token.as_deref());
        match self.command {
            Command::Serve(args) => serve(args).await,
            Command::CompilePlugin {
                limits,
                input,
                output,
            } => crate::plugin::run_child_compile(&limits, &input, &output),
            Command::Plugin { command, url } => match command {
                PluginCommand::Load { file, name } => {
                    let node = connect(&url)?;
                    print(node.load_plugin(&file, name.as_deref()).await?)
                }
                PluginCommand::Upgrade {
                    name,
                    file,
                    sample,
                    force,
                } => {
                    let node = connect(&url)?;
                    match node.upgrade_plugin(&name, &file, sample, force).await {
                        Ok(report) => print(report),
                        Err(error) => {
                            // A refused upgrade answers with its report beside the error.
                            let report = error
                                .downcast_ref::<client::Refusal>()
                                .and_then(|refusal| refusal.body.get("report"));
                            if let Some(report) = report {
                                print(report.clone())?;
                            }
                            Err(error)
                        }
                    }
                }
                PluginCommand::Rollback { name } => print(
                    connect(&url)?
                        .post(&["plugins", &name, "rollback"], &serde_json::Value::Null)
                        .await?,
                ),
                PluginCommand::List => print(connect(&url)?.get(&["plugins"], &[]).await?),
                PluginCommand::New {
                    name,
                    language,
                    kind,
                    dir,
                } => new_plugin(templates::NewPlugin {
                    dir: dir.unwrap_or_else(|| PathBuf::from("plugins").join(&name)),
                    name,
                    language,
                    kind,
                }),
            },
            Command::Lease { command, url } => {
                let node = connect(&url)?;
                let (name, action, body) = command.request();
                print(match action {
                    None => node.get(&["leases", &name], &[]).await?,
                    Some(action) => node.post(&["leases", &name, action], &body).await?,
                })
            }
            Command::Send {
                entity_type,
                entity_id,
                command,
                idempotency_key,
                url,
            } => {
                let node = connect(&url)?;
                let command: serde_json::Value =
                    serde_json::from_str(&command).context("the command is not valid JSON")?;
                print(
                    node.send_command(
                        &entity_type,
                        &entity_id,
                        &command,
                        idempotency_key.as_deref(),
                    )
                    .await?,
                )
            }
            Command::State {
                entity_type,
                entity_id,
                url,
            } => print(
                connect(&url)?
                    .get(&["entities", &entity_type, &entity_id], &[])
                    .await?,
            ),
            Command::Entities {
                entity_type,
                limit,
                after,
                url,
            } => {
                let limit = limit.to_string();
                let mut query = vec![("limit", limit.as_str())];
                if let Some(after) = &after {
                    query.push(("after", after));
                }
                print(
                    connect(&url)?
                        .get(&["entities", &entity_type], &query)
                        .await?,
                )
            }
            Command::Cluster {
                command: Some(ClusterCommand::Certs { dir, nodes }),
                ..
            } => write_cluster_certs(&dir, &nodes),
            Command::Cluster { command: None, url } => {
                print(connect(&url)?.get(&["cluster"], &[]).await?)
            }
            Command::Ddata { command, url } => {
                let node = connect(&url)?;
                match command {
                    DdataCommand::Get { key, consistency } => print(
                        node.get(&["ddata", &key], &[("consistency", &consistency)])
                            .await?,
                    ),
                    DdataCommand::Update {
                        key,
                        op,
                        consistency,
                    } => {
                        let mut body: serde_json::Value =
                            serde_json::from_str(&op).context("the op is not valid JSON")?;
                        if let (Some(fields), Some(consistency)) =
                            (body.as_object_mut(), consistency)
                        {
                            fields.insert("consistency".into(), consistency.into());
                        }
                        print(node.post(&["ddata", &key], &body).await?)
                    }
                    DdataCommand::Delete { key, consistency } => print(
                        node.delete(&["ddata", &key], &[("consistency", &consistency)])
                            .await?,
                    ),
                    DdataCommand::Subscribe { key } => {
                        node.follow_stream(&["ddata", &key, "subscribe"], |value| {
                            output::print_item(value, format)
                        })
                        .await
                    }
                }
            }
            Command::Events {
                entity_type,
                entity_id,
                from,
                replica,
                follow,
                url,
            } => {
                let node = connect(&url)?;
                if follow {
                    return node
                        .follow_events(
                            [&entity_type, &entity_id],
                            from,
                            replica.as_deref(),
                            |event| output::print_item(event, format),
                        )
                        .await;
                }
                let from = from.to_string();
                let mut query = vec![("from", from.as_str())];
                query.extend(replica.as_deref().map(|replica| ("replica", replica)));
                print(
                    node.get(&["entities", &entity_type, &entity_id, "events"], &query)
                        .await?,
                )
            }
        }
    }
}

fn new_plugin(plugin: templates::NewPlugin) -> anyhow::Result<()> {
    let written = plugin.create()?;
    for path in &written {
        println!("created {}", path.display());
    }
    println!("{}", plugin.next_steps());
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    crate::observability::use_configured_format(config.log.format);
    if let Some(listen) = args.listen {
        config.node.listen = listen;
    }
    if let Some(data_dir) = args.data_dir {
        config.node.data_dir = data_dir;
    }
    if let Some(plugins) = args.plugins {
        config.node.plugins_dir = Some(plugins);
    }
    if let Some(writer_id) = args.writer_id {
        config.node.writer_id = Some(writer_id);
    }
    // Compiles run in child processes of this executable, so one that takes too long is stopped.
    if let Ok(executable) = std::env::current_exe() {
        crate::plugin::compile_in_child_processes(executable);
    }
    Node::start(config).await?.wait().await
}

/// `weft cluster certs`: writes the files and says which, and what to put in each node's config.
fn write_cluster_certs(dir: &std::path::Path, nodes: &[String]) -> anyhow::Result<()> {
    let written =
        crate::cluster::certs::write_certificates(dir, nodes).map_err(anyhow::Error::msg)?;
    let ca = written.ca.display();
    match written.ca_created {
        true => println!("created the CA {ca} (its key beside it: keep it private)"),
        false => println!("signed with the CA {ca}"),
    }
    for (name, (cert, key)) in nodes.iter().zip(&written.nodes) {
        println!(
            "node {name}:\n  [cluster.tls]\n  ca = \"{ca}\"\n  cert = \"{}\"\n  key = \"{}\"",
            cert.display(),
            key.display()
        );
    }
    Ok(())
}
