//! YAML text → [`Node`] tree with 1-based line/column on every node.
//!
//! Built on saphyr-parser's event API so that hostile input is refused while it streams in:
//! the size cap is checked before parsing, the nesting cap stops the event loop at the first
//! event that goes too deep, and aliases are expanded against a node budget (billion laughs
//! stops at the first alias that would exceed it, before anything is copied).
//! Scalars are typed with the YAML 1.2 core schema (`yes` is a string).

use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use crate::Value;
use crate::flow::Location;

/// Caps that keep a hostile document from costing more than a normal one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted document, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted nesting of sequences and mappings.
    pub max_depth: usize,
    /// Most nodes in the tree after aliases are expanded.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1024 * 1024,
            max_depth: 64,
            max_nodes: 100_000,
        }
    }
}

/// How a scalar was written; expression columns depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    /// `|` or `>` blocks.
    Block,
    /// Made from a JSON value (builder): no source text.
    Json,
}

/// A mapping key: always a string (scalar keys are taken as written).
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub location: Location,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// `value` is the core-schema typed value; `text` is the scalar as written (unescaped).
    Scalar {
        value: Value,
        text: String,
        style: Style,
        /// Whether the scalar is a one-line quoted or plain scalar without escapes, so a
        /// character offset inside it maps exactly to a column.
        exact: bool,
    },
    /// Shared, so an alias costs one pointer copy (its size still counts against the budget).
    Seq(Arc<[Node]>),
    Map(Arc<[(Key, Node)]>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub location: Location,
}

/// A problem found while reading YAML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YamlError {
    pub location: Location,
    pub message: String,
    pub help: Option<String>,
}

impl Node {
    /// The string value of a string scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar {
                value: Value::String(s),
                ..
            } => Some(s),
            _ => None,
        }
    }

    /// The entries of a mapping.
    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.kind {
            NodeKind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.kind {
            NodeKind::Seq(items) => Some(items),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(
            &self.kind,
            NodeKind::Scalar {
                value: Value::Null,
                ..
            }
        )
    }

    /// A word for error messages: "a string", "a list", …
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a map",
            NodeKind::Scalar { value, .. } => match value {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(n) if n.is_f64() => "a number",
                Value::Number(_) => "an integer",
                Value::String(_) => "a string",
                _ => "a value",
            },
        }
    }

    /// The plain JSON value of this node (expressions stay text).
    pub fn to_value(&self) -> Value {
        match &self.kind {
            NodeKind::Scalar { value, .. } => value.clone(),
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_value).collect()),
            NodeKind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// The location of the character `offset` characters into this scalar's text: exact for
    /// one-line plain and quoted scalars without escapes, the scalar's start otherwise.
    pub fn location_at(&self, offset: usize) -> Location {
        let NodeKind::Scalar { style, exact, .. } = &self.kind else {
            return self.location;
        };
        if self.location.line == 0 {
            return self.location;
        }
        let quote = match style {
            Style::SingleQuoted | Style::DoubleQuoted => 1,
            _ => 0,
        };
        if *exact {
            Location {
                line: self.location.line,
                column: self.location.column + quote + offset as u32,
            }
        } else {
            self.location
        }
    }

    /// Builds a node from a JSON value (the builder's path into the decoder); line 0.
    pub fn from_value(value: &Value) -> Node {
        let location = Location::default();
        let kind = match value {
            Value::Array(items) => NodeKind::Seq(
                items
                    .iter()
                    .map(Node::from_value)
                    .collect::<Vec<_>>()
                    .into(),
            ),
            Value::Object(map) => NodeKind::Map(
                map.iter()
                    .map(|(k, v)| {
                        (
                            Key {
                                name: k.clone(),
                                location,
                            },
                            Node::from_value(v),
                        )
                    })
                    .collect::<Vec<_>>()
                    .into(),
            ),
            scalar => NodeKind::Scalar {
                value: scalar.clone(),
                text: match scalar {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
                style: Style::Json,
                exact: false,
            },
        };
        Node { kind, location }
    }

    fn count(&self) -> usize {
        match &self.kind {
            NodeKind::Scalar { .. } => 1,
            NodeKind::Seq(items) => 1 + items.iter().map(Node::count).sum::<usize>(),
            NodeKind::Map(entries) => 1 + entries.iter().map(|(_, v)| 1 + v.count()).sum::<usize>(),
        }
    }
}

