//! Validate and plan a random 100,000-node, 200,000-edge DAG (target: under 100 ms), hash its
//! definition, and parse-then-compile it from JSON.
//!
//! Run with `cargo bench -p engine --bench plan`; figures go to BENCHMARKS.md.

use criterion::{Criterion, criterion_group, criterion_main};
use engine::dag::{Limits, compile, synth};
use std::hint::black_box;

fn validate_and_plan(c: &mut Criterion) {
    let limits = Limits { max_nodes: 1_000_000 };
    let mut spec = synth::random(100_000, 200_000, 42);
    spec.dag_id = Some("bench".to_owned());
    let mut group = c.benchmark_group("compile");
    group.sample_size(20);
    group.bench_function("random_100k_nodes_200k_edges", |b| {
        b.iter_batched(|| spec.clone(), |s| black_box(compile(s, &limits)), criterion::BatchSize::LargeInput)
    });
    group.bench_function("dag_hash_100k", |b| {
        b.iter_batched(
            || compile(spec.clone(), &limits).ok(),
            |dag| black_box(dag.map(|d| d.hash().clone())),
            criterion::BatchSize::LargeInput,
        )
    });
    let json = serde_json::to_string(&synth::to_json(&spec)).unwrap_or_default();
    group.bench_function("parse_json_then_compile_100k", |b| {
        b.iter(|| {
            let parsed = engine::dag::DagSpec::from_json(black_box(&json));
            black_box(parsed.map(|s| compile(s, &limits).is_ok()))
        })
    });
    group.finish();
}

criterion_group!(benches, validate_and_plan);
criterion_main!(benches);
