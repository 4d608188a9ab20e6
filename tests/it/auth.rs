//! Connection security, on both connections (the replication connection and the control
//! connection): each sslmode, trust, cleartext, md5 and SCRAM-SHA-256 (with and without
//! channel binding), client certificates, against the harness cluster's TLS certificate and
//! its Unix socket; the password rule (no cleartext or MD5 password over a link a man in the
//! middle could read) against fake servers; and the warnings `check` and `run` give.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pglive::source::SourceError;
use pglive::source::catalog;
use pglive::source::conn::ReplicationConnection;
use pglive::source::conninfo::ConnInfo;

use crate::support::cluster::{CLEARTEXT_PASSWORD, MD5_PASSWORD, SCRAM_PASSWORD};
use crate::support::{BIN, Cluster, Daemon, TestDb, WAIT};

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn parse(url: &str, allow_insecure_password: bool) -> ConnInfo {
    let mut info = ConnInfo::parse(url).expect("valid URL");
    info.allow_insecure_password = allow_insecure_password;
    info
}

/// Connects for replication and runs IDENTIFY_SYSTEM; the database name.
async fn identify_with(url: &str, allow: bool) -> Result<String, SourceError> {
    let info = parse(url, allow);
    let mut conn = ReplicationConnection::connect(&info, Duration::from_secs(10), 1 << 20).await?;
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await?;
    Ok(rows[0][3].clone().unwrap_or_default())
}

async fn identify(url: &str) -> Result<String, SourceError> {
    identify_with(url, false).await
}

/// Connects the control session and asks who it is.
async fn control_with(url: &str, allow: bool) -> Result<String, SourceError> {
    let info = parse(url, allow);
    let client = catalog::connect(&info, Duration::from_secs(10)).await?;
    let row = client.query_one("SELECT current_user::text", &[]).await?;
    Ok(row.get(0))
}

async fn control(url: &str) -> Result<String, SourceError> {
    control_with(url, false).await
}

/// Both connections must work with `url`.
async fn both_connect(url: &str) {
    let db = identify(url)
        .await
        .unwrap_or_else(|e| panic!("replication, {url}: {e}"));
    assert_eq!(db, "postgres", "{url}");
    control(url)
        .await
        .unwrap_or_else(|e| panic!("control, {url}: {e}"));
}

/// Both connections must fail with `url`, for good, with `want` in the error.
async fn both_refused(url: &str, allow: bool, want: &str) {
    for (which, result) in [
        ("replication", identify_with(url, allow).await),
        (
            "control",
            control_with(url, allow).await.map(|_| String::new()),
        ),
    ] {
        let err = result.expect_err(&format!("{which}: {url}"));
        let text = err.to_string();
        assert!(text.contains(want), "{which}, {url}: {text}");
        assert!(
            !err.is_retryable(),
            "{which}, {url}: {text} should not be retried"
        );
        for secret in [CLEARTEXT_PASSWORD, MD5_PASSWORD, "wrong"] {
            assert!(!text.contains(secret), "no password in {text}");
        }
    }
}

fn url(c: &Cluster, user: &str, password: Option<&str>, host: &str, params: &str) -> String {
    let auth = match password {
        Some(p) => format!("{user}:{}", enc(p)),
        None => user.to_owned(),
    };
    format!("postgres://{auth}@{host}:{}/postgres?{params}", c.port)
}

/// A URL for the cluster's Unix socket.
fn unix_url(c: &Cluster, user: &str, password: &str) -> String {
    format!(
        "postgresql:///postgres?host={}&port={}&user={user}&password={}",
        c.socket_dir().display(),
        c.port,
        enc(password)
    )
}

