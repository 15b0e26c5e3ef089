//! The `lakepipe` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use lakepipe::config::{split_list, Config, Overrides};
use lakepipe::query::Format;

#[derive(Parser)]
#[command(name = "lakepipe", version, about = "Kafka → Delta Lake with exactly-once upserts")]
struct Cli {
    /// Log output format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Consume topics and upsert them into the lake, exactly once.
    Ingest(IngestArgs),
    /// Run SQL over the lake (DataFusion).
    Sql(SqlArgs),
    /// Produce realistic records to a topic.
    Generate(GenerateArgs),
    /// Generate data for all five topics, ingest it once, print a query.
    Demo(DemoArgs),
    /// Prove exactly-once: re-read the broker up to the lake's offsets and compare.
    Audit(AuditArgs),
    /// Bin-pack (or Z-order) small files per partition.
    Compact(CompactArgs),
    /// Delete files no longer referenced by recent versions.
    Vacuum(VacuumArgs),
    /// Serve the read-only HTTP API (/query, /tables, /tables/{t}/history) with /metrics and
    /// /health. Set LAKEPIPE_API_TOKEN to require a bearer token.
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
}

/// Which offsets: the consumer group, topics and source cluster.
#[derive(Args, Clone, Default)]
struct Selection {
    /// Consumer group.
    #[arg(long)]
    group: Option<String>,
    /// Topics, comma separated (default: all five, plus any in the config).
    #[arg(long)]
    topics: Option<String>,
    /// Name of the source cluster in stored offsets.
    #[arg(long)]
    source_name: Option<String>,
}

impl Selection {
    fn overrides(self) -> Overrides {
        Overrides { group: self.group, topics: self.topics.as_deref().map(split_list), source_name: self.source_name, ..Default::default() }
    }
}

#[derive(Args)]
struct AuditArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    selection: Selection,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CompactArgs {
    #[command(flatten)]
    common: Common,
    /// Only this table (default: all).
    #[arg(long)]
    table: Option<String>,
    /// Target file size in bytes.
    #[arg(long, default_value_t = 128 * 1024 * 1024)]
    target_file_size: u64,
    /// Z-order by these columns, comma separated.
    #[arg(long)]
    zorder: Option<String>,
}

