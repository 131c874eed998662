//! # coordinator
//!
//! The coordinator validates and plans DAGs, stores them, and drives executions: it leases
//! executions, runs their state machines, dispatches ready nodes through an outbox to RabbitMQ,
//! and records every result with its checkpoint and provenance, all in PostgreSQL. Any number of
//! replicas may run; any of them can serve any request.
//!
//! - [`app`]: startup wiring; [`app::Coordinator::start`] is what `serve` and the tests run.
//! - [`http`]: the REST adapter (router, one file per resource); [`problem`]: its problem+json
//!   errors. It parses, calls a use case of [`service`] or the store, and renders.
//! - [`service`]: use cases with typed input and outcomes, no HTTP in them (DAG catalog, submit, cancel, checkpoints, resume).
//! - [`endpoints`]: the table of operations (scopes, answers); [`auth`] and `http::openapi` read it.
//! - [`store`]: the store port (four role traits under `Store`); [`store::postgres`]
//!   (production) and [`store::sqlite`] (embedded) hold every SQL statement.
//! - [`scheduler`]: leases and the per-execution driver around `engine::step::advance`.
//! - [`locks`]: the execution-lock trait and its in-process twin; [`redis`]: the Redis adapter
//!   (locks and the DAG cache).
//! - [`relay`]: the outbox relay (confirmed publishing).
//! - [`inbox`]: the result consumer.
//! - [`metrics`]: the Prometheus metrics. [`spans`]: the execution's trace spans.

pub mod app;
pub mod auth;
pub mod endpoints;
pub mod health;
pub mod http;
pub mod inbox;
pub mod locks;
pub mod metrics;
pub mod problem;
pub mod redis;
pub mod relay;
pub mod scheduler;
pub mod serve;
pub mod service;
pub mod spans;
pub mod store;
