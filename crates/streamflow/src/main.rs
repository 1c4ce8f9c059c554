//! The `streamflow` command line.
#![allow(clippy::print_stdout)] // the CLI layer is where output is printed

mod cluster;
mod flows;
mod log;
mod schemas;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use streamflow::bench::{BenchResult, DATA_FILES, QUERIES, cpu_seconds, query_text};
use streamflow::{Diagnostics, FlowSpec, Mode, Pipeline, PipelineBuilder, RunHandle, RunSummary};
use streamflow_dsl::{FileFormat, Role};
use streamflow_runtime::RecoveryOptions;
use streamflow_server::metrics::{CurrentRun, FlowMetrics};
use streamflow_state::CheckpointStore;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[derive(Parser)]
#[command(
    name = "streamflow",
    version,
    about = "Stream processing on Arrow batches"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text or as JSON objects (one per line); the level is
    /// set by `STREAMFLOW_LOG` (default `warn`; `serve` logs `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (structured fields kept).
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline (streaming: until stopped; job: until the sources are drained).
    Run {
        /// Flow file (.yaml, .yml or .json).
        file: PathBuf,
        /// Override a setting, e.g. `--set sources.events.config.events=1000`.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        overrides: Vec<String>,
        /// Worker threads (default: all cores).
        #[arg(long)]
        workers: Option<usize>,
        /// No progress bar or summary.
        #[arg(long, short)]
        quiet: bool,
        /// Ignore existing checkpoints and start from the beginning.
        #[arg(long, conflicts_with = "from_checkpoint")]
        fresh: bool,
        /// Restore this checkpoint (or the newest intact one before it).
        #[arg(long, value_name = "ID")]
        from_checkpoint: Option<u64>,
        /// Restore even when stateful nodes were removed or changed type, dropping their state.
        #[arg(long)]
        allow_state_drop: bool,
        /// Reload the file when it changes: an invalid version is reported
        /// and the running one goes on; a valid one takes over at a final
        /// checkpoint of the running one (state kept by node name and type).
        #[arg(long)]
        watch: bool,
        /// Serve the run's metrics in Prometheus text format on
        /// `http://ADDR/metrics` (as `serve` does for its flows).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Run the flow over the workers of a cluster (`--cluster
        /// nats://HOST:4222`); this process coordinates and waits.
        #[command(flatten)]
        cluster: cluster::Target,
    },
    /// List or inspect the checkpoints of a flow.
    Checkpoints {
        #[command(subcommand)]
        action: CheckpointsAction,
    },
    /// Check a flow file and report every problem with its path.
    Validate {
        /// Flow file (.yaml, .yml or .json).
        file: PathBuf,
        /// Override a setting, as for `run`.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        overrides: Vec<String>,
    },
    /// The control plane: a server that keeps versioned flows and runs them.
    Serve {
        /// Directory for flows, versions and checkpoints.
        #[arg(long, default_value = ".streamflow/server")]
        data: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: std::net::SocketAddr,
        /// Require `Authorization: Bearer <token>` on every endpoint but /healthz.
        #[arg(long, env = "STREAMFLOW_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Serve a non-loopback address without a token.
        #[arg(long)]
        insecure: bool,
        /// Secret (HS256) of the JWTs that scope access to the log's stores
        /// (`streamflow log token` issues them); without it the bearer
        /// token covers every store.
        #[arg(long, env = "STREAMFLOW_LOG_SECRET", hide_env_values = true)]
        log_secret: Option<String>,
        /// Run the flows over the workers of a cluster (`--cluster
        /// nats://HOST:4222`), this server coordinating them, instead of in
        /// this process.
        #[command(flatten)]
        cluster: cluster::Target,
    },
    /// Talk to a `streamflow serve` server.
    Flows {
        #[command(flatten)]
        connection: flows::Connection,
        #[command(subcommand)]
        action: flows::FlowsAction,
    },
    /// Talk to a schema registry: `streamflow serve`'s, or any speaking the
    /// Confluent Schema Registry API (`--server URL`).
    Schemas {
        #[command(flatten)]
        connection: flows::Connection,
        #[command(subcommand)]
        action: schemas::SchemasAction,
    },
    /// The durable log: produce, consume and follow its spaces, in a local
    /// store (`--path`) or a server's (`--server`).
    Log {
        #[command(flatten)]
        target: log::Target,
        #[command(subcommand)]
        action: log::LogAction,
    },
    /// Join a cluster as a worker (coordinated through NATS JetStream) and
    /// stay until stopped.
    Worker {
        #[command(flatten)]
        target: cluster::Target,
        /// Unique name in the cluster (default: host-pid).
        #[arg(long)]
        name: Option<String>,
        /// Operator instances it runs at once (default: its cores).
        #[arg(long)]
        slots: Option<usize>,
        #[command(flatten)]
        exchange: cluster::ExchangeArgs,
    },
    /// Kubernetes resources for a flow.
    K8s {
        #[command(subcommand)]
        action: K8sAction,
    },
    /// Look at a cluster of workers.
    Cluster {
        #[command(flatten)]
        target: cluster::Target,
        #[command(subcommand)]
        action: cluster::ClusterAction,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        suite: BenchSuite,
    },
}