fn location(span: &Span) -> Location {
    Location {
        line: span.start.line() as u32,
        column: span.start.col() as u32 + 1,
    }
}

/// Types a plain scalar with the YAML 1.2 core schema.
pub fn core_scalar(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => {
            // JSON has no infinities or NaN; keep the text.
            return Value::String(text.to_string());
        }
        _ => {}
    }
    let bytes = text.as_bytes();
    let digits = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    if let Some(rest) = text.strip_prefix("0x")
        && digits(rest, 16)
        && let Ok(n) = i64::from_str_radix(rest, 16)
    {
        return Value::from(n);
    }
    if let Some(rest) = text.strip_prefix("0o")
        && digits(rest, 8)
        && let Ok(n) = i64::from_str_radix(rest, 8)
    {
        return Value::from(n);
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits(unsigned, 10) {
        if let Ok(n) = text.parse::<i64>() {
            return Value::from(n);
        }
        if let Ok(n) = text.trim_start_matches('+').parse::<u64>() {
            return Value::from(n);
        }
    }
    // [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
    let looks_float = !unsigned.is_empty()
        && bytes.iter().any(u8::is_ascii_digit)
        && unsigned
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        && !unsigned.starts_with(['e', 'E']);
    if looks_float
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text.to_string())
}

enum Frame {
    Seq {
        items: Vec<Node>,
        location: Location,
        anchor: usize,
    },
    Map {
        entries: Vec<(Key, Node)>,
        pending_key: Option<Key>,
        location: Location,
        anchor: usize,
    },
}

struct Builder<'a> {
    limits: Limits,
    stack: Vec<Frame>,
    anchors: Vec<(usize, Node, usize)>,
    nodes: usize,
    root: Option<Node>,
    errors: Vec<YamlError>,
    text: &'a str,
    /// Byte offset of each character, built only for non-ASCII documents that need it.
    char_bytes: Option<Vec<usize>>,
    ascii: bool,
}

