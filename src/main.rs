//! The `lakepipe` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use lakepipe::config::{split_list, Config, Overrides};
use lakepipe::query::{Engine, Format};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run SQL over the lake (DataFusion or DuckDB); no query opens a shell.
    Sql(SqlArgs),
    /// Produce realistic records to a topic (through the broker router).
    Generate(GenerateArgs),
    /// Validate NDJSON, JSON-array or CSV files and publish their valid records (through the
    /// broker router). Invalid records are listed with file and line; exit code 3 if any.
    Load(LoadArgs),
    /// Generate data for all five topics, ingest it once, print a query.
    Demo(DemoArgs),
    /// Prove exactly-once: re-read the broker up to the lake's offsets and compare.
    Audit(AuditArgs),
    /// Bin-pack (or Z-order) small files per partition.
    Compact(CompactArgs),
    /// Delete files no longer referenced by recent versions.
    Vacuum(VacuumArgs),
    /// Serve the HTTP API: read-only SQL (/query, /tables, /tables/{t}/history), HTTP ingest
    /// (POST /topics/{t}/records, with --brokers or --primary), /metrics and /health. Set
    /// LAKEPIPE_API_TOKEN to require a bearer token.
    Serve(ServeArgs),
    /// Show the effective configuration, or check a config file and its topic specs.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (defaults, --config, LAKEPIPE_*, flags) as TOML,
    /// secrets redacted.
    Show(ConfigArgs),
    /// Check the configuration and every topic spec; exit non-zero, naming the first error.
    Check(ConfigArgs),
}

#[derive(Args)]
struct ConfigArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    selection: Selection,
}

/// Where producers publish: `--primary`/`--fallback` broker URLs and a strategy. Without
/// `--primary`, `--brokers` is the one (Kafka) broker.
#[derive(Args, Clone, Default)]
struct RouteArgs {
    /// Primary broker: kafka://host:port[,host:port…] or iggy://user:pass@host:port[/stream].
    #[arg(long)]
    primary: Option<String>,
    /// Fallback broker URL, used when the primary fails (strategy `health`).
    #[arg(long)]
    fallback: Option<String>,
    /// primary_only, fallback_only, health or round_robin (default: health; `strategy`).
    #[arg(long)]
    strategy: Option<String>,
}

impl RouteArgs {
    fn overrides(self) -> Overrides {
        Overrides { primary: self.primary, fallback: self.fallback, strategy: self.strategy, ..Default::default() }
    }
}

#[derive(Args)]
struct LoadArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    route: RouteArgs,
    /// Files to load.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Topic whose spec validates the records.
    #[arg(long, default_value = "bulk_upload")]
    topic: String,
    /// File format.
    #[arg(long, value_enum, default_value_t = lakepipe::publish::load::FileFormat::Auto)]
    format: lakepipe::publish::load::FileFormat,
    /// Records per published batch.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Records per second (default: as fast as the brokers take them).
    #[arg(long)]
    rate: Option<f64>,
    /// Partitions for a topic that does not exist yet.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    route: RouteArgs,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
}

/// Which offsets: the consumer group, topics and source cluster.
#[derive(Args, Clone, Default)]
struct Selection {
    /// Consumer group (default: lakepipe; `group`).
    #[arg(long)]
    group: Option<String>,
    /// Topics, comma separated (default: those the config's [specs.NAME] define; without any,
    /// the five built-in demo topics).
    #[arg(long)]
    topics: Option<String>,
    /// Name of the source cluster in stored offsets (default: kafka, or iggy with --iggy;
    /// `source_name`).
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
    /// Audit what was ingested from Apache Iggy: iggy://user:pass@host:port[/stream] (the
    /// offsets stored under --source-name, `iggy` by default).
    #[arg(long)]
    iggy: Option<String>,
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
    /// TOML config file, layered under LAKEPIPE_* variables and flags (every key:
    /// lakepipe.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers, comma separated (default: 127.0.0.1:9092; `brokers`).
    #[arg(long)]
    brokers: Option<String>,
    /// Lake root: s3://bucket/prefix, file:///path or a path (default: ./lake; `lake`).
    #[arg(long)]
    lake: Option<String>,
}

