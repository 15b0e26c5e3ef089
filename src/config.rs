//! Configuration, loaded in layers: built-in defaults, then a TOML file, then `LAKEPIPE_*`
//! environment variables, then command-line flags. Unknown keys in the file are errors.
//!
//! S3 settings are not here: they come from the standard `AWS_*` variables.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::spec::{builtin_specs, TopicSpec, TopicSpecConfig};

/// Errors loading configuration. All are the user's to fix, none retryable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file or an override is invalid (unknown key, wrong type).
    #[error("invalid configuration{}: {message}", origin.as_ref().map(|o| format!(" in {o}")).unwrap_or_default())]
    Invalid {
        /// Where the bad value came from.
        origin: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A topic spec is invalid.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// A topic was asked for that has no spec.
    #[error("unknown topic `{0}`: it is neither built in nor defined under [specs.{0}] in the config")]
    UnknownTopic(String),
}

impl ConfigError {
    /// Configuration errors are never retryable.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// lakepipe's configuration. Its `Debug` form hides secrets (see [`is_secret`]).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka bootstrap servers, comma separated.
    pub brokers: String,
    /// Lake root: `s3://bucket/prefix`, `file:///path` or a plain path.
    pub lake: String,
    /// Kafka consumer group.
    pub group: String,
    /// Name of the source cluster, part of the stored offsets' identity, so the same topic and
    /// partition read from two clusters never share an offset.
    pub source_name: String,
    /// Topics to ingest. Empty: the topics the config's `[specs.NAME]` define, or, when it
    /// defines none, the five built-in demo topics.
    pub topics: Vec<String>,
    /// A batch closes after this long (e.g. `500ms`, `10s`).
    pub trigger_interval: String,
    /// A batch closes at this many records.
    pub max_batch_records: usize,
    /// A batch closes at this many payload bytes.
    pub max_batch_bytes: usize,
    /// Larger messages become dead letters (`too_large`).
    pub max_message_bytes: usize,
    /// `--once` exits 0 only when every assigned partition is committed up to the end offset
    /// it had when the run started. When no partition has moved toward that end for this
    /// long (nothing assigned, a broker that delivers nothing), it commits what it read and
    /// exits non-zero, naming each partition and its lag.
    pub once_timeout: String,
    /// `--once` on Kafka: when the group has given this member no partitions and nothing in
    /// the topics has moved for this long (a group coordinator that assigns nothing, members
    /// that hold partitions but are gone), the run leaves the group and reads every partition
    /// of its topics itself, from the lake's offsets. The lake's offset fences keep that
    /// exactly once beside any member that is still writing. Below `once_timeout` to matter.
    pub once_group_wait: String,
    /// What the ingest does when offsets it has not read were deleted from the broker
    /// (retention, DeleteRecords) before it read them: `fail` (the default) stops the run
    /// non-zero, naming the partition and the offsets lost, and commits nothing past them;
    /// `skip` moves past them, records the range in the commit (`history()` shows it,
    /// `audit` reports it) and counts it in `lakepipe_skipped_offsets_total`. A log that was
    /// replaced (the lake's offset past its end) stops the run either way.
    pub on_data_loss: OnDataLoss,
    /// How long to wait for the broker and the bucket to answer at start.
    pub connect_timeout: String,
    /// Write a Delta checkpoint every this many commits (in tables lakepipe creates).
    pub checkpoint_interval: u64,
    /// `vacuum` refuses a shorter retention unless `--force` is given.
    pub min_vacuum_retention_hours: u64,
    /// `serve`: longest a query may run.
    pub query_timeout: String,
    /// `serve`: most rows a query result returns (longer results are cut and marked).
    pub max_result_rows: usize,
    /// `serve`: most bytes of a query result's body (JSON, CSV or Arrow); longer results are
    /// cut at a row and marked, as at `max_result_rows`.
    pub max_result_bytes: usize,
    /// `serve` and `sql`: each query's memory budget in bytes: DataFusion's memory pool (it
    /// spills sorts, joins and aggregates to disk, or fails the query cleanly) and DuckDB's
    /// `memory_limit`.
    pub query_memory: usize,
    /// `serve`: queries that run at once (0: the number of cores). A query beyond them waits
    /// up to 2 s for a turn, then gets a 503 with `Retry-After`.
    pub max_concurrent_queries: usize,
    /// `serve`: the host names a request's `Host` may carry besides `localhost` and IP
    /// addresses (`"*"`: any), so that no web page can reach the API through a name of its
    /// own that it points at this machine (DNS rebinding). Add the names clients use, e.g.
    /// `["lake.internal"]`.
    pub allowed_hosts: Vec<String>,
    /// Ingest from Apache Iggy instead of Kafka: `iggy://user:pass@host:port[/stream]`
    /// (empty: Kafka at `brokers`). Offsets are stored under `source_name` (`iggy` by default).
    pub iggy: String,
    /// Producers (generate, load, HTTP ingest): the primary broker URL, `kafka://host:port[,…]`
    /// or `iggy://user:pass@host:port[/stream]`. Empty: the Kafka cluster in `brokers`.
    pub primary: String,
    /// Producers: the fallback broker URL (empty: none).
    pub fallback: String,
    /// Producers: `primary_only`, `fallback_only`, `health` or `round_robin`.
    pub strategy: String,
    /// Producers: how long a broker may take to acknowledge a batch before the next is tried
    /// (with a single broker the router waits up to 60 s: there is no next).
    pub publish_timeout: String,
    /// Circuit breaker: consecutive failures that open it.
    pub breaker_failures: u32,
    /// Circuit breaker: how long it stays open before probes.
    pub breaker_open_for: String,
    /// Circuit breaker: successful probes that close it again.
    pub breaker_successes: u32,
    /// Extra librdkafka properties for the consumer and producer.
    pub kafka: BTreeMap<String, String>,
    /// Topic specs added to or overriding the built-in five.
    pub specs: BTreeMap<String, TopicSpecConfig>,
    /// The keys a layer above the defaults set (the file, a variable, a flag).
    #[serde(skip)]
    pub(crate) set: std::collections::BTreeSet<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            brokers: "127.0.0.1:9092".into(),
            lake: "./lake".into(),
            group: "lakepipe".into(),
            source_name: "kafka".into(),
            topics: Vec::new(),
            trigger_interval: "10s".into(),
            max_batch_records: 100_000,
            max_batch_bytes: 64 << 20,
            max_message_bytes: 1 << 20,
            once_timeout: "5m".into(),
            once_group_wait: "30s".into(),
            on_data_loss: OnDataLoss::Fail,
            connect_timeout: "15s".into(),
            checkpoint_interval: 10,
            min_vacuum_retention_hours: 168,
            query_timeout: "30s".into(),
            max_result_rows: 100_000,
            max_result_bytes: 64 << 20,
            query_memory: 1 << 30,
            max_concurrent_queries: 0,
            allowed_hosts: Vec::new(),
            iggy: String::new(),
            primary: String::new(),
            fallback: String::new(),
            strategy: "health".into(),
            publish_timeout: "800ms".into(),
            breaker_failures: 5,
            breaker_open_for: "30s".into(),
            breaker_successes: 3,
            kafka: BTreeMap::new(),
            specs: BTreeMap::new(),
            set: Default::default(),
        }
    }
}

