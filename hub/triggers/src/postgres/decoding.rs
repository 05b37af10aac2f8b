//! Parses `test_decoding`'s text output into row changes.
//!
//! One line per change, e.g.
//! `table public.orders: UPDATE: old-key: id[integer]:1 note[text]:'a' new-tuple: id[integer]:1 note[text]:'it''s'`.
//! Columns are `name[type]:value`; values are `null`, `unchanged-toast-datum`, a bare literal
//! (numbers, booleans) or a quoted one (`'…'`, quotes doubled). Names and tables may be
//! double-quoted identifiers.

use serde_json::{Map, Value};

/// One decoded row change.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub schema: String,
    pub table: String,
    /// `insert`, `update` or `delete`.
    pub operation: &'static str,
    pub new: Option<Map<String, Value>>,
    pub old: Option<Map<String, Value>>,
}

/// What one output line is.
#[derive(Debug, PartialEq)]
pub enum Line {
    Begin,
    Commit,
    Change(Box<Change>),
    /// A change this trigger does not report (`TRUNCATE`, messages).
    Other,
}

/// Parses one line of `test_decoding` output.
pub fn parse(line: &str) -> Result<Line, String> {
    if line == "BEGIN" || line.starts_with("BEGIN ") {
        return Ok(Line::Begin);
    }
    if line == "COMMIT" || line.starts_with("COMMIT ") {
        return Ok(Line::Commit);
    }
    let Some(rest) = line.strip_prefix("table ") else {
        return Ok(Line::Other);
    };
    let mut cursor = Cursor { text: rest, pos: 0 };
    let schema = cursor.identifier()?;
    cursor.expect(".")?;
    let table = cursor.identifier()?;
    cursor.expect(": ")?;
    let operation = cursor.word();
    cursor.expect(":")?;
    let operation = match operation {
        "INSERT" => "insert",
        "UPDATE" => "update",
        "DELETE" => "delete",
        _ => return Ok(Line::Other),
    };
    let mut old = None;
    let mut new = None;
    if cursor.eat(" (no-tuple-data)") {
        // Nothing more.
    } else if operation == "update" && cursor.eat(" old-key:") {
        old = Some(cursor.tuple()?);
        cursor.expect(" new-tuple:")?;
        new = Some(cursor.tuple()?);
    } else {
        let tuple = cursor.tuple()?;
        if operation == "delete" {
            old = Some(tuple);
        } else {
            new = Some(tuple);
        }
    }
    Ok(Line::Change(Box::new(Change {
        schema,
        table,
        operation,
        new,
        old,
    })))
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), String> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(format!("expected {token:?} at {:?}", self.rest()))
        }
    }

    /// Letters up to the next non-letter.
    fn word(&mut self) -> &'a str {
        let rest = &self.text[self.pos..];
        let len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    /// A plain or double-quoted identifier.
    fn identifier(&mut self) -> Result<String, String> {
        if self.eat("\"") {
            let mut out = String::new();
            loop {
                let rest = self.rest();
                let Some(end) = rest.find('"') else {
                    return Err("unterminated quoted identifier".into());
                };
                out.push_str(&rest[..end]);
                self.pos += end + 1;
                if self.eat("\"") {
                    out.push('"');
                } else {
                    return Ok(out);
                }
            }
        }
        let rest = self.rest();
        let len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(rest.len());
        if len == 0 {
            return Err(format!("expected an identifier at {rest:?}"));
        }
        self.pos += len;
        Ok(rest[..len].to_string())
    }

    /// ` name[type]:value` repeated, until the end or ` new-tuple:`.
    fn tuple(&mut self) -> Result<Map<String, Value>, String> {
        let mut row = Map::new();
        while self.rest().starts_with(' ') && !self.rest().starts_with(" new-tuple:") {
            self.pos += 1;
            let name = self.identifier()?;
            self.expect("[")?;
            let rest = self.rest();
            let end = rest
                .find("]:")
                .ok_or_else(|| format!("column {name}: no type end in {rest:?}"))?;
            let column_type = rest[..end].to_string();
            self.pos += end + 2;
            let value = self.value(&column_type)?;
            if let Some(value) = value {
                row.insert(name, value);
            }
        }
        Ok(row)
    }

    /// A column value; `None` for an unchanged TOAST value (not sent by the server).
    fn value(&mut self, column_type: &str) -> Result<Option<Value>, String> {
        if self.eat("'") {
            let mut text = String::new();
            loop {
                let rest = self.rest();
                let Some(end) = rest.find('\'') else {
                    return Err("unterminated quoted value".into());
                };
                text.push_str(&rest[..end]);
                self.pos += end + 1;
                if self.eat("'") {
                    text.push('\'');
                } else {
                    break;
                }
            }
            return Ok(Some(typed(column_type, text)));
        }
        let rest = self.rest();
        let len = rest.find(' ').unwrap_or(rest.len());
        let raw = &rest[..len];
        self.pos += len;
        Ok(match raw {
            "null" => Some(Value::Null),
            "unchanged-toast-datum" => None,
            "true" if column_type == "boolean" => Some(Value::Bool(true)),
            "false" if column_type == "boolean" => Some(Value::Bool(false)),
            _ => Some(
                serde_json::from_str::<serde_json::Number>(raw)
                    .map(Value::Number)
                    .unwrap_or_else(|_| Value::String(raw.to_string())),
            ),
        })
    }
}

