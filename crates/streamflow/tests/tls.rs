//! TLS (`tls:` blocks, `…s://` urls) against real TLS listeners: each test
//! makes a certificate authority and a server certificate for 127.0.0.1
//! with `openssl`, starts a TLS-only instance of the local server
//! (Mosquitto, Redis, NATS, MariaDB) on a free port, and runs flows through
//! the CLI that verify the server against that authority. PostgreSQL is the
//! local server itself (Debian runs it with TLS on, with a self-signed
//! certificate). A wrong authority must fail the run with a certificate
//! error: proof that the connection really is TLS and really is verified.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, read_jsonl, stderr, streamflow, write};

/// A certificate authority and a server certificate it signed, for
/// `127.0.0.1` and `localhost`, plus a second, unrelated authority.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl runs");
            assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            let (key, pem, subject) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN=streamflow test {ca}"),
            );
            args.extend([
                "-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subject,
            ]);
            openssl(&args);
        }
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write ext");
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(&args);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `ca.pem`, `other-ca.pem`, `server.pem`, `server.key` as text for a flow file.
    fn file(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// A server process of the test's own, stopped when dropped.
struct Daemon {
    child: Child,
    name: &'static str,
}

impl Daemon {
    /// Starts `program args` and waits until `port` accepts connections.
    fn start(name: &'static str, program: &str, args: &[&str], port: u16) -> Daemon {
        Self::start_with(name, Command::new(program).args(args), port)
    }

    /// Starts `command` (in a process group of its own, stopped whole) and
    /// waits until `port` accepts connections.
    fn start_with(name: &'static str, command: &mut Command, port: u16) -> Daemon {
        use std::os::unix::process::CommandExt;
        let child = command
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start: {e}"));
        let mut daemon = Daemon { child, name };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                let mut why = String::new();
                if let Some(mut e) = daemon.child.stderr.take() {
                    std::io::Read::read_to_string(&mut e, &mut why).ok();
                }
                panic!("{name} exited ({status}) before listening on {port}: {why}");
            }
            assert!(
                Instant::now() < deadline,
                "{name} does not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
        let _ = self.name;
    }
}

/// Runs a job flow to completion; returns whether it succeeded and stderr.
fn job(dir: &Path, name: &str, yaml: &str) -> (bool, String) {
    let flow = write(dir, name, yaml);
    let out = streamflow()
        .args(["run", &flow, "--quiet"])
        .output()
        .expect("runs streamflow");
    (out.status.success(), stderr(&out))
}

fn ids(path: &Path) -> Vec<i64> {
    let mut ids: Vec<i64> = read_jsonl(path)
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    ids.sort_unstable();
    ids
}

/// The run failed, and its error (not only a log line before it) says the
/// server's certificate is not trusted.
fn assert_certificate_refused(ok: bool, err: &str) {
    assert!(
        !ok,
        "the run must fail with an untrusted server certificate"
    );
    let error = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("an error line in: {err}"))
        .to_lowercase();
    assert!(
        error.contains("certificate") && error.contains("unknownissuer"),
        "the error names the certificate: {err}"
    );
}

