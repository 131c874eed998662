//! # shared: the pure core of GreenLang Orchestrator
//!
//! Everything in this crate except [`amqp`] is deterministic and free of I/O: no clock, no
//! network, no disk, no randomness that is not derived from its inputs. The coordinator and the
//! worker wire these pieces to PostgreSQL, RabbitMQ and Redis; tests exercise them directly.
//!
//! - [`amqp`]: the RabbitMQ adapter shared by coordinators and workers (the one module with I/O).
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
//! - [`messages`]: the versioned wire envelopes between coordinators and workers.
//! - [`config`]: typed, validated settings from defaults, a file and the environment.
//! - [`ids`]: validated identifiers.

pub mod admission;
pub mod amqp;
pub mod canonical;
pub mod condition;
pub mod config;
pub mod dag;
pub mod ids;
pub mod liveness;
pub mod messages;
pub mod provenance;
pub mod queue;
pub mod retry;
pub mod state;
pub mod telemetry;
