//! Integration tests against a real PostgreSQL (started by the harness) and the real binary.

mod support;

mod amqp;
mod auth;
mod cli;
mod deploy;
mod durability;
mod events;
mod layout;
mod nats;
mod ops;
mod slot;
mod webhook;
mod websocket;
