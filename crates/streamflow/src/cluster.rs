//! `streamflow worker`, `streamflow run --cluster` and `streamflow cluster
//! …`: joining a cluster on NATS JetStream, running flows over it, looking
//! at it.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use streamflow_cluster::{Cluster, Member};

/// Which cluster.
#[derive(clap::Args)]
pub struct Target {
    /// The NATS JetStream server the cluster coordinates through.
    #[arg(
        long = "cluster",
        env = "STREAMFLOW_CLUSTER",
        value_name = "URL",
        global = true
    )]
    url: Option<String>,
    /// The cluster's name (several clusters can share a server).
    #[arg(long = "cluster-name", default_value = "default", global = true)]
    cluster_name: String,
    /// Time after which a worker that stopped renewing is gone; every
    /// process of a cluster uses the same.
    #[arg(long, default_value = "6s", value_parser = streamflow_dsl::parse_duration, global = true)]
    ttl: Duration,
}

/// How the channels into a worker's shares travel.
#[derive(clap::Args)]
pub struct ExchangeArgs {
    /// `direct`: producers on other workers connect to this worker over
    /// TCP; `nats`: the NATS server relays them (for workers that cannot
    /// reach each other).
    #[arg(long, value_enum, default_value_t = Exchange::Direct)]
    exchange: Exchange,
    /// Where it listens for direct channels (port 0: any free one).
    #[arg(long, default_value = "0.0.0.0:0", value_name = "ADDR")]
    listen: std::net::SocketAddr,
    /// The host or IP other workers reach it at (default: its address
    /// toward the NATS server).
    #[arg(long, env = "STREAMFLOW_ADVERTISE", value_name = "HOST")]
    advertise: Option<String>,
}

/// Ways channels between workers travel.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Exchange {
    /// Over TCP, worker to worker.
    Direct,
    /// Relayed by the NATS server.
    Nats,
}

/// What to look at.
#[derive(Subcommand)]
pub enum ClusterAction {
    /// The workers in the cluster now, one per line.
    Members {
        /// As JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Remove the cluster's state on the server: every worker and lease is
    /// gone (running workers find out at their next renewal and stop).
    Dissolve,
}

impl Target {
    /// Whether a cluster was named.
    pub fn is_set(&self) -> bool {
        self.url.is_some()
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// Connects to the cluster named by `target`.
pub async fn connect(target: &Target) -> anyhow::Result<Cluster> {
    let url = target.url.as_deref().context(
        "name the cluster's NATS server: --cluster nats://HOST:4222 (or STREAMFLOW_CLUSTER)",
    )?;
    Ok(Cluster::connect(url, &target.cluster_name, target.ttl).await?)
}

/// `streamflow cluster …`.
pub fn run(target: Target, action: ClusterAction) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let cluster = connect(&target).await?;
        match action {
            ClusterAction::Members { json } => {
                for m in cluster.members().await? {
                    if json {
                        println!("{}", serde_json::to_string(&m)?);
                    } else {
                        let exchange = m.exchange.as_deref().unwrap_or("relayed by NATS");
                        println!(
                            "{}\tslots={}\t{} pid {}\texchange {exchange}",
                            m.name, m.slots, m.host, m.pid
                        );
                    }
                }
            }
            ClusterAction::Dissolve => {
                cluster.dissolve().await?;
                eprintln!("cluster '{}' dissolved", target.cluster_name);
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `streamflow run FLOW --cluster …`: runs a validated flow over the
/// cluster's workers, coordinating it from this process, and prints what
/// went through each node. Ctrl-C asks the sources to stop; a second one
/// withdraws the flow.
pub fn run_flow(
    target: Target,
    spec: &streamflow::FlowSpec,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let cluster = connect(&target).await?;
        let started = std::time::Instant::now();
        let outcome = cluster
            .run_flow(spec, || async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        if !quiet {
            eprintln!("{:<20} {:>12} {:>12}", "node", "in", "out");
            for s in outcome.stages() {
                eprintln!("{:<20} {:>12} {:>12}", s.name, s.records_in, s.records_out);
            }
            eprintln!(
                "flow '{}' ran on {} workers of cluster '{}' (epoch {}) in {:.3}s",
                outcome.flow,
                outcome.reports.len(),
                target.cluster_name,
                outcome.epoch,
                started.elapsed().as_secs_f64()
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// This machine's name.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `streamflow worker`: joins the cluster and stays until stopped
/// (SIGTERM or Ctrl-C: leaves at once) or removed (its membership expired
/// while it was stopped or cut off: exits with an error, as it must no
/// longer act).
pub fn worker(
    target: Target,
    name: Option<String>,
    slots: usize,
    exchange: ExchangeArgs,
) -> anyhow::Result<ExitCode> {
    let host = host_name();
    let name = name.unwrap_or_else(|| {
        let host: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("{host}-{}", std::process::id())
    });
    runtime()?.block_on(async move {
        let mut cluster = connect(&target).await?;
        if exchange.exchange == Exchange::Direct {
            cluster = cluster
                .exchange_directly(exchange.listen, exchange.advertise.as_deref())
                .await?;
        }
        let joined_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut membership = cluster
            .join(Member {
                name: name.clone(),
                slots,
                host,
                pid: std::process::id(),
                joined_ms,
                exchange: cluster.direct_exchange().map(str::to_string),
            })
            .await?;
        tracing::info!(worker = %name, cluster = %target.cluster_name, epoch = membership.epoch(), slots, exchange = cluster.direct_exchange().unwrap_or("nats"), "joined");
        eprintln!(
            "worker '{name}' joined cluster '{}' (epoch {})",
            target.cluster_name,
            membership.epoch()
        );
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        // Runs its shares of the flows assigned to it until told to stop.
        let serving = cluster.serve_assignments(&name, std::future::pending());
        tokio::select! {
            why = membership.removed() => {
                anyhow::bail!("worker '{name}' was removed from cluster '{}': {why}", target.cluster_name);
            }
            served = serving => served?,
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        membership.leave().await;
        eprintln!("worker '{name}' left cluster '{}'", target.cluster_name);
        Ok(ExitCode::SUCCESS)
    })
}
