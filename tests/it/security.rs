//! TLS to the broker: tansu behind stunnel (Debian's package), with a CA and a server
//! certificate that the test makes with openssl. `generate` and `ingest --once` speak TLS
//! through librdkafka's own property names under `[kafka]`; a client that cannot verify the
//! broker fails clearly instead of hanging; no secret reaches the logs. (tansu 0.6 supports no
//! SASL mechanism, so SASL is covered by the unit tests of the client configuration.)

use std::path::Path;
use std::process::{Command, Stdio};

use crate::harness::{free_port, unique, wait_port, Reaped, Tansu};

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a server certificate for 127.0.0.1 signed by it: `(ca.pem, server.pem)`.
fn certificates(dir: &Path) -> (String, String) {
    let p = |f: &str| dir.join(f).to_string_lossy().to_string();
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=lakepipe test CA",
        ])
        .args(["-keyout", &p("ca.key"), "-out", &p("ca.pem")]));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-keyout", &p("server.key"), "-out", &p("server.csr")]));
    std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "1", "-CAcreateserial"])
        .args([
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-out",
            &p("server.crt"),
            "-extfile",
            &p("san.cnf"),
        ]));
    let pem = [
        std::fs::read_to_string(p("server.crt")).unwrap(),
        std::fs::read_to_string(p("server.key")).unwrap(),
    ]
    .concat();
    std::fs::write(p("server.pem"), pem).unwrap();
    (p("ca.pem"), p("server.pem"))
}

fn stunnel_bin() -> String {
    std::env::var("LAKEPIPE_DEV_STUNNEL").expect(
        "LAKEPIPE_DEV_STUNNEL is not set: run the suite with scripts/test.sh, which installs stunnel4",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_to_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, server_pem) = certificates(dir.path());
    let (plain, tls) = (free_port(), free_port());
    let _broker = Tansu::start_advertising("memory://tansu/", &unique("tls"), plain, tls);
    let conf = dir.path().join("stunnel.conf");
    std::fs::write(&conf, format!("foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{plain}\ncert = {server_pem}\n")).unwrap();
    let _stunnel = Reaped::new(
        Command::new(stunnel_bin())
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(tls, "stunnel");
    let topic = unique("t_tls");
    let secret = "hunter2-never-logged";
    let tls_props = format!("[kafka]\n\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"{ca}\"\n\"sasl.password\" = \"{secret}\"\n");
    let spec = format!("[specs.{topic}]\nextends = \"transactions\"\n");
    let good = dir.path().join("tls.toml");
    std::fs::write(&good, format!("{tls_props}{spec}")).unwrap();
    let brokers = format!("127.0.0.1:{tls}");
    let bin = env!("CARGO_BIN_EXE_lakepipe");
    let lake = dir.path().join("lake");

    let out = Command::new(bin)
        .args([
            "generate",
            "--config",
            good.to_str().unwrap(),
            "--brokers",
            &brokers,
            "--topic",
            &topic,
            "--shape",
            "transactions",
            "--count",
            "300",
            "--invalid-ratio",
            "0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "generate over TLS: {stderr}");
    let out = Command::new(bin)
        .args([
            "ingest",
            "--once",
            "--config",
            good.to_str().unwrap(),
            "--brokers",
            &brokers,
            "--lake",
            lake.to_str().unwrap(),
            "--topics",
            &topic,
        ])
        .env("LAKEPIPE_ONCE_TIMEOUT", "90s")
        .output()
        .unwrap();
    let ingest_err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "ingest over TLS: {ingest_err}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["consumed"], 300, "{summary}");
    assert!(
        !stderr.contains(secret) && !ingest_err.contains(secret),
        "a secret reached the logs"
    );

    // A client that does not trust the broker's CA, and one that does not speak TLS, fail
    // clearly and quickly.
    for (name, props) in [
        (
            "no CA",
            "[kafka]\n\"security.protocol\" = \"SSL\"\n".to_string(),
        ),
        ("plaintext", String::new()),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, format!("{props}{spec}")).unwrap();
        let out = Command::new(bin)
            .args([
                "ingest",
                "--once",
                "--config",
                bad.to_str().unwrap(),
                "--brokers",
                &brokers,
                "--lake",
                lake.to_str().unwrap(),
                "--topics",
                &topic,
            ])
            .env("LAKEPIPE_CONNECT_TIMEOUT", "5s")
            .env("LAKEPIPE_ONCE_TIMEOUT", "20s")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: must fail:\n{err}");
        assert!(
            err.contains("cannot reach Kafka brokers") || err.contains("Kafka"),
            "{name}: unclear error:\n{err}"
        );
    }
}
