//! The deployment files (`deploy/`): the systemd units (the source's, and the relay nodes'
//! template) pass `systemd-analyze verify` with the built binary and keep their hardening,
//! every Kubernetes manifest (the source's and the relay nodes') passes strict schema
//! validation, broken copies of them do not, the ConfigMaps hold configurations pglive
//! accepts, and relay nodes run from the relay ConfigMap's file (on the loopback broker) become
//! ready and stop within the pod's grace period. `scripts/validate-deploy.sh` does the
//! checking and installs its tools if missing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pglive::config::SinkConfig;
use pglive::sink::websocket::Auth;

use crate::support::broker::Vhost;
use crate::support::cluster::free_port;
use crate::support::{Daemon, http_get, wait_until};

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

/// A temporary copy of the manifests in `src` (its files, not its subdirectories) with
/// `file`'s `from` replaced by `to`.
fn broken_manifests(src: &str, file: &str, from: &str, to: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(Path::new(ROOT).join(src)).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let broken = dir.path().join(file);
    let text = std::fs::read_to_string(&broken).unwrap();
    assert!(text.contains(from), "{src}/{file} has {from:?}");
    std::fs::write(&broken, text.replacen(from, to, 1)).unwrap();
    dir
}

#[test]
fn the_systemd_units_verify_and_stay_hardened() {
    let (ok, out) = validate("systemd", &[]);
    assert!(ok, "{out}");
    for unit in ["pglive.service", "pglive-relay@.service"] {
        assert!(
            out.contains(&format!("verify: deploy/systemd/{unit} OK")),
            "{out}"
        );
    }
    // The template is checked as an instance, as systemctl starts it.
    for unit in ["pglive.service", "pglive-relay@a.service"] {
        assert!(out.contains(&format!("{unit}: overall exposure")), "{out}");
    }
}

/// A mistake in the unit `name` (written to a temporary file of that name and given to the
/// script as `var`) fails verification, and so does the unit with some hardening dropped.
fn a_mistake_in_a_unit_fails_verification(name: &str, var: &str) {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join(name);
    let text = read(&format!("deploy/systemd/{name}"));
    std::fs::write(
        &unit,
        text.replacen("NotifyAccess=main", "NotifyAcess=main", 1),
    )
    .unwrap();
    let (ok, out) = validate("systemd", &[(var, &unit)]);
    assert!(!ok, "a misspelled key must fail: {out}");
    assert!(out.contains("NotifyAcess"), "{out}");

    // Dropping hardening raises the exposure over the limit.
    let weaker: String = text
        .lines()
        .filter(|l| !l.starts_with("SystemCallFilter=") && !l.starts_with("PrivateUsers="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&unit, weaker).unwrap();
    let (ok, out) = validate("systemd", &[(var, &unit)]);
    assert!(!ok, "a weaker unit must fail: {out}");
    assert!(out.contains("is above"), "{out}");
}

#[test]
fn a_mistake_in_the_unit_fails_verification() {
    a_mistake_in_a_unit_fails_verification("pglive.service", "DEPLOY_UNIT");
}

#[test]
fn a_mistake_in_the_relay_unit_fails_verification() {
    a_mistake_in_a_unit_fails_verification("pglive-relay@.service", "DEPLOY_RELAY_UNIT");
}

#[test]
fn the_kubernetes_manifests_pass_strict_validation() {
    let (ok, out) = validate("kubernetes", &[]);
    assert!(ok, "{out}");
    for dir in ["deploy/kubernetes", "deploy/kubernetes/relay"] {
        assert!(out.contains(&format!("manifests in {dir} OK")), "{out}");
        assert!(
            out.contains(&format!("{dir}/kustomization.yaml OK")),
            "{out}"
        );
    }
}

#[test]
fn a_broken_relay_manifest_fails_validation() {
    for (file, from, to, named) in [
        // A misspelled field (only strict validation catches it).
        ("deployment.yaml", "maxSurge:", "maxSurg:", "maxSurg"),
        // A value of the wrong type.
        (
            "hpa.yaml",
            "averageUtilization: 70",
            "averageUtilization: \"70%\"",
            "'70%' is not of type",
        ),
        // An API version Kubernetes does not have (the validator only warns).
        (
            "hpa.yaml",
            "apiVersion: autoscaling/v2",
            "apiVersion: autoscaling/v3",
            "autoscaling/v3",
        ),
        // A manifest kustomization.yaml does not apply.
        (
            "kustomization.yaml",
            "  - hpa.yaml\n",
            "",
            "hpa.yaml is not listed",
        ),
    ] {
        let dir = broken_manifests("deploy/kubernetes/relay", file, from, to);
        let (ok, out) = validate("kubernetes", &[("DEPLOY_K8S_RELAY", dir.path())]);
        assert!(!ok, "{to:?} in {file} must fail: {out}");
        assert!(out.contains(named), "{to:?} in {file}: {out}");
    }
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
        let dir = broken_manifests("deploy/kubernetes", "deployment.yaml", from, to);
        let (ok, out) = validate("kubernetes", &[("DEPLOY_K8S", dir.path())]);
        assert!(!ok, "{to:?} must fail: {out}");
        assert!(out.contains(named), "{to:?}: {out}");
    }
}