#[derive(Args)]
struct IngestArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    selection: Selection,
    /// Close a batch after this long, e.g. 500ms (default: 10s; `trigger_interval`).
    #[arg(long)]
    trigger_interval: Option<String>,
    /// Close a batch at this many records (default: 100000; `max_batch_records`).
    #[arg(long)]
    max_batch_records: Option<usize>,
    /// Read every assigned partition up to the end it had at the start, commit, and exit 0;
    /// exit non-zero, naming each partition and its lag, when that cannot be done.
    #[arg(long)]
    once: bool,
    /// With --once: fail when no partition has moved toward its end for this long (default
    /// 5m; `once_timeout`).
    #[arg(long)]
    once_timeout: Option<String>,
    /// Offsets deleted from the broker (retention) before they were read: `fail` stops the run
    /// naming them; `skip` moves past them and records the range in the commit (default
    /// `fail`; `on_data_loss`).
    #[arg(long, value_enum)]
    on_data_loss: Option<lakepipe::config::OnDataLoss>,
    /// Serve /metrics, /health/live and /health/ready on this address (e.g. 127.0.0.1:9464).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Read Apache Iggy instead of Kafka: iggy://user:pass@host:port[/stream] (offsets are
    /// stored under --source-name, `iggy` by default).
    #[arg(long)]
    iggy: Option<String>,
}