/// Parses one YAML document. Errors are returned all at once where the YAML stays readable
/// (duplicate keys, complex keys); a syntax error or a cap ends reading.
pub fn parse(text: &str, limits: Limits) -> Result<Node, Vec<YamlError>> {
    if text.len() > limits.max_bytes {
        return Err(vec![YamlError {
            location: Location { line: 1, column: 1 },
            message: format!(
                "the file is {} bytes; the limit is {} bytes",
                text.len(),
                limits.max_bytes
            ),
            help: None,
        }]);
    }
    let mut builder = Builder {
        limits,
        stack: Vec::new(),
        anchors: Vec::new(),
        nodes: 0,
        root: None,
        errors: Vec::new(),
        text,
        char_bytes: None,
        ascii: text.is_ascii(),
    };
    let mut parser = Parser::new_from_str(text);
    let mut documents = 0;
    while let Some(next) = parser.next_event() {
        let (event, span) = match next {
            Ok(pair) => pair,
            Err(error) => {
                let marker = error.marker();
                let location = Location {
                    line: marker.line() as u32,
                    column: marker.col() as u32 + 1,
                };
                let message = match error.info() {
                    "recursion limit exceeded" => format!(
                        "the document nests deeper than {} levels",
                        builder.limits.max_depth
                    ),
                    info => format!("invalid YAML: {info}"),
                };
                builder.errors.push(YamlError {
                    location,
                    message,
                    help: builder.expression_help(location),
                });
                return Err(builder.errors);
            }
        };
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    builder.errors.push(YamlError {
                        location: location(&span),
                        message: "a workflow file holds one YAML document".into(),
                        help: Some("put each workflow in its own file".into()),
                    });
                    return Err(builder.errors);
                }
            }
            Event::Scalar(value, style, anchor, tag) => {
                let forced_string = tag
                    .as_ref()
                    .is_some_and(|t| t.is_yaml_core_schema() && t.suffix == "str");
                let (style, typed) = match style {
                    ScalarStyle::Plain if !forced_string => (Style::Plain, core_scalar(&value)),
                    ScalarStyle::Plain => (Style::Plain, Value::String(value.to_string())),
                    ScalarStyle::SingleQuoted => {
                        (Style::SingleQuoted, Value::String(value.to_string()))
                    }
                    ScalarStyle::DoubleQuoted => {
                        (Style::DoubleQuoted, Value::String(value.to_string()))
                    }
                    ScalarStyle::Literal | ScalarStyle::Folded => {
                        (Style::Block, Value::String(value.to_string()))
                    }
                };
                let exact = builder.is_exact(&span, style, &value);
                let node = Node {
                    kind: NodeKind::Scalar {
                        value: typed,
                        text: value.into_owned(),
                        style,
                        exact,
                    },
                    location: location(&span),
                };
                if !builder.add(node, anchor, &span) {
                    return Err(builder.errors);
                }
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if builder.stack.len() >= builder.limits.max_depth {
                    builder.errors.push(YamlError {
                        location: location(&span),
                        message: format!(
                            "the document nests deeper than {} levels",
                            builder.limits.max_depth
                        ),
                        help: None,
                    });
                    return Err(builder.errors);
                }
                let location = location(&span);
                builder
                    .stack
                    .push(if matches!(event, Event::SequenceStart(..)) {
                        Frame::Seq {
                            items: Vec::new(),
                            location,
                            anchor,
                        }
                    } else {
                        Frame::Map {
                            entries: Vec::new(),
                            pending_key: None,
                            location,
                            anchor,
                        }
                    });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match builder.stack.pop() {
                    Some(Frame::Seq {
                        items,
                        location,
                        anchor,
                    }) => (
                        Node {
                            kind: NodeKind::Seq(items.into()),
                            location,
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        entries,
                        location,
                        anchor,
                        ..
                    }) => (
                        Node {
                            kind: NodeKind::Map(entries.into()),
                            location,
                        },
                        anchor,
                    ),
                    None => continue,
                };
                if !builder.add(node, anchor, &span) {
                    return Err(builder.errors);
                }
            }
            Event::Alias(id) => {
                let Some(index) = builder.anchors.iter().position(|(a, _, _)| *a == id) else {
                    continue;
                };
                let size = builder.anchors[index].2;
                // Checked before copying, so a bomb costs nothing.
                if builder.nodes + size > builder.limits.max_nodes {
                    builder.errors.push(YamlError {
                        location: location(&span),
                        message: format!(
                            "the document expands to more than {} nodes through aliases",
                            builder.limits.max_nodes
                        ),
                        help: Some("aliases (*name) are copied where used; use fewer".into()),
                    });
                    return Err(builder.errors);
                }
                let node = builder.anchors[index].1.clone();
                builder.nodes += size - 1;
                if !builder.add(node, 0, &span) {
                    return Err(builder.errors);
                }
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    if !builder.errors.is_empty() {
        return Err(builder.errors);
    }
    Ok(builder.root.unwrap_or(Node {
        kind: NodeKind::Scalar {
            value: Value::Null,
            text: String::new(),
            style: Style::Plain,
            exact: true,
        },
        location: Location { line: 1, column: 1 },
    }))
}