#[derive(Subcommand)]
enum K8sAction {
    /// Print the resources that run a flow (ConfigMap, Deployment or Job,
    /// a volume for local checkpoints) as YAML, for `kubectl apply -f -`.
    /// The file is parsed and its structure checked first; `validate`
    /// checks the rest against the servers it names.
    Render {
        /// Flow file (.yaml, .yml or .json).
        file: PathBuf,
        /// Override a setting, as for `run` (baked into the rendered flow).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        overrides: Vec<String>,
        /// Container image with the streamflow binary.
        #[arg(long)]
        image: Option<String>,
        /// Namespace of the resources.
        #[arg(long)]
        namespace: Option<String>,
        /// Name of the resources (default: the flow's).
        #[arg(long)]
        name: Option<String>,
        /// Size of the checkpoint volume.
        #[arg(long, default_value = "1Gi")]
        storage: String,
        /// CPU requested.
        #[arg(long, default_value = "1")]
        cpu: String,
        /// Memory requested and allowed.
        #[arg(long, default_value = "1Gi")]
        memory: String,
    },
}

#[derive(Subcommand)]
enum CheckpointsAction {
    /// One line per complete checkpoint.
    List {
        /// Flow file whose checkpoint storage to read.
        file: PathBuf,
        /// Override a setting, as for `run`.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        overrides: Vec<String>,
    },
    /// Everything recorded in one checkpoint (default: the newest).
    Inspect {
        /// Flow file whose checkpoint storage to read.
        file: PathBuf,
        /// Checkpoint id.
        id: Option<u64>,
        /// Override a setting, as for `run`.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        overrides: Vec<String>,
    },
}

