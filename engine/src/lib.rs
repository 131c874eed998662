//! # engine: the pure core of GreenLang Orchestrator
//!
//! Everything in this crate is deterministic and free of I/O: no clock, no network, no disk, no
//! randomness that is not derived from its inputs. Its manifest proves it: no async runtime, no
//! driver, no telemetry (`tests/purity.rs` fails if one appears). The `runtime` crate holds the
//! queue port, the RabbitMQ adapter, telemetry and liveness; the coordinator and the worker wire
//! these pieces to PostgreSQL, RabbitMQ and Redis; tests exercise them directly.
//!
//! - [`dag`]: the DAG document format ([`dag::DagSpec`]), its compilation into a valid
//!   [`dag::Dag`] (validation that collects every error), planning (levels and the canonical
//!   order), YAML and Mermaid rendering.
//! - [`condition`]: the typed expression language of node `condition`s and the paths used by
//!   `input_mapping`.
//! - [`retry`]: retry decisions and delay math with jitter seeded by (execution, node, attempt).
//! - [`provenance`]: node and execution content hashes, the timing record chain, verification.
//! - [`canonical`]: RFC 8785 canonical JSON and the SHA-256 content hashes built on it.
//! - [`admission`]: which waiting executions start now (the cluster's and each DAG's limit).
//! - [`state`]: the execution state machine (outcomes in, state changes and effects out).
//! - [`step`]: one step of an execution planned from its inputs: what to write and publish.
//! - [`messages`]: the versioned wire envelopes between coordinators and workers.
//! - [`config`]: typed, validated settings from defaults, a file and the environment.
//! - [`ids`]: validated identifiers.
//! - [`topology`]: the names of exchanges and queues, and the sources of deliveries.

pub mod admission;
pub mod bounds;
pub mod canonical;
pub mod condition;
pub mod config;
pub mod dag;
pub mod ids;
pub mod messages;
pub mod provenance;
pub mod retry;
pub mod signing;
pub mod state;
pub mod step;
pub mod topology;