#[test]
fn mqtt_over_tls_round_trip() {
    let pki = Pki::new();
    let port = free_port();
    let conf = write(
        pki.dir.path(),
        "mosquitto.conf",
        &format!(
            "user root\npersistence false\nallow_anonymous true\nlistener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
            pki.file("ca.pem"),
            pki.file("server.pem"),
            pki.file("server.key")
        ),
    );
    let _broker = Daemon::start("mosquitto", "mosquitto", &["-c", &conf], port);
    let d = pki.dir.path();
    let url = format!("mqtts://127.0.0.1:{port}");
    let ca = pki.file("ca.pem");
    let out = d.join("out");
    let reader = write(
        d,
        "reader.yaml",
        &format!(
            "name: r\ncheckpoint: {{interval: 200ms, storage: '{}'}}\nsources:\n  - {{name: m, type: mqtt, config: {{url: '{url}', topic: 'tls/#', qos: 1, client_id: tls-reader, tls: {{ca_file: '{ca}'}}, schema: {{id: int64}}}}}}\nsinks:\n  - {{name: f, type: file, input: m, config: {{path: '{}'}}}}\n",
            d.join("ckpt").display(),
            out.display()
        ),
    );
    let reader = streamflow()
        .args(["run", &reader, "--quiet"])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn reader");
    let reader = ReaderGuard(reader);
    // The subscription must exist before the writer publishes.
    std::thread::sleep(Duration::from_secs(2));
    let (ok, err) = job(
        d,
        "writer.yaml",
        &format!(
            "name: w\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 500, rate: 2000, columns: {{id: i}}}}}}\nsinks:\n  - {{name: o, type: mqtt, input: g, config: {{url: '{url}', topic: tls/rows, qos: 1, tls: {{ca_file: '{ca}'}}}}}}\n"
        ),
    );
    assert!(ok, "the writer publishes over TLS: {err}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ids(&out).len() < 500 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(reader);
    assert_eq!(ids(&out), (0..500).collect::<Vec<_>>());

    let (ok, err) = job(
        d,
        "untrusted.yaml",
        &format!(
            "name: u\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 1, columns: {{id: i}}}}}}\nsinks:\n  - {{name: o, type: mqtt, input: g, config: {{url: '{url}', topic: tls/x, qos: 1, tls: {{ca_file: '{}'}}}}}}\n",
            pki.file("other-ca.pem")
        ),
    );
    assert_certificate_refused(ok, &err);
}

/// Kills a streaming flow when the test ends, whatever happens.
struct ReaderGuard(Child);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn redis_over_tls_round_trip() {
    let pki = Pki::new();
    let port = free_port();
    let port_arg = port.to_string();
    let (cert, key, ca) = (
        pki.file("server.pem"),
        pki.file("server.key"),
        pki.file("ca.pem"),
    );
    let _redis = Daemon::start(
        "redis",
        "redis-server",
        &[
            "--port",
            "0",
            "--tls-port",
            &port_arg,
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &pki.dir.path().display().to_string(),
        ],
        port,
    );
    let d = pki.dir.path();
    let url = format!("rediss://127.0.0.1:{port}");
    let (ok, err) = job(
        d,
        "write.yaml",
        &format!(
            "name: w\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 300, columns: {{id: i}}}}}}\nsinks:\n  - {{name: o, type: redis, input: g, config: {{url: '{url}', stream: rows, tls: {{ca_file: '{ca}'}}}}}}\n"
        ),
    );
    assert!(ok, "written over TLS: {err}");
    let out = d.join("back.jsonl");
    let (ok, err) = job(
        d,
        "read.yaml",
        &format!(
            "name: r\nmode: job\nsources:\n  - {{name: s, type: redis, config: {{url: '{url}', stream: rows, bounded: true, schema: {{id: int64}}, tls: {{ca_file: '{ca}'}}}}}}\nsinks:\n  - {{name: f, type: file, input: s, config: {{path: '{}'}}}}\n",
            out.display()
        ),
    );
    assert!(ok, "read over TLS: {err}");
    assert_eq!(ids(&out), (0..300).collect::<Vec<_>>());

    // `insecure_skip_verify` connects whatever the certificate.
    let (ok, err) = job(
        d,
        "insecure.yaml",
        &format!(
            "name: i\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 5, columns: {{id: i}}}}}}\nsinks:\n  - {{name: o, type: redis, input: g, config: {{url: '{url}', stream: more, tls: {{insecure_skip_verify: true}}}}}}\n"
        ),
    );
    assert!(ok, "insecure TLS connects: {err}");
    let (ok, err) = job(
        d,
        "untrusted.yaml",
        &format!(
            "name: u\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 1, columns: {{id: i}}}}}}\nsinks:\n  - {{name: o, type: redis, input: g, config: {{url: '{url}', stream: x, tls: {{ca_file: '{}'}}}}}}\n",
            pki.file("other-ca.pem")
        ),
    );
    assert_certificate_refused(ok, &err);
}

#[test]
fn nats_over_tls_round_trip() {
    let pki = Pki::new();
    let port = free_port();
    let port_arg = port.to_string();
    let store = pki.path("js");
    let (cert, key, ca) = (
        pki.file("server.pem"),
        pki.file("server.key"),
        pki.file("ca.pem"),
    );
    let _nats = Daemon::start(
        "nats-server",
        "nats-server",
        &[
            "-a",
            "127.0.0.1",
            "-p",
            &port_arg,
            "-js",
            "-sd",
            &store.display().to_string(),
            "--tls",
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
        ],
        port,
    );
    let d = pki.dir.path();
    let url = format!("tls://127.0.0.1:{port}");
    let (ok, err) = job(
        d,
        "write.yaml",
        &format!(
            "name: w\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 400, columns: {{id: i}}}}}}\nsinks:\n  - {{name: o, type: nats, input: g, config: {{url: '{url}', stream: rows, subject: rows.all, create: true, tls: {{ca_file: '{ca}'}}}}}}\n"
        ),
    );
    assert!(ok, "written over TLS: {err}");
    let out = d.join("back.jsonl");
    let (ok, err) = job(
        d,
        "read.yaml",
        &format!(
            "name: r\nmode: job\nsources:\n  - {{name: s, type: nats, config: {{url: '{url}', stream: rows, bounded: true, schema: {{id: int64}}, tls: {{ca_file: '{ca}'}}}}}}\nsinks:\n  - {{name: f, type: file, input: s, config: {{path: '{}'}}}}\n",
            out.display()
        ),
    );
    assert!(ok, "read over TLS: {err}");
    assert_eq!(ids(&out), (0..400).collect::<Vec<_>>());
    let (ok, err) = job(
        d,
        "untrusted.yaml",
        &format!(
            "name: u\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 1, columns: {{id: i}}}}}}\nsinks:\n  - {{name: o, type: nats, input: g, config: {{url: '{url}', stream: rows, subject: rows.all, tls: {{ca_file: '{}'}}}}}}\n",
            pki.file("other-ca.pem")
        ),
    );
    assert_certificate_refused(ok, &err);
}

#[test]
fn postgres_over_tls() {
    let pki = Pki::new();
    let d = pki.dir.path();
    let table = common::unique("tls_rows");
    let url = "postgres://postgres@127.0.0.1:5432/test";
    // The local server's certificate is self-signed (Debian's snakeoil):
    // encrypted without verification works …
    let (ok, err) = job(
        d,
        "write.yaml",
        &format!(
            "name: w\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 250, columns: {{id: i}}}}}}\nsinks:\n  - {{name: o, type: postgres, input: g, config: {{url: '{url}', table: {table}, tls: {{insecure_skip_verify: true}}}}}}\n"
        ),
    );
    assert!(ok, "written over TLS: {err}");
    let out = d.join("back.jsonl");
    let (ok, err) = job(
        d,
        "read.yaml",
        &format!(
            "name: r\nmode: job\nsources:\n  - {{name: s, type: postgres, config: {{url: '{url}?sslmode=require', table: {table}, tls: {{insecure_skip_verify: true}}}}}}\nsinks:\n  - {{name: f, type: file, input: s, config: {{path: '{}'}}}}\n",
            out.display()
        ),
    );
    assert!(ok, "read over TLS: {err}");
    assert_eq!(ids(&out), (0..250).collect::<Vec<_>>());
    // … verified against an authority that did not sign it, refused.
    let (ok, err) = job(
        d,
        "untrusted.yaml",
        &format!(
            "name: u\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 1, columns: {{id: i}}}}}}\nsinks:\n  - {{name: o, type: postgres, input: g, config: {{url: '{url}', table: {table}, tls: {{ca_file: '{}'}}}}}}\n",
            pki.file("ca.pem")
        ),
    );
    assert_certificate_refused(ok, &err);
}

#[test]
fn http_sink_posts_to_a_tls_webhook() {
    let pki = Pki::new();
    let d = pki.dir.path();
    let port = free_port();
    let out = d.join("received");
    let receiver = write(
        d,
        "webhook.yaml",
        &format!(
            "name: hook\ncheckpoint: {{interval: 200ms, storage: '{}'}}\nsources:\n  - {{name: h, type: http, config: {{listen: '127.0.0.1:{port}', path: /in, schema: {{id: int64}}, tls: {{cert_file: '{}', key_file: '{}'}}}}}}\nsinks:\n  - {{name: f, type: file, input: h, config: {{path: '{}'}}}}\n",
            d.join("ckpt").display(),
            pki.file("server.pem"),
            pki.file("server.key"),
            out.display()
        ),
    );
    let receiver = ReaderGuard(
        streamflow()
            .args(["run", &receiver, "--quiet"])
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn webhook"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the webhook listens");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, err) = job(
        d,
        "post.yaml",
        &format!(
            "name: p\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 700, columns: {{id: i}}}}}}\nsinks:\n  - {{name: o, type: http, input: g, config: {{url: 'https://127.0.0.1:{port}/in', batch: {{max_rows: 100}}, tls: {{ca_file: '{}'}}}}}}\n",
            pki.file("ca.pem")
        ),
    );
    assert!(ok, "posted over TLS: {err}");
    assert_eq!(
        ids(&out),
        (0..700).collect::<Vec<_>>(),
        "answered only once durable"
    );
    let (ok, err) = job(
        d,
        "untrusted.yaml",
        &format!(
            "name: u\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 1, columns: {{id: i}}}}}}\nsinks:\n  - {{name: o, type: http, input: g, config: {{url: 'https://127.0.0.1:{port}/in', retry: {{max_attempts: 1}}, tls: {{ca_file: '{}'}}}}}}\n",
            pki.file("other-ca.pem")
        ),
    );
    // A batch that finally fails goes to the dlq, or without one fails the run.
    assert_certificate_refused(ok, &err);

    // The `http` processor of a `process` stage calls the same endpoint
    // over TLS, one POST per record; the webhook's answer `{"rows": 1}`
    // becomes a column.
    let called = d.join("called.jsonl");
    let (ok, err) = job(
        d,
        "process.yaml",
        &format!(
            "name: c\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 20, columns: {{id: 'i + 1000'}}}}}}\nstages:\n  - name: p\n    type: process\n    input: g\n    node: {{type: http, method: POST, url: 'https://127.0.0.1:{port}/in', response: {{rows: int64}}, tls: {{ca_file: '{}'}}}}\nsinks:\n  - {{name: f, type: file, input: p, config: {{path: '{}'}}}}\n",
            pki.file("ca.pem"),
            called.display()
        ),
    );
    assert!(ok, "called over TLS: {err}");
    let answers = read_jsonl(&called);
    assert_eq!(answers.len(), 20);
    assert!(answers.iter().all(|r| r["rows"] == 1), "{answers:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ids(&out).len() < 720 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let expected: Vec<i64> = (0..700).chain(1000..1020).collect();
    assert_eq!(ids(&out), expected, "the webhook received the records");
    drop(receiver);
}

#[test]
fn mysql_over_tls_round_trip() {
    let pki = Pki::new();
    let port = free_port();
    let data = pki.path("mariadb");
    let install = Command::new("mariadb-install-db")
        .args([
            "--no-defaults",
            "--user=root",
            &format!("--datadir={}", data.display()),
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ])
        .output()
        .expect("mariadb-install-db runs");
    assert!(
        install.status.success(),
        "mariadb-install-db: {}",
        stderr(&install)
    );
    let arg = |k: &str, v: String| format!("--{k}={v}");
    let _server = Daemon::start(
        "mariadbd",
        "/usr/sbin/mariadbd",
        &[
            "--no-defaults",
            "--user=root",
            "--skip-log-bin",
            "--bind-address=127.0.0.1",
            &arg("port", port.to_string()),
            &arg("datadir", data.display().to_string()),
            &arg("socket", pki.path("mariadb.sock").display().to_string()),
            &arg("pid-file", pki.path("mariadb.pid").display().to_string()),
            &arg("ssl-cert", pki.file("server.pem")),
            &arg("ssl-key", pki.file("server.key")),
            &arg("ssl-ca", pki.file("ca.pem")),
            // Plain connections are refused: what follows is TLS.
            "--require-secure-transport=ON",
        ],
        port,
    );
    let d = pki.dir.path();
    let url = format!("mysql://root@127.0.0.1:{port}/mysql");
    let ca = pki.file("ca.pem");
    let (ok, err) = job(
        d,
        "write.yaml",
        &format!(
            "name: w\nmode: job\ncheckpoint: {{interval: 100ms, storage: '{}'}}\nsources:\n  - {{name: g, type: generator, config: {{count: 600, columns: {{id: i}}}}}}\nsinks:\n  - {{name: o, type: mysql, input: g, config: {{url: '{url}', table: tls_rows, tls: {{ca_file: '{ca}'}}}}}}\n",
            d.join("ckpt").display()
        ),
    );
    assert!(ok, "written over TLS: {err}");
    let out = d.join("back.jsonl");
    let (ok, err) = job(
        d,
        "read.yaml",
        &format!(
            "name: r\nmode: job\nsources:\n  - {{name: s, type: mysql, config: {{url: '{url}', table: tls_rows, tls: {{ca_file: '{ca}'}}}}}}\nsinks:\n  - {{name: f, type: file, input: s, config: {{path: '{}'}}}}\n",
            out.display()
        ),
    );
    assert!(ok, "read over TLS: {err}");
    assert_eq!(ids(&out), (0..600).collect::<Vec<_>>());
    let (ok, err) = job(
        d,
        "untrusted.yaml",
        &format!(
            "name: u\nmode: job\nsources:\n  - {{name: s, type: mysql, config: {{url: '{url}', table: tls_rows, tls: {{ca_file: '{}'}}}}}}\nsinks:\n  - {{name: f, type: blackhole, input: s}}\n",
            pki.file("other-ca.pem")
        ),
    );
    assert_certificate_refused(ok, &err);
}

#[test]
fn rabbitmq_over_tls_round_trip() {
    let pki = Pki::new();
    let (port, dist) = (free_port(), free_port());
    let base = pki.path("rabbit");
    std::fs::create_dir_all(&base).expect("mkdir");
    let conf = write(
        &base,
        "rabbit.conf",
        &format!(
            "listeners.tcp = none\nlisteners.ssl.default = {port}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
            pki.file("ca.pem"),
            pki.file("server.pem"),
            pki.file("server.key")
        ),
    );
    let plugins = write(&base, "plugins", "[].\n");
    // A second node beside the local broker, as root, TLS only.
    let node = format!("streamflow-tls-{port}@localhost");
    let _broker = Daemon::start_with(
        "rabbitmq-server",
        Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", base.join("log"))
            .env("RABBITMQ_CONFIG_FILE", &conf)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
            .env("RABBITMQ_PID_FILE", base.join("pid")),
        port,
    );
    let d = pki.dir.path();
    let url = format!("amqps://guest:guest@127.0.0.1:{port}/%2f");
    let ca = pki.file("ca.pem");
    let (ok, err) = job(
        d,
        "write.yaml",
        &format!(
            "name: w\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 800, columns: {{id: i}}}}}}\nsinks:\n  - {{name: o, type: rabbitmq, input: g, config: {{url: '{url}', queue: rows, declare: true, tls: {{ca_file: '{ca}'}}}}}}\n"
        ),
    );
    assert!(ok, "published over TLS: {err}");
    let out = d.join("back.jsonl");
    let (ok, err) = job(
        d,
        "read.yaml",
        &format!(
            "name: r\nmode: job\nsources:\n  - {{name: s, type: rabbitmq, config: {{url: '{url}', queue: rows, bounded: true, schema: {{id: int64}}, tls: {{ca_file: '{ca}'}}}}}}\nsinks:\n  - {{name: f, type: file, input: s, config: {{path: '{}'}}}}\n",
            out.display()
        ),
    );
    assert!(ok, "consumed over TLS: {err}");
    assert_eq!(ids(&out), (0..800).collect::<Vec<_>>());
    let (ok, err) = job(
        d,
        "untrusted.yaml",
        &format!(
            "name: u\nmode: job\nsources:\n  - {{name: g, type: generator, config: {{count: 1, columns: {{id: i}}}}}}\nsinks:\n  - {{name: o, type: rabbitmq, input: g, config: {{url: '{url}', queue: rows, tls: {{ca_file: '{}'}}}}}}\n",
            pki.file("other-ca.pem")
        ),
    );
    assert_certificate_refused(ok, &err);
}

#[test]
fn validate_reports_unusable_tls_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = write(
        dir.path(),
        "bad.yaml",
        "name: b\nmode: job\nsources:\n  - {name: s, type: redis, config: {url: 'rediss://127.0.0.1:1', stream: x, bounded: true, schema: {id: int64}, tls: {ca_file: /nonexistent/ca.pem}}}\nsinks:\n  - {name: o, type: mqtt, input: s, config: {url: 'mqtts://127.0.0.1:1', topic: t, tls: {cert_file: /nonexistent/c.pem}}}\n  - {name: p, type: http, input: s, config: {url: 'http://127.0.0.1:1/x', tls: {insecure_skip_verify: true}}}\n",
    );
    let out = common::run(&["validate", &flow]);
    assert!(!out.status.success());
    let err = stderr(&out);
    for expected in [
        "sources[0].config.tls.ca_file",
        "/nonexistent/ca.pem",
        "sinks[0].config.tls.cert_file",
        "go together",
        "sinks[1].config.tls: tls settings need an https:// url",
    ] {
        assert!(err.contains(expected), "'{expected}' in: {err}");
    }
}