#[derive(Subcommand)]
enum BenchSuite {
    /// Nexmark queries on a blackhole sink, generator included.
    Nexmark {
        /// Query: one of the shipped examples (q0 … q22, q4_shape, dedup,
        /// top_window, enrichment; an unknown name lists them all).
        #[arg(long, default_value = "q0")]
        query: String,
        /// Events to generate.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// Worker threads (the figure per core is events/s divided by this).
        #[arg(long, default_value_t = 1)]
        cores: usize,
        /// Take checkpoints at this interval (e.g. `10s`) into a temporary directory.
        #[arg(long, value_name = "DURATION")]
        checkpoint_interval: Option<String>,
        /// Override a setting of the query's flow (`stages.joined.state_ttl=60s`).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        overrides: Vec<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Any flow, as written (its sinks included), over its input files:
    /// events/s, events/s per busy core (process CPU time) and peak RSS.
    File {
        /// Flow file (.yaml, .yml or .json); run in job mode.
        flow: PathBuf,
        /// Override a setting (`sources.events.config.path=events.jsonl`).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        overrides: Vec<String>,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        cores: usize,
        /// Replace every sink by a blackhole (time the rest alone).
        #[arg(long)]
        blackhole: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The JSON-lines decoder alone over a file held in memory (read
    /// first, untimed; schema inferred from its first lines, every field
    /// built unless `--columns` prunes it).
    Decode {
        /// A JSON-lines file.
        file: PathBuf,
        /// The parser: simd-json (the file source's default) or arrow-json.
        #[arg(long, value_enum, default_value_t = DecoderChoice::SimdJson)]
        decoder: DecoderChoice,
        /// Only these columns, nested fields with dots (`Bid.price,Bid.auction`).
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Nexmark bids in the Confluent Avro wire format decoded by StreamFlow's
    /// reader (into Arrow) or by apache-avro (into Values); the messages are
    /// made first, untimed.
    Avro {
        /// Bids.
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
        /// The decoder.
        #[arg(long, value_enum, default_value_t = streamflow::bench::avro::AvroDecoderChoice::Streamflow)]
        decoder: streamflow::bench::avro::AvroDecoderChoice,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The durable log: produce entries into one segment (one durable
    /// transaction per call), then read them back by sequence and by space
    /// offset; in process or over WebSocket on loopback.
    Log {
        /// How the log is reached.
        #[arg(long, value_enum, default_value_t = streamflow::bench::log::Transport::InProcess)]
        transport: streamflow::bench::log::Transport,
        /// Payload bytes per entry.
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Entries.
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
        /// Entries per produce call.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Nexmark bids in the Confluent Protobuf wire format decoded by
    /// StreamFlow's reader (into Arrow) or by prost-reflect (into
    /// DynamicMessages); the messages are made first, untimed.
    Protobuf {
        /// Bids.
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
        /// The decoder.
        #[arg(long, value_enum, default_value_t = streamflow::bench::protobuf::ProtobufDecoderChoice::Streamflow)]
        decoder: streamflow::bench::protobuf::ProtobufDecoderChoice,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// JSON-lines file → filter → blackhole (the file is written first, untimed).
    Jsonl {
        /// Bids in the file.
        #[arg(long, default_value_t = 5_000_000)]
        events: u64,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        cores: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto provider (ring) for every TLS client in the process.
    streamflow_tls::install_default_provider();
    // The server's lifecycle events are info; a pipeline run stays quiet.
    let default_level = if matches!(cli.command, Command::Serve { .. }) {
        "warn,streamflow_server=info,streamflow_cluster=info,streamflow::flow=info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STREAMFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colours only on a terminal: logs sent to a file or a collector stay plain text.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let logs = match cli.log_format {
        LogFormat::Text => logs.with_filter(filter).boxed(),
        LogFormat::Json => logs.json().with_filter(filter).boxed(),
    };
    // The server keeps the events raised inside its flows (checkpoints,
    // circuit breakers) whatever the log level.
    let events = streamflow_server::events::EventLog::default();
    let recorded = matches!(cli.command, Command::Serve { .. }).then(|| {
        events.layer().with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("streamflow", tracing::Level::INFO),
        )
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(recorded)
        .init();
    let outcome = match cli.command {
        Command::Validate { file, overrides } => return validate(&file, &overrides),
        Command::Run {
            file,
            overrides,
            workers,
            quiet,
            fresh,
            from_checkpoint,
            allow_state_drop,
            watch,
            metrics,
            cluster: target,
        } => {
            if target.is_set() {
                let unsupported = watch
                    || fresh
                    || from_checkpoint.is_some()
                    || allow_state_drop
                    || metrics.is_some();
                run_on_cluster(target, &file, &overrides, quiet, unsupported)
            } else {
                let recovery = RecoveryOptions {
                    fresh,
                    from_checkpoint,
                    allow_state_drop,
                };
                if watch {
                    run_watching(&file, &overrides, workers, &recovery, metrics)
                } else {
                    run(&file, &overrides, workers, quiet, &recovery, metrics)
                }
            }
        }
        Command::Checkpoints { action } => checkpoints(action),
        Command::Serve {
            data,
            listen,
            token,
            insecure,
            log_secret,
            cluster,
        } => serve(
            streamflow_server::ServeOptions {
                data,
                listen,
                token,
                insecure,
                log_secret,
                events,
                cluster: None,
            },
            cluster,
        ),
        Command::Log { target, action } => log::run(target, action),
        Command::Worker {
            target,
            name,
            slots,
            exchange,
        } => cluster::worker(
            target,
            name,
            slots.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            }),
            exchange,
        ),
        Command::Cluster { target, action } => cluster::run(target, action),
        Command::K8s {
            action:
                K8sAction::Render {
                    file,
                    overrides,
                    image,
                    namespace,
                    name,
                    storage,
                    cpu,
                    memory,
                },
        } => {
            let spec = match streamflow_dsl::load_file(&file, &overrides) {
                Ok(spec) => spec,
                Err(d) => {
                    print_diagnostics(&d);
                    return ExitCode::from(2);
                }
            };
            let defaults = streamflow::k8s::RenderOptions::default();
            let options = streamflow::k8s::RenderOptions {
                image: image.unwrap_or(defaults.image),
                namespace,
                name,
                storage,
                cpu,
                memory,
            };
            streamflow::k8s::render(&spec, &options)
                .map(|yaml| {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                })
                .map_err(|e| anyhow!(e))
        }
        Command::Flows { connection, action } => flows::run(connection, action),
        Command::Schemas { connection, action } => schemas::run(connection, action),
        Command::Bench {
            suite:
                BenchSuite::Nexmark {
                    query,
                    events,
                    cores,
                    checkpoint_interval,
                    overrides,
                    json,
                },
        } => bench(
            &query,
            events,
            cores,
            checkpoint_interval.as_deref(),
            &overrides,
            json,
        ),
        Command::Bench {
            suite:
                BenchSuite::File {
                    flow,
                    overrides,
                    cores,
                    blackhole,
                    json,
                },
        } => bench_file(&flow, &overrides, cores, blackhole, json),
        Command::Bench {
            suite:
                BenchSuite::Decode {
                    file,
                    decoder,
                    columns,
                    json,
                },
        } => bench_decode(&file, decoder, &columns, json),
        Command::Bench {
            suite:
                BenchSuite::Avro {
                    events,
                    decoder,
                    json,
                },
        } => streamflow::bench::avro::run(events, decoder).and_then(|r| print_decode(&r, json)),
        Command::Bench {
            suite:
                BenchSuite::Log {
                    transport,
                    payload,
                    entries,
                    batch,
                    json,
                },
        } => streamflow::bench::log::run(transport, payload, entries, batch).and_then(|r| {
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{}", r.summary());
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Bench {
            suite:
                BenchSuite::Protobuf {
                    events,
                    decoder,
                    json,
                },
        } => streamflow::bench::protobuf::run(events, decoder).and_then(|r| print_decode(&r, json)),
        Command::Bench {
            suite:
                BenchSuite::Jsonl {
                    events,
                    cores,
                    json,
                },
        } => bench_jsonl(events, cores, json),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: StreamFlow's
/// errors already show their source, so a cause that ends the text so far
/// is not repeated.
fn report(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if text.ends_with(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// `run --cluster`: validates here, then runs over the cluster's workers.
fn run_on_cluster(
    target: cluster::Target,
    file: &Path,
    overrides: &[String],
    quiet: bool,
    unsupported: bool,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        !unsupported,
        "--watch, --fresh, --from-checkpoint, --allow-state-drop and --metrics do not work with --cluster yet"
    );
    let spec = match streamflow_dsl::load_file(file, overrides)
        .and_then(|spec| Pipeline::from_spec(&spec).map(|_| spec))
    {
        Ok(spec) => spec,
        Err(d) => {
            print_diagnostics(&d);
            return Ok(ExitCode::from(2));
        }
    };
    cluster::run_flow(target, &spec, quiet)
}

fn print_diagnostics(d: &Diagnostics) {
    for diag in d.iter() {
        eprintln!("error: {diag}");
    }
    eprintln!(
        "{} error{} found",
        d.len(),
        if d.len() == 1 { "" } else { "s" }
    );
}

fn validate(file: &Path, overrides: &[String]) -> ExitCode {
    match Pipeline::from_file(file, overrides) {
        Err(d) => {
            print_diagnostics(&d);
            ExitCode::from(2)
        }
        Ok(p) => {
            let plan = p.plan();
            let g = &plan.graph;
            println!(
                "{}: valid ({} mode)",
                g.name,
                if g.mode == Mode::Job {
                    "job"
                } else {
                    "streaming"
                }
            );
            for (node, planned) in g.nodes.iter().zip(&plan.nodes) {
                let role = node.role.as_str();
                let time = match (&planned.event_time, node.role) {
                    (Some(c), _) => format!(", event time {c}"),
                    (None, Role::Sink) => String::new(),
                    (None, _) => ", no event time".into(),
                };
                println!(
                    "  {role} {} ({}, parallelism {}{time})",
                    node.name, node.kind, node.parallelism
                );
                if node.role != Role::Sink {
                    for f in planned.schema.fields() {
                        println!(
                            "      {}: {}{}",
                            f.name(),
                            f.data_type(),
                            if f.is_nullable() { "" } else { " not null" }
                        );
                    }
                }
            }
            ExitCode::SUCCESS
        }
    }
}

/// The complete checkpoints in `storage`, oldest first.
fn checkpoints_in(storage: &str) -> anyhow::Result<Vec<streamflow_state::CheckpointMeta>> {
    let store = CheckpointStore::open(storage).map_err(|e| anyhow!(e))?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(store.list())
        .map_err(|e| anyhow!(e))
}

fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(w) = workers {
        b.worker_threads(w.max(1));
    }
    b.enable_all().build().context("starting the runtime")
}

fn run(
    file: &Path,
    overrides: &[String],
    workers: Option<usize>,
    quiet: bool,
    recovery: &RecoveryOptions,
    metrics: Option<std::net::SocketAddr>,
) -> anyhow::Result<ExitCode> {
    let pipeline = match Pipeline::from_file(file, overrides) {
        Ok(p) => p,
        Err(d) => {
            print_diagnostics(&d);
            return Ok(ExitCode::from(2));
        }
    };
    let mode = pipeline.plan().graph.mode;
    let rt = runtime(workers)?;
    let summary = rt.block_on(async {
        let handle = pipeline
            .start_with(recovery)
            .await
            .map_err(|e| anyhow!(e))?;
        report_metrics(metrics, None, &pipeline, &handle).await?;
        if let Some(id) = handle.restored_from() {
            eprintln!("resuming from checkpoint {id}");
        }
        spawn_signal_handler(&handle);
        let progress = (!quiet && mode == Mode::Job && std::io::stderr().is_terminal())
            .then(|| progress_bar(&handle));
        let result = handle.wait().await;
        if let Some((bar, task)) = progress {
            task.abort();
            bar.finish_and_clear();
        }
        result.map_err(|e| anyhow!(e))
    })?;
    if !quiet {
        print_summary(&summary);
    }
    Ok(ExitCode::SUCCESS)
}

/// `run --metrics ADDR`: reports `handle`'s metrics from now on, on the
/// endpoint already `exposed` (a reloaded version) or on a new one, which
/// says where it listens.
async fn report_metrics(
    addr: Option<std::net::SocketAddr>,
    exposed: Option<CurrentRun>,
    pipeline: &Pipeline,
    handle: &RunHandle,
) -> anyhow::Result<Option<CurrentRun>> {
    let Some(addr) = addr else { return Ok(None) };
    let flow = FlowMetrics::of_run(&pipeline.plan().graph.name, handle);
    if let Some(current) = exposed {
        current.set(flow);
        return Ok(Some(current));
    }
    let current = CurrentRun::default();
    current.set(flow);
    let bound = streamflow_server::metrics::expose(addr, current.clone()).await?;
    eprintln!("metrics on http://{bound}/metrics");
    Ok(Some(current))
}

/// The modification time of `file`, if it can be read.
fn modified(file: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(file).and_then(|m| m.modified()).ok()
}

/// `streamflow run --watch`: runs the flow, and on each change of the file
/// validates the new version; an invalid one is reported and the running
/// one goes on, a valid one replaces it at a final checkpoint.
fn run_watching(
    file: &Path,
    overrides: &[String],
    workers: Option<usize>,
    recovery: &RecoveryOptions,
    metrics: Option<std::net::SocketAddr>,
) -> anyhow::Result<ExitCode> {
    let mut pipeline = match Pipeline::from_file(file, overrides) {
        Ok(p) => p,
        Err(d) => {
            print_diagnostics(&d);
            return Ok(ExitCode::from(2));
        }
    };
    if pipeline.plan().graph.checkpoint.is_none() {
        eprintln!(
            "warning: the flow takes no checkpoints: each reload starts it from the beginning"
        );
    }
    let rt = runtime(workers)?;
    rt.block_on(async {
        let mut exposed = None;
        let mut options = recovery.clone();
        let mut seen = modified(file);
        loop {
            let handle = pipeline.start_with(&options).await.map_err(|e| anyhow!(e))?;
            exposed = report_metrics(metrics, exposed, &pipeline, &handle).await?;
            if let Some(id) = handle.restored_from() {
                eprintln!("resuming from checkpoint {id}");
            }
            // Later versions continue from this run's checkpoints.
            options = RecoveryOptions {
                allow_state_drop: recovery.allow_state_drop,
                ..RecoveryOptions::default()
            };
            let stop = handle.stopper();
            let mut running = tokio::spawn(handle.wait());
            let mut poll = tokio::time::interval(Duration::from_millis(300));
            let next = loop {
                tokio::select! {
                    ended = &mut running => {
                        let summary = ended.map_err(|e| anyhow!(e))?.map_err(|e| anyhow!(e))?;
                        print_summary(&summary);
                        return Ok(ExitCode::SUCCESS);
                    }
                    _ = tokio::signal::ctrl_c() => {
                        let _ = stop.send(true);
                    }
                    _ = poll.tick() => {
                        let now = modified(file);
                        if now == seen {
                            continue;
                        }
                        seen = now;
                        match Pipeline::from_file(file, overrides) {
                            Ok(p) => break p,
                            Err(d) => {
                                eprintln!("{}: not reloaded, the running version goes on:", file.display());
                                print_diagnostics(&d);
                            }
                        }
                    }
                }
            };
            let _ = stop.send(true);
            running
                .await
                .map_err(|e| anyhow!(e))?
                .map_err(|e| anyhow!(e))?;
            eprintln!("{}: reloaded", file.display());
            pipeline = next;
        }
    })
}

/// `streamflow serve`: prints the address it listens on once ready.
fn serve(
    mut options: streamflow_server::ServeOptions,
    cluster: cluster::Target,
) -> anyhow::Result<ExitCode> {
    let rt = runtime(None)?;
    rt.block_on(async move {
        if cluster.is_set() {
            options.cluster = Some(cluster::connect(&cluster).await?);
        }
        streamflow_server::serve(options, |addr| {
            eprintln!("listening on http://{addr}");
        })
        .await
        .map_err(anyhow::Error::from)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `streamflow checkpoints list|inspect FLOW`.
fn checkpoints(action: CheckpointsAction) -> anyhow::Result<ExitCode> {
    let (file, id, overrides) = match &action {
        CheckpointsAction::List { file, overrides } => (file, None, overrides),
        CheckpointsAction::Inspect {
            file,
            id,
            overrides,
        } => (file, *id, overrides),
    };
    let pipeline = match Pipeline::from_file(file, overrides) {
        Ok(p) => p,
        Err(d) => {
            print_diagnostics(&d);
            return Ok(ExitCode::from(2));
        }
    };
    let Some(config) = &pipeline.plan().graph.checkpoint else {
        anyhow::bail!("{} declares no checkpoint", file.display());
    };
    let all = checkpoints_in(&config.storage)?;
    match action {
        CheckpointsAction::List { .. } => {
            if all.is_empty() {
                eprintln!("no checkpoints in {}", config.storage);
            }
            println!(
                "{:>6} {:>24} {:>10} {:>12} {:>6}",
                "id", "started", "duration", "bytes", "final"
            );
            for m in &all {
                println!(
                    "{:>6} {:>24} {:>8}ms {:>12} {:>6}",
                    m.id,
                    format_ms(m.started_ms),
                    m.duration_ms,
                    m.bytes,
                    if m.is_final { "yes" } else { "" }
                );
            }
        }
        CheckpointsAction::Inspect { .. } => {
            let meta = match id {
                Some(id) => all.iter().find(|m| m.id == id),
                None => all.last(),
            }
            .ok_or_else(|| anyhow!("no such checkpoint in {}", config.storage))?;
            println!("{}", serde_json::to_string_pretty(meta)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn format_ms(ms: i64) -> String {
    arrow::temporal_conversions::timestamp_ms_to_datetime(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn print_summary(summary: &RunSummary) {
    eprintln!("{summary}");
}

/// First SIGINT/SIGTERM: graceful stop (drain and flush); second: exit now.
fn spawn_signal_handler(handle: &RunHandle) {
    let stop = handle.stopper();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        for round in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            if round == 0 {
                tracing::warn!("stopping: draining the pipeline (signal again to exit at once)");
                let _ = stop.send(true);
            } else {
                std::process::exit(130);
            }
        }
    });
}

fn progress_bar(handle: &RunHandle) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = match handle.expected_records() {
        Some(total) => indicatif::ProgressBar::new(total),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} records ({per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let metrics: Vec<_> = handle
        .nodes()
        .iter()
        .filter(|n| n.role == Role::Source)
        .map(|n| std::sync::Arc::clone(&n.metrics))
        .collect();
    let b = bar.clone();
    let task = tokio::spawn(async move {
        loop {
            b.set_position(metrics.iter().map(|m| m.records_out()).sum());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (bar, task)
}

/// Runs `spec` in job mode on `cores` worker threads and reports it.
/// `events` overrides the count of source records (Nexmark counts every
/// generated event, also those a `table: bid` source does not emit).
fn measure(
    name: &str,
    spec: &FlowSpec,
    cores: usize,
    json: bool,
    events: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let pipeline = Pipeline::from_spec(spec).map_err(|d| anyhow!("{d}"))?;
    let rt = runtime(Some(cores))?;
    let cpu_before = cpu_seconds();
    let summary = rt
        .block_on(async { pipeline.start().await?.wait().await })
        .map_err(|e| anyhow!(e))?;
    let cpu = cpu_seconds().zip(cpu_before).map(|(a, b)| a - b);
    let output: u64 = summary
        .stages
        .iter()
        .filter(|s| s.role == Role::Sink)
        .map(|s| s.records_in)
        .sum();
    let result = BenchResult::new(
        name,
        events.unwrap_or_else(|| summary.source_records()),
        summary.elapsed,
        cores,
        output,
        cpu,
    );
    if json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "{}: {} events in {:.3}s = {:.2} M events/s ({:.2} M/s per core, {} cores; {:.2} M/s per busy core, {:.2} cores busy), {} output records, peak RSS {:.0} MiB",
            result.query,
            result.events,
            result.seconds,
            result.events_per_sec / 1e6,
            result.events_per_sec_per_core / 1e6,
            result.cores,
            result.events_per_cpu_sec.unwrap_or(f64::NAN) / 1e6,
            result.busy_cores.unwrap_or(f64::NAN),
            result.output_records,
            result.peak_rss_mib.unwrap_or(f64::NAN)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(
    query: &str,
    events: u64,
    cores: usize,
    checkpoint_interval: Option<&str>,
    overrides: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let text = query_text(query).ok_or_else(|| {
        anyhow!(
            "unknown query '{query}' (known: {})",
            QUERIES
                .iter()
                .map(|(q, _)| *q)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let mut spec = streamflow_dsl::parse_str(text, FileFormat::Yaml).map_err(|d| anyhow!("{d}"))?;
    if !overrides.is_empty() {
        let mut doc = spec.to_document();
        for o in overrides {
            streamflow_dsl::apply_override(&mut doc, o).map_err(|e| anyhow!(e))?;
        }
        spec = streamflow_dsl::parse_str(&doc.to_string(), FileFormat::Json)
            .map_err(|d| anyhow!("{d}"))?;
    }
    spec.mode = Mode::Job;
    let state = std::env::temp_dir().join(format!("streamflow-bench-state-{}", std::process::id()));
    for source in &mut spec.sources {
        match source.kind.as_deref() {
            Some("nexmark") => {
                source.config.insert("events".into(), events.into());
            }
            // A data file shipped with the query (a join's table).
            _ => {
                let path = source.config.get("path").and_then(|p| p.as_str());
                if let Some((name, text)) = DATA_FILES.iter().find(|(f, _)| Some(*f) == path) {
                    let file = state.join("data").join(name);
                    if let Some(dir) = file.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    std::fs::write(&file, text)?;
                    source
                        .config
                        .insert("path".into(), file.display().to_string().into());
                }
            }
        }
    }
    blackhole_sinks(&mut spec);
    if let Some(interval) = checkpoint_interval {
        let interval = streamflow_dsl::parse_duration(interval).map_err(|e| anyhow!(e))?;
        spec.checkpoint = Some(streamflow_dsl::CheckpointSpec {
            interval: Some(interval),
            storage: Some(state.display().to_string()),
            ..Default::default()
        });
    }
    let outcome = measure(query, &spec, cores, json, Some(events));
    if checkpoint_interval.is_some()
        && let Ok(all) = checkpoints_in(&state.display().to_string())
    {
        for m in all {
            eprintln!(
                "checkpoint {}: {} ms, {} bytes{}",
                m.id,
                m.duration_ms,
                m.bytes,
                if m.is_final { " (final)" } else { "" }
            );
        }
    }
    let _ = std::fs::remove_dir_all(&state);
    outcome
}

fn bench_file(
    flow: &Path,
    overrides: &[String],
    cores: usize,
    blackhole: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut spec = match streamflow_dsl::load_file(flow, overrides) {
        Ok(s) => s,
        Err(d) => {
            print_diagnostics(&d);
            return Ok(ExitCode::from(2));
        }
    };
    spec.mode = Mode::Job;
    if blackhole {
        blackhole_sinks(&mut spec);
    }
    let name = spec
        .name
        .clone()
        .unwrap_or_else(|| flow.display().to_string());
    measure(&name, &spec, cores, json, None)
}

/// Makes every sink of `spec` a blackhole.
fn blackhole_sinks(spec: &mut FlowSpec) {
    for sink in &mut spec.sinks {
        sink.kind = Some("blackhole".into());
        sink.config.clear();
    }
}

/// The JSON parser `bench decode` measures.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DecoderChoice {
    /// simd-json onto Arrow columns (arrow-json for chunks it refuses).
    SimdJson,
    /// Arrow's JSON reader.
    ArrowJson,
}

fn bench_decode(
    file: &Path,
    choice: DecoderChoice,
    columns: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    use streamflow_connectors::sources::decode::{JsonParser, LineDecoder, TextFormat};
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let (mut schema, _) = arrow::json::reader::infer_json_schema(
        std::io::BufReader::new(bytes.as_slice()),
        Some(1000),
    )
    .context("inferring the schema")?;
    if !columns.is_empty() {
        let mut used = streamflow_expr::UsedColumns::none();
        for c in columns {
            used.add(c.split('.').map(str::to_string).collect());
        }
        schema = used
            .prune(&schema)
            .ok_or_else(|| anyhow!("none of --columns {} is in the file", columns.join(",")))?;
    }
    let (parser, name) = match choice {
        DecoderChoice::SimdJson => (JsonParser::Simd, "simd-json"),
        DecoderChoice::ArrowJson => (JsonParser::Arrow, "arrow-json"),
    };
    let mut decoder =
        LineDecoder::new(std::sync::Arc::new(schema), TextFormat::Jsonl, b',').with_parser(parser);
    // Chunks of whole lines as the file source cuts them (untimed).
    const CHUNK: usize = 4 << 20;
    let mut chunks = Vec::new();
    let (mut at, mut line) = (0usize, 1u64);
    while at < bytes.len() {
        let end = match bytes[at..(at + CHUNK).min(bytes.len())]
            .iter()
            .rposition(|&b| b == b'\n')
        {
            Some(i) if at + CHUNK < bytes.len() => at + i + 1,
            _ => bytes.len(),
        };
        chunks.push((at, end, line));
        line += bytes[at..end].iter().filter(|&&b| b == b'\n').count() as u64;
        at = end;
    }
    let cpu_before = cpu_seconds();
    let started = std::time::Instant::now();
    let (mut rows, mut bad) = (0u64, 0u64);
    for (start, end, line) in chunks {
        let out = decoder
            .decode(&bytes[start..end], "input", line)
            .map_err(|e| anyhow!(e))?;
        rows += out.data.map_or(0, |b| b.num_rows() as u64);
        bad += out.dead_letters.len() as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu_before).map(|(a, b)| a - b);
    let mb = bytes.len() as f64 / (1 << 20) as f64;
    let report = serde_json::json!({
        "decoder": name,
        "columns": columns,
        "lines": rows,
        "dead_letters": bad,
        "mib": mb,
        "seconds": seconds,
        "lines_per_sec": rows as f64 / seconds,
        "mib_per_sec": mb / seconds,
        "cpu_seconds": cpu,
    });
    if json {
        println!("{report}");
    } else {
        println!(
            "{name}: {rows} lines ({bad} bad), {mb:.0} MiB in {seconds:.3}s = {:.2} M lines/s, {:.0} MiB/s",
            rows as f64 / seconds / 1e6,
            mb / seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a decoder benchmark's result.
fn print_decode(r: &streamflow::bench::DecodeBench, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!("{}", r.summary());
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_jsonl(events: u64, cores: usize, json: bool) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("streamflow-bench-{}", std::process::id()));
    let file = dir.join("bids.jsonl");
    let prepare = PipelineBuilder::new("bench-jsonl-prepare")
        .source(
            "bids",
            "nexmark",
            serde_json::json!({"events": events * 50 / 46, "table": "bid"}),
        )
        .sink("file", "file", serde_json::json!({"path": file}))
        .build();
    let rt = runtime(None)?;
    rt.block_on(async {
        Pipeline::from_spec(&prepare)
            .map_err(|d| anyhow!("{d}"))?
            .start()
            .await
            .map_err(|e| anyhow!(e))?
            .wait()
            .await
            .map_err(|e| anyhow!(e))
    })?;
    let spec = PipelineBuilder::new("jsonl-filter")
        .source(
            "bids",
            "file",
            serde_json::json!({"path": file, "schema": {"auction": "int64", "bidder": "int64", "price": "int64", "channel": "string", "url": "string", "date_time": "timestamp(ms)", "extra": "string"}}),
        )
        .filter("cheap", "price < 100000")
        .sink("void", "blackhole", serde_json::json!({}))
        .build();
    let outcome = measure("jsonl-filter", &spec, cores, json, None);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

#[cfg(test)]
mod tests {
    /// Every subcommand's arguments are consistent (clap checks names,
    /// ids and groups only when a subcommand is parsed).
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