#[tokio::test]
async fn trust_password_md5_and_scram_over_plain_and_tls() {
    let c = Cluster::shared();
    let ca = c.ca_cert();
    let ca = ca.display();
    let ok = [
        url(c, "postgres", None, "127.0.0.1", "sslmode=disable"),
        url(c, "postgres", None, "127.0.0.1", "sslmode=require"),
        // Cleartext and MD5 passwords over TLS with a verified certificate.
        url(
            c,
            "pwuser",
            Some(CLEARTEXT_PASSWORD),
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        url(
            c,
            "md5user",
            Some(MD5_PASSWORD),
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        ),
        // sslmode=require with a root certificate verifies the chain, as libpq does.
        url(
            c,
            "pwuser",
            Some(CLEARTEXT_PASSWORD),
            "127.0.0.1",
            &format!("sslmode=require&sslrootcert={ca}"),
        ),
        // Over the Unix socket: no network in between.
        unix_url(c, "pwuser", CLEARTEXT_PASSWORD),
        unix_url(c, "md5user", MD5_PASSWORD),
        // SCRAM never reveals the password: fine over plain TCP.
        url(
            c,
            "scramuser",
            Some(SCRAM_PASSWORD),
            "127.0.0.1",
            "sslmode=disable",
        ),
        url(c, "scramuser", Some(SCRAM_PASSWORD), "127.0.0.1", ""),
        // TLS: SCRAM-SHA-256-PLUS; channel_binding=require fails unless it was used.
        url(
            c,
            "scramuser",
            Some(SCRAM_PASSWORD),
            "127.0.0.1",
            "sslmode=require&channel_binding=require",
        ),
        url(
            c,
            "scramuser",
            Some(SCRAM_PASSWORD),
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}&channel_binding=require"),
        ),
        url(
            c,
            "scramuser",
            Some(SCRAM_PASSWORD),
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        url(
            c,
            "scramuser",
            Some(SCRAM_PASSWORD),
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        ),
        url(
            c,
            "scramuser",
            Some(SCRAM_PASSWORD),
            "127.0.0.1",
            "sslmode=require&channel_binding=disable",
        ),
    ];
    for u in ok {
        both_connect(&u).await;
    }
}

/// Regression: the default connection (sslmode=prefer) sent a cleartext or MD5 password over
/// plain TCP, or over TLS whose certificate nobody checked.
#[tokio::test]
async fn no_cleartext_or_md5_password_over_a_connection_a_man_in_the_middle_could_read() {
    let c = Cluster::shared();
    let refused = [
        url(
            c,
            "pwuser",
            Some(CLEARTEXT_PASSWORD),
            "127.0.0.1",
            "sslmode=disable",
        ),
        url(c, "pwuser", Some(CLEARTEXT_PASSWORD), "127.0.0.1", ""),
        url(
            c,
            "pwuser",
            Some(CLEARTEXT_PASSWORD),
            "127.0.0.1",
            "sslmode=require",
        ),
        url(
            c,
            "md5user",
            Some(MD5_PASSWORD),
            "127.0.0.1",
            "sslmode=disable",
        ),
        url(
            c,
            "md5user",
            Some(MD5_PASSWORD),
            "127.0.0.1",
            "sslmode=prefer",
        ),
        url(
            c,
            "md5user",
            Some(MD5_PASSWORD),
            "localhost",
            "sslmode=require",
        ),
    ];
    for u in &refused {
        both_refused(u, false, "pglive did not send it").await;
    }
    let err = identify(&refused[0]).await.unwrap_err().to_string();
    for fix in [
        "sslmode=verify-full",
        "sslrootcert",
        "Unix socket",
        "scram-sha-256",
        "postgres.allow_insecure_password = true",
    ] {
        assert!(err.contains(fix), "the error names the fix {fix:?}: {err}");
    }
    // The operator may accept the risk.
    for u in &refused {
        identify_with(u, true)
            .await
            .unwrap_or_else(|e| panic!("{u}: {e}"));
        control_with(u, true)
            .await
            .unwrap_or_else(|e| panic!("{u}: {e}"));
    }
}

#[tokio::test]
async fn authentication_and_verification_failures_are_clear_and_final() {
    let c = Cluster::shared();
    let ca = c.ca_cert();
    let other = c.other_ca_cert();
    let verified = format!("sslmode=verify-full&sslrootcert={}", ca.display());
    let cases = [
        (
            url(c, "md5user", Some("wrong"), "localhost", &verified),
            "28P01",
        ),
        (
            url(
                c,
                "scramuser",
                Some("wrong"),
                "127.0.0.1",
                "sslmode=require",
            ),
            "28P01",
        ),
        (
            url(c, "scramuser", None, "127.0.0.1", "sslmode=disable"),
            "password",
        ),
        (
            url(
                c,
                "scramuser",
                Some(SCRAM_PASSWORD),
                "127.0.0.1",
                "sslmode=disable&channel_binding=require",
            ),
            "needs TLS",
        ),
        // md5 cannot bind to TLS: under channel_binding=require the password is never sent.
        (
            url(
                c,
                "md5user",
                Some(MD5_PASSWORD),
                "localhost",
                &format!("{verified}&channel_binding=require"),
            ),
            "channel",
        ),
    ];
    for (u, want) in cases {
        match ConnInfo::parse(&u) {
            Err(e) => assert!(e.to_string().contains(want), "{u}: {e}"),
            Ok(_) => both_refused(&u, false, want).await,
        }
    }
    // With a root certificate given, sslmode=require verifies the chain (as libpq does).
    let u = url(
        c,
        "postgres",
        None,
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={}", other.display()),
    );
    let err = identify(&u)
        .await
        .expect_err("require with a root certificate verifies the chain");
    assert!(matches!(err, SourceError::Tls { .. }), "{err}");
    let err = control(&u).await.expect_err("the control connection too");
    assert!(matches!(err, SourceError::Tls { .. }), "{err}");
    let u = url(
        c,
        "postgres",
        None,
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={}", ca.display()),
    );
    both_connect(&u).await;
    // A certificate from an unknown CA is refused.
    let u = url(
        c,
        "postgres",
        None,
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", other.display()),
    );
    for err in [
        identify(&u).await.expect_err("unknown CA must fail"),
        control(&u).await.expect_err("unknown CA must fail"),
    ] {
        assert!(matches!(err, SourceError::Tls { .. }), "{err}");
        assert!(
            !err.is_retryable(),
            "a certificate that does not verify is final: {err}"
        );
    }
}

/// `hostssl … cert`: the client certificate (PKCS#8, PKCS#1 and SEC1 keys) on both connections.
#[tokio::test]
async fn client_certificates_authenticate_on_both_connections() {
    let c = Cluster::shared();
    let ca = c.ca_cert();
    for kind in ["rsa", "pkcs1", "ec"] {
        let (cert, key) = c.client_cert(kind);
        for mode in [
            format!("sslmode=verify-full&sslrootcert={}", ca.display()),
            "sslmode=require".to_owned(),
        ] {
            let u = url(
                c,
                "certuser",
                None,
                "localhost",
                &format!("{mode}&sslcert={}&sslkey={}", cert.display(), key.display()),
            );
            both_connect(&u).await;
            assert_eq!(control(&u).await.unwrap(), "certuser");
        }
    }
    // Without the certificate the server refuses; an unreadable key is named.
    let u = url(
        c,
        "certuser",
        None,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    both_refused(&u, false, "28000").await;
    let (cert, _) = c.client_cert("rsa");
    let u = url(
        c,
        "certuser",
        None,
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            ca.display(),
            cert.display(),
            cert.display()
        ),
    );
    both_refused(&u, false, "no usable private key").await;
}

// ---- fake servers ----

/// A fake PostgreSQL server on 127.0.0.1: it answers `N` to the SSLRequest, reads the startup
/// message, asks for a password with `request` (an Authentication message's body) and records
/// every byte the client sends after that, until the client closes the connection.
struct FakeServer {
    port: u16,
    sessions: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl FakeServer {
    fn start(request: &'static [u8]) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let done = sessions.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                let done = done.clone();
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(WAIT)).unwrap();
                    let mut len = [0u8; 4];
                    s.read_exact(&mut len).unwrap();
                    let mut rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                    s.read_exact(&mut rest).unwrap();
                    if rest == [0x04, 0xd2, 0x16, 0x2f] {
                        // SSLRequest: no TLS here. Then the startup message.
                        s.write_all(b"N").unwrap();
                        s.read_exact(&mut len).unwrap();
                        rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                        s.read_exact(&mut rest).unwrap();
                    }
                    let mut auth = vec![b'R'];
                    auth.extend_from_slice(&(4 + request.len() as u32).to_be_bytes());
                    auth.extend_from_slice(request);
                    s.write_all(&auth).unwrap();
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                        // A password message: fail the login, as a server would.
                        if got.first() == Some(&b'p') {
                            let body = b"SFATAL\0C28P01\0Mauthentication failed\0\0";
                            let mut e = vec![b'E'];
                            e.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
                            e.extend_from_slice(body);
                            let _ = s.write_all(&e);
                            break;
                        }
                    }
                    done.lock().unwrap().push(got);
                });
            }
        });
        FakeServer { port, sessions }
    }

    /// Waits until `n` sessions have ended; what the clients sent in each.
    #[track_caller]
    fn sessions(&self, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.sessions.lock().unwrap().clone();
            if s.len() >= n {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} sessions of {n} ended",
                s.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self, params: &str) -> String {
        format!(
            "postgres://pwuser:{}@127.0.0.1:{}/postgres?{params}",
            enc(CLEARTEXT_PASSWORD),
            self.port
        )
    }
}

