//! `streamflow flows …`: the command-line client of `streamflow serve`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::Subcommand;
use serde_json::Value;

/// Where the server is and how to talk to it.
#[derive(clap::Args)]
pub struct Connection {
    /// Server address.
    #[arg(
        long,
        env = "STREAMFLOW_SERVER",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub(crate) server: String,
    /// Bearer token.
    #[arg(long, env = "STREAMFLOW_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
    /// Print the server's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// What to do with the server's flows.
#[derive(Subcommand)]
pub enum FlowsAction {
    /// Submit a new flow (version 1) and start it.
    Submit {
        /// Flow file.
        file: PathBuf,
        /// Override a setting, as for `run`.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        overrides: Vec<String>,
    },
    /// Make a flow file the next version of its flow (hot reload when it runs).
    Update {
        /// Flow file (its `name` names the flow).
        file: PathBuf,
        /// Override a setting, as for `run`.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        overrides: Vec<String>,
        /// Fail unless this is the active version (compare-and-swap).
        #[arg(long, value_name = "VERSION")]
        expected_version: Option<u64>,
        /// Start even when stateful nodes were removed or changed, dropping their state.
        #[arg(long)]
        allow_state_drop: bool,
    },
    /// Print a flow's declaration (the active version, or `--version`).
    Get {
        /// Flow name.
        name: String,
        /// Version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Every flow, with its active version and state.
    List,
    /// State, error and per-node counters of a flow.
    Status {
        /// Flow name.
        name: String,
    },
    /// The versions of a flow.
    Versions {
        /// Flow name.
        name: String,
    },
    /// Line diff between two versions of a flow.
    Diff {
        /// Flow name.
        name: String,
        /// From version.
        from: u64,
        /// To version.
        to: u64,
    },
    /// Make an earlier version active again (hot reload when it runs).
    Rollback {
        /// Flow name.
        name: String,
        /// Version.
        version: u64,
    },
    /// Stop a flow at a checkpoint.
    Stop {
        /// Flow name.
        name: String,
    },
    /// Start a stopped flow (from its newest checkpoint).
    Start {
        /// Flow name.
        name: String,
    },
    /// Stop a flow and remove it with its versions and checkpoints.
    Delete {
        /// Flow name.
        name: String,
    },
}

/// Runs one `flows` command against the server.
///
/// # Errors
/// When the server cannot be reached or a file cannot be read.
pub fn run(connection: Connection, action: FlowsAction) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(execute(connection, action))
}

/// An answer: the status and the body (JSON, or text as a JSON string).
pub(crate) async fn call(
    connection: &Connection,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(reqwest::StatusCode, Value)> {
    let url = format!("{}{path}", connection.server.trim_end_matches('/'));
    let client = streamflow_tls::http_client(None)?.build()?;
    let mut request = client.request(method, &url);
    if let Some(token) = &connection.token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the server at {}", connection.server))?;
    let status = response.status();
    let text = response.text().await.context("reading the answer")?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, value))
}

/// The declaration of a flow file as JSON (parsed, with overrides, here:
/// syntax errors are reported with their line).
fn load(file: &std::path::Path, overrides: &[String]) -> anyhow::Result<Result<Value, ExitCode>> {
    match streamflow_dsl::load_file(file, overrides) {
        Ok(spec) => Ok(Ok(spec.to_document())),
        Err(d) => {
            eprintln!("{d}");
            Ok(Err(ExitCode::from(2)))
        }
    }
}

