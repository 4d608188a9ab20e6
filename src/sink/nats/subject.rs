//! Subjects: where a channel's events are published. `resources/posts` with the prefix
//! `pglive` becomes `pglive.resources.posts`: each `/`-separated segment of the channel is one
//! token of the subject, after the prefix's tokens.
//!
//! A token may not be empty, and may not hold whitespace, `*`, `>` or NUL (they would make the
//! subject a wildcard or split it). A `.` inside a channel segment becomes `_` (it would add a
//! token: `resources/app.posts` → `pglive.resources.app_posts`); other characters are kept as
//! they are. A channel that still cannot become a subject is a configuration error.

use std::collections::HashMap;

/// The default first token(s) of every subject.
pub const DEFAULT_PREFIX: &str = "pglive";

/// Why `token` (a prefix token, or a channel segment) cannot be part of a subject.
fn token_problem(token: &str) -> Option<&'static str> {
    if token.is_empty() {
        return Some("an empty token (two `/` or `.` in a row, or one at an end)");
    }
    token.chars().find_map(|c| match c {
        '*' | '>' => Some("a wildcard character (`*` or `>`)"),
        '\0' => Some("a NUL character"),
        c if c.is_whitespace() => Some("whitespace"),
        _ => None,
    })
}

/// Checks a subject prefix such as `pglive` or `app.live`.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.starts_with('$') {
        return Err(format!(
            "{prefix:?} starts with `$`, which NATS reserves for its own subjects"
        ));
    }
    match prefix.split('.').find_map(token_problem) {
        Some(why) => Err(format!("{prefix:?} has {why}")),
        None => Ok(()),
    }
}

/// The subject for `channel` under `prefix` (checked already).
pub fn subject(prefix: &str, channel: &str) -> Result<String, String> {
    let mut out = String::with_capacity(prefix.len() + channel.len() + 1);
    out.push_str(prefix);
    for segment in channel.split('/') {
        if let Some(why) = token_problem(segment) {
            return Err(format!(
                "channel {channel:?} cannot become a NATS subject: it has {why}"
            ));
        }
        out.push('.');
        out.extend(segment.chars().map(|c| if c == '.' { '_' } else { c }));
    }
    Ok(out)
}

/// The subjects of the configured channels, made once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
    by_channel: HashMap<String, async_nats::Subject>,
}

impl Subjects {
    /// The subjects of `channels` under `prefix`; the first problem found.
    pub fn new<'a>(
        prefix: &str,
        channels: impl IntoIterator<Item = &'a str>,
    ) -> Result<Subjects, String> {
        check_prefix(prefix)?;
        let mut by_channel = HashMap::new();
        for channel in channels {
            let s = subject(prefix, channel)?;
            by_channel.insert(channel.to_owned(), s.into());
        }
        Ok(Subjects {
            prefix: prefix.to_owned(),
            by_channel,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The wildcard that takes every subject: `<prefix>.>`.
    pub fn wildcard(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// Every configured subject, sorted.
    pub fn all(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.by_channel.values().map(|s| s.as_str()).collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The subject of `channel`.
    pub fn get(&self, channel: &str) -> Result<async_nats::Subject, String> {
        match self.by_channel.get(channel) {
            Some(s) => Ok(s.clone()),
            None => subject(&self.prefix, channel).map(Into::into),
        }
    }
}