impl Builder<'_> {
    /// Whether offsets inside this scalar map one to one onto source columns: one line, and
    /// the source between the quotes is the value itself (no escapes).
    fn is_exact(&mut self, span: &Span, style: Style, value: &str) -> bool {
        if span.start.line() != span.end.line() {
            return false;
        }
        let quote = match style {
            Style::Plain => return true,
            Style::SingleQuoted => '\'',
            Style::DoubleQuoted => '"',
            _ => return false,
        };
        let Some(start) = self.byte_index(span.start.index() + 1) else {
            return false;
        };
        let rest = self.text.get(start..).unwrap_or("");
        rest.starts_with(value) && rest[value.len()..].starts_with(quote)
    }

    /// Byte offset of a character index (marks count characters).
    fn byte_index(&mut self, chars: usize) -> Option<usize> {
        if self.ascii {
            return Some(chars);
        }
        let table = self
            .char_bytes
            .get_or_insert_with(|| self.text.char_indices().map(|(b, _)| b).collect());
        table.get(chars).copied()
    }

    /// Adds a finished node to its parent. Returns false when reading must stop.
    fn add(&mut self, node: Node, anchor: usize, span: &Span) -> bool {
        self.nodes += 1;
        if self.nodes > self.limits.max_nodes {
            self.errors.push(YamlError {
                location: node.location,
                message: format!("the document has more than {} nodes", self.limits.max_nodes),
                help: None,
            });
            return false;
        }
        if anchor != 0 {
            let size = node.count();
            self.anchors.push((anchor, node.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                Some(key) => entries.push((key, node)),
                None => {
                    let key = match &node.kind {
                        NodeKind::Scalar { text, .. } => text.clone(),
                        _ => {
                            self.errors.push(YamlError {
                                location: location(span).min(node.location),
                                message: "a key must be a plain string, not a list or map".into(),
                                help: None,
                            });
                            String::new()
                        }
                    };
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == key)
                        && !key.is_empty()
                    {
                        self.errors.push(YamlError {
                            location: node.location,
                            message: format!(
                                "duplicate key {key:?} (first at {}:{})",
                                first.location.line, first.location.column
                            ),
                            help: None,
                        });
                    }
                    *pending_key = Some(Key {
                        name: key,
                        location: node.location,
                    });
                }
            },
        }
        true
    }

    /// The help for the YAML errors an unquoted `${{ … }}` causes.
    fn expression_help(&self, at: Location) -> Option<String> {
        let lines: Vec<&str> = self
            .text
            .lines()
            .skip((at.line as usize).saturating_sub(2))
            .take(2)
            .collect();
        for line in lines.iter().rev() {
            if let Some(start) = line.find("${{") {
                let before = &line[..start];
                if before.ends_with('"') || before.ends_with('\'') {
                    continue;
                }
                let expr = match line[start..].find("}}") {
                    Some(end) => &line[start..start + end + 2],
                    None => "${{ … }}",
                };
                return Some(format!("quote the expression: \"{expr}\""));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn scalar(text: &str) -> Value {
        core_scalar(text)
    }

    #[test]
    fn core_schema_scalars() {
        assert_eq!(scalar("yes"), Value::from("yes"));
        assert_eq!(scalar("true"), Value::from(true));
        assert_eq!(scalar("~"), Value::Null);
        assert_eq!(scalar("42"), Value::from(42));
        assert_eq!(scalar("-7"), Value::from(-7));
        assert_eq!(scalar("0x1f"), Value::from(31));
        assert_eq!(scalar("1.5"), Value::from(1.5));
        assert_eq!(scalar("1e3"), Value::from(1000.0));
        assert_eq!(scalar("5m"), Value::from("5m"));
        assert_eq!(scalar("1.2.3"), Value::from("1.2.3"));
        assert_eq!(scalar("-"), Value::from("-"));
    }

    #[test]
    fn locations_are_one_based() {
        let node = parse("a: 1\nb:\n  - x\n  - \"y\"\n", Limits::default()).unwrap();
        let map = node.as_map().unwrap();
        assert_eq!(map[0].0.location, Location { line: 1, column: 1 });
        assert_eq!(map[0].1.location, Location { line: 1, column: 4 });
        let seq = map[1].1.as_seq().unwrap();
        assert_eq!(seq[0].location, Location { line: 3, column: 5 });
        assert_eq!(seq[1].location, Location { line: 4, column: 5 });
        assert_eq!(seq[1].location_at(0), Location { line: 4, column: 6 });
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let errors = parse("a: 1\nb: 2\na: 3\n", Limits::default()).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].location, Location { line: 3, column: 1 });
        assert_eq!(errors[0].message, "duplicate key \"a\" (first at 1:1)");
    }

    #[test]
    fn unquoted_ternary_gets_help() {
        let errors = parse("if: ${{ a ? b : c }}\n", Limits::default()).unwrap_err();
        assert_eq!(
            errors[0].help.as_deref(),
            Some("quote the expression: \"${{ a ? b : c }}\"")
        );
    }

    #[test]
    fn hostile_inputs_are_refused_fast() {
        let big = format!("a: \"{}\"\n", "x".repeat(1024 * 1024));
        let start = Instant::now();
        let errors = parse(&big, Limits::default()).unwrap_err();
        assert!(errors[0].message.contains("limit is 1048576 bytes"));

        let deep = "[".repeat(10_000);
        let errors = parse(&deep, Limits::default()).unwrap_err();
        assert_eq!(
            errors[0].message,
            "the document nests deeper than 64 levels"
        );

        let mut bomb = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for i in 1..9 {
            let prev = (b'a' + i - 1) as char;
            let name = (b'a' + i) as char;
            let refs = vec![format!("*{prev}"); 9].join(",");
            bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        let errors = parse(&bomb, Limits::default()).unwrap_err();
        assert!(errors[0].message.contains("through aliases"), "{errors:?}");
        assert!(start.elapsed().as_millis() < 100, "{:?}", start.elapsed());
    }

    #[test]
    fn small_aliases_are_expanded() {
        let node = parse("a: &x { k: 1 }\nb: *x\n", Limits::default()).unwrap();
        assert_eq!(
            node.to_value(),
            serde_json::json!({"a": {"k": 1}, "b": {"k": 1}})
        );
    }
}