/// Whether the client's bytes hold a PasswordMessage, or the password anywhere.
fn sent_password(bytes: &[u8]) -> bool {
    bytes.first() == Some(&b'p')
        || bytes
            .windows(CLEARTEXT_PASSWORD.len())
            .any(|w| w == CLEARTEXT_PASSWORD.as_bytes())
}

const CLEARTEXT_REQUEST: &[u8] = &[0, 0, 0, 3];
const MD5_REQUEST: &[u8] = &[0, 0, 0, 5, b's', b'a', b'l', b't'];

/// Regression: a fake server that answered `N` and asked for a cleartext password got it.
#[tokio::test]
async fn a_fake_server_asking_for_a_cleartext_or_md5_password_gets_nothing() {
    for (request, kind) in [
        (CLEARTEXT_REQUEST, "a cleartext password"),
        (MD5_REQUEST, "an MD5"),
    ] {
        let fake = FakeServer::start(request);
        // The default sslmode (prefer) and an explicit one.
        for params in ["", "sslmode=disable"] {
            let u = fake.url(params);
            both_refused(&u, false, kind).await;
        }
        for session in fake.sessions(4) {
            assert!(
                !sent_password(&session),
                "{kind}: the client sent {session:?}"
            );
        }
        // With postgres.allow_insecure_password = true, it is sent (and the login fails).
        let u = fake.url("");
        for err in [
            identify_with(&u, true)
                .await
                .expect_err("the fake server refuses"),
            control_with(&u, true)
                .await
                .expect_err("the fake server refuses"),
        ] {
            assert!(err.to_string().contains("28P01"), "{err}");
        }
        let sessions = fake.sessions(6);
        for session in &sessions[4..] {
            assert_eq!(session.first(), Some(&b'p'), "{kind}: a password message");
            if request == CLEARTEXT_REQUEST {
                assert!(sent_password(session));
            } else {
                assert!(session.windows(3).any(|w| w == b"md5"), "{session:?}");
            }
        }
    }
}

