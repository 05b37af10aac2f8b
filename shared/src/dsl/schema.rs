//! The JSON Schema (draft 2020-12) of the workflow language, generated from the same field
//! tables the decoder checks keys against, plus the built-in actions' `with:` settings. The
//! schema is for editors and the designer: it is looser than the decoder (durations,
//! expressions and cross-field rules are checked only by the decoder).

use serde_json::{Map, json};

use crate::Value;
use crate::action::builtin_specs;

use super::fields::{STEP_KINDS, TABLES, TRIGGERS, Table, Ty};

const DURATION_PATTERN: &str = r"^(([0-9]+(ms|s|m|h|d))+|.*\$\{\{.*)$";

fn ty_schema(ty: &Ty) -> Value {
    match ty {
        Ty::Str => json!({"type": "string"}),
        Ty::Int { min, max } => {
            let mut s = json!({"type": "integer", "minimum": min});
            if *max < u32::MAX as i64 {
                s["maximum"] = json!(max);
            }
            s
        }
        Ty::Num => json!({"type": "number"}),
        Ty::Bool => json!({"type": "boolean"}),
        Ty::Duration => json!({"type": "string", "pattern": DURATION_PATTERN}),
        Ty::Cond => json!({"type": ["string", "boolean"]}),
        Ty::Any => json!({}),
        Ty::Enum(values) => json!({"enum": values}),
        Ty::Map(inner) => json!({"type": "object", "additionalProperties": ty_schema(inner)}),
        Ty::List(inner) => json!({"type": "array", "items": ty_schema(inner)}),
        Ty::Obj(name) => json!({"$ref": format!("#/$defs/{name}")}),
        Ty::Steps => json!({"$ref": "#/$defs/steps"}),
        Ty::OneOf(forms) => json!({"anyOf": forms.iter().map(ty_schema).collect::<Vec<_>>()}),
    }
}

