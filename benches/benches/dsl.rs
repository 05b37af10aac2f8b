//! Parse + validate of a generated 50-step workflow (budget: < 1 ms).
//!
//! `cargo bench -p reactor-benches --bench dsl -- --warm-up-time 1 --measurement-time 5`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use reactor_benches::{generated_workflow, parser};

fn parse_and_validate(c: &mut Criterion) {
    let text = generated_workflow(50);
    let parser = parser();
    let workflow = parser
        .parse("generated.yaml", &text)
        .unwrap_or_else(|problems| {
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            panic!("generated workflow is invalid:\n{}", lines.join("\n"))
        });
    println!(
        "generated workflow: {} bytes, {} lines, {} top-level steps",
        text.len(),
        text.lines().count(),
        workflow.steps.len()
    );
    let mut group = c.benchmark_group("dsl");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("parse_validate_50_steps", |b| {
        b.iter(|| parser.parse("generated.yaml", std::hint::black_box(&text)))
    });
    group.finish();
}

criterion_group!(benches, parse_and_validate);
criterion_main!(benches);
