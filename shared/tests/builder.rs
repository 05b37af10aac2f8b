//! A workflow built with the Rust API and its YAML twin run identically.

use std::sync::Arc;

use reactor_core::action::builtin_registry;
use reactor_core::cli::exec_json;
use reactor_core::dsl::parse_workflow;
use reactor_core::engine::{Environment, Event, Fact, Runtime, RuntimeConfig, Submission};
use reactor_core::flow::Workflow;
use reactor_core::flow::builder::{StepBuilder, WorkflowBuilder};
use reactor_core::store::{MemoryStore, Store};
use serde_json::{Value, json};

const YAML: &str = r#"
reactor: 1
name: grading
inputs:
  pass_mark: { type: number, default: 50 }
vars: { passed: 0 }
steps:
  - id: grade
    foreach: ${{ event.data.scores }}
    as: score
    concurrency: 2
    steps:
      - id: verdict
        switch:
          - when: ${{ score >= inputs.pass_mark }}
            steps:
              - set: { passed: "${{ vars.passed + 1 }}" }
              - action: transform
                with: { value: "pass ${{ index }}" }
          - default:
              - action: transform
                with: { value: "fail ${{ index }}" }
  - id: summary
    if: ${{ vars.passed > 0 }}
    action: transform
    with: { value: { passed: "${{ vars.passed }}", of: "${{ size(event.data.scores) }}" } }
  - id: note
    action: log
    with: { message: "graded ${{ size(event.data.scores) }} scores" }
output:
  results: ${{ steps.grade.output }}
  summary: ${{ steps.summary.output }}
"#;

fn built() -> Workflow {
    WorkflowBuilder::new("grading")
        .input("pass_mark", json!({ "type": "number", "default": 50 }))
        .var("passed", json!(0))
        .step(
            StepBuilder::foreach(
                json!("${{ event.data.scores }}"),
                vec![
                    StepBuilder::kind(
                        "switch",
                        json!([
                            { "when": "${{ score >= inputs.pass_mark }}", "steps": [
                                { "set": { "passed": "${{ vars.passed + 1 }}" } },
                                { "action": "transform", "with": { "value": "pass ${{ index }}" } }
                            ] },
                            { "default": [ { "action": "transform", "with": { "value": "fail ${{ index }}" } } ] }
                        ]),
                    )
                    .id("verdict"),
                ],
            )
            .id("grade")
            .as_name("score")
            .concurrency(2),
        )
        .step(
            StepBuilder::action("transform")
                .id("summary")
                .when("${{ vars.passed > 0 }}")
                .with(json!({ "value": { "passed": "${{ vars.passed }}", "of": "${{ size(event.data.scores) }}" } })),
        )
        .step(
            StepBuilder::action("log")
                .id("note")
                .with(json!({ "message": "graded ${{ size(event.data.scores) }} scores" })),
        )
        .output(json!({ "results": "${{ steps.grade.output }}", "summary": "${{ steps.summary.output }}" }))
        .build()
        .unwrap_or_else(|d| panic!("{d:?}"))
}

async fn execute(workflow: Workflow, data: Value) -> (Value, Vec<String>) {
    let store = Arc::new(MemoryStore::new());
    let runtime = Runtime::new(
        store.clone(),
        builtin_registry(Default::default()),
        Environment::empty(),
        RuntimeConfig::default(),
    );
    runtime.load(workflow);
    let Submission::Accepted(id) = runtime
        .submit("grading", Event::new("manual", "test", data), json!({}))
        .await
        .unwrap()
    else {
        panic!("not accepted")
    };
    let record = runtime.wait(id).await.unwrap();
    let journal = store.journal(id).await.unwrap();
    let keys = journal
        .iter()
        .filter_map(|fact| match fact {
            Fact::EffectFinished { key, outcome, .. } => Some(format!("{key} {outcome:?}")),
            _ => None,
        })
        .collect();
    (exec_json(&record), keys)
}

#[tokio::test]
async fn builder_and_yaml_twin_run_identically() {
    let from_yaml = parse_workflow("grading.yaml", YAML).unwrap_or_else(|d| panic!("{d:?}"));
    for data in [
        json!({ "scores": [70, 20, 50] }),
        json!({ "scores": [1] }),
        json!({ "scores": [] }),
    ] {
        let (yaml_result, yaml_journal) = execute(from_yaml.clone(), data.clone()).await;
        let (built_result, built_journal) = execute(built(), data.clone()).await;
        assert_eq!(yaml_result, built_result, "for {data}");
        assert_eq!(yaml_journal, built_journal, "for {data}");
        // `transform` never leaves the machine; the `log` step is an effect both journals hold.
        assert_eq!(yaml_journal.len(), 1, "for {data}: {yaml_journal:?}");
        assert_eq!(yaml_result["status"], "succeeded");
    }
    let (result, _) = execute(built(), json!({ "scores": [70, 20, 50] })).await;
    assert_eq!(
        result["output"]["results"],
        json!(["pass 0", "fail 1", "pass 2"])
    );
    assert_eq!(result["output"]["summary"], json!({ "passed": 2, "of": 3 }));
}