fn table_schema(table: &Table) -> Value {
    let mut properties = Map::new();
    for field in table.fields {
        let mut schema = ty_schema(&field.ty);
        if let Value::Object(map) = &mut schema {
            map.insert("description".into(), json!(field.description));
        }
        properties.insert(field.name.into(), schema);
    }
    let required: Vec<&str> = table
        .fields
        .iter()
        .filter(|f| f.required)
        .map(|f| f.name)
        .collect();
    // A plugin trigger passes its other keys through to the plugin.
    let open = table.name == "plugin_trigger";
    let mut schema = json!({
        "type": "object",
        "description": table.description,
        "properties": properties,
        "additionalProperties": open,
    });
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

/// The schema of one workflow file.
pub fn json_schema() -> Value {
    let mut defs = Map::new();
    for table in TABLES {
        defs.insert(table.name.into(), table_schema(table));
    }
    defs.insert(
        "steps".into(),
        json!({"type": "array", "items": {"$ref": "#/$defs/step"}}),
    );
    // A trigger item: exactly one key, the type; `cron` also takes a bare schedule string.
    let triggers: Vec<Value> = TRIGGERS
        .iter()
        .map(|(kind, table, _)| {
            let settings = match *kind {
                "cron" => json!({"anyOf": [
                    {"type": "string"},
                    {"$ref": format!("#/$defs/{}", table.name)}
                ]}),
                "startup" => json!({"anyOf": [
                    {"type": "null"},
                    {"$ref": format!("#/$defs/{}", table.name)}
                ]}),
                _ => json!({"$ref": format!("#/$defs/{}", table.name)}),
            };
            json!({
                "type": "object",
                "properties": { *kind: settings },
                "required": [kind],
                "additionalProperties": false,
            })
        })
        .collect();
    defs.insert(
        "trigger".into(),
        json!({"description": "One trigger: a map with exactly one key, the trigger type.", "oneOf": triggers}),
    );
    // A step has exactly one kind key; `with:` of a built-in action lists its settings.
    let step = defs.get_mut("step").expect("the step table is in TABLES");
    step["oneOf"] = json!(
        STEP_KINDS
            .iter()
            .map(|k| json!({"required": [k]}))
            .collect::<Vec<_>>()
    );
    step["properties"]["with"] = json!({
        "description": "the action's settings: a map (values may hold expressions) or one expression",
        "anyOf": [{"type": "object"}, {"type": "string", "pattern": r"^\s*\$\{\{"}]
    });
    let actions: Vec<Value> = builtin_specs()
        .iter()
        .map(|spec| {
            let mut properties = Map::new();
            for setting in spec.settings {
                let mut s = if setting.json_type.is_empty() {
                    json!({})
                } else {
                    // Any setting may be an expression instead.
                    json!({"anyOf": [{"type": setting.json_type}, {"type": "string", "pattern": r"\$\{\{"}]})
                };
                s["description"] = json!(setting.description);
                properties.insert(setting.name.into(), s);
            }
            let required: Vec<&str> = spec
                .settings
                .iter()
                .filter(|s| s.required)
                .map(|s| s.name)
                .collect();
            json!({
                "if": {"properties": {"action": {"const": spec.kind}}, "required": ["action"]},
                "then": {"properties": {"with": {"anyOf": [
                    {"type": "object", "properties": properties, "required": required, "additionalProperties": false},
                    {"type": "string"}
                ]}}}
            })
        })
        .collect();
    step["allOf"] = json!(actions);

    let mut root = defs
        .get("workflow")
        .cloned()
        .expect("the workflow table is in TABLES");
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["$id"] = json!("https://reactor.dev/schema/workflow-1.json");
    root["title"] = json!("Reactor workflow, language version 1");
    root["$defs"] = Value::Object(defs);
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small structural checker for the keywords the generated schema uses.
    fn check(schema: &Value, value: &Value, root: &Value, path: &str, errors: &mut Vec<String>) {
        let Some(schema) = schema.as_object() else {
            return;
        };
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let name = r.trim_start_matches("#/$defs/");
            check(&root["$defs"][name], value, root, path, errors);
        }
        if let Some(ty) = schema.get("type") {
            let types: Vec<&str> = match ty {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let ok = types.iter().any(|t| match *t {
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                "object" => value.is_object(),
                "array" => value.is_array(),
                "null" => value.is_null(),
                _ => false,
            });
            if !ok {
                errors.push(format!("{path}: expected {types:?}"));
                return;
            }
        }
        if let Some(expected) = schema.get("const")
            && expected != value
        {
            errors.push(format!("{path}: expected {expected}"));
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array)
            && !values.contains(value)
        {
            errors.push(format!("{path}: not in enum"));
        }
        if let Some(forms) = schema.get("anyOf").and_then(Value::as_array) {
            let any = forms.iter().any(|f| {
                let mut e = Vec::new();
                check(f, value, root, path, &mut e);
                e.is_empty()
            });
            if !any {
                errors.push(format!("{path}: matches no form"));
            }
        }
        if let Some(forms) = schema.get("oneOf").and_then(Value::as_array) {
            let count = forms
                .iter()
                .filter(|f| {
                    let mut e = Vec::new();
                    check(f, value, root, path, &mut e);
                    e.is_empty()
                })
                .count();
            if count != 1 {
                errors.push(format!("{path}: matches {count} of oneOf"));
            }
        }
        for part in schema
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let mut e = Vec::new();
            check(&part["if"], value, root, path, &mut e);
            if e.is_empty() {
                check(&part["then"], value, root, path, errors);
            }
        }
        if let Some(object) = value.as_object() {
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !object.contains_key(name.as_str().unwrap_or_default()) {
                    errors.push(format!("{path}: missing {name}"));
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            for (key, item) in object {
                match properties.and_then(|p| p.get(key)) {
                    Some(s) => check(s, item, root, &format!("{path}/{key}"), errors),
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) if schema.contains_key("properties") => {
                            errors.push(format!("{path}: unknown {key}"))
                        }
                        Some(s @ Value::Object(_)) => {
                            check(s, item, root, &format!("{path}/{key}"), errors)
                        }
                        _ => {}
                    },
                }
            }
        }
        if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
            for (i, item) in array.iter().enumerate() {
                check(items, item, root, &format!("{path}/{i}"), errors);
            }
        }
    }

    fn errors(value: &Value) -> Vec<String> {
        let schema = json_schema();
        let mut errors = Vec::new();
        check(&schema, value, &schema, "", &mut errors);
        errors
    }

    #[test]
    fn every_table_field_is_in_the_schema() {
        let schema = json_schema();
        for table in TABLES {
            let def = &schema["$defs"][table.name];
            assert!(def.is_object(), "{} missing", table.name);
            for field in table.fields {
                assert!(
                    def["properties"][field.name].is_object(),
                    "{}.{} missing",
                    table.name,
                    field.name
                );
            }
        }
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(schema["required"], json!(["reactor", "name", "steps"]));
    }

    #[test]
    fn valid_documents_pass_and_broken_ones_fail() {
        let example = crate::dsl::yaml::parse(
            include_str!("testdata/overheat-alert.yaml"),
            Default::default(),
        )
        .unwrap()
        .to_value();
        assert_eq!(errors(&example), Vec::<String>::new());
        let small = json!({
            "reactor": 1, "name": "tick",
            "triggers": [{"cron": "0 * * * * *"}, {"interval": {"every": "10s"}}],
            "steps": [
                {"id": "a", "action": "log", "with": {"message": "hi"}},
                {"foreach": "${{ event.data }}", "as": "x", "steps": [{"sleep": "1s"}]},
                {"loop": {"while": true, "max": 3}, "steps": []}
            ]
        });
        assert_eq!(errors(&small), Vec::<String>::new());
        let broken = json!({
            "reactor": 1, "name": "x",
            "triggers": [{"http": {"path": "/a"}, "cron": "x"}],
            "steps": [{"action": "log", "set": {}}, {"retyr": {}}, {"action": "http", "with": {}}]
        });
        let found = errors(&broken);
        assert!(
            found.iter().any(|e| e.starts_with("/triggers/0")),
            "{found:?}"
        );
        assert!(found.iter().any(|e| e.starts_with("/steps/0")), "{found:?}");
        assert!(
            found.iter().any(|e| e == "/steps/1: unknown retyr"),
            "{found:?}"
        );
        assert!(found.iter().any(|e| e.starts_with("/steps/2")), "{found:?}");
    }
}