#[derive(Args)]
struct VacuumArgs {
    #[command(flatten)]
    common: Common,
    /// Only this table (default: all).
    #[arg(long)]
    table: Option<String>,
    /// Keep files unreferenced for less than this many hours.
    #[arg(long)]
    retain_hours: u64,
    /// Allow a retention below the configured minimum (168 h by default).
    #[arg(long)]
    force: bool,
    /// Only list what would be deleted.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args, Clone, Default)]
struct Common {
    /// TOML config file (layered under LAKEPIPE_* variables and flags).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers, comma separated.
    #[arg(long)]
    brokers: Option<String>,
    /// Lake root: s3://bucket/prefix, file:///path or a path.
    #[arg(long)]
    lake: Option<String>,
}

#[derive(Args)]
struct IngestArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    selection: Selection,
    /// Close a batch after this long (e.g. 500ms, 10s).
    #[arg(long)]
    trigger_interval: Option<String>,
    /// Close a batch at this many records.
    #[arg(long)]
    max_batch_records: Option<usize>,
    /// Drain every partition to its end, commit and exit.
    #[arg(long)]
    once: bool,
    /// Serve /metrics, /health/live and /health/ready on this address (e.g. 127.0.0.1:9464).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Args)]
struct SqlArgs {
    #[command(flatten)]
    common: Common,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Write the result to a .parquet or .csv file instead of printing it.
    #[arg(long)]
    output: Option<PathBuf>,
    /// The SQL statement (or a file of SQL, with @FILE); none opens an interactive shell.
    query: Option<String>,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    common: Common,
    /// Topic to produce to.
    #[arg(long)]
    topic: String,
    /// Shape of the records (a built-in topic; default: the topic's name).
    #[arg(long)]
    shape: Option<String>,
    /// Number of records.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Records per second (default: as fast as the broker takes them).
    #[arg(long)]
    rate: Option<f64>,
    /// Share of updates to earlier keys.
    #[arg(long, default_value_t = 0.2)]
    update_ratio: f64,
    /// Share of late versions (older timestamps) of earlier keys.
    #[arg(long, default_value_t = 0.05)]
    late_ratio: f64,
    /// Share of deletes.
    #[arg(long, default_value_t = 0.02)]
    delete_ratio: f64,
    /// Share of invalid records.
    #[arg(long, default_value_t = 0.02)]
    invalid_ratio: f64,
    /// Partitions for a topic that does not exist yet.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    common: Common,
    /// Records per topic.
    #[arg(long, default_value_t = 2000)]
    count: usize,
}

fn load(common: &Common, extra: Overrides) -> anyhow::Result<Config> {
    let flags = Overrides { brokers: common.brokers.clone(), lake: common.lake.clone(), ..extra };
    Ok(Config::load(common.config.as_deref(), std::env::vars(), &flags)?)
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAKEPIPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lakepipe=info,buoyant_kernel=off,deltalake_core::writer::stats=error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ingest(a) => {
            let cfg = load(
                &a.common,
                Overrides { trigger_interval: a.trigger_interval, max_batch_records: a.max_batch_records, ..a.selection.overrides() },
            )?;
            let metrics = lakepipe::metrics::Metrics::new()?;
            if let Some(addr) = a.metrics_addr {
                lakepipe::metrics::serve(addr, metrics.clone()).await?;
            }
            let opts = lakepipe::ingest::IngestOptions { once: a.once, metrics: Some(metrics), progress: true };
            let summary = lakepipe::ingest::run(&cfg, opts).await?;
            println!("{}", serde_json::to_string(&summary)?);
        }
        Command::Sql(a) => {
            let cfg = load(&a.common, Overrides::default())?;
            let lake = cfg.lake()?;
            let Some(query) = a.query else {
                lakepipe::query::shell::run_shell(&lake, a.format).await?;
                return Ok(());
            };
            let query = match query.strip_prefix('@') {
                Some(file) => std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?,
                None => query,
            };
            let broker = a.common.brokers.as_ref().map(|_| lakepipe::query::functions::BrokerInfo {
                brokers: cfg.brokers.clone(),
                source_name: cfg.source_name.clone(),
            });
            let (schema, batches) = lakepipe::query::run_with(&lake, query.trim().trim_end_matches(';'), broker.as_ref()).await?;
            match a.output {
                Some(path) => {
                    let rows = lakepipe::query::export(&schema, &batches, &path)?;
                    eprintln!("wrote {rows} rows to {}", path.display());
                }
                None => println!("{}", lakepipe::query::format(&schema, &batches, a.format)?),
            }
        }
        Command::Generate(a) => {
            let cfg = load(&a.common, Overrides::default())?;
            let opts = lakepipe::generate::GenerateOptions {
                shape: a.shape.unwrap_or_else(|| a.topic.clone()),
                count: a.count,
                update_ratio: a.update_ratio,
                late_ratio: a.late_ratio,
                delete_ratio: a.delete_ratio,
                invalid_ratio: a.invalid_ratio,
                days: 3,
                seed: a.seed,
            };
            let msgs = lakepipe::generate::generate(&opts, chrono::Utc::now().timestamp_millis()).map_err(anyhow::Error::msg)?;
            lakepipe::source::kafka::ensure_topics(&cfg.brokers, std::slice::from_ref(&a.topic), a.partitions, cfg.connect()).await?;
            let producer = lakepipe::source::kafka::KafkaProducer::new(&cfg.brokers, &cfg.kafka)?;
            let n = lakepipe::generate::produce(&producer, &a.topic, msgs, a.rate).await?;
            eprintln!("produced {n} records to {}", a.topic);
        }
        Command::Demo(a) => {
            let cfg = load(&a.common, Overrides::default())?;
            let summary = lakepipe::demo::run(&cfg, a.count).await?;
            eprintln!("second ingest run: {}", serde_json::to_string(&summary)?);
            let lake = cfg.lake()?;
            for (title, sql) in [
                ("Revenue per day and currency (latest version of every transaction):", lakepipe::demo::DEMO_QUERY),
                ("Rows per table:", "SELECT 'transactions' AS t, count(*) AS n FROM transactions UNION ALL SELECT 'user_events', count(*) FROM user_events UNION ALL SELECT 'sensor_data', count(*) FROM sensor_data UNION ALL SELECT 'log_events', count(*) FROM log_events UNION ALL SELECT 'bulk_upload', count(*) FROM bulk_upload UNION ALL SELECT 'dead_letters', count(*) FROM dead_letters ORDER BY t"),
            ] {
                let (schema, batches) = lakepipe::query::run(&lake, sql).await.context("demo query")?;
                println!("{title}\n{}\n", lakepipe::query::format(&schema, &batches, Format::Table)?);
            }
        }
        Command::Audit(a) => {
            let cfg = load(&a.common, a.selection.overrides())?;
            let lake = cfg.lake()?;
            let specs = cfg.selected_specs()?;
            let opts = lakepipe::audit::AuditOptions {
                brokers: &cfg.brokers,
                group: &cfg.group,
                source_name: &cfg.source_name,
                kafka: &cfg.kafka,
                idle: cfg.connect(),
                max_message_bytes: cfg.max_message_bytes,
            };
            let report = lakepipe::audit::audit(&lake, &specs, &opts).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.text());
            }
            if !report.ok() {
                anyhow::bail!("the audit found {} kind(s) of violation", report.findings.len());
            }
        }
        Command::Compact(a) => {
            let cfg = load(&a.common, Overrides::default())?;
            let lake = cfg.lake()?;
            let opts = lakepipe::maintain::CompactOptions {
                tables: a.table.into_iter().collect(),
                target_file_size: a.target_file_size,
                zorder: a.zorder.as_deref().map(split_list).unwrap_or_default(),
                progress: true,
            };
            let reports = lakepipe::maintain::compact(&lake, &cfg, &opts).await?;
            println!("{}", serde_json::to_string(&reports)?);
        }
        Command::Serve(a) => {
            let cfg = load(&a.common, Overrides::default())?;
            let lake = cfg.lake()?;
            lake.check(cfg.connect()).await?;
            let metrics = lakepipe::metrics::Metrics::new()?;
            metrics.set_ready(true);
            let broker = a.common.brokers.as_ref().map(|_| lakepipe::query::functions::BrokerInfo {
                brokers: cfg.brokers.clone(),
                source_name: cfg.source_name.clone(),
            });
            let token = std::env::var("LAKEPIPE_API_TOKEN").ok().filter(|t| !t.is_empty());
            let server = lakepipe::server::ServerConfig {
                lake: lake.clone(),
                broker,
                token,
                query_timeout: lakepipe::config::parse_duration(&cfg.query_timeout).map_err(anyhow::Error::msg)?,
                max_rows: cfg.max_result_rows,
            };
            let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("cannot listen on {}", a.listen))?;
            eprintln!("serving http://{} for {}", listener.local_addr()?, lake.root());
            axum::serve(listener, lakepipe::server::router(server, metrics))
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
        }
        Command::Vacuum(a) => {
            let cfg = load(&a.common, Overrides::default())?;
            let lake = cfg.lake()?;
            let opts = lakepipe::maintain::VacuumOptions {
                tables: a.table.into_iter().collect(),
                retain_hours: a.retain_hours,
                force: a.force,
                min_retain_hours: cfg.min_vacuum_retention_hours,
                dry_run: a.dry_run,
                progress: true,
            };
            let reports = lakepipe::maintain::vacuum(&lake, &opts).await?;
            println!("{}", serde_json::to_string(&reports)?);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
