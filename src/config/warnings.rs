//! Warnings: what does not stop pglive but weakens it. A replication connection a man in the
//! middle could read, and secrets that other users of the machine may read.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::value::Value;

use super::issues::Issue;
use crate::source::conninfo::ConnInfo;

/// A warning when a man in the middle could read or alter the replication connection: TCP
/// without a verified server certificate.
pub(super) fn connection_warnings(conn: &ConnInfo) -> Vec<Issue> {
    use crate::source::conninfo::{Host, SslMode};
    if matches!(conn.host, Host::Unix(_)) {
        return Vec::new();
    }
    let mode = crate::source::tls::effective_mode(conn);
    let what = match mode {
        SslMode::VerifyCa | SslMode::VerifyFull => return Vec::new(),
        SslMode::Disable => "the connection to PostgreSQL is not encrypted (sslmode=disable)",
        SslMode::Prefer => {
            "the server's certificate is not verified (sslmode=prefer, and a server without TLS \
             gets a connection that is not even encrypted)"
        }
        SslMode::Require => {
            "the server's certificate is not verified (sslmode=require without a root certificate)"
        }
    };
    let mut message = format!(
        "{what}: a man in the middle could read and alter the changes pglive receives; verify \
         the server with sslmode=verify-full&sslrootcert=<the CA's certificate file>"
    );
    if conn.allow_insecure_password {
        message.push_str(
            "; and postgres.allow_insecure_password = true lets a cleartext or MD5 password go \
             over it",
        );
    }
    vec![Issue {
        key: "postgres.url".into(),
        message,
    }]
}

/// Warnings for secrets that other users may read: a secret file (`password_file`,
/// Warnings for secrets that other users may read: a secret file (`password_file`,
/// `jwt_secret_file`, `sslkey`), or a configuration file holding an inline password or
/// `jwt_secret`, with permissions for group or others. A file that does not exist is not
/// warned about (reading it is an error of its own).
pub(super) fn secret_warnings(
    figment: &Figment,
    conn: &ConnInfo,
    url_has_password: bool,
    password_file: Option<&Path>,
) -> Vec<Issue> {
    // Secret files, and values holding secrets inline, each with its key.
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let mut inline: Vec<(String, Value)> = Vec::new();
    if let Some(path) = password_file {
        files.push(("postgres.password_file".into(), path.to_path_buf()));
    }
    if let Some(key) = &conn.sslkey {
        files.push(("postgres.url".into(), key.clone()));
    }
    if url_has_password && let Ok(v) = figment.find_value("postgres.url") {
        inline.push(("postgres.url".into(), v));
    }
    sink_secrets(figment, &mut files, &mut inline);
    let mut out: Vec<Issue> = files
        .iter()
        .filter_map(|(key, path)| exposed_file(key, path))
        .collect();
    out.extend(exposed_config_files(figment, inline));
    out
}

/// The secrets of the `[[sinks]]` entries, as written: files (`password_file`,
/// `jwt_secret_file`) and inline values (a URL with a password, `jwt_secret`).
fn sink_secrets(
    figment: &Figment,
    files: &mut Vec<(String, PathBuf)>,
    inline: &mut Vec<(String, Value)>,
) {
    let Ok(Value::Array(_, sinks)) = figment.find_value("sinks") else {
        return;
    };
    for (i, sink) in sinks.iter().enumerate() {
        let Value::Dict(_, d) = sink else { continue };
        let key = |k: &str| format!("sinks[{i}].{k}");
        for k in ["password_file", "jwt_secret_file"] {
            if let Some(path) = d.get(k).and_then(Value::as_str) {
                files.push((key(k), PathBuf::from(path)));
            }
        }
        if let Some(v @ Value::String(_, url)) = d.get("url")
            && url::Url::parse(url).is_ok_and(|u| u.password().is_some())
        {
            inline.push((key("url"), v.clone()));
        }
        if let Some(v @ Value::String(..)) = d.get("jwt_secret") {
            inline.push((key("jwt_secret"), v.clone()));
        }
    }
}

/// A warning when the secret file `path` (set at `key`) is readable by others.
fn exposed_file(key: &str, path: &Path) -> Option<Issue> {
    let mode = exposed_mode(path)?;
    Some(Issue {
        key: key.to_owned(),
        message: format!(
            "{} holds a secret and is readable by group or others (mode {mode:04o}); \
             restrict it: chmod 600 {}",
            path.display(),
            shell_quote(path)
        ),
    })
}

/// A warning for each configuration file that holds some of the `inline` secrets and is
/// readable by others, naming the keys it holds.
fn exposed_config_files(figment: &Figment, inline: Vec<(String, Value)>) -> Vec<Issue> {
    let mut by_file: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for (key, value) in inline {
        let Some(path) = figment
            .get_metadata(value.tag())
            .and_then(|m| m.source.as_ref())
            .and_then(|s| s.file_path())
        else {
            continue;
        };
        match by_file.iter_mut().find(|(p, _)| p == path) {
            Some((_, keys)) => keys.push(key),
            None => by_file.push((path.to_path_buf(), vec![key])),
        }
    }
    by_file
        .into_iter()
        .filter_map(|(path, keys)| {
            let mode = exposed_mode(&path)?;
            Some(Issue {
                key: String::new(),
                message: format!(
                    "configuration file {} holds secrets ({}) and is readable by group or \
                     others (mode {mode:04o}); restrict it: chmod 600 {}, or move the secrets \
                     to files of their own (password_file, jwt_secret_file)",
                    path.display(),
                    keys.join(", "),
                    shell_quote(&path)
                ),
            })
        })
        .collect()
}

/// The permission bits of `path` when they let others than its owner read it, by libpq's rule
/// for key files: no access for group or others, except that a file owned by root may be
/// group-readable (a Kubernetes secret volume with `fsGroup` and mode 0440). `None` for a
/// file that is private enough, or that cannot be examined.
fn exposed_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode() & 0o7777;
    let forbidden = if meta.uid() == 0 { 0o037 } else { 0o077 };
    (mode & forbidden != 0).then_some(mode & 0o777)
}

/// `path` as a shell word.
fn shell_quote(path: &Path) -> String {
    let text = path.display().to_string();
    if text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@".contains(&b))
    {
        text
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}