/// The file `key` as embedded in the ConfigMap `manifest`, with the secrets mounted at `mount`
/// read from `secrets` instead.
fn configmap_toml(manifest: &str, key: &str, mount: &str, secrets: &Path) -> String {
    let yaml = read(manifest);
    let indent_of = |l: &str| l.len() - l.trim_start().len();
    let start = yaml
        .lines()
        .position(|l| l.trim() == format!("{key}: |"))
        .unwrap_or_else(|| panic!("{manifest} has {key}"));
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
    toml.replace(mount, secrets.to_str().unwrap())
}

/// The source's `pglive.toml`, with its secrets read from `secrets`.
fn source_toml(secrets: &Path) -> String {
    configmap_toml(
        "deploy/kubernetes/configmap.yaml",
        "pglive.toml",
        "/run/secrets/pglive",
        secrets,
    )
}

/// The relay nodes' `relay.toml`, with their secrets read from `secrets`.
fn relay_toml(secrets: &Path) -> String {
    configmap_toml(
        "deploy/kubernetes/relay/configmap.yaml",
        "relay.toml",
        "/run/secrets/pglive-relay",
        secrets,
    )
}

/// The lines of `toml` that are `[[tables]]` entries (comments and blank lines left out).
fn tables_of(toml: &str) -> Vec<&str> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == "[[tables]]";
        }
        if inside && !line.is_empty() && !line.starts_with('#') {
            out.push(line);
        }
    }
    out
}

