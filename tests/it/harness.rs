//! Shared fixtures: services from the environment, unique names, the binary, an independent
//! model of the expected table, and readers we did not write.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lakepipe::decode::Decoder;
use lakepipe::source::kafka::ensure_topics;
use serde_json::Value;

/// A message as produced: key and payload text (`None` payload: tombstone).
pub type Msg = (Option<String>, Option<String>);

pub fn brokers() -> String {
    std::env::var("LAKEPIPE_DEV_TEST_BROKERS").expect("LAKEPIPE_DEV_TEST_BROKERS is not set: run the suite with scripts/test.sh, which starts the broker")
}

pub fn s3_root() -> String {
    std::env::var("LAKEPIPE_DEV_TEST_S3").expect("LAKEPIPE_DEV_TEST_S3 is not set: run the suite with scripts/test.sh, which starts LocalStack")
}

pub fn python() -> String {
    std::env::var("LAKEPIPE_DEV_PY").expect("LAKEPIPE_DEV_PY is not set: run the suite with scripts/test.sh")
}

pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}_{}_{}_{:x}", std::process::id(), N.fetch_add(1, Ordering::SeqCst), nanos)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LakeKind {
    Local,
    S3,
}

/// One test's topic, lake and config.
pub struct Fixture {
    pub topic: String,
    /// The broker this fixture's topic lives on (the suite's, unless [`Fixture::new_on`]).
    pub brokers: String,
    pub group: String,
    pub lake: String,
    pub config: PathBuf,
    pub kind: LakeKind,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub async fn new(kind: LakeKind, shape: &str, partitions: i32, extra_config: &str) -> Fixture {
        Fixture::new_on(&brokers(), kind, shape, partitions, extra_config).await
    }

    /// A fixture on another broker (a test's own tansu).
    pub async fn new_on(brokers: &str, kind: LakeKind, shape: &str, partitions: i32, extra_config: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let topic = unique(&format!("t_{shape}"));
        let lake = match kind {
            LakeKind::Local => dir.path().join("lake").to_string_lossy().to_string(),
            LakeKind::S3 => format!("{}/{}", s3_root(), unique("lake")),
        };
        let config = dir.path().join("lakepipe.toml");
        std::fs::write(&config, format!("{extra_config}\n[specs.{topic}]\nextends = \"{shape}\"\n")).unwrap();
        ensure_topics(brokers, &Default::default(), std::slice::from_ref(&topic), partitions, Duration::from_secs(20)).await.unwrap();
        Fixture { group: unique("g"), topic, brokers: brokers.to_string(), lake, config, kind, _dir: dir }
    }

    /// The binary with this fixture's config, brokers, lake, topic and group.
    pub fn cmd(&self, sub: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lakepipe"));
        c.arg(sub).args(["--config", self.config.to_str().unwrap(), "--brokers", &self.brokers, "--lake", &self.lake]);
        if sub == "ingest" {
            c.args(["--topics", &self.topic, "--group", &self.group]);
        }
        c.env("LAKEPIPE_LOG", "warn,lakepipe=info,buoyant_kernel=off").env("LAKEPIPE_ONCE_TIMEOUT", "90s");
        c
    }

