//! The stdout sink: one JSON event per line on standard output (logs go to standard error).
//! A batch is acknowledged once its lines are written and flushed.

use tokio::io::{AsyncWriteExt, Stdout};

use super::{Batch, Sink, SinkError};

pub struct StdoutSink {
    out: Stdout,
    buf: Vec<u8>,
}

impl StdoutSink {
    pub fn new() -> StdoutSink {
        StdoutSink {
            out: tokio::io::stdout(),
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    fn error(e: std::io::Error) -> SinkError {
        SinkError {
            sink: "stdout",
            message: format!("cannot write events to standard output: {e}"),
        }
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &'static str {
        "stdout"
    }

    async fn send(&mut self, batch: &Batch) -> Result<(), SinkError> {
        batch.write_lines(&mut self.buf);
        self.out.write_all(&self.buf).await.map_err(Self::error)?;
        self.out.flush().await.map_err(Self::error)
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        self.out.flush().await.map_err(Self::error)
    }
}