async fn execute(c: Connection, action: FlowsAction) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    let (status, answer) = match &action {
        FlowsAction::Submit { file, overrides } => {
            let spec = match load(file, overrides)? {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            call(&c, Method::POST, "/v1/flows", Some(&spec)).await?
        }
        FlowsAction::Update {
            file,
            overrides,
            expected_version,
            allow_state_drop,
        } => {
            let spec = match load(file, overrides)? {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let name = spec
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("{} has no name", file.display()))?
                .to_string();
            let mut query = vec![format!("allow_state_drop={allow_state_drop}")];
            if let Some(v) = expected_version {
                query.push(format!("expected_version={v}"));
            }
            let path = format!("/v1/flows/{name}?{}", query.join("&"));
            call(&c, Method::PUT, &path, Some(&spec)).await?
        }
        FlowsAction::Get { name, version } => {
            let path = match version {
                Some(v) => format!("/v1/flows/{name}?version={v}"),
                None => format!("/v1/flows/{name}"),
            };
            call(&c, Method::GET, &path, None).await?
        }
        FlowsAction::List => call(&c, Method::GET, "/v1/flows", None).await?,
        FlowsAction::Status { name } => {
            call(&c, Method::GET, &format!("/v1/flows/{name}/status"), None).await?
        }
        FlowsAction::Versions { name } => {
            call(&c, Method::GET, &format!("/v1/flows/{name}/versions"), None).await?
        }
        FlowsAction::Diff { name, from, to } => {
            let path = format!("/v1/flows/{name}/diff?from={from}&to={to}");
            call(&c, Method::GET, &path, None).await?
        }
        FlowsAction::Rollback { name, version } => {
            let path = format!("/v1/flows/{name}/rollback/{version}");
            call(&c, Method::POST, &path, None).await?
        }
        FlowsAction::Stop { name } => {
            call(&c, Method::POST, &format!("/v1/flows/{name}/stop"), None).await?
        }
        FlowsAction::Start { name } => {
            call(&c, Method::POST, &format!("/v1/flows/{name}/start"), None).await?
        }
        FlowsAction::Delete { name } => {
            call(&c, Method::DELETE, &format!("/v1/flows/{name}"), None).await?
        }
    };
    if !status.is_success() {
        report_failure(status, &answer);
        return Ok(ExitCode::FAILURE);
    }
    if c.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_human(&action, &answer)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints a failed answer: its message (`error` of the flow API,
/// `message` of the registry API) and any listed problems.
pub(crate) fn report_failure(status: reqwest::StatusCode, answer: &Value) {
    let message = answer
        .get("error")
        .or_else(|| answer.get("message"))
        .and_then(Value::as_str)
        .map_or_else(|| answer.to_string(), str::to_string);
    eprintln!("error: {message} ({status})");
    for line in answer
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        eprintln!("  {line}");
    }
}

pub(crate) fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn print_human(action: &FlowsAction, answer: &Value) -> anyhow::Result<()> {
    match action {
        FlowsAction::Submit { .. } | FlowsAction::Update { .. } => {
            let unchanged = answer.get("created") == Some(&Value::Bool(false));
            println!(
                "{} version {}{} ({}), fingerprint {}",
                text(answer, "name"),
                text(answer, "version"),
                if unchanged { " unchanged" } else { "" },
                text(answer, "state"),
                text(answer, "fingerprint"),
            );
        }
        FlowsAction::Get { .. } => {
            let spec = answer.get("spec").cloned().unwrap_or(Value::Null);
            print!(
                "{}",
                serde_saphyr::to_string(&spec).unwrap_or_else(|_| spec.to_string())
            );
        }
        FlowsAction::List => {
            println!("{:<24} {:>8} {:>8}  state", "name", "version", "latest");
            for f in answer.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:>8} {:>8}  {}",
                    text(f, "name"),
                    text(f, "version"),
                    text(f, "latest"),
                    text(f, "state")
                );
            }
        }
        FlowsAction::Versions { .. } => {
            println!("{:>8}  {:<8} fingerprint", "version", "active");
            for v in answer.as_array().into_iter().flatten() {
                println!(
                    "{:>8}  {:<8} {}",
                    text(v, "version"),
                    if v.get("active") == Some(&Value::Bool(true)) {
                        "*"
                    } else {
                        ""
                    },
                    text(v, "fingerprint")
                );
            }
        }
        FlowsAction::Diff { .. } => print!("{}", answer.as_str().unwrap_or_default()),
        FlowsAction::Status { .. }
        | FlowsAction::Rollback { .. }
        | FlowsAction::Stop { .. }
        | FlowsAction::Start { .. } => print_status(answer),
        FlowsAction::Delete { .. } => println!("deleted"),
    }
    Ok(())
}

fn print_status(s: &Value) {
    println!(
        "{} version {}: {}",
        text(s, "name"),
        text(s, "version"),
        text(s, "state")
    );
    if let Some(e) = s.get("error").and_then(Value::as_str) {
        println!("error: {e}");
    }
    if let Some(e) = s.get("last_update_error").and_then(Value::as_str) {
        println!("last update refused: {e}");
    }
    if let Some(c) = s.get("last_checkpoint").filter(|c| !c.is_null()) {
        println!(
            "last checkpoint {} ({} ms, {} bytes), {} this run",
            text(c, "id"),
            text(c, "duration_ms"),
            text(c, "bytes"),
            text(s, "checkpoints")
        );
    }
    let nodes = s.get("nodes").and_then(Value::as_array);
    if nodes.is_some_and(|n| !n.is_empty()) {
        println!(
            "{:<20} {:<7} {:<12} {:>12} {:>12} {:>8} {:>8}",
            "node", "role", "type", "in", "out", "dead", "late"
        );
    }
    for n in nodes.into_iter().flatten() {
        println!(
            "{:<20} {:<7} {:<12} {:>12} {:>12} {:>8} {:>8}",
            text(n, "name"),
            text(n, "role"),
            text(n, "kind"),
            text(n, "records_in"),
            text(n, "records_out"),
            text(n, "dead_letters"),
            text(n, "late")
        );
    }
}
