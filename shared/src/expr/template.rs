//! Strings and value trees holding `${{ }}` expressions.

use super::{EvalError, Expr, Reference, Scope, Template, TemplateError, TextPart};
use crate::{Map, Value};

const OPEN: &str = "${{";
const ESCAPED_OPEN: &str = "$${{";

fn starts_with(chars: &[char], at: usize, pattern: &str) -> bool {
    pattern
        .chars()
        .enumerate()
        .all(|(k, p)| chars.get(at + k) == Some(&p))
}

/// Where the `}}` closing an expression that starts at `start` is, skipping string literals
/// and balanced braces (`${{ {"a": {"b": 1}} }}`). `None` when it is never closed.
fn find_close(chars: &[char], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            quote @ ('"' | '\'') => {
                let raw = i > 0 && matches!(chars[i - 1], 'r' | 'R');
                i = skip_string(chars, i, quote, raw)?;
                continue;
            }
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            '}' if chars.get(i + 1) == Some(&'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Index just past the string literal whose opening quote is at `at`.
fn skip_string(chars: &[char], at: usize, quote: char, raw: bool) -> Option<usize> {
    let triple = chars.get(at + 1) == Some(&quote) && chars.get(at + 2) == Some(&quote);
    let mut i = at + if triple { 3 } else { 1 };
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && !raw {
            i += 2;
            continue;
        }
        if c == quote {
            if !triple {
                return Some(i + 1);
            }
            if chars.get(i + 1) == Some(&quote) && chars.get(i + 2) == Some(&quote) {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

pub(crate) fn parse_str(text: &str) -> Result<Template, TemplateError> {
    if !text.contains(OPEN) {
        return Ok(Template::Literal(Value::String(text.to_string())));
    }
    let chars: Vec<char> = text.chars().collect();
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut i = 0;
    while i < chars.len() {
        if starts_with(&chars, i, ESCAPED_OPEN) {
            // `$${{ … }}` is text: `${{` and everything up to its `}}`.
            literal.push_str(OPEN);
            i += ESCAPED_OPEN.chars().count();
            let end = find_close(&chars, i).map_or(chars.len(), |close| close + 2);
            literal.extend(&chars[i..end]);
            i = end;
            continue;
        }
        if !starts_with(&chars, i, OPEN) {
            literal.push(chars[i]);
            i += 1;
            continue;
        }
        let open = i;
        let inner_start = open + OPEN.len();
        let close = find_close(&chars, inner_start).ok_or_else(|| TemplateError {
            offset: open,
            message: "'${{' is not closed".into(),
            help: Some(
                "close the expression with '}}', or write '$${{' for a literal '${{'".into(),
            ),
        })?;
        let inner: String = chars[inner_start..close].iter().collect();
        let lead = inner.chars().take_while(|c| c.is_whitespace()).count();
        let source = inner.trim();
        if source.is_empty() {
            return Err(TemplateError {
                offset: open,
                message: "empty expression in '${{ }}'".into(),
                help: None,
            });
        }
        let mut expr = Expr::parse(source).map_err(|e| TemplateError {
            offset: inner_start + lead + e.offset,
            message: e.message,
            help: e.help,
        })?;
        expr.base = inner_start + lead;
        if !literal.is_empty() {
            parts.push(TextPart::Text(std::mem::take(&mut literal)));
        }
        parts.push(TextPart::Expr(expr));
        i = close + 2;
    }
    if !literal.is_empty() {
        parts.push(TextPart::Text(literal));
    }
    match parts.len() {
        0 => Ok(Template::Literal(Value::String(String::new()))),
        1 => Ok(match parts.pop() {
            Some(TextPart::Expr(expr)) => Template::Expr(expr),
            Some(TextPart::Text(text)) => Template::Literal(Value::String(text)),
            None => Template::Literal(Value::String(String::new())),
        }),
        _ => Ok(Template::Text(parts)),
    }
}

pub(crate) fn from_value(value: &Value) -> Result<Template, TemplateError> {
    match value {
        Value::String(text) => parse_str(text),
        Value::Array(items) => {
            let templates = items
                .iter()
                .map(from_value)
                .collect::<Result<Vec<_>, _>>()?;
            if templates.iter().all(Template::is_constant) {
                return Ok(Template::Literal(value.clone()));
            }
            Ok(Template::List(templates))
        }
        Value::Object(map) => {
            let mut entries = Vec::with_capacity(map.len());
            for (key, item) in map {
                entries.push((key.clone(), from_value(item)?));
            }
            if entries.iter().all(|(_, t)| t.is_constant()) {
                return Ok(Template::Literal(value.clone()));
            }
            Ok(Template::Map(entries))
        }
        other => Ok(Template::Literal(other.clone())),
    }
}

pub(crate) fn eval(template: &Template, scope: &dyn Scope) -> Result<Value, EvalError> {
    match template {
        Template::Literal(value) => Ok(value.clone()),
        Template::Expr(expr) => expr.eval(scope),
        Template::Text(parts) => {
            let mut out = String::new();
            for part in parts {
                match part {
                    TextPart::Text(text) => out.push_str(text),
                    TextPart::Expr(expr) => expr.render_into(scope, &mut out)?,
                }
            }
            Ok(Value::String(out))
        }
        Template::List(items) => items
            .iter()
            .map(|item| eval(item, scope))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Template::Map(entries) => {
            let mut map = Map::with_capacity(entries.len());
            for (key, item) in entries {
                map.insert(key.clone(), eval(item, scope)?);
            }
            Ok(Value::Object(map))
        }
    }
}

/// How a value reads inside text: strings raw, numbers as JSON writes them (`3`, `31.5`,
/// `3.0`), null as nothing, lists and maps as compact JSON.
pub(crate) fn render(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => out.push_str(s),
        Value::Null => {}
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        other => out.push_str(&other.to_string()),
    }
}

pub(crate) fn references(template: &Template, out: &mut Vec<Reference>) {
    let mut add = |expr: &Expr| {
        out.extend(expr.references().into_iter().map(|mut r| {
            r.offset += expr.base;
            r
        }));
    };
    match template {
        Template::Literal(_) => {}
        Template::Expr(expr) => add(expr),
        Template::Text(parts) => parts.iter().for_each(|part| {
            if let TextPart::Expr(expr) = part {
                add(expr);
            }
        }),
        Template::List(items) => items.iter().for_each(|item| references(item, out)),
        Template::Map(entries) => entries.iter().for_each(|(_, item)| references(item, out)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn scope() -> Map {
        let Value::Object(map) = json!({
            "event": {"data": {"temp": 31.5, "whole": 3.0, "n": 7, "zone": "A", "ok": true,
                               "tags": ["a", "b"], "obj": {"k": 1}, "none": null}},
            "vars": {"alerts": 2}
        }) else {
            unreachable!()
        };
        map
    }

    fn render_str(text: &str) -> Value {
        Template::parse_str(text).unwrap().eval(&scope()).unwrap()
    }

    fn error(text: &str) -> TemplateError {
        Template::parse_str(text).unwrap_err()
    }

    #[test]
    fn single_expression_keeps_its_type() {
        assert!(matches!(
            Template::parse_str("${{ event.data.n }}"),
            Ok(Template::Expr(_))
        ));
        assert_eq!(render_str("${{ event.data.n }}"), json!(7));
        assert_eq!(render_str("${{event.data.temp}}"), json!(31.5));
        assert_eq!(render_str("${{ event.data.tags }}"), json!(["a", "b"]));
        assert_eq!(render_str("${{ event.data.ok }}"), json!(true));
        assert_eq!(render_str("${{ event.data.none }}"), json!(null));
        assert_eq!(render_str("${{ {'a': {'b': 1}} }}"), json!({"a": {"b": 1}}));
        // Text around it, even spaces, makes it interpolated text.
        assert_eq!(render_str(" ${{ event.data.n }}"), json!(" 7"));
    }

    #[test]
    fn interpolation() {
        assert_eq!(
            render_str("Sensor ${{ event.data.zone }} at ${{ event.data.temp }}°C"),
            json!("Sensor A at 31.5°C")
        );
        assert_eq!(
            render_str(
                "${{ event.data.n }}/${{ event.data.whole }}/${{ event.data.ok }}/${{ event.data.none }}!"
            ),
            json!("7/3.0/true/!")
        );
        assert_eq!(
            render_str("tags=${{ event.data.tags }} obj=${{ event.data.obj }}"),
            json!(r#"tags=["a","b"] obj={"k":1}"#)
        );
        assert_eq!(render_str("n=${{ vars.alerts + 1 }}"), json!("n=3"));
        assert_eq!(render_str("plain text"), json!("plain text"));
        assert!(matches!(
            Template::parse_str("plain"),
            Ok(Template::Literal(_))
        ));
    }

    #[test]
    fn escapes() {
        assert_eq!(
            render_str("$${{ not.evaluated }}"),
            json!("${{ not.evaluated }}")
        );
        assert!(matches!(
            Template::parse_str("$${{ x }}"),
            Ok(Template::Literal(Value::String(_)))
        ));
        assert_eq!(
            render_str("use $${{ x }} for ${{ event.data.zone }}"),
            json!("use ${{ x }} for A")
        );
        assert_eq!(render_str("$${{ unclosed"), json!("${{ unclosed"));
        assert_eq!(
            render_str("cost: $5 {{ x }} $"),
            json!("cost: $5 {{ x }} $")
        );
    }

    #[test]
    fn closing_braces_inside_strings_and_maps() {
        assert_eq!(render_str(r#"${{ "a}}b" }}"#), json!("a}}b"));
        assert_eq!(render_str(r#"x${{ 'it\'s }}' }}y"#), json!("xit's }}y"));
        assert_eq!(render_str(r#"${{ {"a": {"b": 1}}.a.b }}"#), json!(1));
        assert_eq!(render_str(r#"${{ """}}""" }}"#), json!("}}"));
    }

    #[test]
    fn errors_point_into_the_string() {
        let e = error("abc ${{ event.data.n");
        assert_eq!((e.offset, e.message.as_str()), (4, "'${{' is not closed"));
        let e = error("abc ${{ 'open }}");
        assert_eq!(e.offset, 4);
        let e = error("é ${{ a = 1 }}");
        assert_eq!(
            (e.offset, e.help.as_deref()),
            (8, Some("did you mean '=='?"))
        );
        let e = error("${{ }}");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (0, "empty expression in '${{ }}'")
        );
        let e = error("${{ sise(x) }}");
        assert_eq!(e.offset, 4);
    }

    #[test]
    fn value_trees() {
        let value = json!({
            "static": {"a": [1, "two"]},
            "url": "${{ event.data.zone }}",
            "list": [1, "${{ event.data.n * 2 }}", "n=${{ event.data.n }}"],
            "${{ keys }}": "are literal"
        });
        let template = Template::from_value(&value).unwrap();
        let Template::Map(entries) = &template else {
            panic!("expected a map: {template:?}")
        };
        assert!(entries[0].1.is_constant());
        assert!(!template.is_constant());
        assert_eq!(
            template.eval(&scope()).unwrap(),
            json!({"static": {"a": [1, "two"]}, "url": "A", "list": [1, 14, "n=7"],
                   "${{ keys }}": "are literal"})
        );
        let constant = Template::from_value(&json!({"a": [1, {"b": "c"}]})).unwrap();
        assert_eq!(constant, Template::Literal(json!({"a": [1, {"b": "c"}]})));
        assert!(Template::from_value(&json!(["ok", "${{ 1 + }}"])).is_err());
    }

    #[test]
    fn references_in_templates() {
        let template = Template::from_value(&json!({
            "a": "x ${{ steps.fetch.output.list.map(i, i + vars.alerts) }}",
            "b": "${{ event.data.n }}"
        }))
        .unwrap();
        let refs: Vec<_> = template
            .references()
            .into_iter()
            .map(|r| (r.root, r.path.join("."), r.offset))
            .collect();
        assert_eq!(
            refs,
            [
                ("steps".to_string(), "fetch.output.list".to_string(), 6),
                ("vars".to_string(), "alerts".to_string(), 41),
                ("event".to_string(), "data.n".to_string(), 4),
            ]
        );
    }
}
