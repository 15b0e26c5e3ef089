//! The first day of a data engineer: lakepipe pointed at their own cluster and config.

use std::process::Command;

use crate::harness::{produce_to_partition_on, unique, Fixture, LakeKind, Msg, Tansu};

fn txn(id: &str) -> Msg {
    (
        Some(id.into()),
        Some(format!(
            r#"{{"transaction_id":"{id}","user_id":"u","amount":1,"currency":"EUR","status":"pending","timestamp":1750000000000}}"#
        )),
    )
}

/// A cluster of their own has none of the five demo topics: a config that defines its own
/// specs ingests those, and only those, without `--topics` (it used to subscribe to the demo
/// topics too, and stop on "topic `user_events` does not exist").
#[tokio::test(flavor = "multi_thread")]
async fn ingest_reads_the_configs_own_topics_on_a_cluster_without_the_demo_ones() {
    let tansu = Tansu::start("memory://tansu/", &unique("own"));
    let fx = Fixture::new_on(&tansu.address(), LakeKind::Local, "transactions", 1, "").await;
    let msgs: Vec<Msg> = (0..20).map(|i| txn(&format!("o{i}"))).collect();
    produce_to_partition_on(&tansu.address(), &fx.topic, 0, &msgs).await;
    let out = Command::new(env!("CARGO_BIN_EXE_lakepipe"))
        .args([
            "ingest",
            "--once",
            "--config",
            fx.config.to_str().unwrap(),
            "--brokers",
            &tansu.address(),
            "--lake",
            &fx.lake,
        ])
        .args(["--group", &fx.group, "--trigger-interval", "500ms"])
        .env("LAKEPIPE_ONCE_TIMEOUT", "60s")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("user_events"), "no demo topic is read: {err}");
    let rows = fx.sql(&format!("SELECT count(*) AS n FROM {}", fx.topic));
    assert_eq!(rows[0]["n"], 20);

    // A topic the config names that the cluster lacks is one clear error.
    std::fs::write(&fx.config, format!("[specs.{}]\nextends = \"transactions\"\n[specs.nowhere_{}]\nextends = \"transactions\"\n", fx.topic, unique("x"))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lakepipe"))
        .args([
            "ingest",
            "--once",
            "--config",
            fx.config.to_str().unwrap(),
            "--brokers",
            &tansu.address(),
            "--lake",
            &fx.lake,
        ])
        .args(["--group", &fx.group])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("topic `nowhere_") && err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(err.matches("does not exist").count(), 1, "one error: {err}");
}

/// A mistyped `LAKEPIPE_*` variable stops every command with an error naming it and the key
/// it was probably meant to be, as an unknown key in the file does; it used to be ignored.
#[test]
fn a_mistyped_variable_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lakepipe"))
        .args(["sql", "--lake", dir.path().to_str().unwrap(), "SELECT 1"])
        .env("LAKEPIPE_QUERY_TIMOUT", "5s")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("LAKEPIPE_QUERY_TIMOUT")
            && err.contains("did you mean LAKEPIPE_QUERY_TIMEOUT?"),
        "{err}"
    );
}