/// A quoted literal as JSON: `json`/`jsonb` parsed, everything else text.
fn typed(column_type: &str, text: String) -> Value {
    if matches!(column_type, "json" | "jsonb")
        && let Ok(value) = serde_json::from_str(&text)
    {
        return value;
    }
    Value::String(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(line: &str) -> Change {
        match parse(line).unwrap() {
            Line::Change(change) => *change,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn insert_with_types() {
        let c = change(
            "table public.orders: INSERT: id[integer]:1 note[text]:'it''s: [x]' price[numeric]:12.50 ok[boolean]:true doc[jsonb]:'{\"a\": [1, 2]}' tags[text[]]:'{a,b}' at[timestamp with time zone]:'2026-11-30 13:00:00+00' gone[text]:null",
        );
        assert_eq!(
            (c.schema.as_str(), c.table.as_str(), c.operation),
            ("public", "orders", "insert")
        );
        assert_eq!(
            Value::Object(c.new.unwrap()),
            json!({"id": 1, "note": "it's: [x]", "price": 12.50, "ok": true, "doc": {"a": [1, 2]},
                   "tags": "{a,b}", "at": "2026-11-30 13:00:00+00", "gone": null})
        );
        assert!(c.old.is_none());
    }

    #[test]
    fn update_with_old_key_and_delete() {
        let c = change(
            "table public.orders: UPDATE: old-key: id[integer]:1 note[text]:'a' new-tuple: id[integer]:1 note[text]:'b'",
        );
        assert_eq!(c.operation, "update");
        assert_eq!(Value::Object(c.old.unwrap()), json!({"id": 1, "note": "a"}));
        assert_eq!(Value::Object(c.new.unwrap()), json!({"id": 1, "note": "b"}));
        let c = change("table public.orders: UPDATE: id[integer]:1 note[text]:'b'");
        assert!(c.old.is_none());
        let c = change("table \"My Schema\".\"Odd\"\"Name\": DELETE: id[bigint]:9");
        assert_eq!(
            (c.schema.as_str(), c.table.as_str(), c.operation),
            ("My Schema", "Odd\"Name", "delete")
        );
        assert_eq!(Value::Object(c.old.unwrap()), json!({"id": 9}));
        let c = change("table public.t: DELETE: (no-tuple-data)");
        assert!(c.old.is_none() && c.new.is_none());
    }

    #[test]
    fn framing_lines_and_errors() {
        assert_eq!(parse("BEGIN 734").unwrap(), Line::Begin);
        assert_eq!(parse("COMMIT 734").unwrap(), Line::Commit);
        assert_eq!(
            parse("table public.t: TRUNCATE: (no-flags)").unwrap(),
            Line::Other
        );
        assert!(parse("table public.t: INSERT: id[integer:1").is_err());
        assert!(parse("table public.t: INSERT: note[text]:'open").is_err());
    }
}
