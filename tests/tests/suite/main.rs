//! The integration suite of GreenLang Orchestrator in one test binary, one module per area, so
//! the crates are linked once instead of once per area. Every test isolates itself (a fresh
//! database, queue prefix and Redis prefix; servers of its own where it stops one), so the areas
//! run side by side. The drills that restart or pause the PostgreSQL and RabbitMQ every other
//! test uses stay in binaries of their own (`fault_*.rs` beside this folder): `cargo test` runs
//! binaries one after another, so nothing else runs while one of them does.
//!
//! One area: `cargo test -p tests --test suite faults::` (a module path is a test-name filter).

mod api;
mod auth;
mod bad_input;
mod bounds;
mod code_shape;
mod crate_graph;
mod deadlines;
mod deploy;
mod durability;
mod embedded;
mod execution;
mod faults;
mod glctl_cli;
mod health;
mod leases;
mod limits;
mod loadtest_smoke;
mod metrics;
mod module_cycles;
mod offline_cli;
mod queue_contract;
mod redis;
mod runbook;
mod signing;
mod store_contract;
mod tracing;