/// Writes the secret file `name` into `dir`, readable by its owner only (as pglive wants).
fn write_secret(dir: &Path, name: &str, value: &str) {
    let path = dir.join(name);
    std::fs::write(&path, value).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The first number after `key: ` in `text`.
fn number_after(text: &str, key: &str) -> u64 {
    let at = text.find(&format!("{key}: ")).expect(key) + key.len() + 2;
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect(key)
}

#[test]
fn the_configmap_holds_a_valid_configuration() {
    let secrets = tempfile::tempdir().unwrap();
    for (name, value) in [
        ("postgres-password", "pw"),
        ("amqp-password", "pw"),
        ("amqp-ca.crt", "a certificate"),
    ] {
        write_secret(secrets.path(), name, value);
    }
    let config =
        pglive::config::from_toml(&source_toml(secrets.path())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.ops.listen, Some("0.0.0.0:9187".parse().unwrap()));
    // The source only publishes into the stream, over TLS verified against the broker's CA.
    let [SinkConfig::Amqp(amqp)] = config.sinks.as_slice() else {
        panic!("one amqp sink: {:?}", config.sinks);
    };
    assert_eq!(amqp.ca_file, Some(secrets.path().join("amqp-ca.crt")));
    let stream = amqp.stream.as_ref().expect("the amqp sink feeds a stream");
    assert_eq!(stream.name, "pglive.live");
    // The server's certificate is verified, against the CA mounted from the Secret.
    let conn = &config.postgres.conn;
    assert_eq!(conn.sslmode, pglive::source::conninfo::SslMode::VerifyFull);
    assert_eq!(conn.sslrootcert, Some(secrets.path().join("ca.crt")));
    assert!(!conn.allow_insecure_password);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let secret = read("deploy/kubernetes/secret.example.yaml");
    for key in [
        "postgres-password",
        "ca.crt",
        "amqp-password",
        "amqp-ca.crt",
    ] {
        assert!(
            secret.contains(&format!("\n  {key}: ")),
            "{key} in {secret}"
        );
    }

    // Nothing connects to the source but Prometheus: browsers go to the relay nodes.
    for file in [
        "deploy/kubernetes/deployment.yaml",
        "deploy/kubernetes/service.yaml",
    ] {
        assert!(!read(file).contains("8080"), "{file} has no WebSocket port");
    }

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

#[test]
fn the_relay_nodes_serve_what_the_source_publishes() {
    let secrets = Path::new("/run/secrets/unused");
    let (source, relay) = (source_toml(secrets), relay_toml(secrets));
    let stream = "stream = \"pglive.live\"";
    assert!(source.contains(stream), "{source}");
    assert!(relay.contains(stream), "{relay}");
    // Clients may subscribe to exactly the channels the source publishes.
    assert!(!tables_of(&source).is_empty(), "{source}");
    assert_eq!(tables_of(&source), tables_of(&relay));
}

#[test]
fn the_relay_configmap_holds_a_valid_relay_configuration() {
    let secrets = tempfile::tempdir().unwrap();
    for (name, value) in [
        ("amqp-password", "pw"),
        ("amqp-ca.crt", "a certificate"),
        ("jwt-secret", "0123456789abcdef0123456789abcdef"),
    ] {
        write_secret(secrets.path(), name, value);
    }
    let config = pglive::config::relay_from_toml(&relay_toml(secrets.path()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    // The stream the source fills, over TLS verified against the broker's CA.
    assert_eq!(config.stream.stream, "pglive.live");
    assert!(config.stream.url.to_string().starts_with("amqps://"));
    assert_eq!(
        config.stream.ca_file,
        Some(secrets.path().join("amqp-ca.crt"))
    );
    // Clients present a token; the ports are the Deployment's.
    let ws = &config.websocket;
    assert!(matches!(ws.auth, Auth::Jwt { .. }), "{:?}", ws.auth);
    assert_eq!(ws.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(config.ops.listen, Some("0.0.0.0:9187".parse().unwrap()));
    let deployment = read("deploy/kubernetes/relay/deployment.yaml");
    for port in ["containerPort: 8080", "containerPort: 9187"] {
        assert!(deployment.contains(port), "{port}");
    }

    // A starting node reads history_age of the stream, which must still hold that much.
    write_secret(secrets.path(), "postgres-password", "pw");
    let source =
        pglive::config::from_toml(&source_toml(secrets.path())).unwrap_or_else(|e| panic!("{e}"));
    let [SinkConfig::Amqp(amqp)] = source.sinks.as_slice() else {
        panic!("one amqp sink: {:?}", source.sinks);
    };
    let kept = amqp.stream.as_ref().expect("a stream").max_age;
    assert!(ws.history_age < kept, "{:?} < {kept:?}", ws.history_age);

    // The pod's grace period covers its preStop pause and the node's shutdown.
    let grace = Duration::from_secs(number_after(&deployment, "terminationGracePeriodSeconds"));
    let pre_stop = deployment.find("preStop:").expect("a preStop pause");
    let pause = Duration::from_secs(number_after(&deployment[pre_stop..], "seconds"));
    assert!(pause + config.ops.shutdown_timeout < grace, "{grace:?}");

    // The example Secret's placeholder is too short a key: the node refuses to start with it.
    write_secret(secrets.path(), "jwt-secret", "change-me");
    let err = pglive::config::relay_from_toml(&relay_toml(secrets.path())).unwrap_err();
    assert!(err.to_string().contains("jwt_secret_file"), "{err}");
    let secret = read("deploy/kubernetes/relay/secret.example.yaml");
    assert!(secret.contains("jwt-secret: change-me"), "{secret}");

    // The Deployment runs the file the ConfigMap is mounted as; the unit, its instance's file.
    assert!(deployment.contains("\"/etc/pglive-relay/relay.toml\""));
    assert!(deployment.contains("mountPath: /etc/pglive-relay\n"));
    let unit = read("deploy/systemd/pglive-relay@.service");
    assert!(unit.contains("relay --config /etc/pglive/relay-%i.toml\n"));
}

/// The relay ConfigMap's file for a node on the loopback: the broker at `url` (no TLS, its
/// password in the URL) and the ports `ws` and `ops`; the rest as deployed.
fn loopback_relay_toml(secrets: &Path, url: &str, ws: u16, ops: u16) -> String {
    relay_toml(secrets)
        .lines()
        .filter(|l| !l.starts_with("password_file") && !l.starts_with("ca_file"))
        .map(|l| {
            let l = if l.starts_with("url = ") {
                format!("url = \"{url}\"")
            } else {
                l.replace("0.0.0.0:8080", &format!("127.0.0.1:{ws}"))
                    .replace("0.0.0.0:9187", &format!("127.0.0.1:{ops}"))
            };
            format!("{l}\n")
        })
        .collect()
}

#[test]
fn relay_nodes_from_the_configmap_become_ready_and_stop_within_the_grace_period() {
    let mq = Vhost::new("deploy_relay");
    let mut stream = lapin::types::FieldTable::default();
    stream.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("stream".into()),
    );
    mq.queue_with("pglive", "pglive.live", "#", stream);
    let secrets = tempfile::tempdir().unwrap();
    write_secret(
        secrets.path(),
        "jwt-secret",
        "0123456789abcdef0123456789abcdef",
    );
    // As many nodes as the autoscaler keeps at least, on one host.
    let hpa = read("deploy/kubernetes/relay/hpa.yaml");
    let mut nodes: Vec<(Daemon, u16)> = (0..number_after(&hpa, "minReplicas"))
        .map(|_| {
            let (ws, ops) = (free_port(), free_port());
            let config = loopback_relay_toml(secrets.path(), &mq.url(), ws, ops);
            (Daemon::spawn(&config, &["relay"]), ops)
        })
        .collect();
    assert_eq!(nodes.len(), 3);
    for (node, ops) in &nodes {
        wait_until(&format!("node {} ready", node.pid()), || {
            http_get(*ops, "/readyz").is_some_and(|(code, _)| code == 200)
        });
    }

    // SIGTERM (after the preStop pause): the node closes its clients and exits 0 before the
    // grace period is over.
    let deployment = read("deploy/kubernetes/relay/deployment.yaml");
    let grace = number_after(&deployment, "terminationGracePeriodSeconds");
    let pre_stop = deployment.find("preStop:").expect("a preStop pause");
    let pause = number_after(&deployment[pre_stop..], "seconds");
    let (mut node, _) = nodes.pop().unwrap();
    node.signal("TERM");
    let status = node.wait_exit(Duration::from_secs(grace - pause));
    assert!(status.success(), "{status:?}\n{}", node.stderr());
}
