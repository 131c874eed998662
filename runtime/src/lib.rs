//! # runtime: the plumbing beside the pure core
//!
//! What coordinators and workers share that does I/O or keeps time, kept out of `engine` so that
//! the core's manifest carries no async runtime, driver or telemetry:
//!
//! - [`queue`]: the message-queue port (`Connector`, `Queue`, deliveries and their settling) and
//!   `reconnecting`, the reconnect loop with back-off.
//! - [`amqp`]: its RabbitMQ adapter (lapin), every call bounded.
//! - [`telemetry`]: logging, OpenTelemetry export, the shutdown signal, the `healthcheck` probe.
//! - [`liveness`]: each long-running loop's last beat, and which are stalled.

pub mod amqp;
pub mod liveness;
pub mod queue;
pub mod telemetry;
