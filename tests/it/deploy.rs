//! The deployment files (`deploy/`): the systemd unit passes `systemd-analyze verify` with
//! the built binary and keeps its hardening, every Kubernetes manifest passes strict schema
//! validation, broken copies of them do not, and the ConfigMap holds a configuration pglive
//! accepts. `scripts/validate-deploy.sh` does the checking and installs its tools if missing.

use std::path::Path;
use std::process::Command;

use pglive::config::SinkConfig;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs `scripts/validate-deploy.sh WHAT` with `envs`; its success and its output.
fn validate(what: &str, envs: &[(&str, &Path)]) -> (bool, String) {
    let mut c = Command::new(Path::new(ROOT).join("scripts/validate-deploy.sh"));
    c.arg(what).env("PGLIVE_BIN", crate::support::BIN);
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap()
}

/// A temporary copy of `deploy/kubernetes` with `deployment.yaml`'s `from` replaced by `to`.
fn broken_manifests(from: &str, to: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(ROOT).join("deploy/kubernetes");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let deployment = dir.path().join("deployment.yaml");
    let text = std::fs::read_to_string(&deployment).unwrap();
    assert!(text.contains(from), "deployment.yaml has {from:?}");
    std::fs::write(&deployment, text.replacen(from, to, 1)).unwrap();
    dir
}

#[test]
fn the_systemd_unit_verifies_and_stays_hardened() {
    let (ok, out) = validate("systemd", &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("verify: deploy/systemd/pglive.service OK"),
        "{out}"
    );
    assert!(out.contains("overall exposure"), "{out}");
}

#[test]
fn a_mistake_in_the_unit_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("pglive.service");
    let text = read("deploy/systemd/pglive.service");
    std::fs::write(
        &unit,
        text.replacen("NotifyAccess=main", "NotifyAcess=main", 1),
    )
    .unwrap();
    let (ok, out) = validate("systemd", &[("DEPLOY_UNIT", &unit)]);
    assert!(!ok, "a misspelled key must fail: {out}");
    assert!(out.contains("NotifyAcess"), "{out}");

    // Dropping hardening raises the exposure over the limit.
    let weaker: String = text
        .lines()
        .filter(|l| !l.starts_with("SystemCallFilter=") && !l.starts_with("PrivateUsers="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&unit, weaker).unwrap();
    let (ok, out) = validate("systemd", &[("DEPLOY_UNIT", &unit)]);
    assert!(!ok, "a weaker unit must fail: {out}");
    assert!(out.contains("is above"), "{out}");
}

#[test]
fn the_kubernetes_manifests_pass_strict_validation() {
    let (ok, out) = validate("kubernetes", &[]);
    assert!(ok, "{out}");
    assert!(out.contains("manifests OK"), "{out}");
}

#[test]
fn a_broken_deployment_fails_validation() {
    for (from, to, named) in [
        // A misspelled field (only strict validation catches it).
        (
            "terminationGracePeriodSeconds:",
            "terminationGracePeriodSecond:",
            "terminationGracePeriodSecond",
        ),
        // A value of the wrong type.
        ("replicas: 2", "replicas: \"two\"", "'two' is not of type"),
        // An API version Kubernetes does not have (the validator only warns).
        ("apiVersion: apps/v1", "apiVersion: apps/v2", "apps/v2"),
    ] {
        let dir = broken_manifests(from, to);
        let (ok, out) = validate("kubernetes", &[("DEPLOY_K8S", dir.path())]);
        assert!(!ok, "{to:?} must fail: {out}");
        assert!(out.contains(named), "{to:?}: {out}");
    }
}

/// `pglive.toml` as embedded in the ConfigMap, with its secrets read from `secrets`.
fn configmap_toml(secrets: &Path) -> String {
    let yaml = read("deploy/kubernetes/configmap.yaml");
    let indent_of = |l: &str| l.len() - l.trim_start().len();
    let start = yaml
        .lines()
        .position(|l| l.trim() == "pglive.toml: |")
        .expect("configmap.yaml has pglive.toml");
    let key_indent = indent_of(yaml.lines().nth(start).unwrap());
    let body: Vec<&str> = yaml
        .lines()
        .skip(start + 1)
        .take_while(|l| l.trim().is_empty() || indent_of(l) > key_indent)
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| indent_of(l))
        .min()
        .unwrap();
    let toml: String = body
        .iter()
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect();
    toml.replace("/run/secrets/pglive", secrets.to_str().unwrap())
}

#[test]
fn the_configmap_holds_a_valid_configuration() {
    let secrets = tempfile::tempdir().unwrap();
    let write = |name: &str, value: &str| {
        std::fs::write(secrets.path().join(name), value).unwrap();
    };
    write("postgres-password", "pw");
    write("jwt-secret", "0123456789abcdef0123456789abcdef");
    let config = pglive::config::from_toml(&configmap_toml(secrets.path()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.ops.listen, Some("0.0.0.0:9187".parse().unwrap()));
    let relay = config.sinks.iter().find_map(|s| match s {
        SinkConfig::WebSocket(ws) => Some(ws),
        _ => None,
    });
    assert_eq!(
        relay.expect("a websocket sink").listen,
        "0.0.0.0:8080".parse().unwrap()
    );
    // The server's certificate is verified, against the CA mounted from the Secret.
    let conn = &config.postgres.conn;
    assert_eq!(conn.sslmode, pglive::source::conninfo::SslMode::VerifyFull);
    assert_eq!(conn.sslrootcert, Some(secrets.path().join("ca.crt")));
    assert!(!conn.allow_insecure_password);
    assert!(
        !config.warnings.iter().any(|w| w.key == "postgres.url"),
        "{:?}",
        config.warnings
    );
    assert!(read("deploy/kubernetes/secret.example.yaml").contains("\n  ca.crt: |"));

    // The example Secret's placeholder is too short a key: pglive refuses to start with it.
    write("jwt-secret", "change-me");
    let err = pglive::config::from_toml(&configmap_toml(secrets.path())).unwrap_err();
    assert!(err.to_string().contains("jwt_secret_file"), "{err}");
    assert!(read("deploy/kubernetes/secret.example.yaml").contains("jwt-secret: change-me"));

    // The image, the Deployment and the unit all run the file the ConfigMap is mounted as.
    let path = "/etc/pglive/pglive.toml";
    for file in [
        "Dockerfile",
        "deploy/kubernetes/deployment.yaml",
        "deploy/systemd/pglive.service",
    ] {
        assert!(read(file).contains(path), "{file} runs {path}");
    }
    assert!(read("deploy/kubernetes/deployment.yaml").contains("mountPath: /etc/pglive\n"));
}
