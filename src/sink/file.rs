//! The file sink: appends one JSON event per line to a file (an audit trail, or a named pipe
//! into another program). A batch is acknowledged once its lines are written and, for a
//! regular file with `fsync = true`, on disk. A failed write (a full disk, a pipe whose reader
//! left) is retried: the file is opened again and the unacknowledged lines appended again; a
//! file pglive may not open or write stops the daemon.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt;

use super::{Batch, Delivery, Sink, SinkError, delivered};

pub const NAME: &str = "file";

pub struct FileSink {
    path: PathBuf,
    fsync: bool,
    /// Opened at the first batch: opening a named pipe waits for its reader.
    file: Option<OpenFile>,
    buf: Vec<u8>,
}

struct OpenFile {
    file: File,
    /// Sync each batch to disk (a regular file with `fsync = true`).
    sync: bool,
    /// For a regular file, its length: where a failed batch's partial lines are cut off.
    len: Option<u64>,
}

impl FileSink {
    pub fn new(path: PathBuf, fsync: bool) -> FileSink {
        FileSink {
            path,
            fsync,
            file: None,
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    async fn open(&self) -> Result<OpenFile, SinkError> {
        let existed = tokio::fs::try_exists(&self.path).await.unwrap_or(true);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(|e| self.error("open", e))?;
        // Pipes and devices cannot be synced; only regular files are.
        let regular = file
            .metadata()
            .await
            .map_err(|e| self.error("inspect", e))?
            .is_file();
        let sync = regular && self.fsync;
        if sync && !existed {
            // A new file's directory entry must reach the disk too, or its acknowledged
            // events could vanish with it after a power cut.
            let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty());
            let dir = dir.unwrap_or(std::path::Path::new("."));
            let synced = async { File::open(dir).await?.sync_all().await }.await;
            synced.map_err(|e| self.error("sync the directory of", e))?;
        }
        let len = match regular {
            true => Some(
                file.metadata()
                    .await
                    .map_err(|e| self.error("inspect", e))?
                    .len(),
            ),
            false => None,
        };
        Ok(OpenFile { file, sync, len })
    }

    fn error(&self, what: &str, e: std::io::Error) -> SinkError {
        let message = format!("cannot {what} {}: {e}", self.path.display());
        match e.kind() {
            // The path or its permissions are wrong: the operator must fix them.
            ErrorKind::PermissionDenied
            | ErrorKind::NotFound
            | ErrorKind::IsADirectory
            | ErrorKind::NotADirectory
            | ErrorKind::ReadOnlyFilesystem
            | ErrorKind::InvalidInput => SinkError::fatal(NAME, message),
            _ => SinkError::retryable(NAME, message),
        }
    }
}

impl Sink for FileSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn connect(&mut self) -> Result<(), SinkError> {
        // After a failure: open the file again at the next batch.
        self.file = None;
        Ok(())
    }

    async fn send(&mut self, batch: Arc<Batch>) -> Result<Delivery, SinkError> {
        let mut out = match self.file.take() {
            Some(out) => out,
            None => self.open().await?,
        };
        batch.write_lines(&mut self.buf);
        let result = async {
            out.file.write_all(&self.buf).await?;
            out.file.flush().await?;
            if out.sync {
                out.file.sync_data().await?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                out.len = out.len.map(|l| l + self.buf.len() as u64);
                self.file = Some(out);
                Ok(delivered())
            }
            Err(e) => {
                // The batch is sent again: cut off what of it was written (a regular file),
                // so that no half line stays behind. The file is opened again then.
                if let Some(len) = out.len
                    && out.file.metadata().await.is_ok_and(|m| m.len() > len)
                {
                    let _ = out.file.set_len(len).await;
                }
                Err(self.error("write to", e))
            }
        }
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        let flushed = match self.file.as_mut() {
            Some(out) => out.file.flush().await,
            None => Ok(()),
        };
        flushed.map_err(|e| self.error("flush", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn meets_the_sink_contract_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "earlier\n").unwrap();
        let read = async |_| {
            std::fs::read(&path)
                .unwrap()
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty() && *l != b"earlier")
                .map(<[u8]>::to_vec)
                .collect()
        };
        crate::sink::contract::check(FileSink::new(path.clone(), true), read).await;
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .starts_with("earlier\n"),
            "appends"
        );
    }

    #[tokio::test]
    async fn an_unwritable_path_is_an_error_naming_it() {
        let mut sink = FileSink::new("/nonexistent-dir/events.jsonl".into(), true);
        let batch = Batch {
            seq: 1,
            events: Vec::new(),
        };
        let Err(err) = sink.send(Arc::new(batch)).await else {
            panic!("the batch was taken")
        };
        assert!(!err.retryable, "a missing directory needs the operator");
        assert!(
            err.to_string().contains("/nonexistent-dir/events.jsonl"),
            "{err}"
        );
    }
}
