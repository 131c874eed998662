//! # coordinator
//!
//! The coordinator validates and plans DAGs. Today it offers the offline commands
//! (`validate`, `plan`); the REST API, the scheduler and `migrate` are added on top of the same
//! library by the distributed-execution work.
//!
//! - [`cli`]: argument parsing and the offline commands, written against `Write` handles so that
//!   tests run exactly what the binary runs.

pub mod cli;
