//! Expression parse and evaluation costs: a typical `if:` condition and an interpolated
//! template, evaluated against an event-shaped scope.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use reactor_core::Map;
use reactor_core::expr::{Expr, Template};
use serde_json::{Value, json};

const CONDITION: &str = r#"event.data.temp > 30 && event.data.zone == "A""#;
const TEMPLATE: &str =
    "Sensor ${{ event.data.device }} in zone ${{ event.data.zone }} at ${{ event.data.temp }}°C";

fn scope() -> Map {
    let Value::Object(map) = json!({
        "event": {
            "id": "01HZY3", "type": "sensor.reading", "source": "mqtt://sensors/roof/temp",
            "time": "2024-05-01T12:00:00Z",
            "data": {"device": "roof-1", "temp": 31.5, "zone": "A", "battery": 87,
                     "tags": ["roof", "north"], "maintenance": false},
            "meta": {"topic": "sensors/roof/temp", "qos": 1}
        },
        "vars": {"alerts": 2},
        "inputs": {"threshold": 30}
    }) else {
        unreachable!()
    };
    map
}

fn bench(c: &mut Criterion) {
    let scope = scope();
    c.bench_function("expr/parse_condition", |b| {
        b.iter(|| Expr::parse(black_box(CONDITION)).unwrap())
    });
    let condition = Expr::parse(CONDITION).unwrap();
    c.bench_function("expr/eval_bool_condition", |b| {
        b.iter(|| condition.eval_bool(black_box(&scope)).unwrap())
    });
    // The same condition written directly in Rust: the floor under eval_bool_condition.
    c.bench_function("expr/native_condition", |b| {
        b.iter(|| {
            let scope = black_box(&scope);
            let data = &scope["event"]["data"];
            data["temp"].as_f64().is_some_and(|t| t > 30.0) && data["zone"] == "A"
        })
    });
    c.bench_function("expr/parse_template", |b| {
        b.iter(|| Template::parse_str(black_box(TEMPLATE)).unwrap())
    });
    let template = Template::parse_str(TEMPLATE).unwrap();
    c.bench_function("expr/eval_template", |b| {
        b.iter(|| template.eval(black_box(&scope)).unwrap())
    });
    let macro_expr = Expr::parse("event.data.tags.exists(t, t.startsWith('no'))").unwrap();
    c.bench_function("expr/eval_exists_macro", |b| {
        b.iter(|| macro_expr.eval_bool(black_box(&scope)).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