#[derive(Args)]
struct SqlArgs {
    #[command(flatten)]
    common: Common,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Query engine; both give the same results.
    #[arg(long, value_enum, default_value_t = Engine::Datafusion)]
    engine: Engine,
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
    #[command(flatten)]
    route: RouteArgs,
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

/// A process exit code other than 1 (e.g. `load` with invalid records: 3).
#[derive(Debug, thiserror::Error)]
#[error("exit code {0}")]
struct Exit(u8);

/// Publish through the configured router, with a progress bar; an unacknowledged batch stops
/// the run with what was acknowledged before it.
async fn publish(cfg: &Config, topic: &str, partitions: i32, messages: &[lakepipe::publish::Message], batch: usize, rate: Option<f64>, unit: &str) -> anyhow::Result<lakepipe::publish::PublishSummary> {
    let opts = cfg.router_options()?;
    lakepipe::publish::ensure_topics(&opts, &[topic.to_string()], partitions, cfg.connect()).await?;
    let router = lakepipe::publish::connect(&opts).await?;
    let progress = lakepipe::progress::Progress::new(true, unit);
    let result = lakepipe::publish::publish_all(&router, topic, messages, batch, rate, &progress).await;
    progress.finish();
    match result {
        Ok(s) => Ok(s),
        Err((s, e)) => Err(anyhow::Error::new(e).context(format!("{} of {} records were acknowledged before the failure; the rest were not published", s.published, messages.len()))),
    }
}

fn load(common: &Common, extra: Overrides) -> anyhow::Result<Config> {
    let flags = Overrides { brokers: common.brokers.clone(), lake: common.lake.clone(), ..extra };
    Ok(Config::load(common.config.as_deref(), std::env::vars(), &flags)?)
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAKEPIPE_LOG")
        // `rdkafka::consumer::base_consumer`: its close on drop reports an error when the
        // consumer was already closed, as `KafkaSource` does first (see its `Drop`).
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("warn,lakepipe=info,buoyant_kernel=off,deltalake_core::writer::stats=error,rdkafka::consumer::base_consumer=off")
        });
    // Colour only on a terminal: logs sent to a file or a pipe stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
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
                Overrides { trigger_interval: a.trigger_interval, once_timeout: a.once_timeout, on_data_loss: a.on_data_loss, max_batch_records: a.max_batch_records, iggy: a.iggy, ..a.selection.overrides() },
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
            let lake = cfg.existing_lake()?;
            let Some(query) = a.query else {
                lakepipe::query::shell::run_shell(&lake, a.format, a.engine).await?;
                return Ok(());
            };
            let query = match query.strip_prefix('@') {
                Some(file) => std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?,
                None => query,
            };
            let broker = cfg.is_set("brokers").then(|| lakepipe::query::functions::BrokerInfo::new(&cfg.brokers, &cfg.source_name, &cfg.kafka));
            let request = lakepipe::query::Request { sql: &query, engine: a.engine, broker: broker.as_ref(), read_only: true, memory: Some(cfg.query_memory), ..Default::default() };
            let (schema, batches) = lakepipe::query::execute(&lake, &request).await?;
            match a.output {
                Some(path) => {
                    let rows = lakepipe::query::export(&schema, &batches, &path)?;
                    eprintln!("wrote {rows} rows to {}", path.display());
                }
                None => println!("{}", lakepipe::query::format(&schema, &batches, a.format)?),
            }
        }
        Command::Generate(a) => {
            let cfg = load(&a.common, a.route.overrides())?;
            let opts = lakepipe::generate::GenerateOptions {
                // A topic of the config's own that extends a built-in takes that shape.
                shape: a.shape.or_else(|| cfg.shape_of(&a.topic)).unwrap_or_else(|| a.topic.clone()),
                count: a.count,
                update_ratio: a.update_ratio,
                late_ratio: a.late_ratio,
                delete_ratio: a.delete_ratio,
                invalid_ratio: a.invalid_ratio,
                days: 3,
                seed: a.seed,
            };
            let msgs = lakepipe::generate::generate(&opts, chrono::Utc::now().timestamp_millis()).map_err(anyhow::Error::msg)?;
            let summary = publish(&cfg, &a.topic, a.partitions, &msgs, 1000, a.rate, "records").await?;
            eprintln!("produced {} records to {}", summary.published, a.topic);
            println!("{}", serde_json::to_string(&summary)?);
        }
        Command::Load(a) => {
            let cfg = load(&a.common, a.route.overrides())?;
            let spec = cfg.all_specs()?.remove(&a.topic).ok_or_else(|| lakepipe::config::ConfigError::UnknownTopic(a.topic.clone()))?;
            let decoder = lakepipe::decode::Decoder::new(spec.clone(), cfg.max_message_bytes)?;
            let mut messages = Vec::new();
            let mut rejected = Vec::new();
            let mut lines = 0usize;
            for file in &a.files {
                let parsed = lakepipe::publish::load::parse_file(file, a.format, &spec, &decoder)?;
                lines += parsed.messages.len() + parsed.rejected.len();
                messages.extend(parsed.messages);
                rejected.extend(parsed.rejected);
            }
            for r in &rejected {
                eprintln!("{}:{}: {}", r.file, r.line, r.error);
            }
            let summary = publish(&cfg, &a.topic, a.partitions, &messages, a.batch_size, a.rate, "records").await?;
            let report = serde_json::json!({
                "files": a.files.len(), "records": lines, "published": summary.published,
                "invalid": rejected.len(), "per_broker": summary.per_broker, "failovers": summary.failovers,
            });
            eprintln!("loaded {} of {lines} records into {} ({} invalid)", summary.published, a.topic, rejected.len());
            println!("{report}");
            if !rejected.is_empty() {
                return Err(anyhow::Error::new(Exit(3)));
            }
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
            let cfg = load(&a.common, Overrides { iggy: a.iggy, ..a.selection.overrides() })?;
            let lake = cfg.existing_lake()?;
            let specs = cfg.selected_specs()?;
            let opts = lakepipe::audit::AuditOptions {
                brokers: &cfg.brokers,
                group: &cfg.group,
                source_name: &cfg.source_name,
                kafka: &cfg.kafka,
                iggy: Some(cfg.iggy.as_str()).filter(|u| !u.trim().is_empty()),
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
            let lake = cfg.existing_lake()?;
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
            let cfg = load(&a.common, a.route.overrides())?;
            let publishing = cfg.is_set("brokers") || !cfg.primary.is_empty();
            let lake = cfg.lake()?;
            lake.check(cfg.connect()).await?;
            let metrics = lakepipe::metrics::Metrics::new()?;
            metrics.set_ready(true);
            let broker = cfg.is_set("brokers").then(|| lakepipe::query::functions::BrokerInfo::new(&cfg.brokers, &cfg.source_name, &cfg.kafka));
            let token = std::env::var("LAKEPIPE_API_TOKEN").ok().filter(|t| !t.is_empty());
            let server = lakepipe::server::ServerConfig {
                lake: lake.clone(),
                broker,
                token,
                query_timeout: lakepipe::config::parse_duration(&cfg.query_timeout).map_err(anyhow::Error::msg)?,
                max_rows: cfg.max_result_rows,
                max_bytes: cfg.max_result_bytes,
                query_memory: cfg.query_memory,
                queries: lakepipe::server::limits::QueryGate::new(cfg.max_concurrent_queries),
                allowed_hosts: cfg.allowed_hosts.clone(),
                ingest: None,
                inspect: Some(std::sync::Arc::new(lakepipe::server::brokers::Inspect::from_config(&cfg)?)),
            };
            let server = if publishing {
                let options = cfg.router_options()?;
                let api = lakepipe::server::IngestApi {
                    router: lakepipe::publish::connect(&options).await?,
                    options,
                    specs: cfg.all_specs()?,
                    max_message_bytes: cfg.max_message_bytes,
                    partitions: 3,
                    created: Default::default(),
                    shapes: cfg.all_specs()?.keys().filter_map(|t| cfg.shape_of(t).map(|shape| (t.clone(), shape))).collect(),
                };
                lakepipe::server::ServerConfig { ingest: Some(std::sync::Arc::new(api)), ..server }
            } else {
                server
            };
            let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("cannot listen on {}", a.listen))?;
            eprintln!("serving http://{} for {}", listener.local_addr()?, lake.root());
            axum::serve(listener, lakepipe::server::router(server, metrics))
                .with_graceful_shutdown(lakepipe::ingest::shutdown_signal())
                .await?;
        }
        Command::Config(ConfigCommand::Show(a)) => print!("{}", load(&a.common, a.selection.overrides())?.to_toml()?),
        Command::Config(ConfigCommand::Check(a)) => {
            let cfg = load(&a.common, a.selection.overrides())?;
            let specs = cfg.selected_specs()?;
            for spec in &specs {
                lakepipe::decode::Decoder::new(spec.clone(), cfg.max_message_bytes).map_err(lakepipe::config::ConfigError::from)?;
            }
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            println!("OK: topics {}; lake {}; brokers {}", names.join(", "), cfg.lake, cfg.brokers);
        }
        Command::Vacuum(a) => {
            let cfg = load(&a.common, Overrides::default())?;
            let lake = cfg.existing_lake()?;
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
    // `ingest` frees memory sooner and without huge pages (less peak memory, less page
    // clearing); queries keep mimalloc's defaults, which suit their short bursts.
    if matches!(cli.command, Command::Ingest(_)) {
        lakepipe::tune_allocator_for_ingest();
    }
    init_logs(cli.log_format);
    // Queries need a known stack on every thread that runs them: the workers, the blocking
    // threads and this command's own thread (the main thread's depends on `ulimit -s`).
    let stack = lakepipe::query::STACK_SIZE;
    let runtime = match tokio::runtime::Builder::new_multi_thread().thread_stack_size(stack).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = std::thread::Builder::new().name("lakepipe".into()).stack_size(stack).spawn(move || runtime.block_on(run(cli)));
    let outcome = match command.map(|t| t.join()) {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => {
            eprintln!("error: cannot start the command's thread: {e}");
            return ExitCode::FAILURE;
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Exit>().is_some() => ExitCode::from(e.downcast_ref::<Exit>().map_or(1, |x| x.0)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
