//! The replication connection's security: each sslmode, and trust, md5 and SCRAM-SHA-256
//! (with and without channel binding), against the harness cluster's TLS certificate.

use pglive::source::SourceError;
use pglive::source::conn::ReplicationConnection;
use pglive::source::conninfo::ConnInfo;
use std::time::Duration;

use crate::support::cluster::{CLEARTEXT_PASSWORD, MD5_PASSWORD, SCRAM_PASSWORD};
use crate::support::{Cluster, Daemon, TestDb};

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

/// Connects for replication and runs IDENTIFY_SYSTEM.
async fn identify(url: &str) -> Result<String, SourceError> {
    let info = ConnInfo::parse(url).expect("valid URL");
    let mut conn = ReplicationConnection::connect(&info, Duration::from_secs(10), 1 << 20).await?;
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await?;
    Ok(rows[0][3].clone().unwrap_or_default())
}

fn url(c: &Cluster, user: &str, password: Option<&str>, host: &str, params: &str) -> String {
    let auth = match password {
        Some(p) => format!("{user}:{}", enc(p)),
        None => user.to_owned(),
    };
    format!("postgres://{auth}@{host}:{}/postgres?{params}", c.port)
}

#[tokio::test]
async fn trust_password_md5_and_scram_over_plain_and_tls() {
    let c = Cluster::shared();
    let ca = c.ca_cert();
    let ca = ca.display();
    let ok = [
        url(c, "postgres", None, "127.0.0.1", "sslmode=disable"),
        url(c, "postgres", None, "127.0.0.1", "sslmode=require"),
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
            "scramuser",
            Some(SCRAM_PASSWORD),
            "127.0.0.1",
            "sslmode=disable",
        ),
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
        let db = identify(&u).await.unwrap_or_else(|e| panic!("{u}: {e}"));
        assert_eq!(db, "postgres", "{u}");
    }
}

#[tokio::test]
async fn authentication_and_verification_failures_are_clear_and_final() {
    let c = Cluster::shared();
    let other = c.other_ca_cert();
    let cases = [
        (
            url(c, "md5user", Some("wrong"), "127.0.0.1", "sslmode=disable"),
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
            "URL has none",
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
                "127.0.0.1",
                "sslmode=require&channel_binding=require",
            ),
            "channel_binding=require",
        ),
    ];
    for (u, want) in cases {
        let result = match ConnInfo::parse(&u) {
            Err(e) => {
                assert!(e.to_string().contains(want), "{u}: {e}");
                continue;
            }
            Ok(_) => identify(&u).await,
        };
        let err = result.expect_err(&u);
        assert!(err.to_string().contains(want), "{u}: {err}");
        assert!(!err.is_retryable(), "{u}: {err} should not be retried");
        assert!(!err.to_string().contains("wrong"), "no password in {err}");
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
    assert!(matches!(err, SourceError::Tls(_)), "{err}");
    let u = url(
        c,
        "postgres",
        None,
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={}", c.ca_cert().display()),
    );
    identify(&u).await.unwrap_or_else(|e| panic!("{u}: {e}"));
    // A certificate from an unknown CA is refused.
    let u = url(
        c,
        "postgres",
        None,
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", other.display()),
    );
    let err = identify(&u).await.expect_err("unknown CA must fail");
    assert!(matches!(err, SourceError::Tls(_)), "{err}");
    assert!(
        !err.is_retryable(),
        "a certificate that does not verify is final: {err}"
    );
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