/// What the ingest does about offsets deleted from the broker before it read them (see
/// [`Config::on_data_loss`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OnDataLoss {
    /// Stop the run non-zero, naming the partition and the offsets lost.
    #[default]
    Fail,
    /// Move past them, recording the range in the commit.
    Skip,
}

/// Whether a librdkafka property holds a secret (passwords, keys, tokens), never to be logged.
pub fn is_secret(property: &str) -> bool {
    let p = property.to_ascii_lowercase();
    ["password", "secret", "token", "ssl.key.pem", "ssl_key", "sasl.oauthbearer.config", "ssl.keystore"].iter().any(|s| p.contains(s))
}

/// A broker URL with any `user:password@` reduced to `user:***@`.
fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => match url[scheme + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

impl Config {
    /// This configuration with every secret shown as `***`: librdkafka passwords, keys and
    /// tokens, and the passwords in broker URLs.
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        for (k, v) in shown.kafka.iter_mut() {
            if is_secret(k) {
                *v = "***".into();
            }
        }
        for url in [&mut shown.iggy, &mut shown.primary, &mut shown.fallback] {
            *url = without_password(url);
        }
        shown
    }

    /// Whether `key` was set above the defaults (by the file, a variable or a flag): the
    /// HTTP ingest and `freshness()` use `brokers` only when it was.
    pub fn is_set(&self, key: &str) -> bool {
        self.set.contains(key)
    }

    /// The configuration as TOML that `--config` accepts, secrets redacted (`config show`).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(&self.redacted()).map_err(|e| ConfigError::Invalid { origin: None, message: e.to_string() })
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match toml::Value::try_from(self.redacted()) {
            Ok(v) => write!(f, "Config {v}"),
            Err(_) => f.write_str("Config { .. }"),
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers alone.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--brokers`
    pub brokers: Option<String>,
    /// `--lake`
    pub lake: Option<String>,
    /// `--group`
    pub group: Option<String>,
    /// `--topics`
    pub topics: Option<Vec<String>>,
    /// `--trigger-interval`
    pub trigger_interval: Option<String>,
    /// `--once-timeout`
    pub once_timeout: Option<String>,
    /// `--on-data-loss`
    pub on_data_loss: Option<OnDataLoss>,
    /// `--max-batch-records`
    pub max_batch_records: Option<usize>,
    /// `--source-name`
    pub source_name: Option<String>,
    /// `--iggy`
    pub iggy: Option<String>,
    /// `--primary`
    pub primary: Option<String>,
    /// `--fallback`
    pub fallback: Option<String>,
    /// `--strategy`
    pub strategy: Option<String>,
}

const LIST_KEYS: [&str; 2] = ["topics", "allowed_hosts"];

/// `LAKEPIPE_*` variables that are not configuration keys: the log filter and the API token.
/// `LAKEPIPE_DEV_*` are reserved for lakepipe's own scripts and tests. Any other
/// `LAKEPIPE_*` variable is an error, as an unknown key in the file is.
const NOT_CONFIG: [&str; 2] = ["LOG", "API_TOKEN"];

/// The error for `LAKEPIPE_<KEY>` that names no configuration key, with the nearest key.
fn unknown_variable(key: &str) -> String {
    let keys: Vec<String> = match toml::Table::try_from(Config::default()) {
        Ok(t) => t.keys().filter(|k| *k != "kafka" && *k != "specs").cloned().collect(),
        Err(_) => Vec::new(),
    };
    let nearest = keys.iter().map(|k| (edit_distance(k, key), k)).filter(|(d, _)| *d <= 3).min();
    let hint = nearest.map_or(String::new(), |(_, k)| format!(" (did you mean LAKEPIPE_{}?)", k.to_ascii_uppercase()));
    format!(
        "no configuration key `{key}`{hint}; the other variables are LAKEPIPE_LOG, LAKEPIPE_API_TOKEN, LAKEPIPE_KAFKA__<PROPERTY>, LAKEPIPE_SPECS__<NAME> and LAKEPIPE_DEV_* (lakepipe's own scripts)"
    )
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// `LAKEPIPE_SPECS__ORDERS='{ extends = "transactions", key = ["order_id"] }'` sets
/// `[specs.orders]`, over the file's: the value is a TOML inline table (a spec's fields are
/// a list of tables, which no flat variable could spell). The name is lowercased.
fn set_spec(table: &mut toml::Table, var: &str, name: &str, value: &str) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid { origin: Some(var.to_string()), message };
    let parsed: toml::Table = format!("spec = {value}").parse().map_err(|e: toml::de::Error| invalid(format!("expected a TOML inline table such as {{ extends = \"transactions\" }}: {}", e.message())))?;
    let Some(spec) = parsed.get("spec").filter(|v| v.is_table()).cloned() else {
        return Err(invalid("expected a TOML inline table such as { extends = \"transactions\" }".into()));
    };
    let specs = table.entry("specs").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(specs) = specs {
        specs.insert(name.to_ascii_lowercase(), spec);
    }
    Ok(())
}

/// `LAKEPIPE_KAFKA__FETCH_WAIT_MAX_MS=10` sets `[kafka] "fetch.wait.max.ms" = "10"`, over the
/// file's value: librdkafka's property names are dotted, and a variable's name cannot hold a
/// dot, so each `_` stands for one (no property that `[kafka]` may set has an underscore).
fn set_kafka_property(table: &mut toml::Table, property: &str, value: String) {
    let name = property.to_ascii_lowercase().replace('_', ".");
    let kafka = table.entry("kafka").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(kafka) = kafka {
        kafka.insert(name, toml::Value::String(value));
    }
}

impl Config {
    /// Load: defaults, then `file`, then `LAKEPIPE_*` variables from `env`, then `flags`.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>, flags: &Overrides) -> Result<Self, ConfigError> {
        let mut table = toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Invalid { origin: None, message: e.to_string() })?;
        let mut set = std::collections::BTreeSet::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
            let from_file: toml::Table =
                text.parse().map_err(|e: toml::de::Error| ConfigError::Invalid { origin: Some(path.display().to_string()), message: e.to_string() })?;
            // Check the file alone first, so an unknown key is reported against the file.
            Config::deserialize(toml::Value::Table(from_file.clone()))
                .map_err(|e| ConfigError::Invalid { origin: Some(path.display().to_string()), message: e.to_string() })?;
            for (k, v) in from_file {
                set.insert(k.clone());
                table.insert(k, v);
            }
        }
        let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with("LAKEPIPE_")).collect();
        // In a fixed order, so that the first error is always the same one.
        env.sort();
        for (k, v) in env {
            let Some(name) = k.strip_prefix("LAKEPIPE_") else { continue };
            if let Some(property) = name.strip_prefix("KAFKA__") {
                set_kafka_property(&mut table, property, v);
                continue;
            }
            if let Some(spec) = name.strip_prefix("SPECS__") {
                set_spec(&mut table, &k, spec, &v)?;
                continue;
            }
            if NOT_CONFIG.contains(&name) || name.starts_with("DEV_") {
                continue;
            }
            let key = name.to_ascii_lowercase();
            let invalid = |message: String| ConfigError::Invalid { origin: Some(k.clone()), message };
            let Some(current) = table.get(&key).filter(|_| key != "kafka" && key != "specs") else {
                return Err(invalid(unknown_variable(&key)));
            };
            let value = if LIST_KEYS.contains(&key.as_str()) {
                toml::Value::Array(split_list(&v).into_iter().map(toml::Value::String).collect())
            } else if current.is_integer() {
                toml::Value::Integer(v.trim().parse().map_err(|_| invalid(format!("expected an integer, got {v:?}")))?)
            } else {
                toml::Value::String(v)
            };
            set.insert(key.clone());
            table.insert(key, value);
        }
        let mut cfg = Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Invalid { origin: None, message: e.to_string() })?;
        cfg.set = set;
        let f = flags.clone();
        if let Some(v) = f.brokers {
            cfg.set.insert("brokers".into());
            cfg.brokers = v;
        }
        if let Some(v) = f.lake {
            cfg.lake = v;
        }
        if let Some(v) = f.group {
            cfg.group = v;
        }
        if let Some(v) = f.topics {
            cfg.topics = v;
        }
        if let Some(v) = f.once_timeout {
            cfg.once_timeout = v;
        }
        if let Some(v) = f.on_data_loss {
            cfg.on_data_loss = v;
        }
        if let Some(v) = f.trigger_interval {
            cfg.trigger_interval = v;
        }
        if let Some(v) = f.max_batch_records {
            cfg.max_batch_records = v;
        }
        if let Some(v) = f.source_name {
            cfg.source_name = v;
        }
        if let Some(v) = f.iggy {
            cfg.iggy = v;
        }
        if !cfg.iggy.trim().is_empty() && cfg.source_name == Config::default().source_name {
            cfg.source_name = "iggy".into();
        }
        if let Some(v) = f.primary {
            cfg.primary = v;
        }
        if let Some(v) = f.fallback {
            cfg.fallback = v;
        }
        if let Some(v) = f.strategy {
            cfg.strategy = v;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("trigger_interval", &self.trigger_interval),
            ("once_timeout", &self.once_timeout),
            ("once_group_wait", &self.once_group_wait),
            ("connect_timeout", &self.connect_timeout),
            ("query_timeout", &self.query_timeout),
            ("publish_timeout", &self.publish_timeout),
            ("breaker_open_for", &self.breaker_open_for),
        ] {
            parse_duration(value).map_err(|message| ConfigError::Invalid { origin: Some(key.into()), message })?;
        }
        if self.max_batch_records == 0 || self.max_batch_bytes == 0 {
            return Err(ConfigError::Invalid { origin: None, message: "max_batch_records and max_batch_bytes must be positive".into() });
        }
        if self.group.is_empty() || self.source_name.is_empty() || self.source_name.contains(':') || self.group.contains(':') {
            return Err(ConfigError::Invalid { origin: None, message: "group and source_name must be non-empty and contain no `:`".into() });
        }
        if self.breaker_failures == 0 || self.breaker_successes == 0 {
            return Err(ConfigError::Invalid { origin: None, message: "breaker_failures and breaker_successes must be positive".into() });
        }
        self.router_options()?;
        self.selected_specs()?;
        Ok(())
    }

    /// The producers' router: brokers in priority order, strategy and breaker thresholds.
    pub fn router_options(&self) -> Result<crate::publish::RouterOptions, ConfigError> {
        use crate::publish::{breaker::BreakerConfig, router::Strategy, BrokerUrl};
        let invalid = |origin: &str, message: String| ConfigError::Invalid { origin: Some(origin.into()), message };
        let primary = if self.primary.trim().is_empty() { &self.brokers } else { &self.primary };
        let mut brokers = vec![("primary".to_string(), BrokerUrl::parse(primary).map_err(|e| invalid("primary", e.to_string()))?)];
        if !self.fallback.trim().is_empty() {
            brokers.push(("fallback".to_string(), BrokerUrl::parse(&self.fallback).map_err(|e| invalid("fallback", e.to_string()))?));
        }
        let strategy = <Strategy as clap::ValueEnum>::from_str(&self.strategy, true)
            .map_err(|_| invalid("strategy", format!("`{}`: use primary_only, fallback_only, health or round_robin", self.strategy)))?;
        if strategy == Strategy::FallbackOnly && brokers.len() < 2 {
            return Err(invalid("strategy", "fallback_only needs a fallback broker (--fallback)".into()));
        }
        Ok(crate::publish::RouterOptions {
            brokers,
            strategy,
            breaker: BreakerConfig {
                failure_threshold: self.breaker_failures,
                open_for: parse_duration(&self.breaker_open_for).map_err(|m| invalid("breaker_open_for", m))?,
                success_threshold: self.breaker_successes,
            },
            attempt_timeout: parse_duration(&self.publish_timeout).map_err(|m| invalid("publish_timeout", m))?,
            kafka: self.kafka.clone(),
        })
    }

    /// The built-in shape that generated records of `topic` take: its own when it is a
    /// built-in topic, else the built-in its spec extends (`None`: no generator fits).
    pub fn shape_of(&self, topic: &str) -> Option<String> {
        let shape = match self.specs.get(topic).and_then(|s| s.extends.clone()) {
            Some(base) => base,
            None => topic.to_string(),
        };
        crate::spec::builtin_specs().contains_key(&shape).then_some(shape)
    }

    /// Every known spec: built-ins, overridden or extended by the config.
    pub fn all_specs(&self) -> Result<BTreeMap<String, TopicSpec>, ConfigError> {
        let mut specs = builtin_specs();
        for (name, cfg) in &self.specs {
            specs.insert(name.clone(), TopicSpec::from_config(name, cfg)?);
        }
        Ok(specs)
    }

    /// The specs of the topics to ingest: those `topics` names; without it, those the config's
    /// `[specs.NAME]` define; without either, the five built-in demo topics.
    pub fn selected_specs(&self) -> Result<Vec<TopicSpec>, ConfigError> {
        let all = self.all_specs()?;
        if self.topics.is_empty() {
            if self.specs.is_empty() {
                return Ok(all.into_values().collect());
            }
            return Ok(all.into_iter().filter(|(name, _)| self.specs.contains_key(name)).map(|(_, spec)| spec).collect());
        }
        self.topics.iter().map(|t| all.get(t).cloned().ok_or_else(|| ConfigError::UnknownTopic(t.clone()))).collect()
    }

    /// The lake, as configured (a local directory is created if missing).
    pub fn lake(&self) -> Result<crate::lake::Lake, crate::lake::LakeError> {
        Ok(crate::lake::Lake::parse(&self.lake)?.with_checkpoint_interval(self.checkpoint_interval))
    }

    /// The lake for commands that read or maintain it: a local directory must exist.
    pub fn existing_lake(&self) -> Result<crate::lake::Lake, crate::lake::LakeError> {
        Ok(crate::lake::Lake::parse_existing(&self.lake)?.with_checkpoint_interval(self.checkpoint_interval))
    }

    /// The batch trigger interval.
    pub fn trigger(&self) -> Duration {
        parse_duration(&self.trigger_interval).unwrap_or(Duration::from_secs(10))
    }

    /// How long `--once` may see no progress before it fails.
    pub fn once_timeout(&self) -> Duration {
        parse_duration(&self.once_timeout).unwrap_or(Duration::from_secs(300))
    }

    /// How long `--once` waits for the group before it reads every partition itself.
    pub fn once_group_wait(&self) -> Duration {
        parse_duration(&self.once_group_wait).unwrap_or(Duration::from_secs(30))
    }

    /// The start-up connection timeout.
    pub fn connect(&self) -> Duration {
        parse_duration(&self.connect_timeout).unwrap_or(Duration::from_secs(15))
    }
}

/// Split a comma-separated list, dropping blanks.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect()
}

/// Parse a duration such as `500ms`, `10s` or `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration like 500ms or 10s ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "group = \"from-file\"\nlake = \"/tmp/file-lake\"\nmax_batch_records = 5\n[specs.orders]\nextends = \"transactions\"\n").unwrap();
        let env = vec![("LAKEPIPE_LAKE".to_string(), "/tmp/env-lake".to_string()), ("LAKEPIPE_TOPICS".into(), "orders, user_events".into()), ("OTHER".into(), "x".into())];
        let flags = Overrides { group: Some("from-flag".into()), ..Default::default() };
        let cfg = Config::load(Some(&path), env, &flags).unwrap();
        assert_eq!(cfg.group, "from-flag");
        assert_eq!(cfg.lake, "/tmp/env-lake");
        assert_eq!(cfg.max_batch_records, 5);
        assert_eq!(cfg.topics, vec!["orders", "user_events"]);
        assert_eq!(cfg.selected_specs().unwrap()[0].name, "orders");
        assert!(cfg.is_set("lake") && cfg.is_set("max_batch_records") && cfg.is_set("group") && !cfg.is_set("brokers"));
        let from_env = Config::load(None, vec![("LAKEPIPE_BROKERS".to_string(), "k:9092".to_string())], &Overrides::default()).unwrap();
        assert!(from_env.is_set("brokers"));
        let from_flag = Config::load(None, vec![], &Overrides { brokers: Some("k:9092".into()), ..Default::default() }).unwrap();
        assert!(from_flag.is_set("brokers") && !Config::default().is_set("brokers"));
    }

    #[test]
    fn kafka_properties_come_from_the_environment_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[kafka]\n\"fetch.wait.max.ms\" = \"100\"\n\"client.id\" = \"a\"\n").unwrap();
        let env = vec![("LAKEPIPE_KAFKA__FETCH_WAIT_MAX_MS".to_string(), "10".to_string()), ("LAKEPIPE_KAFKA__SECURITY_PROTOCOL".into(), "SASL_SSL".into())];
        let cfg = Config::load(Some(&path), env, &Overrides::default()).unwrap();
        let want: BTreeMap<String, String> =
            [("client.id", "a"), ("fetch.wait.max.ms", "10"), ("security.protocol", "SASL_SSL")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(cfg.kafka, want);
    }

    #[test]
    fn on_data_loss_comes_from_each_layer_and_refuses_other_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        assert_eq!(Config::load(None, vec![], &Overrides::default()).unwrap().on_data_loss, OnDataLoss::Fail);
        std::fs::write(&path, "on_data_loss = \"skip\"\n").unwrap();
        assert_eq!(Config::load(Some(&path), vec![], &Overrides::default()).unwrap().on_data_loss, OnDataLoss::Skip);
        let env = vec![("LAKEPIPE_ON_DATA_LOSS".to_string(), "fail".to_string())];
        assert_eq!(Config::load(Some(&path), env.clone(), &Overrides::default()).unwrap().on_data_loss, OnDataLoss::Fail);
        let flags = Overrides { on_data_loss: Some(OnDataLoss::Skip), ..Default::default() };
        assert_eq!(Config::load(Some(&path), env, &flags).unwrap().on_data_loss, OnDataLoss::Skip);
        std::fs::write(&path, "on_data_loss = \"ignore\"\n").unwrap();
        let err = Config::load(Some(&path), vec![], &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("unknown variant `ignore`") && err.contains("skip"), "{err}");
    }

    #[test]
    fn every_lakepipe_variable_is_a_key_or_an_error() {
        let var = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        // A mistyped key is an error naming the variable and the nearest key.
        let err = Config::load(None, var("LAKEPIPE_BROKER", "k:9092"), &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("LAKEPIPE_BROKER") && err.contains("did you mean LAKEPIPE_BROKERS?"), "{err}");
        let err = Config::load(None, var("LAKEPIPE_KAFKA", "x"), &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("LAKEPIPE_KAFKA__<PROPERTY>"), "{err}");
        // The others: the log filter, the token, the scripts' own.
        for k in ["LAKEPIPE_LOG", "LAKEPIPE_API_TOKEN", "LAKEPIPE_DEV_CACHE", "OTHER"] {
            Config::load(None, var(k, "x"), &Overrides::default()).unwrap_or_else(|e| panic!("{k}: {e}"));
        }
        // A spec from the environment, over the file's.
        let cfg = Config::load(None, var("LAKEPIPE_SPECS__ORDERS", r#"{ extends = "transactions", key = ["transaction_id", "user_id"] }"#), &Overrides::default()).unwrap();
        let spec = &cfg.selected_specs().unwrap()[0];
        assert_eq!((spec.name.as_str(), spec.key.clone()), ("orders", vec!["transaction_id".to_string(), "user_id".to_string()]));
        let err = Config::load(None, var("LAKEPIPE_SPECS__ORDERS", "transactions"), &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("LAKEPIPE_SPECS__ORDERS") && err.contains("inline table"), "{err}");
        let err = Config::load(None, var("LAKEPIPE_SPECS__ORDERS", "{ extend = \"transactions\" }"), &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("extend"), "an unknown field of a spec is an error too: {err}");
        assert_eq!(edit_distance("brokers", "broker"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn unknown_keys_and_topics_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "brokerz = \"x\"\n").unwrap();
        let err = Config::load(Some(&path), vec![], &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("brokerz") && err.contains("c.toml"), "{err}");
        let flags = Overrides { topics: Some(vec!["nope".into()]), ..Default::default() };
        let err = Config::load(None, vec![], &flags).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownTopic(t) if t == "nope"));
        let flags = Overrides { trigger_interval: Some("soon".into()), ..Default::default() };
        assert!(Config::load(None, vec![], &flags).is_err());
        let env = vec![("LAKEPIPE_MAX_BATCH_RECORDS".to_string(), "many".to_string())];
        assert!(Config::load(None, env, &Overrides::default()).is_err());
    }

    #[test]
    fn router_settings() {
        use crate::publish::router::Strategy;
        let env = vec![("LAKEPIPE_BREAKER_FAILURES".to_string(), "7".to_string())];
        let flags = Overrides { primary: Some("kafka://a:1".into()), fallback: Some("kafka://b:2".into()), strategy: Some("round_robin".into()), ..Default::default() };
        let r = Config::load(None, env, &flags).unwrap().router_options().unwrap();
        assert_eq!((r.brokers.len(), r.strategy, r.breaker.failure_threshold), (2, Strategy::RoundRobin, 7));
        for s in ["primary_only", "fallback_only", "health"] {
            let flags = Overrides { fallback: Some("kafka://b:2".into()), strategy: Some(s.into()), ..Default::default() };
            assert!(Config::load(None, vec![], &flags).is_ok(), "{s}");
        }
        let flags = Overrides { strategy: Some("fallback_only".into()), ..Default::default() };
        assert!(Config::load(None, vec![], &flags).unwrap_err().to_string().contains("fallback"));
        let flags = Overrides { primary: Some("mqtt://x".into()), ..Default::default() };
        assert!(Config::load(None, vec![], &flags).is_err());
    }

    #[test]
    fn a_config_with_its_own_specs_selects_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[specs.orders]\nextends = \"transactions\"\n[specs.user_events]\nextends = \"user_events\"\n").unwrap();
        let cfg = Config::load(Some(&path), vec![], &Overrides::default()).unwrap();
        let names: Vec<String> = cfg.selected_specs().unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, vec!["orders", "user_events"], "the built-in demo topics only when the config names none");
        let flags = Overrides { topics: Some(vec!["transactions".into()]), ..Default::default() };
        let cfg = Config::load(Some(&path), vec![], &flags).unwrap();
        assert_eq!(cfg.selected_specs().unwrap()[0].name, "transactions", "--topics may still name a built-in one");
    }

    #[test]
    fn defaults_select_the_five_topics() {
        let cfg = Config::load(None, vec![], &Overrides::default()).unwrap();
        let names: Vec<String> = cfg.selected_specs().unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, vec!["bulk_upload", "log_events", "sensor_data", "transactions", "user_events"]);
        assert_eq!(cfg.trigger(), Duration::from_secs(10));
    }

    #[test]
    fn config_show_is_a_config_file_with_the_secrets_hidden() {
        let mut cfg = Config::default();
        cfg.kafka.insert("sasl.password".into(), "hunter2".into());
        cfg.primary = "iggy://lakepipe:hunter2@h:8090".into();
        let text = cfg.to_toml().unwrap();
        assert!(!text.contains("hunter2") && text.contains("lakepipe:***@h:8090"), "{text}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shown.toml");
        std::fs::write(&path, &text).unwrap();
        let again = Config::load(Some(&path), vec![], &Overrides::default()).unwrap();
        assert_eq!(again.to_toml().unwrap(), text, "what show prints loads back as the same config");
    }

    /// A topic whose spec extends a built-in is generated in that built-in's shape.
    #[test]
    fn a_spec_extending_a_built_in_takes_its_shape() {
        let cfg: Config = toml::from_str("[specs.orders]\nextends = \"transactions\"\n[specs.own]\nkey = [\"id\"]\nfields = [{ name = \"id\", type = \"string\" }]\n").unwrap();
        assert_eq!(cfg.shape_of("orders").as_deref(), Some("transactions"));
        assert_eq!(cfg.shape_of("sensor_data").as_deref(), Some("sensor_data"));
        assert_eq!(cfg.shape_of("own"), None);
    }

    /// `lakepipe.example.toml` is the reference: it loads, sets every key to its default, and
    /// shows every field type of a spec.
    #[test]
    fn the_example_config_sets_every_key_to_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("lakepipe.example.toml");
        let cfg = Config::load(Some(&path), vec![], &Overrides::default()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let file: toml::Table = text.parse().unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (key, value) in &defaults {
            assert!(file.contains_key(key), "the example lacks `{key}`");
            if key != "specs" && key != "kafka" {
                assert_eq!(&file[key], value, "the example's `{key}` is not the default");
            }
        }
        assert_eq!(cfg.specs.len(), 2);
        for t in ["string", "long", "double", "decimal", "timestamp", "boolean", "json"] {
            assert!(text.contains(&format!("type = \"{t}\"")), "the example shows no `{t}` field");
        }
        for option in ["allowed", "pattern", "required", "min", "max", "precision", "scale", "object_only", "extends", "partition_time"] {
            assert!(text.contains(&format!("{option} =")), "the example shows no `{option}`");
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let mut cfg = Config::default();
        cfg.kafka.insert("sasl.password".into(), "hunter2".into());
        cfg.kafka.insert("ssl.key.password".into(), "k3y".into());
        cfg.kafka.insert("sasl.username".into(), "alice".into());
        cfg.primary = "iggy://iggy:s3cret@127.0.0.1:8090/lakepipe".into();
        let shown = format!("{cfg:?}");
        for secret in ["hunter2", "k3y", "s3cret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("alice") && shown.contains("iggy:***@127.0.0.1:8090"), "{shown}");
    }
}
