//! Integration tests against a real PostgreSQL (started by the harness) and the real binary.

mod support;

mod amqp;
mod auth;
mod cli;
mod deploy;
mod durability;
mod events;
mod layout;
mod mqtt;
mod nats;
mod ops;
mod presets;
mod redis;
mod relay;
mod rows;
mod slot;
mod tenants;
mod webhook;
mod websocket;
