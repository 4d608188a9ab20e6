//! The stdout sink: one JSON event per line on standard output (logs go to standard error).
//! A batch is acknowledged once its lines are written and flushed. A failed write stops the
//! daemon: standard output does not come back (a closed pipe, a full disk under a shell
//! redirection is the caller's to fix).

use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt, Stdout};

use super::{Batch, Delivery, Sink, SinkError, delivered};

pub const NAME: &str = "stdout";

/// Writes to standard output, or (in tests) to any writer.
pub struct StdoutSink<W = Stdout> {
    out: W,
    buf: Vec<u8>,
}

impl StdoutSink {
    pub fn new() -> StdoutSink {
        StdoutSink::with_writer(tokio::io::stdout())
    }
}

impl<W> StdoutSink<W> {
    pub fn with_writer(out: W) -> StdoutSink<W> {
        StdoutSink {
            out,
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    fn error(e: std::io::Error) -> SinkError {
        SinkError::fatal(NAME, format!("cannot write events to standard output: {e}"))
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::new()
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Sink for StdoutSink<W> {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn send(&mut self, batch: Arc<Batch>) -> Result<Delivery, SinkError> {
        batch.write_lines(&mut self.buf);
        self.out.write_all(&self.buf).await.map_err(Self::error)?;
        self.out.flush().await.map_err(Self::error)?;
        Ok(delivered())
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        self.out.flush().await.map_err(Self::error)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn meets_the_sink_contract() {
        let (writer, mut reader) = tokio::io::duplex(1 << 20);
        let sink = StdoutSink::with_writer(writer);
        let read = async |_| {
            // The driver dropped the sink, and with it the writer: this reads to the end.
            let mut all = Vec::new();
            reader.read_to_end(&mut all).await.unwrap();
            all.split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect()
        };
        crate::sink::contract::check(sink, read).await;
    }
}
