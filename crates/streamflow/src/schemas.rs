//! `streamflow schemas …`: a client of the schema registry — the one in
//! `streamflow serve`, or any registry speaking the Confluent API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use streamflow_connectors::schema_registry::segment;

use crate::flows::{Connection, call, report_failure, text};

/// What to do with the registry's schemas.
#[derive(Subcommand)]
pub enum SchemasAction {
    /// Register a schema file under a subject (a new version, unless the
    /// subject has it already; refused when incompatible).
    Register {
        /// Schema file (`.avsc`: Avro, `.json`: JSON Schema, `.proto`: Protobuf).
        file: PathBuf,
        /// Subject.
        #[arg(long)]
        subject: String,
        /// Format, when the extension does not say (avro, json, protobuf).
        #[arg(long = "type")]
        schema_type: Option<String>,
    },
    /// Print a version of a subject (the latest unless `--version`).
    Get {
        /// Subject.
        subject: String,
        /// Version number or `latest`.
        #[arg(long, default_value = "latest")]
        version: String,
    },
    /// Every subject with its latest version.
    List,
    /// Delete a subject, or one `--version` of it; `--permanent` for good.
    Delete {
        /// Subject.
        subject: String,
        /// Only this version.
        #[arg(long)]
        version: Option<String>,
        /// Delete for good (soft-deleting first when needed).
        #[arg(long)]
        permanent: bool,
    },
    /// Say whether a schema file could be registered under a subject, and
    /// why not (exit status 1 when it could not).
    Check {
        /// Schema file.
        file: PathBuf,
        /// Subject.
        #[arg(long)]
        subject: String,
        /// Format, when the extension does not say.
        #[arg(long = "type")]
        schema_type: Option<String>,
        /// Check against this version only.
        #[arg(long)]
        version: Option<String>,
    },
}

/// Runs one `schemas` command.
///
/// # Errors
/// When the registry cannot be reached or a file cannot be read.
pub fn run(connection: Connection, action: SchemasAction) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(execute(connection, action))
}

/// The format of a schema file: as given, or by its extension.
fn format_of(file: &Path, given: Option<&str>) -> anyhow::Result<&'static str> {
    let name = match given {
        Some(t) => t.to_ascii_lowercase(),
        None => file
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default(),
    };
    Ok(match name.as_str() {
        "avro" | "avsc" => "AVRO",
        "json" => "JSON",
        "protobuf" | "proto" => "PROTOBUF",
        _ => {
            return Err(anyhow!(
                "{}: say the format with --type avro|json|protobuf",
                file.display()
            ));
        }
    })
}

fn request_of(file: &Path, given: Option<&str>) -> anyhow::Result<Value> {
    let schema =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(json!({"schema": schema, "schemaType": format_of(file, given)?}))
}

async fn execute(c: Connection, action: SchemasAction) -> anyhow::Result<ExitCode> {
    let (status, answer) = match &action {
        SchemasAction::Register {
            file,
            subject,
            schema_type,
        } => {
            let body = request_of(file, schema_type.as_deref())?;
            let path = format!("/subjects/{}/versions", segment(subject));
            call(&c, Method::POST, &path, Some(&body)).await?
        }
        SchemasAction::Get { subject, version } => {
            let path = format!(
                "/subjects/{}/versions/{}",
                segment(subject),
                segment(version)
            );
            call(&c, Method::GET, &path, None).await?
        }
        SchemasAction::List => {
            let (status, subjects) = call(&c, Method::GET, "/subjects", None).await?;
            if !status.is_success() {
                (status, subjects)
            } else {
                let mut latest = Vec::new();
                for s in subjects
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    let path = format!("/subjects/{}/versions/latest", segment(s));
                    let (st, v) = call(&c, Method::GET, &path, None).await?;
                    if st.is_success() {
                        latest.push(v);
                    }
                }
                (status, Value::Array(latest))
            }
        }
        SchemasAction::Delete {
            subject,
            version,
            permanent,
        } => {
            let path = match version {
                Some(v) => format!("/subjects/{}/versions/{}", segment(subject), segment(v)),
                None => format!("/subjects/{}", segment(subject)),
            };
            let soft = call(&c, Method::DELETE, &path, None).await?;
            let already_soft = [40404, 40406].contains(&soft.1["error_code"].as_i64().unwrap_or(0));
            if *permanent && (soft.0.is_success() || already_soft) {
                call(&c, Method::DELETE, &format!("{path}?permanent=true"), None).await?
            } else {
                soft
            }
        }
        SchemasAction::Check {
            file,
            subject,
            schema_type,
            version,
        } => {
            let body = request_of(file, schema_type.as_deref())?;
            let path = match version {
                Some(v) => format!(
                    "/compatibility/subjects/{}/versions/{}?verbose=true",
                    segment(subject),
                    segment(v)
                ),
                None => format!(
                    "/compatibility/subjects/{}/versions?verbose=true",
                    segment(subject)
                ),
            };
            call(&c, Method::POST, &path, Some(&body)).await?
        }
    };
    if !status.is_success() {
        report_failure(status, &answer);
        return Ok(ExitCode::FAILURE);
    }
    if c.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print_human(&action, &answer);
    }
    let incompatible = matches!(action, SchemasAction::Check { .. })
        && answer.get("is_compatible") != Some(&Value::Bool(true));
    Ok(if incompatible {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_human(action: &SchemasAction, answer: &Value) {
    match action {
        SchemasAction::Register { subject, .. } => println!(
            "{subject} version {}, schema id {}",
            text(answer, "version"),
            text(answer, "id")
        ),
        SchemasAction::Get { .. } => {
            println!(
                "{} version {}, schema id {} ({})",
                text(answer, "subject"),
                text(answer, "version"),
                text(answer, "id"),
                answer["schemaType"].as_str().unwrap_or("AVRO")
            );
            println!("{}", text(answer, "schema"));
        }
        SchemasAction::List => {
            println!("{:<32} {:>8} {:>8}  type", "subject", "version", "id");
            for v in answer.as_array().into_iter().flatten() {
                println!(
                    "{:<32} {:>8} {:>8}  {}",
                    text(v, "subject"),
                    text(v, "version"),
                    text(v, "id"),
                    v["schemaType"].as_str().unwrap_or("AVRO")
                );
            }
        }
        SchemasAction::Delete { .. } => println!("deleted {answer}"),
        SchemasAction::Check { .. } => {
            if answer.get("is_compatible") == Some(&Value::Bool(true)) {
                println!("compatible");
            } else {
                println!("incompatible:");
                for m in answer["messages"].as_array().into_iter().flatten() {
                    println!("  {}", m.as_str().unwrap_or_default());
                }
            }
        }
    }
}
