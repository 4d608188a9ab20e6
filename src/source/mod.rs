//! The source: PostgreSQL logical replication. `conninfo` and `tls` describe how to connect,
//! `transport` reaches the server (socket, TLS, the password rule), `conn` speaks the
//! replication protocol, `catalog` does the SQL-side work over an ordinary
//! connection, and `stream` is one session's replication stream: messages in, status updates
//! out.

pub mod catalog;
pub mod conn;
pub mod conninfo;
pub mod error;
pub mod row_filter;
pub mod sql;
pub mod stream;
pub mod tls;
pub mod transport;

pub use error::SourceError;