/// `config check` names what is wrong with a broken file and exits non-zero; a good one is
/// summed up; `config show` prints the layers' result with the secrets hidden.
#[test]
fn config_check_and_show() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_lakepipe"))
            .args(args)
            .output()
            .unwrap()
    };
    let file = dir.path().join("c.toml");
    let path = file.to_str().unwrap();
    for (text, want) in [
        (
            "[specs.orders]\nextends = \"transactions\"\nkey = [\"order_no\"]\n",
            "topic `orders`: key field `order_no` is not a field",
        ),
        ("lake = 5\n", "invalid type: integer `5`, expected a string"),
        ("lakes = \"./lake\"\n", "unknown field `lakes`"),
        (
            "[specs.orders]\nkey = [\"id\"]\nfields = [{ name = \"id\", type = \"strng\" }]\n",
            "strng",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = run(&["config", "check", "--config", path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{text}: {err}");
    }
    let out = run(&[
        "config",
        "check",
        "--config",
        &dir.path().join("missing.toml").to_string_lossy(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("cannot read config file")
            && err.matches("No such file").count() == 1,
        "{err}"
    );

    std::fs::write(
        &file,
        "[specs.orders]\nextends = \"transactions\"\n[kafka]\n\"sasl.password\" = \"hunter2\"\n",
    )
    .unwrap();
    let out = run(&["config", "check", "--config", path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK: topics orders;"));
    let out = Command::new(env!("CARGO_BIN_EXE_lakepipe"))
        .args(["config", "show", "--config", path, "--group", "g1"])
        .env("LAKEPIPE_LAKE", "/data/lake")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for want in [
        "lake = \"/data/lake\"",
        "group = \"g1\"",
        "\"sasl.password\" = \"***\"",
        "[specs.orders]",
    ] {
        assert!(shown.contains(want), "{want} in:\n{shown}");
    }
    assert!(!shown.contains("hunter2"));
}

/// `--help` names each flag's default (the flags carry none themselves, so that the config
/// file and the variables below them still count); the defaults named are the real ones.
#[test]
fn help_names_the_real_defaults() {
    let d = lakepipe::config::Config::default();
    let out = Command::new(env!("CARGO_BIN_EXE_lakepipe"))
        .args(["ingest", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for want in [
        format!("(default: {}; `brokers`)", d.brokers),
        format!("(default: {}; `lake`)", d.lake),
        format!("(default: {}; `group`)", d.group),
        format!(
            "(default: {}, or iggy with --iggy; `source_name`)",
            d.source_name
        ),
        format!("(default: {}; `trigger_interval`)", d.trigger_interval),
        format!("(default: {}; `max_batch_records`)", d.max_batch_records),
        format!("(default {}; `once_timeout`)", d.once_timeout),
    ] {
        assert!(help.contains(&want), "`{want}` in: {help}");
    }
}

/// Errors in the user's words, on both engines: a table that is not there names the lake and
/// the tables it holds (not `datafusion.public.orders`), a version past the last names the
/// versions there are, and a read command on a lake directory that does not exist says so and
/// creates nothing.
#[tokio::test(flavor = "multi_thread")]
async fn errors_name_what_the_user_named() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 1, "").await;
    crate::harness::produce_to_partition(&fx.topic, 0, &[txn("e1"), txn("e2")]).await;
    fx.ingest_once();
    let sql = |engine: &str, q: &str| {
        let out = fx
            .cmd("sql")
            .args(["--engine", engine, q])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{q} must fail on {engine}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    for engine in ["datafusion", "duckdb"] {
        let err = sql(engine, "SELECT * FROM orders");
        assert!(
            err.contains("no table `orders` in the lake file://")
                && err.contains(&format!("(tables: dead_letters, {})", fx.topic)),
            "{engine}: {err}"
        );
        assert!(!err.contains("datafusion.public"), "{err}");
        let err = sql(engine, &format!("SELECT * FROM as_of('{}', 9)", fx.topic));
        assert!(
            err.contains(&format!(
                "as_of('{0}', 9): `{0}` has versions 0 to ",
                fx.topic
            )),
            "{engine}: {err}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-lake");
    for args in [
        vec!["sql", "SELECT 1"],
        vec!["audit"],
        vec!["vacuum", "--dry-run", "--retain-hours", "200"],
        vec!["compact"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_lakepipe"))
            .args(&args)
            .args(["--lake", missing.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(&format!("no lake at {}", missing.display())),
            "{args:?}: {err}"
        );
        assert!(!missing.exists(), "{args:?} created the lake directory");
    }
}

/// `freshness()` against a broker that does not answer: one bounded wait for every partition,
/// one warning, the rest of the answer intact (it took 75 s and printed 1,550 librdkafka error
/// lines); against the real broker the lag is exact.
#[tokio::test(flavor = "multi_thread")]
async fn freshness_against_an_unreachable_broker_is_bounded_and_says_so_once() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 3, "").await;
    for p in 0..3 {
        crate::harness::produce_to_partition(&fx.topic, p, &[txn(&format!("f{p}"))]).await;
    }
    fx.ingest_once();
    let q = format!("SELECT partition, committed_offset, high_watermark, lag FROM freshness() WHERE scope = 'partition' AND table_name = '{}' ORDER BY partition", fx.topic);
    let rows = fx.sql(&q);
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|r| r["lag"] == 0 && r["high_watermark"] == r["committed_offset"]),
        "{rows:?}"
    );
    let dead = format!("127.0.0.1:{}", crate::harness::free_port());
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_lakepipe"))
        .args([
            "sql",
            "--lake",
            &fx.lake,
            "--brokers",
            &dead,
            "--format",
            "json",
            &q,
        ])
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");
    assert_eq!(
        err.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "one line: {err}"
    );
    assert!(
        err.contains("freshness(): no high watermarks from the broker") && err.contains(&dead),
        "{err}"
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["lag"].is_null() && r["committed_offset"].is_i64()),
        "{rows}"
    );
}

/// `SHOW TABLES` and `DESCRIBE t` work on both engines (DataFusion refused SHOW TABLES;
/// DuckDB loaded no table for either and said the table did not exist).
#[tokio::test(flavor = "multi_thread")]
async fn show_tables_and_describe_on_both_engines() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 1, "").await;
    crate::harness::produce_to_partition(&fx.topic, 0, &[txn("s1")]).await;
    fx.ingest_once();
    for engine in ["datafusion", "duckdb"] {
        let tables = fx.sql_on(engine, "SHOW TABLES");
        let names: Vec<String> = tables
            .iter()
            .filter_map(|r| {
                r.get("table_name")
                    .or_else(|| r.get("name"))
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            })
            .collect();
        assert!(
            names.contains(&fx.topic) && names.contains(&"dead_letters".to_string()),
            "{engine}: {tables:?}"
        );
        let columns = fx.sql_on(engine, &format!("DESCRIBE {}", fx.topic));
        let names: Vec<&str> = columns
            .iter()
            .filter_map(|r| r["column_name"].as_str())
            .collect();
        for want in ["transaction_id", "amount", "timestamp", "_offset", "date"] {
            assert!(names.contains(&want), "{engine}: {want} in {columns:?}");
        }
        // The key is not null (DataFusion's `is_nullable`, DuckDB's `null`); other columns are.
        let nullable = |column: &str| {
            let row = columns
                .iter()
                .find(|r| r["column_name"] == column)
                .unwrap_or_else(|| panic!("{engine}: no {column} in {columns:?}"));
            row.get("is_nullable").or_else(|| row.get("null")).and_then(|v| v.as_str()).map(str::to_string)
        };
        assert_eq!(nullable("transaction_id").as_deref(), Some("NO"), "{engine}: {columns:?}");
        assert_eq!(nullable("amount").as_deref(), Some("YES"), "{engine}: {columns:?}");
    }
    // A reader we did not write sees the same schema.
    let nullable = fx.nullable_columns(&fx.topic);
    assert_eq!(nullable.get("transaction_id"), Some(&false), "{nullable:?}");
    assert_eq!(nullable.get("amount"), Some(&true), "{nullable:?}");
}

/// `lakepipe sql` is read-only like the API: writes are refused on both engines and the table
/// is unchanged (DataFusion could plan an INSERT into a lake table, which would have bypassed
/// the ingest's offsets); unlike the API it may read a local file, for an analyst's join.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_is_read_only_but_may_read_local_files() {
    let fx = Fixture::new(LakeKind::Local, "transactions", 1, "").await;
    crate::harness::produce_to_partition(&fx.topic, 0, &[txn("r1")]).await;
    fx.ingest_once();
    let version = fx.table_version(&fx.topic);
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.csv");
    for engine in ["datafusion", "duckdb"] {
        for write in [
            format!("INSERT INTO {} (transaction_id) VALUES ('x')", fx.topic),
            format!("CREATE TABLE copy_of AS SELECT * FROM {}", fx.topic),
            format!("DELETE FROM {}", fx.topic),
            format!("COPY (SELECT 1) TO '{}'", out_file.display()),
        ] {
            let out = fx
                .cmd("sql")
                .args(["--engine", engine, &write])
                .output()
                .unwrap();
            assert!(!out.status.success(), "{engine} ran `{write}`");
        }
    }
    assert!(!out_file.exists());
    assert_eq!(fx.table_version(&fx.topic), version, "no commit");
    assert_eq!(
        fx.sql(&format!("SELECT count(*) AS n FROM {}", fx.topic))[0]["n"],
        1
    );
    let csv = dir.path().join("rates.csv");
    std::fs::write(&csv, "currency,rate\nEUR,1.0\n").unwrap();
    let rows = fx.sql_on(
        "duckdb",
        &format!(
            "SELECT t.transaction_id, r.rate FROM {} t JOIN read_csv('{}') r USING (currency)",
            fx.topic,
            csv.display()
        ),
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
}

/// `serve` stops cleanly on SIGTERM (what systemd and Docker send), not only on Ctrl-C.
#[test]
fn serve_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::harness::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lakepipe"))
        .args([
            "serve",
            "--lake",
            dir.path().to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::harness::wait_port(port, "serve");
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "serve ignored SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

/// The compose file (no Docker engine here to run it): valid for Compose itself (Debian's
/// `docker-compose`, which scripts/setup.sh installs, checks it against the Compose schema
/// without an engine), the services a user expects, the host's ports, and images pinned to a
/// version (Iggy's waits for the Iggy issue).
#[test]
fn the_compose_file_runs_the_whole_thing() {
    let file = crate::harness::repo_file("docker-compose.yml");
    let out = std::process::Command::new("docker-compose")
        .arg("--file")
        .arg(&file)
        .args(["config", "--quiet"])
        .output()
        .expect("docker-compose: run the suite with scripts/test.sh, which installs it");
    assert!(
        out.status.success(),
        "docker-compose config refused {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let services: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "services:")
        .filter(|l| l.starts_with("  ") && !l.starts_with("   ") && l.trim_end().ends_with(':'))
        .map(|l| l.trim().trim_end_matches(':'))
        .collect();
    for want in [
        "kafka",
        "iggy",
        "localstack",
        "generate",
        "ingest",
        "serve",
        "prometheus",
        "grafana",
    ] {
        assert!(
            services.contains(&want),
            "no `{want}` service in {services:?}"
        );
    }
    for port in ["29092:29092", "8080:8080", "4566:4566", "9464:9464"] {
        assert!(
            text.contains(&format!("\"{port}\"")),
            "port {port} is not published"
        );
    }
    assert!(
        text.contains("HOST://localhost:29092"),
        "Kafka must advertise a listener the host can reach"
    );
    for image in text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
    {
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest",
            "{image} is not pinned"
        );
    }
}