    pub fn ingest_once(&self) -> Output {
        let out = self.cmd("ingest").arg("--once").args(["--trigger-interval", "500ms"]).output().unwrap();
        assert!(out.status.success(), "ingest --once failed:\n{}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// Rows from `lakepipe sql --format json`.
    /// Runs on both engines, which must agree (see [`same_rows`]); returns DataFusion's rows.
    pub fn sql(&self, query: &str) -> Vec<Value> {
        let df = self.sql_on("datafusion", query);
        let duck = self.sql_on("duckdb", query);
        same_rows(&df, &duck, query);
        df
    }

    /// One engine only, for a lake that an ingest is changing between two queries.
    pub fn sql_now(&self, query: &str) -> Vec<Value> {
        self.sql_on("datafusion", query)
    }

    /// Rows from `lakepipe sql --engine ENGINE --format json`.
    pub fn sql_on(&self, engine: &str, query: &str) -> Vec<Value> {
        let out = self.cmd("sql").args(["--engine", engine, "--format", "json", query]).output().unwrap();
        assert!(out.status.success(), "sql on {engine} failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad json ({e}): {}", String::from_utf8_lossy(&out.stdout)));
        v.as_array().cloned().unwrap()
    }

    pub fn table_uri(&self, table: &str) -> String {
        match self.kind {
            LakeKind::Local => format!("file://{}/{table}", std::fs::canonicalize(&self.lake).unwrap().display()),
            LakeKind::S3 => format!("{}/{table}", self.lake),
        }
    }

    /// Rows of a table read by a reader we did not write (`deltalake` or `duckdb` from PyPI).
    pub fn cross_read(&self, reader: &str, table: &str, cols: &[&str]) -> Vec<BTreeMap<String, Option<String>>> {
        let script = repo_file("scripts/crosscheck.py");
        let out = Command::new(python()).arg(script).arg(reader).arg(self.table_uri(table)).args(cols).output().unwrap();
        assert!(out.status.success(), "{reader} cross-check failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Each column's name and whether it is nullable, as the Python reader sees the schema.
    pub fn nullable_columns(&self, table: &str) -> BTreeMap<String, bool> {
        serde_json::from_str(&self.python_delta(table, "json.dumps({f.name: f.nullable for f in t.schema().fields})")).unwrap()
    }

    /// The latest table version, from `_delta_log` via SQL-independent means (the Python reader).
    pub fn table_version(&self, table: &str) -> i64 {
        self.python_delta(table, "t.version()").trim().parse().unwrap()
    }

    /// What the Python expression `expr` prints, with `t` the table opened by Python `deltalake`
    /// (with the S3 settings of the environment).
    fn python_delta(&self, table: &str, expr: &str) -> String {
        let code = format!("import sys, os, json\nfrom deltalake import DeltaTable\nkeys=['AWS_ENDPOINT_URL','AWS_ALLOW_HTTP','AWS_REGION','AWS_ACCESS_KEY_ID','AWS_SECRET_ACCESS_KEY']\nt=DeltaTable(sys.argv[1], storage_options={{k: os.environ[k] for k in keys if k in os.environ}})\nprint({expr}, flush=True)\nos._exit(0)");
        let out = Command::new(python()).args(["-c", &code, &self.table_uri(table)]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

/// What the table must hold: an independent, sequential model of the upsert rules.
#[derive(Debug, Default)]
pub struct Model {
    /// key → (precombine micros, the record's JSON)
    pub rows: BTreeMap<String, (i64, Value)>,
    /// (partition, offset) of every invalid message
    pub invalid: Vec<(i32, i64)>,
}

impl Model {
    /// Apply messages of one partition in offset order (offsets from `first_offset`).
    /// Validity comes from lakepipe's decoder (unit-tested on its own); the upsert rules are
    /// re-implemented here.
    pub fn apply(&mut self, shape: &str, partition: i32, first_offset: i64, msgs: &[Msg]) {
        let spec = lakepipe::spec::builtin_specs()[shape].clone();
        let d = Decoder::new(spec, 1 << 20).unwrap();
        for (i, (k, v)) in msgs.iter().enumerate() {
            let offset = first_offset + i as i64;
            match d.decode(k.as_deref().map(str::as_bytes), v.as_deref().map(str::as_bytes), partition, offset) {
                Err(_) => self.invalid.push((partition, offset)),
                Ok(r) => {
                    let body: Value = v.as_deref().map(|v| serde_json::from_str(v).unwrap()).unwrap_or(Value::Null);
                    if r.unconditional {
                        self.rows.remove(&r.key);
                        continue;
                    }
                    let newer = self.rows.get(&r.key).is_none_or(|(ts, _)| r.precombine >= *ts);
                    if !newer {
                        continue;
                    }
                    if r.deleted {
                        self.rows.remove(&r.key);
                    } else {
                        self.rows.insert(r.key.clone(), (r.precombine, body));
                    }
                }
            }
        }
    }
}

/// Send `msgs` to explicit partitions so the model knows their offsets.
pub async fn produce_to_partition(topic: &str, partition: i32, msgs: &[Msg]) {
    produce_to_partition_on(&brokers(), topic, partition, msgs).await
}

/// [`produce_to_partition`] on another broker.
pub async fn produce_to_partition_on(brokers: &str, topic: &str, partition: i32, msgs: &[Msg]) {
    let p: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    send_with(&p, topic, partition, msgs).await;
}

/// Send `msgs` to a partition through an existing producer and wait for every acknowledgement.
pub async fn send_with(p: &rdkafka::producer::FutureProducer, topic: &str, partition: i32, msgs: &[Msg]) {
    use rdkafka::producer::FutureRecord;
    let sends = msgs.iter().map(|(k, v)| {
        let mut r: FutureRecord<'_, String, String> = FutureRecord::to(topic).partition(partition);
        if let Some(k) = k {
            r = r.key(k);
        }
        if let Some(v) = v {
            r = r.payload(v);
        }
        p.send(r, Duration::from_secs(30))
    });
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
}

/// One value in a form both engines print alike: numbers (and numeric text) to 9 significant
/// digits, timestamps as RFC 3339 UTC. The engines type a few results differently (a sum of
/// integers is HUGEINT in DuckDB, a timestamp cast to text has a space instead of a `T`); the
/// values must still be the same.
pub fn canonical(v: &Value) -> String {
    let text = match v {
        Value::Null => return "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if let Ok(n) = text.parse::<f64>() {
        return format!("{n:.9e}");
    }
    let t = text.replace(' ', "T");
    let t = if t.ends_with("+00") { format!("{t}:00") } else { t };
    for candidate in [t.clone(), format!("{t}Z")] {
        if let Ok(ts) = chrono::DateTime::parse_from_rfc3339(&candidate) {
            return ts.with_timezone(&chrono::Utc).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        }
    }
    text
}

/// Assert that two engines returned the same rows with the same columns, in the same order
/// when the query orders them.
pub fn same_rows(a: &[Value], b: &[Value], query: &str) {
    let canon = |rows: &[Value]| -> Vec<BTreeMap<String, String>> {
        rows.iter().map(|r| r.as_object().unwrap().iter().map(|(k, v)| (k.clone(), canonical(v))).collect()).collect()
    };
    let (mut ca, mut cb) = (canon(a), canon(b));
    // Without ORDER BY the row order is the engine's business.
    if !query.to_ascii_uppercase().contains("ORDER BY") {
        ca.sort();
        cb.sort();
    }
    assert_eq!(ca.len(), cb.len(), "the engines return different row counts for {query}\ndatafusion: {a:?}\nduckdb: {b:?}");
    for (i, (ra, rb)) in ca.iter().zip(&cb).enumerate() {
        assert_eq!(ra, rb, "the engines disagree on row {i} of {query}");
    }
}

/// A child process that is killed if the test ends (or panics) while it still runs, so a
/// failed test leaves no ingest behind.
pub struct Reaped(Option<std::process::Child>);

impl Reaped {
    pub fn new(child: std::process::Child) -> Self {
        Reaped(Some(child))
    }

    /// The child, no longer reaped (for `wait_with_output`).
    pub fn take(mut self) -> std::process::Child {
        self.0.take().expect("taken once")
    }
}

impl Reaped {
    /// Whether the child is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }
}

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("not taken")
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("not taken")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Wait up to a minute for something to listen on `port` of 127.0.0.1.
pub fn wait_port(port: u16, what: &str) {
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "{what} did not open port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A tansu broker of the test's own, so it can be killed, stopped and restarted.
pub struct Tansu {
    child: Option<std::process::Child>,
    port: u16,
    /// The port clients are told to use (a TLS terminator's, or `port`).
    advertised: u16,
    storage: String,
    cluster: String,
}

impl Tansu {
    pub fn start(storage: &str, cluster: &str) -> Tansu {
        let port = free_port();
        Tansu::start_advertising(storage, cluster, port, port)
    }

    /// Listen on `port`, and tell clients to connect to `advertised` (where a TLS terminator
    /// forwards to `port`).
    pub fn start_advertising(storage: &str, cluster: &str, port: u16, advertised: u16) -> Tansu {
        let mut t = Tansu { child: None, port, advertised, storage: storage.into(), cluster: cluster.into() };
        t.restart();
        t
    }

    pub fn restart(&mut self) {
        let bin = std::env::var("LAKEPIPE_DEV_TANSU_BIN").expect("LAKEPIPE_DEV_TANSU_BIN is not set: run the suite with scripts/test.sh");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised);
        let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_default();
        let child = Command::new(bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised, "--storage-engine", &self.storage, "--cluster-id", &self.cluster])
            .env("AWS_ENDPOINT", &endpoint)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_port(self.port, "tansu");
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.advertised)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        // A stopped broker must be continued before it can die of SIGKILL's reaping.
        if let Some(c) = self.child.as_ref() {
            unsafe { crate::kill::libc_kill(c.id() as i32, 18) };
        }
        self.kill();
    }
}

/// A file of this checkout. The path comes from cargo at run time: the test binary is shared by
/// checkouts that use one target directory, and cargo does not rebuild it when only the
/// checkout's path differs, so the path compiled in can name another (or a deleted) checkout.
pub fn repo_file(rel: &str) -> std::path::PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    std::path::Path::new(&root).join(rel)
}
