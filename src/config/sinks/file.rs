//! `type = "file"`: events appended to a file, one JSON object a line.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::SinkConfig;
use crate::config::issues::Issues;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawFile {
    path: PathBuf,
    fsync: Option<bool>,
}

impl RawFile {
    /// The sink of `sinks[index]`; a directory that does not exist is reported.
    pub(super) fn resolve(self, issues: &mut Issues, index: usize) -> SinkConfig {
        let RawFile { path, fsync } = self;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if path.as_os_str().is_empty() {
            issues.push(format!("sinks[{index}].path"), "must not be empty");
        } else if let Some(dir) = dir.filter(|d| !d.is_dir()) {
            issues.push(
                format!("sinks[{index}].path"),
                format!("directory {} does not exist", dir.display()),
            );
        }
        SinkConfig::File {
            path,
            fsync: fsync.unwrap_or(true),
        }
    }
}