/// `pglive check` connects the control connection: it refuses too, and says how to fix it.
#[test]
fn check_refuses_to_send_a_password_to_a_fake_server_and_says_why() {
    let fake = FakeServer::start(CLEARTEXT_REQUEST);
    let config = format!(
        "[postgres]\nurl = \"{}\"\n[[tables]]\nname = \"t\"\n[[sinks]]\ntype = \"stdout\"\n",
        fake.url("")
    );
    let (code, out, err) = crate::support::pglive(&["check"], &config);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("FAIL  cannot connect")
            && out.contains("pglive did not send it")
            && out.contains("sslmode=verify-full"),
        "{out}"
    );
    // The certificate is not verified: a warning of its own.
    assert!(
        out.contains(
            "warn  postgres.url: the server's certificate is not verified (sslmode=prefer"
        ),
        "{out}"
    );
    assert!(!out.contains(CLEARTEXT_PASSWORD) && !err.contains(CLEARTEXT_PASSWORD));
    assert!(!sent_password(&fake.sessions(1)[0]));
}

// ---- warnings ----

/// A secret file or a configuration file with a password inline, readable by others, and an
/// unverified server: `check` lists warnings, `run` logs them at start.
#[test]
fn check_and_run_warn_about_readable_secrets_and_unverified_servers() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::new("secwarn");
    db.sql("CREATE TABLE t (id int PRIMARY KEY);");
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "unused-by-trust\n").unwrap();
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The harness URL (trust), with a password inline that trust ignores.
    let inline = db.url().replace("postgres@", "postgres:inline-pw@");
    let config = db.config(&["name = \"t\""], "").replace(&db.url(), &inline);
    let file = dir.path().join("pglive.toml");
    std::fs::write(&file, &config).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&file)
        .env("PGLIVE_POSTGRES__PASSWORD_FILE", &password_file)
        .env_remove("PGLIVE_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        format!(
            "warn  configuration file {} holds secrets (postgres.url)",
            file.display()
        ),
        format!("chmod 600 {}", file.display()),
        format!(
            "warn  postgres.password_file: {} holds a secret",
            password_file.display()
        ),
        format!("chmod 600 {}", password_file.display()),
        "warn  postgres.url: the connection to PostgreSQL is not encrypted (sslmode=disable)"
            .to_owned(),
    ] {
        assert!(text.contains(&want), "{want:?} in:\n{text}");
    }
    assert!(!text.contains("inline-pw"), "{text}");

    let d = Daemon::spawn_with_env(
        &config,
        &["run"],
        &[(
            "PGLIVE_POSTGRES__PASSWORD_FILE",
            password_file.to_str().unwrap(),
        )],
    );
    d.wait_log("streaming");
    let log = d.stderr();
    for want in [
        "WARN",
        "postgres.password_file:",
        &format!("chmod 600 {}", password_file.display()),
        "the connection to PostgreSQL is not encrypted (sslmode=disable)",
    ] {
        assert!(log.contains(want), "{want:?} in:\n{log}");
    }
    assert!(!log.contains("inline-pw"), "{log}");
}

#[test]
fn streams_end_to_end_over_scram_plus_and_verified_tls() {
    let db = TestDb::new("tlsrun");
    db.sql("CREATE TABLE t (id int PRIMARY KEY); GRANT SELECT ON t TO scramuser;");
    let c = db.cluster;
    let secure = format!(
        "postgres://scramuser:{}@localhost:{}/{}?sslmode=verify-full&sslrootcert={}&channel_binding=require",
        enc(SCRAM_PASSWORD),
        c.port,
        db.name,
        c.ca_cert().display()
    );
    crate::support::setup(&db.config(&["name = \"t\""], ""));
    let config = db.config(&["name = \"t\""], "").replace(&db.url(), &secure);
    let d = Daemon::run(&config);
    d.wait_log("streaming");
    db.sql("INSERT INTO t VALUES (7)");
    let events = d.wait_events("an event over TLS", |e| !e.is_empty());
    assert_eq!(events[0]["payload"]["ids"][0], 7);
    assert!(
        !d.stderr().contains(SCRAM_PASSWORD),
        "password never logged"
    );
}
