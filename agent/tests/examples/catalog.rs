//! Every example validates, is named after its file and matches `reactor-agent schema`.

use serde_json::{Value, json};

use crate::support::{BIN, example_files, workflows_dir};

#[test]
fn there_are_at_least_twelve_examples() {
    assert!(example_files().len() >= 12, "{:?}", example_files());
}

#[test]
fn every_example_validates_with_the_real_binary() {
    let output = std::process::Command::new(BIN)
        .arg("validate")
        .arg(workflows_dir())
        .output()
        .expect("runs");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(output.stdout.is_empty());
    for file in example_files() {
        let output = std::process::Command::new(BIN)
            .arg("validate")
            .arg(&file)
            .output()
            .expect("runs");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

#[test]
fn every_example_is_named_after_its_file() {
    for file in example_files() {
        let text = std::fs::read_to_string(&file).expect("readable");
        let stem = file.file_stem().and_then(|s| s.to_str()).expect("a name");
        assert!(
            text.lines().any(|l| l == format!("name: {stem}")),
            "{} is not named {stem}",
            file.display()
        );
        assert!(
            text.starts_with('#'),
            "{} opens with a comment saying what it shows",
            file.display()
        );
    }
}

#[test]
fn the_schema_is_valid_and_every_example_matches_it() {
    let output = std::process::Command::new(BIN)
        .arg("schema")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(0));
    let schema: Value = serde_json::from_slice(&output.stdout).expect("schema is JSON");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    if let Err(error) = jsonschema::draft202012::meta::validate(&schema) {
        panic!("the schema is not a valid draft 2020-12 schema: {error}");
    }
    let validator = jsonschema::draft202012::new(&schema).expect("the schema compiles");
    for file in example_files() {
        let text = std::fs::read_to_string(&file).expect("readable");
        let document = reactor_core::dsl::yaml::parse(&text, Default::default())
            .expect("YAML")
            .to_value();
        let errors: Vec<String> = validator
            .iter_errors(&document)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{}:\n{}",
            file.display(),
            errors.join("\n")
        );
    }
    // And the schema is not vacuous: a broken document fails it.
    let broken = json!({"reactor": 1, "name": "x", "steps": [{"action": "log", "retyr": {}}]});
    assert!(!validator.is_valid(&broken));
}
